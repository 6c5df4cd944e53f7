"""The optimisation loop every training stage shares: resumable data order, DDP, checkpoints, logging.

A stage hands :func:`fit` a ``loss_fn(net, step, images, labels) -> (loss, logs)``; the method's loss
terms (DSP, sparsity) live beside their parts (``npdg.dsp``, ``npdg.pruning``, ``npdg.sensitivity``)
and are composed in ``npdg.train``.

AMP (``cfg.amp``): fit() runs loss_fn (forward + loss) under :func:`autocast`, bf16 on CUDA (no GradScaler:
bf16 has fp32's exponent range); the parts that need fp32 (the D-VAE, the sensitivity pass, the
segmentation loss) opt out with ``torch.autocast(..., enabled=False)`` where they run. On CPU amp is ignored.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from npdg.config import Config


class NonFiniteError(FloatingPointError):
    """The loss became NaN/inf; the message names the stage and step."""


@dataclass
class Context:
    """What every stage needs to know about the process it runs in."""

    cfg: Config
    device: torch.device
    rank: int = 0
    world: int = 1
    log: object = None  # open train_log.jsonl (rank 0) or None
    history: dict = field(default_factory=lambda: {"losses": {}, "seconds": {}, "images_per_s": {}})

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """DDP around ``model`` when distributed (CPU modules take device_ids=None)."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_mean_(self, tensors) -> None:
        """Average tensors across ranks in place (no-op on one process)."""
        if self.world == 1:
            return
        for t in tensors:
            torch.distributed.all_reduce(t)
            t.div_(self.world)


def amp_autocast(device, amp: bool):
    """The autocast context of a forward pass: bf16 autocast on a CUDA device when ``amp``, else a null
    context (amp is ignored on CPU; see :func:`announce_amp`). A fresh context manager per call."""
    if amp and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def autocast(ctx: Context):
    """:func:`amp_autocast` for this run's device and cfg.amp (used by fit and, via evaluate(amp=...), eval)."""
    return amp_autocast(ctx.device, ctx.cfg.amp)


def announce_amp(ctx: Context) -> None:
    """One stderr line (rank 0) when amp is asked for on a device where it is ignored; called once per run."""
    if ctx.cfg.amp and ctx.device.type != "cuda" and ctx.main:
        print(f"npdg: amp=true is ignored on {ctx.device.type} (bf16 autocast runs on CUDA only): training and "
              "evaluating in fp32", file=sys.stderr)


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per (seed, epoch), this rank's share of it, from a batch offset on.

    Unlike DataLoader(shuffle=True), the order is a pure function of (seed, epoch), so a resumed run
    sees exactly the batches the interrupted one would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} training samples give no full batch of {batch_size} on {world} process(es)")
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch: int, skip_batches: int) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[self.rank : self.per_rank * self.world : self.world]
        perm = perm[: self.batches_per_epoch * self.batch_size]
        return iter(perm[self.skip * self.batch_size :].tolist())

    def __len__(self):
        return (self.batches_per_epoch - self.skip) * self.batch_size


def batches(dataset, ctx: Context, start_step: int):
    """Endless (images, labels) batches on ctx.device, continuing after ``start_step`` batches."""
    cfg = ctx.cfg
    sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, ctx.rank, ctx.world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=cfg.workers, pin_memory=ctx.device.type == "cuda",
                                         timeout=cfg.data_timeout if cfg.workers > 0 else 0,  # a hung worker
                                         # its own generator: creating an iterator must not draw from the
                                         # global RNG (dropout / DSP noise), or a resume would shift it
                                         generator=torch.Generator().manual_seed(cfg.seed))
    epoch, skip = divmod(start_step, sampler.batches_per_epoch)
    while True:
        sampler.set_position(epoch, skip)
        if hasattr(dataset, "set_epoch"):  # workers are re-created per epoch and pick this up
            dataset.set_epoch(epoch)
        for images, labels in loader:
            yield images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        epoch, skip = epoch + 1, 0


def read_back(loss: torch.Tensor, logs: dict, opt, ctx: Context) -> tuple[float, str | None, dict]:
    """The step's one host read (a GPU sync), after the backward: (the loss, what became non-finite -- "loss",
    "gradients" or None, the same on every rank: one rank's NaN makes all ranks skip the step --, the logs
    with their tensors as floats). Everything is gathered on the device first, so the forward, the backward and
    the checks queue without waiting for each other."""
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    loss = loss.detach().float().reshape(())
    grads_ok = (torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all() if grads
                else torch.ones((), dtype=torch.bool, device=loss.device))
    flags = torch.stack([loss.isfinite(), grads_ok.to(loss.device)]).float()
    if ctx.world > 1:
        flags = flags.to(ctx.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    values = torch.cat([loss.reshape(1), flags.to(loss.device),
                        *(logs[k].detach().float().reshape(1).to(loss.device) for k in keys)]).tolist()
    value, loss_ok, grads_ok = values[:3]
    bad = None if loss_ok and grads_ok else "loss" if not loss_ok else "gradients"
    return value, bad, {**logs, **dict(zip(keys, values[3:], strict=True))}


def poly(total: int, power: float):
    return lambda step: max(0.0, 1 - step / max(total, 1)) ** power


def fit(ctx: Context, stage: str, model, dataset, loss_fn, opt, sched, iters: int, start: int = 0,
        extra_opts=(), sync_params=(), checkpoint=None, evaluate_fn=None) -> None:
    """Run steps start+1 .. iters of a stage.

    loss_fn(net, step, images, labels) -> (loss tensor, {name: float or 0-dim tensor}), run under :func:`autocast`
    (the tensors are read by :func:`read_back` with the loss, in the step's one sync);
    ``extra_opts`` step together with ``opt`` (e.g. the D-VAE's); ``sync_params``: parameters outside the
    DDP module whose gradients are averaged across ranks by hand; ``checkpoint(step)`` is called every
    cfg.ckpt_every steps (rank 0); ``evaluate_fn(step) -> mIoU (percent) or None`` every cfg.eval_every
    steps (rank 0 only; 0 = never), logged as {"stage", "step", "val_miou"} before that step's checkpoint;
    """
    cfg = ctx.cfg
    if start >= iters:
        return
    net = ctx.wrap(model)
    stream = batches(dataset, ctx, start)
    losses = ctx.history["losses"].setdefault(stage, [])
    seen, t0, evaluating = 0, time.perf_counter(), 0.0  # (evaluating: seconds in evaluate_fn, not in the rates)
    bar = tqdm(range(start + 1, iters + 1), initial=start, total=iters, desc=f"{stage} · {cfg.method} {cfg.model}",
               disable=not ctx.main, dynamic_ncols=True)
    postfix = {}
    model.train()
    window, skipped, durations = [], 0, []  # durations: wall seconds of the last steps (data wait included)
    for step in bar:
        step_start = time.perf_counter()
        images, labels = next(stream)
        with autocast(ctx):
            loss, logs = loss_fn(net, step, images, labels)
        opt.zero_grad(set_to_none=True)
        for o in extra_opts:
            o.zero_grad(set_to_none=True)
        loss.backward()  # (a non-finite loss gives non-finite gradients: the step is skipped below)
        ctx.all_mean_([p.grad for p in sync_params if p.grad is not None])
        value, bad, logs = read_back(loss, logs, opt, ctx)  # the step's one host sync
        if bad is not None:
            skipped += 1
            where = f"stage {stage!r}, step {step}: the {bad} became non-finite (loss {value})"
            if skipped > cfg.skip_nonfinite:
                raise NonFiniteError(f"{where}; the last good checkpoint is kept (lower --lr, check the data, "
                                     "or allow a few skips with --skip_nonfinite N)")
            tqdm.write(f"{where}: step skipped ({skipped}/{cfg.skip_nonfinite})")
            if ctx.log is not None:
                ctx.log.write(json.dumps({"stage": stage, "step": step, "skipped": bad}) + "\n")
            sched.step()
            continue
        opt.step()
        for o in extra_opts:
            o.step()
        sched.step()
        durations = durations[-7:] + [time.perf_counter() - step_start]
        seen += images.shape[0] * ctx.world
        window.append(value)
        if ctx.main and (step % cfg.log_every == 0 or step == iters):
            rate = seen / (time.perf_counter() - t0 - evaluating)
            row = {"stage": stage, "step": step, "loss": sum(window) / len(window),
                   "lr": sched.get_last_lr()[0], "img_per_s": rate, **logs}
            losses.append([step, row["loss"]])
            window = []
            if ctx.log is not None:
                ctx.log.write(json.dumps(row) + "\n")
                ctx.log.flush()
            postfix.update(loss=f"{row['loss']:.3f}", img_s=f"{rate:.1f}")
            bar.set_postfix(postfix)
        if evaluate_fn is not None and ctx.main and cfg.eval_every and step % cfg.eval_every == 0:
            t_eval = time.perf_counter()
            miou = evaluate_fn(step)
            evaluating += time.perf_counter() - t_eval
            ctx.history.setdefault("val_miou", {}).setdefault(stage, []).append([step, miou])
            if ctx.log is not None:
                ctx.log.write(json.dumps({"stage": stage, "step": step, "val_miou": miou}) + "\n")
                ctx.log.flush()
            postfix["val_miou"] = "n/a" if miou is None else f"{miou:.2f}"
            bar.set_postfix(postfix)
        if checkpoint is not None and step % cfg.ckpt_every == 0 and step < iters:
            checkpoint(step)
    elapsed = time.perf_counter() - t0
    ctx.history.setdefault("step_seconds", {})[stage] = durations  # (the dry run prices a budget from these)
    ctx.history["seconds"][stage] = ctx.history["seconds"].get(stage, 0.0) + elapsed
    ctx.history["images_per_s"][stage] = seen / max(elapsed - evaluating, 1e-9)
