"""sfp (Soft Filter Pruning, He et al. 2018): the soft prune zeroes exactly the lowest-norm units of every group at
the ratio, they output 0 and stay trainable, the schedule is every sfp_every steps, the final prune removes the
zeroed units to the FLOPs target, and the run goes end to end from the CLI."""

import json

import pytest
import torch
from helpers import randomize_, rel_max

from npdg.config import load_config
from npdg.loop import Context
from npdg.methods import build_method
from npdg.methods.sfp import filter_norms, filters, layer_masks, zero_filters_
from npdg.models import create_model
from npdg.pruning import compact, flops
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = ["--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0", "--batch_size=2",
        "--log_every=2", "--targets=synthetic:fog", "--ckpt_every=2", "--method=sfp"]


def _model(name="deeplabv3plus_r18", seed=0):
    torch.manual_seed(seed)
    return randomize_(create_model(name, num_classes=5))


def _conv_rows(group):
    (s,) = [s for s in group.producers if s.attr == "weight" and isinstance(s.module, torch.nn.Conv2d)]
    return s.tensor()


def test_the_soft_prune_zeroes_exactly_the_lowest_norm_units_of_every_group():
    model = _model()
    gen = torch.Generator().manual_seed(3)
    want = {}
    with torch.no_grad():  # every filter's norm set to a distinct known value, in a random order per group
        for g in model.prunable_units():
            rows = _conv_rows(g)
            norms = torch.randperm(g.size, generator=gen).double() + 1
            rows.copy_(rows / rows.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * norms.view(-1, 1, 1, 1))
            want[g.name] = norms.argsort()[: round(0.5 * g.size)]  # the lowest half
    norms = filter_norms(model)
    assert all(torch.allclose(norms[g.name], _conv_rows(g).double().flatten(1).norm(dim=1))
               for g in model.prunable_units())
    masks = layer_masks(model, 0.5, norms, round_to=1)
    for name, keep in masks.items():
        assert sorted((~keep).nonzero().flatten().tolist()) == sorted(want[name].tolist()), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zero_filters_(model, masks)
    for g in model.prunable_units():
        rows, dropped = _conv_rows(g), ~masks[g.name]
        assert bool((rows[dropped] == 0).all()) and bool((rows[~dropped] != 0).any(dim=(1, 2, 3)).all())
        for attr in ("weight", "bias", "running_mean", "running_var"):  # BN untouched: the gradient path
            assert torch.equal(getattr(g.scale_module, attr), before[f"{g.name}.{attr}"])


def test_round_to_rounds_the_kept_count_up():
    model = _model()
    masks = layer_masks(model, 0.3, filter_norms(model), round_to=8)
    for g in model.prunable_units():
        kept = int(masks[g.name].sum())
        assert kept >= g.size - round(0.3 * g.size) and (kept % 8 == 0 or kept == g.size)


@pytest.mark.parametrize("name", ["deeplabv3plus_r18", "segformer_b0"])
def test_every_zeroed_filter_still_gets_gradient(name):
    model = _model(name)
    with torch.no_grad():  # BN β > 0: the units sit on the ReLU's live side (a unit with β <= 0 is off anyway)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.abs_().add_(0.1)
    masks = layer_masks(model, 0.4, filter_norms(model), round_to=1)
    zero_filters_(model, masks)
    model.train()
    model(torch.randn(2, 3, 32, 64)).square().mean().backward()
    for g in model.prunable_units():
        dropped = (~masks[g.name]).nonzero().flatten()
        if not len(dropped):
            continue
        grad = torch.zeros(len(dropped))
        for s in filters(g):
            if s.attr == "weight":
                rows = s.tensor().grad.movedim(s.dim, 0)[s.positions(dropped)]
                grad += rows.reshape(len(dropped), -1).abs().sum(1)  # (a MiT head: its v rows)
        assert bool((grad > 0).all()), (g.name, int((grad == 0).sum()), len(dropped))


def _method(tmp_path, *extra):
    cfg = load_config(None, TINY + ["--iters=6", "--finetune_iters=2", *extra, "--out", str(tmp_path)])
    model = _model()
    return cfg, model, build_method(Context(cfg, torch.device("cpu")), model)


def test_the_soft_prune_runs_every_sfp_every_steps(tmp_path, monkeypatch):
    _, model, method = _method(tmp_path, "--sfp_every=2")
    steps = []
    zero = method.zero_
    monkeypatch.setattr(method, "zero_", lambda m: (steps.append(current), zero(m)))
    loss_fn = method.train_loss_fn(model)
    x, y = torch.randn(2, 3, 32, 64), torch.randint(0, 5, (2, 32, 64))
    for current in range(1, 7):
        loss_fn(model, current, x, y)
    method.end_train(model)
    assert steps == [3, 5, 6]  # after steps 2 and 4, and the last one at the end of the stage


def test_the_prune_removes_the_zeroed_units_and_meets_the_flops_target(tmp_path):
    cfg, model, method = _method(tmp_path)
    assert cfg.flops_target == 0.6 and cfg.finetune_iters == 2
    method.end_train(model)  # the last soft prune picks r by the FLOPs target and silences its units
    model.eval()
    small = method.prune(model, tmp_path).eval()
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():  # removed = the zeroed units: the compact model computes what the soft-pruned one does
        assert rel_max(small(x), model(x)) <= 1e-5
    size = tuple(cfg.eval_size)
    assert flops(small, size) <= 0.6 * flops(model, size)
    assert 0 < method.ratio < 1 and method.ctx.history["prune_ratio"] == method.ratio
    # r is the smallest fraction that meets the target (bisection to 1e-3)
    less = layer_masks(model, method.ratio - 2e-3, filter_norms(model), cfg.round_to, cfg.min_keep)
    assert flops(compact(model, less), size) > 0.6 * flops(model, size)


def test_sfp_defaults_spend_the_budget_like_the_other_pruning_methods():
    cfg = load_config(None, ["--method=sfp"])
    assert (cfg.iters, cfg.finetune_iters, cfg.flops_target, cfg.sfp_every) == (200, 60, 0.6, 10)
    assert load_config(None, ["--method=sfp", "--model=segformer_b0"]).flops_target == 0.75
    assert load_config(None, ["--method=sfp", "--ratio=0.4"]).flops_target == 0


@pytest.mark.parametrize("bad, message", [
    (["--ratio=0"], "ratio must be in (0, 1) for method=sfp"),
    (["--ratio=1"], "ratio must be in [0, 1)"),
    (["--sfp_every=0"], "sfp_every must be >= 1"),
    (["--threshold=0.1", "--flops_target=0"], "threshold: not an sfp option"),
])
def test_bad_sfp_keys_are_one_line_usage_errors(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as exc:
        main(TINY + bad + ["--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_sfp_runs_end_to_end_on_the_quick_preset(tmp_path):
    out = tmp_path / "sfp"
    main(["--preset=quick", *TINY, "--budget=6", "--finetune_iters=2", "--sfp_every=2", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "sfp" and m["steps"] == {"train": 4, "finetune": 2}
    assert m["final"]["flops"] <= 0.6 * m["dense"]["flops"] and 0 < m["final"]["prune_ratio"] < 1
