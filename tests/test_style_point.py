"""style_point (issue 16): a segformer_* model's feature-level restyle can act at stage 1's patch embedding,
before its blocks (``embed``), instead of at stage 1's output (``stage``, the default); the stage-1 heads and
Mix-FFN channels then see the style change and npdg's sensitivity scores them."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_

from npdg.config import ConfigError, load_config
from npdg.dsp.perturb import FeatureDSP, perturbation
from npdg.models import create_model
from npdg.pruning import compact, select_masks
from npdg.sensitivity import compute_sensitivity

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _pair(seed=0):
    torch.manual_seed(seed)
    stage = randomize_(create_model("segformer_b0", num_classes=5)).double().eval()
    embed = create_model("segformer_b0", num_classes=5, style_point="embed").double().eval()
    embed.load_state_dict(stage.state_dict())  # the tap has no parameters: the same weights load
    return stage, embed


def test_embed_tap_is_the_identity_and_sits_before_the_stage1_blocks():
    stage, embed = _pair()
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(embed(x), stage(x), rtol=0, atol=0)  # no hook: the forward as ever
    assert embed.style_layer is embed.backbone.stages[0].embed_tap
    assert stage.style_layer is stage.backbone.stages[0] and stage.backbone.stages[0].embed_tap is None
    order = []
    hooks = [embed.style_layer.register_forward_hook(lambda m, i, out: order.append(("tap", tuple(out.shape))))]
    hooks += [b.register_forward_hook(lambda m, i, out, j=j: order.append((f"block{j}", None)))
              for j, b in enumerate(embed.backbone.stages[0].blocks)]
    with torch.no_grad():
        embed(x)
    for h in hooks:
        h.remove()
    assert order == [("tap", (2, 32, 8, 16)), ("block0", None), ("block1", None)]  # (N, C, H/4, W/4), then blocks


def test_a_hook_on_the_embed_tap_reaches_the_blocks_as_tokens():
    stage, embed = _pair()
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    shift = torch.randn(1, 32, 1, 1, dtype=torch.float64)
    seen = []
    handle = embed.backbone.stages[0].blocks[0].norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad(), perturbation(embed, lambda f: f + shift):
        shifted = embed(x)
    handle.remove()
    tokens, _, _ = stage.backbone.stages[0].patch_embed(x)  # the same weights: what the tap's input was
    torch.testing.assert_close(seen[0], tokens + shift.reshape(1, 1, 32))  # channel c of every token moved
    with torch.no_grad():
        assert (shifted - stage(x)).abs().amax() > 1e-6


def test_sensitivity_scores_the_stage1_units_only_from_the_embedding():
    stage, embed = (m.float() for m in _pair())  # the D-VAE runs in fp32
    images = torch.randn(2, 3, 32, 64)
    dsp = FeatureDSP(32, latent=8, hidden=16)
    s_stage = compute_sensitivity(stage, images, dsp, k=3, generator=torch.Generator().manual_seed(0))
    s_embed = compute_sensitivity(embed, images, dsp, k=3, generator=torch.Generator().manual_seed(0))
    stage1 = [g.name for g in stage.prunable_units() if g.name.startswith("backbone.stages.0.")]
    assert len(stage1) == 4 and sorted(s_stage.upstream) == sorted(stage1)
    assert s_embed.upstream == []
    for name in stage1:
        assert s_embed.unary[name].amax() > 0 and s_stage.unary[name].amax() == 0


def test_style_point_survives_compaction_and_saving(tmp_path):
    import npdg

    _, embed = _pair()
    embed = embed.float()
    small = compact(embed, select_masks(embed, ratio=0.3, prune_residual=True))
    assert small.arch_config()["style_point"] == "embed" and small.style_layer is small.backbone.stages[0].embed_tap
    npdg.save_model(small, tmp_path / "m.pt")
    assert npdg.load_model(tmp_path / "m.pt").arch_config()["style_point"] == "embed"
    assert "style_point" not in create_model("segformer_b0", num_classes=5).arch_config()  # old checkpoints


def test_style_point_is_checked_and_reaches_the_model():
    with pytest.raises(ConfigError, match="style_point"):
        load_config(None, ["--model=segformer_b0", "--style_point=input"])
    with pytest.raises(ConfigError, match="segformer_\\* models only"):
        load_config(None, ["--style_point=embed"])  # the default model is a ResNet
    with pytest.raises(ValueError, match="style_point"):
        create_model("segformer_b0", num_classes=5, style_point="input")
    from npdg.train import build_model

    model = build_model(load_config(None, ["--model=segformer_b0", "--style_point=embed", "--method=dsp"]))
    assert model.style_layer is model.backbone.stages[0].embed_tap
    stage = load_config(None, ["--model=segformer_b0", "--style_point=stage"])
    assert build_model(stage).backbone.stages[0].embed_tap is None


@pytest.mark.parametrize("model,method,point", [("segformer_b0", "npdg", "embed"), ("segformer_b1", "npdg", "embed"),
                                                ("segformer_b0", "dsp", "stage"), ("segformer_b0", "erm", "stage"),
                                                ("deeplabv3plus_r18", "npdg", "stage")])
def test_style_point_default_is_embed_for_npdg_on_a_mit(model, method, point):
    cfg = load_config(None, [f"--model={model}", f"--method={method}"])
    assert cfg.style_point == point
