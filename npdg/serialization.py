"""One-file model format that rebuilds the architecture (incl. pruned widths) without pickled code.

Payload (``torch.load(..., weights_only=True)`` safe: plain data and tensors only):

    {"format": "npdg-model/1",
     "name": registry name,                       # create_model(name, **kwargs) rebuilds it
     "kwargs": {"num_classes": ..., "widths": {unit group name: kept units}, ...},
     "state_dict": {...},                         # CPU tensors
     "extra": {...}}                              # whatever save_model(**extra) was given

A training checkpoint ``{"model": <payload>, "optimizer": ..., "step": ..., "config": ...}`` is
accepted by ``load_model`` too; build its "model" entry with :func:`model_payload`.
"""

from __future__ import annotations

import torch

FORMAT = "npdg-model/1"


def model_payload(model, **extra) -> dict:
    """The plain-data description of ``model`` that :func:`model_from_payload` rebuilds."""
    if not getattr(model, "registry_name", ""):
        raise ValueError("model has no registry_name; build it with npdg.models.create_model")
    return {
        "format": FORMAT,
        "name": model.registry_name,
        "kwargs": model.arch_config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra),
    }


def model_from_payload(payload: dict, map_location="cpu"):
    if not isinstance(payload, dict):
        raise ValueError(f"not an {FORMAT} payload (a {type(payload).__name__})")
    if payload.get("format") != FORMAT and isinstance(payload.get("model"), dict):
        payload = payload["model"]  # a training checkpoint (npdg-run/1)
    if payload.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} payload (format={payload.get('format')!r})")
    from npdg.models import create_model

    model = create_model(payload["name"], **payload["kwargs"])
    model.load_state_dict(payload["state_dict"], strict=True)
    model.saved_extra = payload.get("extra", {})
    return model.to(map_location) if map_location is not None else model


def save_model(model, path, **extra) -> None:
    torch.save(model_payload(model, **extra), path)


def load_model(path, map_location="cpu"):
    """Rebuild a model saved by :func:`save_model` (or the "model" entry of a training checkpoint)."""
    return model_from_payload(torch.load(path, map_location="cpu", weights_only=True), map_location)
