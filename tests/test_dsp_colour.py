"""dsp_colour (issue 16): the restyled copies' input images get a random colour matrix (channels mixed), which a
per-channel input normalisation does not undo; npdg's sensitivity variants get the same restyle."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_, restyled_copies_inputs

from npdg.config import ConfigError, load_config
from npdg.dsp.perturb import FeatureDSP, colour_restyle
from npdg.models import create_model
from npdg.sensitivity import compute_sensitivity

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _expm_series(a: torch.Tensor, terms: int = 40) -> torch.Tensor:
    """exp(a) of (n, 3, 3) float64 matrices by their Taylor series (the reference for matrix_exp)."""
    out, term = torch.eye(3, dtype=a.dtype).expand_as(a).clone(), torch.eye(3, dtype=a.dtype).expand_as(a).clone()
    for k in range(1, terms):
        term = term @ a / k
        out = out + term
    return out


def test_colour_restyle_matches_float64_reference():
    images = torch.rand(3, 3, 10, 14, dtype=torch.float64) * 2 - 1
    assert colour_restyle(images, 0.0) is images
    out = colour_restyle(images, 0.5, torch.Generator().manual_seed(7))
    a = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float32).double()
    m = _expm_series(0.5 * a)
    mu = images.mean(dim=(2, 3), keepdim=True)
    ref = torch.empty_like(images)
    for i in range(3):  # pixel by pixel: x' = mu + M (x - mu)
        pixels = (images[i] - mu[i]).reshape(3, -1)
        ref[i] = (mu[i].reshape(3, 1) + m[i] @ pixels).reshape(3, 10, 14)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)))  # brightness kept per channel
    with pytest.raises(ValueError, match="colour_restyle"):
        colour_restyle(torch.zeros(2, 4, 5, 5), 0.5)


def test_colour_restyle_mixes_channels_which_input_norm_does_not_undo():
    x = torch.zeros(2, 3, 16, 24, dtype=torch.float64)
    x[:, 0] = torch.randn(2, 16, 24, dtype=torch.float64)  # all structure in the red channel
    y = colour_restyle(x, 0.5, torch.Generator().manual_seed(1))
    assert y[:, 1:].std(dim=(2, 3)).amin() > 1e-3  # the structure leaks into green and blue
    torch.manual_seed(0)
    model = randomize_(create_model("deeplabv3plus_r18", num_classes=5, input_norm=True)).double().eval()
    images = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        clean, mixed = model(images), model(colour_restyle(images, 0.5, torch.Generator().manual_seed(2)))
    assert (mixed - clean).abs().amax() > 1e-3 * clean.abs().amax()


def test_dsp_colour_restyles_only_the_restyled_copies_inputs():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5, input_norm=True)
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    assert torch.equal(restyled_copies_inputs(model, images, labels, colour=0.0), images[:2])
    copies = restyled_copies_inputs(model, images, labels, colour=0.5)
    # the copies are a channel mix of their images: centred, they are not per-channel multiples of them
    centred = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)).flatten(2)  # noqa: E731
    a, b = centred(images[:2]), centred(copies)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert corr.abs().amin() < 0.99


def test_sensitivity_variants_get_the_colour_restyle():
    torch.manual_seed(0)
    model = randomize_(create_model("deeplabv3plus_r18", num_classes=5, input_norm=True))
    images = torch.randn(2, 3, 32, 64)
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=16)
    seen, restyled = [], []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    feature_restyle = dsp.random_restyle
    dsp.random_restyle = lambda f, g: restyled.append(f.shape[0]) or feature_restyle(f, g)
    s0 = compute_sensitivity(model, images, dsp, k=3, generator=torch.Generator().manual_seed(0))
    s1 = compute_sensitivity(model, images, dsp, k=3, generator=torch.Generator().manual_seed(0), colour=0.5)
    handle.remove()
    assert seen[0].shape[0] == 2 and seen[1].shape[0] == 6 and torch.equal(seen[1][:2], images)
    assert (seen[1][2:] - images.repeat(2, 1, 1, 1)).abs().amax() > 0.1  # variants 1..K-1 start coloured
    assert restyled == [4, 4]  # ... and then the D-VAE feature restyle, as without colour
    assert s0.upstream and not s1.upstream  # the units before the style layer are scored now
    for name in s0.upstream:
        assert s1.unary[name].amax() > 0 and not torch.equal(s1.weights[name], torch.ones_like(s1.weights[name]))


def test_dsp_colour_is_checked_and_reaches_the_dsp():
    for bad in ("-0.1", "5.5"):
        with pytest.raises(ConfigError, match="dsp_colour"):
            load_config(None, [f"--dsp_colour={bad}"])
    with pytest.raises(ConfigError, match="feature-level DSP only"):
        load_config(None, ["--dsp_colour=0.5", "--dsp_level=image"])
    cfg = load_config(None, ["--dsp_colour=0.5", "--input_norm"])  # unlike dsp_pixel, allowed with input_norm
    assert cfg.dsp_colour == 0.5 and load_config(None, []).dsp_colour == 0.0
    from npdg.loop import Context
    from npdg.methods import build_method
    from npdg.train import build_model

    recipe = build_method(Context(cfg, torch.device("cpu")), build_model(cfg))
    assert recipe.dsp.colour == 0.5


@pytest.mark.parametrize("sens_colour", [True, False])
def test_sens_colour_chooses_the_sensitivity_variants(sens_colour):
    from npdg.loop import Context
    from npdg.methods import build_method
    from npdg.train import build_model

    cfg = load_config(None, ["--dsp_colour=0.5", f"--sens_colour={str(sens_colour).lower()}", "--sens_batch=2"])
    torch.manual_seed(0)
    model = build_model(cfg)
    recipe = build_method(Context(cfg, torch.device("cpu")), model)
    assert recipe.dsp.colour == 0.5  # the training restyle either way
    recipe.refresh_sensitivity(model, torch.randn(2, 3, 32, 64))
    assert bool(recipe.last_sensitivity.upstream) is not sens_colour  # units before the style layer: only with it
