"""dsp: cross-entropy on each batch plus dsp_weight x that of style-perturbed copies (Differentiable Style
Perturbation, ``npdg.dsp``); no prune. The D-VAE and its optimiser are the method's resumable state."""

from __future__ import annotations

import torch

from npdg.methods.base import Method


class DSP(Method):
    uses_dsp = True

    def __init__(self, ctx, model):
        super().__init__(ctx, model)
        self.dsp = self.dsp_opt = None
        self.attach_dsp(model)

    def attach_dsp(self, model) -> None:
        cfg = self.cfg
        if cfg.dsp_level == "image":
            from npdg.dsp.generator import load_generator

            self.dsp = load_generator(cfg.generator, encoder_weights=cfg.encoder_weights or None).to(self.ctx.device)
            self.dsp.requires_grad_(False)
            return
        from npdg.dsp.perturb import FeatureDSP

        self.dsp = FeatureDSP(model.style_channels, latent=cfg.dsp_latent, hidden=cfg.dsp_hidden,
                              beta=cfg.dsp_beta, p=cfg.dsp_p, adv_steps=cfg.adv_steps,
                              adv_step_size=cfg.adv_step_size, copy=cfg.dsp_copy, restyled_weight=cfg.dsp_weight,
                              branch=cfg.dsp_branch, adv_scale=cfg.adv_scale).to(self.ctx.device)
        self.dsp_opt = torch.optim.Adam(self.dsp.parameters(), lr=cfg.dsp_lr)

    @property
    def extra_opts(self):
        return [self.dsp_opt] if self.dsp_opt is not None else []

    @property
    def sync_params(self):
        return list(self.dsp.parameters()) if self.dsp_opt is not None else []

    def task_loss(self, net, model, images, labels, clean: bool = False):
        """clean: a DSP warm-up step (no sample restyled; the feature-level D-VAE still learns the styles)."""
        cfg = self.cfg
        p = 0.0 if clean else cfg.dsp_p
        if cfg.dsp_level == "image":
            from npdg.dsp.generator import image_task_loss

            with torch.autocast(images.device.type, enabled=False):  # the frozen generator and its D-VAE: fp32
                return image_task_loss(self.dsp, net, images, labels, self.seg_loss, p=p,
                                       adv_steps=cfg.adv_steps, adv_step_size=cfg.adv_step_size,
                                       copy=cfg.dsp_copy, restyled_weight=cfg.dsp_weight)
        return self.dsp.task_loss(net, model, images, labels, self.seg_loss, p=p)  # (its D-VAE runs in fp32)

    def train_loss_fn(self, model):
        """The first dsp_warmup of the train stage's steps restyle nothing (the D-VAE still learns)."""
        warmup = round(self.cfg.dsp_warmup * self.cfg.iters)
        return lambda net, step, images, labels: self.task_loss(net, model, images, labels, clean=step <= warmup)

    def state(self) -> dict:
        out = super().state()
        if self.dsp_opt is not None:
            out["dsp"] = {"state": self.dsp.state_dict(), "optimizer": self.dsp_opt.state_dict()}
        return out

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("dsp") and self.dsp_opt is not None:
            self.dsp.load_state_dict(state["dsp"]["state"])
            self.dsp_opt.load_state_dict(state["dsp"]["optimizer"])
