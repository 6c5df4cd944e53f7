"""Latency measurement: settings, inputs, models, the interleaved timing protocol and the ratios S, R, E.

See ``npdg.profile`` (the package docstring) for the protocol and the definitions."""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from npdg import cli

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ProfileError(cli.UsageError):
    """Bad input to the profiler; the CLI prints it as one line and exits with code 2."""


@dataclass
class Settings:
    device: str = "cpu"
    size: tuple = (512, 512)     # (H, W) of the random input
    batches: tuple = (1,)
    dtype: str = "fp32"          # fp32 | bf16 | fp16: the models and inputs are cast to it
    channels_last: bool = False
    compile: bool = False        # torch.compile each model for the latency runs (not for the layer table)
    warmup: int = 3              # untimed forwards per model (>= 1)
    runs: int = 0                # timed rounds; 0 = auto: min_runs..max_runs, until min_time s per model
    min_runs: int = 10
    max_runs: int = 500
    min_time: float = 2.0
    profile_runs: int = 3        # profiled forwards per model for the per-layer table; 0 = no table
    threads: int = 0             # torch intra-op threads on CPU; 0 = leave torch's default
    runtimes: tuple = ("eager",)  # eager | compile | onnxruntime | openvino (npdg.profile.runtimes)
    cudnn_benchmark: bool = True  # CUDA: cuDNN times its algorithms for each new shape (torch.backends.cudnn
    # .benchmark), as a fixed-shape deployment would; False = its heuristics, which pick slow kernels for some
    # pruned widths (the first H200 sweep: some pruned R50 convolutions 7x slower than dense for fewer FLOPs)


# --- inputs, models, devices ---------------------------------------------------------------------------


resolve_device = cli.resolve_device  # UsageError (exit 2) for a device this machine lacks


def load_checkpoint(path) -> nn.Module:
    """An npdg model file (or a training checkpoint holding one) as an eval-mode CPU model."""
    import npdg

    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"checkpoint {path} does not exist")
    try:
        model = npdg.load_model(path, map_location="cpu")
    except Exception as exc:  # torch.load / unpickling / format errors come as many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ProfileError(f"{path} is not an npdg model file ({reason})") from None
    return model.eval()


def checkpoint_pair(path, compare=None) -> list[tuple[str, nn.Module, str]]:
    """[(label, model, source)]: one model, a model and its --compare, or a run dir's dense.pt and final.pt."""
    path = Path(path)
    if path.is_dir():
        if compare is not None:
            raise ProfileError(f"{path} is a run directory (dense.pt vs final.pt); --compare takes no effect there")
        missing = [f for f in ("dense.pt", "final.pt") if not (path / f).is_file()]
        if missing:
            raise ProfileError(f"run directory {path} has no {' / '.join(missing)}")
        return [("dense", load_checkpoint(path / "dense.pt"), str(path / "dense.pt")),
                ("pruned", load_checkpoint(path / "final.pt"), str(path / "final.pt"))]
    pairs = [("dense" if compare is not None else "model", load_checkpoint(path), str(path))]
    if compare is not None:
        pairs.append(("pruned", load_checkpoint(compare), str(compare)))
    return pairs


def prepare(model: nn.Module, s: Settings) -> nn.Module:
    """The model in eval mode on the device, in the dtype and memory format of the settings."""
    model = model.eval().to(device=s.device, dtype=DTYPES[s.dtype])
    return model.to(memory_format=torch.channels_last) if s.channels_last else model


def make_input(batch: int, s: Settings, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *s.size, generator=gen).to(device=s.device, dtype=DTYPES[s.dtype])
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x


def count(model: nn.Module, s: Settings) -> dict:
    from npdg.pruning import flops, params

    return {"flops": flops(model, tuple(s.size), batch=1), "params": params(model),
            "widths": model.widths() if hasattr(model, "widths") else {}}


# --- latency -------------------------------------------------------------------------------------------


def _percentile(sorted_vals: list, q: float) -> float:
    pos = (len(sorted_vals) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(samples_ms: list, batch: int) -> dict:
    v = sorted(samples_ms)
    med = _percentile(v, 0.5)
    p25, p75 = _percentile(v, 0.25), _percentile(v, 0.75)
    return {"median_ms": med, "p10_ms": _percentile(v, 0.1), "p25_ms": p25, "p75_ms": p75,
            "p90_ms": _percentile(v, 0.9), "min_ms": v[0], "iqr_pct": 100 * (p75 - p25) / med if med else 0.0,
            "runs": len(v), "images_per_s": 1e3 * batch / med if med else float("inf"), "samples_ms": samples_ms}


def _timer(device: torch.device):
    if device.type == "cuda":
        def timed(fn):
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return timed


def measure(models: dict, batch: int, s: Settings) -> tuple[dict, dict]:
    """({name: latency summary}, {name: warm-up seconds}) of all models (eager modules or runtime runners
    from ``npdg.profile.runtimes``), interleaved (see the package docstring)."""
    device = torch.device(s.device)
    timed = _timer(device)
    x = make_input(batch, s)
    calls = {}
    for name, model in models.items():
        if hasattr(model, "bind"):  # a runtime's runner: converts the input for its runtime once, untimed
            calls[name] = model.bind(x)
            continue

        def call(model=model):
            with torch.inference_mode():
                model(x)
        calls[name] = call
    warm, last = {}, {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        for _ in range(max(1, s.warmup)):
            last[name] = timed(call)
        warm[name] = time.perf_counter() - t0
    slowest = max(last.values()) / 1e3
    rounds = s.runs or min(s.max_runs, max(s.min_runs, math.ceil(s.min_time / max(slowest, 1e-6))))
    samples = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # rotating order: no model always runs first
            samples[name].append(timed(calls[name]))
    return {name: summarize(v, batch) for name, v in samples.items()}, warm


def ratios(base: dict, other: dict, base_counts: dict, other_counts: dict) -> dict:
    """FLOPs factor, speedups and efficiencies of `other` against `base` (see the module docstring)."""
    r = base_counts["flops"] / other_counts["flops"] if other_counts["flops"] else float("inf")
    s = base["median_ms"] / other["median_ms"]
    paired = sorted(a / b for a, b in zip(base["samples_ms"], other["samples_ms"], strict=True))
    s_paired = _percentile(paired, 0.5)
    saving = (1 - 1 / s) / (1 - 1 / r) if r != 1 else None
    return {"flops_reduction": r, "flops_ratio": 1 / r, "params_ratio": other_counts["params"] / base_counts["params"],
            "speedup": s, "speedup_paired": s_paired, "efficiency": s / r, "efficiency_paired": s_paired / r,
            "time_savings_efficiency": saving}



def environment(s: Settings) -> dict:
    device = torch.device(s.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    return {"device": name, "device_type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE: no spin-wait on a busy machine
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "lscpu": _lscpu() if device.type == "cpu" else None}


def _lscpu() -> dict | None:
    """lscpu's model name, CPU count, threads per core and caches (None where lscpu is missing)."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache", "Flags")
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keep:
            value = value.strip()
            out[key.strip()] = " ".join(f for f in value.split() if f.startswith("avx")) if key.strip() == "Flags" \
                else value
    return out


def _load() -> list | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class _Measuring:
    """Flush denormals on CPU, set cuDNN's algorithm choice on CUDA (``Settings.cudnn_benchmark``; restored
    after) and record the load average around a measurement."""

    def __init__(self, s: Settings, report: dict):
        self.cpu = torch.device(s.device).type == "cpu"
        self.cudnn_benchmark = s.cudnn_benchmark
        self.report = report

    def __enter__(self):
        self.report["load_before"] = _load()
        self.flush = torch.set_flush_denormal(True) if self.cpu else False
        self.cudnn_before = torch.backends.cudnn.benchmark
        if not self.cpu:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def __exit__(self, *exc):
        if self.flush:
            torch.set_flush_denormal(False)
        torch.backends.cudnn.benchmark = self.cudnn_before
        self.report["load_after"] = _load()

