"""Data CLI.

    python -m npdg.data export --domain fog --split val --num 100 --out data/fog_val \
        [--layout folder] [--size 256x512] [--seed 0]
        writes DIR/images/NAME.png and DIR/labels/NAME.png (train ids, 255 = ignore): a folder dataset
        that ``python -m npdg.eval --data folder:DIR`` reads back bit-exactly (default size 128x256).
    python -m npdg.data export --layout cityscapes|gta5|bdd100k|mapillary|synthia --domain fog --split val \
        --num 100 --out ROOT [--size HxW] [--fixed_size] [--seed 0]
        writes the same synthetic scenes in that real dataset's exact on-disk layout and label encoding
        (Cityscapes label ids, GTA5 / Mapillary palette PNGs, BDD100K JPEGs + train ids, SYNTHIA 16-bit
        PNGs), at the dataset's native resolution unless --size is given; ``--data LAYOUT:ROOT`` reads
        it back as the same train ids. Splits: cityscapes / bdd100k train|val|test; gta5 / synthia
        train|val|test (also written as ROOT/SPLIT.txt) or all; mapillary training|validation|testing
        (train|val|test accepted). Mapillary image sizes vary per image (around --size when given)
        unless --fixed_size. Details: :mod:`npdg.data.export`.
    python -m npdg.data preview --out domains.png [--num 3] [--size 128x256]
        one row per scene: every domain side by side plus the colour-coded labels.
"""

import sys
from pathlib import Path

import numpy as np

from npdg import cli
from npdg.checkpoint import save_image

from .base import DatasetError
from .export import LAYOUTS, NATIVE_SIZE, export, export_layout, resolve_split
from .labels import colorize
from .spec import hw_arg
from .synthetic import DEFAULT_SIZE, DOMAINS, SPLITS, SyntheticSegmentation


def _hw(text):
    return hw_arg(text, min_side=8)  # smaller scenes lose their thin objects entirely


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
    e = sub.add_parser("export", help="write a domain/split as a folder dataset or in a real dataset's layout")
    e.add_argument("--layout", default="folder", choices=LAYOUTS,
                   help="on-disk format (default %(default)s: DIR/images + DIR/labels train-id PNGs)")
    e.add_argument("--domain", required=True, choices=DOMAINS)
    e.add_argument("--split", default="val",
                   help="train|val|test; gta5/synthia also all; mapillary training|validation|testing")
    e.add_argument("--num", type=int, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--size", type=_hw, default=None,
                   help=f"HxW (default: the layout's native size, {'x'.join(map(str, DEFAULT_SIZE))} for folder)")
    e.add_argument("--fixed_size", action="store_true",
                   help="mapillary: every image at --size (default: sizes vary per image like real Mapillary)")
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
    if args.cmd == "export":
        try:
            resolve_split(args.layout, args.split)
        except DatasetError as exc:
            p.error(f"argument --split: {exc}")
    return cli.guard(p.prog, args.debug, lambda: _run(args))


def _run(args) -> int:
    if args.cmd == "export" and args.layout == "folder":
        out = export(args.domain, args.split, args.num, args.out, args.size or NATIVE_SIZE["folder"], args.seed)
        print(f"wrote {args.num} samples to {out}/images and {out}/labels")
    elif args.cmd == "export":
        out = export_layout(args.layout, args.domain, args.split, args.num, args.out, args.size, args.seed,
                            fixed_size=args.fixed_size)
        print(f"wrote {args.num} samples to {out} in the {args.layout} layout (read it as {args.layout}:{out})")
    else:
        print(f"wrote {preview(args.out, args.num, args.size, args.split, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
