"""Shared dataset machinery: the sample contract, file reading with clear errors, image/label pairing.

Sample contract (every dataset in :mod:`npdg.data`): ``dataset[i] -> (image, label)`` with
``image`` float32 (3, H, W) — ImageNet-normalized (see :mod:`.transforms`) when ``normalize=True``
(default), else values in [0, 1] — and ``label`` int64 (H, W) Cityscapes train ids, 255 = ignore.
``dataset.raw(i)`` gives the un-transformed uint8 (H, W, 3) image and uint8 (H, W) label;
``dataset.name(i)`` a stable file stem for that sample.
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .labels import IGNORE_INDEX, UNDEFINED
from .transforms import normalize as _normalize
from .transforms import resize as _resize

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """Bad or inconsistent data on disk; the message names the file and the problem."""


class SegmentationDataset(torch.utils.data.Dataset):
    """Base class. Subclasses implement ``__len__``, ``load(i) -> (uint8 HxWx3, uint8 HxW train ids)``
    and ``name(i)``.

    ``size`` (H, W) resizes every sample (labels nearest). ``transform(image01, label, generator)``
    (e.g. :class:`.transforms.TrainAugment`) runs before normalization with a generator seeded from
    (``aug_seed``, epoch, index): call :meth:`set_epoch` each epoch for fresh but reproducible crops.
    """

    def __init__(self, size=None, transform=None, normalize=True, aug_seed=0):
        self.size = tuple(int(s) for s in size) if size is not None else None
        self.transform, self.normalize, self.aug_seed, self.epoch = transform, normalize, aug_seed, 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def load(self, index):
        raise NotImplementedError

    def name(self, index):
        return f"{index:06d}"

    def raw(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        return self.load(index)

    def __getitem__(self, index):
        image, label = self.raw(index)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        label = torch.from_numpy(label.astype(np.int64))
        if self.size is not None:
            image, label = _resize(image, label, self.size)
        if self.transform is not None:
            g = torch.Generator().manual_seed(hash((self.aug_seed, self.epoch, index)) & (2**62 - 1))
            image, label = self.transform(image, label, g)
        if self.normalize:
            image = _normalize(image)
        return image, label


def require_dir(path, what):
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: directory {path} does not exist")
    return path


def read_image(path):
    """RGB uint8 (H, W, 3); unreadable / truncated files raise DatasetError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))  # a writable copy (torch.from_numpy needs one)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def read_label(path):
    """Label PNG as stored: palette indices / 'L' / 16-bit grey -> int64 (H, W); colour (RGB, 8 bit
    per channel as Pillow decodes it) -> uint8 (H, W, C)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.int64)
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read label ({e})") from e


def map_ids(ids, lut, path, unknown="error"):
    """Map raw ids through ``lut``; ids the table does not define raise, or become 255 when
    ``unknown="ignore"`` (only for datasets whose convention allows stray ids)."""
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= len(lut):
        bad = ids[(ids < 0) | (ids >= len(lut))]
        if unknown != "ignore":
            raise DatasetError(f"{path}: label ids {sorted(set(bad.tolist()))[:8]} outside the valid range "
                               f"0..{len(lut) - 1}")
        ids = np.where((ids < 0) | (ids >= len(lut)), len(lut) - 1, ids)
    out = lut[ids]
    if (out == UNDEFINED).any():
        bad = np.unique(ids[out == UNDEFINED])
        if unknown != "ignore":
            raise DatasetError(f"{path}: label ids {bad[:8].tolist()} are not defined for this dataset")
        out = np.where(out == UNDEFINED, IGNORE_INDEX, out)
    return out.astype(np.uint8)


def list_images(directory, recursive=False, suffix=""):
    """Sorted image files in ``directory`` whose name ends with ``suffix`` + an image extension."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(directory).glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and p.stem.endswith(suffix))


def pair_files(images, label_for, what):
    """[(image, label)] with ``label_for(image) -> Path``; an image without label is an error."""
    if not images:
        raise DatasetError(f"{what}: no images found")
    pairs = []
    for img in images:
        lab = label_for(img)
        if not lab.is_file():
            raise DatasetError(f"{what}: image {img} has no label (expected {lab})")
        pairs.append((img, lab))
    return pairs


class PairedFiles(SegmentationDataset):
    """Image/label file pairs mapped to train ids through a lookup table.

    ``read_ids(path) -> int array`` reads a label file's raw ids (default: single-channel PNG);
    ``num`` keeps the first ``num`` pairs (sorted order).
    """

    def __init__(self, pairs, lut, *, unknown="error", read_ids=None, num=None, **kwargs):
        super().__init__(**kwargs)
        self.pairs = list(pairs)[: num if num is not None else None]
        self.lut, self.unknown = lut, unknown
        self.read_ids = read_ids or self.read_single_channel

    @staticmethod
    def read_single_channel(path):
        ids = read_label(path)
        if ids.ndim != 2:
            raise DatasetError(f"{path}: expected a single-channel id PNG, got a colour image "
                               "(colour-coded labels are not supported for this dataset)")
        return ids

    def __len__(self):
        return len(self.pairs)

    def name(self, index):
        return self.pairs[index][0].stem

    def load(self, index):
        img_path, lab_path = self.pairs[index]
        image = read_image(img_path)
        ids = self.read_ids(lab_path)
        if ids.shape[:2] != image.shape[:2]:
            raise DatasetError(f"{lab_path}: label size {ids.shape[1]}x{ids.shape[0]} (WxH) does not match "
                               f"image {img_path} size {image.shape[1]}x{image.shape[0]}")
        return image, map_ids(ids, self.lut, lab_path, self.unknown)

    def __repr__(self):
        root = os.path.commonpath([str(p[0]) for p in self.pairs]) if self.pairs else "?"
        return f"{type(self).__name__}({len(self)} samples under {root})"
