"""The sparsity penalty of sparse training and the per-unit importance that pruning ranks by.

BN scaling factors (the scale module is a BatchNorm) are penalised as plain |γ| (Network Slimming):
BN renormalises its input, so growing the producing conv cannot shrink γ's share.

A **gate** (a Gate module: MiT head / Mix-FFN hidden gates) is scale-ambiguous (DESIGN §2.5): its
output feeds the consumers linearly, so γ_i -> a·γ_i with the consumer columns of unit i -> /a computes
the same function with a smaller |γ_i|, and an L1 on γ alone is defeated by the optimizer. The gate
penalty is therefore the unit's *path scale*

    importance_i = |γ_i| · rms(consumer weights of unit i) · rms(effective producer weights of unit i)

over the weight slices the group declares (producers without γ itself and without buffers; rms =
root mean square over all the unit's entries of those slices, so groups of different fan-in/fan-out
compare). *Effective*: producer rows of a Linear that reads a LayerNorm y = g⊙x̂ + β (the slice's
``input_norm``: norm1 for q and, without spatial reduction, kv; the reduction path's ``attn.norm`` for
kv; norm2 for fc1) are measured as the affine map from the normalised x̂ -- weight rows W·diag(g), bias
rows b + W·β -- so the LayerNorm's affine (shared by all units of the block) cannot hide a unit's scale.
The score is the same as before wherever g = 1 and β = 0 (e.g. at init).

Exactly invariant (tested in fp64 on segformer_b0, tests/test_gate_invariance.py), for every factor:
* γ_i -> a_i·γ_i, consumer (proj / fc2) columns of unit i -> /a_i, any a_i > 0;
* LayerNorm affine (g_j, β_j) -> a_j·(g_j, β_j) with column j of every Linear / conv reading it
  (q, kv, sr, fc1) -> /a_j, any a_j != 0, one per feature or one per block;
* β -> β + δ with each reader's bias -> b - W·δ (summed over the kernel for ``sr``).
The penalty is then constant along these orbits, so its gradient has no component along them.
NOT invariant, but bounded below (the score cannot be driven to 0 with the function unchanged):
* rescaling γ against the producer rows that scale with it (v rows of a head): at most down to
  ``|γ|·rms(C)·rms(those rows)`` over the unit's entry count;
* moving scale between producers: q rows·a with k rows/a of a head, fc1 rows·a with the depthwise
  kernels/a (both linear before GELU; GELU is not homogeneous, nothing rescales across it): by AM-GM the
  sum of squares stays >= 2·sqrt(S_1·S_2) + rest.
NOT covered: scaling a whole stage's residual stream (patch-embed LayerNorm affine, every proj / fc2
weight and bias -> ·a) changes every block LayerNorm's output only through its eps, and scales every gate
score of that stage by a; it is function-preserving only approximately (eps) and moves all of a stage's
units together, so the ranking within a stage is unaffected.
The score vanishes only when the gate, its consumer columns or all its effective producer rows vanish --
each of which silences the unit. The norms are NOT detached: the penalty is constant along the
rescaling orbits, so its gradient has no component along them (it shrinks γ and the adjacent weights
together). Detached norms would push γ alone, i.e. along the orbit, letting the task loss regrow the
weights while the product stays put. Scores are computed in at least fp32 (fp64 for an fp64 model).
"""

from __future__ import annotations

import torch
from torch import nn

from npdg.models.units import CoupledGroup, groups_by_name
from npdg.pruning.masks import PruningError, check_per_unit


def is_gate(group) -> bool:
    """True for a scale-ambiguous scaling module (anything but BatchNorm)."""
    return not isinstance(group.scale_module, nn.modules.batchnorm._BatchNorm)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (half/bf16 -> fp32; fp64 stays fp64, so fp64 checks see fp64 round-off)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _folded_rows(s, cache: dict) -> torch.Tensor:
    """Per-row squared norms of the effective affine map of a Linear reading a LayerNorm y = g*x̂ + β:
    Σ_j (W_rj·g_j)² for ``attr == "weight"``, (b + W·β)_r² for ``"bias"``; shape (out,). Computed once per
    Linear and group (``cache``), over all its rows (q/kv/fc1 rows all belong to the group)."""
    lin, norm = s.module, s.input_norm
    if s.dim != 0 or s.attr not in ("weight", "bias") or lin.weight.dim() != 2:
        raise PruningError(f"input_norm needs dim-0 rows of a Linear, got {s.key} dim {s.dim}")
    key = (id(lin), s.attr)
    if key not in cache:
        w = _wide(lin.weight)
        if s.attr == "weight":
            cache[key] = torch.mv(w.square(), _wide(norm.weight).square())  # Σ_j (W_rj·g_j)²
        else:
            beta = getattr(norm, "bias", None)
            bias = _wide(lin.bias) if beta is None else torch.addmv(_wide(lin.bias), w, _wide(beta))
            cache[key] = bias.square()
    return cache[key]


def _slice_square_sums(group, s, cache: dict) -> tuple[torch.Tensor, int]:
    """Per-unit sum of squares of a slice's entries, (size,), and the number of entries per unit.

    A slice with an ``input_norm`` (rows of a Linear reading a LayerNorm y = g*x̂ + β) is measured as the
    affine map from the normalised x̂: weight rows W·diag(g), bias rows b + W·β.
    """
    n = group.size * s.unit_width
    if s.input_norm is None or getattr(s.input_norm, "weight", None) is None:
        block = _wide(s.tensor().narrow(s.dim, s.offset, n))
        block = block.movedim(s.dim, 0).reshape(group.size, -1)  # unit u's entries are contiguous on dim
        return block.square().sum(1), block.shape[1]
    rows = _folded_rows(s, cache).narrow(0, s.offset, n).view(group.size, -1).sum(1)
    return rows, s.unit_width * (s.tensor().shape[1] if s.attr == "weight" else 1)


def _unit_rms(group, slices) -> torch.Tensor | None:
    """Per-unit root mean square over the entries of ``slices`` owned by each unit, (size,); None if
    there are no slices."""
    sq, count, cache = None, 0, {}
    for s in slices:
        part, entries = _slice_square_sums(group, s, cache)
        sq, count = (part if sq is None else sq + part), count + entries
    return None if sq is None else (sq / count).sqrt()


def _importance(group) -> torch.Tensor:
    """|γ| (BN), mean |γ| over the BNs / LayerNorms of a coupled residual group, or the path scale
    |γ|·rms(consumers)·rms(producers) (gates); differentiable."""
    if isinstance(group, CoupledGroup):
        gammas = group.gammas()
        return sum(_wide(g).abs() for g in gammas) / len(gammas)
    gamma = group.gamma()
    score = _wide(gamma).abs()
    if not is_gate(group):
        return score
    producers = [
        s for s in group.producers if s.tensor() is not gamma and isinstance(s.tensor(), nn.Parameter)
    ]
    for rms in (_unit_rms(group, group.consumers), _unit_rms(group, producers)):
        if rms is not None:  # a gate without declared consumers / producers: that factor is 1
            score = score * rms
    return score


def unit_importance(model: nn.Module, residual: bool = False) -> dict[str, torch.Tensor]:
    """{group name: (size,) detached importance}: |γ| for BN, |γ|·rms·rms for gates (module docstring).

    The quantity :func:`l1_penalty` pushes down, and what :func:`npdg.pruning.select_masks` ranks by
    default, so the units pruned are those the penalty made unimportant. ``residual``: also the coupled
    residual-stream groups (mean |γ| over their BNs, or a MiT stream's LayerNorms), where the model
    declares them.
    """
    with torch.no_grad():
        return {n: _importance(g).detach() for n, g in groups_by_name(model, residual=residual).items()}


def l1_penalty(model: nn.Module, weights: dict | None = None, residual: bool = False) -> torch.Tensor:
    """Σ_i w_i · importance_i over every prunable unit, a differentiable scalar (fp32; fp64 for an fp64 model).

    ``weights``: {group name: (size,) tensor}, e.g. NPDG's style sensitivity; groups not listed (or all,
    when None) weigh 1 = Network Slimming. Sparse training adds ``s * l1_penalty(model, weights)``.
    ``residual`` (default False): also penalise the coupled residual groups' importance (the mean |γ| over
    the BNs -- MiT: LayerNorms -- of a stream, i.e. each of those γ with weight 1/their number), where the
    model declares them.
    """
    groups = groups_by_name(model, residual=residual)
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
