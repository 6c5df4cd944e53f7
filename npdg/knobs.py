"""The recipe's knobs (config keys a user rarely changes, under one heading each; issue 35) and the config's
lowest layer: its error, range check and value parsing.

:class:`npdg.config.Config` holds the keys a user chooses among; it inherits these. They are set like any other
key (``--dsp_copy=false``, a YAML file, a preset); ``python -m npdg.train --help_all`` lists them. Three kinds:

* the methods' internals (the D-VAE, the adversary, the sensitivity pass, SFP's and SHADE's own keys);
* the switches between this project's defaults and the paper's recipe, which the paper presets
  (``npdg/presets/gta5_*``) and the documented experiments set: each comment says what chose the default;
* reliability limits of a long run.

Keys tried and not adopted were removed with their code paths (:data:`REMOVED`); their results stay in
docs/results-history.md and the code at the commit named there.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass

REMOVED_AT = "604d432"  # the last commit that has every removed key's code path
REMOVED = {  # key -> (what it was, the values that give today's behaviour); measured and not adopted, see
    #   docs/results-history.md. A run saved with such a value resumes; one with any other asks for REMOVED_AT.
    "dsp_pixel": ("a random RGB style at the input of the restyled copies", (0,)),
    "dsp_colour": ("a random colour matrix on the restyled copies' inputs", (0,)),
    "sens_colour": ("colour-restyled sensitivity variants (with dsp_colour)", (True, False)),  # inert without it
    "dsp_local": ("two styles per restyled sample, blended over space", (0,)),
    "dsu": ("DSU statistics resampling at the deeper stages", (0,)),
    "dsp_split_bn": ("separate BatchNorm batch statistics for the restyled samples", (False,)),
    "eps_scale": ("the spread of the D-VAE's initial latent draw (now 1)", (1,)),
    "swa": ("the average of the last iterates (SWA)", (0,)),
    "lr_schedule": ("one poly decay over train + fine-tune (now each stage its own, the paper's)", ("stage",)),
    "finetune_kd": ("distillation from the dense model in the fine-tune", (0,)),
    "prune_fade": ("fading the units the prune removes before it", (0,)),
}


ADV_SCALE = 0.25  # adv_scale = None resolves to this at the feature level (see Knobs.adv_scale)


class ConfigError(ValueError, KeyError):
    """A config key that does not exist or a value outside its allowed range; the message names the key."""

    __str__ = ValueError.__str__  # KeyError would quote the message


def check_at_least(cfg, **lows) -> None:
    """ConfigError naming the first key of ``lows`` whose value is below its bound."""
    for name, low in lows.items():
        if getattr(cfg, name) < low:
            raise ConfigError(f"{name} must be >= {low}, got {getattr(cfg, name)}")


def check_range(cfg, name, low, high, low_open=False, high_open=False):
    v = getattr(cfg, name)
    bad = (low is not None and (v < low or (low_open and v == low))) or (
        high is not None and (v > high or (high_open and v == high)))
    if bad or v != v:  # v != v: NaN
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in {lo}{low}, {'inf' if high is None else high}{hi}, got {v}")


def coerce(value, tp, key: str):
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


@dataclass
class Knobs:
    # --- the methods' internals: DSP (dsp, npdg)
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
    encoder_weights: str = ""  # image level: the generator's VGG encoder weights when its recorded file moved

    # --- the methods' internals: the sensitivity pass (npdg)
    sens_k: int = 4  # style variants per content batch
    sens_batch: int = 8  # content images per sensitivity pass
    sens_precision: str = "ieee"  # ieee | tf32 | tf32x3 (GPU kernel precision)

    # --- the methods' internals: sfp (Soft Filter Pruning, He et al., IJCAI 2018; npdg/methods/sfp.py). Prunes to
    #   flops_target (npdg's) by default, or --ratio: the fraction of every unit group zeroed / removed
    sfp_every: int = 10  # steps between soft prunes (the paper: one per epoch); 10 for the 260-step budget: ~20
    #   zeroings over sfp's 200 train steps, as the paper's ~100-200 epochs give it many

    # --- the methods' internals: shade (Style-Hallucinated Dual Consistency Learning, Zhao et al., ECCV 2022)
    shade_k: int = 64  # basis styles (the paper's 64), chosen by farthest-point sampling from the source styles seen
    #   over the last shade_every steps: needs shade_k <= shade_every x batch_size
    shade_every: int = 20  # steps between basis refreshes (the authors: every 3 epochs over the whole source set); the
    #   first shade_every steps train on the clean batch while the first styles are collected
    shade_concentration: float = 0.0156  # Dirichlet concentration of the combination weights (the authors' 1/64)
    shade_sc: float = 10.0  # λ_SC: weight of the style consistency (JSD of clean and hallucinated predictions)
    shade_rc: float = 1.0  # λ_RC: weight of the retrospection consistency (with --pretrained only: the features of
    #   the frozen ImageNet backbone)

    # --- this project's defaults vs the paper's recipe (the paper presets set the paper's values)
    dsp_copy: bool = True  # restyle COPIES of dsp_p of each batch (added; the clean batch stays whole); false = the
    #   paper's (restyled samples replace them). Default since issue 16: with sens_scale=relative and
    #   prune_sens=1, final source +3.47 [+1.71, +5.23] over the paper's recipe (5 seeds, equal budget, source
    #   val; benches/results/dg_budget260/compare5-npdgB-npdg.md)
    dsp_weight: float = 0.5  # the clean samples' mean loss + dsp_weight x the restyled samples' mean, so the clean
    #   signal keeps ERM's weight; 0 = one mean over clean and restyled samples (the paper's). Default since
    #   issue 16: final source +1.69 [+0.96, +2.42] over pooled (5 seeds; dg_budget260/compare5-npdgW05-npdgB.md)
    dsp_branch: bool | None = None  # with dsp_copy: the restyled copies branch off the clean samples' features at
    #   the style point (the layers before it run once, on the clean batch) instead of running those layers again on
    #   copies of the inputs; the BatchNorm layers before the style point then normalise over the distinct images
    #   only (npdg.dsp.perturb.FeatureDSP); none = on with feature-level dsp_copy (issue 33: five paired seeds with
    #   adv_scale 0.5, source +0.43 [-0.63, +1.48], unseen +0.12 [-0.47, +0.71] against the full step:
    #   benches/results/fair_fast/PLAN.md), off otherwise (the paper's)
    adv_scale: float | None = None  # the adversary ascends on the restyled samples resized by this factor (in
    #   (0, 1]; 1 = full resolution, the paper's): it searches per-channel statistics, which barely depend on
    #   resolution, at ~adv_scale² the cost; none = 0.25 at the feature level (issue 33: five paired seeds against
    #   0.5, source +0.03 [-0.62, +0.68], unseen -0.07 [-0.44, +0.29]: fair_fast/PLAN_adv025.md), 1 otherwise
    sens_scale: str = "relative"  # sparsity weights from the γ-scaled outputs' variances (output, the paper's)
    #   or scale-free ones, relative to each unit's own variance (relative, the default); see npdg.sensitivity
    prune_sens: float = 2.0  # npdg: the prune ranks importance / w_rel**prune_sens (w_rel: the last pass's
    #   scale-free weights), so style-sensitive units go first; 0 = rank by importance alone (the paper's).
    #   2 since 2026-11-30 (was 1): five paired seeds on the early prune, source +0.04 [-0.79, +0.87], the
    #   candidate of highest source among those passing a rule fixed beforehand (dg_budget260/compare5-npdgPs2-*)
    exact_ratio: bool = False  # ratio = the fraction of units actually removed per kind (whole round_to steps
    #   taken back from the groups whose next step scores lowest); False: every group's kept count is rounded
    #   UP, so a little less than ratio goes and no unit above the cut does (see npdg.pruning.select)
    min_keep: int = 1  # units every group keeps at least

    # --- reliability limits of a long run
    data_timeout: int = 300  # seconds a worker may take for one batch before the run stops (0 = no limit)
    skip_nonfinite: int = 0  # steps with a NaN/inf loss or gradient to skip (logged) before stopping

    # --- the GPU
    cudnn_benchmark: bool = True  # CUDA: cuDNN times its convolution algorithms once per new shape (the training
    #   crops are fixed) instead of its heuristics, which pick slow kernels for some pruned widths; false = the
    #   heuristics (the same algorithms in every run)

    def validate_knobs(self) -> None:
        """Range and combination checks of these keys (Config.validate calls it after its own)."""
        if self.adv_scale is None:
            self.adv_scale = ADV_SCALE if self.dsp_level == "feature" else 1.0
        if self.dsp_branch is None:
            self.dsp_branch = self.dsp_copy and self.dsp_level == "feature"
        check_at_least(self, min_keep=1, adv_steps=0, sens_k=2, sens_batch=1, dsp_latent=1, dsp_hidden=1,
                       skip_nonfinite=0, data_timeout=0)
        for name in ("dsp_beta", "adv_step_size", "prune_sens", "dsp_weight"):
            check_range(self, name, 0, None)
        check_range(self, "dsp_warmup", 0, 1)
        check_range(self, "dsp_lr", 0, None, low_open=True)
        check_range(self, "adv_scale", 0, 1, low_open=True)
        if self.adv_scale != 1 and self.dsp_level != "feature":
            raise ConfigError("adv_scale: feature-level DSP only (dsp_level=feature); the image-level generator's "
                              "adversary keeps the full resolution")
        if self.dsp_branch and not self.dsp_copy:
            raise ConfigError("dsp_branch: the copies branch off at the style point; it needs dsp_copy=true")
        if self.dsp_branch and self.dsp_level != "feature":
            raise ConfigError("dsp_branch: feature-level DSP only (dsp_level=feature)")
        if self.exact_ratio and self.threshold > 0:
            raise ConfigError("exact_ratio needs ratio (threshold > 0 removes units below it; no target count)")
        if self.sens_scale not in ("output", "relative"):
            raise ConfigError(f"sens_scale={self.sens_scale!r}: expected output or relative")
        if self.sens_precision not in ("ieee", "tf32", "tf32x3"):
            raise ConfigError(f"sens_precision={self.sens_precision!r}: expected ieee, tf32 or tf32x3")
        from npdg.models.mit import STYLE_POINTS  # (the model owns the name: knobs -> models only)

        if self.style_point not in STYLE_POINTS:
            raise ConfigError(f"style_point={self.style_point!r}: expected one of {', '.join(STYLE_POINTS)}")
        if self.style_point != "stage" and not self.mit_model:
            raise ConfigError(f"style_point={self.style_point}: segformer_* models only (model={self.model})")
