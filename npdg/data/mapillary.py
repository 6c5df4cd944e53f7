"""Mapillary Vistas v1.2.

    ROOT/{split}/images/NAME.jpg
    ROOT/{split}/labels/NAME.png      66 class ids (palette PNG) or the 66-colour RGB rendering

``split`` is ``training`` / ``validation`` (``train`` / ``val`` are accepted). Ids map to the 19 train
ids with the table documented in :data:`npdg.data.labels.MAPILLARY_NAME_TO_TRAIN`; ids >= 66 or
colours outside the v1.2 palette are reported as corrupt labels.
"""

from .base import DatasetError, PairedFiles, list_images, pair_files, read_label, require_dir
from .labels import MAPILLARY_LUT, MAPILLARY_PALETTE, rgb_to_ids

_ALIASES = {"train": "training", "val": "validation", "test": "testing"}


def read_mapillary_ids(path):
    ids = read_label(path)
    if ids.ndim == 3:  # colour-coded label
        ids = rgb_to_ids(ids[..., :3], MAPILLARY_PALETTE)
        if (ids < 0).any():
            raise DatasetError(f"{path}: colours outside the Mapillary v1.2 palette")
    return ids


class MapillarySegmentation(PairedFiles):
    def __init__(self, root, split="validation", num=None, **kwargs):
        split = _ALIASES.get(split, split)
        root = require_dir(root, "Mapillary Vistas")
        image_dir = require_dir(root / split / "images", "Mapillary images")
        label_dir = require_dir(root / split / "labels", "Mapillary labels")
        pairs = pair_files(list_images(image_dir), lambda p: label_dir / (p.stem + ".png"),
                           f"Mapillary {split} under {root}")
        super().__init__(pairs, MAPILLARY_LUT, read_ids=read_mapillary_ids, num=num, **kwargs)
