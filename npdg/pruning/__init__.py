"""Pruning: sparsity penalty, unit selection, masking, physical compaction, cost counting.

    loss = task_loss + s * l1_penalty(model, weights)       # sparse training (weights: NPDG sensitivity)
    masks = select_masks(model, ratio=0.3, round_to=8)      # {group name: keep mask}, ranked per kind
    # prune_residual=True: also the coupled residual streams (DeepLabV3+ ResNet, SegFormer; off by default)
    masked = apply_masks(model, masks)                      # same shapes, pruned units output 0
    small = compact(model, masks)                           # plain smaller model, same output as masked
    print(flops(model, (512, 512)), flops(small, (512, 512)), kept_widths_summary(masks))

Everything here reads only ``model.prunable_units()`` (``npdg.models.units``); nothing names an
architecture.
"""

from npdg.pruning.compact import compact
from npdg.pruning.flops import flops, params
from npdg.pruning.masks import PruningError, apply_masks, kept_widths_summary, validate_masks
from npdg.pruning.select import select_masks, select_masks_for_flops
from npdg.pruning.sparsity import l1_penalty, unit_importance

__all__ = [
    "PruningError",
    "apply_masks",
    "compact",
    "flops",
    "kept_widths_summary",
    "l1_penalty",
    "params",
    "select_masks",
    "select_masks_for_flops",
    "unit_importance",
    "validate_masks",
]
