"""Differentiable Style Perturbation (DSP): the D-VAE over style statistics, feature-level perturbation
with an adversarial latent search, and the image-level AdaIN style-transfer generator."""

from npdg.dsp.dvae import DVAE

__all__ = ["DVAE"]
