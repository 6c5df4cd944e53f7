"""D-VAE: a small VAE over feature-style statistics s = [mean, std] (per-channel, see npdg.reference).

    dvae = DVAE(channels=64)
    loss, parts = dvae.loss(mean, std, beta=1e-3)         # reconstruction + beta * KL
    mean2, std2 = dvae.generate(mean, std, eps)           # z = mu_z + eps * sigma_z, decoded
    y = npdg.ops.adain(x, mean2, std2)                     # the new style, differentiable in eps

The encoder sees [mean, log std] standardised by running statistics of the data it is trained on
(feature scales differ by orders of magnitude between layers and models); the decoder predicts the
same standardised coordinates and un-standardises them, so std' = exp(log std') > 0 always.
Everything is differentiable w.r.t. eps, which is what the adversarial search in ``perturb.py`` uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Running standardiser update rate per training batch: the cumulative average 1 / (batches seen) until it
# reaches MOMENTUM, then an EMA. A plain EMA from the first batch kept a small first batch's estimate for
# ~100 steps while the model's features were still moving (recon loss 1e4+ on a 2-image first batch).
MOMENTUM = 0.01


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, cout))


class DVAE(nn.Module):
    def __init__(self, channels: int, latent: int = 32, hidden: int = 256):
        super().__init__()
        if channels < 1 or latent < 1 or hidden < 1:
            raise ValueError(f"DVAE: channels, latent, hidden must be positive, got {channels}, {latent}, {hidden}")
        self.channels, self.latent = channels, latent
        self.encoder = _mlp(2 * channels, hidden, 2 * latent)
        self.decoder = _mlp(latent, hidden, 2 * channels)
        # Running mean / std of the 2C coordinates [mean, log std]; set from the first batch seen.
        self.register_buffer("shift", torch.zeros(2 * channels))
        self.register_buffer("scale", torch.ones(2 * channels))
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer("seen", torch.tensor(0))  # batches the standardiser has averaged

    # --- coordinates
    def _coords(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if mean.shape != std.shape or mean.dim() != 2 or mean.shape[1] != self.channels:
            raise ValueError(f"DVAE({self.channels}): expected mean/std (N, {self.channels}), "
                             f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        return torch.cat([mean, std.clamp_min(1e-8).log()], dim=1).float()

    @torch.no_grad()
    def observe(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Refresh the running standardiser with a batch of statistics (the first call sets it)."""
        self._update_standardiser(self._coords(mean.detach(), std.detach()))

    @torch.no_grad()
    def _update_standardiser(self, s: torch.Tensor) -> None:
        m = s.mean(0)
        sd = s.std(0, unbiased=False).clamp_min(1e-3) if s.shape[0] > 1 else torch.ones_like(m)
        rate = (1.0 / (self.seen + 1).float()).clamp_min(MOMENTUM)  # tensor math: no host sync on GPU
        self.shift.lerp_(m, rate)
        self.scale.lerp_(sd, rate)
        self.initialised.fill_(True)
        self.seen.add_(1)

    def _split(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = coords * self.scale + self.shift
        c = self.channels
        return s[:, :c], s[:, c:].exp()

    # --- VAE
    def encode(self, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_z, logvar_z), each (N, latent)."""
        h = self.encoder((self._coords(mean, std) - self.shift) / self.scale)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean', std') with std' > 0, each (N, C), fp32."""
        return self._split(self.decoder(z))

    def generate(self, mean, std, eps: torch.Tensor | None = None, scale: float = 1.0):
        """Decode z = mu_z + scale * eps * sigma_z (eps ~ N(0, I) when None); differentiable in eps."""
        mu, logvar = self.encode(mean, std)
        if eps is None:
            eps = torch.randn_like(mu)
        return self.decode(mu + scale * eps * (0.5 * logvar).exp())

    def loss(self, mean: torch.Tensor, std: torch.Tensor, beta: float = 1e-3, update: bool = True):
        """(total, {"recon", "kl"}): reparameterised reconstruction of [mean, log std] in standardised
        coordinates + beta * KL(q(z|s) || N(0, I)). ``update`` refreshes the running standardiser."""
        s = self._coords(mean.detach(), std.detach())
        if update and self.training:
            self._update_standardiser(s)
        target = (s - self.shift) / self.scale
        mu, logvar = self.encode(mean.detach(), std.detach())
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = F.mse_loss(self.decoder(z), target)
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.square() - logvar.exp(), dim=1))
        return recon + beta * kl, {"recon": recon.detach(), "kl": kl.detach()}
