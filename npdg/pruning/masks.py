"""Keep-masks ({group name: bool (size,)}, True = keep) and the checks every pruning entry point shares."""

from __future__ import annotations

import copy

import torch
from torch import nn

from npdg.models.units import groups_by_name, supports_residual


class PruningError(ValueError):
    """A pruning request that cannot be honoured (bad arguments, masks or per-unit tensors)."""


def require_residual(model: nn.Module) -> None:
    """Raise :class:`PruningError` (one line, naming the model) unless it declares residual groups."""
    if not supports_residual(model):
        from npdg.models import no_residual_streams

        name = getattr(model, "registry_name", "") or type(model).__name__
        raise PruningError(f"prune_residual: {no_residual_streams(name)}")


def check_per_unit(groups: dict, values: dict, what: str) -> None:
    """``values`` (group name -> tensor (size,)) names only known groups, each with one value per unit."""
    if not isinstance(values, dict):
        raise PruningError(f"{what} must be a dict {{unit group name: tensor}}, got {type(values).__name__}")
    unknown = sorted(set(values) - set(groups))
    if unknown:
        raise PruningError(f"{what} name unknown unit groups {unknown[:5]}; groups are e.g. {list(groups)[:3]}")
    for name, v in values.items():
        if not isinstance(v, torch.Tensor) or v.shape != (groups[name].size,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise PruningError(f"{what}[{name!r}] must have shape ({groups[name].size},), got {shape}")


def validate_masks(model: nn.Module, masks: dict) -> None:
    """Raise :class:`PruningError` unless ``masks`` fits ``model``: known group names, bool tensors of
    the group's size, at least one kept unit per group. Groups missing from ``masks`` keep every unit."""
    groups = groups_by_name(model, names=masks if isinstance(masks, dict) else ())
    check_per_unit(groups, masks, "masks")
    for name, m in masks.items():
        if m.dtype != torch.bool:
            raise PruningError(f"masks[{name!r}] must be a bool keep-mask, got {m.dtype}")
        if not bool(m.any()):
            raise PruningError(f"masks[{name!r}] prunes every unit of the group (keep at least one)")


def apply_masks(model: nn.Module, masks: dict, inplace: bool = False) -> nn.Module:
    """The masked model: same shapes, every pruned unit outputs exactly 0 (``UnitGroup.mask_``).

    A deep copy unless ``inplace``. Masking is one-shot: further training can regrow the zeroed γ
    (re-apply after each step, or :func:`npdg.pruning.compact` before fine-tuning).
    """
    validate_masks(model, masks)
    out = model if inplace else copy.deepcopy(model)
    groups = groups_by_name(out, names=masks)
    for name, keep in masks.items():
        groups[name].mask_(~keep)
    return out


def kept_widths_summary(masks: dict) -> dict[str, tuple[int, int]]:
    """{group name: (kept units, group size)}, e.g. for a report or a log line."""
    return {name: (int(m.sum()), m.numel()) for name, m in masks.items()}
