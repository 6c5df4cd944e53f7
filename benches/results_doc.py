"""The results document and the README's generated tables, built from committed files only (never typed by hand).

    python benches/results_doc.py            # (re)write docs/results.md, docs/experiments.md, the README's blocks
    python benches/results_doc.py --check    # exit 1 and name the file when either differs (a test runs this)

Sources:
- ``benches/results/fair/MODEL/METHOD-sSEED.json``: the default run of every method (``benches/fair_table.sh``:
  equal budgets and inputs, the standard mIoU). Per model: each method's per-domain mean over its seeds, final
  FLOPs, and NPDG − method paired by seed (``npdg.compare``: mean difference with its 95 % t-interval).
- ``benches/results/cpu_2core_train_step_default_recipe.json`` and ``gpu_h200/bench_{train,runtimes}.json``
  (pytest-benchmark files): the training step of erm vs npdg and the pruned model's latency against dense.
- every other ``benches/results/**/compare*.json`` (``npdg.compare --json``): the paired comparisons of the
  experiments of earlier issues, indexed in docs/experiments.md with the mIoU definition each used.
The README blocks sit between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benches" / "results"
FAIR = RESULTS / "fair"
DOC = ROOT / "docs" / "results.md"
EXPERIMENTS = ROOT / "docs" / "experiments.md"
README = ROOT / "README.md"
METHOD_ORDER = ("erm", "dsp", "slimming", "sfp", "shade", "npdg")
MODEL_NAMES = {"deeplabv3plus_r18": "DeepLabV3+ ResNet-18", "segformer_b0": "SegFormer-B0"}
TRAIN_STEP_FILES = {"2-core AMD EPYC (CPU, fp32, batch 8, 96x192)": "cpu_2core_train_step_default_recipe.json",
                    "NVIDIA H200 (bf16, batch 8, 512x512)": "gpu_h200/bench_train.json"}
RUNTIME_FILES = {"NVIDIA H200 (eager, batch 4)": "gpu_h200/bench_runtimes.json"}
METHOD_STEP_FILES = {"2-core Intel Xeon (CPU, fp32, batch 8, 96x192)": "cpu_2core_xeon_train_step_methods.json"}
BREAKDOWN_FILES = {"2-core Intel Xeon (CPU, fp32, batch 8, 96x192)": "cpu_2core_xeon_step_breakdown.json"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _f(v, sign=False) -> str:
    return "–" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def _ci(st: dict) -> str:
    if st["ci"] is None:
        return _f(st["mean_diff"], True)
    return f"{st['mean_diff']:+.2f} [{st['ci'][0]:+.2f}, {st['ci'][1]:+.2f}]"


def _short(spec: str) -> str:
    return spec.split(":", 1)[-1]


def load_model_runs(model_dir: Path) -> dict[str, list[dict]]:
    """{method: [metrics, ...]} of one model's committed runs, methods in METHOD_ORDER, seeds sorted."""
    runs: dict[str, list[dict]] = {}
    for f in sorted(model_dir.glob("*.json")):
        if f.name.startswith("compare-") or not re.fullmatch(r".+-s\d+\.json", f.name):
            continue  # the paired comparisons written beside the runs
        m = json.loads(f.read_text())
        m["_file"] = f
        runs.setdefault(m["method"], []).append(m)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return {k: sorted(v, key=lambda m: m["config"]["seed"])
            for k, v in sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order)))}


def method_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Per method: seeds, the mean final mIoU per domain, unseen mean, FLOPs fraction range, steps, definition."""
    rows = []
    for method, ms in runs.items():
        cfg = ms[0]["config"]
        specs = [cfg["source"], *cfg["targets"]]
        mean = {s: sum(m["final"]["miou"][s] for m in ms) / len(ms) for s in specs}
        flops = [m["final"]["flops"] / m["dense"]["flops"] for m in ms]
        rows.append({"method": method, "seeds": [m["config"]["seed"] for m in ms], "specs": specs, "mean": mean,
                     "unseen": sum(m["unseen_mean"]["final"] for m in ms) / len(ms),
                     "flops": (min(flops), max(flops)),
                     "steps": sorted({m["steps"]["train"] + m["steps"]["finetune"] for m in ms}),
                     "definitions": sorted({m.get("miou_definition", "labels_present") for m in ms}),
                     "dsp_steps": sorted({step_label(m["config"]) for m in ms if method in ("dsp", "npdg")})})
    return rows


def paired_vs_npdg(model_dir: Path, methods) -> dict:
    """{method: npdg.compare result of npdg − method} for every method that shares seeds with npdg."""
    from npdg.compare import compare

    out = {}
    for method in methods:
        if method != "npdg":
            out[method] = compare(str(model_dir / f"{method}-s*.json"), str(model_dir / "npdg-s*.json"))
    return out


def _flops(lo_hi) -> str:
    lo, hi = lo_hi
    return f"{100 * lo:.0f} %" if round(100 * lo) == round(100 * hi) else f"{100 * lo:.0f}–{100 * hi:.0f} %"


def headline(models: dict) -> str:
    lines = []
    for model, (rows, paired) in models.items():
        specs = rows[0]["specs"]
        lines += [f"**{MODEL_NAMES.get(model, model)}** (final model, mIoU %, mean over seeds; Δ = NPDG − method, "
                  "paired by seed, 95 % interval)", "",
                  "| method | seeds | " + " | ".join(_short(s) for s in specs)
                  + " | unseen mean | final FLOPs | Δ source | Δ unseen mean |",
                  "|---|---:|" + "---:|" * (len(specs) + 4)]
        for r in rows:
            p = paired.get(r["method"])
            d_src = _ci(p["metrics"]["source"]) if p else "–"
            d_uns = _ci(p["metrics"]["unseen_mean"]) if p else "–"
            name = f"**{r['method']}**" if r["method"] == "npdg" else r["method"]
            lines.append(f"| {name} | {len(r['seeds'])} | " + " | ".join(_f(r["mean"][s]) for s in specs)
                         + f" | **{_f(r['unseen'])}** | {_flops(r['flops'])} | {d_src} | {d_uns} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def verdict(st: dict) -> str:
    """'better' / 'worse' when the 95 % interval of NPDG − method excludes 0, else 'level'."""
    if st["ci"] is None:
        return "one seed"
    return "better" if st["ci"][0] > 0 else "worse" if st["ci"][1] < 0 else "level"


def findings(models: dict) -> str:
    """What the headline table shows, one line per model and method: NPDG − method on the unseen mean and the
    source with intervals and a verdict from the interval alone (no hand-written numbers)."""
    lines = ["What it shows (NPDG − method, paired by seed; *level* = the 95 % interval includes 0):", ""]
    for model, (rows, paired) in models.items():
        npdg = next(r for r in rows if r["method"] == "npdg")
        parts = []
        for method, p in paired.items():
            uns, src = p["metrics"]["unseen_mean"], p["metrics"]["source"]
            parts.append(f"vs {method} unseen {_ci(uns)} ({verdict(uns)}), source {_ci(src)} ({verdict(src)})")
        lines.append(f"- {MODEL_NAMES.get(model, model)}, NPDG at {_flops(npdg['flops'])} of the dense FLOPs: "
                     + "; ".join(parts) + ".")
    return "\n".join(lines)


def per_target(model: str, rows, paired) -> list[str]:
    specs = rows[0]["specs"][1:]
    lines = [f"NPDG − method per unseen domain ({MODEL_NAMES.get(model, model)}; mean paired difference, 95 % "
             "interval):", "", "| method | n | " + " | ".join(_short(s) for s in specs) + " |",
             "|---|---:|" + "---:|" * len(specs)]
    for method, p in paired.items():
        lines.append(f"| {method} | {len(p['seeds'])} | "
                     + " | ".join(_ci(p["targets"][s]) for s in specs) + " |")
    return lines


def goal_check(models: dict) -> list[str]:
    """The comparison-systems issue's goals (measured, not promised), checked from the runs: on R18, NPDG's unseen mean
    >= the best other method's + 2.0 with source >= its - 1.0, at <= 60 % of the dense FLOPs; on SegFormer-B0, NPDG
    >= SHADE on every unseen domain (mean over paired seeds)."""
    lines = ["## Against the goals", ""]
    if "deeplabv3plus_r18" in models:
        rows, paired = models["deeplabv3plus_r18"]
        others = [r for r in rows if r["method"] != "npdg" and r["method"] in paired]
        npdg = next(r for r in rows if r["method"] == "npdg")
        if others:
            best = max(others, key=lambda r: r["unseen"])
            p = paired[best["method"]]["metrics"]
            uns, src = p["unseen_mean"], p["source"]
            met = uns["mean_diff"] >= 2.0 and src["mean_diff"] >= -1.0 and npdg["flops"][1] <= 0.605
            lines.append(f"- DeepLabV3+ R18: the best other method on the unseen mean is **{best['method']}** "
                         f"({_f(best['unseen'])}); NPDG − {best['method']}: unseen {_ci(uns)}, source {_ci(src)}, "
                         f"NPDG at {_flops(npdg['flops'])} of the FLOPs. Goal (unseen >= +2.0, source >= -1.0, "
                         f"<= 60 % FLOPs): **{'met' if met else 'missed'}** "
                         f"(of {len(others)} other methods: {', '.join(r['method'] for r in others)}).")
    if "segformer_b0" in models:
        rows, paired = models["segformer_b0"]
        if "shade" in paired:
            t = paired["shade"]["targets"]
            worse = [_short(s) for s, st in t.items() if st["mean_diff"] < 0]
            lines.append("- SegFormer-B0: NPDG − SHADE per unseen domain: "
                         + ", ".join(f"{_short(s)} {_ci(st)}" for s, st in t.items())
                         + f". Goal (NPDG >= SHADE on every unseen domain): **{'missed' if worse else 'met'}**"
                         + (f" (below on {', '.join(worse)})." if worse else "."))
        else:
            lines.append("- SegFormer-B0: no SHADE runs committed yet.")
    return lines + [""]


def document(models: dict) -> str:
    lines = ["# Results on the embedded benchmark", "",
             "Generated by `python benches/results_doc.py` from the committed runs under `benches/results/fair/` "
             "(do not edit by hand: a test fails when this page differs from what the script writes).", "",
             "Every row is the **default run** of its method (`python -m npdg.train --method M --model X --seed S`, "
             "nothing else given; `bash benches/fair_table.sh OUTDIR` reruns them): the same 260 optimiser steps in "
             "all, the same inputs (per-image input standardisation on for every method on a CNN, off on "
             "SegFormer), slimming, sfp and npdg pruned to the same FLOPs target (60 % of dense on CNNs, 75 % on "
             "SegFormer); the DSP step of dsp and npdg is named in the runs table below. mIoU is the field's "
             "(`npdg.metrics`, `miou_definition: standard`: IoU = TP / (TP + FP + "
             "FN) over the set, a class predicted but absent from the labels scores 0, as cityscapesscripts and "
             "mmseg). Source = the source domain's val split; night, fog, rain, snow, painted are unseen target "
             "domains (never used to choose anything). Earlier experiments, under the legacy mIoU, are in "
             "[results-history.md](results-history.md).", "", headline(models), "", *goal_check(models)]
    for model, (rows, paired) in models.items():
        lines += [f"## {MODEL_NAMES.get(model, model)}", ""]
        lines += per_target(model, rows, paired) + [""]
        lines += ["| method | seeds | steps in all | DSP step | mIoU definition | runs | paired comparison |",
                  "|---|---|---:|---|---|---|---|"]
        for r in rows:
            d = FAIR / model
            cmp_file = d / f"compare-npdg-{r['method']}.md"
            cmp_link = f"[{cmp_file.name}](../{rel(cmp_file)})" if cmp_file.is_file() else "–"
            lines.append(f"| {r['method']} | {', '.join(map(str, r['seeds']))} | "
                         f"{', '.join(map(str, r['steps']))} | {', '.join(r['dsp_steps']) or '–'} | "
                         f"{', '.join(r['definitions'])} | "
                         f"`{rel(d)}/{r['method']}-s*.json` | {cmp_link} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _benchmarks(path: Path) -> list[dict]:
    return json.loads(path.read_text())["benchmarks"]


def step_label(keys: dict) -> str:
    from npdg.knobs import ADV_SCALE

    """A step_breakdown row's step, from the keys it recorded (rows before issue 33's flip record only what they
    changed: the defaults then were copies of the inputs and a full-resolution adversary)."""
    branch, scale = keys.get("dsp_branch", False), keys.get("adv_scale", 1.0)
    label = f"{'branch' if branch else 'copies'}, adversary at {scale:g}"
    if branch and scale == ADV_SCALE:
        return label + ": the default"
    return label + (": before issue 33" if not branch and scale == 1 else "")


def performance() -> str:
    lines = ["Training step (median; `benches/bench_train.py` or `benches/step_breakdown.py`, one run per file, "
             "its rows side by side):", "",
             "| machine | model | erm step | npdg step | npdg / erm | file |", "|---|---|---:|---:|---:|---|"]
    for machine, name in TRAIN_STEP_FILES.items():
        path = RESULTS / name
        steps = {}
        for b in _benchmarks(path):
            x = b.get("extra_info", {})
            if b["name"].startswith("test_train_step") and x.get("kernels") == "auto" \
                    and x.get("layout") == "contiguous":
                steps[(x["model"], x["method"])] = b["stats"]["median"] * 1000
        for model in sorted({m for m, _ in steps}):
            erm, npdg = steps.get((model, "erm")), steps.get((model, "npdg"))
            if erm and npdg:
                lines.append(f"| {machine} | {model} | {erm:.1f} ms | {npdg:.1f} ms | {npdg / erm:.2f}× | "
                             f"`{rel(path)}` |")
    for machine, name in BREAKDOWN_FILES.items():
        path = RESULTS / name
        for row in json.loads(path.read_text())["rows"]:
            t, r = row["seconds"], row["ratios"]
            lines.append(f"| {machine} | {row['model']} ({step_label(row['keys'])}; `benches/step_breakdown.py`) | "
                         f"{t['erm_step'] * 1e3:.1f} ms | {t['step'] * 1e3:.1f} ms | {r['step_over_erm']:.2f}× | "
                         f"`{rel(path)}` |")
    for machine, name in METHOD_STEP_FILES.items():
        path = RESULTS / name
        steps = {(b["extra_info"]["model"], b["extra_info"]["method"]): b["stats"]["median"] * 1000
                 for b in _benchmarks(path) if b["name"].startswith("test_train_step")}
        lines += ["", f"Every method's training step against ERM's ({machine}; `benches/bench_train.py`, one run, "
                  f"`{rel(path)}`):", "", "| model | " + " | ".join(m for m in METHOD_ORDER if any(
                      k[1] == m for k in steps)) + " |", "|---|" + "---:|" * len({k[1] for k in steps})]
        for model in sorted({k[0] for k in steps}):
            erm = steps[(model, "erm")]
            lines.append(f"| {model} | " + " | ".join(f"{steps[(model, m)]:.0f} ms ({steps[(model, m)] / erm:.2f}×)"
                                                      for m in METHOD_ORDER if (model, m) in steps) + " |")
    lines += ["", "Pruned (ratio 0.3, `round_to` 8) against dense, `benches/bench_runtimes.py`:", "",
              "| machine | model | dense | pruned | FLOPs pruned / dense | speed-up | file |",
              "|---|---|---:|---:|---:|---:|---|"]
    for machine, name in RUNTIME_FILES.items():
        path = RESULTS / name
        runs = {}
        for b in _benchmarks(path):
            x = b.get("extra_info", {})
            if b["name"].startswith("test_runtime_latency"):
                runs[(x["model"], x["variant"])] = (b["stats"]["median"] * 1000, x)
        for model in sorted({m for m, _ in runs}):
            if (model, "dense") in runs and (model, "pruned") in runs:
                (dense, _), (pruned, x) = runs[(model, "dense")], runs[(model, "pruned")]
                lines.append(f"| {machine} | {model} | {dense:.2f} ms | {pruned:.2f} ms | "
                             f"{x['flops'] / x['flops_dense']:.0%} | {dense / pruned:.2f}× | `{rel(path)}` |")
    return "\n".join(lines)


def _side(side) -> str:
    """A comparison side's label: its glob's run names (``npdg.compare`` records label, glob and files)."""
    if isinstance(side, dict):
        side = side.get("glob") or side.get("label") or "?"
    return Path(str(side)).name.replace(".json", "")


def experiments() -> str:
    """The index of every paired comparison outside fair/: one row each, B − A on source and the unseen mean."""
    lines = ["# Experiments: every committed paired comparison", "",
             "Generated by `python benches/results_doc.py` from the `compare*.json` files under `benches/results/` "
             "(the headline runs of `fair/` are in [results.md](results.md)); do not edit by hand. Each row is one "
             "`python -m npdg.compare A B --json` result: B − A, mean paired difference over the seeds both sides "
             "share, with its 95 % t-interval. **mIoU**: `labels_present` is the legacy mean over the classes "
             "present in the labels (every comparison before issue 32, 2026-12-05): compare those rows only with "
             "each other; `standard` is the field's. The story behind each folder: "
             "[results-history.md](results-history.md).", ""]
    folders: dict[str, list[Path]] = {}
    for path in sorted(RESULTS.rglob("compare*.json")):
        if FAIR not in path.parents:
            folders.setdefault(rel(path.parent), []).append(path)
    for folder, paths in folders.items():
        lines += [f"## `{folder}/`", "", "| comparison | B | A | n | mIoU | Δ source | Δ unseen mean |",
                  "|---|---|---|---:|---|---:|---:|"]
        for path in paths:
            c = json.loads(path.read_text())
            metrics = c.get("metrics", {})
            src, uns = metrics.get("source"), metrics.get("unseen_mean")
            n = (src or uns or {}).get("n", len(c.get("seeds", [])))
            shown = path.with_suffix(".md") if path.with_suffix(".md").is_file() else path
            lines.append(f"| [{path.stem}](../{rel(shown)}) "
                         f"| {_side(c.get('b'))} | {_side(c.get('a'))} | {n} | "
                         f"{c.get('miou_definition', 'labels_present')} | {_ci(src) if src else '–'} | "
                         f"{_ci(uns) if uns else '–'} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, name: str, content: str, where: Path) -> str:
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"{rel(where)}: expected one '{begin}' ... '{end}' block")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def build() -> dict[Path, str]:
    sys.path.insert(0, str(ROOT))
    models = {}
    for model_dir in sorted(p for p in FAIR.iterdir() if p.is_dir()):
        runs = load_model_runs(model_dir)
        if "npdg" in runs:
            models[model_dir.name] = (method_rows(runs), paired_vs_npdg(model_dir, runs))
    readme = README.read_text()
    readme = replace_block(readme, "headline", headline(models) + "\n\n" + findings(models), README)
    readme = replace_block(readme, "performance", performance(), README)
    return {DOC: document(models), EXPERIMENTS: experiments(), README: readme}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in build().items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(rel(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel(path)}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python benches/results_doc.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
