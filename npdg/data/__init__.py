"""Datasets, the embedded synthetic benchmark, augmentation and label mappings.

    from npdg.data import build_dataset
    ds = build_dataset("synthetic:fog", split="val", size=(128, 256), num=100)
    image, label = ds[0]   # float32 (3, H, W) ImageNet-normalized, int64 (H, W) train ids, 255 = ignore

Export the benchmark as a folder dataset: ``python -m npdg.data export --domain fog --split val
--num 100 --out DIR``.
"""

from .base import DatasetError, SegmentationDataset
from .labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize
from .spec import KINDS, SpecError, build_dataset, parse_spec
from .synthetic import DOMAINS, TARGET_DOMAINS, SyntheticSegmentation

__all__ = [
    "CLASSES", "DOMAINS", "IGNORE_INDEX", "KINDS", "NUM_CLASSES", "PALETTE", "TARGET_DOMAINS",
    "DatasetError", "SegmentationDataset", "SpecError", "SyntheticSegmentation", "build_dataset", "colorize",
    "parse_spec",
]
