"""Score finished runs on a style-shifted source val and pair them by seed.

    python benches/style_val.py --restyle 0.5 --out styleval.json 'npdg=runs/npdg-s*' 'erm=runs/erm-s*'

Each LABEL=GLOB names run directories (final.pt + config.json). A run's source val is rebuilt from its config
(source, seed, eval size, val_num — the split its metrics.json scored) and every image gets a fixed random RGB
style (``npdg.eval.Restyled``: pixel_restyle at --restyle, seeded per image, the same for every model): a style
validation made from the source split alone, never from a target domain. Writes {"restyle", "runs": {label:
{seed: {"dir", "source", "restyled_source"}}}, "paired": {label: paired stats vs the first label}} and prints
the paired table (mean difference with its 95 % t-interval, ``npdg.compare.paired``).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path


def score(run_dir: Path, restyle: float) -> dict:
    import npdg
    from npdg.data.protocol import build_eval_dataset, protocol_for
    from npdg.eval import Restyled, evaluate

    cfg = json.loads((run_dir / "config.json").read_text())
    protocol = protocol_for(cfg["source"], tuple(cfg["eval_size"]), cfg.get("eval_protocol", []))
    val = build_eval_dataset(cfg["source"], protocol, split="val", num=cfg["val_num"], seed=cfg["seed"])
    model = npdg.load_model(run_dir / "final.pt")
    kwargs = dict(batch_size=cfg["batch_size"], progress=False, **protocol.eval_kwargs())
    return {"dir": str(run_dir), "seed": int(cfg["seed"]), "source": evaluate(model, val, **kwargs)["miou"],
            "restyled_source": evaluate(model, Restyled(val, restyle, seed=cfg["seed"]), **kwargs)["miou"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benches/style_val.py", description=__doc__.split("\n\n")[0])
    p.add_argument("sets", nargs="+", metavar="LABEL=GLOB", help="run directories per label; the first is A")
    p.add_argument("--restyle", type=float, default=0.5, help="RGB style strength (npdg.eval --restyle)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    from npdg.compare import paired

    runs: dict[str, dict[int, dict]] = {}
    for item in args.sets:
        label, _, pattern = item.partition("=")
        dirs = sorted(Path(d) for d in glob.glob(pattern) if (Path(d) / "final.pt").is_file())
        if not label or not dirs:
            p.error(f"{item!r}: expected LABEL=GLOB naming run directories with final.pt")
        runs[label] = {}
        for d in dirs:
            r = score(d, args.restyle)
            runs[label][r.pop("seed")] = r
    base, *others = runs
    result = {"restyle": args.restyle, "runs": runs, "paired": {}}
    print(f"| B vs {base} | seeds | Δ source | Δ restyled source ({args.restyle}) |\n|---|---:|---:|---:|")
    for label in others:
        seeds = sorted(set(runs[base]) & set(runs[label]))
        stats = {key: paired([runs[base][s][key] for s in seeds], [runs[label][s][key] for s in seeds])
                 for key in ("source", "restyled_source")}
        result["paired"][label] = {"seeds": seeds, **stats}
        cells = [f"{st['mean_diff']:+.2f}" + (f" [{st['ci'][0]:+.2f}, {st['ci'][1]:+.2f}]" if st["ci"] else "")
                 for st in stats.values()]
        print(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
