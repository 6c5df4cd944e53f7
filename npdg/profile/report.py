"""The text report of ``python -m npdg.profile``."""

from __future__ import annotations


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


def _cudnn(s: dict) -> str:
    """How cuDNN chose its algorithms (reports written before the setting existed used its heuristics)."""
    return ", cuDNN algorithms timed per shape" if s.get("cudnn_benchmark", False) else ", cuDNN heuristics"


def format_report(report: dict, top: int = 15) -> str:
    s, env = report["settings"], report["env"]
    omp = f", OMP_WAIT_POLICY={env['omp_wait_policy']}" if env.get("omp_wait_policy") else ""
    lines = [f"device: {env['device']} ({env['device_type']}, {env['threads']} threads{omp}), torch {env['torch']}; "
             f"input {s['size'][0]}x{s['size'][1]}, {s['dtype']}"
             f"{', channels_last' if s['channels_last'] else ''}{', compiled' if s['compile'] else ''}"
             f"{_cudnn(s) if env['device_type'] == 'cuda' else ''}; "
             f"load average {report.get('load_before')} -> {report.get('load_after')}"]
    rts = report.get("runtimes") or ["compile" if s["compile"] else "eager"]
    if rts != ["eager"]:
        v = report.get("versions", {})
        lines.append(f"runtimes: {', '.join(rts)} (same protocol, interleaved; {env['threads']} intra-op threads "
                     f"each)" + "".join(f"; {k} {v[k]}" for k in ("onnxruntime", "openvino") if v.get(k)))
    if report["mode"] == "sweep":
        lines.append(f"sweep {report['model']}: random scores (seed {report['seed']}), dense "
                     f"{_g(report['models']['dense']['flops'])}FLOPs")
        lines.append(f"{'runtime':<11} {'batch':>5} {'round_to':>8} {'ratio':>6} {'GFLOPs':>8} {'R':>6} "
                     f"{'median ms':>10} {'IQR%':>5} {'S':>6} {'S_paired':>8} {'E':>6}  {'x ' + rts[0]:>9}")
        for p in report["points"]:
            lines.append(f"{p.get('runtime', rts[0]):<11} {p['batch']:5d} {p['round_to']:8d} {p['ratio']:6.2f} "
                         f"{p['flops'] / 1e9:8.2f} "
                         f"{p['flops_reduction']:6.3f} {p['latency']['median_ms']:10.2f} "
                         f"{p['latency']['iqr_pct']:5.1f} {p['speedup']:6.3f} {p['speedup_paired']:8.3f} "
                         f"{p['efficiency']:6.3f}  {p.get('vs_first_runtime', 1.0):9.3f}")
        for name, layers in report["layers"].items():
            lines.append(f"\n== {name} vs dense ==")
            lines += _layer_table(layers, top)
        return "\n".join(lines)
    for label, m in report["models"].items():
        lines.append(f"{label}: {m['name']} {_g(m['flops'])}FLOPs, {m['params'] / 1e6:.2f} M params  ({m['source']})")
    by_rt = report.get("by_runtime") or {rts[0]: {"latency": report["latency"], "comparison": report["comparison"]}}
    for b in report["latency"]:
        lines += _batch_lines(report, b, rts, by_rt)
    if report["layers"]:
        lines += _layer_table(report["layers"], top)
    return "\n".join(lines)


def _batch_lines(report: dict, b: str, rts: list, by_rt: dict) -> list:
    lines = [f"\nbatch {b}:"]
    for rt in rts:
        lats, c = by_rt[rt]["latency"][b], by_rt[rt]["comparison"].get(b)
        indent = "  "
        if len(rts) > 1:
            lines.append(f"  [{rt}]")
            indent = "    "
        for label, lat in lats.items():
            lines.append(f"{indent}{label:<7}{_lat(lat)}")
        if c:
            saving = c["time_savings_efficiency"]
            lines.append(f"{indent}FLOPs reduction R = {c['flops_reduction']:.3f}x, speedup S = {c['speedup']:.3f}x "
                         f"(paired {c['speedup_paired']:.3f}x), efficiency E = S/R = {c['efficiency']:.3f} "
                         f"(paired {c['efficiency_paired']:.3f}); time-savings efficiency "
                         f"{'n/a' if saving is None else f'{saving:.3f}'}")
        unstable = [label for label, lat in lats.items() if lat["iqr_pct"] > 10]
        if unstable:
            lines.append(f"{indent}note: IQR > 10% of the median for {', '.join(unstable)} (a busy machine?)")
    if len(rts) > 1:
        cross = report["vs_first_runtime"][b]
        lines.append(f"  {'runtime':<12}" + "".join(f"{label + ' ms':>12}" for label in by_rt[rts[0]]["latency"][b])
                     + f"{'S':>7}{'E':>7}" + "".join(f"{label + ' x ' + rts[0]:>18}" for label in cross[rts[0]]))
        for rt in rts:
            lats, c = by_rt[rt]["latency"][b], by_rt[rt]["comparison"].get(b)
            se = f"{c['speedup']:7.3f}{c['efficiency']:7.3f}" if c else f"{'':>14}"
            lines.append(f"  {rt:<12}" + "".join(f"{lat['median_ms']:12.2f}" for lat in lats.values()) + se
                         + "".join(f"{v:18.3f}" for v in cross[rt].values()))
    return lines

