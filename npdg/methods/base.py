"""The interface every method implements, and the prune + compact + fine-tune machinery the pruning methods share.

The stage machine (``npdg.train.Run``) calls only this interface, in this order:

    method = build_method(ctx, model)          # the registry's class for cfg.method
    method.resume(state, run_dir)              # a resumed run: the method's state (and its fine-tune teacher)
    train:     fit(..., method.train_loss_fn(model)); method.end_train(model); method.save_files(run_dir)
    prune:     small = method.prune(model, run_dir)                 (methods with prunes = True)
    finetune:  fit(..., method.finetune_loss_fn(small))
    every checkpoint stores method.state()

Class attributes are the method's facts and defaults, read by ``npdg.config`` before any work: ``prunes`` (the
stages), ``uses_dsp``, ``iters`` / ``finetune_iters`` (the defaults with ``--budget 0``; the budget then splits
by ``finetune_iters``), ``flops_target`` (the prune's default, CNN; a MiT model gets ``FLOPS_TARGET_MIT``),
``style_point_mit``; :meth:`check` range-checks the method's own keys (a ``ConfigError`` naming the key).
"""

from __future__ import annotations

import sys

import torch

from npdg.dsp.perturb import cross_entropy
from npdg.loop import Context, announce_amp


class Method:
    """One training method. The default is ERM's: the cross-entropy of the batch, no prune, no state."""

    prunes = False
    uses_dsp = False
    iters = 200  # train steps with --budget 0
    finetune_iters = 60  # fine-tune steps with --budget 0 (pruning methods; the budget subtracts them)
    flops_target = 0.0  # the prune's FLOPs target when neither ratio nor threshold is given (pruning methods)
    style_point_mit = "stage"  # where a MiT model's style layer sits for this method (Config.style_point)

    @classmethod
    def stages(cls) -> tuple[str, ...]:
        return ("train", "prune", "finetune", "evaluate") if cls.prunes else ("train", "evaluate")

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ``ConfigError`` (one line naming the key) for a value of the method's own keys out of range."""

    def __init__(self, ctx: Context, model):
        self.ctx, self.cfg = ctx, ctx.cfg
        announce_amp(ctx)  # (once per run: the run builds one method)

    @property
    def extra_opts(self) -> list:
        """Optimisers of the method's own modules, stepped with the model's."""
        return []

    @property
    def sync_params(self) -> list:
        """Parameters of the method's own modules that DDP must average."""
        return []

    @staticmethod
    def seg_loss(logits, labels):
        """The segmentation loss, in fp32 also under amp (fit runs the step under bf16 autocast)."""
        with torch.autocast(logits.device.type, enabled=False):
            return cross_entropy(logits.float(), labels)

    def task_loss(self, net, model, images, labels, clean: bool = False):
        """(loss, logs) of one batch: the cross-entropy of ``net(images)``."""
        return self.seg_loss(net(images), labels), {}

    def train_loss_fn(self, model):
        """The train stage's loss_fn(net, step, images, labels) -> (loss, logs)."""
        return lambda net, step, images, labels: self.task_loss(net, model, images, labels)

    def end_train(self, model) -> None:
        """After the train stage's last step, before dense.pt is written."""

    def save_files(self, run_dir) -> None:
        """Rank 0, after dense.pt: the method's own files in the run directory."""

    def prune(self, model, run_dir):
        """The compacted model (pruning methods)."""
        raise NotImplementedError(f"{type(self).__name__} does not prune")

    def finetune_loss_fn(self, model):
        """The fine-tune's loss_fn (pruning methods)."""
        return self.train_loss_fn(model)

    def state(self) -> dict:
        """The method's resumable state (merged into checkpoint.pt)."""
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def resume(self, state: dict, run_dir) -> None:
        """A resumed run's method: its state (before the RNG state is restored: building must not shift it)."""
        self.load_state(state)


def prune_scores(model, sens, alpha: float, residual: bool = False) -> dict | None:
    """What the prune ranks: None (the default importance, |γ| or the gate path scale) unless ``alpha`` > 0
    and a sensitivity pass exists; then importance / w_rel**alpha with w_rel the pass's scale-free weights,
    so of two equally important units the more style-sensitive one goes first. ``residual``: the coupled
    residual groups too (mean |γ| over a stream's BNs / LayerNorms; a stream the pass did not see keeps
    plain importance)."""
    if alpha <= 0 or sens is None:
        return None
    from npdg.pruning import unit_importance

    return {name: imp / sens.scale_free[name].to(imp).clamp_min(1e-6) ** alpha if name in sens.scale_free else imp
            for name, imp in unit_importance(model, residual=residual).items()}


def broadcast_masks(ctx: Context, model, choose) -> dict:
    """The keep-masks {group: bool (size,)} that ``choose()`` returns on rank 0, on every rank: every rank holds
    the same model, hence the same groups in the same order; rank 0's masks travel as one flat uint8 tensor."""
    groups = [(g.name, g.size) for g in model.prunable_units(residual=ctx.cfg.prune_residual)]
    flat = torch.zeros(sum(size for _, size in groups), dtype=torch.uint8, device=ctx.device)
    if ctx.main:
        chosen = choose()
        flat.copy_(torch.cat([chosen[name].reshape(-1).to(torch.uint8).cpu() for name, _ in groups]))
    if ctx.world > 1:
        torch.distributed.broadcast(flat, src=0)
    return dict(zip((name for name, _ in groups), flat.bool().split([size for _, size in groups]), strict=True))


def choose_masks(ctx: Context, model, sens) -> dict:
    """The prune's keep-masks: ``select_masks`` on rank 0 (the sensitivity pass ``sens`` in the criterion per
    prune_sens; to flops_target when it is set), the same on every rank (:func:`broadcast_masks`)."""
    from npdg.pruning import select_masks

    cfg = ctx.cfg

    def choose():
        rules = dict(round_to=cfg.round_to, min_keep=cfg.min_keep, prune_residual=cfg.prune_residual,
                     scores=prune_scores(model, sens, cfg.prune_sens, cfg.prune_residual), exact_ratio=cfg.exact_ratio)
        if cfg.flops_target > 0:
            from npdg.builders import flops_size
            from npdg.pruning import select_masks_for_flops

            chosen, ratio = select_masks_for_flops(model, cfg.flops_target, flops_size(cfg), **rules)
            ctx.history["prune_ratio"] = ratio
            print(f"prune: ratio {ratio:.4f} meets flops_target {cfg.flops_target}", file=sys.stderr)
            return chosen
        return select_masks(model, ratio=None if cfg.threshold > 0 else cfg.ratio,
                            threshold=cfg.threshold if cfg.threshold > 0 else None, **rules)

    return broadcast_masks(ctx, model, choose)


class Pruning(Method):
    """A method that trains, prunes, compacts and fine-tunes. The train stage adds s·Σ|γ| (``sparsity_weights``
    per unit: None = 1); the prune removes what :meth:`keep_masks` drops."""

    prunes = True

    def sparsity_weights(self):
        return None

    def before_step(self, model, step, images) -> None:
        """At the start of train step ``step``, before anything else."""

    def train_loss_fn(self, model):
        """The train stage's loss: task + s·Σ w·|γ| (w: :meth:`sparsity_weights`)."""
        from npdg.pruning import l1_penalty

        cfg = self.cfg
        warmup = round(cfg.dsp_warmup * cfg.iters)

        def loss_fn(net, step, images, labels):
            self.before_step(model, step, images)
            loss, logs = self.task_loss(net, model, images, labels, clean=step <= warmup)
            if cfg.sparsity > 0:
                penalty = l1_penalty(model, self.sparsity_weights(), residual=cfg.prune_residual)
                loss = loss + cfg.sparsity * penalty
                logs = {**logs, "penalty": penalty.detach()}  # (a tensor: read with the loss, one sync)
            return loss, logs

        return loss_fn

    def keep_masks(self, model, sens) -> dict:
        """What the prune keeps (:func:`choose_masks`)."""
        return choose_masks(self.ctx, model, sens)

    def compacted(self, dense, small):
        """Hook after compaction (npdg: a fresh D-VAE when the perturbed layer was pruned)."""
        return small

    def prune(self, model, run_dir):
        from npdg.pruning import compact
        from npdg.sensitivity import Sensitivity, pruned_vs_kept

        ctx = self.ctx
        sens_file = run_dir / "sensitivity.json"  # npdg: the last pass of the train stage (rank 0 wrote it)
        sens = Sensitivity.load(sens_file) if ctx.main and sens_file.is_file() else None
        masks = self.keep_masks(model, sens)
        if sens is not None:  # the style sensitivity of what goes vs what stays, for the report
            ctx.history["sensitivity_pruned_vs_kept"] = pruned_vs_kept(sens, masks)
        return self.compacted(model, compact(model, masks))

    finetune_loss_fn = Method.train_loss_fn  # the fine-tune's loss: the task loss alone (no sparsity term)
