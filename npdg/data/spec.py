"""Dataset SPECs: ``KIND:ARG`` strings that name a dataset, shared by ``npdg.train`` and ``npdg.eval``.

    synthetic:DOMAIN   embedded benchmark (DOMAIN in npdg.data.DOMAINS), generated at ``size``
    folder:DIR         DIR/images + DIR/labels (train ids) — the export format
    cityscapes:ROOT  gta5:ROOT  bdd100k:ROOT  mapillary:ROOT  synthia:ROOT
"""

import argparse

from .base import DatasetError

KINDS = ("synthetic", "folder", "cityscapes", "gta5", "bdd100k", "mapillary", "synthia")
# split used when the caller passes split=None (GTA5 / SYNTHIA have no official split)
DEFAULT_SPLIT = {"synthetic": "val", "cityscapes": "val", "gta5": "all", "bdd100k": "val",
                 "mapillary": "validation", "synthia": "all", "folder": None}


class SpecError(ValueError):
    """A malformed or unknown dataset SPEC."""


def hw_arg(text, min_side=1):
    """argparse type for an image size 'HxW' -> (H, W); shared by the eval and data CLIs."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 128x256), got {text!r}") from None
    if h < min_side or w < min_side:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (min {min_side}x{min_side})")
    return h, w


def parse_spec(spec):
    """'KIND:ARG' -> (kind, arg); raises SpecError listing the valid kinds."""
    kind, sep, arg = str(spec).partition(":")
    if not sep or kind not in KINDS or not arg:
        raise SpecError(f"bad dataset spec {spec!r}: expected KIND:ARG with KIND one of {', '.join(KINDS)} "
                        "(e.g. synthetic:source, folder:DIR, cityscapes:ROOT)")
    return kind, arg


def build_dataset(spec, split=None, size=None, num=None, seed=0, *, transform=None, normalize=True, **kwargs):
    """Dataset for a SPEC; see :class:`npdg.data.base.SegmentationDataset` for the sample contract.

    ``split``: None = the kind's default (val / validation / all). ``size`` (H, W): generation size for
    synthetic, a resize (labels nearest) for on-disk data, None = native. ``num``: number of synthetic
    scenes / first N on-disk samples (None or 0 = default / all). ``seed``: synthetic scene seed.
    Extra ``kwargs`` go to the dataset class (e.g. ``cache=True`` for synthetic).
    """
    kind, arg = parse_spec(spec)
    split = split or DEFAULT_SPLIT[kind]
    num = num or None
    common = dict(transform=transform, normalize=normalize, **kwargs)
    if kind == "synthetic":
        from .synthetic import DOMAINS, SyntheticSegmentation

        if arg not in DOMAINS:
            raise SpecError(f"bad dataset spec {spec!r}: unknown synthetic domain; "
                            f"valid: {', '.join(DOMAINS)}")
        return SyntheticSegmentation(arg, split, size=size, num=num, seed=seed, **common)
    common["size"] = size
    if kind == "folder":
        from .folder import FolderSegmentation

        return FolderSegmentation(arg, num=num, **common)
    from .bdd100k import BDD100KSegmentation
    from .cityscapes import CityscapesSegmentation
    from .gta5 import GTA5Segmentation
    from .mapillary import MapillarySegmentation
    from .synthia import SynthiaSegmentation

    cls = {"cityscapes": CityscapesSegmentation, "gta5": GTA5Segmentation, "bdd100k": BDD100KSegmentation,
           "mapillary": MapillarySegmentation, "synthia": SynthiaSegmentation}[kind]
    return cls(arg, split=split, num=num, **common)


__all__ = ["KINDS", "DatasetError", "SpecError", "build_dataset", "parse_spec"]
