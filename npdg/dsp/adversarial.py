"""Adversarial search of the D-VAE latent noise eps: a few normalised gradient-ascent steps on a loss.

    eps = ascend(eps0, lambda e: seg_loss(perturbed(e)), steps=2, step_size=1.0)

Each step moves eps by ``step_size`` along the per-sample unit gradient direction (so the size of a
step does not depend on the loss scale), only eps receives gradients (torch.autograd.grad; model
weights are untouched), and the result is detached. ``step_scale(eps, direction) -> (N,)`` optionally
rescales each sample's step, e.g. so that it moves the decoded style by a fixed distance
(``npdg.dsp.perturb``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def ascend(eps: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int,
           step_size: float,
           step_scale: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    if steps < 0:
        raise ValueError(f"adversarial steps must be >= 0, got {steps}")
    eps = eps.detach()
    for _ in range(steps):
        eps.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(eps), eps)
        shape = (-1, *([1] * (grad.dim() - 1)))
        direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        eps = eps.detach()
        scale = 1.0 if step_scale is None else step_scale(eps, direction).view(shape)
        eps = (eps + step_size * scale * direction).detach()
    return eps
