"""npdg: DSP + s·Σ w·|γ| with w the units' style sensitivity (recomputed every sens_every steps), then prune the
units that are unimportant and style-sensitive (importance / w_rel**prune_sens), compact and fine-tune with DSP."""

from __future__ import annotations

from npdg.methods.base import Pruning
from npdg.methods.dsp import DSP


class NPDG(DSP, Pruning):
    iters = 60  # npdg prunes early and trains the compact network with DSP for its 200 fine-tuning steps: at 260
    #   steps final source +2.59 over pruning at step 200, ten paired seeds (dg_budget260/compare10-npdgEarly-npdgW05)
    finetune_iters = 200
    flops_target = 0.6  # ten paired seeds at 260 steps: FLOPs 58.9-60.0 % on every seed, source +0.27 [-0.35, +0.89]
    #   over ratio 0.3
    style_point_mit = "embed"  # B0, five paired seeds, source +0.46 [-0.25, +1.18] and style-shifted source val
    #   +0.94 [+0.22, +1.66] over "stage" (dg_budget260/compare-segformer_b0-npdgEmbed-npdgEarlyresF75ps2)

    def __init__(self, ctx, model):
        super().__init__(ctx, model)
        self.weights = None  # {group: w (size,)} from the last sensitivity pass
        self.sens_dsp = None  # image level: the feature-level D-VAE that makes sensitivity's styles
        self.last_sensitivity = None  # the Sensitivity behind the weights (saved beside dense.pt)

    train_loss_fn = Pruning.train_loss_fn  # (DSP's warm-up is in Pruning's loss too)

    def before_step(self, model, step, images) -> None:
        if self.weights is None or (step - 1) % self.cfg.sens_every == 0:
            self.refresh_sensitivity(model, images)

    def sparsity_weights(self):
        return self.weights

    def refresh_sensitivity(self, model, images) -> None:
        import torch

        from npdg.dsp.perturb import FeatureDSP
        from npdg.sensitivity import compute_sensitivity

        cfg = self.cfg
        dsp = self.dsp
        if not isinstance(dsp, FeatureDSP):  # image level: style variants come from a feature-level D-VAE
            if self.sens_dsp is None:  # (untrained: random style directions, see sensitivity)
                self.sens_dsp = FeatureDSP(model.style_channels, latent=cfg.dsp_latent, hidden=cfg.dsp_hidden,
                                           adv_step_size=cfg.adv_step_size).to(self.ctx.device)
            dsp = self.sens_dsp
        # fp32 under amp too: the scores are variances across styles, which bf16 rounding would swamp
        with torch.autocast(self.ctx.device.type, enabled=False):
            sens = compute_sensitivity(model, images[: cfg.sens_batch].float(), dsp, k=cfg.sens_k, lam=cfg.lam,
                                       precision=cfg.sens_precision, scale=cfg.sens_scale,
                                       residual=cfg.prune_residual)
        self.ctx.all_mean_(list(sens.weights.values()))
        self.weights = sens.weights
        self.last_sensitivity = sens

    def save_files(self, run_dir) -> None:
        if self.last_sensitivity is not None:
            self.last_sensitivity.save(run_dir / "sensitivity.json")

    def compacted(self, dense, small):
        if self.cfg.dsp_level == "feature" and small.style_channels != dense.style_channels:
            self.attach_dsp(small)  # the perturbed layer itself was pruned (VGG): a fresh D-VAE
        return small

    def state(self) -> dict:
        out = super().state()
        if self.weights is not None:
            out["sensitivity"] = {k: v.detach().cpu() for k, v in self.weights.items()}
        return out

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("sensitivity"):
            self.weights = {k: v.to(self.ctx.device) for k, v in state["sensitivity"].items()}
