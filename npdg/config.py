"""Run configuration: one dataclass with commented defaults, YAML files and ``--key=value`` overrides.

    cfg = load_config("run.yaml", ["--iters=200", "--model=segformer_b0"])

Precedence: dataclass defaults < YAML file < command-line overrides. The resolved config is written to
every run directory (config.json) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from npdg.knobs import REMOVED, REMOVED_AT, ConfigError, Knobs, check_at_least, check_range, coerce, parse_overrides
from npdg.methods import REGISTRY, method_class

METHODS = tuple(REGISTRY)  # --method names; each method's facts and defaults live in its class (npdg/methods/)
DSP_LEVELS = ("feature", "image")
PRESET_DIR = Path(__file__).parent / "presets"  # --preset NAME loads PRESET_DIR/NAME.yaml first


FLOPS_TARGET_MIT = 0.75  # a pruning method's default FLOPs target on a MiT (segformer_*) model (its attention and
#   embeddings are not prunable; issue 16: +0.83 [-0.93, +2.59] source over 0.6, dg_budget260/)
BUDGET = 260  # budget = -1 resolves to this when iters is not given: every method's default run spends the same
#   optimiser steps in all (issue 32)
INPUT_NORM_MIT = False  # input_norm = None resolves to on on a CNN, to this on a MiT (segformer_*) model (B0's own
#   paired runs: source -1.84 [-4.20, +0.51] with it; dg_budget260/compare-segformer_b0-npdgIn-npdgPs2)


@dataclass
class Config(Knobs):
    """The keys a user chooses among (the recipe's rarer knobs: npdg.knobs.Knobs, inherited)."""

    # --- what to train
    method: str = "npdg"  # erm (source only) | slimming (L1 on γ, prune) | dsp | npdg | sfp (soft filter pruning) |
    #   shade (style hallucination + consistency); one class each in npdg/methods/
    preset: str = ""  # a YAML under npdg/presets/ applied before --config and overrides (e.g. quick)
    model: str = "deeplabv3plus_r18"  # any name from npdg.models.available_models()
    num_classes: int = 19  # Cityscapes train ids
    pretrained: str = ""  # local ImageNet backbone state dict ("" = random init; no downloads)
    input_norm: bool | None = None  # the model standardises each input image per channel before its first layer
    #   (part of the model, saved and exported); false = the paper's; none = on on a CNN for every method (issue 32;
    #   ERM gains +11.9 unseen from it), off on a MiT model (INPUT_NORM_MIT)

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
    iters: int = -1  # optimiser steps of the (sparse) training stage; -1 = the method's share of budget (erm / dsp /
    #   shade 260, slimming 110 + 150 fine-tuning, sfp 200 + 60, npdg 60 + 200: it prunes early and trains the
    #   compact network with DSP, ten paired seeds +2.59 source, dg_budget260/compare10-npdgEarly-npdgW05.md)
    budget: int = -1  # > 0: optimiser steps of the whole run, equal for every method: a pruning method trains
    #   budget - finetune_iters steps and fine-tunes finetune_iters; 0 = off (train iters, then fine-tune);
    #   -1 = BUDGET (260) when iters is not given, else off
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
    flops_target: float = -1.0  # > 0: instead of ratio, the smallest ratio (bisection) whose compact model has at
    #   most this fraction of the dense FLOPs (recorded in metrics.json final.prune_ratio); 0 = off (ratio); -1 = the
    #   method's: 0.6 for npdg, slimming, sfp (0.75 on a MiT model) unless ratio or threshold is given, else 0
    round_to: int = 8  # kept widths are multiples of this (tensor cores / SIMD); 1 = exact
    prune_residual: bool = False  # slimming / npdg: also prune the residual streams (coupled groups, one per
    #   ResNet / MiT stage; DeepLabV3+ R18/R50/R101, SegFormer), ranked by mean |γ| over a stream's BNs
    #   (MiT: LayerNorms); the sparsity penalty then also covers those γ (see npdg.pruning.select / sparsity)
    finetune_iters: int = -1  # fine-tuning steps of the compacted model (its own poly decay); -1 = the method's:
    #   slimming 150, npdg 200, sfp 60 (see npdg/methods/); scaling a budget scales both stages
    finetune_lr: float = 0.0  # 0 = lr

    # --- DSP: differentiable style perturbation (dsp, npdg)
    dsp_level: str = "feature"  # feature (AdaIN on model.style_layer) | image (AdaIN generator)
    dsp_p: float = 0.5  # fraction of each batch replaced by perturbed samples
    generator: str = ""  # image level: generator.pt from `python -m npdg.dsp train`

    # --- sensitivity (npdg): which units react to style
    lam: float = 0.4  # w = lam * unary + (1 - lam) * binary; 1 = unary only, 0 = binary only
    sens_every: int = 50  # recompute the weights every this many sparse-training steps

    # --- running
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 2  # DataLoader worker processes
    seed: int = 0
    log_every: int = 20  # iterations between log lines
    eval_every: int = 0  # steps between source-val mIoU evaluations in train/finetune (val_miou rows of
    #   train_log.jsonl; rank 0); 0 = only at the end
    out: str = ""  # run directory ("" = runs/<method>-<model>-<timestamp>)
    ckpt_every: int = 100  # steps between resumable checkpoints (checkpoint.pt) inside a stage

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
        check_range(self, "lr", 0, None, low_open=True)
        for name in ("sparsity", "threshold", "finetune_lr"):
            check_range(self, name, 0, None)
        if self.flops_target == -1:  # (before ratio resolves: a given ratio or threshold chooses the prune)
            chosen = self.ratio != -1 or self.threshold > 0
            default = method.flops_target
            if default and self.mit_model:
                default = FLOPS_TARGET_MIT
            self.flops_target = 0.0 if chosen else default
        if self.ratio == -1:
            self.ratio = 0.3
        check_range(self, "ratio", 0, 1, high_open=True)
        check_range(self, "flops_target", 0, 1, high_open=True)
        if self.flops_target > 0 and self.threshold > 0:
            raise ConfigError("flops_target and threshold each choose what the prune removes: give one")
        check_range(self, "lam", 0, 1)
        check_range(self, "dsp_p", 0, 1)
        if self.finetune_iters == -1:
            self.finetune_iters = method.finetune_iters
        elif self.finetune_iters < 0:
            raise ConfigError(f"finetune_iters must be >= 0 (or -1: the method's default), got {self.finetune_iters}")
        check_at_least(self, round_to=1, sens_every=1, ckpt_every=1, workers=0, log_every=1, eval_every=0, val_num=0)
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
        from npdg.data.protocol import ProtocolError
        from npdg.data.protocol import parse_overrides as parse_protocols

        try:
            parse_protocols(self.eval_protocol)
        except ProtocolError as exc:
            raise ConfigError(f"eval_protocol: {exc}") from None
        self.validate_knobs()
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


def _apply(cfg: Config, values: dict, where: str) -> None:
    hints = typing.get_type_hints(Config)
    known = {f.name for f in dataclasses.fields(Config)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see --help for the keys"
            gone = (f" ({key} was removed: {REMOVED[key][0]}, measured and not adopted; see docs/results-history.md, "
                    f"last in commit {REMOVED_AT})") if key in REMOVED else ""
            raise ConfigError(f"{where}: unknown config key {key!r}; {hint}{gone}")
        setattr(cfg, key, coerce(value, hints[key], key))


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
