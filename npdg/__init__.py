"""NPDG: domain generalization for semantic segmentation via network pruning.

Public entry points: ``npdg.ops`` (custom ops), ``npdg.models`` (``create_model``), ``npdg.data``,
``npdg.metrics``, ``save_model`` / ``load_model``, and the CLIs ``python -m npdg.train|eval|data``.
Submodules are imported lazily so that ``import npdg`` stays cheap and never needs a GPU or the
compiled extension.
"""

__version__ = "0.1.0"


def save_model(model, path, **extra):
    """Write one file that rebuilds ``model`` (architecture incl. pruned widths + weights)."""
    from npdg.serialization import save_model as _save

    return _save(model, path, **extra)


def load_model(path, map_location="cpu"):
    """Rebuild a model written by :func:`save_model` (loads with ``weights_only=True``)."""
    from npdg.serialization import load_model as _load

    return _load(path, map_location=map_location)
