"""npdg pruning against Torch-Pruning on DeepLabV3+ R50 at equal FLOPs: wall time of the whole prune, and
inference latency of the two pruned models (and the dense one) in the same run.

Torch-Pruning (``pip install torch-pruning``; a bench-only optional dependency, skipped when absent) runs
its own dependency graph on the same random-γ model: ``MetaPruner`` with ``BNScaleImportance`` (|γ|, the
criterion npdg ranks by), global ranking, ``round_to=8``, the 19-class classifier ignored. It may prune
any coupled channel group, the residual streams included; npdg prunes the declared units only (bottleneck
inner channels, ASPP, decoder) at unit ratio 0.3. Torch-Pruning's ratio is calibrated (untimed, on CPU at a
small input; the FLOPs ratio of these convnets does not depend on the input size) so that its model has
the FLOPs of the npdg model: one iterative run in steps of 0.02 picks the step closest in (conv) FLOPs, and
the timed prune is then a one-shot prune of a fresh copy at that ratio. Rows record both FLOPs, and
``flops_mismatch`` = FLOPs(Torch-Pruning) / FLOPs(npdg) - 1.

A second pair (issue 19) prunes the residual streams too: ``npdg_residual`` = ``select_masks(...,
prune_residual=True)`` at the same unit ratio, against ``torch_pruning_residual`` = Torch-Pruning calibrated
to that model's FLOPs in the same way. It runs on a copy of the dense model whose residual-stream BN γ's are
random as well (``dense_with_random_gamma`` randomises the default groups only, so every stream γ would be
1); the default groups' γ's are unchanged and the first pair keeps the original model, so its rows see
exactly what they saw before. Rows record ``prune_residual``, and ``tp_ratio`` / ``flops_mismatch`` of their
own pair (the dense row: of the first pair). A third pair, ``npdg_residual_exact`` /
``torch_pruning_residual_exact``, is the second with ``exact_ratio=True`` (the unit ratio is the fraction
actually removed per kind, instead of rounding every group's kept count up); rows record ``exact_ratio``.

Timed prune: npdg = ``select_masks`` + ``compact`` (a new model); Torch-Pruning = building the pruner
(tracing the dependency graph) + ``step()`` on a deep copy (the copy itself is not timed). Latency
conditions as in bench_pruned.py (CUDA: bf16, channels_last, batch 8, 512x1024; CPU: fp32, batch 1,
256x512; quick mode: R18, 32x64).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benches.bench_pruned import (
    bench_conditions,
    bench_input,
    condition_info,
    dense_with_random_gamma,
    latency_row,
    quick_threads,
    to_bench,
)
from benches.conftest import env_info
from npdg.pruning import compact, flops, params, select_masks

tp = pytest.importorskip("torch_pruning", reason="optional bench dependency torch-pruning is not installed "
                                                  "(pip install torch-pruning)")

RATIO = 0.3
ROUND_TO = 8
CALIBRATION_SIZE = (64, 128)
STEP = 0.02  # calibration step of Torch-Pruning's ratio: ~3 % of FLOPs on R50


# npdg provider -> (its Torch-Pruning provider at equal FLOPs, prune_residual, exact_ratio)
PAIRS = {"npdg": ("torch_pruning", False, False), "npdg_residual": ("torch_pruning_residual", True, False),
         "npdg_residual_exact": ("torch_pruning_residual_exact", True, True)}
PROVIDERS = [p for ours, (theirs, _, _) in PAIRS.items() for p in (ours, theirs)]
PAIR_OF = {p: ours for ours, (theirs, _, _) in PAIRS.items() for p in (ours, theirs)}
PAIR_OF["dense"] = "npdg"


def npdg_prune(model, residual: bool = False, exact: bool = False):
    return compact(model, select_masks(model, ratio=RATIO, round_to=ROUND_TO, prune_residual=residual,
                                       exact_ratio=exact))


def with_random_stream_gamma(dense, seed: int = 1):
    """A copy of `dense` whose residual-stream BN γ's (every BN scaling a coupled group) are random too, as in
    benches/prune_residual_r50.py; the default groups' γ's and all other weights are those of `dense`."""
    model = copy.deepcopy(dense)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in model.prunable_units(residual=True):
            if g.kind == "residual":
                for gamma in g.gammas():
                    gamma.copy_(torch.rand(g.size, generator=gen))
    return model


def _tp_pruner(model, ratio, steps=1):
    example = torch.zeros(1, 3, *CALIBRATION_SIZE)
    return tp.pruner.MetaPruner(model, example, importance=tp.importance.BNScaleImportance(), pruning_ratio=ratio,
                                global_pruning=True, round_to=ROUND_TO, iterative_steps=steps,
                                ignored_layers=[model.head.classifier])


def tp_prune(model, ratio):
    """Torch-Pruning's one-shot prune of `model` (in place) at `ratio`."""
    _tp_pruner(model, ratio).step()
    return model


def conv_flops_counter(dense):
    """A fast FLOPs count for models with `dense`'s module names (pruned copies): 2 x weight elements x output
    positions of every conv, output sizes recorded once on `dense` at CALIBRATION_SIZE. The convs are all of
    DeepLabV3+'s FLOPs, and FlopCounterMode counts them the same way; no forward per calibration step."""
    positions = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: positions.__setitem__(n, out.shape[-2:].numel()))
             for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            dense.eval()(torch.zeros(1, 3, *CALIBRATION_SIZE))
    finally:
        for h in hooks:
            h.remove()
    return lambda model: sum(2 * m.weight.numel() * positions[n] for n, m in model.named_modules() if n in positions)


def calibrate_tp_ratio(dense, target, max_ratio: float = 0.7, step: float = STEP) -> float:
    """The Torch-Pruning ratio (a multiple of `step`) whose model's FLOPs are closest to those of `target`."""
    count = conv_flops_counter(dense)
    goal = count(target)
    model = copy.deepcopy(dense)
    steps = round(max_ratio / step)
    pruner = _tp_pruner(model, max_ratio, steps)
    best = (abs(count(model) - goal), 0.0)
    for k in range(1, steps + 1):
        pruner.step()
        f = count(model)
        best = min(best, (abs(f - goal), round(k * step, 4)))
        if f < goal:
            break
    return best[1]


@pytest.fixture(scope="module")
def problem(bench_device, quick):
    with quick_threads(quick):
        cond = bench_conditions(bench_device, quick)
        dense = dense_with_random_gamma(cond["model"])
        streams = with_random_stream_gamma(dense)
        bases = {"npdg": dense, "npdg_residual": streams, "npdg_residual_exact": streams}  # what each pair prunes
        models, tp_ratios = {"dense": dense}, {}  # CPU
        for ours, (theirs, residual, exact) in PAIRS.items():
            base = bases[ours]
            models[ours] = npdg_prune(base, residual, exact)
            tp_ratios[ours] = calibrate_tp_ratio(base, models[ours], step=0.05 if quick else STEP)
            models[theirs] = tp_prune(copy.deepcopy(base), tp_ratios[ours])
        on_device = {k: to_bench(copy.deepcopy(m), cond, bench_device) for k, m in models.items()}
        counts = {k: (flops(m, cond["size"]), params(m)) for k, m in on_device.items()}
        yield {"cond": cond, "dense": dense, "bases": bases, "tp_ratios": tp_ratios, "models": models,
               "on_device": on_device, "counts": counts, "medians": {}}


def _mismatch(counts, ours: str) -> float:
    return counts[PAIRS[ours][0]][0] / counts[ours][0] - 1


def _info(benchmark, problem, provider, device):
    cond, counts = problem["cond"], problem["counts"]
    f, p = counts[provider]
    f_dense, p_dense = counts["dense"]
    ours = PAIR_OF[provider]
    benchmark.extra_info.update(env_info(device))
    benchmark.extra_info.update(condition_info(cond))
    benchmark.extra_info.update(provider=provider, npdg_ratio=RATIO, tp_ratio=problem["tp_ratios"][ours],
                                round_to=ROUND_TO, prune_residual=provider != "dense" and PAIRS[ours][1],
                                exact_ratio=provider != "dense" and PAIRS[ours][2],
                                flops=f, flops_dense=f_dense, flops_ratio=f / f_dense, flops_reduction=f_dense / f,
                                params=p, params_ratio=p / p_dense, flops_mismatch=_mismatch(counts, ours),
                                torch_pruning=tp.__version__)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_prune_wall_time(benchmark, provider, problem, bench_device, quick):
    ours = PAIR_OF[provider]
    dense, ratio = problem["bases"][ours], problem["tp_ratios"][ours]
    benchmark.group = f"prune {problem['cond']['model']} to equal FLOPs (CPU)"
    rounds = 1 if quick else 3
    if provider in PAIRS:
        small = benchmark.pedantic(npdg_prune, args=(dense, *PAIRS[ours][1:]), rounds=rounds,
                                   warmup_rounds=0 if quick else 1)
    else:
        small = benchmark.pedantic(tp_prune, setup=lambda: ((copy.deepcopy(dense), ratio), {}), rounds=rounds)
    _info(benchmark, problem, provider, torch.device("cpu"))
    assert flops(small, CALIBRATION_SIZE) == flops(problem["models"][provider], CALIBRATION_SIZE)


@pytest.mark.parametrize("provider", ["dense", *PROVIDERS])
def test_pruned_latency_equal_flops(benchmark, provider, problem, bench_device, quick):
    cond = problem["cond"]
    model = problem["on_device"][provider]
    h, w = cond["size"]
    group = f"pruned latency at equal FLOPs {cond['model']} {h}x{w} b{cond['batch']} {str(cond['dtype'])[6:]}"
    median = latency_row(benchmark, model, bench_input(cond, bench_device), bench_device, group, 0 if quick else 2)
    _info(benchmark, problem, provider, bench_device)
    medians = problem["medians"]
    medians[provider] = median
    if median is not None:
        benchmark.extra_info["images_per_s"] = cond["batch"] / median
        if medians.get("dense") is not None:
            speedup = medians["dense"] / median
            benchmark.extra_info.update(speedup=speedup, efficiency=speedup / benchmark.extra_info["flops_reduction"])
    assert abs(_mismatch(problem["counts"], PAIR_OF[provider])) < (0.1 if quick else 0.03)  # equal FLOPs
