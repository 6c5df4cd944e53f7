"""What a run is built from, given its config: the training set, the fresh model, the evaluation protocols and
val sets, the FLOPs-counting size. Shared by the stage machine (npdg.run), the dry run, the report and the methods
(they import it; it imports none of them).
"""

from __future__ import annotations

from npdg.config import Config


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


def flops_size(cfg) -> tuple[int, int]:
    """The input size FLOPs are counted at: eval_size on the embedded benchmark, the training crop otherwise."""
    return tuple(cfg.eval_size) if cfg.source.startswith("synthetic:") else tuple(cfg.crop)
