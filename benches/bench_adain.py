"""AdaIN (feature-level style perturbation): eager reference vs torch.compile vs the Triton kernels, and
on CPU the fused C++ op of the extension (`cpp`, csrc/adain.cpp) vs eager.

Full mode (GPU): DeepLabV3+ R50 stage-1 features at 512x512 and 768x768 crops, batch 8 ->
(8, 256, 128, 128) and (8, 256, 192, 192); SegFormer MiT stage-1 tokens (8, 64, 128, 128). Forward
alone and forward + backward (grads for x, mean', std'). Rows record the minimal traffic model
(forward: read x + write y; forward + backward: + read x, dy + write dx) and the GB/s it implies, and a
plain copy (y.copy_(x)) of the same tensors runs first so rows also carry "pct_of_copy" = GB/s / copy GB/s.
The default case list is sized for the few-minute GPU check; NPDG_BENCH_ALL=1 runs every
shape x dtype x layout x mode (one torch.compile per case: long).
Full mode on a CPU-only machine: eager vs cpp (+ copy) at the R50 stage-1 shape (8, 256, 128, 128) and
at the default training run's style layer (DeepLabV3+ R18 stage 1 at 96x192 crops, batch 8).
Quick mode (CI, CPU): eager and cpp on a tiny shape, run once (compile and triton are skipped on CPU).
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from benches.conftest import baseline_provider, env_info, quick_mode, sync
from npdg import ops, reference

SHAPES = {
    "r50_512": (8, 256, 128, 128),  # DeepLabV3+ R50 stage 1, 512x512 crop, batch 8
    "r50_768": (8, 256, 192, 192),  # ... 768x768 crop
    "mit_512": (8, 64, 128, 128),   # SegFormer MiT stage 1, 512x512 crop
    "r18_96x192": (8, 64, 24, 48),  # DeepLabV3+ R18 stage 1 of the default CPU training run
    "tiny": (2, 8, 16, 16),         # quick mode
}
PROVIDERS = ("eager", "compile", "triton")
CPP = "cpp"  # the fused CPU op of the extension, through npdg.ops.adain (CPU tensors only)
# triton with the two-loop kernel forced (x read twice, the 2nd time from L2) where the heuristic reads it
# once (whole row in registers, 16 warps): tells whether _ONE_PASS_MAX is right on this card.
TWO_LOOP = "triton_2loop"
F32, BF16 = torch.float32, torch.bfloat16


def _cases():
    if quick_mode():
        return [("tiny", F32, "contiguous", mode, PROVIDERS + (CPP,)) for mode in ("fwd", "fwd_bwd")]
    if os.environ.get("NPDG_BENCH_ALL", "0") == "1":
        every = itertools.product(("r50_512", "r50_768", "mit_512"), (F32, BF16),
                                  ("contiguous", "channels_last"), ("fwd", "fwd_bwd"))
        return [(s, d, lay, m, PROVIDERS + (CPP,)) for s, d, lay, m in every]
    if not torch.cuda.is_available():  # a CPU machine: the fused C++ op against eager
        return [(s, F32, "contiguous", m, ("eager", CPP)) for s in ("r50_512", "r18_96x192")
                for m in ("fwd", "fwd_bwd")]
    return [  # the GPU check: every target shape, torch.compile only where the targets compare to it
        ("r50_512", F32, "contiguous", "fwd", PROVIDERS + (TWO_LOOP,)),
        ("r50_512", F32, "contiguous", "fwd_bwd", PROVIDERS + (TWO_LOOP,)),
        ("r50_768", F32, "contiguous", "fwd_bwd", PROVIDERS),
        ("r50_768", BF16, "contiguous", "fwd_bwd", ("eager", "triton")),
        ("r50_768", F32, "channels_last", "fwd_bwd", ("eager", "triton")),
        ("mit_512", F32, "contiguous", "fwd_bwd", ("eager", "triton")),
    ]


CASES = [pytest.param(s, d, lay, m, p, id=f"{s}-{str(d)[6:]}-{lay}-{m}-{p}")
         for s, d, lay, m, provs in _cases() for p in provs]
COPY_CASES = sorted({(s, d) for s, d, *_ in _cases()}, key=str)
_copy_gbps: dict = {}  # (shape name, dtype) -> GB/s of y.copy_(x), filled by test_copy_bandwidth


def _tensors(shape, dtype, layout, device, grad):
    gen = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(shape, generator=gen, device=device, dtype=dtype) * 3 + 2).contiguous(memory_format=fmt)
    n, c = shape[:2]
    mean = torch.randn(n, c, generator=gen, device=device, dtype=dtype)
    std = torch.rand(n, c, generator=gen, device=device, dtype=dtype) + 0.5
    dy = torch.randn_like(x)
    if grad:
        x, mean, std = (t.requires_grad_() for t in (x, mean, std))
    return x, mean, std, dy


def _provider_fn(provider, device):
    if provider == CPP:
        if torch.device(device).type != "cpu":
            pytest.skip("cpp is the CPU op")
        if ops.adain_backend(torch.empty(1, 1, 1, device=device)) != CPP:
            pytest.skip("the extension with the fused CPU AdaIN is not available")
        return ops.adain
    baseline = baseline_provider(provider, device, reference.adain)
    if baseline is not None:
        return baseline
    from npdg.kernels.adain import AdaINConfig, adain

    if provider == TWO_LOOP:
        return lambda x, mean, std: adain(x, mean, std, config=AdaINConfig(1, 4096, num_warps=8))
    return adain


@pytest.mark.parametrize("shape_name, dtype", COPY_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_copy_bandwidth(benchmark, shape_name, dtype, bench_device, quick):
    """y.copy_(x) of the same tensor: the bandwidth ceiling the AdaIN rows are compared with."""
    shape = SHAPES[shape_name]
    x = torch.randn(shape, device=bench_device, dtype=dtype)
    y = torch.empty_like(x)

    def run():
        y.copy_(x)
        sync(bench_device)

    for _ in range(0 if quick else 3):
        run()
    benchmark.group = f"copy {shape_name}"  # before the run: pytest-benchmark records it there
    benchmark(run)
    moved = 2 * x.numel() * x.element_size()
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(provider="copy", shape=list(shape), dtype=str(dtype), bytes_moved=moved)
    if benchmark.stats is not None:  # None under --benchmark-disable
        gbps = moved / benchmark.stats.stats.median / 1e9
        benchmark.extra_info["gbps"] = _copy_gbps[(shape_name, dtype)] = gbps


@pytest.mark.parametrize("shape_name, dtype, layout, mode, provider", CASES)
def test_adain(benchmark, shape_name, dtype, layout, mode, provider, bench_device, quick):
    fn = _provider_fn(provider, bench_device)
    shape = SHAPES[shape_name]
    x, mean, std, dy = _tensors(shape, dtype, layout, bench_device, grad=mode == "fwd_bwd")

    if mode == "fwd":
        def run():
            y = fn(x, mean, std)
            sync(bench_device)
            return y
    else:
        def run():
            grads = torch.autograd.grad(fn(x, mean, std), (x, mean, std), dy)
            sync(bench_device)
            return grads

    out = run()  # first call: compile / autotune, outside the timing
    if provider != "eager":  # a fast wrong answer is no answer: check against eager once
        y = reference.adain(x, mean, std)
        want = [y] if mode == "fwd" else torch.autograd.grad(y, (x, mean, std), dy)
        got = [out] if mode == "fwd" else out
        tol = 1e-4 if dtype == F32 else 3e-2
        for g, w in zip(got, want, strict=True):
            scale = w.float().abs().max().item()
            torch.testing.assert_close(g.float(), w.float(), atol=tol * scale, rtol=tol)
        del y, want, got
    del out
    for _ in range(0 if quick else 2):
        run()
    benchmark.group = f"adain {mode} {shape_name} {str(dtype)[6:]} {layout}"  # set before the run
    benchmark(run)

    moved = (2 if mode == "fwd" else 5) * x.numel() * x.element_size()
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(provider=provider, shape=list(shape), dtype=str(dtype), layout=layout,
                                mode=mode, bytes_moved=moved, threads=torch.get_num_threads())
    if benchmark.stats is not None:  # None under --benchmark-disable
        gbps = moved / benchmark.stats.stats.median / 1e9
        benchmark.extra_info["gbps"] = gbps
        copy = _copy_gbps.get((shape_name, dtype))
        if copy:
            benchmark.extra_info["pct_of_copy"] = 100 * gbps / copy
