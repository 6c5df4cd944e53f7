"""Write the embedded synthetic benchmark to disk, as a folder dataset or in a real dataset's exact layout.

    export_layout("cityscapes", "fog", "val", 10, "data/cs_fog")   # then build_dataset("cityscapes:data/cs_fog")

Every layout is the one its loader in :mod:`npdg.data` reads, with the dataset's own label encoding, so
the export reads back (``build_dataset("LAYOUT:ROOT", split=...)``) as exactly the synthetic sample's
train ids at the same size; PNG images read back bit-exactly, JPEG ones (BDD100K, Mapillary) closely:

==========  ================================================================================================
folder      ROOT/images/NAME.png + ROOT/labels/NAME.png (train ids, 255 = ignore) — see :func:`export`
cityscapes  ROOT/leftImg8bit/{split}/{city}/{city}_000000_NNNNNN_leftImg8bit.png +
            ROOT/gtFine/{split}/{city}/{city}_000000_NNNNNN_gtFine_labelIds.png (label ids 0..33, ignore -> 0
            'unlabeled'); split train/val/test, images spread over that split's real city names
gta5        ROOT/images/NNNNN.png + ROOT/labels/NNNNN.png (palette PNG of Cityscapes label ids); ``split``
            train/val/test also writes ROOT/{split}.txt (the loader's ``split=...``), ``all`` writes no list
            and draws the synthetic train scenes. Numbers start at 1 (train/all), 30001 (val), 60001 (test),
            so several splits can share one ROOT; the loader's default ``split='all'`` reads them all
bdd100k     ROOT/images/10k/{split}/NAME.jpg (JPEG, quality 95) + ROOT/labels/sem_seg/masks/{split}/NAME.png
            (train ids, 255 = ignore); split train/val/test
mapillary   ROOT/{split}/images/NAME.jpg (JPEG, quality 95) + ROOT/{split}/labels/NAME.png (palette PNG of
            Mapillary v1.2 ids; each train id -> the first Mapillary class of
            :data:`~npdg.data.labels.MAPILLARY_NAME_TO_TRAIN` that maps to it, ignore -> void--unlabeled);
            split training/validation/testing (train/val/test accepted). Image sizes VARY, see below
synthia     ROOT/RGB/NNNNNNN.png + ROOT/GT/LABELS/NNNNNNN.png (16-bit-per-channel RGB PNG: SYNTHIA class id
            0..22 in the first channel, ignore -> 0 'void'; a pseudo instance id in the second, 0 in the
            third); split as for gta5 (numbers start at 0 / 1000000 / 2000000)
==========  ================================================================================================

Sizes: ``size=None`` means the dataset's native resolution (:data:`NATIVE_SIZE`: Cityscapes 1024x2048,
GTA5 1052x1914, BDD100K 720x1280, SYNTHIA 760x1280; folder keeps the benchmark's 128x256). Mapillary
images are not all the same size, and neither are these: without ``size`` they cycle through
:data:`MAPILLARY_SIZES` (real Mapillary resolutions, one portrait); with ``size`` they cycle through
``size`` scaled by :data:`MAPILLARY_SCALES` (per-axis factors 0.75..1.25, so the aspect ratio changes too);
``fixed_size=True`` writes every image at ``size`` (or ``NATIVE_SIZE['mapillary']``). Image ``i`` of the
export is synthetic scene ``i`` rendered directly at its target size — the renderer is fast enough that
nothing is upsampled: one native 1024x2048 Cityscapes image takes about 0.9 s (source/night) to 1.3 s (fog)
to render and write on one core of the 2-core build machine, about half of it PNG encoding.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from npdg.checkpoint import atomic, save_image, write_text

from .base import DatasetError
from .labels import (
    CITYSCAPES_ID_TO_TRAIN,
    IGNORE_INDEX,
    MAPILLARY_CLASSES,
    MAPILLARY_NAME_TO_TRAIN,
    MAPILLARY_PALETTE,
    NUM_CLASSES,
    PALETTE,
    SYNTHIA_ID_TO_TRAIN,
)
from .synthetic import DEFAULT_SIZE, SPLITS, SyntheticSegmentation

LAYOUTS = ("folder", "cityscapes", "gta5", "bdd100k", "mapillary", "synthia")

# (H, W) written when no size is given. Mapillary's entry is only used with fixed_size=True.
NATIVE_SIZE = {"folder": DEFAULT_SIZE, "cityscapes": (1024, 2048), "gta5": (1052, 1914), "bdd100k": (720, 1280),
               "mapillary": (2448, 3264), "synthia": (760, 1280)}
MAPILLARY_SIZES = ((2448, 3264), (3000, 4000), (1536, 2048), (2160, 3840), (2048, 1536))  # (H, W), cycled
MAPILLARY_SCALES = ((1.0, 1.0), (0.75, 0.75), (1.25, 1.25), (1.0, 0.75), (0.75, 1.0))  # (H, W) factors, cycled
MIN_SIDE = 8  # smaller scenes lose their thin objects entirely

# layout split -> synthetic split drawn
LAYOUT_SPLITS = {
    "folder": {s: s for s in SPLITS},
    "cityscapes": {s: s for s in SPLITS},
    "bdd100k": {s: s for s in SPLITS},
    "gta5": {"all": "train", **{s: s for s in SPLITS}},
    "synthia": {"all": "train", **{s: s for s in SPLITS}},
    "mapillary": {"training": "train", "validation": "val", "testing": "test"},
}
_MAPILLARY_ALIASES = {"train": "training", "val": "validation", "test": "testing"}
CITIES = {  # real Cityscapes city names per split, in sorted order (so sorted files = export order)
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg",
              "hanover", "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm",
              "weimar", "zurich"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}
_NUMBER_BLOCK = {"gta5": (5, 1, 30000), "synthia": (7, 0, 1000000)}  # name digits, first number, per-split block


def _invert(id_to_train, ignore_id, size=256):
    """train id -> dataset id: the first dataset id (in ``id_to_train`` order) mapping to each train id."""
    table = np.full(size, ignore_id, np.int64)
    for raw, train in reversed(list(id_to_train.items())):
        table[train] = raw
    missing = [t for t in range(NUM_CLASSES) if t not in id_to_train.values()]
    if missing:
        raise AssertionError(f"train ids {missing} have no dataset id")
    return table


_MAPILLARY_NAMES = [name for name, _ in MAPILLARY_CLASSES]
TRAIN_TO_ID = {
    "cityscapes": _invert(CITYSCAPES_ID_TO_TRAIN, 0),
    "gta5": _invert(CITYSCAPES_ID_TO_TRAIN, 0),
    "synthia": _invert(SYNTHIA_ID_TO_TRAIN, 0),
    "mapillary": _invert({_MAPILLARY_NAMES.index(n): t for n, t in MAPILLARY_NAME_TO_TRAIN.items()},
                         _MAPILLARY_NAMES.index("void--unlabeled")),
}


def encode_label(layout, label):
    """(H, W) train ids (0..18, 255 = ignore) -> the layout's own label ids (int64)."""
    label = np.asarray(label)
    if layout not in TRAIN_TO_ID:
        return label.astype(np.int64)  # folder / bdd100k store train ids
    bad = (label >= NUM_CLASSES) & (label != IGNORE_INDEX)
    if bad.any():
        raise DatasetError(f"train ids {np.unique(label[bad])[:8].tolist()} are not 0..18 or 255")
    return TRAIN_TO_ID[layout][label.astype(np.int64)]


def resolve_split(layout, split):
    """The layout's split name for ``split`` (Mapillary aliases resolved); DatasetError if it has none."""
    if layout not in LAYOUT_SPLITS:
        raise DatasetError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if layout == "mapillary":
        split = _MAPILLARY_ALIASES.get(split, split)
    if split not in LAYOUT_SPLITS[layout]:
        raise DatasetError(f"layout {layout} has no split {split!r}; valid: {', '.join(LAYOUT_SPLITS[layout])}"
                           + (" (or train/val/test)" if layout == "mapillary" else ""))
    return split


def image_sizes(layout, num, size=None, fixed_size=False):
    """The (H, W) of each of the ``num`` exported images (see the module docstring)."""
    if layout not in NATIVE_SIZE:
        raise DatasetError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if size is not None:
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < MIN_SIDE:
            raise DatasetError(f"size {size} must be (H, W) with both sides >= {MIN_SIDE}")
    if layout != "mapillary" or fixed_size:
        return [size or NATIVE_SIZE[layout]] * num
    if size is None:
        return [MAPILLARY_SIZES[i % len(MAPILLARY_SIZES)] for i in range(num)]
    scaled = [(max(MIN_SIDE, round(size[0] * sh)), max(MIN_SIDE, round(size[1] * sw))) for sh, sw in MAPILLARY_SCALES]
    return [scaled[i % len(scaled)] for i in range(num)]


def write_png16(path, array):
    """(H, W, 3) integers 0..65535 as a 16-bit-per-channel RGB PNG (no filter, zlib), atomically.
    Pillow cannot write 16-bit colour PNGs; :func:`npdg.data.synthia.read_png16` reads this back exactly."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.min(initial=0) < 0 or array.max(initial=0) > 65535:
        raise ValueError("write_png16 expects (H, W, 3) values in 0..65535")
    h, w, _ = array.shape
    rows = np.ascontiguousarray(array, dtype=">u2").view(np.uint8).reshape(h, w * 6)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    atomic(path, lambda f: f.write(png))


def _palette_png(path, ids, palette):
    """uint8 ids as a palette ('P') PNG with ``palette`` ((N, 3) uint8) as its colours."""
    im = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8))
    table = np.zeros((256, 3), np.uint8)
    table[:len(palette)] = palette
    im.putpalette(table.tobytes())
    save_image(im, path)


def _jpeg(path, image):
    atomic(path, lambda f: Image.fromarray(image).save(f, format="JPEG", quality=95))


# Colours of the GTA5 label palette: Cityscapes label id -> its train id's colour, void ids black.
_CITYSCAPES_ID_PALETTE = np.zeros((34, 3), np.uint8)
for _raw, _train in CITYSCAPES_ID_TO_TRAIN.items():
    _CITYSCAPES_ID_PALETTE[_raw] = PALETTE[_train]


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


def export_layout(layout, domain, split, num, out, size=None, seed=0, progress=True, *, fixed_size=False):
    """Write ``num`` samples of synthetic ``domain`` (scenes of the synthetic split that ``split`` names) under
    ``out`` in ``layout``'s on-disk format; returns the output Path. ``size`` (H, W) or None = native size.

    Sample ``i`` on disk is ``SyntheticSegmentation(domain, synthetic_split, size=image_sizes(...)[i],
    seed=seed).raw(i)``; the layout's loader returns the files in export order.
    """
    split = resolve_split(layout, split)
    num = int(num)
    if num < 1:
        raise DatasetError(f"num must be >= 1, got {num}")
    synthetic_split = LAYOUT_SPLITS[layout][split]
    if layout == "folder":
        return export(domain, synthetic_split, num, out, size or NATIVE_SIZE["folder"], seed, progress)
    sizes = image_sizes(layout, num, size, fixed_size)
    if layout in _NUMBER_BLOCK:
        digits, first, block = _NUMBER_BLOCK[layout]
        if num > block:
            raise DatasetError(f"{layout} export: at most {block} images per split, got {num}")
        base = first + block * ("train", "val", "test").index(synthetic_split)
    out = Path(out)
    datasets = {}
    names = []
    for i in tqdm(range(num), desc=f"export {layout} {domain}/{split}", disable=not progress):
        if sizes[i] not in datasets:  # the scene depends only on (seed, split, i): any size, same scene
            datasets[sizes[i]] = SyntheticSegmentation(domain, synthetic_split, size=sizes[i], num=num, seed=seed)
        image, label = datasets[sizes[i]].raw(i)
        ids = encode_label(layout, label)
        if layout == "cityscapes":
            cities = CITIES[split]
            city = cities[i * len(cities) // num]
            stem = f"{city}_000000_{i:06d}"
            img_path = out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            lab_path = out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        elif layout in _NUMBER_BLOCK:
            stem = f"{base + i:0{digits}d}"
            if layout == "gta5":
                img_path, lab_path = out / "images" / f"{stem}.png", out / "labels" / f"{stem}.png"
            else:
                img_path, lab_path = out / "RGB" / f"{stem}.png", out / "GT" / "LABELS" / f"{stem}.png"
        elif layout == "bdd100k":
            stem = f"{domain}-{split}-{i:07d}"
            img_path = out / "images" / "10k" / split / f"{stem}.jpg"
            lab_path = out / "labels" / "sem_seg" / "masks" / split / f"{stem}.png"
        else:  # mapillary
            stem = f"{domain}_{split}_{i:06d}"
            img_path, lab_path = out / split / "images" / f"{stem}.jpg", out / split / "labels" / f"{stem}.png"
        img_path.parent.mkdir(parents=True, exist_ok=True)
        lab_path.parent.mkdir(parents=True, exist_ok=True)
        if img_path.suffix == ".jpg":
            _jpeg(img_path, image)
        else:
            save_image(image, img_path)
        if layout == "gta5":
            _palette_png(lab_path, ids, _CITYSCAPES_ID_PALETTE)
        elif layout == "mapillary":
            _palette_png(lab_path, ids, MAPILLARY_PALETTE)
        elif layout == "synthia":
            # real SYNTHIA keeps instance ids in the second channel; the loader reads only the first
            write_png16(lab_path, np.stack([ids, ids * 1000 + 7, np.zeros_like(ids)], axis=-1))
        else:  # cityscapes label ids / bdd100k train ids: 8-bit single-channel PNG
            save_image(ids.astype(np.uint8), lab_path)
        names.append(img_path.name)
    if layout in _NUMBER_BLOCK and split != "all":
        write_text(out / f"{split}.txt", "".join(f"{n}\n" for n in names))
    return out


__all__ = ["LAYOUTS", "MAPILLARY_SIZES", "NATIVE_SIZE", "encode_label", "export", "export_layout", "image_sizes",
           "resolve_split", "write_png16"]
