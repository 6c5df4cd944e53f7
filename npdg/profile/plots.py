"""The PNG plot of ``python -m npdg.profile --plot``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from npdg import checkpoint


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
            lines[(p.get("runtime", "eager"), p["round_to"], p["batch"])].append(p)
        top_r = 1.0
        runtimes = list(dict.fromkeys(k[0] for k in lines))  # line style per runtime, colour per round_to x batch
        colours = {k: f"C{i % 10}" for i, k in enumerate(sorted(dict.fromkeys(k[1:] for k in lines)))}
        for (runtime, rt, b), pts in sorted(lines.items(), key=lambda kv: (runtimes.index(kv[0][0]), kv[0][1:])):
            name = f"{runtime}, round_to {rt}, batch {b}"
            style = {"color": colours[(rt, b)], "ls": ("-", "--", "-.", ":")[runtimes.index(runtime) % 4],
                     "marker": "o"}
            pts.sort(key=lambda p: p["ratio"])
            xs, ys = [p["flops_reduction"] for p in pts], [p["speedup"] for p in pts]
            top_r = max(top_r, *xs, *ys)
            ax.plot(xs, ys, label=name, **style)
            for p in pts:
                ax.annotate(f"{p['ratio']:g}", (p["flops_reduction"], p["speedup"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
            ax2.plot([p["ratio"] for p in pts], [p["efficiency"] for p in pts], label=name, **style)
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
        by_rt = report.get("by_runtime") or {"eager": {"latency": report["latency"],
                                                       "comparison": report["comparison"]}}
        multi = len(by_rt) > 1
        for b, lats, rt in ((b, lats, rt) for rt, d in by_rt.items() for b, lats in d["latency"].items()):
            for label, lat in lats.items():
                labels.append(f"{label}\n{rt + ' ' if multi else ''}batch {b}")
                meds.append(lat["median_ms"])
                errs[0].append(lat["median_ms"] - lat["p25_ms"])
                errs[1].append(lat["p75_ms"] - lat["median_ms"])
        ax.bar(range(len(meds)), meds, yerr=errs, capsize=4, color=["C0", "C1"] * len(meds))
        ax.set_xticks(range(len(meds)), labels, fontsize=8, rotation=40 if multi else 0,
                      ha="right" if multi else "center")
        title = "latency: median, p25-p75"
        for b, c, rt in ((b, c, rt) for rt, d in by_rt.items() for b, c in d["comparison"].items()):
            title += (f"\n{rt + ' ' if multi else ''}batch {b}: R {c['flops_reduction']:.2f}x, "
                      f"S {c['speedup']:.2f}x, E {c['efficiency']:.2f}")
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

