"""Train on one source domain, prune what reacts to style, fine-tune, evaluate on unseen domains.

    python -m npdg.train                                  # NPDG on the embedded benchmark (defaults)
    python -m npdg.train --method slimming --ratio 0.4 --out runs/slim
    python -m npdg.train --preset quick --method erm      # every method end to end in ~2 minutes
    python -m npdg.train --resume runs/slim               # continue an interrupted run
    torchrun --standalone --nproc_per_node=8 -m npdg.train --device=cuda --batch_size=8

A method is a unit of npdg/methods/ (one file each, behind npdg.methods.base.Method): which stages run,
which loss terms a step adds, how it prunes and what it keeps for a resume. Run's stages call only that interface.

    erm       train (cross-entropy)                                   -> evaluate
    dsp       train (cross-entropy on style-perturbed batches)        -> evaluate
    slimming  train (+ s·Σ|γ|) -> prune + compact -> fine-tune        -> evaluate
    npdg      train (DSP + s·Σ w·|γ|, w = style sensitivity) -> prune + compact -> fine-tune (DSP) -> evaluate
    sfp       train (smallest-norm filters zeroed every sfp_every steps) -> prune + compact -> fine-tune -> evaluate
    shade     train (CE on clean + style-hallucinated rows + JSD consistency) -> evaluate

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
from npdg.loop import Context, IterateAverage, fit, poly
from npdg.methods import build_method, method_class
from npdg.methods.base import Method
from npdg.serialization import model_from_payload, model_payload, save_model


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


def lr_factor(cfg, stage: str):
    """The LR multiplier of `stage` ("train" / "finetune") at its step k (see Config.lr_schedule)."""
    if cfg.lr_schedule == "run" and cfg.prunes:
        decay, offset = poly(cfg.iters + cfg.finetune_iters, cfg.poly_power), cfg.iters if stage == "finetune" else 0
        return lambda k: decay(offset + k)
    return poly(cfg.iters if stage == "train" else cfg.finetune_iters, cfg.poly_power)


# --- stages -------------------------------------------------------------------------------------------

class Run:
    """One training run: its directory, its process context and the stage state machine."""

    def __init__(self, cfg: Config, run_dir: Path, ctx: Context):
        self.cfg, self.dir, self.ctx = cfg, run_dir, ctx

    def save_state(self, stage: str, step: int, model, opt=None, sched=None, method: Method | None = None,
                   average=None):
        if not self.ctx.main:
            return
        checkpoint.save({
            "format": checkpoint.RUN_FORMAT, "version": npdg.__version__, "config": self.cfg.to_dict(),
            "stage": stage, "step": step, "model": model_payload(model),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            **(method.state() if method is not None else {}),
            "average": average.state() if average is not None else None,
            "rng": checkpoint.rng_state(), "history": self.ctx.history,
        }, self.dir / checkpoint.STATE)

    def optimise(self, stage, model, method, loss_fn, iters, lr, resume):
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
            extra_opts=method.extra_opts, sync_params=method.sync_params,
            checkpoint=lambda step: self.save_state(stage, step, model, opt, sched, method, average),
            evaluate_fn=evaluate_fn, average=average)
        if average is not None:
            average.apply(model)
            self.ctx.history["averaged_iterates"] = {stage: average.count}
        self.ctx.history.setdefault("steps", {})[stage] = iters  # what ran (metrics.json "steps"; iters: see budget)

    def stage_train(self, model, method, resume):
        cfg = self.cfg
        self.optimise("train", model, method, method.train_loss_fn(model), cfg.iters, cfg.lr, resume)
        method.end_train(model)
        if self.ctx.main:
            save_model(model, self.dir / "dense.pt", config=self.cfg.to_dict())
            method.save_files(self.dir)
        return model

    def stage_prune(self, model, method):
        return method.prune(model, self.dir)

    def stage_finetune(self, model, method, resume):
        cfg = self.cfg
        self.optimise("finetune", model, method, method.finetune_loss_fn(model), cfg.finetune_iters,
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
        stages = method_class(cfg.method).stages()
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
        method = build_method(ctx, model)
        if state is not None:
            method.resume(state, self.dir)
            checkpoint.set_rng_state(state["rng"])  # last: building the above must not shift it
        else:  # a run is resumable from its first second on: a kill before the first step loses nothing
            self.save_state("train", 0, model, method=method)
            if ctx.main:
                checkpoint.write_json(self.dir / "config.json", cfg.to_dict())
        metrics = {}
        for stage in stages[stages.index(start_stage):]:
            resume = state if (state is not None and stage == start_stage and state["step"] > 0) else None
            if stage == "train":
                model = self.stage_train(model, method, resume)
                nxt = stages[stages.index(stage) + 1]
            elif stage == "prune":
                model = self.stage_prune(model, method)
                nxt = "finetune"
            elif stage == "finetune":
                model = self.stage_finetune(model, method, resume)
                nxt = "evaluate"
            else:
                metrics = self.stage_evaluate(model)
                nxt = "done"
            self.save_state(nxt, 0, model, method=method)
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
