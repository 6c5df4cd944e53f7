"""Segmentation models with declared prunable units.

    from npdg.models import create_model, available_models
    model = create_model("deeplabv3plus_r50", num_classes=19, output_stride=16)
    groups = model.prunable_units()       # list[UnitGroup], see units.py
    model.style_layer                     # hook point for feature-level style perturbation

Names: deeplabv3plus_r18/_r50/_r101, deeplab_vgg16, segformer_b0 ... segformer_b5.
"""

from npdg.models import deeplab, segformer  # noqa: E402, F401  (importing them registers the built-in models)
from npdg.models.registry import (
    UnknownModelError,
    available_models,
    create_model,
    no_residual_streams,
    register_model,
    residual_models,
)
from npdg.models.units import Gate, TensorSlice, UnitGroup, compact_state_dict, kept_positions

__all__ = [
    "Gate",
    "TensorSlice",
    "UnitGroup",
    "UnknownModelError",
    "available_models",
    "compact_state_dict",
    "create_model",
    "kept_positions",
    "no_residual_streams",
    "register_model",
    "residual_models",
]
