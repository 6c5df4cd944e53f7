"""Recipe options of issue 16: sensitivity in the prune criterion (prune_sens) and restyled copies (dsp_copy)."""

import pytest
import torch

from npdg.config import ConfigError, available_presets, load_config
from npdg.dsp.perturb import FeatureDSP, cross_entropy, pixel_restyle
from npdg.methods.base import prune_scores
from npdg.models import create_model
from npdg.pruning import select_masks
from npdg.sensitivity import Sensitivity, pruned_vs_kept

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _equal_gammas_and_rising_weights():
    """Every γ equal (importance ties everywhere); scale-free weights rising with the unit index, so a prune
    that ignores them (ties -> lowest index first) removes the LEAST sensitive units."""
    model = create_model("deeplabv3plus_r18", num_classes=5)
    weights = {}
    with torch.no_grad():
        for g in model.prunable_units():
            g.gamma().fill_(1.0)
            weights[g.name] = torch.linspace(0.2, 2.0, g.size)
    ones = {n: torch.ones_like(w) for n, w in weights.items()}
    return model, Sensitivity(unary=weights, binary=weights, weights=ones, relative=weights)


def test_prune_sens_removes_the_style_sensitive_units_first():
    model, sens = _equal_gammas_and_rising_weights()
    masks = select_masks(model, ratio=0.3, round_to=1, scores=prune_scores(model, sens, alpha=1.0))
    pk = pruned_vs_kept(sens, masks)
    assert pk["pruned"] > 1.5 > pk["kept"]  # the top 30 % of weights (> 1.46) went, the rest stayed
    # alpha = 0 is the paper's prune (importance only): same model, ties broken by index
    assert prune_scores(model, sens, alpha=0.0) is None
    plain = pruned_vs_kept(sens, select_masks(model, ratio=0.3, round_to=1))
    assert not plain["pruned"] > 1.5 > plain["kept"]  # so the assertion above fails if the weights are ignored


def test_prune_sens_trades_importance_against_sensitivity():
    model, sens = _equal_gammas_and_rising_weights()
    g = next(iter(model.prunable_units()))
    with torch.no_grad():
        g.gamma().copy_(torch.linspace(1.0, 4.0, g.size))  # importance rising faster than w (x4 vs x10)
    scores = prune_scores(model, sens, alpha=0.5)
    expect = torch.linspace(1.0, 4.0, g.size) / torch.linspace(0.2, 2.0, g.size) ** 0.5
    torch.testing.assert_close(scores[g.name], expect)


def test_dsp_copy_keeps_the_whole_clean_batch_and_appends_restyled_copies():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5)
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    seen, stats = [], []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    for copy in (False, True):
        dsp = FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=0, copy=copy)
        real_loss = dsp.dvae.loss
        dsp.dvae.loss = lambda mean, std, beta, real_loss=real_loss: (stats.append(mean.shape[0]),
                                                                       real_loss(mean, std, beta=beta))[1]
        seen.clear()
        loss, logs = dsp.task_loss(model, model, images, labels, cross_entropy)
        assert torch.isfinite(loss) and logs["dsp_pert"] > 0 and logs["dsp_clean"] > 0
        assert seen[-1] == (6 if copy else 4)  # 4 clean + 2 restyled copies, or 2 of 4 replaced
    assert stats == [4, 4]  # the D-VAE learns each clean sample's style once (never the duplicates twice)


def test_new_keys_are_range_checked():
    with pytest.raises(ConfigError, match="sens_scale"):
        load_config(None, ["--sens_scale=gamma"])
    with pytest.raises(ConfigError, match="prune_sens"):
        load_config(None, ["--prune_sens=-1"])
    with pytest.raises(ConfigError, match="exact_ratio needs ratio"):
        load_config(None, ["--exact_ratio", "--threshold=0.1"])


def test_dsp_weight_in_the_training_loss():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5)
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    outs = {}
    for name, kwargs in {"plain": {}, "weight": {"restyled_weight": 0.5}}.items():
        torch.manual_seed(1)
        dsp = FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=0, copy=True, **kwargs)
        with torch.random.fork_rng():
            outs[name] = dsp.task_loss(model, model, images, labels, cross_entropy)
    (plain, plain_logs), (weight, weight_logs) = outs.values()
    # pooled mean over 4 clean + 2 restyled samples = (4 clean + 2 restyled) / 6; weighted: clean + 0.5 restyled
    dvae = plain - plain_logs["dsp_task"]
    torch.testing.assert_close(plain_logs["dsp_task"], (4 * plain_logs["dsp_clean"] + 2 * plain_logs["dsp_pert"]) / 6,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight - dvae, torch.tensor(weight_logs["dsp_clean"] + 0.5 * weight_logs["dsp_pert"]),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="dsp_weight"):
        load_config(None, ["--dsp_weight=-0.5"])


def test_pixel_restyle_moves_each_images_channel_statistics_by_the_drawn_amounts():
    images = torch.rand(3, 3, 16, 24, dtype=torch.float64) * 2 - 1
    assert pixel_restyle(images, 0.0) is images
    torch.manual_seed(7)
    out = pixel_restyle(images, 0.5)
    torch.manual_seed(7)  # the same draws, in the same order: mean offsets first, then log-std factors
    shift, log_gain = 0.5 * torch.randn(3, 3, dtype=torch.float64), 0.5 * torch.randn(3, 3, dtype=torch.float64)
    flat, new = images.flatten(2), out.flatten(2)
    torch.testing.assert_close(new.mean(-1), flat.mean(-1) + shift)
    torch.testing.assert_close(new.std(-1, unbiased=False), flat.std(-1, unbiased=False) * log_gain.exp(),
                               rtol=1e-6, atol=1e-6)
    # within each channel the image keeps its pattern (an affine map of it): correlation 1
    centred = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731
    corr = (centred(flat) * centred(new)).sum(-1) / (centred(flat).norm(dim=-1) * centred(new).norm(dim=-1))
    torch.testing.assert_close(corr, torch.ones_like(corr))


# the paper's value of every recipe key issue 16 added or changed; a paper preset states each one, so a change
# of the embedded run's defaults never changes what the paper path runs
PAPER_RECIPE = {"dsp_copy": False, "sens_scale": "output", "prune_sens": 0.0, "dsp_weight": 0.0,
                "flops_target": 0.0, "input_norm": False, "style_point": "stage", "dsp_branch": False,
                "adv_scale": 1.0}


@pytest.mark.parametrize("preset", [p for p in available_presets() if p.startswith("gta5_")])
def test_paper_presets_state_the_paper_recipe(preset):
    import yaml

    from npdg.config import PRESET_DIR

    stated = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    assert {k: stated.get(k) for k in PAPER_RECIPE} == PAPER_RECIPE
    cfg = load_config(None, [f"--preset={preset}"])
    assert {k: getattr(cfg, k) for k in PAPER_RECIPE} == PAPER_RECIPE
