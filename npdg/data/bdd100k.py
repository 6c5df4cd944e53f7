"""BDD100K semantic segmentation (10K images; labels are already Cityscapes train ids, 255 = ignore).

Current layout:  ROOT/images/10k/{split}/NAME.jpg  +  ROOT/labels/sem_seg/masks/{split}/NAME.png
Older layout:    ROOT/seg/images/{split}/NAME.jpg  +  ROOT/seg/labels/{split}/NAME_train_id.png

ROOT may also be the ``bdd100k`` folder itself or its ``seg`` folder. Values other than 0..18 / 255
are reported as corrupt labels.
"""

from .base import PairedFiles, list_images, pair_files, require_dir
from .labels import TRAIN_ID_LUT


class BDD100KSegmentation(PairedFiles):
    def __init__(self, root, split="val", num=None, **kwargs):
        root = require_dir(root, "BDD100K")
        layouts = [
            (root / "images" / "10k" / split, root / "labels" / "sem_seg" / "masks" / split, ""),
            (root / "seg" / "images" / split, root / "seg" / "labels" / split, "_train_id"),
            (root / "images" / split, root / "labels" / split, "_train_id"),  # ROOT = .../seg
        ]
        found = [layout for layout in layouts if layout[0].is_dir()]
        if not found:
            raise FileNotFoundError(f"BDD100K: no {split!r} images under {root} (looked for "
                                    + ", ".join(str(layout[0]) for layout in layouts) + ")")
        image_dir, label_dir, suffix = found[0]
        require_dir(label_dir, "BDD100K labels")
        pairs = pair_files(list_images(image_dir), lambda p: label_dir / f"{p.stem}{suffix}.png",
                           f"BDD100K {split} under {root}")
        super().__init__(pairs, TRAIN_ID_LUT, num=num, **kwargs)
