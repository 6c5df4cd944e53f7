"""Which units to prune: a global ranking of importance, done separately for each unit kind.

Units of one kind ("channel", "head", "hidden") are ranked together across all their groups; kinds are
never mixed, because BN γ and gate path scales live on unrelated scales (a gate kind ranked against BN
γ could be emptied, or never touched). Per kind, ``ratio`` removes that fraction of the kind's units
(ratio·N rounded half up, lowest scores first), ``threshold`` removes every unit scoring below it. The
threshold is compared with the raw scores of every kind: by default |γ| for BN but the much smaller path
scale |γ|·rms·rms for gates (see ``sparsity.py``), so for models with gates prefer ``ratio`` or pass
``scores`` on a common scale.

Then each group's kept count k is raised, never lowered, to honour the per-group constraints:
1. k >= max(min_keep, group.min_size) (or the whole group, if smaller);
2. ``round_to``: k is rounded UP to the next multiple of the group's unit step, or to the whole group
   when that is smaller. The step makes the kept *tensor width* (k · unit_width, the entries a unit
   owns on its sliced axes: 1 for a channel, head_dim for a head) a multiple of round_to, i.e.
   step = round_to / gcd(round_to, unit_width): 8 channels, but any head count when head_dim = 32.
Rounding up means a unit above the threshold is never removed and the removed count per kind is at
most the requested one. Within a group the kept units are always its k highest-scoring ones.

``prune_residual=True`` (default False) also prunes the coupled residual streams (kind "residual", see
``npdg.models.units.CoupledGroup``): ranked among themselves, by default by the mean |γ| over the BNs
(MiT: LayerNorms) that scale each channel; ``ratio`` removes that fraction of all residual channels too, with the same
``min_keep`` / ``round_to`` rules. ``scores`` may omit the residual groups (they then get that default
importance). A model that declares no residual groups raises :class:`PruningError` naming it.

``exact_ratio=True`` (ratio only; default False) makes ``ratio`` the fraction actually removed per kind:
rounding up leaves fewer units removed than asked (R50, ratio 0.3, round_to 8: 28.7 % of the channels),
so whole steps are then taken back, one at a time, from the group whose next step's best unit scores
lowest, while that brings the kind's removed count closer to ratio·N (it ends within half a step of it).
Within a group the kept units are still its k best; a unit scoring above the global cut can now go, which
is why it is not the default.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from npdg.models.units import groups_by_name
from npdg.pruning.masks import PruningError, check_per_unit, require_residual
from npdg.pruning.sparsity import unit_importance


def _check_args(ratio, threshold, round_to, min_keep) -> None:
    if (ratio is None) == (threshold is None):
        raise PruningError("give exactly one of ratio= or threshold=")
    if ratio is not None and not 0 <= ratio < 1:
        raise PruningError(f"ratio must be in [0, 1), got {ratio}")
    if threshold is not None and not threshold >= 0:
        raise PruningError(f"threshold must be >= 0, got {threshold}")
    if not (isinstance(round_to, int) and round_to >= 1):
        raise PruningError(f"round_to must be an int >= 1, got {round_to!r}")
    if not (isinstance(min_keep, int) and min_keep >= 1):
        raise PruningError(f"min_keep must be an int >= 1, got {min_keep!r}")


def unit_step(group, round_to: int) -> int:
    """Kept counts are multiples of this, so that kept count x unit width is a multiple of round_to."""
    width = max((s.unit_width for s in group.slices()), default=1)
    return round_to // math.gcd(round_to, width)


def _kept_count(group, removed: int, round_to: int, min_keep: int) -> int:
    size = group.size
    k = max(size - removed, min_keep, group.min_size, 1)
    step = unit_step(group, round_to)
    return min(size, math.ceil(k / step) * step)


def _fill_to_ratio(groups, names, scores, kept, n_remove, round_to, min_keep) -> None:
    """exact_ratio: lower kept counts (in place) by whole steps until the kind's removed count is as close
    to n_remove as steps allow; each step comes from the group whose best unit in that step scores lowest."""
    order = {n: torch.sort(scores[n], descending=True, stable=True).values for n in names}
    step = {n: unit_step(groups[n], round_to) for n in names}
    floor = {n: _kept_count(groups[n], groups[n].size, round_to, min_keep) for n in names}  # fewest it may keep
    removed = sum(groups[n].size - kept[n] for n in names)
    while True:
        deficit, best = n_remove - removed, None
        for n in names:
            k = kept[n]
            lower = (k - 1) // step[n] * step[n]  # the next kept count below k that round_to allows
            if lower < floor[n] or not 0 < k - lower < 2 * deficit:
                continue  # below the group's minimum, or the step would overshoot more than it closes
            cost = float(order[n][lower])  # the best unit that step would remove
            if best is None or cost < best[0]:
                best = (cost, n, lower)
        if best is None:
            return
        _, n, lower = best
        removed += kept[n] - lower
        kept[n] = lower


def select_masks(
    model: nn.Module,
    ratio: float | None = None,
    threshold: float | None = None,
    round_to: int = 8,
    min_keep: int = 1,
    scores: dict | None = None,
    prune_residual: bool = False,
    exact_ratio: bool = False,
) -> dict[str, torch.Tensor]:
    """{group name: bool keep-mask (size,)} for every prunable group (see the module docstring).

    ``scores``: {group name: (size,) tensor}, higher = more important, for every group; default
    :func:`npdg.pruning.unit_importance` (|γ| for BN, the gate path scale the sparsity penalty shrinks).
    """
    _check_args(ratio, threshold, round_to, min_keep)
    if exact_ratio and ratio is None:
        raise PruningError("exact_ratio needs ratio= (a threshold has no target count)")
    if prune_residual:
        require_residual(model)
    groups = groups_by_name(model, residual=prune_residual)
    if scores is None:
        scores = unit_importance(model, residual=prune_residual)
    else:
        check_per_unit(groups, scores, "scores")
        if prune_residual:  # residual groups without scores: their default importance
            default = unit_importance(model, residual=True)
            scores = {**{n: default[n] for n in groups if n not in scores and groups[n].kind == "residual"},
                      **scores}
        missing = sorted(set(groups) - set(scores))
        if missing:
            raise PruningError(f"scores missing for unit groups {missing[:5]}")
    scores = {n: s.detach().to("cpu", torch.float64) for n, s in scores.items()}
    if any(bool(s.isnan().any()) for s in scores.values()):
        raise PruningError("scores contain NaN")

    masks = {}
    for kind in dict.fromkeys(g.kind for g in groups.values()):  # kinds in declaration order
        names = [n for n, g in groups.items() if g.kind == kind]
        flat = torch.cat([scores[n] for n in names])
        if ratio is not None:
            removed_flat = torch.zeros(flat.numel(), dtype=torch.bool)
            n_remove = math.floor(ratio * flat.numel() + 0.5)
            removed_flat[torch.argsort(flat, stable=True)[:n_remove]] = True
        else:
            removed_flat = flat < threshold
        removed = dict(zip(names, removed_flat.split([groups[n].size for n in names]), strict=True))
        kept = {n: _kept_count(groups[n], int(removed[n].sum()), round_to, min_keep) for n in names}
        if exact_ratio:
            _fill_to_ratio(groups, names, scores, kept, n_remove, round_to, min_keep)
        for n in names:
            g = groups[n]
            keep = torch.zeros(g.size, dtype=torch.bool)
            # the k best of the group; a stable sort keeps the lower index among equal scores
            keep[torch.argsort(scores[n], descending=True, stable=True)[:kept[n]]] = True
            masks[n] = keep.to(g.gamma().device)
    return masks


def select_masks_for_flops(model: nn.Module, target: float, size: tuple[int, int], tol: float = 1e-3,
                           select=None, **kwargs) -> tuple[dict[str, torch.Tensor], float]:
    """(masks, ratio): :func:`select_masks` at the smallest ratio (to within ``tol``) whose compacted model
    costs at most ``target`` x the dense model's FLOPs on a ``size`` input; ``kwargs`` go to select_masks
    (anything but ratio / threshold). Per kind the removed set only grows with the ratio (one ranking, a
    count that rises), so the FLOPs only fall: a bisection, each probe a compaction and one counted forward.
    ``select``: another rule ratio -> masks whose removed sets also only grow with the ratio (sfp: a fraction of
    every group). Raises :class:`PruningError` when even the largest ratio keeps more than the target."""
    from npdg.pruning.compact import compact
    from npdg.pruning.flops import flops

    if not 0 < target < 1:
        raise PruningError(f"target must be in (0, 1), got {target}")
    if "ratio" in kwargs or "threshold" in kwargs:
        raise PruningError("select_masks_for_flops chooses the ratio itself (no ratio= / threshold=)")
    dense = flops(model, size)
    budget = target * dense

    def probe(ratio):
        masks = select(ratio) if select is not None else select_masks(model, ratio=ratio, **kwargs)
        return masks, flops(compact(model, masks), size)

    hi = 1 - 1e-9
    masks, cost = probe(hi)
    if cost > budget:
        raise PruningError(f"a FLOPs target of {target:.1%} is out of reach: removing every unit the group "
                           f"minimums allow leaves {cost / dense:.1%} of the dense FLOPs")
    lo = 0.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        mid_masks, mid_cost = probe(mid)
        if mid_cost <= budget:
            hi, masks = mid, mid_masks
        else:
            lo = mid
    return masks, hi
