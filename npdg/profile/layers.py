"""Per-layer attribution: self time (torch.profiler ranges) and self FLOPs of every module, and the
dense-vs-pruned comparison by lost time (see the ``npdg.profile`` package docstring)."""

from __future__ import annotations

import functools
from collections import defaultdict

import torch
from torch import nn

from npdg.profile.timing import Settings, make_input

LAYER_PREFIX = "npdg.layer:"
ROOT = "(model)"


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

