"""The end of a training run: evaluate dense.pt and final.pt, write metrics.json, report.md and plots.

metrics.json:
    {"method", "model", "miou_unit": "percent", "miou_definition": "standard" (npdg.metrics.MIOU_DEFINITION;
     files without the key used the legacy one), "flops_unit": "FLOPs (a multiply-add counts 2)",
     "dense": {"flops", "params", "miou": {SPEC: percent}, "per_class": {SPEC: {class: percent|null}}},
     "final": {... same ..., "widths": {group: kept units}, "sizes": {group: dense units}},
     "unseen_mean": {"dense": ..., "final": ...}, "steps": {"train": N, "finetune": M},
     "train": {"seconds": {stage: s}, "images_per_s": {...}}}
steps: the optimiser steps each stage ran (finetune 0 for a method without a prune); with --budget every
method's total is the budget (npdg.compare refuses pairs whose totals differ).
"""

from __future__ import annotations

from pathlib import Path

import npdg
from npdg import checkpoint
from npdg.builders import eval_protocols, flops_size


def _evaluate(model, val_sets, cfg, device) -> dict:
    """{SPEC: evaluate() result}, each SPEC with its protocol (npdg.data.protocol; the datasets were built
    for it by npdg.train.eval_datasets)."""
    from npdg.eval import evaluate
    protocols = eval_protocols(cfg)
    return {spec: evaluate(model, ds, batch_size=cfg.batch_size, device=device, desc=f"eval {spec}",
                           amp=cfg.amp, **protocols[spec].eval_kwargs())
            for spec, ds in val_sets.items()}


def prune_ratio(cfg, metrics: dict) -> float:
    """The unit ratio the prune removed: the one flops_target's bisection chose, else cfg.ratio."""
    return metrics["final"].get("prune_ratio", cfg.ratio)




def _entry(model, results, cfg) -> dict:
    from npdg.pruning import flops, params

    return {"flops": flops(model, flops_size(cfg)), "params": params(model),
            "miou": {spec: r["miou"] for spec, r in results.items()},
            "per_class": {spec: r["per_class"] for spec, r in results.items()}}


def unseen_mean(entry: dict, cfg) -> float | None:
    vals = [entry["miou"][t] for t in cfg.targets if entry["miou"].get(t) is not None]
    return sum(vals) / len(vals) if vals else None


def stage_steps(cfg, history: dict) -> dict:
    """{"train": N, "finetune": M}: the optimiser steps each stage ran, as recorded by Run.optimise; a run resumed
    from a checkpoint written before that record existed falls back to its config (the stages ran to the end)."""
    return steps_or_config(history.get("steps", {}), cfg.iters, cfg.finetune_iters, cfg.prunes)


def steps_or_config(recorded: dict, iters: int, finetune_iters: int, prunes: bool) -> dict:
    """{"train", "finetune"} from ``recorded`` where it has them, else what the config ran (a method without a
    prune fine-tunes 0 steps); shared by the report and by npdg.compare reading older metrics files."""
    return {"train": recorded.get("train", iters),
            "finetune": recorded.get("finetune", finetune_iters if prunes else 0)}


def write_metrics_and_report(run_dir: Path, cfg, val_sets: dict, ctx) -> dict:
    device = ctx.device
    dense = npdg.load_model(run_dir / "dense.pt").to(device)
    dense_res = _evaluate(dense, val_sets, cfg, device)
    h, w = flops_size(cfg)
    from npdg.metrics import MIOU_DEFINITION

    metrics = {"method": cfg.method, "model": cfg.model, "miou_unit": "percent", "miou_definition": MIOU_DEFINITION,
               "flops_unit": f"FLOPs at {h}x{w}, batch 1 (a multiply-add counts 2)",
               "eval_protocol": {spec: str(p) for spec, p in eval_protocols(cfg).items()},
               "eval_sizes": {spec: r["sizes"] for spec, r in dense_res.items()},
               "dense": _entry(dense, dense_res, cfg)}
    if cfg.prunes:
        final = npdg.load_model(run_dir / "final.pt").to(device)
        metrics["final"] = _entry(final, _evaluate(final, val_sets, cfg, device), cfg)
    else:
        final = dense
        metrics["final"] = dict(metrics["dense"])
    metrics["final"]["widths"] = final.widths()
    metrics["final"]["sizes"] = dense.widths()
    metrics["unseen_mean"] = {k: unseen_mean(metrics[k], cfg) for k in ("dense", "final")}
    if ctx.history.get("sensitivity_pruned_vs_kept"):
        metrics["final"]["sensitivity_pruned_vs_kept"] = ctx.history["sensitivity_pruned_vs_kept"]
    if "prune_ratio" in ctx.history:  # flops_target: the ratio the bisection chose
        metrics["final"]["prune_ratio"] = ctx.history["prune_ratio"]
    metrics["steps"] = stage_steps(cfg, ctx.history)
    metrics["train"] = {"seconds": ctx.history["seconds"], "images_per_s": ctx.history["images_per_s"]}
    metrics["config"] = cfg.to_dict()
    checkpoint.write_json(run_dir / "metrics.json", metrics)
    drawn = prediction_grid(run_dir / "predictions.png", val_sets, dense, final if cfg.prunes else None, device)
    write_report(run_dir, cfg, metrics, ctx.history, pictures=bool(drawn))
    print_table(run_dir, cfg, metrics)
    return metrics


def _fmt(v):
    return "–" if v is None else f"{v:.2f}"


def _short(spec: str) -> str:
    """A domain's name in tables and figures: "synthetic:fog" -> "fog"; other SPECs as they are."""
    return spec.split(":", 1)[-1] if spec.startswith("synthetic:") else spec


def table_lines(cfg, metrics) -> list[str]:
    specs = [cfg.source] + list(cfg.targets)
    short = [_short(s) for s in specs]
    lines = ["| model | GFLOPs | params (M) | " + " | ".join(short) + " | unseen mean |",
             "|---|---:|---:|" + "---:|" * (len(specs) + 1)]
    for key in ("dense", "final"):
        e = metrics[key]
        lines.append(f"| {key} | {e['flops'] / 1e9:.3f} | {e['params'] / 1e6:.3f} | "
                     + " | ".join(_fmt(e["miou"].get(s)) for s in specs)
                     + f" | {_fmt(metrics['unseen_mean'][key])} |")
    return lines


def print_table(run_dir, cfg, metrics) -> None:
    d, f = metrics["dense"], metrics["final"]
    print(f"\nrun directory: {run_dir}")
    print("\n".join(table_lines(cfg, metrics)))
    if cfg.prunes:
        print(f"final/dense: FLOPs {f['flops'] / d['flops']:.1%}, params {f['params'] / d['params']:.1%}")
    if f.get("sensitivity_pruned_vs_kept"):
        print(_sensitivity_line(f["sensitivity_pruned_vs_kept"]))


def _sensitivity_line(pk: dict) -> str:
    return (f"style sensitivity (last pass, mean w): pruned units {pk['pruned']:.3f}, kept {pk['kept']:.3f} "
            f"({pk['units_pruned']} pruned / {pk['units_kept']} kept downstream of the perturbation)")


def _plots(run_dir: Path, cfg, metrics, history) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    for stage, rows in history.get("losses", {}).items():
        if rows:
            ax.plot([r[0] for r in rows], [r[1] for r in rows], lw=1, label=stage)
    ax.set(xlabel="iteration (of the stage)", ylabel="loss", title=f"{cfg.method} {cfg.model}", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    checkpoint.save_figure(fig, run_dir / "loss.png")
    plt.close(fig)
    shown.append("![loss](loss.png)")
    if cfg.prunes:
        widths, sizes = metrics["final"]["widths"], metrics["final"]["sizes"]
        names = list(sizes)
        frac = [widths[n] / sizes[n] for n in names]
        fig, ax = plt.subplots(figsize=(max(6.4, 0.12 * len(names)), 3.4), dpi=110)
        ax.bar(range(len(names)), frac, color="tab:blue")
        ratio = prune_ratio(cfg, metrics)
        ax.axhline(1 - ratio, color="k", lw=0.8, ls="--", label=f"1 - ratio = {1 - ratio:.2f}")
        ax.set(ylim=(0, 1.05), ylabel="kept fraction", title="kept units per layer (input → output order)")
        if len(names) <= 80:  # readable labels: the group name without the ".bn" / ".gate" tail
            ax.set_xticks(range(len(names)), [n.rsplit(".", 1)[0] for n in names], rotation=90, fontsize=6)
        else:
            ax.set_xlabel("unit group index")
        ax.legend(loc="lower left")
        fig.tight_layout()
        checkpoint.save_figure(fig, run_dir / "kept.png")
        plt.close(fig)
        shown.append("![kept fraction per layer](kept.png)")
    if (run_dir / "sensitivity.json").is_file():
        from npdg.sensitivity import Sensitivity, plot_sensitivity

        plot_sensitivity(Sensitivity.load(run_dir / "sensitivity.json"), run_dir / "sensitivity.png")
        shown.append("![style sensitivity per layer](sensitivity.png)")
    return shown


def prediction_grid(path, val_sets: dict, dense, final=None, device="cpu", n: int = 2) -> list:
    """Draw one PNG at ``path``: a row per (domain, image) for the first ``n`` images of each val set, in
    ``val_sets`` order (a shorter set shows what it has, an empty one is skipped); columns input (un-normalised
    with npdg.data.transforms.denormalize) | ground truth | dense prediction | final prediction, or, with
    ``final`` None (a method without a prune), one prediction column titled "final = dense". A prediction is the
    argmax of npdg.eval._logits (logits at the input size) of the model in eval mode, without grad, on
    ``device``; labels and predictions are coloured by npdg.data.labels.colorize (ignore black). The models'
    train/eval modes are restored. Returns the rows drawn, [(row label, [(H, W, 3) uint8 array per column])];
    with no rows nothing is written."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npdg.data.labels import colorize
    from npdg.data.transforms import denormalize
    from npdg.eval import _logits

    models = [dense] if final is None else [dense, final]
    titles = ["input", "ground truth"] + (["final = dense"] if final is None else ["dense", "final"])
    modes = [m.training for m in models]
    rows = []
    try:
        with torch.no_grad():
            for m in models:
                m.eval()
            for spec, ds in val_sets.items():
                for i in range(min(n, len(ds))):
                    image, label = ds[i]
                    x = image[None].to(device)
                    shown = denormalize(image).clamp(0, 1).permute(1, 2, 0).mul(255).round().byte().numpy()
                    preds = [colorize(_logits(m, x).argmax(1)[0].cpu().numpy()) for m in models]
                    rows.append((f"{_short(spec)} #{i}", [shown, colorize(label.numpy()), *preds]))
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    if not rows:
        return rows
    side = 2.4  # inches per panel width; the height follows the tallest image's aspect
    aspect = max(panels[0].shape[0] / panels[0].shape[1] for _, panels in rows)
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(side * len(titles), side * aspect * len(rows) + 0.4),
                             dpi=110, squeeze=False)
    for r, (name, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set(xticks=[], yticks=[])
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    checkpoint.save_figure(fig, path)
    plt.close(fig)
    return rows


PREDICTIONS = "![predictions: input | ground truth | dense | final](predictions.png)"


def write_report(run_dir: Path, cfg, metrics: dict, history: dict, pictures: bool = False) -> None:
    """report.md in ``run_dir``: the table, the timings and the plots; ``pictures`` embeds predictions.png
    (drawn by :func:`prediction_grid`) after them."""
    d, f = metrics["dense"], metrics["final"]
    secs = history.get("seconds", {})
    rates = history.get("images_per_s", {})
    steps = metrics.get("steps") or stage_steps(cfg, history)
    budget = f" (budget {cfg.budget} steps in all)" if cfg.budget else ""
    prune = ""
    if cfg.prunes:
        target = f", chosen for flops_target {cfg.flops_target}" if cfg.flops_target > 0 else ""
        prune = (f"; prune ratio {prune_ratio(cfg, metrics):.4g}{target} (round_to "
                 f"{cfg.round_to}), {steps['finetune']} fine-tuning iterations")
    lines = [f"# {cfg.method} · {cfg.model}", "",
             f"Source {cfg.source}; {steps['train']} training iterations, batch {cfg.batch_size}, crop "
             f"{cfg.crop[0]}x{cfg.crop[1]}" + prune
             + f"{budget}. mIoU in percent; FLOPs at {'x'.join(map(str, flops_size(cfg)))}, batch 1.", "",
             *table_lines(cfg, metrics), ""]
    if cfg.prunes:
        lines += [f"final / dense: FLOPs {f['flops'] / d['flops']:.1%}, params {f['params'] / d['params']:.1%}.", ""]
    if f.get("sensitivity_pruned_vs_kept"):
        lines += [_sensitivity_line(f["sensitivity_pruned_vs_kept"]) + ".", ""]
    lines += ["| stage | seconds | images/s |", "|---|---:|---:|"]
    lines += [f"| {s} | {secs[s]:.0f} | {rates.get(s, 0):.1f} |" for s in secs]
    lines += ["", *_plots(run_dir, cfg, metrics, history), *([PREDICTIONS] if pictures else []), ""]
    checkpoint.write_text(run_dir / "report.md", "\n".join(lines))



def read_finished_run(path, extract):
    """``extract(metrics file, metrics, config)`` for the finished run at ``path`` (a run directory or its
    metrics.json; the config comes from metrics.json, else the run's config.json). A missing file is
    FileNotFoundError; anything missing or malformed inside is a CheckpointError naming the file."""
    import json

    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found (is {path} a finished run?)")
    try:
        m = json.loads(file.read_text())
        cfg = m.get("config") or json.loads(((path if path.is_dir() else path.parent) / "config.json").read_text())
        return extract(file, m, cfg)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as exc:
        raise checkpoint.CheckpointError(f"{file}: not the metrics of a finished npdg run "
                                         f"({type(exc).__name__}: {exc})") from exc

def compare_runs(metrics_files) -> str:
    """A markdown table of finished runs (run directories or metrics.json files): per-domain mIoU of `final`, the
    mean over unseen domains, and final FLOPs / params relative to dense. Runs that differ only in the seed
    (same method and λ) also get a row of their means, after the per-seed rows."""

    from npdg.metrics import LEGACY_DEFINITION

    runs, specs = [], None

    def row(file, m, cfg):
        nonlocal specs
        specs = specs or [cfg["source"]] + list(cfg["targets"])
        f, d = m["final"], m["dense"]
        return {"name": f"{m['method']}" + (f" λ={cfg['lam']}" if m["method"] == "npdg" else ""),
                "seed": cfg["seed"], "miou": [f["miou"].get(s) for s in specs],
                "definition": m.get("miou_definition", LEGACY_DEFINITION),
                "unseen": m["unseen_mean"]["final"], "flops": (f["flops"], f["flops"] / d["flops"]),
                "params": (f["params"], f["params"] / d["params"])}

    for path in metrics_files:
        runs.append(read_finished_run(path, row))

    def mean(values):
        return None if any(v is None for v in values) else sum(values) / len(values)

    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    for name, members in groups.items():
        if len({r["seed"] for r in members}) > 1:
            runs.append({"name": name, "seed": "mean of seeds " + ", ".join(str(r["seed"]) for r in members),
                         "miou": [mean(col) for col in zip(*(r["miou"] for r in members), strict=True)],
                         "unseen": mean([r["unseen"] for r in members]),
                         **{k: tuple(mean(col) for col in zip(*(r[k] for r in members), strict=True))
                            for k in ("flops", "params")}})
    rows = []
    for r in runs:
        seed = r["seed"] if isinstance(r["seed"], str) else f"seed {r['seed']}"
        cells = [_fmt(v) for v in r["miou"]] + [
            f"**{_fmt(r['unseen'])}**", f"{r['flops'][0] / 1e9:.3f} ({r['flops'][1]:.0%})",
            f"{r['params'][0] / 1e6:.2f} ({r['params'][1]:.0%})"]
        rows.append(f"| {r['name']} · {seed} | " + " | ".join(cells) + " |")
    short = [s.split(":", 1)[-1] for s in specs or []]
    head = ["| run | " + " | ".join(short) + " | unseen mean | final GFLOPs (vs dense) | final params M (vs dense) |",
            "|---|" + "---:|" * (len(short) + 3)]
    definitions = sorted({r["definition"] for r in runs if "definition" in r})
    note = f"mIoU definition: {', '.join(definitions)} (npdg.metrics)" + (
        " — MIXED: these rows are not comparable" if len(definitions) > 1 else "")
    return "\n".join(head + rows + ["", note])


def main(argv=None) -> int:
    from npdg import cli

    parser = cli.Parser(prog="python -m npdg.report",
                        description="Markdown table of finished runs (their metrics.json).")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of python -m npdg.train")
    cli.add_debug(parser)
    args = parser.parse_args(argv)
    return cli.guard(parser.prog, args.debug, lambda: print(compare_runs(args.runs)) or 0)


if __name__ == "__main__":
    import sys

    sys.exit(main())
