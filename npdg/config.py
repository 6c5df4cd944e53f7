"""Run configuration: one dataclass with commented defaults, YAML files and ``--key=value`` overrides.

    cfg = load_config("run.yaml", ["--iters=200", "--model=segformer_b0"])

Precedence: dataclass defaults < YAML file < command-line overrides. The resolved config is written to
every run directory (config.json) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("erm",)  # grows as the pipeline lands: slimming, dsp, npdg


@dataclass
class Config:
    # --- what to train
    method: str = "erm"  # training recipe; one of METHODS
    model: str = "deeplabv3plus_r18"  # any name from npdg.models.available_models()
    num_classes: int = 19  # Cityscapes train ids
    pretrained: str = ""  # local ImageNet backbone state dict ("" = random init; no downloads)

    # --- data: the embedded synthetic benchmark by default; any eval SPEC works for targets
    source: str = "synthetic:source"  # training domain (SPEC, see npdg.eval --help)
    targets: list[str] = field(default_factory=lambda: [
        "synthetic:night", "synthetic:fog", "synthetic:rain", "synthetic:snow", "synthetic:painted"])
    crop: tuple[int, int] = (96, 192)  # training crop H, W (synthetic scenes are generated at this size)
    eval_size: tuple[int, int] = (96, 192)  # synthetic evaluation image size H, W
    train_num: int = 2000  # synthetic training scenes (ignored for on-disk datasets)
    val_num: int = 100  # images per evaluated domain (synthetic) / cap for on-disk (0 = all)

    # --- optimisation (SGD + poly schedule, as in the DG-segmentation literature)
    iters: int = 600  # optimiser steps
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU)

    # --- running
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 2  # DataLoader worker processes
    seed: int = 0
    log_every: int = 20  # iterations between log lines
    eval_every: int = 0  # iterations between source-val evaluations (0 = only at the end)
    out: str = ""  # run directory ("" = runs/<method>-<model>-<timestamp>)

    def validate(self) -> Config:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        for name in ("iters", "batch_size", "num_classes", "train_num"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("crop", "eval_size"):
            if len(getattr(self, name)) != 2 or min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be two positive ints (H, W), got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value, tp, key: str):
    """Convert a YAML/CLI value to the field's annotated type, with an error that names the key."""
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
            raise ValueError(value)
        if tp in (int, float, str):
            return tp(value)
        if origin is tuple:  # (H, W) given as "96x192", "96,192" or a YAML list
            parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
            return tuple(int(p) for p in parts)
        if origin is list:
            items = [p for p in value.split(",") if p] if isinstance(value, str) else list(value)
            return [str(p).strip() for p in items]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {tp}") from exc
    raise TypeError(f"config key {key!r}: unsupported type {tp}")


def _apply(cfg: Config, values: dict, where: str) -> None:
    hints = typing.get_type_hints(Config)
    known = {f.name for f in dataclasses.fields(Config)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in known:
            raise KeyError(f"{where}: unknown config key {key!r}; valid keys: {', '.join(sorted(known))}")
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
            raise ValueError(f"override {arg!r}: expected --key=value or --key value")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        out[key] = value
        i += 1
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    cfg = Config()
    if path:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys at the top level")
        _apply(cfg, data, str(path))
    if overrides:
        _apply(cfg, overrides if isinstance(overrides, dict) else parse_overrides(overrides), "command line")
    return cfg.validate()


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
