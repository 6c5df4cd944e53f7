"""Feature-level DSP (npdg.dsp.perturb.FeatureDSP): the training step's loss and gradients, the ascent.

Step cost vs ERM is measured and recorded in npdg/dsp/perturb.py's docstring (too slow for a unit test).
"""

import math

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from npdg.dsp.perturb import FeatureDSP, cross_entropy, frozen_bn_stats, perturbation
from npdg.models import create_model
from npdg.reference import style_stats

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _setup(name="deeplabv3plus_r18", n=4, seed=0, **dsp_kwargs):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=5).train()
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=32, **dsp_kwargs)
    images = torch.randn(n, 3, 32, 64)
    labels = torch.randint(0, 5, (n, 32, 64))
    labels[:, :4] = 255  # some ignored pixels
    return model, dsp, images, labels


def _without_dropout(model):
    """A fixed model for ascent checks: dropout noise (ASPP p=0.1) moves the loss more than a small step."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return model


def _bn_buffers(model):
    return {f"{name}.{b}": getattr(m, b).clone() for name, m in model.named_modules() if isinstance(m, _BatchNorm)
            for b in ("running_mean", "running_var", "num_batches_tracked")}


def _clean_stats(model, images):
    captured = {}
    with torch.no_grad(), perturbation(model, lambda f: captured.setdefault("f", f)), frozen_bn_stats(model):
        model(images)
    return style_stats(captured["f"])


@pytest.mark.parametrize("name", ["deeplabv3plus_r18", "segformer_b0"])
def test_step_loss_and_gradients(name):
    model, dsp, images, labels = _setup(name)
    assert not bool(dsp.dvae.initialised)  # the first step works on an untrained D-VAE
    loss, logs = dsp.task_loss(model, model, images, labels)
    assert torch.isfinite(loss) and bool(dsp.dvae.initialised)
    assert set(logs) == {"adv_loss0", "dsp_pert", "dsp_clean", "dsp_task", "dsp_recon", "dsp_kl"}
    assert all(math.isfinite(v) for v in logs.values())
    loss.backward()
    for module in (model.style_layer, model.head, dsp.dvae.encoder, dsp.dvae.decoder):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), type(module).__name__


def test_dvae_and_task_losses_train_only_their_own_side():
    model, dsp, images, labels = _setup()
    # D-VAE loss alone: the model receives exactly zero gradient.
    loss, _ = dsp.task_loss(model, model, images, labels, loss_fn=lambda logits, y: 0 * logits.sum())
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in dsp.parameters())
    # task loss alone: no path into the D-VAE (the perturbed styles are detached).
    seen = []
    dsp.task_loss(model, model, images, labels, loss_fn=lambda logits, y: seen.append((logits, y)) or 0 * logits.sum())
    logits, y = next((lg, y) for lg, y in seen if lg.shape[0] == len(images) and lg.requires_grad)
    grads = torch.autograd.grad(cross_entropy(logits, y), list(dsp.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_training_pass_restyles_exactly_the_first_samples():
    model, dsp, images, labels = _setup(n=4)  # p = 0.5: samples 0, 1 restyled, 2, 3 clean
    clean = _clean_stats(model, images)
    seen = []  # layer2 reads style_layer's (possibly replaced) output; the ascent passes see 2 samples
    handle = model.backbone.layer2.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    dsp.task_loss(model, model, images, labels)
    handle.remove()
    mean, std = style_stats(next(f for f in seen if f.shape[0] == 4))
    torch.testing.assert_close(mean[2:], clean[0][2:])
    torch.testing.assert_close(std[2:], clean[1][2:])
    moved = ((mean[:2] - clean[0][:2]).abs() + (std[:2].log() - clean[1][:2].log()).abs()).mean(1)
    assert moved.gt(0.05).all()


def test_ascent_passes_leave_bn_running_stats_untouched():
    model, dsp, images, labels = _setup(adv_steps=2)
    before = _bn_buffers(model)
    xi = torch.randn(2, dsp.dvae.latent)
    delta, losses = dsp.adversarial_delta(model, images, labels, xi)
    assert len(losses) == 2 and delta.abs().sum() > 0
    after = _bn_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm))
    # the whole step updates the running stats exactly once: the training pass
    dsp.task_loss(model, model, images, labels)
    tracked = {k: int(v) for k, v in _bn_buffers(model).items() if k.endswith("num_batches_tracked")}
    assert set(tracked.values()) == {1}


def test_frozen_bn_stats_restores_flags_on_error():
    model, *_ = _setup()
    with pytest.raises(RuntimeError), frozen_bn_stats(model):
        raise RuntimeError
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm))


def test_perturbation_is_differentiable_in_delta_only():
    model, dsp, images, labels = _setup()
    xi = torch.randn(2, dsp.dvae.latent)
    delta = torch.zeros(2, dsp.dvae.latent, requires_grad=True)
    with frozen_bn_stats(model):
        loss = dsp._restyled_loss(model, images, labels, xi, delta)
    (grad,) = torch.autograd.grad(loss, delta)
    assert grad.abs().sum(1).gt(0).all()  # every restyled sample's latent gets a gradient
    assert all(p.grad is None for p in [*model.parameters(), *dsp.parameters()])


def test_adversarial_styles_leave_source_range_and_raise_loss():
    model, _, images, labels = _setup(n=8)
    _without_dropout(model)
    dsp = FeatureDSP(model.style_channels)  # the default sizes: the decoder's gain is part of what is tested
    mean, std = _clean_stats(model, images)
    opt = torch.optim.Adam(dsp.parameters(), lr=3e-3)
    for _ in range(40):  # train the D-VAE on this model's style statistics
        loss, _ = dsp.dvae.loss(mean, std)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(1)
    xi = torch.randn(8, dsp.dvae.latent)
    delta, _ = dsp.adversarial_delta(model, images, labels, xi)
    with torch.no_grad(), frozen_bn_stats(model):
        loss0 = dsp._restyled_loss(model, images, labels, xi, None)
        loss1 = dsp._restyled_loss(model, images, labels, xi, delta)
        coords = [(dsp.dvae._coords(*s) - dsp.dvae.shift) / dsp.dvae.scale
                  for s in ((mean, std), dsp.styles(mean, std, xi), dsp.styles(mean, std, xi, delta))]
    spread = (coords[0] - coords[0].mean(0)).square().mean().sqrt()
    dev0, dev1 = ((c - coords[0]).square().mean().sqrt() / spread for c in coords[1:])
    print(f"loss {loss0:.3f} -> {loss1:.3f}; distance from clean style: {dev0:.2f} -> {dev1:.2f} source spreads")
    assert loss1 > loss0
    assert dev1 > 1.5 and dev1 > dev0 + 0.5
    # the sensitivity pass's random styles go about as far (random directions, same reach)
    f = torch.randn(8, 64, 8, 16) * std[:, :, None, None] + mean[:, :, None, None]
    with torch.no_grad():
        moved = (dsp.dvae._coords(*style_stats(dsp.random_restyle(f, torch.Generator().manual_seed(0))))
                 - dsp.dvae.shift) / dsp.dvae.scale
    assert (moved - coords[0]).square().mean().sqrt() / spread > dev0 + 0.5


def test_small_batches_and_no_perturbation():
    model, dsp, images, labels = _setup(n=2)  # one perturbed sample: the ascent pass keeps 2 for ASPP's BN
    loss, logs = dsp.task_loss(model, model, images, labels)
    assert torch.isfinite(loss) and "dsp_pert" in logs
    model, dsp, images, labels = _setup(p=0.0, log_gain=True)
    loss, logs = dsp.task_loss(model, model, images, labels)
    assert "adv_loss0" not in logs and "dsp_pert" not in logs
    expected = logs["dsp_task"] + logs["dsp_recon"] + dsp.beta * logs["dsp_kl"]
    torch.testing.assert_close(loss.detach(), torch.tensor(expected))


def test_log_gain_is_nonnegative_on_a_fixed_model():
    model, dsp, images, labels = _setup(n=4, log_gain=True)
    _without_dropout(model)
    dsp.task_loss(model, model, images, labels)  # initialise the D-VAE
    _, logs = dsp.task_loss(model, model, images, labels)
    assert logs["adv_gain"] > 0


def test_dvae_standardiser_averages_the_first_batches():
    from npdg.dsp.dvae import DVAE

    dvae = DVAE(4, latent=2, hidden=8)
    batches = [(torch.randn(3, 4) * (i + 1), torch.rand(3, 4) + 0.5) for i in range(3)]
    for mean, std in batches:
        dvae.observe(mean, std)
    coords = [torch.cat([m, s.log()], 1) for m, s in batches]
    torch.testing.assert_close(dvae.shift, torch.stack([c.mean(0) for c in coords]).mean(0))
    assert int(dvae.seen) == 3


def test_invalid_arguments():
    for kwargs in ({"p": 1.5}, {"adv_steps": -1}, {"adv_step_size": -1.0}):
        with pytest.raises(ValueError):
            FeatureDSP(8, **kwargs)
