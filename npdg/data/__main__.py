"""Data CLI.

    python -m npdg.data export --domain fog --split val --num 100 --out data/fog_val \
        [--size 256x512] [--seed 0]
        writes DIR/images/NAME.png and DIR/labels/NAME.png (train ids, 255 = ignore): a folder dataset
        that ``python -m npdg.eval --data folder:DIR`` reads back bit-exactly.
    python -m npdg.data preview --out domains.png [--num 3] [--size 128x256]
        one row per scene: every domain side by side plus the colour-coded labels.
"""

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from npdg import cli
from npdg.checkpoint import save_image

from .labels import colorize
from .spec import hw_arg
from .synthetic import DEFAULT_SIZE, DOMAINS, SPLITS, SyntheticSegmentation


def _hw(text):
    return hw_arg(text, min_side=8)  # smaller scenes lose their thin objects entirely


def export(domain, split, num, out, size=DEFAULT_SIZE, seed=0, progress=True):
    """Write ``num`` synthetic samples as a folder dataset under ``out``; returns the output Path."""
    ds = SyntheticSegmentation(domain, split, size=size, num=num, seed=seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(ds)), desc=f"export {domain}/{split}", disable=not progress):
        image, label = ds.raw(i)
        name = ds.name(i)
        save_image(image, out / "images" / f"{name}.png")
        save_image(label, out / "labels" / f"{name}.png")
    return out


def preview(out, num=3, size=DEFAULT_SIZE, split="val", seed=0):
    rows = []
    for i in range(num):
        tiles = [SyntheticSegmentation(d, split, size=size, num=num, seed=seed).raw(i)[0] for d in DOMAINS]
        label = SyntheticSegmentation("source", split, size=size, num=num, seed=seed).raw(i)[1]
        rows.append(np.concatenate(tiles + [colorize(label)], axis=1))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_image(np.concatenate(rows, axis=0), out)
    return Path(out)


def main(argv=None):
    p = cli.Parser(prog="python -m npdg.data", description="Embedded synthetic benchmark tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write a domain/split as DIR/images + DIR/labels PNGs")
    e.add_argument("--domain", required=True, choices=DOMAINS)
    e.add_argument("--split", default="val", choices=tuple(SPLITS))
    e.add_argument("--num", type=int, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--size", type=_hw, default=DEFAULT_SIZE, help="HxW (default %(default)s)")
    e.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("preview", help="PNG grid of a few scenes in every domain")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--num", type=int, default=3)
    v.add_argument("--size", type=_hw, default=DEFAULT_SIZE)
    v.add_argument("--split", default="val", choices=tuple(SPLITS))
    v.add_argument("--seed", type=int, default=0)
    for sp in (e, v):
        cli.add_debug(sp)
    args = p.parse_args(argv)
    if args.num < 1:
        p.error("--num must be >= 1")
    return cli.guard(p.prog, args.debug, lambda: _run(args))


def _run(args) -> int:
    if args.cmd == "export":
        out = export(args.domain, args.split, args.num, args.out, args.size, args.seed)
        print(f"wrote {args.num} samples to {out}/images and {out}/labels")
    else:
        print(f"wrote {preview(args.out, args.num, args.size, args.split, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
