"""Image-level DSP CLI: train the AdaIN style generator on the source domain, and look at its styles.

    python -m npdg.dsp train --out runs/gen [--preset quick|default] [--source synthetic:source]
        [--iters N] [--size HxW] [--batch B] [--lr LR] [--encoder_weights vgg19.pth] [--beta B]
        [--style_weight W] [--seed S] [--width W] [--num N] [--device cpu|cuda]
        writes DIR/generator.pt (npdg.dsp.generator.load_generator), DIR/config.json, DIR/loss.png and
        DIR/preview.png. Style pairs: each image of a batch takes the style of its neighbour in the batch.
        --preset quick: 64x128, width-8 encoder, < 1 min on a 2-core CPU; default: 128x256, VGG width
        64 (what ImageNet VGG weights need), 5000 iterations (a GPU job).
    python -m npdg.dsp preview --checkpoint runs/gen --out grid.png [--num 4] [--styles 4] [--adv_steps 2]
        [--model_checkpoint model.pt]
        rows = source val images; columns = the original, its own style through the D-VAE (eps = 0),
        ``--styles`` sampled styles (eps ~ N(0, I)) and the same eps pushed adversarially.

Adversarial objective: with ``--model_checkpoint``, the model's cross-entropy on the restyled images
(what training maximises); without a model, the style distance (MSE of per-channel means and stds over
the encoder's style layers) between the restyled image and the original, i.e. eps is pushed away from
the content's own style.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import npdg
from npdg import cli
from npdg.checkpoint import save_figure, write_json
from npdg.data.spec import build_dataset, hw_arg
from npdg.data.transforms import denormalize
from npdg.dsp.adversarial import ascend
from npdg.dsp.generator import StyleGenerator, load_generator, save_generator
from npdg.reference import style_stats

# threads: 0 = torch's default. quick uses 1: its tiny convs gain nothing from intra-op threads, and on a
# busy 2-core machine OpenMP spin-waits made a width-8 iteration ~10x slower with 2 threads (0.3 s -> 3 s).
PRESETS = {
    "quick": {"size": (64, 128), "width": 8, "depth": 2, "iters": 150, "batch": 4, "lr": 2e-3, "num": 64,
              "threads": 1},
    "default": {"size": (128, 256), "width": 64, "depth": 4, "iters": 5000, "batch": 8, "lr": 1e-4, "num": 0,
                "threads": 0},
}


# Preview ascent step: eps ~ N(0, I) has norm ~ sqrt(latent) ~ 6, and the source's own style spread is narrow
# (DESIGN 2.5), so steps of 1 barely change a picture; 2 steps of 10 show the direction the adversary takes.
ADV_STEP_SIZE = 10.0


def _size(text):
    return hw_arg(text, min_side=16)  # the decoder's reflection padding needs a >= 2x2 bottleneck


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m npdg.dsp", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the style generator (decoder + D-VAE) on the source domain")
    t.add_argument("--out", type=Path, required=True, help="run directory")
    t.add_argument("--source", default="synthetic:source", help="dataset SPEC (default %(default)s)")
    t.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    t.add_argument("--iters", type=int, help="training iterations (preset)")
    t.add_argument("--size", type=_size, help="HxW training / preview size (preset)")
    t.add_argument("--batch", type=int, help="batch size (preset)")
    t.add_argument("--lr", type=float, help="Adam learning rate (preset)")
    t.add_argument("--width", type=int, help="encoder conv1_1 channels (preset; taken from --encoder_weights)")
    t.add_argument("--depth", type=int, choices=(2, 3, 4),
                   help="bottleneck relu{depth}_1 (4 = AdaIN paper's relu4_1; preset)")
    t.add_argument("--num", type=int, help="source images to draw from (0 = the whole split; preset)")
    t.add_argument("--encoder_weights", help="torchvision vgg19/vgg16 or AdaIN vgg_normalised state dict")
    t.add_argument("--beta", type=float, default=1e-3, help="D-VAE KL weight (default %(default)s)")
    t.add_argument("--style_weight", type=float, default=10.0, help="style loss weight (default %(default)s)")
    t.add_argument("--identity_weight", type=float, default=1.0,
                   help="pixel loss of the own-style reconstruction (0 = the AdaIN paper's loss)")
    t.add_argument("--seed", type=int, default=0, help="encoder init, data and training seed")
    t.add_argument("--threads", type=int, help="torch intra-op threads (0 = torch default; preset)")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    v = sub.add_parser("preview", help="PNG grid: originals, sampled and adversarial styles")
    v.add_argument("--checkpoint", type=Path, required=True, help="run directory or generator.pt")
    v.add_argument("--out", type=Path, required=True, help="PNG file")
    v.add_argument("--num", type=int, default=4, help="content images (rows)")
    v.add_argument("--styles", type=int, default=4, help="sampled styles (columns), each also pushed adversarially")
    v.add_argument("--adv_steps", type=int, default=2, help="ascent steps (0 = no adversarial columns)")
    v.add_argument("--adv_step_size", type=float, default=ADV_STEP_SIZE,
                   help="ascent step (eps units per step; default %(default)s)")
    v.add_argument("--eps_scale", type=float, default=1.0, help="latent noise scale")
    v.add_argument("--model_checkpoint", type=Path, help="segmentation model (npdg.save_model): adversary = its loss")
    v.add_argument("--source", help="dataset SPEC (default: the generator's training source)")
    v.add_argument("--size", type=_size, help="HxW (default: the generator's training size)")
    v.add_argument("--seed", type=int, default=0)
    for sp in (t, v):
        cli.add_debug(sp)
    return p


# --- preview


def _stack(ds, num):
    samples = [ds[i] for i in range(min(num, len(ds)))]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def style_distance(gen, images, own) -> torch.Tensor:
    """Sum over the encoder's style layers of the MSE of per-channel means and stds, images vs ``own`` stats."""
    return sum(F.mse_loss(m, om) + F.mse_loss(s, os_) for (m, s), (om, os_)
               in zip((style_stats(f) for f in gen.encoder(images)), own, strict=True))


def preview_columns(gen, images, labels=None, model=None, styles=4, adv_steps=2, adv_step_size=ADV_STEP_SIZE,
                    eps_scale=1.0, seed=0) -> list[tuple[str, torch.Tensor]]:
    """[(column title, normalised images)]: original, own style (eps = 0), sampled and adversarial styles.
    Titles of generated columns carry d = their style distance from the originals (batch mean)."""
    g = torch.Generator().manual_seed(seed)
    size = images.shape[-2:]
    with torch.no_grad():
        feat = gen.bottleneck(images)
        own = [style_stats(f) for f in gen.encoder(images)]
    latent = gen.dvae.latent

    def objective(e):
        out = gen.restyle(feat, size, e, eps_scale)
        if model is not None:
            return F.cross_entropy(model(out).float(), labels, ignore_index=255)
        return style_distance(gen, out, own)

    @torch.no_grad()
    def column(title, eps):
        out = gen.restyle(feat, size, eps, eps_scale)
        return f"{title}\nd={float(style_distance(gen, out, own)):.3g}", out

    cols, adv = [("original", images), column("own style (eps=0)", torch.zeros(len(images), latent))], []
    for j in range(styles):
        eps = torch.randn(len(images), latent, generator=g).to(images.device)
        cols.append(column(f"sampled {j + 1}", eps))
        if adv_steps:
            adv.append(column(f"adversarial {j + 1}", ascend(eps, objective, adv_steps, adv_step_size)))
    return cols + adv


def save_grid(columns, out, note="") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, h, w = len(columns[0][1]), *columns[0][1].shape[-2:]
    tile_w = max(2.0, w / 100)
    fig, axes = plt.subplots(rows, len(columns), squeeze=False,
                             figsize=(tile_w * len(columns), tile_w * h / w * rows + 0.6))
    for c, (title, imgs) in enumerate(columns):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(denormalize(imgs[r].detach().cpu().float()).clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=100)
    plt.close(fig)
    return out


def _note(adv_steps, model):
    if not adv_steps:
        return ""
    target = "the model's loss" if model is not None else "style distance from the original"
    return f"adversarial: {adv_steps} ascent steps on {target}"


# --- train


def _plot_losses(history, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in history[0]:
        ax.plot([h[key] for h in history], label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title("style generator training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    plt.close(fig)


def train(args, gen, ds) -> dict:
    """Train decoder + D-VAE of ``gen`` on ``ds``; writes the run directory; returns the final losses."""
    device = cli.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen.to(device).train()
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    history, start = [], time.time()
    with torch.no_grad():  # set the D-VAE's standardiser from many images, not from the first small batch
        warm = torch.stack([ds[i][0] for i in range(min(len(ds), 32))]).to(device)
        gen.dvae.observe(*style_stats(gen.bottleneck(warm)))
    bar = tqdm(range(args.iters), desc="dsp train")
    for _ in bar:
        idx = torch.randint(len(ds), (args.batch,), generator=g).tolist()
        content = torch.stack([ds[i][0] for i in idx]).to(device)
        total, parts = gen.loss(content, content.roll(1, 0))  # style = the batch neighbour
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append({"total": total.item(), **{k: float(v) for k, v in parts.items()}})
        bar.set_postfix(loss=f"{history[-1]['total']:.3f}")
    seconds = time.time() - start
    args.out.mkdir(parents=True, exist_ok=True)
    gen.eval().cpu()
    save_generator(gen, args.out / "generator.pt")
    _plot_losses(history, args.out / "loss.png")
    val = build_dataset(args.source, split="val", size=args.size, num=4, seed=args.seed)
    save_grid(preview_columns(gen, _stack(val, 4)[0], styles=3, seed=args.seed), args.out / "preview.png",
              _note(2, None))
    config = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "generator": gen.config,
              "train_seconds": round(seconds, 1), "final": history[-1]}
    write_json(args.out / "config.json", config)
    return history[-1]


def _fill_preset(args) -> None:
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None and not (key == "width" and args.encoder_weights):
            setattr(args, key, value)


def _check(args) -> str | None:
    """The first problem with the arguments, or None."""
    if args.cmd == "train":
        for key in ("iters", "batch"):
            if getattr(args, key) < 1:
                return f"--{key} must be >= 1, got {getattr(args, key)}"
        for key in ("num", "threads"):
            if getattr(args, key) < 0:
                return f"--{key} must be >= 0, got {getattr(args, key)}"
        if args.width is not None and args.width < 1:
            return f"--width must be >= 1, got {args.width}"
        if not args.lr > 0:
            return f"--lr must be > 0, got {args.lr}"
        for key in ("beta", "style_weight", "identity_weight"):
            if getattr(args, key) < 0:
                return f"--{key} must be >= 0, got {getattr(args, key)}"
        return None
    for key in ("num", "styles", "adv_steps"):
        if getattr(args, key) < (1 if key == "num" else 0):
            return f"--{key} must be >= {1 if key == 'num' else 0}, got {getattr(args, key)}"
    if args.model_checkpoint is not None and not args.model_checkpoint.is_file():
        return f"model checkpoint {args.model_checkpoint} does not exist"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "train":
        _fill_preset(args)
    problem = _check(args)
    if problem:
        parser.error(problem)
    return cli.guard(parser.prog, args.debug, lambda: _run(args))


def _run(args) -> int:
    try:  # everything that can fail on user input happens before anything is written
        if args.cmd == "train":
            torch.manual_seed(args.seed)  # decoder / D-VAE init
            gen = StyleGenerator(width=args.width, depth=args.depth, seed=args.seed,
                                 encoder_weights=args.encoder_weights, style_weight=args.style_weight,
                                 beta=args.beta, identity_weight=args.identity_weight)
            cache = {"cache": True} if args.source.startswith("synthetic:") else {}
            ds = build_dataset(args.source, split="train", size=args.size, num=args.num, seed=args.seed, **cache)
        else:
            gen = load_generator(args.checkpoint).eval()
            saved = json.loads(cfg.read_text()) if (cfg := _run_config(args.checkpoint)) else {}
            source = args.source or saved.get("source", "synthetic:source")
            size = args.size or tuple(saved.get("size") or (128, 256))
            val = build_dataset(source, split="val", size=size, num=args.num, seed=args.seed)
            model = npdg.load_model(args.model_checkpoint).eval() if args.model_checkpoint else None
    except ValueError as e:  # e.g. encoder weights that do not fit: the user's input, not a bug
        if isinstance(e, cli.user_errors()):
            raise
        raise cli.UsageError(str(e)) from e
    if args.cmd == "train":
        final = train(args, gen, ds)
        print(f"wrote {args.out}/generator.pt, config.json, loss.png, preview.png (final loss {final['total']:.4f})")
        return 0
    images, labels = _stack(val, args.num)
    cols = preview_columns(gen, images, labels, model, args.styles, args.adv_steps, args.adv_step_size,
                           args.eps_scale, args.seed)
    print(f"wrote {save_grid(cols, args.out, _note(args.adv_steps, model))}")
    return 0


def _run_config(checkpoint: Path) -> Path | None:
    """config.json of the training run next to a generator checkpoint, when there is one."""
    cfg = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "config.json"
    return cfg if cfg.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
