"""dsu (issue 16): the restyled copies' per-channel statistics are also resampled at the deeper stage outputs
(DSU, Li et al. 2022) -- a style perturbation at more than one depth."""

from __future__ import annotations

import pytest
import torch

import npdg.dsp.perturb as perturb
from npdg.config import ConfigError, load_config
from npdg.dsp.perturb import FeatureDSP, cross_entropy, deep_uncertainty, uncertain_stats
from npdg.models import create_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _reference(f: torch.Tensor, n: int, noise: torch.Tensor) -> torch.Tensor:
    """The DSU formula written out in float64 (noise: (2, n, C), the draws of the mean and the std); the
    batch's spreads are constants (no gradient through them)."""
    x = f.double().flatten(2)
    mean = x.mean(-1)
    std = (x.var(-1, unbiased=False) + 1e-5).sqrt()  # style_stats' eps
    spread_mean = (mean.var(0, unbiased=False) + 1e-6).sqrt().detach()  # over every row, not only the first n
    spread_std = (std.var(0, unbiased=False) + 1e-6).sqrt().detach()
    new_mean = mean[:n] + noise[0] * spread_mean
    new_std = (std[:n] + noise[1] * spread_std).clamp(min=0)
    head = (x[:n] - mean[:n, :, None]) / std[:n, :, None] * new_std[..., None] + new_mean[..., None]
    return torch.cat([head, x[n:]]).view_as(f)


def test_uncertain_stats_resamples_the_first_rows_statistics_only():
    torch.manual_seed(0)
    f = torch.randn(6, 5, 4, 7, dtype=torch.float64) * torch.rand(6, 5, 1, 1) * 3 + torch.randn(6, 5, 1, 1)
    f[5] *= 40  # one wide row: a large spread of the stds, so some draws go below 0 and are clamped
    n = 4
    torch.manual_seed(7)
    noise = torch.randn(2, n, 5, dtype=torch.float64)
    torch.manual_seed(7)
    out = uncertain_stats(f, n)
    torch.testing.assert_close(out[n:], f[n:], rtol=0, atol=0)  # the clean rows untouched
    torch.testing.assert_close(out, _reference(f, n, noise), rtol=1e-10, atol=1e-10)
    clamped = out[:n].flatten(2).std(-1) < 1e-9
    assert clamped.any() and not clamped.all()  # the clamp was exercised: constant channels at the new mean
    assert (out[:n] - f[:n]).abs().amax() > 0.1


def test_uncertain_stats_draws_spread_with_the_batch():
    """Standardised by the batch's spread, the shifts of the means are N(0, 1) draws."""
    torch.manual_seed(1)
    f = torch.randn(8, 4096, 3, 3, dtype=torch.float64) + 5 * torch.randn(8, 4096, 1, 1, dtype=torch.float64)
    out = uncertain_stats(f, 4)
    mean_in, mean_out = f.mean((2, 3)), out.mean((2, 3))
    z = (mean_out[:4] - mean_in[:4]) / mean_in.std(0, unbiased=False)
    assert abs(z.mean().item()) < 0.05 and z.std().item() == pytest.approx(1.0, abs=0.05)


def test_uncertain_stats_gradient_flows_through_the_features_and_their_own_statistics():
    """The same gradient as the written-out formula with the batch's spreads held constant (a detached
    uncertainty, as the restyle's own statistics are); the clean rows pass the gradient through unchanged."""
    torch.manual_seed(2)
    f = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    torch.manual_seed(0)
    (grad,) = torch.autograd.grad((uncertain_stats(f, 3) * w).sum(), f)
    torch.manual_seed(0)
    noise = torch.randn(2, 3, 3, dtype=torch.float64)
    (expected,) = torch.autograd.grad((_reference(f, 3, noise) * w).sum(), f)
    torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad[3:], w[3:], rtol=0, atol=0)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("deeplabv3plus_r18", {}, lambda m: [m.backbone.layer2, m.backbone.layer3]),
    ("deeplab_vgg16", {}, None),
    ("segformer_b0", {}, lambda m: [m.backbone.stages[1], m.backbone.stages[2]]),
    ("segformer_b0", {"style_point": "embed"}, lambda m: list(m.backbone.stages[:3])),
])
def test_deep_style_layers_follow_the_style_point_and_stop_before_the_last_stage(name, kwargs, expected):
    model = create_model(name, num_classes=5, **kwargs)
    layers = model.deep_style_layers
    assert model.style_layer not in layers and len(layers) == 2 + (kwargs.get("style_point") == "embed")
    if expected is not None:
        assert layers == expected(model)
    else:  # VGG: pool3 and pool4 (both max pools at output stride 16), after the style pool
        features = list(model.backbone.features)
        index = [features.index(m) for m in layers]
        assert all(isinstance(m, torch.nn.MaxPool2d) for m in layers)
        assert features.index(model.style_layer) < index[0] < index[1]


@pytest.mark.parametrize("name", ["deeplabv3plus_r18", "deeplab_vgg16", "segformer_b0"])
def test_deep_uncertainty_changes_only_the_perturbed_rows(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).double().eval()  # eval: rows do not mix through BN
    x = torch.randn(3, 3, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        clean = model(x)
        with deep_uncertainty(model, 2, 1.0):
            assert all(len(m._forward_hooks) == 1 for m in model.deep_style_layers)
            out = model(x)
        torch.testing.assert_close(out[2:], clean[2:], rtol=0, atol=0)
        assert ((out[:2] - clean[:2]).abs().amax((1, 2, 3)) > 1e-6).all()
        with deep_uncertainty(model, 2, 0.0):
            torch.testing.assert_close(model(x), clean, rtol=0, atol=0)
    assert all(not m._forward_hooks for m in model.deep_style_layers)  # removed on exit
    with pytest.raises(RuntimeError), deep_uncertainty(model, 2, 1.0):
        raise RuntimeError
    assert all(not m._forward_hooks for m in model.deep_style_layers)  # ... and on an error


@pytest.mark.parametrize("dsu,calls", [(0.0, 0), (1.0, 2)])
def test_only_the_training_forward_resamples(monkeypatch, dsu, calls):
    """The adversary's ascent passes (and so the restyle it searches) see the clean deep statistics."""
    seen = []

    def counted(f, n, eps=1e-6):
        seen.append((f.shape[0], n))
        return uncertain_stats(f, n, eps)

    monkeypatch.setattr(perturb, "uncertain_stats", counted)
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5)
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=1, copy=True,
                     restyled_weight=0.5, dsu=dsu)
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    loss, _ = dsp.task_loss(model, model, images, labels, cross_entropy)
    assert seen == [(6, 2)] * calls  # the batch with its two restyled copies in front, once per deep layer
    loss.backward()
    dsp.task_loss(model, model, images, labels, cross_entropy, p=0.0)  # a clean (warm-up) step: no copies
    assert len(seen) == calls


def test_dsu_is_checked_and_reaches_the_recipe():
    for bad in ("-0.1", "1.5"):
        with pytest.raises(ConfigError, match="dsu"):
            load_config(None, [f"--dsu={bad}"])
    with pytest.raises(ConfigError, match="feature-level DSP only"):
        load_config(None, ["--dsu=0.5", "--dsp_level=image"])
    with pytest.raises(ValueError, match="dsu"):
        FeatureDSP(4, dsu=2.0)
    assert load_config(None, []).dsu == 0.0
    from npdg.loop import Context
    from npdg.methods import build_method
    from npdg.train import build_model

    cfg = load_config(None, ["--dsu=0.5"])
    assert build_method(Context(cfg, torch.device("cpu")), build_model(cfg)).dsp.dsu == 0.5
