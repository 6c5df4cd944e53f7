"""SYNTHIA RAND-CITYSCAPES.

    ROOT/RGB/NNNNNNN.png
    ROOT/GT/LABELS/NNNNNNN.png   16-bit-per-channel PNG; the class id (0..22) is in the FIRST channel
                                 (the second holds instance ids)

Pillow decodes 16-bit colour PNGs to 8 bits by keeping only the high byte of each sample, which turns
every class id (< 256) into 0. :func:`read_png16` therefore decodes such files twice through Pillow's
own PNG decoder, asking for the high and then the low byte of each sample, and combines them to the
exact 16-bit values; if that ever fails (a Pillow without the raw modes) it falls back to a small
zlib + numpy decoder (correct but slow). 8-bit labels (converted copies) are read as usual.
Class ids map to train ids with :data:`npdg.data.labels.SYNTHIA_ID_TO_TRAIN` (the usual 16-class
mapping); ids > 22 are reported as corrupt labels.
"""

import struct
import sys
import zlib

import numpy as np
from PIL import Image

from .base import DatasetError, PairedFiles, list_images, pair_files, read_label, require_dir
from .labels import SYNTHIA_LUT

_RAW16 = {"RGB": "RGB;16", "RGBA": "RGBA;16"}
_warned = []


def _pillow_bytes(path, byte):
    """Decode with Pillow, keeping the high ('B') or low ('L') byte of every 16-bit big-endian sample."""
    with Image.open(path) as im:
        tile = im.tile[0]
        args = tile[3]
        if len(im.tile) != 1 or args not in (_RAW16.get(im.mode, "") + "B",):
            return None
        raw = _RAW16[im.mode] + byte  # 'RGB;16L' unpacks bytes 1, 3, 5 = the low bytes of big-endian data
        im.tile = [tile._replace(args=raw) if hasattr(tile, "_replace") else (*tile[:3], raw)]
        im.load()
        return np.asarray(im)


def _decode_png16(data, path):
    """Minimal PNG decoder for non-interlaced 16-bit grey/RGB(A) files (fallback path)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DatasetError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    w, h, depth, ctype, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    if depth != 16 or interlace:
        raise DatasetError(f"{path}: fallback decoder handles only non-interlaced 16-bit PNGs")
    bpp, stride = 2 * channels, 2 * channels * w
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for r in range(h):
        kind, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        if kind == 1:  # Sub: running sum per byte position modulo 256
            line = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) & 255
        elif kind == 2:
            line = (line + prev) & 255
        elif kind in (3, 4):  # Average / Paeth depend on the decoded left neighbour: pixel by pixel
            cur = line.copy()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                if kind == 3:
                    pred = (a + b) >> 1
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 255
            line = cur
        out[r], prev = line, line
    values = out.reshape(h, w, channels, 2)
    return (values[..., 0] << 8) | values[..., 1]


def read_png16(path):
    """Exact values of a 16-bit colour PNG as int64 (H, W, C)."""
    try:
        hi = _pillow_bytes(path, "B")
        if hi is not None:
            lo = _pillow_bytes(path, "L")
            return hi.astype(np.int64) * 256 + lo
    except (OSError, SyntaxError, ValueError, AttributeError, KeyError, TypeError) as e:
        if not _warned:
            _warned.append(True)
            print(f"npdg.data.synthia: Pillow 16-bit path failed ({e}); using the slow decoder",
                  file=sys.stderr)
    try:
        with open(path, "rb") as f:
            return _decode_png16(f.read(), path).astype(np.int64)
    except (OSError, zlib.error, struct.error, TypeError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: cannot read 16-bit label ({e})") from e


def read_synthia_ids(path):
    with Image.open(path) as im:
        sixteen_bit_colour = im.mode in _RAW16 and im.tile and im.tile[0][3] == _RAW16[im.mode] + "B"
    if sixteen_bit_colour:
        return read_png16(path)[..., 0]
    ids = read_label(path)
    return ids[..., 0].astype(np.int64) if ids.ndim == 3 else ids


class SynthiaSegmentation(PairedFiles):
    """``split`` is accepted for symmetry; SYNTHIA has no official split, all pairs are read unless
    ``ROOT/{split}.txt`` lists image names."""

    def __init__(self, root, split="all", num=None, **kwargs):
        root = require_dir(root, "SYNTHIA")
        image_dir = require_dir(root / "RGB", "SYNTHIA images")
        label_dir = require_dir(root / "GT" / "LABELS", "SYNTHIA labels")
        images = list_images(image_dir)
        if split not in (None, "all"):
            listing = root / f"{split}.txt"
            if not listing.is_file():
                raise DatasetError(f"SYNTHIA: split {split!r} needs the list file {listing} "
                                   "(or use split='all')")
            images = [image_dir / line.strip() for line in listing.read_text().splitlines() if line.strip()]
        pairs = pair_files(images, lambda p: label_dir / (p.stem + ".png"), f"SYNTHIA under {root}")
        super().__init__(pairs, SYNTHIA_LUT, read_ids=self._read, num=num, **kwargs)

    @staticmethod
    def _read(path):
        try:
            return read_synthia_ids(path)
        except (OSError, SyntaxError) as e:
            raise DatasetError(f"{path}: cannot read label ({e})") from e
