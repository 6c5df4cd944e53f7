"""Dense vs pruned latency in every deployment runtime: one pytest-benchmark row per model x runtime x
(dense, pruned), so the speed-up of NPDG's pruned model can be read where it will run.

Models: DeepLabV3+ R50 (the issue's target), R18 and SegFormer-B0, random weights and random γ, pruned
with ``select_masks(ratio=0.3, round_to=8)`` + ``npdg.pruning.compact``. Runtimes (``npdg.profile.runtimes``):
eager PyTorch, ONNX Runtime (the model exported by ``npdg.export`` at the bench shape and equality-checked;
its CUDA provider on CUDA; rows skipped when onnx / onnxscript / onnxruntime are not installed), and
torch.compile with NPDG_BENCH_COMPILE=1 (off by default: a compile per model and variant takes ~1 min, and
``npdg.profile --compile`` covers it). All fp32 (the ONNX export is checked in fp32), contiguous layout.
CPU: batch 1, 256x512, torch's threads (ONNX Runtime gets the same number); CUDA: batch 4, 512x1024.
Quick mode (CI smoke test): R18 at 32x64, eager and ONNX Runtime, one thread.

Every row records in extra_info the device and versions, the runtime, FLOPs per image, and -- once the
dense row of the same model and runtime has a median -- ``speedup`` = dense median / this median and
``efficiency`` = speedup / (dense FLOPs / FLOPs). The eager dense row is the group's baseline
(provider "eager") for ``benches/summarize.py``. ``python -m npdg.profile --runtime eager onnxruntime``
measures the same interleaved (one run, paired ratios); that is where the committed numbers come from.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from benches.bench_pruned import dense_with_random_gamma, quick_threads
from benches.conftest import env_info, quick_mode, sync
from npdg.pruning import compact, flops, params, select_masks

RATIO, ROUND_TO = 0.3, 8
MODELS = ("deeplabv3plus_r18",) if quick_mode() else ("deeplabv3plus_r50", "deeplabv3plus_r18", "segformer_b0")
RUNTIMES = ("eager", "onnxruntime") + (("compile",) if os.environ.get("NPDG_BENCH_COMPILE") == "1" else ())


def conditions(device: torch.device, quick: bool) -> dict:
    if quick:
        return {"size": (32, 64), "batch": 1}
    return {"size": (512, 1024), "batch": 4} if device.type == "cuda" else {"size": (256, 512), "batch": 1}


def _skip_unavailable(runtime: str, device: torch.device) -> None:
    if runtime == "onnxruntime":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{module} is not installed (pip install {module})")
        import onnxruntime

        if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            pytest.skip("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)")


@pytest.fixture(scope="module")
def model_pairs(bench_device, quick):
    """{model name: (conditions, {"dense"|"pruned": (model, flops, params)})}, built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            with quick_threads(quick):
                cond = conditions(bench_device, quick)
                dense = dense_with_random_gamma(name)
                small = compact(dense, select_masks(dense, ratio=RATIO, round_to=ROUND_TO))
                cache[name] = (cond, {v: (m.to(bench_device).eval(), flops(m, cond["size"]), params(m))
                                      for v, m in (("dense", dense), ("pruned", small))})
        return cache[name]
    return get


@pytest.fixture(scope="module")
def medians():
    return {}


@pytest.mark.parametrize("variant", ["dense", "pruned"])
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", MODELS)
def test_runtime_latency(benchmark, name, runtime, variant, model_pairs, medians, bench_device, quick, tmp_path):
    from npdg.profile.runtimes import build_runners
    from npdg.profile.timing import Settings

    _skip_unavailable(runtime, bench_device)
    cond, models = model_pairs(name)
    model, f, p = models[variant]
    f_dense = models["dense"][1]
    with quick_threads(quick):
        s = Settings(device=str(bench_device), size=cond["size"], dtype="fp32")
        runners, infos = build_runners({variant: model}, [runtime], cond["batch"], s, tmp_path)
        x = torch.randn(cond["batch"], 3, *cond["size"], generator=torch.Generator().manual_seed(0))
        call = runners[f"{variant}|{runtime}"].bind(x.to(bench_device))

        def run():
            call()
            sync(bench_device)

        for _ in range(1 if quick else 3):  # warm-up (torch.compile compiles here)
            run()
        h, w = cond["size"]
        benchmark.group = f"runtimes {name} {h}x{w} b{cond['batch']} fp32"
        benchmark(run)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(infos[f"{variant}|{runtime}"])
    provider = "eager" if (runtime, variant) == ("eager", "dense") else f"{runtime}:{variant}"
    benchmark.extra_info.update(model=name, runtime=runtime, variant=variant, provider=provider,
                                ratio=RATIO if variant == "pruned" else 0.0, round_to=ROUND_TO,
                                size=list(cond["size"]), batch=cond["batch"], threads=torch.get_num_threads(),
                                flops=f, flops_dense=f_dense, flops_reduction=f_dense / f, params=p)
    if median is not None:
        medians[(name, runtime, variant)] = median
        dense_median = medians.get((name, runtime, "dense"))
        if variant == "pruned" and dense_median is not None:
            speedup = dense_median / median
            benchmark.extra_info.update(speedup=speedup, efficiency=speedup * f / f_dense)
    assert (variant == "pruned") == (f < f_dense)
