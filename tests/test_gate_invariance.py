"""The gate importance (= what the sparsity penalty pushes) on segformer_b0 cannot be lowered by moving
scale around the model without changing its function (npdg/pruning/sparsity.py, module docstring).

Exact (fp64, <= 1e-10 relative per unit): gate <-> consumer (proj / fc2 columns) rescaling; LayerNorm
affine <-> the rows reading it (norm1 -> q, kv or sr; attn.norm -> kv; norm2 -> fc1), with one factor per
block or one per feature; a LayerNorm bias shift absorbed by the readers' biases. Bounded (the score
stays well above 0 at a = 1e-3 and 1e3): q <-> k rows of a head, fc1 rows <-> depthwise kernels.
Every rescaling is first checked to leave the model's output unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import randomize_
from torch import nn

from npdg.models import create_model
from npdg.pruning import l1_penalty, unit_importance

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZE = (32, 32)  # stage resolutions 8, 4, 2, 1: every spatial-reduction window is full (no padding)


def blocks(model):
    return [b for s in model.backbone.stages for b in s.blocks]


def norm_readers(blk):
    """(LayerNorm, the modules that read its output on their input axis, dim 1) of one MiT block."""
    attn = blk.attn
    if attn.sr_ratio > 1:
        return [(blk.norm1, [attn.q, attn.sr]), (attn.norm, [attn.kv]), (blk.norm2, [blk.mlp.fc1])]
    return [(blk.norm1, [attn.q, attn.kv]), (blk.norm2, [blk.mlp.fc1])]


@pytest.fixture(scope="module")
def b0():
    """fp64 segformer_b0 with every gate, LayerNorm affine and linear/conv bias away from its init."""
    torch.manual_seed(0)
    model = randomize_(create_model("segformer_b0", num_classes=5), seed=0, gates=True).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
            if isinstance(m, (nn.LayerNorm, nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=torch.float64) * 0.1)
    return model


@pytest.fixture(scope="module")
def reference(b0):
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        return x, b0(x), unit_importance(b0), l1_penalty(b0)


def gate_names(model):
    return {g.name for g in model.prunable_units() if g.kind in ("head", "hidden")}


def assert_same_function(model, reference):
    x, out, _, _ = reference
    with torch.no_grad():
        new = model(x)
    assert ((new - out).abs().max() / out.abs().max()).item() <= 1e-10


def assert_same_importance(model, reference):
    _, _, before, pen = reference
    after = unit_importance(model)
    for name in gate_names(model):
        rel = ((after[name] - before[name]).abs() / before[name]).max().item()
        assert rel <= 1e-10, f"{name}: importance changed by {rel:.3g} (relative)"
    with torch.no_grad():
        assert abs(l1_penalty(model).item() - pen.item()) <= 1e-10 * pen.item()


def columns_(module, a):
    """Divide the input axis (dim 1) of a Linear / Conv2d weight by a (per-feature (in,) or scalar)."""
    a = torch.as_tensor(a, dtype=module.weight.dtype)
    module.weight.div_(a.view(1, -1, *([1] * (module.weight.dim() - 2))) if a.dim() else a)


def factors(kind, n, gen):
    """Rescale factors for one LayerNorm of n features: one per block (0.1 or 7.3), or one per feature."""
    choice = torch.tensor([0.1, 7.3], dtype=torch.float64)
    if kind == "per-block":
        return choice[torch.randint(2, (), generator=gen)]
    return choice[torch.randint(2, (n,), generator=gen)]


@pytest.mark.parametrize("kind", ["per-block", "per-feature"])
def test_layernorm_affine_against_its_readers(b0, reference, kind):
    """LN weight and bias * a, every reader's input columns / a: same function, same importance."""
    model = copy.deepcopy(b0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for blk in blocks(model):
            for norm, readers in norm_readers(blk):
                a = factors(kind, norm.weight.numel(), gen)
                norm.weight.mul_(a)
                norm.bias.mul_(a)
                for m in readers:
                    columns_(m, a)
    assert_same_function(model, reference)
    assert_same_importance(model, reference)


def test_layernorm_bias_shift_absorbed_by_readers(b0, reference):
    """LN bias + δ, each reader's bias - (its weight summed over the kernel) @ δ: same function and importance."""
    model = copy.deepcopy(b0)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for blk in blocks(model):
            for norm, readers in norm_readers(blk):
                delta = torch.randn(norm.bias.shape, generator=gen, dtype=torch.float64)
                norm.bias.add_(delta)
                for m in readers:
                    w = m.weight if m.weight.dim() == 2 else m.weight.sum((2, 3))
                    m.bias.sub_(w @ delta)
    assert_same_function(model, reference)
    assert_same_importance(model, reference)


def test_gate_against_its_consumers(b0, reference):
    """γ_i * a_i, the consumer (proj / fc2) columns of unit i / a_i: same function, same importance."""
    model = copy.deepcopy(b0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for g in model.prunable_units():
            if g.kind not in ("head", "hidden"):
                continue
            a = factors("per-feature", g.size, gen)
            g.gamma().mul_(a)
            for s in g.consumers:
                block = s.tensor().narrow(s.dim, s.offset, g.size * s.unit_width)
                block.div_(a.repeat_interleave(s.unit_width).view(1, -1))
    assert_same_function(model, reference)
    assert_same_importance(model, reference)


def test_no_penalty_gradient_along_the_layernorm_rescaling(b0):
    """d/d(log a_j) of the penalty along 'LN feature j * a_j, reader columns j / a_j' is 0: the
    optimizer cannot shrink the score by moving scale into the LayerNorm."""
    model = copy.deepcopy(b0)
    model.zero_grad()
    l1_penalty(model).backward()
    for blk in blocks(model):
        for norm, readers in norm_readers(blk):
            along_norm = norm.weight * norm.weight.grad + norm.bias * norm.bias.grad
            along_cols = sum(
                (m.weight * m.weight.grad).transpose(0, 1).reshape(norm.weight.numel(), -1).sum(1)
                for m in readers
                if m.weight.grad is not None
            )  # sr: no unit reads it
            assert along_norm.abs().max() > 0
            assert torch.allclose(along_norm, along_cols, rtol=1e-9, atol=1e-12 * along_norm.abs().max().item())


@pytest.mark.parametrize("a", [1e-3, 1e3])
def test_bounded_under_rescalings_inside_the_producers(b0, reference, a):
    """q rows * a with k rows / a (per head), fc1 rows * a with depthwise kernels / a: the function is the
    same; the score is not invariant but cannot be driven towards 0 (AM-GM: it stays >= a fixed fraction)."""
    model = copy.deepcopy(b0)
    with torch.no_grad():
        for blk in blocks(model):
            attn, mlp = blk.attn, blk.mlp
            inner = attn.num_heads * attn.head_dim
            for t in (attn.q.weight, attn.q.bias):
                t.mul_(a)
            for t in (attn.kv.weight, attn.kv.bias):
                t[:inner].div_(a)
            for t in (mlp.fc1.weight, mlp.fc1.bias):
                t.mul_(a)
            mlp.dwconv.weight.div_(a)
    assert_same_function(model, reference)
    _, _, before, _ = reference
    after = unit_importance(model)
    for name in gate_names(model):
        assert (after[name] / before[name]).min().item() > 0.02, name
