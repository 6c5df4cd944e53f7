"""The stage machine of a training run: train -> (prune -> fine-tune) -> evaluate, each stage calling only the
method's interface (npdg.methods.base.Method), resumable from checkpoint.pt. ``python -m npdg.train`` is its
command line (npdg.train); see there for the run directory and DDP.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import npdg
from npdg import checkpoint, cli
from npdg.builders import build_model, eval_datasets, eval_protocols, train_dataset
from npdg.config import Config
from npdg.knobs import REMOVED, REMOVED_AT, ConfigError
from npdg.loop import Context, fit, poly
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


def lr_factor(cfg, stage: str):
    """The LR multiplier of `stage` ("train" / "finetune") at its step k: each stage its own poly decay to 0."""
    return poly(cfg.iters if stage == "train" else cfg.finetune_iters, cfg.poly_power)


# --- stages -------------------------------------------------------------------------------------------

class Run:
    """One training run: its directory, its process context and the stage state machine."""

    def __init__(self, cfg: Config, run_dir: Path, ctx: Context):
        self.cfg, self.dir, self.ctx = cfg, run_dir, ctx

    def save_state(self, stage: str, step: int, model, opt=None, sched=None, method: Method | None = None):
        if not self.ctx.main:
            return
        checkpoint.save({
            "format": checkpoint.RUN_FORMAT, "version": npdg.__version__, "config": self.cfg.to_dict(),
            "stage": stage, "step": step, "model": model_payload(model),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            **(method.state() if method is not None else {}),
            "rng": checkpoint.rng_state(), "history": self.ctx.history,
        }, self.dir / checkpoint.STATE)

    def optimise(self, stage, model, method, loss_fn, iters, lr, resume):
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, stage))
        start = 0
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start = resume["step"]
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
            checkpoint=lambda step: self.save_state(stage, step, model, opt, sched, method),
            evaluate_fn=evaluate_fn)
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
        # a key added after the run started takes the value the run had (input_norm: off before it existed, the
        # copies ran the whole model at full resolution); a removed key is dropped at a value today's code matches
        saved = dict(state["config"])
        for key in set(saved) & set(REMOVED):
            if saved.pop(key) not in REMOVED[key][1]:
                raise ConfigError(f"{resume}: this run sets {key}={state['config'][key]}, removed since (last in "
                                  f"commit {REMOVED_AT}): resume it with that commit")
        cfg = Config(**{**Config().to_dict(), "input_norm": False, "dsp_branch": False, "adv_scale": 1.0, **saved})
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
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
