"""A dry run: before a day of GPU time, check everything a config names and price the full budget.

    python -m npdg.train --preset gta5_cityscapes_r50 --source gta5:/data/gta5 \\
        --targets cityscapes:/data/cs,bdd100k:/data/bdd,mapillary:/data/mapillary \\
        --pretrained /weights/resnet50.pth --dry_run

In order, each failure one line and exit 2 before any step: every dataset root, split file and the label
encoding of its first samples (the loaders reject labels in another encoding), the weights / generator
files (a weights file for another architecture is an error), the model. Then a few REAL steps of every
stage the method runs -- train (with one sensitivity pass for npdg), prune + compact, fine-tune, and an
evaluation of one image per SPEC at its protocol's size -- at the config's crop, on this machine's device
(CPU: batch 2 unless --dry_run_batch; CUDA: the config's batch). It prints the steady step time, the data
loader's throughput against it, peak memory, an estimate of GPU memory at the config's batch, and what
the full budget will cost on this device (times scale linearly with the batch when the dry run used a
smaller one). Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from npdg import cli
from npdg.config import Config


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _device(cfg: Config) -> tuple[torch.device, str]:
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu"), f"device={cfg.device} is not available here: the dry run uses the CPU"
    return cli.resolve_device(want), ""


def check_data(cfg: Config) -> tuple:
    """Build the training set and every evaluation set (roots, split files) and decode the first samples'
    labels (encoding); (training set, {SPEC: evaluation set}). Raises the loaders' one-line errors."""
    from npdg.builders import eval_datasets, train_dataset
    from npdg.data import DatasetError
    from npdg.data.labels import IGNORE_INDEX

    train_set, val_sets = train_dataset(cfg), eval_datasets(cfg)
    for spec, ds in {f"{cfg.source} (train)": train_set, **val_sets}.items():
        for i in range(min(2, len(ds))):
            _, label = ds.raw(i)  # the loaders raise DatasetError naming the file for ids outside their encoding
            if (label == IGNORE_INDEX).all():  # e.g. train-id PNGs where GTA5 label ids are expected
                raise DatasetError(f"{spec}: no pixel of sample {ds.name(i)!r} maps to a class -- labels in "
                                   "another encoding than this loader reads?")
    return train_set, val_sets


class _SavedBytes:
    """Bytes of the distinct tensors autograd saves for backward during a block: the activation memory."""

    def __init__(self):
        self.seen, self.total = set(), 0

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.total += key[1]
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def dry_run(cfg: Config, batch: int | None = None, steps: int = 2, out=None) -> dict:
    """Run the checks and the measured steps; print the projection (to ``out``, default stdout); return every
    number as a dict."""
    out = out or sys.stdout
    from npdg.builders import build_model, eval_protocols
    from npdg.eval import evaluate
    from npdg.loop import Context, batches
    from npdg.methods import build_method
    from npdg.pruning import params
    from npdg.run import Run

    t_start = time.perf_counter()
    cfg.check_files()
    device, note = _device(cfg)
    if note:
        print(f"note: {note}", file=out)
    train_set, val_sets = check_data(cfg)  # (the dry run's steps use the same data: only the batch differs)
    counts = {f"{cfg.source} (train)": len(train_set), **{spec: len(ds) for spec, ds in val_sets.items()}}
    model = build_model(cfg)
    b = batch or (cfg.batch_size if device.type == "cuda" else min(cfg.batch_size, 2))
    workers = min(cfg.workers, os.cpu_count() or 1)
    small = dataclasses.replace(
        cfg, iters=steps, finetune_iters=1 if cfg.prunes else 0, batch_size=b, val_num=1, dsp_warmup=0.0,
        sens_every=10**9, sens_batch=min(cfg.sens_batch, b), ckpt_every=10**9, log_every=10**9,
        workers=workers, device=str(device), out="", eval_every=0,
        shade_every=1, shade_k=min(cfg.shade_k, b))  # shade: the measured steps hallucinate (a basis from step 1)
    ctx = Context(small, device)
    model = model.to(device)
    result: dict = {"parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
                    "batch": b, "config_batch": cfg.batch_size, "crop": list(cfg.crop), "workers": workers,
                    "images": counts, "method": cfg.method, "model": cfg.model}
    with tempfile.TemporaryDirectory(prefix="npdg-dry-run-") as tmp:
        run = Run(small, Path(tmp), ctx)
        run.train_set = train_set
        method = build_method(ctx, model)
        sens_s = []
        train_loss_fn = method.train_loss_fn

        def timed_loss_fn(m):
            inner = train_loss_fn(m)

            def loss_fn(net, step, images, labels):
                if step == steps:  # the activation memory of one real step of this recipe
                    with _SavedBytes() as saved:
                        res = inner(net, step, images, labels)
                    result["activation_bytes"] = saved.total
                    return res
                return inner(net, step, images, labels)
            return loss_fn

        method.train_loss_fn = timed_loss_fn
        if hasattr(method, "refresh_sensitivity"):  # npdg
            refresh = method.refresh_sensitivity

            def timed_refresh(m, images):
                t = time.perf_counter()
                refresh(m, images)
                sens_s.append(time.perf_counter() - t)

            method.refresh_sensitivity = timed_refresh
        run.stage_train(model, method, None)
        result["sensitivity_s"] = sens_s[0] if sens_s else 0.0
        steps_s = ctx.history["step_seconds"]["train"]
        result["first_step_s"] = steps_s[0]  # one-off costs (kernel compilation, workers) + the sensitivity pass
        result["train_step_s"] = min(steps_s[1:] or [steps_s[0] - result["sensitivity_s"]])
        if cfg.prunes:
            small_model = run.stage_prune(model, method)
            run.stage_finetune(small_model, method, None)
            result["finetune_step_s"] = ctx.history["step_seconds"]["finetune"][-1]
            result["final_params_fraction"] = params(small_model) / params(model)
        else:
            small_model = model
        # data loading alone at this batch: can the loader feed the step?
        stream = batches(run.train_set, ctx, 0)
        next(stream)
        t, n = time.perf_counter(), 3
        for _ in range(n):
            next(stream)
        result["data_img_per_s"] = n * b / (time.perf_counter() - t)
        del stream
        # one image per SPEC at its protocol's size
        eval_s = {}
        for spec, proto in eval_protocols(cfg).items():
            t = time.perf_counter()
            r = evaluate(small_model, torch.utils.data.Subset(val_sets[spec], [0]), batch_size=1, device=device,
                         progress=False, **proto.eval_kwargs())
            eval_s[spec] = {"seconds_per_image": time.perf_counter() - t, "protocol": str(proto),
                            "size": r["sizes"][0]}
        result["eval"] = eval_s
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        result["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _project(cfg, result)
    result["dry_run_seconds"] = time.perf_counter() - t_start
    _print(cfg, result, out)
    return result


def _project(cfg: Config, r: dict) -> None:
    """The full budget on this device: steps x steady step time, scaled to the config's batch."""
    scale = cfg.batch_size / r["batch"]
    train = cfg.iters * r["train_step_s"] * scale
    sens = math.ceil(cfg.iters / cfg.sens_every) * r["sensitivity_s"] if cfg.method == "npdg" else 0.0
    finetune = cfg.finetune_iters * r.get("finetune_step_s", 0.0) * scale
    n_models = 2 if cfg.prunes else 1
    evaluation = n_models * sum(e["seconds_per_image"] * r["images"].get(spec, 1) for spec, e in r["eval"].items())
    r["projection_s"] = {"train": train, "sensitivity": sens, "finetune": finetune, "evaluate": evaluation,
                         "total": train + sens + finetune + evaluation}
    # GPU memory at the config's batch: weights + grads + optimiser state + activations (linear in batch)
    per_param = 4 * (2 + (2 if cfg.optimizer == "adamw" else 1))  # fp32 weight + grad + momentum (Adam: 2)
    r["memory_estimate_bytes"] = {"weights_grads_optimizer": r["parameters"] * per_param,
                                  "activations": r.get("activation_bytes", 0) * scale}
    r["memory_estimate_bytes"]["total"] = sum(r["memory_estimate_bytes"].values())


def _print(cfg: Config, r: dict, out) -> None:
    p, m = r["projection_s"], r["memory_estimate_bytes"]
    h, w = cfg.crop
    lines = [f"dry run: {cfg.method} {cfg.model}{' (preset ' + cfg.preset + ')' if cfg.preset else ''} on "
             f"{r['device']} -- every check passed ({_fmt_s(r['dry_run_seconds'])})"]
    lines += [f"  data   {spec}: {n} images" for spec, n in r["images"].items()]
    if cfg.pretrained:
        lines.append(f"  weights {cfg.pretrained}: loaded into {cfg.model}")
    lines.append(f"  step   train {r['train_step_s']:.2f} s at batch {r['batch']}, {h}x{w} "
                 f"(first step {r['first_step_s']:.2f} s)"
                 + (f"; sensitivity pass {r['sensitivity_s']:.2f} s every {cfg.sens_every} steps"
                    if cfg.method == "npdg" else "")
                 + (f"; fine-tune {r['finetune_step_s']:.2f} s" if "finetune_step_s" in r else ""))
    step_rate = r["batch"] / r["train_step_s"]
    bound = "data-bound: raise --workers" if r["data_img_per_s"] < step_rate else "compute-bound"
    lines.append(f"  data   loader {r['data_img_per_s']:.1f} img/s with {r['workers']} workers vs "
                 f"{step_rate:.1f} img/s trained -> {bound}")
    for spec, e in r["eval"].items():
        lines.append(f"  eval   {spec}: {e['protocol']} -> {e['size'][0]}x{e['size'][1]}, "
                     f"{e['seconds_per_image']:.2f} s/image")
    lines.append(f"  memory peak {_gb(r['peak_memory_bytes'])} ({'CUDA allocated' if 'cuda' in r['device'] else 'RSS'})"
                 f"; at batch {cfg.batch_size}: ~{_gb(m['total'])} GPU memory (weights+grads+optimizer "
                 f"{_gb(m['weights_grads_optimizer'])}, activations {_gb(m['activations'])}, "
                 f"{'bf16 autocast' if cfg.amp and 'cuda' in r['device'] else 'fp32'})")
    scaled = f", times scaled x{cfg.batch_size / r['batch']:.0f} from batch {r['batch']}" \
        if cfg.batch_size != r["batch"] else ""
    lines.append(f"  budget on this device{scaled}: train {cfg.iters} x {r['train_step_s']:.2f} s = "
                 f"{_fmt_s(p['train'])}"
                 + (f" + sensitivity {_fmt_s(p['sensitivity'])}" if p["sensitivity"] else "")
                 + (f" + fine-tune {cfg.finetune_iters} steps {_fmt_s(p['finetune'])}" if p["finetune"] else "")
                 + f" + evaluation {_fmt_s(p['evaluate'])} = {_fmt_s(p['total'])}")
    print("\n".join(lines), file=out)
