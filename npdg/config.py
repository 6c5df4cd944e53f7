"""Run configuration: one dataclass with commented defaults, YAML files and ``--key=value`` overrides.

    cfg = load_config("run.yaml", ["--iters=200", "--model=segformer_b0"])

Precedence: dataclass defaults < YAML file < command-line overrides. The resolved config is written to
every run directory (config.json) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from npdg.methods import REGISTRY, method_class

METHODS = tuple(REGISTRY)  # --method names; each method's facts and defaults live in its class (npdg/methods/)
DSP_LEVELS = ("feature", "image")
LR_SCHEDULES = ("stage", "run")
PRESET_DIR = Path(__file__).parent / "presets"  # --preset NAME loads PRESET_DIR/NAME.yaml first


FLOPS_TARGET_MIT = 0.75  # a pruning method's default FLOPs target on a MiT (segformer_*) model, its class's
#   flops_target on a CNN: the transformer's FLOPs bound of issue 16 (its attention and embeddings are not prunable,
#   so 0.6 took half the units without the streams): with --prune_residual, three paired seeds, +0.83 [-0.93, +2.59]
#   source over 0.6 (dg_budget260/compare-segformer_b0-npdgEarlyresF75-*)
BUDGET = 260  # budget = -1 resolves to this when iters is not given: every method's default run spends the same
#   optimiser steps in all (issue 32: a default only one method gets shows up as that method's gain)
INPUT_NORM_MIT = False  # input_norm = None resolves to on for every method on a CNN, to this on a MiT (segformer_*)
#   model: the source-only gate on B0's own paired runs failed (three seeds, source -1.84 [-4.20, +0.51] against
#   input_norm off; dg_budget260/compare-segformer_b0-npdgIn-npdgPs2)


class ConfigError(ValueError, KeyError):
    """A config key that does not exist or a value outside its allowed range; the message names the key."""

    __str__ = ValueError.__str__  # KeyError would quote the message


@dataclass
class Config:
    # --- what to train
    method: str = "npdg"  # erm (source only) | slimming (L1 on γ, prune) | dsp | npdg | sfp (soft filter pruning) |
    #   shade (style hallucination + consistency); one class each in npdg/methods/
    preset: str = ""  # a YAML under npdg/presets/ applied before --config and overrides (e.g. quick)
    model: str = "deeplabv3plus_r18"  # any name from npdg.models.available_models()
    num_classes: int = 19  # Cityscapes train ids
    pretrained: str = ""  # local ImageNet backbone state dict ("" = random init; no downloads)
    input_norm: bool | None = None  # the model standardises each input image per channel over its pixels before
    #   its first layer (instance normalisation of the input; part of the model, saved and exported); false = the
    #   paper's; none = on for every method on a CNN (since issue 32; npdg had it alone from 2026-11-30: five paired
    #   seeds, source +0.79 [-0.18, +1.77]; ERM gains +11.9 unseen from it), off on a MiT model (INPUT_NORM_MIT)

    # --- data: the embedded synthetic benchmark by default; any eval SPEC works for targets
    source: str = "synthetic:source"  # training domain (SPEC, see npdg.eval --help)
    targets: list[str] = field(default_factory=lambda: [
        "synthetic:night", "synthetic:fog", "synthetic:rain", "synthetic:snow", "synthetic:painted"])
    crop: tuple[int, int] = (96, 192)  # training crop H, W (synthetic scenes are generated at this size)
    eval_size: tuple[int, int] = (96, 192)  # synthetic evaluation image size H, W (on-disk data: eval_protocol)
    eval_protocol: list[str] = field(default_factory=list)  # KIND=PROTOCOL or SPEC=PROTOCOL overrides of the
    #   per-dataset evaluation protocol (npdg.data.protocol: cityscapes/bdd100k/gta5/synthia whole image at native
    #   size, mapillary height 1536 + centre crop 1536x1536, as RobustNet), e.g. cityscapes=native+sliding:768x768
    train_num: int = 2000  # synthetic training scenes (ignored for on-disk datasets)
    val_num: int = 60  # images per evaluated domain (synthetic) / cap for on-disk (0 = all)

    # --- optimisation (SGD + poly schedule, as in the DG-segmentation literature)
    iters: int = -1  # optimiser steps of the (sparse) training stage; -1 = the default budget's split (260 steps in
    #   all: erm / dsp 260, slimming 110 + 150 fine-tuning, npdg 60 + 200), or with budget 0: 200, npdg 60 (npdg
    #   prunes early and trains the compact network with DSP for its 200 fine-tuning steps: at 260 steps final
    #   source +2.59 over pruning at step 200, ten paired seeds in dg_budget260/compare10-npdgEarly-npdgW05.md)
    budget: int = -1  # > 0: optimiser steps of the whole run, equal for every method (fair comparisons): a
    #   pruning method trains budget - finetune_iters steps and fine-tunes finetune_iters, a method without a
    #   prune trains all budget steps; validate() then sets iters to the train stage's length (so the poly
    #   schedule, dsp_warmup and sens_every follow the stage that runs). 0 = off: train iters, then fine-tune.
    #   -1 = the default: BUDGET (260) when iters is not given, else off
    optimizer: str = "sgd"  # sgd (momentum) | adamw (SegFormer's recipe)
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU)

    # --- pruning (slimming, npdg): sparse training, global prune per unit kind, compact, fine-tune
    sparsity: float = 1e-2  # s: the loss adds s * sum_i w_i |gamma_i| (w = 1 for slimming)
    ratio: float = -1.0  # fraction of units removed per kind (the paper: 20-40 % best); -1 = not given: 0.3
    threshold: float = 0.0  # > 0: remove units with importance < threshold instead of a ratio
    flops_target: float = -1.0  # > 0: instead of ratio, the smallest ratio (bisection, to 1e-3) whose compact model
    #   has at most this fraction of the dense model's FLOPs (counted like the report: eval_size on the embedded
    #   benchmark, else crop); the chosen ratio is printed and recorded (metrics.json final.prune_ratio); 0 = off
    #   (ratio); -1 = the method's default: 0.6 for npdg, slimming and sfp unless ratio or threshold is given (npdg,
    #   ten paired seeds at 260 steps: FLOPs 58.9-60.0 % on every seed, source +0.27 [-0.35, +0.89] over ratio 0.3;
    #   0.75 for a MiT model, FLOPS_TARGET_MIT), else 0
    round_to: int = 8  # kept widths are multiples of this (tensor cores / SIMD); 1 = exact
    min_keep: int = 1  # units every group keeps at least
    exact_ratio: bool = False  # ratio = the fraction of units actually removed per kind (whole round_to steps
    #   taken back from the groups whose next step scores lowest); False: every group's kept count is rounded
    #   UP, so a little less than ratio goes and no unit above the cut does (see npdg.pruning.select)
    prune_residual: bool = False  # slimming / npdg: also prune the residual streams (coupled groups, one per
    #   ResNet / MiT stage; DeepLabV3+ R18/R50/R101, SegFormer), ranked by mean |γ| over a stream's BNs
    #   (MiT: LayerNorms); the sparsity penalty then also covers those γ (see npdg.pruning.select / sparsity)
    prune_fade: float = 0.0  # slimming / npdg: the units the prune removes are chosen this fraction of the train
    #   stage before its end and fade out (their γ/β shrink linearly each step, 0 at the end), so the prune cuts
    #   units that are already 0 and the network has adapted to losing them; 0 = cut at the prune (the paper's)
    finetune_iters: int = -1  # fine-tuning steps of the compacted model (own poly schedule); -1 = the method's
    #   default: 150 for slimming (its prune removes ~half the FLOPs; 60 steps left source -6.7 vs ERM, 150 steps
    #   +3.9, chosen on source val), 200 for npdg (the compact network trains with DSP: see iters; the paper
    #   presets state their 10k), 60 for sfp (its soft prunes leave the filters it removes silent already; the
    #   paper reports no fine-tuning, so it needs little). Scaling a budget scales both stages (780 steps:
    #   --finetune_iters=600)
    finetune_lr: float = 0.0  # 0 = lr
    finetune_kd: float = 0.0  # slimming / npdg: the fine-tune adds finetune_kd x the per-pixel KL divergence of
    #   the pruned model's predictions on the clean images from the dense model's (dense.pt, frozen, eval mode;
    #   temperature 1); 0 = off (the paper's: labels only)
    swa: float = 0.0  # > 0: the final model is the uniform average of the last training stage's iterates (the
    #   fine-tune's for slimming / npdg, the train stage's otherwise) over its last swa fraction of steps:
    #   parameters and BatchNorm running statistics alike (SWA; SWAD in domain generalisation); 0 = the last
    #   iterate (the paper's)
    lr_schedule: str = "stage"  # stage: each stage its own poly decay from its lr to 0 (the paper's fine-tune
    #   restarts at lr); run: one poly decay over train + fine-tune steps, the fine-tune continuing where the
    #   train stage stopped (what a method without a prune gets over the same budget)

    # --- DSP: differentiable style perturbation (dsp, npdg)
    dsp_level: str = "feature"  # feature (AdaIN on model.style_layer) | image (AdaIN generator)
    dsp_p: float = 0.5  # fraction of each batch replaced by perturbed samples
    dsp_copy: bool = True  # restyle COPIES of that fraction (added; the clean batch stays whole); false = the
    #   paper's (restyled samples replace them). Default since issue 16: with sens_scale=relative and
    #   prune_sens=1, final source +3.47 [+1.71, +5.23] over the paper's recipe (5 seeds, equal budget, source
    #   val; benches/results/dg_budget260/compare5-npdgB-npdg.md)
    dsp_branch: bool = False  # with dsp_copy: the restyled copies branch off the clean samples' features at the
    #   style point (the layers before it run once, on the clean batch) instead of running those layers again on
    #   copies of the inputs; the BatchNorm layers before the style point then normalise over the distinct images
    #   only (a throughput lever of issue 33, see npdg.dsp.perturb.FeatureDSP)
    adv_scale: float = 1.0  # the adversary ascends on the restyled samples resized by this factor (in (0, 1]; 1 = full
    #   resolution): it searches per-channel statistics, which barely depend on resolution, at ~adv_scale² the cost
    dsp_split_bn: bool = False  # feature level: the restyled samples get their own BatchNorm batch statistics
    #   (shared γ/β; running statistics from the clean samples only); false = one batch (the paper's)
    dsp_weight: float = 0.5  # the clean samples' mean loss + dsp_weight x the restyled samples'
    #   mean, so the clean signal keeps ERM's weight (0.5: the restyled/clean ratio of the pooled mean with p=0.5
    #   copies); 0 = one mean over clean and restyled samples (the paper's). Default since issue 16: final source
    #   +1.69 [+0.96, +2.42] over pooled (5 seeds, equal budget, source val; dg_budget260/compare5-npdgW05-npdgB.md)
    dsp_pixel: float = 0.0  # feature level: the restyled samples also get a random per-image RGB style at the input
    #   (AdaIN of the normalised image: channel mean + dsp_pixel x N(0, 1), std x exp(dsp_pixel x N(0, 1))), a
    #   second perturbation depth before the adversary's; 0 = none (the paper's)
    dsp_colour: float = 0.0  # feature level: the restyled samples' input images also get a random colour matrix
    #   (x' = mu + M (x - mu), M = matrix_exp(dsp_colour x N(0, 1)^(3x3)): channels mixed, which input_norm does not
    #   undo), and npdg's sensitivity variants get it too; 0 = none (the paper's)
    sens_colour: bool = True  # with dsp_colour > 0: npdg's sensitivity variants start from colour-restyled images too
    #   (units before the style layer get scores); false = the colour restyle in training only, sensitivity
    #   from the D-VAE feature styles alone
    dsp_local: int = 0  # feature level: > 0 = each restyled sample mixes two styles over space, its adversarial
    #   D-VAE style and a random one as far from the source, blended by a smooth random mask (a dsp_local x
    #   dsp_local grid of U(0, 1), bilinear to the feature map; the adversary ascends through the blend); 0 = one
    #   style per sample (the paper's)
    dsu: float = 0.0  # feature level: the restyled copies' per-channel statistics are also resampled at the deeper
    #   stage outputs (model.deep_style_layers), each with this probability per step: mean + N(0, 1) x the batch's
    #   spread of the means, std + N(0, 1) x the spread of the stds (DSU, Li et al., ICLR 2022), a perturbation
    #   at more than one depth; clean rows, the adversary and the sensitivity passes untouched; 0 = none (the paper's)
    style_point: str = ""  # segformer_* models: where the feature-level restyle (and npdg's sensitivity restyle)
    #   acts: stage = stage 1's output; embed = stage 1's patch embedding, before its blocks (those blocks' heads /
    #   Mix-FFN channels then see the style change and get scores); "" = embed for npdg on a MiT model
    #   (the method class's style_point_mit), stage otherwise (the baselines and the CNNs as before)
    dsp_warmup: float = 0.25  # fraction of the train stage's first steps without restyling (the D-VAE still
    #   learns the source styles): seed 0, judged on source val, 0 -> 0.25 gave final source 34.11 -> 36.57
    dsp_latent: int = 32  # D-VAE latent size
    dsp_hidden: int = 256  # D-VAE MLP width
    dsp_beta: float = 1e-3  # KL weight of the D-VAE
    dsp_lr: float = 1e-3  # Adam learning rate of the D-VAE (feature level, trained online)
    adv_steps: int = 1  # gradient-ascent steps on the latent noise eps (0 = random styles)
    adv_step_size: float = 2.0  # each ascent step moves the decoded style this many source spreads
    eps_scale: float = 1.0  # std of the initial eps; >1 samples styles further from the source
    generator: str = ""  # image level: generator.pt from `python -m npdg.dsp train`
    encoder_weights: str = ""  # image level: the generator's VGG encoder weights when its recorded file moved

    # --- sensitivity (npdg): which units react to style
    lam: float = 0.4  # w = lam * unary + (1 - lam) * binary; 1 = unary only, 0 = binary only
    sens_k: int = 4  # style variants per content batch
    sens_every: int = 50  # recompute the weights every this many sparse-training steps
    sens_batch: int = 8  # content images per sensitivity pass
    sens_precision: str = "ieee"  # ieee | tf32 | tf32x3 (GPU kernel precision)
    sens_scale: str = "relative"  # sparsity weights from the γ-scaled outputs' variances (output, the paper's)
    #   or scale-free ones, relative to each unit's own variance (relative, the default); see npdg.sensitivity
    prune_sens: float = 2.0  # npdg: the prune ranks importance / w_rel**prune_sens (w_rel: the last pass's
    #   scale-free weights), so style-sensitive units go first; 0 = rank by importance alone (the paper's).
    #   2 since 2026-11-30 (was 1): five paired seeds on the early prune, source +0.04 [-0.79, +0.87], the
    #   candidate of highest source among those passing a rule fixed beforehand (dg_budget260/compare5-npdgPs2-*)

    # --- sfp: Soft Filter Pruning (He et al., IJCAI 2018; npdg/methods/sfp.py). Prunes to flops_target (npdg's) by
    #   default, or --ratio: the fraction of every unit group zeroed / removed (in (0, 1))
    sfp_every: int = 10  # steps between soft prunes (the paper: one per epoch); 10 for the 260-step budget: ~20
    #   zeroings over sfp's 200 train steps, as the paper's ~100-200 epochs give it many

    # --- shade: Style-Hallucinated Dual Consistency Learning (Zhao et al., ECCV 2022; npdg/methods/shade.py)
    shade_k: int = 64  # basis styles (the paper's 64), chosen by farthest-point sampling from the source styles seen
    #   over the last shade_every steps: needs shade_k <= shade_every x batch_size
    shade_every: int = 20  # steps between basis refreshes (the authors: every 3 epochs over the whole source set); the
    #   first shade_every steps train on the clean batch while the first styles are collected
    shade_concentration: float = 0.0156  # Dirichlet concentration of the combination weights (the authors' 1/64)
    shade_sc: float = 10.0  # λ_SC: weight of the style consistency (JSD of clean and hallucinated predictions)
    shade_rc: float = 1.0  # λ_RC: weight of the retrospection consistency (with --pretrained only: the features of
    #   the frozen ImageNet backbone)

    # --- running
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 2  # DataLoader worker processes
    data_timeout: int = 300  # seconds a worker may take for one batch before the run stops (0 = no limit)
    seed: int = 0
    log_every: int = 20  # iterations between log lines
    eval_every: int = 0  # steps between source-val mIoU evaluations in train/finetune (val_miou rows of
    #   train_log.jsonl; rank 0); 0 = only at the end
    out: str = ""  # run directory ("" = runs/<method>-<model>-<timestamp>)
    ckpt_every: int = 100  # steps between resumable checkpoints (checkpoint.pt) inside a stage
    skip_nonfinite: int = 0  # steps with a NaN/inf loss or gradient to skip (logged) before stopping

    def validate(self) -> Config:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if self.budget == -1:  # (before iters resolves: a given iters turns the default budget off)
            self.budget = BUDGET if self.iters == -1 else 0
        method = method_class(self.method)
        if self.iters == -1:
            self.iters = method.iters
        if self.input_norm is None:
            self.input_norm = INPUT_NORM_MIT if self.mit_model else True
        if self.style_point == "":
            self.style_point = method.style_point_mit if self.mit_model else "stage"
        for name in ("iters", "batch_size", "num_classes", "train_num"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("crop", "eval_size"):
            if len(getattr(self, name)) != 2 or min(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be two positive ints (H, W), got {getattr(self, name)}")
        _check_range(self, "lr", 0, None, low_open=True)
        for name in ("sparsity", "threshold", "finetune_lr", "dsp_beta", "adv_step_size", "eps_scale"):
            _check_range(self, name, 0, None)
        if self.flops_target == -1:  # (before ratio resolves: a given ratio or threshold chooses the prune)
            chosen = self.ratio != -1 or self.threshold > 0
            default = method.flops_target
            if default and self.mit_model:
                default = FLOPS_TARGET_MIT
            self.flops_target = 0.0 if chosen else default
        if self.ratio == -1:
            self.ratio = 0.3
        _check_range(self, "ratio", 0, 1, high_open=True)
        _check_range(self, "flops_target", 0, 1, high_open=True)
        if self.flops_target > 0 and self.threshold > 0:
            raise ConfigError("flops_target and threshold each choose what the prune removes: give one")
        _check_range(self, "lam", 0, 1)
        _check_range(self, "dsp_p", 0, 1)
        _check_range(self, "dsp_warmup", 0, 1)
        _check_range(self, "dsp_lr", 0, None, low_open=True)
        if self.finetune_iters == -1:
            self.finetune_iters = method.finetune_iters
        elif self.finetune_iters < 0:
            raise ConfigError(f"finetune_iters must be >= 0 (or -1: the method's default), got {self.finetune_iters}")
        for name, low in (("round_to", 1), ("min_keep", 1), ("finetune_iters", 0), ("adv_steps", 0),
                          ("sens_k", 2), ("sens_every", 1), ("sens_batch", 1), ("dsp_latent", 1),
                          ("dsp_hidden", 1), ("ckpt_every", 1), ("skip_nonfinite", 0), ("workers", 0),
                          ("data_timeout", 0), ("log_every", 1),
                          ("eval_every", 0), ("val_num", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule == "run" and self.finetune_lr > 0:
            raise ConfigError("finetune_lr restarts the fine-tune's decay; lr_schedule=run continues the train "
                              "stage's (leave finetune_lr 0)")
        if self.exact_ratio and self.threshold > 0:
            raise ConfigError("exact_ratio needs ratio (threshold > 0 removes units below it; no target count)")
        if self.budget < 0:
            raise ConfigError(f"budget must be >= 0 (0 = off; -1 = the default, {BUDGET} unless iters is given), "
                              f"got {self.budget}")
        if self.budget and self.prunes and self.budget <= self.finetune_iters:
            raise ConfigError(f"budget={self.budget} must exceed finetune_iters={self.finetune_iters}: "
                              f"method={self.method} fine-tunes that many of its budget steps")
        if self.budget:  # (idempotent: a resumed run re-validates its saved config)
            self.iters = self.budget - self.finetune_iters if self.prunes else self.budget
        from npdg.models import available_models

        if self.model not in available_models():
            import difflib

            close = difflib.get_close_matches(self.model, available_models(), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"available: {', '.join(available_models())}"
            raise ConfigError(f"model={self.model!r}: unknown model; {hint}")
        if self.prune_residual:
            from npdg.models import no_residual_streams

            if why := no_residual_streams(self.model):
                raise ConfigError(f"prune_residual: {why}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}: expected sgd or adamw")
        if self.dsp_level not in DSP_LEVELS:
            raise ConfigError(f"dsp_level={self.dsp_level!r}: expected one of {', '.join(DSP_LEVELS)}")
        from npdg.data.protocol import ProtocolError, parse_overrides

        try:
            parse_overrides(self.eval_protocol)
        except ProtocolError as exc:
            raise ConfigError(f"eval_protocol: {exc}") from None
        if self.sens_scale not in ("output", "relative"):
            raise ConfigError(f"sens_scale={self.sens_scale!r}: expected output or relative")
        _check_range(self, "prune_sens", 0, None)
        _check_range(self, "dsp_weight", 0, None)
        _check_range(self, "prune_fade", 0, 1, high_open=True)
        _check_range(self, "finetune_kd", 0, None)
        _check_range(self, "dsp_pixel", 0, 5)
        _check_range(self, "dsp_colour", 0, 5)
        _check_range(self, "swa", 0, 1)
        _check_range(self, "dsp_local", 0, 64)  # grid cells per side; 0 = off
        _check_range(self, "dsu", 0, 1)
        _check_range(self, "adv_scale", 0, 1, low_open=True)
        if self.adv_scale != 1 and self.dsp_level != "feature":
            raise ConfigError("adv_scale: feature-level DSP only (dsp_level=feature); the image-level generator's "
                              "adversary keeps the full resolution")
        if self.dsp_branch and not self.dsp_copy:
            raise ConfigError("dsp_branch: the copies branch off at the style point; it needs dsp_copy=true")
        for name in ("dsp_pixel", "dsp_colour", "dsp_split_bn"):
            if self.dsp_branch and getattr(self, name):
                raise ConfigError(f"dsp_branch: {name} restyles or splits the copies before the style point, where "
                                  "branched copies have no rows of their own; give one of them")
        from npdg.models.mit import STYLE_POINTS  # (the model owns the name: config -> models only)

        if self.style_point not in STYLE_POINTS:
            raise ConfigError(f"style_point={self.style_point!r}: expected one of {', '.join(STYLE_POINTS)}")
        if self.style_point != "stage" and not self.mit_model:
            raise ConfigError(f"style_point={self.style_point}: segformer_* models only (model={self.model})")
        for name in ("dsp_pixel", "dsp_colour", "dsp_split_bn", "dsp_local", "dsu", "dsp_branch"):  # FeatureDSP only
            if getattr(self, name) and self.dsp_level != "feature":
                raise ConfigError(f"{name}: feature-level DSP only (dsp_level=feature)")
        if self.dsp_pixel and self.input_norm:
            raise ConfigError("dsp_pixel has no effect with input_norm (npdg's default): the model standardises each "
                              "image per channel, which undoes the pixel restyle; give --input_norm=false with it")
        if self.sens_precision not in ("ieee", "tf32", "tf32x3"):
            raise ConfigError(f"sens_precision={self.sens_precision!r}: expected ieee, tf32 or tf32x3")
        method.check(self)
        return self

    def check_files(self) -> None:
        """The files this run reads exist (checked by the trainer before any work; presets name paths
        that only exist on the user's machine, so validate() does not)."""
        for name in ("generator", "pretrained", "encoder_weights"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise FileNotFoundError(f"{name}: file not found: {getattr(self, name)}")
        if self.uses_dsp and self.dsp_level == "image" and not self.generator:
            raise ConfigError("dsp_level=image needs --generator PATH (train one with `python -m npdg.dsp train`)")
        self.check_device()

    def check_device(self) -> None:
        """amp=true on a CUDA device without native bf16 (compute capability < 8.0: emulated bf16 is slower
        than fp32) is a ConfigError naming the key; on CPU amp is ignored (the trainer says so once). A device
        that does not exist is left to the trainer's own device check."""
        import os

        import torch

        cuda = self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
        if not (self.amp and cuda and torch.cuda.is_available()) or torch.version.hip:  # ROCm: bf16 everywhere
            return
        try:
            index = torch.device(self.device if self.device != "auto" else "cuda").index
        except RuntimeError:
            return
        if index is None:  # the device a run on "cuda" uses (torchrun: its local rank)
            index = int(os.environ.get("LOCAL_RANK", "0"))
        if index >= torch.cuda.device_count():
            return
        props = torch.cuda.get_device_properties(index)  # (no CUDA context is created)
        if props.major < 8:
            raise ConfigError(f"amp=true: bf16 autocast needs a CUDA device of compute capability >= 8.0; "
                              f"{props.name} (cuda:{index}) is {props.major}.{props.minor}: drop --amp")

    @property
    def mit_model(self) -> bool:
        """A SegFormer (MiT) model: its FLOPs target and input_norm default differ (FLOPS_TARGET_MIT, INPUT_NORM)."""
        return self.model.startswith("segformer_")

    @property
    def prunes(self) -> bool:
        return method_class(self.method).prunes

    @property
    def uses_dsp(self) -> bool:
        return method_class(self.method).uses_dsp

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_range(cfg, name, low, high, low_open=False, high_open=False):
    v = getattr(cfg, name)
    bad = (low is not None and (v < low or (low_open and v == low))) or (
        high is not None and (v > high or (high_open and v == high)))
    if bad or v != v:  # v != v: NaN
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in {lo}{low}, {'inf' if high is None else high}{hi}, got {v}")


def _coerce(value, tp, key: str):
    """Convert a YAML/CLI value to the field's annotated type, with an error that names the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None: "none" / null = the method's default
        if value is None or str(value).strip().lower() in ("none", "null", "auto"):
            return None
        (tp,) = [t for t in typing.get_args(tp) if t is not type(None)]
        origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(value)
        if tp in (int, float, str):
            return tp(value)
        if origin is tuple:  # (H, W) given as "96x192", "96,192" or a YAML list
            parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
            return tuple(int(p) for p in parts)
        if origin is list:
            items = [p for p in value.split(",") if p] if isinstance(value, str) else list(value)
            return [str(p).strip() for p in items]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {tp}") from exc
    raise TypeError(f"config key {key!r}: unsupported type {tp}")


def _apply(cfg: Config, values: dict, where: str) -> None:
    hints = typing.get_type_hints(Config)
    known = {f.name for f in dataclasses.fields(Config)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: unknown config key {key!r}; {hint}")
        setattr(cfg, key, _coerce(value, hints[key], key))


def parse_overrides(args: list[str]) -> dict:
    """['--iters=10', '--model', 'segformer_b0', '--amp'] -> {'iters': '10', 'model': 'segformer_b0', 'amp': 'true'}.

    Both ``--key=value`` and ``--key value`` work; a ``--key`` followed by another flag (or nothing) is
    a boolean switch.
    """
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"override {arg!r}: expected --key=value or --key value")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        out[key] = value
        i += 1
    return out


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults < preset (``preset`` key, from the file or the command line) < YAML file < overrides."""
    file_values = _read_yaml(Path(path)) if path else {}
    cli = (overrides if isinstance(overrides, dict) else parse_overrides(overrides)) if overrides else {}
    preset = str(cli.get("preset", file_values.get("preset", "")) or "")
    cfg = Config()
    if preset:
        if preset not in available_presets():
            raise ConfigError(f"preset={preset!r}: expected one of {', '.join(available_presets())}")
        _apply(cfg, _read_yaml(PRESET_DIR / f"{preset}.yaml"), f"preset {preset}")
    _apply(cfg, file_values, str(path))
    _apply(cfg, cli, "command line")
    cfg.preset = preset
    return cfg.validate()


def save_config(cfg: Config, path: str | Path) -> None:
    from npdg.checkpoint import write_json

    write_json(path, cfg.to_dict())
