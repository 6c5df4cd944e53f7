"""Run a trained model on your own images: a colour-coded prediction and an overlay per image.

    python -m npdg.predict runs/x photos/ --out preds/            # runs/x/final.pt on every PNG/JPEG in photos/
    python -m npdg.predict model.pt a.jpg b.png more/ --out preds/ --size 512x1024 --device cuda
    python -m npdg.predict runs/npdg photos/ --out preds/ --compare runs/baseline --alpha 0.6
                           # + NAME_compare.png: image | runs/npdg overlay | runs/baseline overlay

CKPT is a model file from :func:`npdg.save_model`; a run directory means its final.pt (dense.pt when there is no
final.pt). Inputs are PNG/JPEG files and folders (their .png/.jpg/.jpeg files, sorted, not recursive). Every
image is read as RGB, scaled to [0, 1], resized to ``--size`` when given (bilinear, as the datasets do) and
ImageNet-normalised (:mod:`npdg.data.transforms`); images of the same size run in batches of ``--batch_size``.

For every image NAME (its file stem; ``-2``, ``-3``, ... appended when two inputs share a stem) it writes
``--out/NAME_pred.png`` (the predicted train ids in the Cityscapes colours), ``--out/NAME_overlay.png`` (the image
blended with those colours: ``(1 - alpha) x image + alpha x colours``) and with ``--compare`` ``NAME_compare.png``
(image | overlay of CKPT | overlay of CKPT2, side by side), at the image's own size or ``--size``.

Nothing is ever overwritten: an output file that exists already is refused before any work. Errors (a missing
checkpoint, no images, ``--out`` a file, ...) print one line and exit 2. An unreadable image is skipped with one
warning line naming it; the others are written and the exit code is 2, so that scripts notice.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from npdg import cli
from npdg.checkpoint import CheckpointError, save_image
from npdg.data.base import IMAGE_EXTS, DatasetError, list_images, read_image
from npdg.data.labels import colorize
from npdg.data.spec import hw_arg
from npdg.data.transforms import normalize, resize
from npdg.eval import _logits

PROG = "python -m npdg.predict"


def model_file(path) -> Path:
    """``path`` itself, or a run directory's final.pt (else its dense.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", "dense.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: a folder without a model (no final.pt or dense.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def image_files(paths) -> list[Path]:
    """The PNG/JPEG files named, and those in the folders named (sorted), each once."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += list_images(path)
        elif not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        elif path.suffix.lower() not in IMAGE_EXTS:
            raise cli.UsageError(f"input {path}: not a PNG/JPEG file ({', '.join(IMAGE_EXTS)})")
        else:
            files.append(path)
    if not files:
        raise cli.UsageError(f"no PNG/JPEG images in {', '.join(map(str, paths))}")
    return list({f.resolve(): f for f in files}.values())


def unique_names(files) -> list[str]:
    """File stems, ``-2``, ``-3``, ... appended to repeats (compared ignoring case, for such file systems)."""
    used, names = set(), []
    for f in files:
        name, k = f.stem, 2
        while name.lower() in used:
            name, k = f"{f.stem}-{k}", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def image_size(path):
    """(H, W) from the file's header; DatasetError naming the file when it is not an image."""
    try:
        with Image.open(path) as im:
            return im.size[::-1]
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def load_image(path, size=None):
    """(model input in [0, 1] (3, H, W), the image as shown: uint8 (H, W, 3)), resized to ``size`` if given."""
    image = read_image(path)
    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x, _ = resize(x, None, size)
        image = x.mul(255).round_().clamp_(0, 255).byte().permute(1, 2, 0).numpy()
    return x, image


@torch.no_grad()
def predict(model, images, device) -> np.ndarray:
    """(N, H, W) train ids of ``model`` on a batch of [0, 1] images (N, 3, H, W)."""
    return _logits(model, normalize(images.to(device))).argmax(1).cpu().numpy()


def blend(image, colours, alpha: float) -> np.ndarray:
    return (image * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def build_parser():
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Outputs, names and errors: python -c 'import npdg.predict; help(npdg.predict)'.")
    p.add_argument("checkpoint", metavar="CKPT|RUN_DIR", help="npdg model file, or a run directory (its final.pt)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="PNG/JPEG files and folders of them")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder (created; nothing in it is overwritten)")
    p.add_argument("--size", type=hw_arg, default=None, metavar="HxW",
                   help="resize every image to HxW (default: each at its own size)")
    p.add_argument("--batch-size", "--batch_size", type=cli.int_at_least(1), default=4, metavar="N",
                   help="images of the same size per forward pass (4)")
    p.add_argument("--compare", metavar="CKPT2|RUN_DIR2",
                   help="a second model: also write NAME_compare.png (image | overlay | overlay of CKPT2)")
    p.add_argument("--alpha", type=cli.float_in(0, 1), default=0.5, metavar="A",
                   help="overlay opacity of the colours, 0..1 (0.5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda[:i]")
    cli.add_debug(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.guard(PROG, args.debug, lambda: _run(args))


def _run(args) -> int:
    # everything that can fail on user input happens before any file is written
    import npdg

    device = cli.resolve_device(args.device)
    sources = [model_file(args.checkpoint)] + ([model_file(args.compare)] if args.compare else [])
    files = image_files(args.inputs)
    if args.out.exists() and not args.out.is_dir():
        raise cli.UsageError(f"--out {args.out} is a file, not a folder")
    kinds = ("pred", "overlay", "compare")[:3 if args.compare else 2]
    outputs = [{kind: args.out / f"{name}_{kind}.png" for kind in kinds} for name in unique_names(files)]
    for path in (p for planned in outputs for p in planned.values()):
        if path.exists():
            raise FileExistsError(f"{path} already exists; predict never overwrites a file: remove it or choose "
                                  "another --out")
    models = [npdg.load_model(src).to(device).eval() for src in sources]

    skipped = []

    def skip(exc):
        skipped.append(exc)
        tqdm.write(f"{PROG}: warning: {cli.one_line(exc)}; skipped", file=sys.stderr)

    groups = {}  # (H, W) -> [(file, outputs)]: same-size images run together
    for f, planned in zip(files, outputs, strict=True):
        try:
            groups.setdefault(tuple(args.size or image_size(f)), []).append((f, planned))
        except DatasetError as exc:
            skip(exc)
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    with tqdm(total=len(files), desc="predict", unit="img", leave=False) as bar:
        bar.update(len(skipped))
        for group in groups.values():
            for start in range(0, len(group), args.batch_size):
                batch = []
                for f, planned in group[start:start + args.batch_size]:
                    try:
                        batch.append((*load_image(f, args.size), planned))
                    except DatasetError as exc:  # e.g. a truncated file with an intact header
                        skip(exc)
                        bar.update()
                if not batch:
                    continue
                x = torch.stack([b[0] for b in batch])
                preds = [predict(model, x, device) for model in models]
                for i, (_, image, planned) in enumerate(batch):
                    colours = [colorize(p[i]) for p in preds]
                    overlays = [blend(image, c, args.alpha) for c in colours]
                    save_image(colours[0], planned["pred"])
                    save_image(overlays[0], planned["overlay"])
                    if "compare" in planned:
                        save_image(np.concatenate([image, *overlays], axis=1), planned["compare"])
                    written += 1
                    bar.update()
    note = f"; {len(skipped)} unreadable image(s) skipped (see the warnings above)" if skipped else ""
    print(f"wrote {written} of {len(files)} images ({written * len(kinds)} files: NAME_{{{','.join(kinds)}}}.png) "
          f"to {args.out}{note}")
    return 2 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
