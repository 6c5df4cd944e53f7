"""Inference latency of compacted (physically pruned) models at unit ratios 0 ... 0.5 against the dense model,
measured in the same run: how much of the FLOPs saving becomes wall-clock time on the bench device.

Each model is DeepLabV3+ R50 with random weights and random γ (as after sparse training), pruned with
``select_masks(ratio=r, round_to=8)`` (|γ| ranking) + ``npdg.pruning.compact``; ratio 0 is the dense model.
Conditions follow the issue's targets: CUDA -- bf16, channels_last, batch 8, 512x1024; CPU -- fp32,
batch 1, 256x512. Quick mode: DeepLabV3+ R18 at 32x64, ratios 0 and 0.3, fp32.

Every row records in extra_info the device and versions, FLOPs per image (``npdg.pruning.flops`` at the
bench size), ``flops_ratio`` = FLOPs / dense FLOPs, and -- once the dense row of the same run has a median
-- ``speedup`` = dense median / this median and ``efficiency`` = speedup / (dense FLOPs / FLOPs).
``python -m npdg.profile --sweep`` measures the same curve interleaved, with a per-layer breakdown.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benches.conftest import env_info, quick_mode, sync
from npdg.models import create_model
from npdg.pruning import compact, flops, params, select_masks

RATIOS = (0.0, 0.3) if quick_mode() else (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
ROUND_TO = 8


def bench_conditions(device: torch.device, quick: bool) -> dict:
    """Model, input size, batch, dtype and layout of the pruned-model benches on this device."""
    if quick:
        return {"model": "deeplabv3plus_r18", "size": (32, 64), "batch": 1, "dtype": torch.float32,
                "channels_last": False}
    if device.type == "cuda":
        return {"model": "deeplabv3plus_r50", "size": (512, 1024), "batch": 8, "dtype": torch.bfloat16,
                "channels_last": True}
    return {"model": "deeplabv3plus_r50", "size": (256, 512), "batch": 1, "dtype": torch.float32,
            "channels_last": False}


def dense_with_random_gamma(name: str, seed: int = 0):
    """Random-init eval-mode CPU model whose BN γ / gates are distinct random values (as after sparse training)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=19).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in model.prunable_units():
            g.gamma().copy_(torch.rand(g.size, generator=gen))
    return model


@contextlib.contextmanager
def quick_threads(quick: bool):
    """Quick mode (a smoke test) uses one intra-op thread: on a busy 2-core machine the OpenMP workers of
    tiny ops spin-wait for a descheduled thread, which made a 32x64 R18 forward ~30x slower."""
    previous = torch.get_num_threads()
    if quick:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_bench(model, cond: dict, device):
    model = model.to(device=device, dtype=cond["dtype"]).eval()
    return model.to(memory_format=torch.channels_last) if cond["channels_last"] else model


def bench_input(cond: dict, device):
    x = torch.randn(cond["batch"], 3, *cond["size"], generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=cond["dtype"])
    return x.contiguous(memory_format=torch.channels_last) if cond["channels_last"] else x


def latency_row(benchmark, model, x, device, group: str, warmup: int):
    def run():
        with torch.inference_mode():
            out = model(x)
        sync(device)
        return out

    for _ in range(warmup):
        run()
    benchmark.group = group  # set before the run: pytest-benchmark records it there
    benchmark(run)
    return benchmark.stats.stats.median if benchmark.stats is not None else None


def condition_info(cond: dict) -> dict:
    return {"model": cond["model"], "size": list(cond["size"]), "batch": cond["batch"], "dtype": str(cond["dtype"]),
            "channels_last": cond["channels_last"], "threads": torch.get_num_threads()}


@pytest.fixture(scope="module")
def pruned_models(bench_device, quick):
    with quick_threads(quick):
        cond = bench_conditions(bench_device, quick)
        dense = dense_with_random_gamma(cond["model"])
        models = {}
        for r in RATIOS:
            small = dense if r == 0 else compact(dense, select_masks(dense, ratio=r, round_to=ROUND_TO))
            small = to_bench(small, cond, bench_device)  # FLOPs counted on the device: a CPU forward is slow
            models[r] = (small, flops(small, cond["size"]), params(small))
        yield cond, models, {}


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"ratio{r:g}")
def test_pruned_latency(benchmark, ratio, pruned_models, bench_device, quick):
    cond, models, medians = pruned_models
    model, f, p = models[ratio]
    f_dense, p_dense = models[0.0][1], models[0.0][2]
    h, w = cond["size"]
    group = f"pruned latency {cond['model']} {h}x{w} b{cond['batch']} {str(cond['dtype'])[6:]}"
    median = latency_row(benchmark, model, bench_input(cond, bench_device), bench_device, group,
                         0 if quick else 2)
    medians[ratio] = median
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(condition_info(cond))
    benchmark.extra_info.update(provider="dense" if ratio == 0 else "npdg", ratio=ratio, round_to=ROUND_TO,
                                flops=f, flops_dense=f_dense, flops_ratio=f / f_dense, flops_reduction=f_dense / f,
                                params=p, params_ratio=p / p_dense)
    if median is not None:
        benchmark.extra_info["images_per_s"] = cond["batch"] / median
        if medians.get(0.0) is not None:
            speedup = medians[0.0] / median
            benchmark.extra_info.update(speedup=speedup, efficiency=speedup * f / f_dense)
    assert f <= f_dense and (ratio == 0) == (f == f_dense)
