"""Model registry: one dict from name to builder, one factory.

    model = create_model("segformer_b0", num_classes=19, pretrained="mit_b0.pth")

Builders take ``num_classes`` plus plain-data kwargs (``output_stride``, ``widths``, ...), so a model
can be rebuilt from ``model.arch_config()`` (what ``npdg.save_model`` stores).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_RESIDUAL: set[str] = set()  # models whose prunable_units(residual=True) declares coupled residual streams


class UnknownModelError(ValueError, KeyError):
    """Raised for a name not in the registry; catchable as ValueError or KeyError."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def register_model(name: str, residual: bool = False):
    """Register a builder; ``residual``: its models declare coupled residual-stream unit groups."""

    def add(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        if residual:
            _RESIDUAL.add(name)
        return builder

    return add


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def residual_models() -> list[str]:
    """Names of the models that declare residual-stream groups (``prunable_units(residual=True)``)."""
    return sorted(_RESIDUAL)


def no_residual_streams(name: str) -> str | None:
    """Why ``prune_residual`` cannot apply to model ``name`` (one line naming the models it can), or None."""
    if name in residual_models():
        return None
    return (f"model {name} declares no residual-stream unit groups "
            f"(models that do: {', '.join(residual_models())})")


def create_model(name: str, num_classes: int = 19, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model; ``pretrained`` = path of a LOCAL ImageNet backbone state dict.

    Pretrained loading maps torchvision (ResNet, VGG-16-BN), SegFormer/mmseg and Hugging Face (MiT)
    key styles; the missing/unexpected keys are warned about and kept in ``model.pretrained_report``.
    """
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.registry_name = name
    if pretrained is not None:
        from npdg.models.pretrained import load_pretrained_backbone

        model.pretrained_report = load_pretrained_backbone(model, pretrained)
    return model
