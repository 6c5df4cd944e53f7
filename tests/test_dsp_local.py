"""dsp_local (issue 16): each restyled copy mixes its adversarial style with a random one over space."""

import pytest
import torch

from npdg import ops
from npdg.config import ConfigError, load_config
from npdg.dsp.perturb import FeatureDSP, cross_entropy, style_stats
from npdg.models import create_model


def _dsp(local, **kw):
    torch.manual_seed(3)
    dsp = FeatureDSP(4, latent=6, hidden=12, p=0.5, local=local, **kw)
    dsp.posterior(torch.randn(8, 4), torch.rand(8, 4) + 0.5, torch.zeros(8, 6))  # sets the standardiser
    return dsp


def test_local_mix_blends_the_two_styles_by_a_smooth_mask():
    dsp = _dsp(3)
    f = torch.randn(2, 4, 12, 18)
    stats = style_stats(f)
    restyled = torch.randn_like(f)
    xi, v = torch.randn(2, 6), torch.randn(2, 8)
    other = ops.adain(f, *dsp.random_styles(stats, xi, v), stats=stats)
    assert (other - f).abs().amax() > 0.1  # the second style is a style, not the clean features
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    torch.testing.assert_close(dsp.local_mix(restyled, f, stats, (ones, xi, v)), restyled)
    torch.testing.assert_close(dsp.local_mix(restyled, f, stats, (zeros, xi, v)), other)
    # a left-to-right ramp of grid values: each column a convex blend, its weight rising smoothly with x
    grid = torch.tensor([0.0, 0.5, 1.0]).expand(2, 1, 3, 3)
    mixed = dsp.local_mix(restyled, f, stats, (grid, xi, v))
    weight = ((mixed - other) * (restyled - other)).sum((0, 1, 2)) / (restyled - other).square().sum((0, 1, 2))
    assert weight[0] == pytest.approx(0.0, abs=1e-5) and weight[-1] == pytest.approx(1.0, abs=1e-5)
    assert (weight.diff() >= -1e-5).all() and (weight.diff() <= 0.5).all()
    assert dsp.local_mix(restyled, f, stats, None) is restyled
    assert _dsp(0).local_draws(2, "cpu") is None


@pytest.mark.parametrize("adv_steps", [0, 1])
def test_the_training_step_and_the_ascent_use_the_mix(monkeypatch, adv_steps):
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5)
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    losses, start = {}, {k: v.clone() for k, v in model.state_dict().items()}
    for name, fill in (("global", None), ("ones", 1.0), ("zeros", 0.0)):
        model.load_state_dict(start)  # (a training pass moves BN's running statistics)
        torch.manual_seed(1)
        dsp = FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=adv_steps, copy=True,
                         restyled_weight=0.5, local=0 if fill is None else 3)
        if fill is not None:  # fixed draws from their own generator: the global RNG stream stays the global run's
            g = torch.Generator().manual_seed(5)
            draws = (torch.full((2, 1, 3, 3), fill), *dsp.random_draws(2, "cpu", g))
            monkeypatch.setattr(dsp, "local_draws", lambda n, device, d=draws: d)
        loss, logs = dsp.task_loss(model, model, images, labels, cross_entropy)
        losses[name] = (logs["dsp_pert"], logs.get("adv_loss0", 0.0))
    assert losses["ones"] == pytest.approx(losses["global"], rel=1e-6)  # mask 1: the adversarial style alone
    assert abs(losses["zeros"][0] - losses["global"][0]) > 1e-3  # the training pass saw the random style
    if adv_steps:
        assert abs(losses["zeros"][1] - losses["global"][1]) > 1e-3  # ... and so did the ascent


def test_dsp_local_is_checked():
    for bad in ("-1", "65"):
        with pytest.raises(ConfigError, match="dsp_local"):
            load_config(None, [f"--dsp_local={bad}"])
    with pytest.raises(ConfigError, match="feature-level DSP only"):
        load_config(None, ["--dsp_local=3", "--dsp_level=image"])
    assert load_config(None, ["--dsp_local=3"]).dsp_local == 3
