"""Train a segmentation model on one source domain and evaluate it on unseen target domains.

    python -m npdg.train                                  # defaults: the embedded synthetic benchmark
    python -m npdg.train --config run.yaml --iters=2000 --model=segformer_b0 --out runs/b0
    torchrun --standalone --nproc_per_node=8 -m npdg.train --device=cuda --batch_size=8

Writes RUN_DIR/config.json (resolved), train_log.jsonl, checkpoint.pt ({model, optimizer, scheduler,
step, config}), model.pt (npdg.save_model), metrics.json (mIoU in percent per domain), loss.png and
report.md. Multi-GPU: DDP is enabled when torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; rank 0 logs,
evaluates and writes checkpoints.

Methods implemented so far: ``erm`` (plain source training). The DSP / sparsity / pruning stages of
NPDG plug into this loop as they land.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import npdg
from npdg.config import Config, load_config, save_config
from npdg.serialization import model_payload

IGNORE_INDEX = 255


def setup_distributed(device_opt: str) -> tuple[torch.device, int, int]:
    """(device, rank, world_size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            return torch.device("cuda", local), rank, world
        return torch.device("cpu"), rank, world
    if device_opt == "auto":
        device_opt = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_opt)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device=cuda requested but torch sees no CUDA device")
    return device, 0, 1


def poly_lr(step: int, total: int, power: float) -> float:
    return (1 - step / total) ** power


def train_step(net, opt, images, labels, autocast=None) -> float:
    """One SGD step of the segmentation loss; returns the loss value (synchronises once, on .item())."""
    with autocast or nullcontext():
        logits = net(images)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def infinite(loader, sampler=None):
    """Endless batches; each pass is a new epoch (new shuffle, new augmentation draws)."""
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):  # workers are re-created per epoch and pick this up
            loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def build_loader(cfg: Config, rank: int, world: int):
    from npdg.data import build_dataset
    from npdg.data.transforms import TrainAugment

    synthetic = cfg.source.startswith("synthetic:")
    dataset = build_dataset(cfg.source, split="train", size=tuple(cfg.crop) if synthetic else None,
                            num=cfg.train_num if synthetic else None,
                            seed=cfg.seed, transform=TrainAugment(crop=tuple(cfg.crop)))
    sampler = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
        num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed))
    return loader, sampler


def eval_datasets(cfg: Config) -> dict:
    """{SPEC: dataset} for the source val split and every target; built before training so a bad
    SPEC or a missing folder fails in seconds, not after the run."""
    from npdg.data import build_dataset

    return {spec: build_dataset(spec, split="val", size=tuple(cfg.eval_size), num=cfg.val_num, seed=cfg.seed)
            for spec in [cfg.source] + list(cfg.targets)}


def evaluate_domains(model, datasets: dict, cfg: Config, device) -> dict:
    """{SPEC: {"miou": percent, "per_class": {...}}}."""
    from npdg.eval import evaluate

    return {spec: evaluate(model, ds, batch_size=cfg.batch_size, device=device, desc=spec)
            for spec, ds in datasets.items()}


def train(cfg: Config) -> dict:
    device, rank, world = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    main = rank == 0
    run_dir = Path(cfg.out or f"runs/{cfg.method}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
    val_sets = eval_datasets(cfg) if main else {}

    from npdg.models import create_model

    model = create_model(cfg.model, num_classes=cfg.num_classes,
                         **({"pretrained": cfg.pretrained} if cfg.pretrained else {})).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index]) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_lr(s, cfg.iters, cfg.poly_power))
    loader, sampler = build_loader(cfg, rank, world)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda"
                else nullcontext())

    log = open(run_dir / "train_log.jsonl", "w") if main else None
    batches = infinite(loader, sampler)
    seen, t0, losses = 0, time.perf_counter(), []
    bar = tqdm(range(1, cfg.iters + 1), desc=f"{cfg.method} {cfg.model}", disable=not main, dynamic_ncols=True)
    net.train()
    for step in bar:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss = train_step(net, opt, images, labels, autocast)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr or check the data")
        sched.step()
        seen += images.shape[0] * world
        losses.append(loss)
        if main and (step % cfg.log_every == 0 or step == cfg.iters):
            rate = seen / (time.perf_counter() - t0)
            row = {"step": step, "loss": sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]),
                   "lr": sched.get_last_lr()[0], "img_per_s": rate}
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{rate:.1f}")
        if main and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iters:
            from npdg.eval import evaluate

            miou = evaluate(model, val_sets[cfg.source], batch_size=cfg.batch_size, device=device)["miou"]
            tqdm.write(f"step {step}: source val mIoU {miou:.2f}%")
            net.train()
    train_time = time.perf_counter() - t0

    metrics = {}
    if main:
        log.close()
        torch.save({"model": model_payload(model), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "step": cfg.iters, "config": cfg.to_dict()},
                   run_dir / "checkpoint.pt")
        npdg.save_model(model, run_dir / "model.pt")
        domains = evaluate_domains(model, val_sets, cfg, device)
        metrics = {"method": cfg.method, "model": cfg.model, "miou_unit": "percent",
                   "train_images_per_s": seen / train_time, "train_seconds": train_time,
                   "domains": domains}
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_report(run_dir, cfg, metrics, losses)
        print(f"\nrun directory: {run_dir}")
        for spec, res in domains.items():
            print(f"  {spec:28s} mIoU {res['miou']:6.2f}%")
    if world > 1:
        torch.distributed.destroy_process_group()
    return metrics


def write_report(run_dir: Path, cfg: Config, metrics: dict, losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8)
    ax.set(xlabel="iteration", ylabel="cross-entropy", title=f"{cfg.method} {cfg.model}", yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png")
    plt.close(fig)
    lines = [f"# {cfg.method} · {cfg.model}", "",
             f"{cfg.iters} iterations, batch {cfg.batch_size}, crop {cfg.crop[0]}x{cfg.crop[1]}, "
             f"{metrics['train_images_per_s']:.1f} train images/s, {metrics['train_seconds']:.0f} s.", "",
             "| domain | mIoU (%) |", "|---|---|"]
    lines += [f"| {spec} | {res['miou']:.2f} |" for spec, res in metrics["domains"].items()]
    lines += ["", "![loss](loss.png)", ""]
    (run_dir / "report.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m npdg.train", description=__doc__.split("\n\n")[0],
                                     epilog="Any config key can be overridden as --key=value; "
                                            "see npdg/config.py for keys and defaults.")
    parser.add_argument("--config", help="YAML file of config keys")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        parser.error(str(exc).strip("'\""))
    from npdg.data import DatasetError, SpecError

    try:
        return train(cfg)
    except (SpecError, DatasetError, FileNotFoundError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
