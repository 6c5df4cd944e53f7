"""Run: python benches/prune_residual_r50.py benches/results/cpu_2core_prune_residual_r50.json

R50 DeepLabV3+, ratio 0.3, round_to 8, random γ: FLOPs fraction with / without --prune_residual (and with
exact_ratio: the ratio is the fraction actually removed, see npdg.pruning.select), prune wall time."""
import json
import platform
import statistics
import sys
import time

import torch

from npdg.models import create_model
from npdg.pruning import compact, flops, params, select_masks

RATIO, ROUND_TO, SIZE, REPEATS = 0.3, 8, (256, 512), 5


def r50_with_random_gamma(seed: int):
    """bench_pruned.dense_with_random_gamma, plus every stream BN's γ (otherwise all 1)."""
    torch.manual_seed(seed)
    model = create_model("deeplabv3plus_r50", num_classes=19).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in model.prunable_units(residual=True):
            for gm in (g.gammas() if hasattr(g, "gammas") else [g.gamma()]):
                gm.copy_(torch.rand(g.size, generator=gen))
    return model


dense = r50_with_random_gamma(0)
f_dense, p_dense = flops(dense, SIZE), params(dense)
rows = {}
for residual, exact in ((False, False), (True, False), (False, True), (True, True)):
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        masks = select_masks(dense, ratio=RATIO, round_to=ROUND_TO, prune_residual=residual, exact_ratio=exact)
        small = compact(dense, masks)
        times.append(time.perf_counter() - t)
    f, p = flops(small, SIZE), params(small)
    removed = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    rows[("prune_residual" if residual else "default") + ("_exact_ratio" if exact else "")] = {
        "units_removed_fraction": round(removed, 4),
        "flops": f, "flops_fraction": round(f / f_dense, 4), "params": p, "params_fraction": round(p / p_dense, 4),
        "prune_compact_s_median": round(statistics.median(times), 4),
        "prune_compact_s_all": [round(t, 4) for t in times],
        "stream_widths": {k: v for k, v in small.widths().items() if k.endswith((".residual", ".stem"))},
    }
draws = {}  # the FLOPs fractions on other random-γ draws (how close to 0.50 is luck)
for seed in (1, 2, 3, 4):
    other = r50_with_random_gamma(seed)
    draws[seed] = {name: round(flops(compact(other, select_masks(other, ratio=RATIO, round_to=ROUND_TO,
                                                                 prune_residual=True, exact_ratio=exact)),
                                     SIZE) / f_dense, 4)
                   for name, exact in (("prune_residual", False), ("prune_residual_exact_ratio", True))}
out = {"model": "deeplabv3plus_r50", "ratio": RATIO, "round_to": ROUND_TO, "flops_input": list(SIZE),
       "gamma": "uniform(0,1) on every prunable BN incl. residual-stream BNs (seed 0)", "repeats": REPEATS,
       "dense_flops": f_dense, "dense_params": p_dense, "rows": rows, "flops_fraction_other_gamma_seeds": draws,
       "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
               "note": "2-core CPU shared with training runs; wall times are noisy"}}
json.dump(out, open(sys.argv[1], "w"), indent=2)
keys = ("flops_fraction", "params_fraction", "prune_compact_s_median")
print(json.dumps({k: {kk: v[kk] for kk in keys} for k, v in rows.items()}))
print(json.dumps(draws))
