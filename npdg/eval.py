"""Evaluate a segmentation model on one or more datasets (mIoU in percent).

    python -m npdg.eval --checkpoint runs/x/final.pt --data synthetic:source --data synthetic:fog \\
        --json results.json
    python -m npdg.eval --checkpoint ckpt.pt --data cityscapes:/data/cityscapes --sliding \\
        --window 512x1024 --stride 341x683 --device cuda

    python -m npdg.eval --checkpoint runs/x/final.pt --data synthetic:source --size 96x192 --num 60 \\
        --restyle 0.5      # a style-shifted source val: each image in a fixed random RGB style
    python -m npdg.eval --checkpoint runs/x/final.pt --data cityscapes:/data/cs --save_pred preds/
                           # + one PNG per image in the dataset's own encoding (Cityscapes label ids)

The JSON is ``{SPEC: {"miou": percent, "per_class": {class: percent or null}, "protocol": str,
"sizes": [[H, W], ...], "miou_definition": "standard"}}`` (the protocol and the input sizes the images were scored
at); the mIoU is the field's (cityscapesscripts, mmseg): IoU = TP / (TP + FP + FN) over the dataset, a class
predicted but absent from the labels scores 0, null marks a class neither in the labels nor predicted (left out
of the mean, see :mod:`npdg.metrics`). From Python, the same numbers come from :func:`evaluate`, which the
training CLI also calls.

``--save_pred DIR`` also writes one prediction per image into DIR/<SPEC as a folder name>/ in the encoding of
its dataset (:mod:`npdg.data.predictions`: Cityscapes / GTA5 label ids named after the image, as the Cityscapes
benchmark server and cityscapesscripts expect; train ids for BDD100K, folder and synthetic data) and
DIR/predictions.json (SPEC -> folder, encoding, protocol, files). DIR must be new or empty; a dataset whose
encoding cannot be written back (Mapillary, SYNTHIA) or a protocol that resizes on-disk images is refused
before any work.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from npdg import cli
from npdg.checkpoint import write_json
from npdg.data.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES
from npdg.data.protocol import build_eval_dataset
from npdg.data.spec import KINDS, hw_arg
from npdg.metrics import ConfusionMatrix, format_table


def _logits(model, images):
    """Model output -> (N, C, H, W) logits at the input size (dict 'out' / first of a tuple accepted)."""
    out = model(images)
    if isinstance(out, dict):
        out = out["out"]
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def sliding_logits(model, images, window, stride, num_classes):
    """Average the logits of ``window``-sized crops taken every ``stride`` px (edges always covered);
    images smaller than the window are zero-padded (zero = the mean colour after normalization)."""
    N, _, H, W = images.shape
    wh, ww = window
    sh, sw = stride
    ph, pw = max(wh - H, 0), max(ww - W, 0)
    padded = F.pad(images, (0, pw, 0, ph)) if ph or pw else images
    Hp, Wp = padded.shape[-2:]
    total = images.new_zeros(N, num_classes, Hp, Wp)
    count = images.new_zeros(1, 1, Hp, Wp)

    def starts(size, win, step):
        s = list(range(0, max(size - win, 0) + 1, step))
        return s if s[-1] == size - win else s + [size - win]

    for y in starts(Hp, wh, sh):
        for x in starts(Wp, ww, sw):
            total[..., y:y + wh, x:x + ww] += _logits(model, padded[..., y:y + wh, x:x + ww])
            count[..., y:y + wh, x:x + ww] += 1
    return (total / count)[..., :H, :W]


class Restyled(torch.utils.data.Dataset):
    """``dataset`` with every image in a fixed random RGB style: :func:`npdg.dsp.perturb.pixel_restyle` at
    ``strength`` (channel mean + strength x N(0, 1), std x exp(strength x N(0, 1)), normalised units), the
    draws seeded by (seed, index) so every model sees the same styles. A style-shifted validation made from
    the source split alone (no target domain); labels unchanged."""

    def __init__(self, dataset, strength: float, seed: int = 0):
        self.dataset, self.strength, self.seed = dataset, strength, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        from npdg.dsp.perturb import pixel_restyle

        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + index)
            image = pixel_restyle(image[None], self.strength)[0]
        return image, label


def _collate(samples):
    return samples  # images may differ in size; batched by shape in evaluate()


@torch.no_grad()
def evaluate(model, dataset, batch_size=4, device="cpu", *, sliding=False, window=None, stride=None,
             num_workers=0, num_classes=NUM_CLASSES, class_names=CLASSES, progress=True, desc=None,
             distributed=False, amp=False, on_pred=None):
    """mIoU of ``model`` on ``dataset`` -> {"miou": percent, "per_class": {name: percent or None}, ...}.

    ``dataset`` yields (normalized image (3, H, W), int64 label (H, W), 255 = ignore), e.g. from
    :func:`npdg.data.build_dataset`. ``sliding=True`` evaluates ``window`` (H, W) crops every
    ``stride`` (default: 2/3 of the window) instead of whole images. ``distributed=True`` (only when
    EVERY rank of an initialised torch.distributed group calls this): each rank evaluates every
    world_size-th sample and the confusion matrices are summed, so all ranks return the full result;
    the default evaluates the whole dataset locally with no collective (safe to call on rank 0 only).
    ``amp=True`` runs the forward under bf16 autocast on a CUDA device (ignored on CPU; see
    :func:`npdg.loop.amp_autocast`). ``on_pred(index, pred)`` (optional) gets each sample's index in
    ``dataset`` and its (H, W) int64 train-id prediction. The model's train/eval mode is restored afterwards.
    """
    from npdg.loop import amp_autocast

    device = torch.device(device)
    dist = torch.distributed
    sharded = distributed and dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    if sliding:
        if window is None:
            raise ValueError("sliding-window evaluation needs a window (H, W)")
        stride = stride or (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
    sizes = set()  # the (H, W) inputs were scored at: what a protocol promised, checked
    was_training = model.training
    model.eval()
    try:
        position = 0
        for batch in tqdm(loader, desc=desc or "eval", disable=not progress or rank != 0, leave=False):
            groups = {}
            for offset, (image, label) in enumerate(batch):  # stack same-size samples
                groups.setdefault(tuple(image.shape), []).append((indices[position + offset], image, label))
            position += len(batch)
            for size, items in groups.items():
                sizes.add(size[-2:])
                images = torch.stack([i for _, i, _ in items]).to(device)
                labels = torch.stack([lab for _, _, lab in items]).to(device)
                with amp_autocast(device, amp):
                    logits = (sliding_logits(model, images, window, stride, num_classes) if sliding
                              else _logits(model, images))
                pred = logits.argmax(1)
                cm.update(pred, labels)
                if on_pred is not None:
                    for (index, _, _), p in zip(items, pred, strict=True):
                        on_pred(index, p)
    finally:
        model.train(was_training)
    if sharded:
        cm.all_reduce()
    return {**cm.summary(class_names), "sizes": sorted([list(hw) for hw in sizes])}


def build_parser():
    p = cli.Parser(prog="python -m npdg.eval", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Reported numbers (table and JSON) are IoU in percent.")
    p.add_argument("--checkpoint", required=True,
                   help="model file from npdg.save_model, or a training checkpoint")
    p.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help=f"dataset, repeatable: KIND:ARG with KIND in {{{', '.join(KINDS)}}}, "
                        "e.g. synthetic:fog, folder:DIR, cityscapes:ROOT")
    p.add_argument("--split", default=None, help="dataset split (default: val / validation / all per kind)")
    p.add_argument("--json", type=Path,
                   help="write {SPEC: {miou: percent, per_class: {class: percent or null}}}")
    p.add_argument("--size", type=hw_arg, default=None,
                   help="HxW: synthetic generation size (default 128x256); for on-disk data a resize that replaces "
                        "the dataset's protocol")
    p.add_argument("--protocol", default=None, metavar="PROTOCOL",
                   help="evaluation protocol for every SPEC, e.g. native, size:HxW, height:1536+crop:1536x1536, "
                        "native+sliding:768x768/512x512 (default: the dataset's own; see npdg.data.protocol)")
    p.add_argument("--num", type=cli.int_at_least(1), default=None, help="synthetic scenes / first N on-disk samples")
    p.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    p.add_argument("--batch-size", "--batch_size", type=cli.int_at_least(1), default=4)
    p.add_argument("--workers", type=cli.int_at_least(0), default=0, help="DataLoader worker processes")
    p.add_argument("--sliding", action="store_true", help="sliding-window inference")
    p.add_argument("--window", type=hw_arg, help="sliding window HxW")
    p.add_argument("--stride", type=hw_arg, help="sliding stride HxW (default 2/3 of the window)")
    p.add_argument("--restyle", type=cli.float_in(0, 5), default=0.0, metavar="A",
                   help="evaluate every image in a fixed random RGB style of strength A (per channel: mean + "
                        "A x N(0,1), std x exp(A x N(0,1)); seeded per image, the same for every model): a "
                        "style-shifted copy of a split, e.g. the source val, without any target domain (0 = off)")
    p.add_argument("--save_pred", "--save-pred", type=Path, default=None, metavar="DIR",
                   help="also write each image's prediction as a PNG in its dataset's own encoding (Cityscapes / "
                        "GTA5: label ids, named for the benchmark server; BDD100K, folder, synthetic: train ids) "
                        "into DIR/<SPEC>/; DIR must be new or empty (nothing is overwritten)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda[:i]")
    cli.add_debug(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sliding and args.window is None:
        parser.error("--sliding needs --window HxW")
    if args.protocol and args.size:
        parser.error("--protocol and --size both set the evaluation size; give one")
    return cli.guard(parser.prog, args.debug, lambda: _run(args))


def _protocol(spec, args):
    """--protocol, else --size (a plain resize), else the dataset's default; --sliding adds its windows."""
    import dataclasses

    from npdg.data.protocol import Protocol, protocol_for
    from npdg.data.synthetic import DEFAULT_SIZE

    if args.protocol:
        proto = Protocol.parse(args.protocol)
    elif args.size:
        proto = Protocol(size=tuple(args.size))
    else:
        proto = protocol_for(spec, eval_size=DEFAULT_SIZE)
    if args.sliding:
        proto = dataclasses.replace(proto, window=tuple(args.window), stride=args.stride and tuple(args.stride))
    return proto


def _prediction_writers(args, protocols) -> dict:
    """{SPEC: PredictionWriter} for --save_pred, every refusal raised before any work (nothing created)."""
    from npdg.data.predictions import PredictionError, PredictionWriter, check_empty, folder_name

    root = args.save_pred
    check_empty(root)
    names = [folder_name(spec) for spec in args.data]
    if len(set(names)) != len(names):
        raise PredictionError(f"--save_pred {root}: two SPECs share the folder name of {names}; give each its own "
                              "--save_pred run")
    return {spec: PredictionWriter.for_spec(spec, protocols[spec], root / name)
            for spec, name in zip(args.data, names, strict=True)}


def _run(args) -> int:
    # everything that can fail on user input happens before the (long) evaluation
    device = cli.resolve_device(args.device)
    protocols = {spec: _protocol(spec, args) for spec in args.data}
    datasets = {spec: build_eval_dataset(spec, protocols[spec], split=args.split, num=args.num, seed=args.seed)
                for spec in args.data}
    writers = _prediction_writers(args, protocols) if args.save_pred else {}
    if args.restyle > 0:
        datasets = {spec: Restyled(ds, args.restyle, seed=args.seed) for spec, ds in datasets.items()}
    import npdg

    model = npdg.load_model(args.checkpoint, map_location="cpu").to(device)
    if args.restyle > 0 and getattr(model, "input_norm", False):
        print(f"note: {args.checkpoint} standardises its input per channel (input_norm), which undoes --restyle "
              "(a per-channel AdaIN of the image): expect the plain score", file=sys.stderr)
    results = {}
    for spec, ds in datasets.items():
        on_pred = None
        if spec in writers:
            named = ds.dataset if isinstance(ds, Restyled) else ds
            writer = writers[spec].open()

            def on_pred(index, pred, writer=writer, named=named):
                writer.write(named.name(index), pred)

        results[spec] = evaluate(model, ds, batch_size=args.batch_size, device=device,
                                 num_workers=args.workers, desc=spec, on_pred=on_pred, **protocols[spec].eval_kwargs())
        results[spec]["protocol"] = str(protocols[spec])
        if args.restyle > 0:
            results[spec]["restyle"] = args.restyle
        miou = results[spec]["miou"]
        shown = "n/a (no labelled pixels)" if miou is None else f"{miou:.2f}%"
        styled = f", restyled at {args.restyle}" if args.restyle > 0 else ""
        print(f"{spec}: mIoU {shown} over {len(ds)} images (protocol {protocols[spec]}{styled})", file=sys.stderr)
    print(format_table(results))
    if writers:
        write_json(args.save_pred / "predictions.json", {
            spec: {"folder": w.folder.name, "encoding": w.encoding, "protocol": str(protocols[spec]),
                   "restyle": args.restyle, "files": [p.name for p in w.files]} for spec, w in writers.items()})
        print(f"predictions: {sum(len(w.files) for w in writers.values())} files under {args.save_pred}",
              file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
