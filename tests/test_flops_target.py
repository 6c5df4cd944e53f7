"""``flops_target``: the prune removes the smallest unit ratio whose compact model meets a FLOPs budget."""

from __future__ import annotations

import json

import pytest
from helpers import random_scores

from npdg.config import ConfigError, load_config
from npdg.models import create_model
from npdg.pruning import PruningError, compact, flops, select_masks, select_masks_for_flops

SIZE = (32, 64)
TOL = 1e-3


@pytest.mark.parametrize("name,residual", [("deeplabv3plus_r18", False), ("segformer_b0", True)])
@pytest.mark.parametrize("target", [0.6, 0.8])
def test_smallest_ratio_that_meets_the_target(name, residual, target):
    model = create_model(name, num_classes=5).eval()
    rules = dict(scores=random_scores(model, residual), round_to=8, prune_residual=residual)
    dense = flops(model, SIZE)
    masks, ratio = select_masks_for_flops(model, target, SIZE, tol=TOL, **rules)
    assert flops(compact(model, masks), SIZE) <= target * dense
    # the masks are select_masks' at that ratio, and a ratio 2 tol smaller misses the target: minimal
    same = select_masks(model, ratio=ratio, **rules)
    assert all(bool((same[n] == m).all()) for n, m in masks.items())
    below = select_masks(model, ratio=ratio - 2 * TOL, **rules)
    assert flops(compact(model, below), SIZE) > target * dense


def test_unreachable_target_and_bad_arguments():
    model = create_model("deeplabv3plus_r18", num_classes=5).eval()
    with pytest.raises(PruningError, match="out of reach"):
        select_masks_for_flops(model, 0.001, SIZE, round_to=8)
    with pytest.raises(PruningError, match=r"in \(0, 1\)"):
        select_masks_for_flops(model, 1.0, SIZE)
    with pytest.raises(PruningError, match="chooses the ratio"):
        select_masks_for_flops(model, 0.5, SIZE, ratio=0.3)


@pytest.mark.parametrize("args,message", [
    (["--flops_target=1"], "flops_target must be in"),
    (["--flops_target=-0.1"], "flops_target must be in"),
    (["--flops_target=0.6", "--threshold=0.1"], "give one"),
])
def test_config_range(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=args)


@pytest.mark.parametrize("args,expected", [
    (["--method=npdg"], (0.6, 0.3)),  # npdg's default: a FLOPs target
    (["--method=npdg", "--ratio=0.4"], (0.0, 0.4)),  # a given ratio chooses the prune
    (["--method=npdg", "--threshold=0.1"], (0.0, 0.3)),
    (["--method=npdg", "--flops_target=0.5"], (0.5, 0.3)),
    (["--method=npdg", "--flops_target=0"], (0.0, 0.3)),
    (["--method=npdg", "--model=segformer_b0"], (0.75, 0.3)),  # a MiT's default target: its FLOPs bound
    (["--method=npdg", "--model=segformer_b0", "--ratio=0.3"], (0.0, 0.3)),
    (["--method=slimming"], (0.6, 0.3)),  # npdg's target (issue 32: every pruning method to the same FLOPs)
    (["--method=slimming", "--model=segformer_b0"], (0.75, 0.3)),
    (["--preset=gta5_cityscapes_r50"], (0.0, 0.3)),  # the paper prunes a ratio
])
def test_default_resolution(args, expected):
    cfg = load_config(overrides=args)
    assert (cfg.flops_target, cfg.ratio) == expected
    assert (cfg.validate().flops_target, cfg.ratio) == expected  # idempotent: a resumed run re-validates


def test_run_meets_the_target_and_records_the_ratio(tmp_path, one_intra_op_thread):
    from test_train import TINY

    from npdg.train import main

    out = tmp_path / "run"
    main(TINY + ["--method=slimming", "--flops_target=0.5", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"]["flops"] <= 0.5 * saved["dense"]["flops"]
    assert 0 < saved["final"]["prune_ratio"] < 1
