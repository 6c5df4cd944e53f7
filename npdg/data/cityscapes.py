"""Cityscapes (fine annotations).

    ROOT/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{name}_gtFine_labelIds.png      label ids 0..33 -> 19 train ids

Label ids above 33 do not exist in Cityscapes and are reported as corrupt labels.
"""

from .base import DatasetError, PairedFiles, list_images, pair_files, require_dir
from .labels import CITYSCAPES_LUT

SPLITS = ("train", "val", "test")


class CityscapesSegmentation(PairedFiles):
    def __init__(self, root, split="val", num=None, **kwargs):
        if split not in SPLITS:
            raise DatasetError(f"Cityscapes split must be one of {SPLITS}, got {split!r}")
        root = require_dir(root, "Cityscapes")
        image_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes images")
        label_dir = require_dir(root / "gtFine" / split, "Cityscapes labels")
        images = list_images(image_dir, recursive=True, suffix="_leftImg8bit")

        def label_for(img):
            stem = img.stem[: -len("_leftImg8bit")]
            return label_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"

        super().__init__(pair_files(images, label_for, f"Cityscapes {split} under {root}"), CITYSCAPES_LUT,
                         num=num, **kwargs)
