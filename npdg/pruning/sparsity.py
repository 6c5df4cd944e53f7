"""The sparsity penalty of sparse training and the per-unit importance that pruning ranks by.

BN scaling factors (the scale module is a BatchNorm) are penalised as plain |γ| (Network Slimming):
BN renormalises its input, so growing the producing conv cannot shrink γ's share.

A **gate** (a Gate module: MiT head / Mix-FFN hidden gates) is scale-ambiguous (DESIGN §2.5): its
output feeds the consumers linearly, so γ_i -> a·γ_i with the consumer columns of unit i -> /a computes
the same function with a smaller |γ_i|, and an L1 on γ alone is defeated by the optimizer. The gate
penalty is therefore the unit's *path scale*

    importance_i = |γ_i| · rms(consumer weights of unit i) · rms(producer weights of unit i)

over the weight slices the group declares (producers without γ itself and without buffers; rms =
root mean square, so groups of different fan-in/fan-out compare). It is exactly invariant to the
γ <-> consumer rescaling for every a > 0, and it vanishes only when the gate, its consumer columns or
all its producer rows vanish -- each of which silences the unit. On the producer side only part of the
rows may scale with γ (e.g. v but not q/k rows of a head); rescaling γ against those rows can lower
the penalty at most to ``|γ|·rms(C)·rms(those rows)``, never to 0. The norms are NOT detached: the
penalty is then constant along the rescaling orbit, so its gradient has no component along it
(it shrinks γ and the adjacent weights together). Detached norms would push γ alone, i.e. along the
orbit, letting the task loss regrow the weights while the product stays put.
"""

from __future__ import annotations

import torch
from torch import nn

from npdg.pruning.masks import PruningError, check_per_unit, groups_by_name


def is_gate(group) -> bool:
    """True for a scale-ambiguous scaling module (anything but BatchNorm)."""
    return not isinstance(group.scale_module, nn.modules.batchnorm._BatchNorm)


def _unit_rms(group, slices) -> torch.Tensor | None:
    """Per-unit root mean square over the entries of ``slices`` owned by each unit, (size,); None if
    there are no slices."""
    sq, count = None, 0
    for s in slices:
        block = s.tensor().narrow(s.dim, s.offset, group.size * s.unit_width)
        block = block.movedim(s.dim, 0).reshape(group.size, -1)  # unit u's entries are contiguous on dim
        part = block.float().square().sum(1)
        sq, count = (part if sq is None else sq + part), count + block.shape[1]
    return None if sq is None else (sq / count).sqrt()


def _importance(group) -> torch.Tensor:
    """|γ| (BN) or the path scale |γ|·rms(consumers)·rms(producers) (gates); differentiable."""
    gamma = group.gamma()
    score = gamma.float().abs()
    if not is_gate(group):
        return score
    producers = [
        s for s in group.producers if s.tensor() is not gamma and isinstance(s.tensor(), nn.Parameter)
    ]
    for rms in (_unit_rms(group, group.consumers), _unit_rms(group, producers)):
        if rms is not None:  # a gate without declared consumers / producers: that factor is 1
            score = score * rms
    return score


def unit_importance(model: nn.Module) -> dict[str, torch.Tensor]:
    """{group name: (size,) detached importance}: |γ| for BN, |γ|·rms·rms for gates (module docstring).

    The quantity :func:`l1_penalty` pushes down, and what :func:`npdg.pruning.select_masks` ranks by
    default, so the units pruned are those the penalty made unimportant.
    """
    with torch.no_grad():
        return {g.name: _importance(g).detach() for g in model.prunable_units()}


def l1_penalty(model: nn.Module, weights: dict | None = None) -> torch.Tensor:
    """Σ_i w_i · importance_i over every prunable unit, a differentiable scalar (fp32).

    ``weights``: {group name: (size,) tensor}, e.g. NPDG's style sensitivity; groups not listed (or all,
    when None) weigh 1 = Network Slimming. Sparse training adds ``s * l1_penalty(model, weights)``.
    """
    groups = groups_by_name(model)
    weights = weights or {}
    check_per_unit(groups, weights, "weights")
    total = None
    for name, g in groups.items():
        score = _importance(g)
        term = (score * weights[name].to(score)).sum() if name in weights else score.sum()
        total = term if total is None else total + term
    if total is None:
        raise PruningError("model declares no prunable units")
    return total
