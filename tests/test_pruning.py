"""npdg.pruning: selection semantics on a toy model, masking/compaction/cost on every registered model,
and the scale-invariant gate penalty on segformer_b0.

Every registered model is built once (module-scoped fixture) and run on one 32x32 image.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_ as _randomize_
from torch import nn

import npdg
from npdg import _ext, ops, reference
from npdg.models import Gate, TensorSlice, UnitGroup, available_models, compact_state_dict, create_model
from npdg.models.units import channel_group, input_channels, name_groups
from npdg.pruning import (
    PruningError,
    apply_masks,
    compact,
    flops,
    kept_widths_summary,
    l1_penalty,
    params,
    select_masks,
    unit_importance,
    validate_masks,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZE = (32, 32)
NUM_CLASSES = 5


def randomize_(model, seed=0):
    return _randomize_(model, seed, gates=True)


def rel_max(a, b) -> float:
    """max|a - b| / max|b| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- a toy model: exact selection semantics without building a real network ---------------------------


class Toy(nn.Module):
    """Channel groups of 20, 4 and 64 units, a hidden gate of 32 units, a head gate of 4 heads x 8."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 20, 1), nn.BatchNorm2d(20)
        self.c2, self.b2 = nn.Conv2d(20, 4, 1), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 64, 1), nn.BatchNorm2d(64)
        self.fc1, self.hidden_gate, self.fc2 = nn.Linear(64, 32), Gate(32), nn.Linear(32, 8)
        self.v, self.head_gate, self.proj = nn.Linear(8, 32), Gate(4), nn.Linear(32, 8)
        self.min_sizes = {}

    def prunable_units(self):
        groups = [
            channel_group(self.c1, self.b1, [input_channels(self.c2)]),
            channel_group(self.c2, self.b2, [input_channels(self.c3)]),
            channel_group(self.c3, self.b3, [input_channels(self.fc1)]),
            UnitGroup("hidden", self.hidden_gate,
                      [TensorSlice(self.fc1, "weight", 0), TensorSlice(self.fc1, "bias", 0),
                       TensorSlice(self.hidden_gate, "weight", 0)],
                      [TensorSlice(self.fc2, "weight", 1)]),
            UnitGroup("head", self.head_gate,
                      [TensorSlice(self.v, "weight", 0, 0, 8), TensorSlice(self.v, "bias", 0, 0, 8),
                       TensorSlice(self.head_gate, "weight", 0)],
                      [TensorSlice(self.proj, "weight", 1, 0, 8)]),
        ]
        groups = name_groups(self, groups)
        for g in groups:
            g.min_size = self.min_sizes.get(g.name, 1)
        return groups


def distinct_scores(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in model.prunable_units()}


def pruned_ids(masks, names):
    """Set of (group, unit) pruned over the given groups."""
    return {(n, int(i)) for n in names for i in (~masks[n]).nonzero().flatten()}


def lowest_ids(scores, names, count):
    flat = [(float(scores[n][i]), n, i) for n in names for i in range(scores[n].numel())]
    return {(n, i) for _, n, i in sorted(flat)[:count]}


TOY_KINDS = {"channel": ["b1", "b2", "b3"], "hidden": ["hidden_gate"], "head": ["head_gate"]}


def test_ratio_removes_the_lowest_units_of_each_kind_globally():
    toy = Toy()
    scores = distinct_scores(toy)
    masks = select_masks(toy, ratio=0.3, round_to=1, scores=scores)
    assert set(masks) == {g.name for g in toy.prunable_units()}
    for names in TOY_KINDS.values():
        n = sum(scores[k].numel() for k in names)
        assert pruned_ids(masks, names) == lowest_ids(scores, names, round(0.3 * n))
    assert all(m.dtype == torch.bool for m in masks.values())
    assert all(bool(m.all()) for m in select_masks(toy, ratio=0.0, scores=scores).values())


def test_threshold_removes_units_below_it():
    toy = Toy()
    scores = distinct_scores(toy)
    masks = select_masks(toy, threshold=0.25, round_to=1, scores=scores)
    for name, s in scores.items():
        assert torch.equal(masks[name], s >= 0.25), name
    with torch.no_grad():  # default scores: |γ| for BN
        toy.b3.weight.copy_(torch.linspace(-1, 1, 64))
    assert torch.equal(select_masks(toy, threshold=0.5, round_to=1)["b3"], toy.b3.weight.abs() >= 0.5)


def test_round_to_rounds_kept_counts_up_and_keeps_the_best():
    toy = Toy()
    scores = distinct_scores(toy)
    for round_to in (8, 16, 32):
        masks = select_masks(toy, ratio=0.3, round_to=round_to, scores=scores)
        unrounded = select_masks(toy, ratio=0.3, round_to=1, scores=scores)
        for g in toy.prunable_units():
            kept = int(masks[g.name].sum())
            width = 8 if g.kind == "head" else 1  # a head owns 8 entries of v rows / proj columns
            assert kept * width % round_to == 0 or kept == g.size, (g.name, kept)
            assert int(unrounded[g.name].sum()) <= kept < int(unrounded[g.name].sum()) + round_to
            best = torch.argsort(scores[g.name], descending=True)[:kept]
            assert bool(masks[g.name][best].all()), g.name
    # a head owns 8 entries, so any head count is a multiple of round_to=8 entries: heads are not rounded
    unrounded = int(select_masks(toy, ratio=0.5, round_to=1, scores=scores)["head_gate"].sum())
    assert int(select_masks(toy, ratio=0.5, round_to=8, scores=scores)["head_gate"].sum()) == unrounded < 4
    # b2 (4 units) is smaller than round_to=8: kept whole; b3 loses 13 lowest: 51 -> 56 kept
    s = {**scores, "b3": torch.arange(64.0)}
    masks = select_masks(toy, threshold=13, round_to=8, scores=s)
    assert masks["b2"].all() and int(masks["b3"].sum()) == 56 and masks["b3"][8:].all()
    # 20 units, 3 below threshold: 17 rounds up past the group size -> the whole group
    assert select_masks(toy, threshold=3, round_to=8, scores={**scores, "b1": torch.arange(20.0)})["b1"].all()


def test_min_keep_and_min_size_and_never_empty():
    toy = Toy()
    scores = distinct_scores(toy)
    masks = select_masks(toy, threshold=2.0, round_to=1, scores=scores)  # every score is below 2
    assert all(int(m.sum()) == 1 for m in masks.values())
    masks = select_masks(toy, threshold=2.0, round_to=1, min_keep=3, scores=scores)
    for name, m in masks.items():
        assert int(m.sum()) == 3 and bool(m[torch.argsort(scores[name], descending=True)[:3]].all())
    toy.min_sizes = {"b3": 10}
    masks = select_masks(toy, threshold=2.0, round_to=1, min_keep=3, scores=scores)
    assert int(masks["b3"].sum()) == 10 and int(masks["b1"].sum()) == 3
    assert int(select_masks(toy, threshold=2.0, min_keep=6, round_to=1, scores=scores)["b2"].sum()) == 4
    assert all(m.any() for m in select_masks(toy, ratio=0.999, round_to=1, scores=scores).values())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({}, "exactly one"),
        ({"ratio": 0.3, "threshold": 0.1}, "exactly one"),
        ({"threshold": -1.0}, "threshold"),
        ({"ratio": 0.3, "round_to": 0}, "round_to"),
        ({"ratio": 0.3, "min_keep": 0}, "min_keep"),
        ({"ratio": 0.3, "scores": {"nope": torch.ones(3)}}, "unknown unit groups"),
        ({"ratio": 0.3, "scores": "wrong-length"}, r"shape \(20,\)"),
        ({"ratio": 0.3, "scores": "missing"}, "missing"),
    ],
)
def test_select_errors(kwargs, match):
    toy, kwargs = Toy(), dict(kwargs)
    good = distinct_scores(toy)
    if kwargs.get("scores") == "wrong-length":
        kwargs["scores"] = {**good, "b1": torch.ones(19)}
    elif kwargs.get("scores") == "missing":
        kwargs["scores"] = {k: v for k, v in good.items() if k != "b1"}
    with pytest.raises(PruningError, match=match):
        select_masks(toy, **kwargs)
    assert issubclass(PruningError, ValueError)


@pytest.mark.parametrize(
    "masks, match",
    [
        ({"nope": torch.ones(3, dtype=torch.bool)}, "unknown unit groups"),
        ({"b1": torch.ones(19, dtype=torch.bool)}, r"shape \(20,\)"),
        ({"b1": torch.ones(20)}, "bool"),
        ({"b1": torch.zeros(20, dtype=torch.bool)}, "every unit"),
        ({"b1": torch.ones(20, 1, dtype=torch.bool)}, r"shape \(20,\)"),
        ([torch.ones(20, dtype=torch.bool)], "dict"),
    ],
)
def test_validate_masks_errors(masks, match):
    toy = Toy()
    for check in (validate_masks, apply_masks):
        with pytest.raises(PruningError, match=match):
            check(toy, masks)
    validate_masks(toy, {"b1": torch.ones(20, dtype=torch.bool)})  # partial masks are fine


def test_apply_masks_copies_unless_inplace():
    toy = Toy()
    with torch.no_grad():
        toy.b1.bias.fill_(0.5)
    before = copy.deepcopy(toy.state_dict())
    masks = select_masks(toy, ratio=0.5, round_to=1, scores=distinct_scores(toy))
    masked = apply_masks(toy, masks)
    assert masked is not toy
    assert all(torch.equal(v, before[k]) for k, v in toy.state_dict().items())
    pruned = ~masks["b1"]
    assert 0 < int(pruned.sum()) < 20 and torch.equal(masked.b1.weight != 0, masks["b1"])
    assert not masked.b1.bias[pruned].any() and masked.b1.bias[~pruned].all()
    assert torch.equal(masked.hidden_gate.weight != 0, masks["hidden_gate"])
    assert apply_masks(toy, masks, inplace=True) is toy and torch.equal(toy.b1.weight, masked.b1.weight)
    assert kept_widths_summary(masks)["b1"] == (20 - int(pruned.sum()), 20)


def test_flops_counts_multiply_adds_twice_and_restores_mode():
    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()).train()
    assert flops(net, (4, 5), batch=2) == 2 * (3 * 8) * (4 * 5) * 2
    assert net.training and params(net) == 3 * 8 + 2 * 8


# ---- every registered model: masked == compacted, smaller, on the extension -----------------------------


@pytest.fixture(scope="module", params=available_models())
def case(request):
    """(dense, masks, masked model, compacted model, input, masked output), built once per model."""
    torch.manual_seed(0)
    dense = randomize_(create_model(request.param, num_classes=NUM_CLASSES)).eval()
    gen = torch.Generator().manual_seed(1)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in dense.prunable_units()}
    masks = select_masks(dense, ratio=0.3, round_to=8, scores=scores)
    masked = apply_masks(dense, masks)
    small = compact(dense, masks)
    x = torch.randn(1, 3, *SIZE, generator=gen)
    with torch.no_grad():
        want = masked(x)
    return dense, masks, masked, small, x, want


def test_compacted_equals_masked(case):
    dense, masks, masked, small, x, want = case
    with torch.no_grad():
        assert rel_max(dense(x), want) > 1e-3  # the masks did something
        assert rel_max(small(x), want) <= 1e-5
    assert small.registry_name == dense.registry_name and not small.training
    assert small.widths() == {n: kept for n, (kept, _) in kept_widths_summary(masks).items()}
    # the same tensors as the plain-PyTorch reference compaction
    state, _ = compact_state_dict(dense, {n: m.nonzero().flatten() for n, m in masks.items()})
    got = small.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())
    # no tensor is shared with the source model
    sources = {t.data_ptr() for t in dense.state_dict().values()}
    assert not sources & {t.data_ptr() for t in got.values()}


def test_compacted_is_cheaper(case):
    dense, _, _, small, _, _ = case
    assert flops(small, SIZE) < flops(dense, SIZE)
    assert params(small) < params(dense)


def test_compact_leaves_the_global_rng_alone():
    """The rebuilt model's random init is skipped (the strict load overwrites it): no RNG draws."""
    toy_like = create_model("segformer_b0", num_classes=NUM_CLASSES)
    masks = select_masks(toy_like, ratio=0.3)
    state = torch.get_rng_state()
    compact(toy_like, masks)
    assert torch.equal(torch.get_rng_state(), state)


def test_compact_keeps_dtype_and_mode():
    dense = create_model("segformer_b0", num_classes=NUM_CLASSES).to(torch.bfloat16).train()
    small = compact(dense, select_masks(dense, ratio=0.3))
    assert small.training and all(p.dtype == torch.bfloat16 for p in small.parameters())
    assert all(p.requires_grad for p in small.parameters())


def test_compacted_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    dense = randomize_(create_model("deeplabv3plus_r18", num_classes=NUM_CLASSES)).eval()
    small = compact(dense, select_masks(dense, ratio=0.3))
    npdg.save_model(small, tmp_path / "small.pt")
    loaded = npdg.load_model(tmp_path / "small.pt").eval()
    assert loaded.widths() == small.widths() != dense.widths()
    x = torch.randn(1, 3, 21, 27)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


@pytest.mark.skipif(not _ext.available(), reason=f"compaction extension not available: {_ext.how()}")
def test_compact_runs_one_extension_call(monkeypatch):
    torch.manual_seed(0)
    dense = randomize_(create_model("deeplabv3plus_r18", num_classes=NUM_CLASSES)).eval()
    masks = select_masks(dense, ratio=0.3)
    calls = []
    real = ops.compact_many

    def spy(*args):
        calls.append(args)
        return real(*args)

    def no_reference(*args):
        raise AssertionError("compaction fell back to the reference")

    monkeypatch.setattr(ops, "compact_many", spy)
    monkeypatch.setattr(reference, "compact_many", no_reference)
    on_ext = compact(dense, masks)
    assert len(calls) == 1 and _ext.supports(torch.device("cpu"))
    sliced_dims = sum((o is not None) + (i is not None) for o, i in zip(calls[0][1], calls[0][2], strict=True))
    assert sliced_dims > len(calls[0][0])  # some tensors sliced on dim 0 and dim 1 at once
    monkeypatch.undo()
    monkeypatch.setenv("NPDG_NO_EXT", "1")
    on_reference = compact(dense, masks)
    ref_state = on_reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in on_ext.state_dict().items())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compact_on_cuda():
    torch.manual_seed(0)
    dense = randomize_(create_model("segformer_b0", num_classes=NUM_CLASSES)).eval().cuda()
    masks = select_masks(dense, ratio=0.3)
    small = compact(dense, masks)
    assert all(t.is_cuda for t in small.state_dict().values())
    x = torch.randn(1, 3, *SIZE, device="cuda")
    with torch.no_grad():
        assert rel_max(small(x), apply_masks(dense, masks)(x)) <= 1e-5
    assert flops(small, SIZE) < flops(dense, SIZE)


# ---- sparsity penalty and importance ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return create_model("segformer_b0", num_classes=NUM_CLASSES).eval()


def gate_groups(model):
    return [g for g in model.prunable_units() if g.kind in ("head", "hidden")]


def naive_gate_l1(model, kinds=("head", "hidden")):
    return sum(g.gamma().abs().sum() for g in gate_groups(model) if g.kind in kinds)


def test_bn_penalty_is_plain_l1_with_weights():
    toy = Toy()
    with torch.no_grad():
        toy.b1.weight.uniform_(-1, 1)
    only_bn = {"hidden_gate": torch.zeros(32), "head_gate": torch.zeros(4)}
    want = sum(b.weight.abs().sum() for b in (toy.b1, toy.b2, toy.b3))
    assert torch.allclose(l1_penalty(toy, only_bn), want)
    w = torch.rand(20)
    weighted = l1_penalty(toy, {**only_bn, "b1": w})
    assert torch.allclose(weighted, want - toy.b1.weight.abs().sum() + (w * toy.b1.weight.abs()).sum())
    importance = unit_importance(toy)
    assert torch.equal(importance["b1"], toy.b1.weight.abs()) and not importance["b1"].requires_grad
    with pytest.raises(PruningError, match="unknown unit groups"):
        l1_penalty(toy, {"nope": torch.ones(2)})
    with pytest.raises(PruningError, match=r"shape \(20,\)"):
        l1_penalty(toy, {"b1": torch.ones(3)})


def rescale_gates_(model, seed=0, low=0.05, high=20.0):
    """γ_i *= a_i and the consumer columns of unit i /= a_i, a_i random: the same function."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in gate_groups(model):
            a = torch.exp(torch.empty(g.size).uniform_(math.log(low), math.log(high), generator=gen))
            g.gamma().mul_(a)
            for s in g.consumers:
                shape = [1] * s.tensor().dim()
                shape[s.dim] = -1
                block = s.tensor().narrow(s.dim, s.offset, g.size * s.unit_width)
                block.div_(a.repeat_interleave(s.unit_width).view(shape))


def test_gate_penalty_is_invariant_to_rescaling(b0):
    model = copy.deepcopy(b0)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        out, pen, naive = model(x), l1_penalty(model), naive_gate_l1(model)
    before = unit_importance(model)
    for seed, (low, high) in enumerate([(0.05, 20.0), (1e-3, 1e-2), (1e2, 1e3)]):
        rescale_gates_(model, seed, low, high)
        with torch.no_grad():
            assert rel_max(model(x), out) <= 1e-4  # the same function
            assert l1_penalty(model).item() == pytest.approx(pen.item(), rel=1e-5)
            assert not naive_gate_l1(model).item() == pytest.approx(naive.item(), rel=0.1)
        after = unit_importance(model)
        assert all(torch.allclose(after[k], v, rtol=1e-4) for k, v in before.items())


def test_gate_penalty_has_no_gradient_along_the_rescaling(b0):
    """The optimizer cannot lower it by moving scale between a gate and its consumers: per unit,
    d/d(log a) P(γ·a, C/a) = γ·dP/dγ - Σ C·dP/dC = 0."""
    model = copy.deepcopy(b0)
    rescale_gates_(model)  # away from the all-ones γ
    l1_penalty(model).backward()
    for g in gate_groups(model):
        along_gamma = g.gamma().detach() * g.gamma().grad
        along_cols = torch.zeros(g.size)
        for s in g.consumers:
            w, grad = (t.narrow(s.dim, s.offset, g.size * s.unit_width) for t in (s.tensor(), s.tensor().grad))
            along_cols += (w * grad).detach().movedim(s.dim, 0).reshape(g.size, -1).sum(1)
        assert along_gamma.abs().max() > 0
        assert torch.allclose(along_gamma, along_cols, rtol=1e-3, atol=1e-6 * along_gamma.abs().max()), g.name


def test_gate_penalty_bounded_under_value_row_rescaling(b0):
    """A head's v rows also scale with its gate; that rescaling cannot drive the penalty towards 0."""
    model = copy.deepcopy(b0)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        out = model(x)
        naive = naive_gate_l1(model, ["head"]).item()
        a = 1e-3
        for blk in (b for s in model.backbone.stages for b in s.blocks):
            inner = blk.attn.num_heads * blk.attn.head_dim
            blk.attn.head_gate.weight.mul_(a)
            blk.attn.kv.weight[inner:].div_(a)
            blk.attn.kv.bias[inner:].div_(a)
        assert rel_max(model(x), out) <= 1e-4
        heads_only = {g.name: torch.zeros(g.size) for g in model.prunable_units() if g.kind != "head"}
        assert naive_gate_l1(model, ["head"]).item() == pytest.approx(a * naive)
        assert l1_penalty(model, heads_only).item() > 0.3 * l1_penalty(b0, heads_only).item()


def test_importance_ranks_the_effectively_small_units(b0):
    """Units disguised by rescaling (large γ, tiny consumer columns) are what select_masks prunes by default."""
    model = copy.deepcopy(b0)
    gen = torch.Generator().manual_seed(3)
    planted = {}
    with torch.no_grad():
        for g in (g for g in gate_groups(model) if g.kind == "hidden"):
            planted[g.name] = torch.randperm(g.size, generator=gen)[: round(0.3 * g.size)]
            g.gamma()[planted[g.name]] *= 10.0
            g.consumers[0].tensor()[:, planted[g.name]] *= 1e-3
    n_planted = sum(p.numel() for p in planted.values())
    n_hidden = sum(g.size for g in gate_groups(model) if g.kind == "hidden")
    masks = select_masks(model, ratio=n_planted / n_hidden, round_to=1)
    naive = select_masks(model, ratio=n_planted / n_hidden, round_to=1,
                         scores={g.name: g.gamma().detach().abs() for g in model.prunable_units()})
    for name, idx in planted.items():
        want = torch.ones_like(masks[name])
        want[idx] = False
        assert torch.equal(masks[name], want), name
        assert naive[name][idx].all()  # |γ| alone keeps exactly the disguised units
    explicit = select_masks(model, ratio=n_planted / n_hidden, round_to=1, scores=unit_importance(model))
    assert all(torch.equal(masks[k], explicit[k]) for k in masks)


def test_kinds_are_ranked_separately(b0):
    """Gate γ 100x smaller than BN γ: BN channels are still pruned, and no gate group is emptied."""
    model = copy.deepcopy(b0)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for g in model.prunable_units():
            g.gamma().copy_((torch.rand(g.size, generator=gen) + 0.5) * (1.0 if g.kind == "channel" else 0.01))
    groups = model.prunable_units()
    plain = {g.name: g.gamma().detach().abs() for g in groups}
    for scores in (plain, None):  # None: unit_importance, where gates score even lower
        masks = select_masks(model, ratio=0.3, round_to=1, scores=scores)
        assert all(m.any() for m in masks.values())
        for kind in ("channel", "hidden", "head"):
            total = sum(g.size for g in groups if g.kind == kind)
            removed = sum(int((~masks[g.name]).sum()) for g in groups if g.kind == kind)
            if kind == "head":  # single-head groups may have to keep their only head
                assert 0 < removed <= round(0.3 * total)
            else:
                assert removed == round(0.3 * total), kind


def test_sparse_training_shrinks_gate_importance_not_just_gamma(b0):
    """Task + s * penalty, a few Adam steps: the plain gate L1 is met by rescaling (γ falls, γ·weights
    does not), the path-scale penalty lowers the rescaling-invariant importance itself."""
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = b0(x)
    not_bn = {g.name: torch.zeros(g.size) for g in b0.prunable_units() if g.kind == "channel"}
    results = {}
    for label, penalty in [("naive", naive_gate_l1), ("path", lambda m: l1_penalty(m, not_bn))]:
        model = copy.deepcopy(b0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(10):
            task = F.mse_loss(model(x), target) / target.square().mean()
            opt.zero_grad()
            (task + 10.0 * penalty(model)).backward()
            opt.step()
        before, after = unit_importance(b0), unit_importance(model)
        gates = gate_groups(model)
        results[label] = (
            torch.cat([after[g.name] / before[g.name] for g in gates]).mean().item(),
            torch.cat([g.gamma().detach().abs() for g in gates]).mean().item(),
        )
    importance, gamma = results["naive"]
    assert gamma < 0.995 and importance > 0.98  # γ went down, the weights grew back: just rescaling
    importance, _ = results["path"]
    assert importance < 0.8
