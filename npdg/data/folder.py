"""Generic folder dataset — the format ``python -m npdg.data export`` writes.

    DIR/images/NAME.png|jpg     RGB images
    DIR/labels/NAME.png         single-channel PNG of train ids (0..18), 255 = ignore

Any other label value is reported as a corrupt label.
"""

from .base import PairedFiles, list_images, pair_files, require_dir
from .labels import TRAIN_ID_LUT


class FolderSegmentation(PairedFiles):
    def __init__(self, root, num=None, **kwargs):
        root = require_dir(root, "folder dataset")
        images = list_images(require_dir(root / "images", "folder dataset"))
        labels = require_dir(root / "labels", "folder dataset")
        pairs = pair_files(images, lambda p: labels / (p.stem + ".png"), f"folder dataset {root}")
        super().__init__(pairs, TRAIN_ID_LUT, num=num, **kwargs)
