"""Turn a pytest-benchmark JSON file into a markdown table (one row per benchmark).

    python benches/summarize.py bench.json [more.json ...] > summary.md

Each row's speed-up is against the baseline provider (`eager` reference or plain-PyTorch loop) of
the same pytest-benchmark group; benches set the group to one problem (op, shape, dtype, layout).
"""

from __future__ import annotations

import json
import sys

BASELINES = ("eager", "torch_loop", "loop")


def rows(data: dict) -> list[dict]:
    out = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        out.append({"name": b["name"], "group": b.get("group") or b["fullname"].split("::")[0],
                    "median_ms": b["stats"]["median"] * 1e3, "info": info})
    return out


def main(paths: list[str]) -> None:
    files = [json.load(open(p)) for p in paths]
    data = files[0]
    table = [r for d in files for r in rows(d)]
    base = {}
    for r in table:
        if r["info"].get("provider") in BASELINES:  # a group = one problem (op, shape, dtype, layout)
            base[r["group"]] = r["median_ms"]
    device = next((r["info"].get("device") for r in table if r["info"].get("device")), "unknown")
    versions = next((r["info"] for r in table if "torch" in r["info"]), {})
    print(f"# Benchmarks on {device}\n")
    print(f"torch {versions.get('torch')}, CUDA {versions.get('cuda')}, triton {versions.get('triton')}, "
          f"{data.get('datetime', '')}\n")
    print("| benchmark | median (ms) | vs baseline | GB/s | % of copy | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in table:
        info = r["info"]
        ref = base.get(r["group"])
        speedup = f"{ref / r['median_ms']:.2f}x" if ref and info.get("provider") not in BASELINES else ""
        gbps = f"{info['gbps']:.0f}" if "gbps" in info else ""
        pct = f"{info['pct_of_copy']:.0f}" if "pct_of_copy" in info else ""
        ips = f"{info['images_per_s']:.1f}" if "images_per_s" in info else ""
        print(f"| {r['name']} | {r['median_ms']:.3f} | {speedup} | {gbps} | {pct} | {ips} |")


if __name__ == "__main__":
    main([p for p in sys.argv[1:] if not p.startswith('-')])
