"""shade: Style-Hallucinated Dual Consistency Learning (Zhao et al., ECCV 2022), at the project's style point.

The paper's text was not at hand: its equations are cited by content (as its code computes them), not number.

Style hallucination (the paper's style hallucination module, SHM). The source's styles are the per-channel statistics
s = (mu(f), sigma(f)) of the clean features f at ``model.style_layer`` (``npdg.reference.style_stats``), collected
from every training forward. Every ``shade_every`` steps the K = ``shade_k`` basis styles {(mu_k, sigma_k)} are
chosen from the styles seen since the last choice by farthest-point sampling (FPS, the authors' choice over the
whole source set, refreshed every 3 epochs). Each image of the batch gets a hallucinated copy that branches off
its clean features at the style layer:

    f_hat = AdaIN(f, mu_hat, sigma_hat) = sigma_hat * (f - mu(f)) / sigma(f) + mu_hat,
    mu_hat = sum_k w_k mu_k,  sigma_hat = sum_k w_k sigma_k,  w ~ Dirichlet(alpha 1_K)

(``npdg.ops.adain``); w lies on the simplex, so (mu_hat, sigma_hat) lies in the convex hull of the basis. The
layers before the style point see each clean image once (the authors' SHM also sits inside the backbone).

Dual consistency. Style consistency: the Jensen-Shannon divergence of the clean and the hallucinated
predictions, per pixel, JSD(p || q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, averaged over pixels
(log m computed exactly; the authors clamp m at 1e-7). Retrospection consistency (with ``--pretrained`` only: it
needs the ImageNet weights): the mean squared distance, over channels and pixels, between the model's features of
both the clean and the hallucinated rows and the frozen ImageNet backbone's features of the clean image, at the deepest
stage output the model declares (``deep_style_layers[-1]``: ResNet layer3, the authors' layer4; without their
restriction to "thing" classes). The step's loss:

    L = CE([x; x_hat]) + lambda_SC * JSD + lambda_RC * RC

with one mean of the cross-entropy over the clean and the hallucinated rows (the authors' code). Defaults from the
authors' code: K = 64, alpha = 0.0156, lambda_SC = 10, lambda_RC = 1. The first ``shade_every`` steps train on
the clean batch while the first styles are collected. SHADE does not prune.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from npdg import ops
from npdg.methods.base import Method
from npdg.reference import style_stats


def farthest_points(points: torch.Tensor, k: int, start: int | torch.Tensor = 0) -> torch.Tensor:
    """Indices (k,) of ``k`` rows of ``points`` (N, D) chosen by farthest-point sampling from row ``start``: each
    next one is the row farthest (squared Euclidean distance) from those chosen so far. The indices stay on the
    device (index_select, no host read: no GPU sync per point)."""
    i = torch.as_tensor(start, device=points.device).reshape(1)
    chosen = [i]
    dist = (points - points.index_select(0, i)).square().sum(1)
    for _ in range(k - 1):
        i = dist.argmax().reshape(1)
        chosen.append(i)
        dist = torch.minimum(dist, (points - points.index_select(0, i)).square().sum(1))
    return torch.cat(chosen)


def combine_styles(basis_mean: torch.Tensor, basis_std: torch.Tensor, weights: torch.Tensor):
    """(mean, std), each (N, C): the styles w @ basis for the combination weights ``weights`` (N, K)."""
    return weights @ basis_mean, weights @ basis_std


class _JSD(torch.autograd.Function):
    """Pixel-mean JSD of softmax(a), softmax(b) over dim 1, with its gradient written out: autograd through the
    softmaxes, the mixture's log and the two KL terms cost 14 % of an ERM step (R18, batch 8, 96x192, CPU)."""

    @staticmethod
    def forward(ctx, a, b):
        log_p, log_q = a.log_softmax(1), b.log_softmax(1)
        log_m = torch.logaddexp(log_p, log_q) - math.log(2)  # log (p + q) / 2, exact where p and q are tiny
        p, q = log_p.exp(), log_q.exp()
        gp, gq = log_p.sub_(log_m), log_q.sub_(log_m)  # d JSD / d p = (log p - log m) / 2 (per pixel)
        ctx.n = a.numel() // a.shape[1]
        ctx.save_for_backward(p, q, gp, gq)
        return ((p * gp).sum() + (q * gq).sum()) / (2 * ctx.n)

    @staticmethod
    def backward(ctx, grad):
        p, q, gp, gq = ctx.saved_tensors
        scale = grad / (2 * ctx.n)  # through the softmax: p * (g - sum_c p g)
        return (p * (gp - (p * gp).sum(1, keepdim=True)) * scale, q * (gq - (q * gq).sum(1, keepdim=True)) * scale)


def jsd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the Jensen-Shannon divergence (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2, of the class
    distributions p = softmax(a), q = softmax(b) (dim 1), in fp32 (log m exact; the authors clamp m at 1e-7)."""
    with torch.autocast(a.device.type, enabled=False):
        return _JSD.apply(a.float(), b.float())


class SHADE(Method):
    @classmethod
    def check(cls, cfg) -> None:
        from npdg.knobs import ConfigError, check_range

        for name in ("shade_k", "shade_every"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.shade_k > cfg.shade_every * cfg.batch_size:
            raise ConfigError(f"shade_k={cfg.shade_k} exceeds the {cfg.shade_every * cfg.batch_size} source styles a "
                              f"basis is chosen from (shade_every x batch_size = {cfg.shade_every} x {cfg.batch_size})")
        check_range(cfg, "shade_concentration", 0, None, low_open=True)
        check_range(cfg, "shade_sc", 0, None)
        check_range(cfg, "shade_rc", 0, None)

    def __init__(self, ctx, model):
        super().__init__(ctx, model)
        self.bank = []  # (n, 2C) clean styles [mean, std] of the training forwards since the last basis choice
        self.basis = None  # (mean (K, C), std (K, C))
        self.teacher = None  # the frozen ImageNet model of the retrospection consistency
        if self.cfg.pretrained and self.cfg.shade_rc > 0:
            from npdg.builders import build_model

            with torch.random.fork_rng(devices=[]):  # (its random head is unused: the run's RNG stays as it was)
                self.teacher = build_model(self.cfg).to(ctx.device).eval().requires_grad_(False)

    def choose_basis(self) -> None:
        """The K basis styles: farthest-point sampling over the styles seen since the last choice (from a random
        one, as the authors'); rank 0's basis on every rank."""
        from npdg.knobs import ConfigError

        cfg = self.cfg
        styles = torch.cat(self.bank)
        if len(styles) < cfg.shade_k:
            raise ConfigError(f"shade_k={cfg.shade_k} exceeds the {len(styles)} source styles seen since the last "
                              "basis choice")
        start = torch.randint(len(styles), (1,))  # (the CPU generator's draw, as int(randint(n, ())) drew it)
        chosen = styles.index_select(0, farthest_points(styles, cfg.shade_k, start))
        if self.ctx.world > 1:
            torch.distributed.broadcast(chosen, src=0)
        self.basis = chosen.chunk(2, dim=1)
        self.bank = []

    def train_loss_fn(self, model):
        every = self.cfg.shade_every

        def loss_fn(net, step, images, labels):
            if step > 1 and (step - 1) % every == 0:
                self.choose_basis()
            return self.task_loss(net, model, images, labels)

        return loss_fn

    def hallucinate(self, f: torch.Tensor) -> torch.Tensor:
        """The style-layer hook: records the clean styles; returns [f; f_hat] once a basis exists, else f."""
        mean, std = style_stats(f)
        self.bank.append(torch.cat([mean, std], 1).detach())
        if self.basis is None:
            return f
        k = self.basis[0].shape[0]
        alpha = torch.full((k,), self.cfg.shade_concentration, device=f.device)
        # (validate_args=False: the check of alpha > 0, known from the config, would read the device every step)
        w = torch.distributions.Dirichlet(alpha, validate_args=False).sample((f.shape[0],))
        new_mean, new_std = combine_styles(*self.basis, w)
        hat = ops.adain(f, new_mean.to(f.dtype), new_std.to(f.dtype), stats=(mean.detach(), std.detach()))
        return torch.cat([f, hat])

    def task_loss(self, net, model, images, labels, clean: bool = False):
        from npdg.dsp.perturb import perturbation

        cfg, b = self.cfg, images.shape[0]
        rc_layer = self.teacher is not None and self.basis is not None
        deep = []
        with ExitStack() as stack:
            stack.enter_context(perturbation(model, self.hallucinate))
            if rc_layer:
                handle = model.deep_style_layers[-1].register_forward_hook(lambda m, i, out: deep.append(out))
                stack.callback(handle.remove)
            logits = net(images)
        if logits.shape[0] == b:  # no basis yet: the clean batch only
            return self.seg_loss(logits, labels), {}
        ce = self.seg_loss(logits, torch.cat([labels, labels]))
        sc = jsd(logits[:b], logits[b:])
        loss = ce + cfg.shade_sc * sc
        logs = {"shade_sc": sc.detach()}  # (tensors: npdg.loop reads them with the loss, one sync)
        if rc_layer:
            rc = self.retrospection(images, deep[-1])
            loss = loss + cfg.shade_rc * rc
            logs["shade_rc"] = rc.detach()
        return loss, logs

    def retrospection(self, images, features) -> torch.Tensor:
        """Mean squared distance of ``features`` (clean and hallucinated rows) from the ImageNet model's features of
        the clean images."""
        got = []
        handle = self.teacher.deep_style_layers[-1].register_forward_hook(lambda m, i, out: got.append(out))
        try:
            with torch.no_grad():
                self.teacher(images)
        finally:
            handle.remove()
        target = torch.cat([got[0], got[0]]).float()
        with torch.autocast(images.device.type, enabled=False):
            return (features.float() - target).square().mean()

    def state(self) -> dict:
        out = super().state()
        out["shade"] = {"bank": [s.cpu() for s in self.bank],
                        "basis": [t.cpu() for t in self.basis] if self.basis is not None else None}
        return out

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("shade"):
            dev = self.ctx.device
            self.bank = [s.to(dev) for s in state["shade"]["bank"]]
            basis = state["shade"]["basis"]
            self.basis = tuple(t.to(dev) for t in basis) if basis is not None else None
