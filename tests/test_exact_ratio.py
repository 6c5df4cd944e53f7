"""``exact_ratio``: the unit ratio is the fraction actually removed per kind (round_to steps taken back)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_scores

from npdg.config import Config, ConfigError
from npdg.models import create_model
from npdg.pruning import PruningError, compact, flops, select_masks
from npdg.pruning.select import unit_step

NUM_CLASSES = 5


def _removed_by_kind(model, masks, residual):
    out = {}
    for g in model.prunable_units(residual=residual):
        r, n = out.get(g.kind, (0, 0))
        out[g.kind] = (r + int((~masks[g.name]).sum()), n + g.size)
    return out


@pytest.mark.parametrize("name,residual", [("deeplabv3plus_r50", True), ("deeplabv3plus_r18", False),
                                           ("segformer_b0", False)])
def test_removes_the_ratio_per_kind_within_half_a_step(name, residual):
    m = create_model(name, num_classes=NUM_CLASSES)
    groups = {g.name: g for g in m.prunable_units(residual=residual)}
    scores = random_scores(m, residual)
    up = select_masks(m, ratio=0.3, round_to=8, scores=scores, prune_residual=residual)
    exact = select_masks(m, ratio=0.3, round_to=8, scores=scores, prune_residual=residual, exact_ratio=True)
    short = False
    for kind, (removed, total) in _removed_by_kind(m, exact, residual).items():
        target = round(0.3 * total)
        steps = {unit_step(g, 8) for g in groups.values() if g.kind == kind}
        assert abs(removed - target) <= max(steps) / 2, (kind, removed, target)
        removed_up = _removed_by_kind(m, up, residual)[kind][0]
        assert removed >= removed_up  # steps are only ever taken back
        short |= target - removed_up > max(steps) / 2
    assert short  # rounding up alone stays measurably short of the ratio, else this test proves nothing
    for n, keep in exact.items():
        g, k = groups[n], int(keep.sum())
        assert k == g.size or k % unit_step(g, 8) == 0  # still whole round_to steps
        best = torch.argsort(scores[n], descending=True, stable=True)[:k]
        assert bool(keep[best].all())  # still the group's k best


def test_a_step_comes_from_the_group_whose_next_step_scores_lowest():
    m = create_model("deeplabv3plus_r18", num_classes=NUM_CLASSES)
    groups = m.prunable_units()
    # two inner groups of the same size; everything else scores high and stays
    a, b = groups[0].name, groups[1].name
    assert groups[0].size == groups[1].size == 64
    scores = {g.name: torch.full((g.size,), 10.0) for g in groups}
    scores[a] = torch.cat([torch.full((60,), 5.0), torch.full((4,), 0.0)])  # next step's best: 5.0
    scores[b] = torch.cat([torch.full((60,), 1.0), torch.full((4,), 0.0)])  # next step's best: 1.0
    up = select_masks(m, ratio=8 / sum(g.size for g in groups), round_to=8, scores=scores)
    assert int(up[a].sum()) == int(up[b].sum()) == 64  # 4 + 4 lowest chosen, both rounded back up
    exact = select_masks(m, ratio=8 / sum(g.size for g in groups), round_to=8, scores=scores, exact_ratio=True)
    assert int(exact[b].sum()) == 56 and int(exact[a].sum()) == 64  # b's step is cheaper: b gives 8
    assert all(bool(exact[g.name].all()) for g in groups[2:])


def test_r50_streams_at_ratio_0_3_cost_what_unrounded_pruning_costs():
    """The issue-19 setting (R50, streams, ratio 0.3, round_to 8, random scores): rounding up keeps ~2 points
    of FLOPs more than unrounded pruning (round_to 1); exact_ratio lands within half a point of it."""
    m = create_model("deeplabv3plus_r50", num_classes=19)
    scores, size = random_scores(m, residual=True, seed=0), (64, 128)
    dense = flops(m, size)

    def frac(round_to, exact):
        return flops(compact(m, select_masks(m, ratio=0.3, round_to=round_to, scores=scores, prune_residual=True,
                                             exact_ratio=exact)), size) / dense

    unrounded, up, exact = frac(1, False), frac(8, False), frac(8, True)
    assert up - unrounded > 0.015
    assert abs(exact - unrounded) < 0.005
    assert 0.49 < exact < 0.51


def test_exact_ratio_needs_a_ratio():
    m = create_model("deeplabv3plus_r18", num_classes=NUM_CLASSES)
    with pytest.raises(PruningError, match="exact_ratio needs ratio"):
        select_masks(m, threshold=0.1, exact_ratio=True)
    with pytest.raises(ConfigError, match="exact_ratio needs ratio"):
        Config(exact_ratio=True, threshold=0.1).validate()
