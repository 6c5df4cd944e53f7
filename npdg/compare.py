"""Paired comparison of two sets of finished runs: B − A per shared seed, its mean and 95 % t-interval.

    python -m npdg.compare 'benches/results/dg/erm-s*.json' 'benches/results/dg/npdg-s*.json'
    python -m npdg.compare 'runs/erm-s*' 'runs/npdg-s*' --json paired.json
    python -m npdg.compare 'runs/erm-s*' 'runs/npdg-s*' --allow_unequal   # runs of different total steps
    python -m npdg.compare 'old/erm-s*,new/erm-s*' 'old/npdg-s*,new/npdg-s*'  # a comma joins globs

A and B are globs (quote them: the shell must not expand them) of metrics.json files or run directories of
``python -m npdg.train``. Runs pair by ``config.seed``; a seed present in only one set is left out, and the
output says so. A pair whose total optimiser steps differ (metrics.json ``steps``: train + finetune) is
refused unless --allow_unequal: train every method with the same ``--budget`` for a fair comparison. Runs
scored under different mIoU definitions (metrics.json ``miou_definition``; files without it used the legacy one,
see :mod:`npdg.metrics`) are never compared; the output names the definition.

Compared (final model, mIoU in percent): the source val split (``final.miou[config.source]``), the mean
over unseen domains (``unseen_mean.final``) and each target domain. For each: the per-seed values, the mean
paired difference B − A and its 95 % t-interval, mean ± t(0.975, n−1)·sd/√n with sd over n − 1 (n = 1:
no interval). Markdown on stdout (the README's tables come from it); --json OUT writes the same numbers.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

from npdg import checkpoint, cli

CONFIDENCE = 0.95


def expand(pattern: str) -> list[Path]:
    """The files/run directories a glob names (a literal path that exists counts too; several globs joined
    by commas: their union, e.g. seeds kept in two folders); sorted."""
    found = set()
    for part in pattern.split(","):
        hits = glob.glob(part) or ([part] if Path(part).exists() else [])
        if not hits:
            raise cli.UsageError(f"{part}: no runs match (a glob of metrics.json files or run directories)")
        found.update(hits)
    return [Path(p) for p in sorted(found)]


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what} is {v!r}, not a finite number")
    return float(v)


def _steps(m: dict, cfg: dict) -> dict:
    """{"train": N, "finetune": M}: metrics.json's record, or (a run from before it) what its config ran."""
    from npdg.methods import REGISTRY, method_class
    from npdg.report import steps_or_config

    recorded = m.get("steps")
    method = m.get("method", cfg.get("method"))
    prunes = method in REGISTRY and method_class(method).prunes
    steps = recorded if recorded is not None else steps_or_config({}, cfg["iters"], cfg["finetune_iters"], prunes)
    return {k: int(_number(steps[k], f"steps.{k}")) for k in ("train", "finetune")}


def load_run(path: str | Path) -> dict:
    """One finished run: {file, method, seed, source, targets, source_miou, unseen, target_miou, steps,
    miou_definition}."""
    from npdg.metrics import LEGACY_DEFINITION
    from npdg.report import read_finished_run

    def extract(file, m, cfg):
        source, targets = cfg["source"], list(cfg["targets"])
        miou = m["final"]["miou"]
        return {"file": str(file), "method": m.get("method", cfg.get("method")), "seed": int(cfg["seed"]),
                "source": source, "targets": targets,
                "source_miou": _number(miou[source], f"final.miou[{source!r}]"),
                "unseen": _number(m["unseen_mean"]["final"], "unseen_mean.final"),
                "target_miou": {t: None if miou.get(t) is None else _number(miou[t], f"final.miou[{t!r}]")
                                for t in targets},
                "steps": _steps(m, cfg), "miou_definition": m.get("miou_definition", LEGACY_DEFINITION)}

    return read_finished_run(path, extract)


def load_set(pattern: str) -> dict[int, dict]:
    """{seed: run} for every run the glob names; one run per seed."""
    runs: dict[int, dict] = {}
    for path in expand(pattern):
        run = load_run(path)
        if run["seed"] in runs:
            raise cli.UsageError(f"{pattern}: seed {run['seed']} appears twice ({runs[run['seed']]['file']}, "
                                 f"{run['file']}); pairing needs one run per seed")
        runs[run["seed"]] = run
    return runs


def paired(a: list[float], b: list[float]) -> dict:
    """Mean paired difference b − a with its two-sided 95 % t-interval (None for n = 1)."""
    n = len(a)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    out = {"n": n, "a": list(a), "b": list(b), "diff": diffs,
           "mean_a": sum(a) / n if n else None, "mean_b": sum(b) / n if n else None,
           "mean_diff": sum(diffs) / n if n else None, "sd": None, "t": None, "half_width": None, "ci": None}
    if n >= 2:
        from scipy.stats import t

        mean = out["mean_diff"]
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        tq = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1))
        half = tq * sd / math.sqrt(n)
        out.update(sd=sd, t=tq, half_width=half, ci=[mean - half, mean + half])
    return out


def total(steps: dict) -> int:
    return steps["train"] + steps["finetune"]


def describe_steps(steps: dict) -> str:
    fine = f" + fine-tune {steps['finetune']}" if steps["finetune"] else ""
    return f"{total(steps)} (train {steps['train']}{fine})"


def _label(runs: dict[int, dict], pattern: str) -> str:
    return "/".join(sorted({str(r["method"]) for r in runs.values()})) or pattern


def compare(a_pattern: str, b_pattern: str, allow_unequal: bool = False) -> dict:
    """The paired comparison of the runs two globs name (see the module docstring)."""
    a_runs, b_runs = load_set(a_pattern), load_set(b_pattern)
    seeds = sorted(set(a_runs) & set(b_runs))
    a_only, b_only = sorted(set(a_runs) - set(b_runs)), sorted(set(b_runs) - set(a_runs))
    if not seeds:
        raise cli.UsageError(f"no shared seeds: A ({a_pattern}) has seeds {sorted(a_runs)}, "
                             f"B ({b_pattern}) has {sorted(b_runs)}")
    definitions = {r["miou_definition"] for r in [*a_runs.values(), *b_runs.values()]}
    if len(definitions) > 1:
        raise cli.UsageError("the runs were scored under different mIoU definitions (" + ", ".join(
            f"{d}: {', '.join(r['file'] for r in [*a_runs.values(), *b_runs.values()] if r['miou_definition'] == d)}"
            for d in sorted(definitions)) + "); re-evaluate or rerun one set")
    unequal = []
    for s in seeds:
        a, b = a_runs[s], b_runs[s]
        if a["source"] != b["source"] or sorted(a["targets"]) != sorted(b["targets"]):
            raise cli.UsageError(f"seed {s}: {a['file']} and {b['file']} differ in source or targets "
                                 f"({a['source']} -> {a['targets']} vs {b['source']} -> {b['targets']})")
        if total(a["steps"]) != total(b["steps"]):
            unequal.append(f"seed {s}: A {describe_steps(a['steps'])} vs B {describe_steps(b['steps'])}")
    if unequal and not allow_unequal:
        raise cli.UsageError("unequal total optimiser steps (" + "; ".join(unequal) + "): train both with the "
                             "same --budget, or pass --allow_unequal to compare anyway")
    label_a, label_b = _label(a_runs, a_pattern), _label(b_runs, b_pattern)
    if label_a == label_b:
        label_a, label_b = a_pattern, b_pattern
    targets = a_runs[seeds[0]]["targets"]
    per_target = {}
    for t in targets:
        both = [s for s in seeds if a_runs[s]["target_miou"][t] is not None and b_runs[s]["target_miou"][t] is not None]
        per_target[t] = {"seeds": both, **paired([a_runs[s]["target_miou"][t] for s in both],
                                                 [b_runs[s]["target_miou"][t] for s in both])}
    return {
        "a": {"label": label_a, "glob": a_pattern, "files": [a_runs[s]["file"] for s in sorted(a_runs)]},
        "b": {"label": label_b, "glob": b_pattern, "files": [b_runs[s]["file"] for s in sorted(b_runs)]},
        "seeds": seeds, "left_out": {"a_only": a_only, "b_only": b_only},
        "steps": {str(s): {"a": a_runs[s]["steps"], "b": b_runs[s]["steps"]} for s in seeds},
        "unequal_steps": unequal, "source": a_runs[seeds[0]]["source"], "confidence": CONFIDENCE,
        "miou_definition": definitions.pop(),
        "metrics": {"source": paired([a_runs[s]["source_miou"] for s in seeds],
                                     [b_runs[s]["source_miou"] for s in seeds]),
                    "unseen_mean": paired([a_runs[s]["unseen"] for s in seeds], [b_runs[s]["unseen"] for s in seeds])},
        "targets": per_target,
    }


def _f(v, sign: bool = False) -> str:
    return "–" if v is None else f"{v:+.2f}" if sign else f"{v:.2f}"


def _interval(st: dict) -> str:
    if st["n"] == 0:
        return "no pairs"
    if st["ci"] is None:
        return "n = 1: no interval"
    return f"[{st['ci'][0]:+.2f}, {st['ci'][1]:+.2f}] (±{st['half_width']:.2f})"


def _short(spec: str) -> str:
    return spec.split(":", 1)[-1] if spec.startswith("synthetic:") else spec


def markdown(result: dict) -> str:
    a, b, seeds = result["a"]["label"], result["b"]["label"], result["seeds"]
    src, uns = result["metrics"]["source"], result["metrics"]["unseen_mean"]
    steps_a = {describe_steps(v["a"]) for v in result["steps"].values()}
    steps_b = {describe_steps(v["b"]) for v in result["steps"].values()}
    lines = [f"### {b} − {a}: paired by seed (n = {len(seeds)}: seeds {', '.join(map(str, seeds))})", "",
             f"A = {a} ({result['a']['glob']}), B = {b} ({result['b']['glob']}). Optimiser steps per run: "
             f"A {' / '.join(sorted(steps_a))}, B {' / '.join(sorted(steps_b))}"
             + (" — UNEQUAL totals, compared with --allow_unequal." if result["unequal_steps"] else
                " — equal totals.")]
    left = result["left_out"]
    if left["a_only"] or left["b_only"]:
        lines.append("Left out (no partner): " + "; ".join(
            f"seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))} only in {side}"
            for side, v in (("A", left["a_only"]), ("B", left["b_only"])) if v) + ".")
    lines += ["", "| seed | A source | B source | Δ source | A unseen | B unseen | Δ unseen | steps A / B |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(seeds):
        st = result["steps"][str(s)]
        lines.append(f"| {s} | {_f(src['a'][i])} | {_f(src['b'][i])} | {_f(src['diff'][i], True)} | "
                     f"{_f(uns['a'][i])} | {_f(uns['b'][i])} | {_f(uns['diff'][i], True)} | "
                     f"{total(st['a'])} / {total(st['b'])} |")
    lines += ["", f"| final mIoU | A mean | B mean | mean Δ (B − A) | {CONFIDENCE:.0%} t-interval of Δ | n |",
              "|---|---:|---:|---:|---:|---:|"]
    rows = [("source" if _short(result["source"]) == "source" else f"source ({result['source']})", src),
            ("**unseen mean**", uns)]
    rows += [(_short(t), st) for t, st in result["targets"].items()]
    for name, st in rows:
        lines.append(f"| {name} | {_f(st['mean_a'])} | {_f(st['mean_b'])} | {_f(st['mean_diff'], True)} | "
                     f"{_interval(st)} | {st['n']} |")
    lines += ["", "Interval: mean Δ ± t(0.975, n − 1) · sd / √n, sd of the per-seed differences over n − 1. "
              f"mIoU definition: {result['miou_definition']} (npdg.metrics)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.Parser(prog="python -m npdg.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A_GLOB", help="runs of method A: a quoted glob of metrics.json files or "
                                                    "run directories (e.g. 'benches/results/dg/erm-s*.json')")
    parser.add_argument("b", metavar="B_GLOB", help="runs of method B, the same way; differences are B − A")
    parser.add_argument("--allow_unequal", "--allow-unequal", action="store_true",
                        help="compare pairs whose total optimiser steps differ (the output says which)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    cli.add_debug(parser)
    args = parser.parse_args(argv)

    def run():
        result = compare(args.a, args.b, allow_unequal=args.allow_unequal)
        print(markdown(result))
        if args.json:
            checkpoint.write_json(args.json, result)
        return 0

    return cli.guard(parser.prog, args.debug, run)


if __name__ == "__main__":
    import sys

    sys.exit(main())
