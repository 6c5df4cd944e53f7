"""Train on one source domain, prune what reacts to style, fine-tune, evaluate on unseen domains.

    python -m npdg.train                                  # NPDG on the embedded benchmark (defaults)
    python -m npdg.train --method slimming --ratio 0.4 --out runs/slim
    python -m npdg.train --preset quick --method erm      # every method end to end in ~2 minutes
    python -m npdg.train --resume runs/slim               # continue an interrupted run
    torchrun --standalone --nproc_per_node=8 -m npdg.train --device=cuda --batch_size=8

A method is a recipe: which stages run and which loss terms a step adds.

    erm       train (cross-entropy)                                   -> evaluate
    dsp       train (cross-entropy on style-perturbed batches)        -> evaluate
    slimming  train (+ s·Σ|γ|) -> prune + compact -> fine-tune        -> evaluate
    npdg      train (DSP + s·Σ w·|γ|, w = style sensitivity) -> prune + compact -> fine-tune (DSP) -> evaluate

The run directory holds config.json (resolved), train_log.jsonl, checkpoint.pt (resumable state,
written atomically every ckpt_every steps and between stages), dense.pt (before pruning), final.pt (the
model to take away), metrics.json, report.md and its plots. DDP: launched by torchrun, every rank runs
every stage; rank 0 selects the pruning masks and broadcasts them, logs, evaluates and writes files.
"""

from __future__ import annotations

import os

# CPU training shares the cores with DataLoader workers (and often other jobs): OpenMP threads that
# spin-wait for a descheduled sibling stall every op. Measured on the 2-core EPYC, one R18 step (batch 8,
# 96x192) with the machine loaded: 6.8 s with the default wait policy, 3.0 s with PASSIVE. Must be set
# before torch loads OpenMP, hence here, above the imports; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import npdg
from npdg import checkpoint, cli
from npdg.config import Config, load_config
from npdg.dsp.perturb import cross_entropy, distill_kl, num_restyled  # the one segmentation loss (ignore 255)
from npdg.loop import Context, IterateAverage, announce_amp, fit, poly
from npdg.serialization import load_model, model_from_payload, model_payload, save_model

STAGES = {
    "erm": ("train", "evaluate"),
    "dsp": ("train", "evaluate"),
    "slimming": ("train", "prune", "finetune", "evaluate"),
    "npdg": ("train", "prune", "finetune", "evaluate"),
}


def setup_distributed(device_opt: str) -> tuple[torch.device, int, int]:
    """(device, rank, world_size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        cuda = torch.cuda.is_available() and device_opt != "cpu"
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(local)
            return torch.device("cuda", local), rank, world
        return torch.device("cpu"), rank, world
    if device_opt == "auto":
        device_opt = "cuda" if torch.cuda.is_available() else "cpu"
    return cli.resolve_device(device_opt), 0, 1


# --- datasets ------------------------------------------------------------------------------------------

def train_dataset(cfg: Config):
    from npdg.data import build_dataset
    from npdg.data.transforms import TrainAugment

    synthetic = cfg.source.startswith("synthetic:")
    return build_dataset(cfg.source, split="train", size=tuple(cfg.crop) if synthetic else None,
                         num=cfg.train_num if synthetic else None, seed=cfg.seed,
                         transform=TrainAugment(crop=tuple(cfg.crop)))


def build_model(cfg: Config):
    """The freshly initialised model a run (or a dry run) trains: cfg.model with cfg's classes, input_norm and
    pretrained backbone."""
    from npdg.models import create_model

    return create_model(cfg.model, num_classes=cfg.num_classes, input_norm=cfg.input_norm,
                        **({"pretrained": cfg.pretrained} if cfg.pretrained else {}),
                        **({"style_point": cfg.style_point} if cfg.style_point != "stage" else {}))


def eval_protocols(cfg: Config) -> dict:
    """{SPEC: Protocol} for the source val split and every target (npdg.data.protocol: on-disk data at the
    literature's size for that dataset, synthetic domains rendered at eval_size; eval_protocol overrides)."""
    from npdg.data.protocol import protocol_for

    return {spec: protocol_for(spec, cfg.eval_size, cfg.eval_protocol) for spec in [cfg.source] + list(cfg.targets)}


def eval_datasets(cfg: Config) -> dict:
    """{SPEC: dataset} for the source val split and every target, prepared for its protocol; built before
    training so a bad SPEC or a missing folder fails in seconds, not after the run."""
    from npdg.data.protocol import build_eval_dataset

    return {spec: build_eval_dataset(spec, proto, split="val", num=cfg.val_num, seed=cfg.seed)
            for spec, proto in eval_protocols(cfg).items()}


# --- the method's loss terms -------------------------------------------------------------------------

def lr_factor(cfg, stage: str):
    """The LR multiplier of `stage` ("train" / "finetune") at its step k (see Config.lr_schedule)."""
    if cfg.lr_schedule == "run" and cfg.prunes:
        decay, offset = poly(cfg.iters + cfg.finetune_iters, cfg.poly_power), cfg.iters if stage == "finetune" else 0
        return lambda k: decay(offset + k)
    return poly(cfg.iters if stage == "train" else cfg.finetune_iters, cfg.poly_power)


class Recipe:
    """The loss of one step for cfg.method: task loss (plain or DSP) + the sparsity term while sparse
    training. Owns the DSP module and the sensitivity weights (both part of the resumable state)."""

    def __init__(self, ctx: Context, model):
        self.ctx, self.cfg = ctx, ctx.cfg
        self.dsp = self.dsp_opt = None
        self.weights = None  # npdg: {group: w (size,)} from the last sensitivity pass
        self.last_sensitivity = None  # the Sensitivity behind self.weights (saved with dense.pt)
        self.sens_dsp = None  # image level: the feature-level D-VAE that makes sensitivity's styles
        self.fade_masks = None  # prune_fade: the keep-masks chosen when the fade began (the prune then uses them)
        self.teacher = None  # finetune_kd: the dense model (frozen, eval mode) the pruned one distils from
        announce_amp(ctx)  # (once per run: the run builds one Recipe)
        if self.cfg.uses_dsp:
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
                              adv_step_size=cfg.adv_step_size, eps_scale=cfg.eps_scale,
                              copy=cfg.dsp_copy, split_bn=cfg.dsp_split_bn,
                              restyled_weight=cfg.dsp_weight, pixel=cfg.dsp_pixel,
                              local=cfg.dsp_local, colour=cfg.dsp_colour, dsu=cfg.dsu, branch=cfg.dsp_branch,
                              adv_scale=cfg.adv_scale).to(self.ctx.device)
        self.dsp_opt = torch.optim.Adam(self.dsp.parameters(), lr=cfg.dsp_lr)

    @property
    def extra_opts(self):
        return [self.dsp_opt] if self.dsp_opt is not None else []

    @property
    def sync_params(self):
        return list(self.dsp.parameters()) if self.dsp_opt is not None else []

    @staticmethod
    def seg_loss(logits, labels):
        """The segmentation loss, in fp32 also under amp (fit runs the step under bf16 autocast)."""
        with torch.autocast(logits.device.type, enabled=False):
            return cross_entropy(logits.float(), labels)

    def task_loss(self, net, model, images, labels, clean: bool = False):
        """clean: a DSP warm-up step (no sample restyled; the feature-level D-VAE still learns the styles)."""
        cfg = self.cfg
        if self.dsp is None:
            return self.seg_loss(net(images), labels), {}
        p = 0.0 if clean else cfg.dsp_p
        if cfg.dsp_level == "image":
            from npdg.dsp.generator import image_task_loss

            with torch.autocast(images.device.type, enabled=False):  # the frozen generator and its D-VAE: fp32
                return image_task_loss(self.dsp, net, images, labels, self.seg_loss, p=p,
                                       adv_steps=cfg.adv_steps, adv_step_size=cfg.adv_step_size,
                                       eps_scale=cfg.eps_scale, copy=cfg.dsp_copy, restyled_weight=cfg.dsp_weight)
        return self.dsp.task_loss(net, model, images, labels, self.seg_loss, p=p)  # (its D-VAE runs in fp32)

    def refresh_sensitivity(self, model, images) -> None:
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
                                       residual=cfg.prune_residual, colour=cfg.dsp_colour if cfg.sens_colour else 0.0)
        self.ctx.all_mean_(list(sens.weights.values()))
        self.weights = sens.weights
        self.last_sensitivity = sens

    def sparse_loss_fn(self, model):
        """The train stage's loss: task + s·Σ w·|γ| (w = 1 for slimming, sensitivity for npdg)."""
        from npdg.pruning import l1_penalty, scale_masked_

        cfg = self.cfg
        warmup = round(cfg.dsp_warmup * cfg.iters)
        fade_from = cfg.iters - round(cfg.prune_fade * cfg.iters) if cfg.prunes else cfg.iters

        def loss_fn(net, step, images, labels):
            if cfg.method == "npdg" and (self.weights is None or (step - 1) % cfg.sens_every == 0):
                self.refresh_sensitivity(model, images)
            # prune_fade: the units the prune will remove, chosen at the first fading step, shrink by k/(k+1)
            # each step (k = iters - step + 1): linearly to 1/(K+1) of their value over the K fading steps
            # (gradients aside); stage_train zeroes them after the last step
            if step > fade_from:
                if self.fade_masks is None:
                    self.fade_masks = choose_masks(self.ctx, model, self.last_sensitivity)
                scale_masked_(model, self.fade_masks, (cfg.iters - step + 1) / (cfg.iters - step + 2))
            loss, logs = self.task_loss(net, model, images, labels, clean=step <= warmup)
            if cfg.prunes and cfg.sparsity > 0:
                penalty = l1_penalty(model, self.weights if cfg.method == "npdg" else None,
                                     residual=cfg.prune_residual)
                loss = loss + cfg.sparsity * penalty
                logs = {**logs, "penalty": penalty.item()}
            return loss, logs

        return loss_fn

    def set_teacher(self, dense) -> None:
        """finetune_kd: the fine-tune distils from ``dense`` (frozen, eval mode)."""
        self.teacher = dense.eval().requires_grad_(False)

    def plain_loss_fn(self, model):
        """The fine-tune's loss: the task loss, + finetune_kd x KL(dense teacher || model) on the clean images
        when a teacher is set (the training forward's clean rows are its last ones: restyled samples come
        first, as copies or, without dsp_copy, in place of the first ceil(dsp_p * batch) images)."""
        if self.teacher is None:
            return lambda net, step, images, labels: self.task_loss(net, model, images, labels)
        cfg = self.cfg

        def loss_fn(net, step, images, labels):
            last = []

            def forward(x):  # the training forward is the last call (image-level DSP ascends through net first)
                last[:] = [net(x)]
                return last[0]

            loss, logs = self.task_loss(forward, model, images, labels)
            replaced = 0 if self.dsp is None or cfg.dsp_copy else num_restyled(cfg.dsp_p, len(images))
            if replaced < len(images):
                with torch.no_grad():
                    target = self.teacher(images[replaced:])
                kd = distill_kl(last[0][len(last[0]) - len(target):], target)
                loss = loss + cfg.finetune_kd * kd
                logs = {**logs, "kd": kd.item()}
            return loss, logs

        return loss_fn

    def state(self) -> dict | None:
        out = {}
        if self.dsp is not None and self.dsp_opt is not None:
            out["dsp"] = {"state": self.dsp.state_dict(), "optimizer": self.dsp_opt.state_dict()}
        if self.weights is not None:
            out["sensitivity"] = {k: v.detach().cpu() for k, v in self.weights.items()}
        if self.fade_masks is not None:
            out["fade_masks"] = {k: v.cpu() for k, v in self.fade_masks.items()}
        return out

    def load_state(self, state: dict) -> None:
        if state.get("dsp") and self.dsp_opt is not None:
            self.dsp.load_state_dict(state["dsp"]["state"])
            self.dsp_opt.load_state_dict(state["dsp"]["optimizer"])
        if state.get("sensitivity"):
            self.weights = {k: v.to(self.ctx.device) for k, v in state["sensitivity"].items()}
        if state.get("fade_masks"):
            self.fade_masks = {k: v.to(self.ctx.device) for k, v in state["fade_masks"].items()}


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


def choose_masks(ctx: Context, model, sens) -> dict:
    """The prune's keep-masks {group: bool (size,)}: rank 0 decides (``select_masks``, the sensitivity pass
    ``sens`` in the criterion per prune_sens), every rank gets the same ones: every rank holds the same model,
    hence the same groups in the same order; rank 0's masks travel as one flat uint8 tensor in that order."""
    from npdg.pruning import select_masks

    cfg = ctx.cfg
    groups = [(g.name, g.size) for g in model.prunable_units(residual=cfg.prune_residual)]
    flat = torch.zeros(sum(size for _, size in groups), dtype=torch.uint8, device=ctx.device)
    if ctx.main:
        rules = dict(round_to=cfg.round_to, min_keep=cfg.min_keep, prune_residual=cfg.prune_residual,
                     scores=prune_scores(model, sens, cfg.prune_sens, cfg.prune_residual), exact_ratio=cfg.exact_ratio)
        if cfg.flops_target > 0:
            from npdg.pruning import select_masks_for_flops
            from npdg.report import flops_size

            chosen, ratio = select_masks_for_flops(model, cfg.flops_target, flops_size(cfg), **rules)
            ctx.history["prune_ratio"] = ratio
            print(f"prune: ratio {ratio:.4f} meets flops_target {cfg.flops_target}", file=sys.stderr)
        else:
            chosen = select_masks(model, ratio=None if cfg.threshold > 0 else cfg.ratio,
                                  threshold=cfg.threshold if cfg.threshold > 0 else None, **rules)
        flat.copy_(torch.cat([chosen[name].reshape(-1).to(torch.uint8).cpu() for name, _ in groups]))
    if ctx.world > 1:
        torch.distributed.broadcast(flat, src=0)
    return dict(zip((name for name, _ in groups), flat.bool().split([size for _, size in groups]), strict=True))


# --- stages -------------------------------------------------------------------------------------------

class Run:
    """One training run: its directory, its process context and the stage state machine."""

    def __init__(self, cfg: Config, run_dir: Path, ctx: Context):
        self.cfg, self.dir, self.ctx = cfg, run_dir, ctx

    def save_state(self, stage: str, step: int, model, opt=None, sched=None, recipe: Recipe | None = None,
                   average=None):
        if not self.ctx.main:
            return
        checkpoint.save({
            "format": checkpoint.RUN_FORMAT, "version": npdg.__version__, "config": self.cfg.to_dict(),
            "stage": stage, "step": step, "model": model_payload(model),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            **(recipe.state() if recipe is not None else {}),
            "average": average.state() if average is not None else None,
            "rng": checkpoint.rng_state(), "history": self.ctx.history,
        }, self.dir / checkpoint.STATE)

    def optimise(self, stage, model, recipe, loss_fn, iters, lr, resume):
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, stage))
        # swa: the final model averages the last training stage's last swa x iters iterates
        last_stage = stage == ("finetune" if cfg.prunes else "train")
        average = IterateAverage.for_stage(iters, cfg.swa) if last_stage else None
        start = 0
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start = resume["step"]
            if average is not None and resume.get("average") is not None:
                average.load_state(resume["average"], self.ctx.device)
        evaluate_fn = None
        if cfg.eval_every and self.ctx.main:  # source val mIoU every eval_every steps (rank 0; the others wait)
            from npdg.eval import evaluate

            device, protocol = self.ctx.device, eval_protocols(cfg)[cfg.source]

            def evaluate_fn(step):
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # training's
                    return evaluate(model, self.val_sets[cfg.source], batch_size=cfg.batch_size,  # RNG untouched
                                    device=device, progress=False, amp=cfg.amp, **protocol.eval_kwargs())["miou"]

        fit(self.ctx, stage, model, self.train_set, loss_fn, opt, sched, iters, start,
            extra_opts=recipe.extra_opts, sync_params=recipe.sync_params,
            checkpoint=lambda step: self.save_state(stage, step, model, opt, sched, recipe, average),
            evaluate_fn=evaluate_fn, average=average)
        if average is not None:
            average.apply(model)
            self.ctx.history["averaged_iterates"] = {stage: average.count}
        self.ctx.history.setdefault("steps", {})[stage] = iters  # what ran (metrics.json "steps"; iters: see budget)

    def stage_train(self, model, recipe, resume):
        cfg = self.cfg
        self.optimise("train", model, recipe, recipe.sparse_loss_fn(model), cfg.iters, cfg.lr, resume)
        if recipe.fade_masks is not None:  # the fade's last factor: the faded units are exactly 0 in dense.pt
            from npdg.pruning import apply_masks

            apply_masks(model, recipe.fade_masks, inplace=True)
        if self.ctx.main:
            save_model(model, self.dir / "dense.pt", config=self.cfg.to_dict())
            if recipe.last_sensitivity is not None:
                recipe.last_sensitivity.save(self.dir / "sensitivity.json")
        return model

    def stage_prune(self, model, recipe):
        from npdg.pruning import compact
        from npdg.sensitivity import Sensitivity, pruned_vs_kept

        cfg, ctx = self.cfg, self.ctx
        sens_file = self.dir / "sensitivity.json"  # npdg: the last pass of the train stage (rank 0 wrote it)
        sens = Sensitivity.load(sens_file) if ctx.main and sens_file.is_file() else None
        # prune_fade: the units that faded out during training (chosen where the fade began), else chosen now
        masks = recipe.fade_masks if recipe.fade_masks is not None else choose_masks(ctx, model, sens)
        if sens is not None:  # the style sensitivity of what goes vs what stays, for the report
            self.ctx.history["sensitivity_pruned_vs_kept"] = pruned_vs_kept(sens, masks)
        if cfg.finetune_kd > 0:  # the dense model, as dense.pt holds it (every rank has the same one)
            import copy

            recipe.set_teacher(copy.deepcopy(model))
        small = compact(model, masks)
        if recipe.dsp is not None and cfg.dsp_level == "feature" and small.style_channels != model.style_channels:
            recipe.attach_dsp(small)  # the perturbed layer itself was pruned (VGG): a fresh D-VAE
        return small

    def stage_finetune(self, model, recipe, resume):
        cfg = self.cfg
        self.optimise("finetune", model, recipe, recipe.plain_loss_fn(model), cfg.finetune_iters,
                      cfg.finetune_lr or cfg.lr, resume)
        if self.ctx.main:
            save_model(model, self.dir / "final.pt", config=self.cfg.to_dict())
        return model

    def stage_evaluate(self, model):
        from npdg.report import write_metrics_and_report

        if not self.ctx.main:
            return {}
        if not self.cfg.prunes:
            save_model(model, self.dir / "final.pt", config=self.cfg.to_dict())
        return write_metrics_and_report(self.dir, self.cfg, self.val_sets, self.ctx)

    def run(self, state: dict | None) -> dict:
        cfg, ctx = self.cfg, self.ctx
        stages = STAGES[cfg.method]
        if state is None:
            model = build_model(cfg)
            start_stage = "train"
        else:
            model = model_from_payload(state["model"])
            start_stage = state["stage"]
            ctx.history.update(state.get("history", {}))
        model = model.to(ctx.device)
        if start_stage == "done":
            print(f"{self.dir}: this run is already complete (metrics.json)", file=sys.stderr)
            metrics_file = self.dir / "metrics.json"
            return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        self.val_sets = eval_datasets(cfg) if ctx.main else {}
        self.train_set = train_dataset(cfg)
        recipe = Recipe(ctx, model)
        if state is not None:
            recipe.load_state(state)
            if start_stage == "finetune" and cfg.prunes and cfg.finetune_kd > 0:  # the teacher: dense.pt
                recipe.set_teacher(load_model(self.dir / "dense.pt").to(ctx.device))
            checkpoint.set_rng_state(state["rng"])  # last: building the above must not shift it
        else:  # a run is resumable from its first second on: a kill before the first step loses nothing
            self.save_state("train", 0, model, recipe=recipe)
            if ctx.main:
                checkpoint.write_json(self.dir / "config.json", cfg.to_dict())
        metrics = {}
        for stage in stages[stages.index(start_stage):]:
            resume = state if (state is not None and stage == start_stage and state["step"] > 0) else None
            if stage == "train":
                model = self.stage_train(model, recipe, resume)
                nxt = stages[stages.index(stage) + 1]
            elif stage == "prune":
                model = self.stage_prune(model, recipe)
                nxt = "finetune"
            elif stage == "finetune":
                model = self.stage_finetune(model, recipe, resume)
                nxt = "evaluate"
            else:
                metrics = self.stage_evaluate(model)
                nxt = "done"
            self.save_state(nxt, 0, model, recipe=recipe)
        return metrics


def prepare_run_dir(cfg: Config, resume: str | None) -> tuple[Config, Path, dict | None]:
    """(config, run directory, resumable state or None); refuses to overwrite an existing run."""
    if resume:
        state = checkpoint.load_state(resume)
        # a key added after the run started takes the value the run had (input_norm: off before it existed)
        cfg = Config(**{**Config().to_dict(), "input_norm": False, **state["config"]})
        cfg.crop, cfg.eval_size = tuple(cfg.crop), tuple(cfg.eval_size)
        return cfg.validate(), Path(resume), state
    run_dir = Path(cfg.out or f"runs/{cfg.method}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / checkpoint.STATE).exists():  # (a folder killed before its first checkpoint holds no work)
        raise FileExistsError(f"{run_dir} already holds a run: continue it with --resume {run_dir} "
                              "or choose another --out")
    return cfg, run_dir, None


def train(cfg: Config, resume: str | None = None) -> dict:
    cfg, run_dir, state = prepare_run_dir(cfg, resume)
    device, rank, world = setup_distributed(cfg.device)
    if state is None:
        torch.manual_seed(cfg.seed + rank)
    ctx = Context(cfg, device, rank, world)
    try:
        if ctx.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            ctx.log = open(run_dir / "train_log.jsonl", "a")
        metrics = Run(cfg, run_dir, ctx).run(state)
    finally:
        if ctx.log is not None:
            ctx.log.close()
        if world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = cli.Parser(prog="python -m npdg.train", description=__doc__.split("\n\n")[0],
                        epilog="Any config key can be overridden as --key=value; "
                               "see npdg/config.py for keys and defaults.")
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run with its own config")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="check every file the config names, run a few real steps of every stage on this "
                             "machine and print what the full budget will cost (see npdg.dryrun); writes nothing")
    parser.add_argument("--dry_run_batch", type=cli.int_at_least(2), default=None, metavar="N",
                        help="batch of the dry run's steps (default: the config's on CUDA, 2 on CPU)")
    cli.add_debug(parser)
    args, overrides = parser.parse_known_args(argv)
    if args.resume and (args.config or overrides):
        parser.error("--resume continues a run with the config it was started with; drop the other options")
    if args.resume and args.dry_run:
        parser.error("--dry_run checks a new run's config; it does not combine with --resume")

    def run():
        cfg = None
        if not args.resume:
            cfg = load_config(args.config, overrides)
            cfg.check_files()
            if args.dry_run:
                from npdg.dryrun import dry_run

                return dry_run(cfg, batch=args.dry_run_batch)
        return train(cfg, args.resume)

    result = cli.guard(parser.prog, args.debug, run)
    if isinstance(result, int):
        sys.exit(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
