"""Profile segmentation models: FLOPs, params, latency -- and where FLOPs savings did not become time.

    python -m npdg.profile --checkpoint runs/x                   # a run directory: dense.pt vs final.pt
    python -m npdg.profile --checkpoint dense.pt --compare pruned.pt --batch 1 8 --size 512x1024 \\
        --device cuda --dtype bf16 --channels-last --json prof.json --plot prof.png
    python -m npdg.profile --checkpoint final.pt                 # one model: latency + per-layer shares
    python -m npdg.profile --sweep deeplabv3plus_r50 --size 256x512 --ratios 0,0.1,0.2,0.3,0.4,0.5 \\
        --round_to 1,8 --plot sweep.png --json sweep.json        # random-γ prune + compact at each ratio

Definitions, per batch size B, for a dense model D and a pruned model P:
    FLOPs reduction factor  R = FLOPs(D) / FLOPs(P)   (``npdg.pruning.flops``: one forward at --size, a
                                                        multiply-add = 2 FLOPs, matrix ops only)
    wall-clock speedup      S = median latency(D) / median latency(P)
    efficiency              E = S / R -- 1.0: every FLOP saved became time saved (time proportional to
                            FLOPs); 0.8 = the pruned model runs 0.8x as fast as its FLOPs promise. A
                            pruned model that saves no time at all still gets E = 1 / R (not 0), so the
                            report also gives the time-savings efficiency (1 - 1/S) / (1 - 1/R): the
                            fraction of the FLOPs saving realised as time (0 = none, 1 = all).
    S_paired / E_paired     the same from the median of per-round ratios (see Latency): robust to load
                            that drifts during the run (a busy shared machine).

Latency: the models of one comparison are measured in the same run, interleaved: after --warmup calls
each, every round times one forward (``torch.inference_mode``) of every model, in a rotating order, so
slow drifts of the machine hit all models alike. CPU: ``time.perf_counter``; CUDA: CUDA events around
each forward, synchronized before it. --runs N rounds, or by default as many as make the slowest model's
timed total reach --min-time seconds (at least --min-runs). Reported: median, p10/p25/p75/p90, min,
IQR in % of the median, images/s = B / median. --compile (torch.compile) compiles during warm-up.

Per-layer table (torch.profiler): every module's forward is wrapped in a profiler range
(``record_function("npdg.layer:<module path>")``) by forward hooks; a layer's *self* time is its range
minus the ranges of the modules it calls (so a block's residual add or a decoder's interpolate stay with
the block), CPU wall time on CPU, kernel time on CUDA, averaged over --profile-runs forwards of the eager
model (also with --compile). Self FLOPs come from ``FlopCounterMode`` read at the same hooks; they sum to
``npdg.pruning.flops``. Zero-FLOP layers (BatchNorm, ReLU, pooling, interpolation, adds) count 0 FLOPs.
In a comparison (profiled totals T_D, T_P; FLOPs per image f_D, f_P of a layer, F_D, F_P of the model):
    lost time   = (f_D - f_P) * T_D / F_D - (t_D - t_P): the time the layer's FLOPs saving should have
                  saved at the dense model's average cost per FLOP, minus the time it did save. The lost
                  times of all layers sum to T_P - T_D / R = T_P (1 - E), the whole gap; an unpruned
                  layer's is t_P - t_D (noise), a zero-FLOP layer that got faster has a negative one.
    own E       = (t_D / t_P) / (f_D / f_P) for a layer whose FLOPs changed: 1 = its time shrank with its
                  own FLOPs. Large lost time with own E ~ 1: the saved FLOPs were cheap ones (the layer runs
                  more FLOPs per ms than the model average); own E < 1: the pruned shape runs less efficiently.
The rows with the largest lost time are where FLOPs savings did not become time.

Sweep: the model is built with random weights, every prunable unit gets a random score (one draw, shared
by every ratio and round_to), and ``npdg.pruning.select_masks(scores=..., ratio=r, round_to=k)`` +
``npdg.pruning.compact`` build each pruned model; all of them are then measured together with the dense
one. The plot shows speedup S against the FLOPs reduction factor R, one line per round_to (and batch),
with the ideal diagonal S = R and the E = 0.8 line. --layers-at r adds the per-layer comparison of the
dense model with the ratio-r model of every round_to.

On CPU, denormal floats are flushed to zero while measuring (random weights can produce them; trained
models rarely do, and both sides of a comparison get the same treatment).

Bad input (a file that is not an npdg model, an unknown model name, --device cuda without CUDA, a
non-positive size or batch): one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from npdg import checkpoint, cli

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYER_PREFIX = "npdg.layer:"
ROOT = "(model)"


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
    """({name: latency summary}, {name: warm-up seconds}) of all models, interleaved (module docstring)."""
    device = torch.device(s.device)
    timed = _timer(device)
    x = make_input(batch, s)
    calls = {}
    for name, model in models.items():
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


# --- per-layer profile ---------------------------------------------------------------------------------


class _LayerHooks:
    """Forward hooks that wrap every module's forward in a profiler range and count its self FLOPs."""

    def __init__(self, model: nn.Module):
        self.types = {}
        self.handles = []
        self.stack = []
        self.counter = None
        self.self_flops = defaultdict(int)
        for name, module in model.named_modules():
            name = name or ROOT
            self.types[name] = type(module).__name__
            self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, name)))
            self.handles.append(module.register_forward_hook(functools.partial(self._exit, name)))

    def _flops_now(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def _enter(self, name, module, args):
        rf = torch.autograd.profiler.record_function(LAYER_PREFIX + name)
        rf.__enter__()
        self.stack.append([rf, self._flops_now(), 0])

    def _exit(self, name, module, args, output):
        rf, start, children = self.stack.pop()
        rf.__exit__(None, None, None)
        inclusive = self._flops_now() - start
        self.self_flops[name] += inclusive - children
        if self.stack:
            self.stack[-1][2] += inclusive

    def remove(self):
        for h in self.handles:
            h.remove()


def _self_times(events, cuda: bool) -> tuple[dict, float]:
    """({layer name: summed self time (ms)}, summed time of the whole model's range) from profiler events;
    a layer's self time is its range minus its nearest layer sub-ranges."""
    def total(evt):
        return (evt.device_time_total if cuda else evt.cpu_time_total) / 1e3

    def nested(evt):  # total time of the nearest layer ranges below evt
        out = 0.0
        for ch in evt.cpu_children:
            out += total(ch) if ch.name.startswith(LAYER_PREFIX) else nested(ch)
        return out

    times, root = defaultdict(float), 0.0
    for evt in events:
        if evt.name.startswith(LAYER_PREFIX):
            times[evt.name[len(LAYER_PREFIX):]] += max(0.0, total(evt) - nested(evt))
            if evt.name == LAYER_PREFIX + ROOT:
                root += total(evt)
    return times, root


def layer_profile(model: nn.Module, batch: int, s: Settings) -> dict:
    """{"total_ms", "flops", "layers": [{name, type, flops, time_ms}]}: self FLOPs per image and self time of
    one forward of `batch` images per module (averaged over s.profile_runs profiled forwards after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    cuda = torch.device(s.device).type == "cuda"
    x = make_input(batch, s)
    hooks = _LayerHooks(model)
    try:
        with torch.inference_mode():
            hooks.counter = FlopCounterMode(display=False)
            with hooks.counter:
                model(x)
            hooks.counter = None
            model(x)  # warm-up with the hooks on
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                for _ in range(s.profile_runs):
                    model(x)
                if cuda:
                    torch.cuda.synchronize()
    finally:
        hooks.remove()
    times, root = _self_times(prof.events(), cuda)
    runs = max(1, s.profile_runs)
    layers = [{"name": n, "type": hooks.types[n], "flops": int(hooks.self_flops.get(n, 0)) // batch,
               "time_ms": times.get(n, 0.0) / runs} for n in hooks.types]
    return {"batch": batch, "total_ms": root / runs,
            "flops": sum(r["flops"] for r in layers), "layers": layers}


def by_type(layers: list, keys: tuple) -> list:
    """Sum the numeric `keys` of per-layer rows per group (module type; "T (own ops)" for the functional ops
    a non-leaf module of type T runs itself), sorted by the last key, largest first."""
    out: dict = {}
    for r in layers:
        agg = out.setdefault(r["group"], {"type": r["group"], **{k: 0 for k in keys}})
        for k in keys:
            agg[k] += r[k]
    return sorted(out.values(), key=lambda a: -a[keys[-1]])


def _mark_groups(prof: dict) -> None:
    names = [r["name"] for r in prof["layers"]]
    parents = {n.rsplit(".", 1)[0] if "." in n else ROOT for n in names if n != ROOT}  # non-leaf modules
    for r in prof["layers"]:
        r["group"] = f"{r['type']} (own ops)" if r["name"] in parents else r["type"]


def compare_layers(dense: dict, pruned: dict) -> dict:
    """Per-layer comparison rows sorted by lost time (module docstring) + the per-type aggregate."""
    _mark_groups(dense)
    _mark_groups(pruned)
    prow = {r["name"]: r for r in pruned["layers"]}
    td, tp = dense["total_ms"], pruned["total_ms"]
    fp = pruned["flops"] or 1
    ms_per_flop = td / dense["flops"] if dense["flops"] else 0.0
    rows = []
    for d in dense["layers"]:
        p = prow.get(d["name"], {"flops": 0, "time_ms": 0.0})
        own = None
        if d["flops"] != p["flops"] and p["flops"] and p["time_ms"] > 0:
            own = (d["time_ms"] / p["time_ms"]) / (d["flops"] / p["flops"])
        rows.append({"name": d["name"], "type": d["type"], "group": d["group"],
                     "flops_dense": d["flops"], "flops_pruned": p["flops"],
                     "time_dense_ms": d["time_ms"], "time_pruned_ms": p["time_ms"],
                     "flops_share_pruned": p["flops"] / fp, "time_share_pruned": p["time_ms"] / tp if tp else 0.0,
                     "lost_ms": (d["flops"] - p["flops"]) * ms_per_flop - (d["time_ms"] - p["time_ms"]),
                     "own_efficiency": own})
    rows.sort(key=lambda r: -r["lost_ms"])
    keys = ("flops_dense", "flops_pruned", "time_dense_ms", "time_pruned_ms", "lost_ms")
    types = by_type(rows, keys)
    for t in types:
        t["flops_share_pruned"] = t["flops_pruned"] / fp
        t["time_share_pruned"] = t["time_pruned_ms"] / tp if tp else 0.0
        changed = t["flops_dense"] != t["flops_pruned"] and t["flops_pruned"] and t["time_pruned_ms"] > 0
        t["own_efficiency"] = ((t["time_dense_ms"] / t["time_pruned_ms"]) / (t["flops_dense"] / t["flops_pruned"])
                               if changed else None)
    return {"batch": dense["batch"], "total_dense_ms": td, "total_pruned_ms": tp,
            "lost_ms": tp - td * fp / dense["flops"] if dense["flops"] else 0.0,
            "efficiency_profiled": (td / tp) / (dense["flops"] / fp) if tp and dense["flops"] else None,
            "rows": rows, "by_type": types}


def single_layers(prof: dict) -> dict:
    _mark_groups(prof)
    total_f, total_t = prof["flops"] or 1, prof["total_ms"] or 1.0
    rows = [{**r, "flops_share": r["flops"] / total_f, "time_share": r["time_ms"] / total_t} for r in prof["layers"]]
    rows.sort(key=lambda r: -r["time_ms"])
    types = by_type(rows, ("flops", "time_ms"))
    for t in types:
        t["flops_share"], t["time_share"] = t["flops"] / total_f, t["time_ms"] / total_t
    return {"batch": prof["batch"], "total_ms": prof["total_ms"], "rows": rows, "by_type": types}


# --- the two modes -------------------------------------------------------------------------------------


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
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _load() -> list | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class _Measuring:
    """Flush denormals on CPU and record the load average around a measurement."""

    def __init__(self, s: Settings, report: dict):
        self.cpu = torch.device(s.device).type == "cpu"
        self.report = report

    def __enter__(self):
        self.report["load_before"] = _load()
        self.flush = torch.set_flush_denormal(True) if self.cpu else False

    def __exit__(self, *exc):
        if self.flush:
            torch.set_flush_denormal(False)
        self.report["load_after"] = _load()


def _compiled(models: dict, s: Settings) -> dict:
    if not s.compile:
        return models
    torch._dynamo.reset()
    return {name: torch.compile(m, dynamic=False) for name, m in models.items()}


def profile_checkpoints(entries: list, s: Settings) -> dict:
    """Report for one model, or for a dense model and a pruned one (entries from checkpoint_pair)."""
    report = {"mode": "compare" if len(entries) == 2 else "single", "settings": asdict(s), "env": environment(s),
              "models": {}, "latency": {}, "comparison": {}, "layers": None}
    models = {}
    for label, model, source in entries:
        model = prepare(model, s)
        models[label] = model
        report["models"][label] = {"source": source, "name": getattr(model, "registry_name", ""), **count(model, s)}
    with _Measuring(s, report):
        timed = _compiled(models, s)
        for b in s.batches:
            lat, warm = measure(timed, b, s)
            report["latency"][str(b)] = lat
            report.setdefault("warmup_s", {})[str(b)] = warm
            if len(entries) == 2:
                report["comparison"][str(b)] = ratios(lat["dense"], lat["pruned"], report["models"]["dense"],
                                                      report["models"]["pruned"])
        if s.profile_runs:
            b = s.batches[0]
            profs = {label: layer_profile(m, b, s) for label, m in models.items()}
            if len(entries) == 2:
                report["layers"] = compare_layers(profs["dense"], profs["pruned"])
            else:
                report["layers"] = single_layers(profs["model"])
    return report


def _parse_floats(text: str, what: str, lo: float, hi: float) -> list:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not lo <= v < hi for v in vals):
        raise argparse.ArgumentTypeError(f"{what}: every value must be in [{lo}, {hi}), got {text!r}")
    return vals


def sweep(model_name: str, ratio_list: list, round_tos: list, s: Settings, seed: int = 0,
          layers_at: float | None = None, num_classes: int = 19) -> dict:
    """Random-γ pruning of `model_name` at every ratio x round_to, measured against the dense model."""
    from npdg.models import available_models, create_model
    from npdg.pruning import compact, select_masks

    if model_name not in available_models():
        raise ProfileError(f"unknown model {model_name!r}; available: {', '.join(available_models())}")
    torch.manual_seed(seed)
    dense = create_model(model_name, num_classes=num_classes).eval()
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in dense.prunable_units()}
    report = {"mode": "sweep", "model": model_name, "seed": seed, "settings": asdict(s), "env": environment(s),
              "models": {}, "points": [], "layers": {}}
    models = {"dense": prepare(dense, s)}
    report["models"]["dense"] = {"ratio": 0.0, "round_to": None, "prune_s": 0.0, **count(models["dense"], s)}
    points = []  # (ratio, round_to, model key)
    for rt in round_tos:
        for r in ratio_list:
            if r == 0:
                points.append((r, rt, "dense"))
                continue
            t0 = time.perf_counter()
            small = compact(dense, select_masks(dense, ratio=r, round_to=rt, scores=scores))
            prune_s = time.perf_counter() - t0
            key = next((k for k, m in report["models"].items() if m["widths"] == small.widths()), None)
            if key is None:  # an identical architecture is measured once
                key = f"r{r:g}_k{rt}"
                models[key] = prepare(small, s)
                report["models"][key] = {"ratio": r, "round_to": rt, "prune_s": prune_s, **count(models[key], s)}
            points.append((r, rt, key))
    with _Measuring(s, report):
        timed = _compiled(models, s)
        for b in s.batches:
            lat, _ = measure(timed, b, s)
            for r, rt, key in points:
                m = report["models"][key]
                report["points"].append({"ratio": r, "round_to": rt, "batch": b, "model": key, "flops": m["flops"],
                                         "params": m["params"], "latency": lat[key],
                                         **ratios(lat["dense"], lat[key], report["models"]["dense"], m)})
        if layers_at is not None and s.profile_runs:
            b = s.batches[0]
            dense_prof = layer_profile(models["dense"], b, s)
            for r, rt, key in points:
                if r == layers_at and key != "dense":
                    prof = layer_profile(models[key], b, s)
                    report["layers"][f"ratio {r:g} round_to {rt}"] = compare_layers(dense_prof, prof)
    return report


# --- text output ---------------------------------------------------------------------------------------


def _g(v: float) -> str:
    return f"{v / 1e9:.2f} G"


def _lat(lat: dict) -> str:
    return (f"{lat['median_ms']:9.2f} ms  [p25 {lat['p25_ms']:.2f}, p75 {lat['p75_ms']:.2f}; "
            f"p10 {lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f}]  {lat['images_per_s']:8.2f} img/s  n={lat['runs']}")


def _layer_table(layers: dict, top: int) -> list:
    compare = "lost_ms" in layers
    if compare:
        lines = [f"\nPer layer (profiled, batch {layers['batch']}): dense {layers['total_dense_ms']:.2f} ms, "
                 f"pruned {layers['total_pruned_ms']:.2f} ms, lost {layers['lost_ms']:.2f} ms "
                 f"(efficiency under the profiler {layers['efficiency_profiled']:.3f}); GFLOPs per image, "
                 "shares of the pruned model; lost = FLOPs saving x dense ms/FLOP - time saving; own E = "
                 "(t_D/t_P)/(f_D/f_P)"]
        cols = (f"{'GFLOPs D':>9} {'GFLOPs P':>9} {'ms D':>8} {'ms P':>8} {'FLOPs%':>7} {'time%':>7} "
                f"{'lost ms':>8} {'own E':>6}")

        def values(r):
            own = r.get("own_efficiency")
            return (f"{r['flops_dense'] / 1e9:9.3f} {r['flops_pruned'] / 1e9:9.3f} {r['time_dense_ms']:8.2f} "
                    f"{r['time_pruned_ms']:8.2f} {100 * r['flops_share_pruned']:6.1f}% "
                    f"{100 * r['time_share_pruned']:6.1f}% {r['lost_ms']:8.2f} "
                    f"{'' if own is None else f'{own:6.2f}':>6}")
        order = "lost time"
    else:
        lines = [f"\nPer layer (profiled, batch {layers['batch']}): total {layers['total_ms']:.2f} ms; "
                 "GFLOPs per image"]
        cols = f"{'GFLOPs':>9} {'ms':>8} {'FLOPs%':>7} {'time%':>7}"

        def values(r):
            return (f"{r['flops'] / 1e9:9.3f} {r['time_ms']:8.2f} {100 * r['flops_share']:6.1f}% "
                    f"{100 * r['time_share']:6.1f}%")
        order = "self time"
    lines += ["\nby type:", f"{'type':<36} {cols}"]
    lines += [f"{r['type'][:36]:<36} {values(r)}" for r in layers["by_type"]]
    lines += [f"\ntop {top} layers by {order}:", f"{'layer':<44} {'type':<18} {cols}"]
    lines += [f"{r['name'][:44]:<44} {r['type'][:18]:<18} {values(r)}" for r in layers["rows"][:top]]
    return lines


def format_report(report: dict, top: int = 15) -> str:
    s, env = report["settings"], report["env"]
    omp = f", OMP_WAIT_POLICY={env['omp_wait_policy']}" if env.get("omp_wait_policy") else ""
    lines = [f"device: {env['device']} ({env['device_type']}, {env['threads']} threads{omp}), torch {env['torch']}; "
             f"input {s['size'][0]}x{s['size'][1]}, {s['dtype']}"
             f"{', channels_last' if s['channels_last'] else ''}{', compiled' if s['compile'] else ''}; "
             f"load average {report.get('load_before')} -> {report.get('load_after')}"]
    if report["mode"] == "sweep":
        lines.append(f"sweep {report['model']}: random scores (seed {report['seed']}), dense "
                     f"{_g(report['models']['dense']['flops'])}FLOPs")
        lines.append(f"{'batch':>5} {'round_to':>8} {'ratio':>6} {'GFLOPs':>8} {'R':>6} {'median ms':>10} "
                     f"{'IQR%':>5} {'S':>6} {'S_paired':>8} {'E':>6}")
        for p in report["points"]:
            lines.append(f"{p['batch']:5d} {p['round_to']:8d} {p['ratio']:6.2f} {p['flops'] / 1e9:8.2f} "
                         f"{p['flops_reduction']:6.3f} {p['latency']['median_ms']:10.2f} "
                         f"{p['latency']['iqr_pct']:5.1f} {p['speedup']:6.3f} {p['speedup_paired']:8.3f} "
                         f"{p['efficiency']:6.3f}")
        for name, layers in report["layers"].items():
            lines.append(f"\n== {name} vs dense ==")
            lines += _layer_table(layers, top)
        return "\n".join(lines)
    for label, m in report["models"].items():
        lines.append(f"{label}: {m['name']} {_g(m['flops'])}FLOPs, {m['params'] / 1e6:.2f} M params  ({m['source']})")
    for b, lats in report["latency"].items():
        lines.append(f"\nbatch {b}:")
        for label, lat in lats.items():
            lines.append(f"  {label:<7}{_lat(lat)}")
        c = report["comparison"].get(b)
        if c:
            saving = c["time_savings_efficiency"]
            lines.append(f"  FLOPs reduction R = {c['flops_reduction']:.3f}x, speedup S = {c['speedup']:.3f}x "
                         f"(paired {c['speedup_paired']:.3f}x), efficiency E = S/R = {c['efficiency']:.3f} "
                         f"(paired {c['efficiency_paired']:.3f}); time-savings efficiency "
                         f"{'n/a' if saving is None else f'{saving:.3f}'}")
        unstable = [label for label, lat in lats.items() if lat["iqr_pct"] > 10]
        if unstable:
            lines.append(f"  note: IQR > 10% of the median for {', '.join(unstable)} (a busy machine?)")
    if report["layers"]:
        lines += _layer_table(report["layers"], top)
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------------------------


def plot_report(report: dict, path, top: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, s = report["env"], report["settings"]
    threads = f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}"
    busy = report.get("load_before") if env["device_type"] == "cpu" else None
    load = f", load average {busy[0]:.1f}" if busy else ""
    where = (f"{env['device']} ({threads}{load}), {s['size'][0]}x{s['size'][1]} {s['dtype']}"
             f"{' channels_last' if s['channels_last'] else ''}{' compiled' if s['compile'] else ''}")
    if report["mode"] == "sweep":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
        lines = defaultdict(list)
        for p in report["points"]:
            lines[(p["round_to"], p["batch"])].append(p)
        top_r = 1.0
        for (rt, b), pts in sorted(lines.items()):
            pts.sort(key=lambda p: p["ratio"])
            xs, ys = [p["flops_reduction"] for p in pts], [p["speedup"] for p in pts]
            top_r = max(top_r, *xs, *ys)
            ax.plot(xs, ys, "o-", label=f"round_to {rt}, batch {b}")
            for p in pts:
                ax.annotate(f"{p['ratio']:g}", (p["flops_reduction"], p["speedup"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
            ax2.plot([p["ratio"] for p in pts], [p["efficiency"] for p in pts], "o-",
                     label=f"round_to {rt}, batch {b}")
        diag = [1.0, top_r * 1.05]
        ax.plot(diag, diag, "k--", lw=1, label="ideal: S = R")
        ax.plot(diag, [0.8 * d for d in diag], ":", color="gray", lw=1, label="E = 0.8")
        ax.set(xlabel="FLOPs reduction factor R", ylabel="wall-clock speedup S",
               title=f"{report['model']}: random-γ prune + compact (point labels: unit ratio)")
        ax2.axhline(1.0, color="k", ls="--", lw=1)
        ax2.axhline(0.8, color="gray", ls=":", lw=1)
        ax2.set(xlabel="unit ratio pruned", ylabel="efficiency E = S / R", title="efficiency")
        for a in (ax, ax2):
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        fig.suptitle(where, fontsize=9)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(17, 6))
        ax = axes[0]
        labels, meds, errs = [], [], [[], []]
        for b, lats in report["latency"].items():
            for label, lat in lats.items():
                labels.append(f"{label}\nbatch {b}")
                meds.append(lat["median_ms"])
                errs[0].append(lat["median_ms"] - lat["p25_ms"])
                errs[1].append(lat["p75_ms"] - lat["median_ms"])
        ax.bar(range(len(meds)), meds, yerr=errs, capsize=4, color=["C0", "C1"] * len(meds))
        ax.set_xticks(range(len(meds)), labels, fontsize=8)
        title = "latency: median, p25-p75"
        for b, c in report["comparison"].items():
            title += f"\nbatch {b}: R {c['flops_reduction']:.2f}x, S {c['speedup']:.2f}x, E {c['efficiency']:.2f}"
        ax.set(ylabel="ms per forward", title=title)
        layers = report["layers"]
        if layers:
            cmp = "lost_ms" in layers
            fkey, tkey = ("flops_share_pruned", "time_share_pruned") if cmp else ("flops_share", "time_share")
            types = sorted(layers["by_type"], key=lambda t: -t[tkey])[:top]
            y = range(len(types))
            axes[1].barh([i - 0.2 for i in y], [100 * t[fkey] for t in types], 0.4, label="FLOPs share")
            axes[1].barh([i + 0.2 for i in y], [100 * t[tkey] for t in types], 0.4, label="time share")
            axes[1].set_yticks(list(y), [t["type"] for t in types], fontsize=8)
            axes[1].invert_yaxis()
            axes[1].set(xlabel="% of the model" + (" (pruned)" if cmp else ""), title="FLOPs vs time by type")
            axes[1].legend(fontsize=8)
            rows = layers["rows"][:top]
            key = "lost_ms" if cmp else "time_ms"
            axes[2].barh(range(len(rows)), [r[key] for r in rows], color="C3" if cmp else "C2")
            axes[2].set_yticks(range(len(rows)), [f"{r['name']} ({r['type']})" for r in rows], fontsize=7)
            axes[2].invert_yaxis()
            axes[2].set(xlabel="ms" if not cmp else "lost ms = FLOPs saved x dense ms/FLOP - time saved",
                        title="layers by lost time" if cmp else "layers by self time")
        else:
            for a in axes[1:]:
                a.axis("off")
        fig.suptitle(where, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_figure(fig, path, dpi=110)
    plt.close(fig)


# --- CLI -----------------------------------------------------------------------------------------------


_positive_int = cli.int_at_least(1)
_non_negative_int = cli.int_at_least(0)


def _size(text):
    from npdg.data.spec import hw_arg

    return hw_arg(text)


def _round_tos(text):
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--round_to: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--round_to: every value must be >= 1, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m npdg.profile", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Definitions (FLOPs reduction, speedup, efficiency, lost time): see the module docstring "
                          "(python -c 'import npdg.profile; help(npdg.profile)').")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="npdg model file (or training checkpoint), or a run directory "
                                           "(then dense.pt vs final.pt)")
    what.add_argument("--sweep", metavar="MODEL", help="random-γ prune MODEL at every --ratios x --round_to")
    p.add_argument("--compare", metavar="CKPT2", help="a second (pruned) model to compare with --checkpoint")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda[:i]")
    p.add_argument("--batch", type=_positive_int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--size", type=_size, default=(512, 512), help="input HxW (default 512x512)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the models for the latency runs")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed forwards per model (default 3)")
    p.add_argument("--runs", type=_non_negative_int, default=0,
                   help="timed rounds (default 0 = auto: >= --min-runs, until --min-time s per model)")
    p.add_argument("--min-runs", type=_positive_int, default=10)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timed forwards per model (auto runs)")
    p.add_argument("--profile-runs", type=_non_negative_int, default=3,
                   help="profiled forwards per model for the per-layer table (0 = no table)")
    p.add_argument("--top", type=_positive_int, default=15, help="layers shown in the tables")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--ratios", type=lambda t: _parse_floats(t, "--ratios", 0.0, 1.0),
                   default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], help="sweep: unit ratios (default 0,0.1,...,0.6)")
    p.add_argument("--round_to", "--round-to", dest="round_to", type=_round_tos, default=[1, 8],
                   help="sweep: round_to values, one line each (default 1,8)")
    p.add_argument("--layers-at", type=lambda t: _parse_floats(t, "--layers-at", 0.0, 1.0)[0], default=None,
                   help="sweep: per-layer comparison of the dense model with the model at this ratio")
    p.add_argument("--seed", type=int, default=0, help="sweep: seed of the weights and the random scores")
    p.add_argument("--json", type=Path, help="write the full report (incl. every latency sample) as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG plot")
    cli.add_debug(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare is not None and args.checkpoint is None:
        parser.error("--compare needs --checkpoint")
    return cli.guard(parser.prog, args.debug, lambda: _run(args))


def _run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    s = Settings(device=args.device, size=tuple(args.size), batches=tuple(args.batch), dtype=args.dtype,
                 channels_last=args.channels_last, compile=args.compile, warmup=args.warmup, runs=args.runs,
                 min_runs=args.min_runs, min_time=args.min_time, profile_runs=args.profile_runs,
                 threads=args.threads or 0)
    s.device = str(resolve_device(args.device))
    if args.sweep is not None:
        report = sweep(args.sweep, args.ratios, args.round_to, s, seed=args.seed, layers_at=args.layers_at)
    else:
        report = profile_checkpoints(checkpoint_pair(args.checkpoint, args.compare), s)
    print(format_report(report, args.top))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(args.json, report, indent=1)
    if args.plot:
        plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
