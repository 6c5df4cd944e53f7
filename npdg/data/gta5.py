"""GTA5 (Playing for Data).

    ROOT/images/NNNNN.png
    ROOT/labels/NNNNN.png     palette PNG of Cityscapes label ids -> 19 train ids

GTA5 has no official train/val split: ``split="all"`` (default) reads every pair; any other split name
reads the image names listed one per line in ``ROOT/{split}.txt``. By the usual GTA5 convention, label
values without a Cityscapes meaning (a few images carry ids > 33) map to 255 instead of raising.
"""

from .base import DatasetError, PairedFiles, list_images, pair_files, require_dir
from .labels import CITYSCAPES_LUT


class GTA5Segmentation(PairedFiles):
    def __init__(self, root, split="all", num=None, **kwargs):
        root = require_dir(root, "GTA5")
        image_dir = require_dir(root / "images", "GTA5 images")
        label_dir = require_dir(root / "labels", "GTA5 labels")
        if split in (None, "all"):
            images = list_images(image_dir)
        else:
            listing = root / f"{split}.txt"
            if not listing.is_file():
                raise DatasetError(f"GTA5: split {split!r} needs the list file {listing} "
                                   "(or use split='all')")
            images = [image_dir / line.strip() for line in listing.read_text().splitlines() if line.strip()]
            missing = [p for p in images if not p.is_file()]
            if missing:
                raise DatasetError(f"GTA5: {listing} lists missing image {missing[0]}")
        super().__init__(pair_files(images, lambda p: label_dir / (p.stem + ".png"), f"GTA5 under {root}"),
                         CITYSCAPES_LUT, unknown="ignore", num=num, **kwargs)
