"""Residual-stream pruning (coupled unit groups, ``prune_residual=True``; off by default)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    check_compacted_equals_masked,
    random_scores,
    randomize_,
    stream_groups,
    tiny_npdg_runs_with_and_without_residual,
)

import npdg
from npdg.models import compact_state_dict, create_model
from npdg.models.units import CoupledGroup
from npdg.pruning import PruningError, compact, flops, l1_penalty, params, select_masks, unit_importance

SIZE = (32, 32)
NUM_CLASSES = 5


def _dense(name):
    torch.manual_seed(0)
    return randomize_(create_model(name, num_classes=NUM_CLASSES)).eval()


def test_off_by_default_and_declared_only_when_asked():
    m = create_model("deeplabv3plus_r50", num_classes=NUM_CLASSES)
    plain, coupled = m.prunable_units(), m.prunable_units(residual=True)
    assert not any(isinstance(g, CoupledGroup) for g in plain)
    assert [g.name for g in coupled[: len(plain)]] == [g.name for g in plain]  # streams appended last
    streams = {g.name: (g.size, len(g.scale_modules)) for g in coupled[len(plain):]}
    assert streams == {"backbone.stem": (64, 1), "backbone.layer1.residual": (256, 4),
                       "backbone.layer2.residual": (512, 5), "backbone.layer3.residual": (1024, 7),
                       "backbone.layer4.residual": (2048, 4)}
    assert m.widths() == {g.name: g.size for g in plain}  # dense streams: arch_config unchanged
    for g in coupled:
        g.check()
    r18 = create_model("deeplabv3plus_r18", num_classes=NUM_CLASSES)
    names = [g.name for g in stream_groups(r18)]
    assert names == [f"backbone.layer{i}.residual" for i in range(1, 5)]  # the stem is in layer1's stream
    assert set(select_masks(m, ratio=0.3)) == {g.name for g in plain}


@pytest.fixture(scope="module", params=["deeplabv3plus_r18", "deeplabv3plus_r50", "deeplabv3plus_r101"])
def case(request):
    dense = _dense(request.param)
    masks = select_masks(dense, ratio=0.3, round_to=8, scores=random_scores(dense), prune_residual=True)
    small = compact(dense, masks)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    return dense, masks, small, x


def test_compacted_equals_masked_with_residual_pruning(case):
    dense, masks, small, x = case
    streams, widths = check_compacted_equals_masked(dense, masks, small, x)
    assert all(widths[g.name] % 8 == 0 for g in streams)
    state, _ = compact_state_dict(dense, {n: m.nonzero().flatten() for n, m in masks.items()})
    got = small.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())


def test_residual_pruning_is_cheaper_than_without(case):
    dense, _, small, _ = case
    without = compact(dense, select_masks(dense, ratio=0.3, round_to=8, scores=random_scores(dense, False)))
    assert flops(small, SIZE) < flops(without, SIZE) < flops(dense, SIZE)
    assert params(small) < params(without) < params(dense)


def test_save_load_round_trip(case, tmp_path):
    dense, _, small, x = case
    npdg.save_model(small, tmp_path / "small.pt")
    loaded = npdg.load_model(tmp_path / "small.pt").eval()
    assert loaded.arch_config() == small.arch_config()
    assert any(k.endswith(".residual") for k in loaded.widths())
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_importance_is_the_mean_abs_gamma_over_the_stream_bns():
    m = _dense("deeplabv3plus_r18")
    g = next(g for g in m.prunable_units(residual=True) if g.name == "backbone.layer2.residual")
    want = sum(bn.weight.detach().abs() for bn in g.scale_modules) / len(g.scale_modules)
    assert torch.allclose(unit_importance(m, residual=True)[g.name], want)
    assert g.name not in unit_importance(m)
    assert l1_penalty(m, residual=True).item() > l1_penalty(m).item()


def test_a_ratio_that_would_empty_a_stream_keeps_min_keep():
    m = _dense("deeplabv3plus_r18")
    scores = random_scores(m)
    scores["backbone.layer1.residual"] = torch.zeros(64)  # the lowest units of their kind: all go first
    masks = select_masks(m, ratio=0.1, round_to=1, min_keep=3, scores=scores, prune_residual=True)
    assert int(masks["backbone.layer1.residual"].sum()) == 3
    small = compact(m, masks)
    assert small.backbone.low_channels == 3 and small.backbone.conv1.out_channels == 3


def test_models_without_residual_groups_are_refused():
    vgg = create_model("deeplab_vgg16", num_classes=NUM_CLASSES)
    assert not vgg.supports_residual()
    assert len(vgg.prunable_units(residual=True)) == len(vgg.prunable_units())
    with pytest.raises(PruningError, match="model deeplab_vgg16 declares no residual-stream"):
        select_masks(vgg, ratio=0.3, prune_residual=True)
    assert "deeplab_vgg16" not in npdg.models.residual_models()


def test_prune_residual_config_on_a_model_without_streams_exits_2(tmp_path, capsys):
    from npdg.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--model=deeplab_vgg16", "--prune_residual=true", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model deeplab_vgg16 declares no residual-stream" in err
    assert not (tmp_path / "r").exists()


def test_sensitivity_covers_the_streams_and_feeds_the_penalty_and_the_prune():
    from npdg.dsp.perturb import FeatureDSP
    from npdg.methods.base import prune_scores
    from npdg.sensitivity import compute_sensitivity

    m = _dense("deeplabv3plus_r50")
    torch.manual_seed(0)
    dsp = FeatureDSP(m.style_channels, latent=8, hidden=32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    plain = compute_sensitivity(m, images, dsp, k=2, generator=torch.Generator().manual_seed(1))
    sens = compute_sensitivity(m, images, dsp, k=2, generator=torch.Generator().manual_seed(1), residual=True)
    streams = [g.name for g in stream_groups(m)]
    assert set(sens.weights) == set(plain.weights) | set(streams)
    # observed at the stage output: the stem and layer1 (the perturbed feature itself) are upstream
    assert {"backbone.stem", "backbone.layer1.residual"} <= set(sens.upstream)
    assert all(bool(sens.unary[f"backbone.layer{i}.residual"].gt(0).any()) for i in (2, 3, 4))
    assert l1_penalty(m, sens.weights, residual=True).item() > 0
    scores = prune_scores(m, sens, 1.0, residual=True)
    assert set(scores) == set(sens.weights)
    masks = select_masks(m, ratio=0.3, scores=scores, prune_residual=True)
    assert not bool(masks["backbone.layer3.residual"].all())


def test_train_prune_residual_end_to_end(tmp_path):
    # at one ratio the streams come on top of the channels (npdg's default flops_target would even them out)
    finals = tiny_npdg_runs_with_and_without_residual(tmp_path, "deeplabv3plus_r18", "--ratio=0.3")
    streams = {k for k in finals["true"].widths() if k.endswith(".residual")}
    assert streams and not any(k.endswith(".residual") for k in finals["false"].widths())
    assert flops(finals["true"], SIZE) < flops(finals["false"], SIZE)
