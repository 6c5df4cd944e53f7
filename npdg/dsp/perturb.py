"""Feature-level Differentiable Style Perturbation: the training-step logic of DSP.

    dsp = FeatureDSP(model.style_channels).to(device)
    dsp_opt = torch.optim.Adam(dsp.parameters(), lr=1e-3)
    loss, logs = dsp.task_loss(net, model, images, labels)   # net: model or DDP(model)
    opt.zero_grad(); dsp_opt.zero_grad(); (loss + sparsity).backward(); opt.step(); dsp_opt.step()

One step on a batch of N images touches only ``model.style_layer``, so it works for every model:

1. **Ascent pass** (the unwrapped ``model``, the n = ceil(p * N) perturbed samples, BN running stats
   frozen): a hook on ``style_layer`` takes the clean features f and their style s = (mean, std)
   (``npdg.reference.style_stats``), encodes s to (mu_z, sigma_z) and replaces f by
   ``npdg.ops.adain(f, decode(z))`` with ``z = mu_z + sigma_z * xi + delta``, xi ~ N(0, I).
   ``adv_steps`` normalised gradient-ascent steps on the segmentation loss move delta (from 0); the
   gradient flows through AdaIN and the decoder to delta only (``ascend``: autograd.grad, no weight grads).
2. **Training pass** (``net``, the whole batch, normal train mode): the same hook replaces the first n
   samples by AdaIN to the styles of (xi, delta) and trains the D-VAE on the detached clean statistics of
   the whole batch. The returned loss = task loss (clean + perturbed) + D-VAE loss; the styles are
   detached (the task loss does not train the D-VAE) and the D-VAE loss sees detached statistics (it does
   not train the model), so one backward() serves both optimizers.

How far a step goes. Random draws from the source's own style spread gained nothing in calibration
(DESIGN §2.5), and a posterior draw (delta = 0) barely moves the style: it decodes to about the
reconstruction. So each ascent step is sized in STYLE space: along the unit gradient direction in z, the
step length is chosen so that the decoded style moves ``adv_step_size`` *source spreads* (RMS over the
2C standardised coordinates [mean, log std], i.e. in units of the source batches' own per-channel spread;
a few secant iterations on the decoder, capped at MAX_LATENT_RMS). A fixed latent length would move the
style by whatever gain the decoder has learnt so far (little early on, and the latent is over-dispersed).
Measured on deeplabv3plus_r18 after 80 DSP steps on the synthetic source (64x128, batch 8, dropout off),
distance of the perturbed style from the clean one and the loss of the perturbed samples: posterior draw
0.7 spreads, loss +0 %; one step of 1 -> 1.2 spreads, +19 %; one step of 2 (default) -> 1.9 spreads
(std x1.4), +40 %; two steps of 1 -> 1.75 spreads, +61 % (but one more ascent pass).

A D-VAE "AdaIN loss" is not needed at feature level: AdaIN sets the output statistics to s' exactly, so it
would equal the reconstruction term. Cost: one training pass + adv_steps x (forward + activation-only
backward) on the n perturbed samples; measured 1.27x an ERM step (deeplabv3plus_r18, batch 8, 96x192,
CPU, 1 thread: ERM 2.31 s, DSP 2.93 s, medians of 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from npdg import ops
from npdg.data.labels import IGNORE_INDEX
from npdg.dsp.adversarial import ascend
from npdg.dsp.dvae import DVAE
from npdg.reference import style_stats

# Longest latent step step_lengths() allows, as RMS per latent dim (L2 length MAX_LATENT_RMS * sqrt(latent)):
# only a guard against a decoder with ~no gain in a direction (t -> inf). Not tighter: with the small KL
# weight the latent is over-dispersed, and reaching 2 source spreads took L2 lengths of 12-17 (latent 32).
MAX_LATENT_RMS = 10.0
FD_STEP = 1e-2  # latent step of the finite difference that gives the first guess of a step length
SECANT_ITERS = 2  # corrections of the step length on the actual style distance (a tiny MLP call each)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


@contextmanager
def perturbation(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, ``model.style_layer``'s output x is replaced by ``fn(x)``."""
    handle = model.style_layer.register_forward_hook(lambda module, inputs, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in train mode keep normalising with batch statistics but update nothing.

    With ``track_running_stats=False`` a training BN hands no running buffers to the kernel, so
    running_mean / running_var / num_batches_tracked stay bit-identical; the flags are restored on exit.
    """
    changed = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in changed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


def num_restyled(p: float, batch: int) -> int:
    """How many of a batch's images DSP restyles (the first ones): ceil(p * batch), at most the batch."""
    return min(batch, math.ceil(p * batch))


def restyled_task_loss(loss_fn, logits: torch.Tensor, labels: torch.Tensor, n: int, weight: float
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The segmentation loss of a batch whose first ``n`` samples are restyled, and its two parts.

    ``weight`` > 0: the clean samples' mean + weight x the restyled samples' mean; 0: one mean over the whole
    batch (the paper's). Returns (loss, (restyled part, clean part) detached, or None when the batch is not a
    mix of both); the weighted loss reuses its parts, the pooled one measures them without a graph."""
    if not 0 < n < logits.shape[0]:
        return loss_fn(logits, labels), None
    if weight > 0:
        restyled, clean = loss_fn(logits[:n], labels[:n]), loss_fn(logits[n:], labels[n:])
        return clean + weight * restyled, (restyled.detach(), clean.detach())
    loss = loss_fn(logits, labels)
    with torch.no_grad():
        return loss, (loss_fn(logits[:n], labels[:n]), loss_fn(logits[n:], labels[n:]))


def resized(images: torch.Tensor, labels: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (bilinear) and labels (nearest: ignore pixels stay ignore) resized by ``scale`` (1: as they are)."""
    if scale == 1:
        return images, labels
    size = [max(1, round(s * scale)) for s in images.shape[-2:]]
    small = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    return small, F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def pixel_restyle(images: torch.Tensor, strength: float) -> torch.Tensor:
    """A random RGB style per image: AdaIN of the (normalised) images (n, 3, H, W) to their own channel means
    + strength x N(0, 1) and their channel stds x exp(strength x N(0, 1)); global RNG, no gradient. The
    style-shifted validation of :class:`npdg.eval.Restyled` (colour and contrast shifts of the source images)."""
    if strength <= 0 or images.shape[0] == 0:
        return images
    with torch.no_grad():
        stats = style_stats(images)
        mean = stats[0] + strength * torch.randn_like(stats[0])
        std = stats[1] * (strength * torch.randn_like(stats[1])).exp()
        return ops.adain(images, mean.to(images.dtype), std.to(images.dtype), stats=stats)


class FeatureDSP(nn.Module):
    """Adversarial AdaIN style perturbation at ``model.style_layer`` with an online-trained D-VAE.

    channels: ``model.style_channels``; latent / hidden: D-VAE sizes; beta: KL weight of the D-VAE loss;
    p: fraction of each batch that is perturbed (the first ceil(p * N) samples; loaders shuffle);
    adv_steps / adv_step_size: ascent steps on delta and how far each moves the style, in source spreads
    (see the module doc);
    log_gain: also measure adv_gain exactly (one more no-grad forward of the perturbed samples);
    restyled_weight: 0 = one loss mean over all samples, clean and restyled (the paper's); > 0 = the clean
    samples' mean loss + restyled_weight x the restyled samples' mean (the clean signal keeps ERM's weight);
    branch: with ``copy``, the restyled copies branch off the clean samples' features at ``style_layer`` (the
    training forward runs the layers before it once, on the N clean images; the hook returns N + n rows) instead
    of running those layers again on n copies of the inputs. The same features and gradients, except that the
    BatchNorm layers before the style point normalise over the N distinct images (as ERM's do) instead of over
    N + n rows that count n of them twice. Every model here feeds nothing from before its style point past it;
    a model that did would fail the batch-size check of the training forward;
    adv_scale: the adversary's ascent runs on the restyled samples resized by this factor (bilinear images,
    nearest labels; 1 = full resolution): it searches a style latent (per-channel statistics, which barely
    depend on resolution) at about adv_scale² of the cost.
    """

    def __init__(self, channels: int, latent: int = 32, hidden: int = 256, beta: float = 1e-3, p: float = 0.5,
                 adv_steps: int = 1, adv_step_size: float = 2.0, log_gain: bool = False, copy: bool = False,
                 restyled_weight: float = 0.0, branch: bool = False, adv_scale: float = 1.0):
        super().__init__()
        if not (0.0 <= p <= 1.0 and 0.0 < adv_scale <= 1.0):
            raise ValueError(f"FeatureDSP: p must be in [0, 1], adv_scale in (0, 1], got {p}, {adv_scale}")
        if branch and not copy:
            raise ValueError("FeatureDSP: branch needs copy (the restyled copies branch off the clean samples)")
        if min(adv_steps, adv_step_size, beta, restyled_weight) < 0:
            raise ValueError("FeatureDSP: adv_steps, adv_step_size, beta and restyled_weight must be >= 0")
        self.dvae = DVAE(channels, latent, hidden)
        self.beta, self.p = beta, p
        self.copy = copy  # restyle COPIES of the first ceil(p*N) samples (batch N + ceil(p*N)); else replace them
        self.adv_steps, self.adv_step_size = adv_steps, adv_step_size
        self.log_gain, self.restyled_weight, self.branch, self.adv_scale = log_gain, restyled_weight, branch, adv_scale
        self._ready = False  # host-side cache of dvae.initialised

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False  # the loaded D-VAE may or may not be initialised: look again
        return super()._load_from_state_dict(*args, **kwargs)

    @property
    def reach(self) -> float:
        """How far (source spreads) the random styles of ``random_restyle`` go: the adversary's whole
        ascent, at least one step."""
        return max(self.adv_steps, 1) * self.adv_step_size

    @contextmanager
    def provisional_standardiser(self) -> Iterator[None]:
        """An untrained D-VAE sets its standardiser from the statistics it sees inside the block and
        forgets it on exit (e.g. an eval-mode sensitivity pass before the first training step, whose
        features differ from train mode's); a trained one is left as it is."""
        if self._ready or bool(self.dvae.initialised):
            yield
            return
        saved = {name: b.clone() for name, b in self.dvae.named_buffers()}
        try:
            yield
        finally:
            for name, b in self.dvae.named_buffers():
                b.copy_(saved[name])
            self._ready = False

    # --- styles
    @torch.no_grad()
    def posterior(self, mean: torch.Tensor, std: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """z0 = mu_z + sigma_z * xi for clean statistics (n, C) (detached; fp32). The first
        call on an untrained D-VAE sets its standardiser from these statistics."""
        mean, std = mean.float(), std.float()
        with torch.autocast(mean.device.type, enabled=False):  # the D-VAE runs in fp32 under AMP too
            if not self._ready:  # checked on the host once (a GPU sync), then cached
                self._ready = bool(self.dvae.initialised)
                if not self._ready:
                    self.dvae.observe(mean, std)
                    self._ready = True
            mu, logvar = self.dvae.encode(mean, std)
            return mu + (0.5 * logvar).exp() * xi.float()

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean', std') of latents z (n, latent), differentiable in z; fp32."""
        with torch.autocast(z.device.type, enabled=False):
            return self.dvae.decode(z.float())

    def styles(self, mean: torch.Tensor, std: torch.Tensor, xi: torch.Tensor,
               delta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """D-VAE styles (mean', std') (n, C) of clean statistics: z = mu_z + sigma_z * xi + delta,
        differentiable in delta (the statistics are detached: they describe the content, not a variable)."""
        z = self.posterior(mean.detach(), std.detach(), xi)
        return self.decode(z if delta is None else z + delta)

    def restyle(self, f: torch.Tensor, xi: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """AdaIN of features f (n, C, ...) to the D-VAE styles of their own statistics, xi and delta."""
        stats = style_stats(f.detach())  # also AdaIN's own statistics of f: passed on, not recomputed
        new_mean, new_std = self.styles(*stats, xi, delta)
        return ops.adain(f, new_mean.to(f.dtype), new_std.to(f.dtype), stats=stats)

    @torch.no_grad()
    def step_lengths(self, z: torch.Tensor, direction: torch.Tensor, spreads: float) -> torch.Tensor:
        """Per sample, the latent step t (n,) along unit ``direction`` that moves the decoded style by
        ``spreads`` source spreads (RMS over the 2C standardised coordinates the decoder outputs), at most
        MAX_LATENT_RMS * sqrt(latent): a first guess from the decoder's directional derivative, then
        SECANT_ITERS secant corrections on the actual distance (the decoder saturates along a direction)."""
        z, u = z.float(), direction.float()
        cap = MAX_LATENT_RMS * math.sqrt(self.dvae.latent)
        with torch.autocast(z.device.type, enabled=False):
            base = self.dvae.decoder(z)

            def moved(t):
                return (self.dvae.decoder(z + t[:, None] * u) - base).square().mean(1).sqrt()

            t = torch.full((z.shape[0],), FD_STEP, device=z.device)
            for _ in range(1 + SECANT_ITERS):  # the first pass turns the finite difference into a guess
                t = (t * spreads / moved(t).clamp_min(1e-12)).clamp(max=cap)
        return t

    def random_restyle(self, f: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """AdaIN of f (n, C, ...) to random D-VAE styles ``reach`` source spreads (linearised) away from a
        posterior draw, along the latent direction that moves the style most towards a random style direction:
        non-adversarial styles as far from the source as the training perturbations go (the sensitivity pass
        uses them)."""
        n, device = f.shape[0], f.device
        rand_device = generator.device if generator is not None else device
        xi = torch.randn(n, self.dvae.latent, generator=generator, device=rand_device).to(device)
        v = torch.randn(n, 2 * self.dvae.channels, generator=generator, device=rand_device).to(device)
        stats = style_stats(f.detach())
        z = self.posterior(*stats, xi)
        # The latent direction that moves the style most towards v (J^T v): uniform latent directions mostly
        # fall into dims the decoder ignores and barely move the style.
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            zg = z.detach().requires_grad_(True)
            (u,) = torch.autograd.grad(self.dvae.decoder(zg), zg, grad_outputs=v)
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        delta = self.step_lengths(z, u, self.reach)[:, None] * u
        with torch.no_grad():
            styles = self.decode(z + delta)
        return ops.adain(f, *(t.to(f.dtype) for t in styles), stats=stats)

    def adversarial_delta(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, xi: torch.Tensor,
                          loss_fn=cross_entropy, autocast=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """delta after ``adv_steps`` ascent steps on loss_fn of ``model`` with the first len(xi) samples
        restyled; returns (delta, the (detached) losses at the steps' starting points). BN running stats
        are untouched.

        ``images`` may hold more samples than xi: the extras stay clean and keep BN's batch statistics
        defined (an ASPP image-pool branch with one perturbed sample); the loss is over restyled samples."""
        losses: list[torch.Tensor] = []
        z0 = {}

        def loss_at(delta: torch.Tensor) -> torch.Tensor:
            loss = self._restyled_loss(model, images, labels, xi, delta, loss_fn, autocast, z0)
            losses.append(loss.detach())
            return loss

        def step_scale(delta, direction):  # each step moves the style adv_step_size source spreads
            return self.step_lengths(z0["z"] + delta, direction, self.adv_step_size) / self.adv_step_size

        delta = torch.zeros(xi.shape[0], self.dvae.latent, device=images.device)
        with frozen_bn_stats(model):
            delta = ascend(delta, loss_at, self.adv_steps, self.adv_step_size, step_scale)
        return delta, losses

    def _restyled_loss(self, model, images, labels, xi, delta, loss_fn=cross_entropy, autocast=None, z0=None):
        """loss_fn over the first len(xi) samples of ``model(images)`` with those samples restyled
        (z0, if given, receives their posterior latent)."""
        n = xi.shape[0]

        def hook(f):
            stats = style_stats(f[:n].detach())
            z = self.posterior(*stats, xi)
            if z0 is not None:
                z0["z"] = z
            new_mean, new_std = self.decode(z if delta is None else z + delta)
            restyled = ops.adain(f[:n].detach(), new_mean.to(f.dtype), new_std.to(f.dtype), stats=stats)
            return torch.cat([restyled, f[n:].detach()])

        with perturbation(model, hook), autocast or nullcontext():
            logits = model(images)
        return loss_fn(logits[:n], labels[:n])

    # --- the training step
    def task_loss(self, net: nn.Module, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  loss_fn=cross_entropy, autocast=None, p: float | None = None) -> tuple[torch.Tensor, dict]:
        """DSP segmentation loss over the whole batch (clean + restyled samples) + the D-VAE loss.

        ``p`` overrides ``self.p`` for this step (0: a clean step that still trains the D-VAE, e.g. warm-up).

        ``net`` runs the training forward (may be DDP-wrapped), ``model`` is the unwrapped module (its
        ``style_layer`` is hooked; it runs the ascent passes). The caller adds its sparsity term, calls
        backward() once and steps both its model optimizer and the optimizer of ``self.parameters()``.
        logs (0-dim tensors, read by the loop with the loss in one sync): dsp_task (the segmentation part),
        dsp_clean / dsp_pert (on the clean / restyled samples), dsp_recon / dsp_kl (D-VAE), adv_loss0 (restyled
        loss before the ascent) and, with ``log_gain``, adv_gain = restyled loss after - before the ascent (on a
        frozen model; > 0 when the ascent works).
        """
        n_total = images.shape[0]
        n = num_restyled(self.p if p is None else p, n_total)
        clean_from = 0  # the D-VAE learns the style statistics of f[clean_from:] (copies would count twice)
        branch = self.branch and self.copy and n > 0  # the copies branch off at the style point (no input rows)
        if self.copy and n > 0:  # the whole clean batch stays; restyled copies of its first n go in front
            labels = torch.cat([labels[:n], labels])
            if not branch:
                images = torch.cat([images[:n], images])
                clean_from = n
            n_total = n_total + n
        logs: dict[str, torch.Tensor] = {}  # 0-dim tensors: npdg.loop.read_back reads them in the step's one sync
        xi = torch.randn(n, self.dvae.latent, device=images.device)
        delta = None
        if n > 0 and self.adv_steps > 0:
            m = min(n_total, max(n, 2))  # >= 2 samples through BN when the batch has them
            rows = torch.cat([images[:n], images[:m - n]]) if branch else images[:m]  # the copies' inputs first
            adv_images, adv_labels = resized(rows, labels[:m], self.adv_scale)
            delta, losses = self.adversarial_delta(model, adv_images, adv_labels, xi, loss_fn, autocast)
            logs["adv_loss0"] = losses[0]
            if self.log_gain:
                with torch.no_grad(), frozen_bn_stats(model):
                    after = self._restyled_loss(model, adv_images, adv_labels, xi, delta, loss_fn, autocast)
                logs["adv_gain"] = after - losses[0]

        dvae_out = {}

        def hook(f):
            mean, std = style_stats(f.detach())
            if n > 0:
                with torch.no_grad():  # styles before the D-VAE loss, which moves the standardiser
                    new_mean, new_std = self.styles(mean[:n], std[:n], xi, delta)
                restyled = ops.adain(f[:n], new_mean.to(f.dtype), new_std.to(f.dtype), stats=(mean[:n], std[:n]))
                f = torch.cat([restyled, f if branch else f[n:]])
            with torch.autocast(f.device.type, enabled=False):
                dvae_out["loss"] = self.dvae.loss(mean[clean_from:], std[clean_from:], beta=self.beta)
            return f

        with perturbation(model, hook), autocast or nullcontext():
            logits = net(images)
        if logits.shape[0] != labels.shape[0]:
            raise RuntimeError(f"FeatureDSP(branch=True): the training forward returned {logits.shape[0]} rows for "
                               f"{labels.shape[0]} labels: this model feeds features from before its style layer "
                               "past it; train it without branch")
        task, split = restyled_task_loss(loss_fn, logits, labels, n, self.restyled_weight)
        dvae_loss, parts = dvae_out["loss"]
        if split is not None:
            logs["dsp_pert"], logs["dsp_clean"] = split
        logs.update(dsp_task=task.detach(), dsp_recon=parts["recon"], dsp_kl=parts["kl"])
        return task + dvae_loss, {k: v.detach() for k, v in logs.items()}  # (npdg.loop reads them with the loss)
