"""The two modes of ``python -m npdg.profile``: checkpoints (one model, or dense vs pruned) and the random-γ
sweep; every model x runtime of a mode is measured in the same interleaved run."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from npdg.profile.layers import compare_layers, layer_profile, single_layers
from npdg.profile.runtimes import build_runners, check_runtimes, versions
from npdg.profile.timing import ProfileError, Settings, _Measuring, count, environment, measure, prepare, ratios


def runtimes_of(s: Settings) -> list:
    """The runtimes to measure: s.runtimes, with eager replaced by compile under the older --compile flag."""
    rts = list(dict.fromkeys(s.runtimes or ("eager",)))
    if s.compile and "compile" not in rts:
        rts = ["compile" if rt == "eager" else rt for rt in rts]
    return list(dict.fromkeys(rts))


def _measure_all(models: dict, rts: list, b: int, s: Settings, report: dict) -> dict:
    """{runtime: {label: latency}} of every model in every runtime at batch b, interleaved in one run."""
    with tempfile.TemporaryDirectory(prefix="npdg-profile-") as tmp:
        runners, infos = build_runners(models, rts, b, s, Path(tmp))
        report.setdefault("runtime_info", {})[str(b)] = infos
        lat, warm = measure(runners, b, s)
    report.setdefault("warmup_s", {})[str(b)] = warm
    out = {rt: {} for rt in rts}
    for key, v in lat.items():
        label, rt = key.rsplit("|", 1)
        out[rt][label] = v
    return out


def _cross(by_rt: dict, b: str, base_rt: str) -> dict:
    """{runtime: {label: base runtime's median / this runtime's median}} (> 1: faster than the base)."""
    base = by_rt[base_rt]["latency"][b]
    return {rt: {label: base[label]["median_ms"] / lat["median_ms"] for label, lat in d["latency"][b].items()}
            for rt, d in by_rt.items()}


def profile_checkpoints(entries: list, s: Settings) -> dict:
    """Report for one model, or for a dense model and a pruned one (entries from checkpoint_pair), in every
    runtime of the settings; "latency" / "comparison" are those of the first runtime, "by_runtime" all."""
    rts = runtimes_of(s)
    check_runtimes(rts, s)
    report = {"mode": "compare" if len(entries) == 2 else "single", "settings": asdict(s), "env": environment(s),
              "versions": versions(), "runtimes": rts, "models": {}, "latency": {}, "comparison": {},
              "by_runtime": {rt: {"latency": {}, "comparison": {}} for rt in rts}, "vs_first_runtime": {},
              "layers": None}
    models = {}
    for label, model, source in entries:
        model = prepare(model, s)
        models[label] = model
        report["models"][label] = {"source": source, "name": getattr(model, "registry_name", ""), **count(model, s)}
    by_rt = report["by_runtime"]
    with _Measuring(s, report):
        for b in s.batches:
            lats = _measure_all(models, rts, b, s, report)
            for rt in rts:
                by_rt[rt]["latency"][str(b)] = lats[rt]
                if len(entries) == 2:
                    by_rt[rt]["comparison"][str(b)] = ratios(lats[rt]["dense"], lats[rt]["pruned"],
                                                             report["models"]["dense"], report["models"]["pruned"])
            report["vs_first_runtime"][str(b)] = _cross(by_rt, str(b), rts[0])
        report["latency"], report["comparison"] = by_rt[rts[0]]["latency"], by_rt[rts[0]]["comparison"]
        if s.profile_runs:
            b = s.batches[0]
            profs = {label: layer_profile(m, b, s) for label, m in models.items()}
            if len(entries) == 2:
                report["layers"] = compare_layers(profs["dense"], profs["pruned"])
            else:
                report["layers"] = single_layers(profs["model"])
    return report


def sweep(model_name: str, ratio_list: list, round_tos: list, s: Settings, seed: int = 0,
          layers_at: float | None = None, num_classes: int = 19, prune_residual: bool = False) -> dict:
    """Random-γ pruning of `model_name` at every ratio x round_to, measured against the dense model in every
    runtime of the settings (a point's speedup and efficiency are against the dense model in its runtime).

    ``prune_residual``: also prune the coupled residual streams (``select_masks(prune_residual=True)``; their
    random scores are drawn after those of the other groups, so those get the same scores either way). A
    model without residual-stream groups is a :class:`ProfileError`, raised before anything is built."""
    from npdg.models import available_models, create_model, no_residual_streams
    from npdg.pruning import compact, select_masks

    if model_name not in available_models():
        raise ProfileError(f"unknown model {model_name!r}; available: {', '.join(available_models())}")
    if prune_residual and (why := no_residual_streams(model_name)):
        raise ProfileError(f"--prune_residual: {why}")
    rts = runtimes_of(s)
    check_runtimes(rts, s)
    torch.manual_seed(seed)
    dense = create_model(model_name, num_classes=num_classes).eval()
    gen = torch.Generator().manual_seed(seed)
    # residual=True appends the stream groups last: the other groups draw the same scores with or without them
    scores = {g.name: torch.rand(g.size, generator=gen) for g in dense.prunable_units(residual=prune_residual)}
    report = {"mode": "sweep", "model": model_name, "seed": seed, "prune_residual": prune_residual,
              "settings": asdict(s), "env": environment(s), "versions": versions(), "runtimes": rts, "models": {},
              "points": [], "layers": {}}
    models = {"dense": prepare(dense, s)}
    report["models"]["dense"] = {"ratio": 0.0, "round_to": None, "prune_residual": False, "prune_s": 0.0,
                                 **count(models["dense"], s)}
    points = []  # (ratio, round_to, model key)
    for rt in round_tos:
        for r in ratio_list:
            if r == 0:
                points.append((r, rt, "dense"))
                continue
            t0 = time.perf_counter()
            small = compact(dense, select_masks(dense, ratio=r, round_to=rt, scores=scores,
                                                prune_residual=prune_residual))
            prune_s = time.perf_counter() - t0
            key = next((k for k, m in report["models"].items() if m["widths"] == small.widths()), None)
            if key is None:  # an identical architecture is measured once
                key = f"r{r:g}_k{rt}"
                models[key] = prepare(small, s)
                report["models"][key] = {"ratio": r, "round_to": rt, "prune_residual": prune_residual,
                                         "prune_s": prune_s, **count(models[key], s)}
            points.append((r, rt, key))
    with _Measuring(s, report):
        for b in s.batches:
            lats = _measure_all(models, rts, b, s, report)
            for runtime in rts:
                lat = lats[runtime]
                for r, rt, key in points:
                    m = report["models"][key]
                    report["points"].append({
                        "runtime": runtime, "ratio": r, "round_to": rt, "prune_residual": prune_residual,
                        "batch": b, "model": key, "flops": m["flops"],
                        "params": m["params"], "latency": lat[key],
                        "vs_first_runtime": lats[rts[0]][key]["median_ms"] / lat[key]["median_ms"],
                        **ratios(lat["dense"], lat[key], report["models"]["dense"], m)})
        if layers_at is not None and s.profile_runs:
            b = s.batches[0]
            dense_prof = layer_profile(models["dense"], b, s)
            for r, rt, key in points:
                if r == layers_at and key != "dense":
                    prof = layer_profile(models[key], b, s)
                    report["layers"][f"ratio {r:g} round_to {rt}"] = compare_layers(dense_prof, prof)
    return report
