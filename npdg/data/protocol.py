"""Evaluation protocols: at which size, and how, each dataset SPEC is scored.

One global resize would make every number meaningless on real data, so each dataset kind has the
protocol the DG-segmentation literature uses for it (RobustNet, Choi et al. CVPR 2021, whose
evaluation code SHADE, WildNet and most GTA5 -> {Cityscapes, BDD100K, Mapillary} papers reuse:
``datasets/__init__.py``, ``create_extra_val_loader``):

    cityscapes  whole image at its native 1024x2048
    bdd100k     whole image at its native 720x1280
    gta5        whole image at its native 1052x1914
    synthia     whole image at its native 760x1280
    mapillary   resized to height 1536 (aspect kept; Mapillary images vary in size), then centre
                cropped / padded to 1536x1536 (padding is ignore)  -- RobustNet's ResizeHeight(1536) +
                CenterCropPad(1536)
    folder      whole image at its native size
    synthetic   rendered at ``eval_size`` (the embedded benchmark has no native size)

A protocol is a short string (parts joined by '+'), so configs, ``npdg.eval --protocol`` and metrics.json all speak it:

    native                           the image as stored
    size:HxW                         resized to H x W (labels nearest)
    height:N                         resized to height N, aspect kept
    height:N+crop:HxW                ... then centre crop / pad to H x W (label padding = 255)
    ...+sliding:HxW[/HxW]            sliding-window inference with that window [/ stride]
                                     (default stride 2/3 of the window)

``eval_protocol`` in the training config overrides the defaults per kind or per SPEC, e.g.
``["mapillary=height:1024+crop:1024x1024", "cityscapes=native+sliding:768x768/512x512"]``
(a SPEC entry beats a kind entry; ``*`` matches every on-disk kind).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .labels import IGNORE_INDEX
from .spec import SpecError, parse_spec
from .transforms import resize as _resize


class ProtocolError(SpecError):
    """A malformed protocol string or override; the message names it."""


NATIVE_PROTOCOL = {"cityscapes": "native", "bdd100k": "native", "gta5": "native", "synthia": "native",
                   "folder": "native", "mapillary": "height:1536+crop:1536x1536"}


def _hw(text: str, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ProtocolError(f"{what}: expected HxW, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ProtocolError(f"{what}: sizes must be positive, got {text!r}")
    return h, w


@dataclass(frozen=True)
class Protocol:
    """How one dataset is evaluated: a resize (exact or to a height), a centre crop/pad, sliding windows."""

    size: tuple[int, int] | None = None  # exact resize (H, W)
    height: int | None = None  # resize to this height, aspect kept
    crop: tuple[int, int] | None = None  # centre crop / pad to (H, W) after the resize
    window: tuple[int, int] | None = None  # sliding-window inference
    stride: tuple[int, int] | None = None  # default 2/3 of the window

    @classmethod
    def parse(cls, text: str) -> Protocol:
        parts = [p.strip() for p in str(text).split("+") if p.strip()]
        if not parts:
            raise ProtocolError("empty evaluation protocol (expected e.g. native, size:HxW, height:N)")
        fields: dict = {}
        for part in parts:
            key, _, value = part.partition(":")
            key = key.strip().lower()
            if key == "native" and not value:
                continue
            if key in fields or (key == "sliding" and "window" in fields):
                raise ProtocolError(f"protocol {text!r}: {key} given twice")
            if key == "size":
                fields["size"] = _hw(value, f"protocol {text!r} size")
            elif key == "height":
                try:
                    fields["height"] = int(value)
                except ValueError:
                    raise ProtocolError(f"protocol {text!r}: height must be an int, got {value!r}") from None
                if fields["height"] <= 0:
                    raise ProtocolError(f"protocol {text!r}: height must be positive")
            elif key == "crop":
                fields["crop"] = _hw(value, f"protocol {text!r} crop")
            elif key == "sliding":
                win, _, stride = value.partition("/")
                fields["window"] = _hw(win, f"protocol {text!r} sliding window")
                if stride:
                    fields["stride"] = _hw(stride, f"protocol {text!r} sliding stride")
            else:
                raise ProtocolError(f"protocol {text!r}: unknown part {part!r} "
                                    "(expected native, size:HxW, height:N, crop:HxW, sliding:HxW[/HxW])")
        if "size" in fields and "height" in fields:
            raise ProtocolError(f"protocol {text!r}: size and height both resize; give one")
        return cls(**fields)

    def __str__(self) -> str:
        parts = []
        if self.size:
            parts.append(f"size:{self.size[0]}x{self.size[1]}")
        if self.height:
            parts.append(f"height:{self.height}")
        if self.crop:
            parts.append(f"crop:{self.crop[0]}x{self.crop[1]}")
        if not parts:
            parts.append("native")
        if self.window:
            s = f"sliding:{self.window[0]}x{self.window[1]}"
            parts.append(s + (f"/{self.stride[0]}x{self.stride[1]}" if self.stride else ""))
        return "+".join(parts)

    @property
    def sliding(self) -> bool:
        return self.window is not None

    def transform(self):
        """The dataset transform that applies the resize/crop (None when there is nothing to do; an exact
        ``size`` goes through the dataset's own ``size`` argument instead)."""
        return None if self.height is None and self.crop is None else _Geometry(self.height, self.crop)

    def output_size(self, native_hw: tuple[int, int]) -> tuple[int, int]:
        """The size an image of native size (H, W) is scored at under this protocol."""
        h, w = native_hw
        if self.size:
            h, w = self.size
        if self.height:
            h, w = self.height, max(1, round(w * self.height / h))
        return tuple(self.crop) if self.crop else (h, w)

    def eval_kwargs(self) -> dict:
        return {"sliding": self.sliding, "window": self.window, "stride": self.stride}


class _Geometry:
    """Resize to a height (aspect kept), then centre crop/pad to ``crop``; labels nearest, padding ignore.
    Called by SegmentationDataset as transform(image01 (3,H,W), label (H,W), generator)."""

    def __init__(self, height, crop):
        self.height, self.crop = height, crop

    def __call__(self, image, label, generator=None):
        if self.height:
            h, w = image.shape[-2:]
            image, label = _resize(image, label, (self.height, max(1, round(w * self.height / h))))
        if self.crop:
            image, label = _center_crop_pad(image, label, self.crop)
        return image, label


def _center_crop_pad(image, label, size):
    th, tw = size
    h, w = image.shape[-2:]
    # pad (image with 0 in [0, 1] space, label with ignore) up to the target, then crop the centre
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph or pw:
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        image = F.pad(image, pad, value=0.0)
        label = F.pad(label, pad, value=IGNORE_INDEX)
        h, w = image.shape[-2:]
    y, x = (h - th) // 2, (w - tw) // 2
    return image[..., y:y + th, x:x + tw], label[y:y + th, x:x + tw]


def parse_overrides(entries) -> dict[str, Protocol]:
    """['mapillary=height:1024', 'cityscapes:/d/cs=native+sliding:512x512'] -> {key: Protocol}."""
    out = {}
    for entry in entries or ():
        key, sep, proto = str(entry).partition("=")
        if not sep or not key.strip():
            raise ProtocolError(f"eval_protocol entry {entry!r}: expected KIND=PROTOCOL or SPEC=PROTOCOL "
                                "(e.g. mapillary=height:1536+crop:1536x1536)")
        out[key.strip()] = Protocol.parse(proto)
    return out


def protocol_for(spec: str, eval_size=None, overrides=None) -> Protocol:
    """The protocol SPEC is evaluated with: an override for the SPEC, else for its kind, else ``*`` (on-disk
    kinds), else the kind's default (synthetic: rendered at ``eval_size``)."""
    kind, _ = parse_spec(spec)
    overrides = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    for key in (spec, kind) + (("*",) if kind != "synthetic" else ()):
        if key in overrides:
            return overrides[key]
    if kind == "synthetic":
        return Protocol(size=tuple(eval_size)) if eval_size else Protocol()
    return Protocol.parse(NATIVE_PROTOCOL[kind])


def build_eval_dataset(spec: str, protocol: Protocol, split=None, num=None, seed=0):
    """The dataset of SPEC prepared for ``protocol`` (synthetic: rendered at the protocol's size)."""
    from .spec import build_dataset

    return build_dataset(spec, split=split, size=protocol.size, num=num, seed=seed,
                         transform=protocol.transform())


__all__ = ["NATIVE_PROTOCOL", "Protocol", "ProtocolError", "build_eval_dataset", "parse_overrides", "protocol_for"]
