"""Predictions written in each dataset's own label encoding (``npdg.eval --save_pred DIR``).

    writer = PredictionWriter.for_spec("cityscapes:/data/cs", protocol, Path("preds"))  # checks, creates nothing
    writer.open()                       # creates the folder (refuses one that holds files)
    writer.write(dataset.name(i), pred)  # pred: (H, W) train ids -> one PNG in the dataset's encoding

Encodings: Cityscapes and GTA5 label ids (``*_gtFine_labelIds``' values, via
:data:`npdg.data.labels.TRAIN_TO_CITYSCAPES_ID`), the file named after the image (``{city}_{seq}_{frame}_
leftImg8bit.png``, what the Cityscapes benchmark server and ``cityscapesscripts`` look for); train ids
(0..18) for BDD100K, folder and synthetic data. Mapillary (66 classes folded into 19) and SYNTHIA (16-bit
two-channel label files) cannot be written back and are refused before any work. A prediction is written at
the size it was scored at, so an on-disk dataset must be scored at its native size (no resize / crop in its
protocol). Nothing is ever overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import TRAIN_TO_CITYSCAPES_ID
from .spec import parse_spec

ENCODINGS = {"cityscapes": "cityscapes_label_ids", "gta5": "cityscapes_label_ids", "bdd100k": "train_ids",
             "folder": "train_ids", "synthetic": "train_ids"}
NOT_WRITABLE = {"mapillary": "Mapillary's 66 label classes fold into the 19 train ids, so a prediction has no "
                             "Mapillary label id",
                "synthia": "SYNTHIA's labels are 16-bit two-channel files (class and instance)"}


class PredictionError(ValueError):
    """--save_pred cannot be served (a dataset without a writable encoding, a resizing protocol, a folder that
    holds files); the message names the path or the SPEC."""


def folder_name(spec: str) -> str:
    """A file-system-safe folder name for a SPEC: 'cityscapes:/data/cs' -> 'cityscapes_data_cs'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", spec).strip("_") or "predictions"


def encode(pred, encoding: str) -> np.ndarray:
    """(H, W) train ids (tensor or array) -> uint8 (H, W) in ``encoding``."""
    ids = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred).astype(np.int64)
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) >= len(TRAIN_TO_CITYSCAPES_ID):
        raise ValueError(f"expected (H, W) train ids in [0, {len(TRAIN_TO_CITYSCAPES_ID)}), got shape "
                         f"{ids.shape}, range {ids.min(initial=0)}..{ids.max(initial=0)}")
    if encoding == "cityscapes_label_ids":
        return TRAIN_TO_CITYSCAPES_ID[ids]
    if encoding == "train_ids":
        return ids.astype(np.uint8)
    raise ValueError(f"unknown encoding {encoding!r}")


def check_empty(folder: Path) -> None:
    """PredictionError unless ``folder`` is new or an empty directory (predictions never overwrite anything)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is a file" if not folder.is_dir() else "holds files already"
        raise PredictionError(f"--save_pred {folder}: {what}; predictions never overwrite anything: give a "
                              "new or empty folder")


class PredictionWriter:
    def __init__(self, spec: str, folder: Path, encoding: str):
        self.spec, self.folder, self.encoding, self.files = spec, Path(folder), encoding, []

    @classmethod
    def for_spec(cls, spec: str, protocol, folder: Path) -> PredictionWriter:
        """The writer of SPEC's predictions into ``folder``; PredictionError before any work when they cannot be
        written (nothing is created here)."""
        kind, _ = parse_spec(spec)
        if kind in NOT_WRITABLE:
            raise PredictionError(f"--save_pred {folder}: {spec}: {NOT_WRITABLE[kind]}; its predictions cannot be "
                                  "written in its own encoding")
        if kind != "synthetic" and (protocol.size or protocol.height or protocol.crop):
            raise PredictionError(f"--save_pred {folder}: {spec} is scored under protocol {protocol}, which resizes "
                                  "or crops: predictions are written at each label file's own size; use a native "
                                  "protocol (e.g. --protocol native, with +sliding:HxW if needed)")
        check_empty(folder)
        return cls(spec, folder, ENCODINGS[kind])

    def open(self) -> PredictionWriter:
        check_empty(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, name: str, pred) -> Path:
        path = self.folder / f"{name}.png"
        with open(path, "xb") as f:  # never overwrite (two samples with one name included)
            Image.fromarray(encode(pred, self.encoding)).save(f, format="PNG")
        self.files.append(path)
        return path


__all__ = ["ENCODINGS", "NOT_WRITABLE", "PredictionError", "PredictionWriter", "check_empty", "encode",
           "folder_name"]
