"""Style sensitivity (var, Cov of style deviations): eager reference vs torch.compile vs the Triton Gram.

Full mode (GPU): K = 4 style variants, N = 2 contents, fp32 activations of the DeepLabV3+ R50 stages at
a 512x512 crop (output stride 16): C = 256 (L = 128*128), 512 (64*64), 1024 (32*32), 2048 (32*32,
dilated stage 4). Triton runs in each precision ("ieee" exact fp32 products, "tf32", "tf32x3").
Rows record bytes (acts read once + Cov written), GB/s and TFLOP/s counted on the full Gram
(2 * C^2 * K*N*L, what eager computes; the kernel computes half of it).
Quick mode (CI, CPU): eager only on a tiny shape, run once.
"""

from __future__ import annotations

import os

import pytest
import torch

from benches.conftest import baseline_provider, env_info, quick_mode, sync
from npdg import reference

K, N = 4, 2
STAGES = {256: 128 * 128, 512: 64 * 64, 1024: 32 * 32, 2048: 32 * 32}  # C -> L


def _cases():
    if quick_mode():
        return [(2, 1, 16, 64, p) for p in ("eager", "compile", "triton_ieee")]
    every = os.environ.get("NPDG_BENCH_ALL", "0") == "1"
    out = []
    for c, length in STAGES.items():
        provs = ["eager", "triton_ieee", "triton_tf32", "triton_tf32x3"]
        if every or c in (256, 2048):  # torch.compile costs a compile per shape: two ends of the range
            provs.insert(1, "compile")
        out += [(K, N, c, length, p) for p in provs]
    return out


def _provider_fn(provider, device):
    baseline = baseline_provider(provider, device, reference.style_sensitivity)
    if baseline is not None:
        return baseline
    from npdg.kernels.sensitivity import style_sensitivity

    precision = provider.removeprefix("triton_")
    return lambda acts: style_sensitivity(acts, precision=precision)


@pytest.mark.parametrize("k, n, c, length, provider",
                         [pytest.param(*case, id=f"C{case[2]}-L{case[3]}-{case[4]}") for case in _cases()])
def test_style_sensitivity(benchmark, k, n, c, length, provider, bench_device, quick):
    fn = _provider_fn(provider, bench_device)
    gen = torch.Generator(device=bench_device).manual_seed(0)
    acts = torch.randn(k, n, c, length, generator=gen, device=bench_device) * 3 + 2

    def run():
        result = fn(acts)
        sync(bench_device)
        return result

    var, cov = run()  # first call: compile / autotune, outside the timing
    if provider != "eager":  # a fast wrong answer is no answer: check against eager once
        tol = 5e-3 if provider == "triton_tf32" else 1e-4
        _, want = reference.style_sensitivity(acts)
        torch.testing.assert_close(cov, want, atol=tol * want.abs().max().item(), rtol=tol)
        assert torch.equal(var, cov.diagonal())
        del want
    del var, cov
    for _ in range(0 if quick else 2):
        run()
    benchmark.group = f"style_sensitivity C={c}"  # set before the run: pytest-benchmark records it there
    benchmark(run)

    moved = acts.numel() * acts.element_size() + c * c * 4
    flop = 2 * c * c * k * n * length
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(provider=provider, shape=[k, n, c, length], dtype=str(acts.dtype),
                                bytes_moved=moved, flop=flop)
    if benchmark.stats is not None:  # None under --benchmark-disable
        t = benchmark.stats.stats.median
        benchmark.extra_info.update(gbps=moved / t / 1e9, tflops=flop / t / 1e12)
