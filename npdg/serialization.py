"""One-file model format that rebuilds the architecture (incl. pruned widths) without pickled code.

Payload (``torch.load(..., weights_only=True)`` safe: plain data and tensors only):

    {"format": "npdg-model/1",
     "version": npdg.__version__ of the writer,
     "name": registry name,                       # create_model(name, **kwargs) rebuilds it
     "kwargs": {"num_classes": ..., "widths": {unit group name: kept units}, ...},
     "state_dict": {...},                         # CPU tensors
     "extra": {...}}                              # whatever save_model(**extra) was given

A training checkpoint ``{"model": <payload>, "optimizer": ..., "step": ..., "config": ...}`` is
accepted by ``load_model`` too; build its "model" entry with :func:`model_payload`.
"""

from __future__ import annotations

from npdg.checkpoint import CheckpointError, check_format, load

FORMAT = "npdg-model/1"


def model_payload(model, **extra) -> dict:
    """The plain-data description of ``model`` that :func:`model_from_payload` rebuilds."""
    if not getattr(model, "registry_name", ""):
        raise ValueError("model has no registry_name; build it with npdg.models.create_model")
    from npdg import __version__

    return {
        "format": FORMAT,
        "version": __version__,
        "name": model.registry_name,
        "kwargs": model.arch_config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra),
    }


def model_from_payload(payload: dict, map_location="cpu", where: str = "model payload"):
    if isinstance(payload, dict) and payload.get("format") != FORMAT and isinstance(payload.get("model"), dict):
        payload = payload["model"]  # a training checkpoint (npdg-run/1)
    check_format(payload, FORMAT, where)
    from npdg.models import create_model

    try:
        model = create_model(payload["name"], **payload["kwargs"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:  # UnknownModelError is a KeyError too
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip("'\"")
        raise CheckpointError(f"{where}: does not rebuild an npdg model ({first[:300]})") from exc
    model.saved_extra = payload.get("extra", {})
    return model.to(map_location) if map_location is not None else model


def save_model(model, path, **extra) -> None:
    """Write ``model`` atomically (a temporary file, fsynced, renamed)."""
    from npdg.checkpoint import save

    save(model_payload(model, **extra), path)


def load_model(path, map_location="cpu"):
    """Rebuild a model saved by :func:`save_model` (or the "model" entry of a training checkpoint).

    Loads with ``weights_only=True``: a file carrying pickled code is refused with CheckpointError,
    never run; so is a file of another format or an incompatible format version."""
    return model_from_payload(load(path, "model"), map_location, where=str(path))
