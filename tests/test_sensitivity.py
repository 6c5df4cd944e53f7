"""Style-sensitivity Gram kernel (npdg.kernels.sensitivity) against the float64 reference.

CPU runs use the Triton interpreter (TRITON_INTERPRET set below, before the kernel module is imported:
@triton.jit reads it at decoration time); on a GPU machine the same tests run compiled on CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from helpers import run_compiled  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from npdg import ops, reference  # noqa: E402
from npdg.kernels import sensitivity as S  # noqa: E402
from npdg.kernels.sensitivity import CovConfig  # noqa: E402

_INTERPRETED = isinstance(S._style_cov_kernel, InterpretedFunction)
_CUDA = torch.cuda.is_available() and not _INTERPRETED
_NEEDS_INTERPRETER = "CPU runs need TRITON_INTERPRET=1 before npdg.kernels is imported"
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)),
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _CUDA, reason="needs CUDA")]),
]
# (atol, rtol) relative to max|cov|. The reference sees the same rounded fp16/bf16 inputs, and the kernel
# upcasts them exactly, so every input dtype is held to fp32 accumulation error; tf32 rounds the
# products' inputs to 10 mantissa bits (2**-11 relative).
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-5, 1e-5),
    torch.bfloat16: (1e-5, 1e-5),
    "tf32": (4e-3, 4e-3),
}


def _acts(k, n, c, length, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(1, n, c, length, generator=g, dtype=torch.float64) * 3 + 2
    style = torch.randn(k, n, c, 1, generator=g, dtype=torch.float64)  # per-unit shifts: correlated units
    noise = torch.randn(k, n, c, length, generator=g, dtype=torch.float64)
    return (content + style + noise).to(dtype).to(device)


def _close(cov, ref, tol_key):
    atol, rtol = TOL[tol_key]
    scale = ref.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(cov.double() / scale, ref / scale, atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("c", [1, 7, 67])
@pytest.mark.parametrize("splits", [1, 3])
def test_matches_reference(device, dtype, k, c, splits):
    acts = _acts(k, 2, c, 37, dtype, device)
    out = torch.full((c, c), float("nan"), device=device)  # poisoned: every element must be written
    cov = S.style_cov(acts, config=CovConfig(block_c=16, block_l=16, splits=splits), out=out)
    assert cov is out and cov.dtype == torch.float32
    _, ref = reference.style_sensitivity(acts.double())
    _close(cov, ref, dtype)
    assert torch.equal(cov, cov.T)  # mirror-stored: exactly symmetric
    if k == 1:
        assert torch.equal(cov, torch.zeros_like(cov))  # one style: no deviation at all


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 2, 40, 50), (2, 1, 3, 1), (3, 2, 17, 64)], ids=str)
def test_default_config_and_var_is_diag(device, shape):
    """Default path (heuristic config; autotuned on CUDA), through style_sensitivity."""
    acts = _acts(*shape, device=device)
    var, cov = S.style_sensitivity(acts)
    _, ref = reference.style_sensitivity(acts.double())
    _close(cov, ref, torch.float32)
    assert var.shape == (shape[2],) and torch.equal(var, cov.diagonal())
    assert torch.equal(cov, cov.T)


@pytest.mark.parametrize("device", DEVICES)
def test_arbitrary_strides(device):
    """Activations captured as (N, K, L, C) and permuted, and a strided slice along L."""
    base = _acts(3, 2, 19, 40, device=device)
    acts = base.permute(1, 0, 3, 2).contiguous().permute(1, 0, 3, 2)  # same values, C innermost
    assert not acts.is_contiguous()
    cfg = CovConfig(block_c=16, block_l=16, splits=2)
    _close(S.style_cov(acts, config=cfg), reference.style_sensitivity(base.double())[1], torch.float32)
    sliced = base[..., ::3]
    _close(S.style_cov(sliced, config=cfg), reference.style_sensitivity(sliced.double())[1], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_int64_offset_variant(device, monkeypatch):
    """The OFF64 kernel variant (in-tile offsets that can pass 2**31), forced on a small input."""
    monkeypatch.setattr(S, "_INT32_OFFSETS", 0)
    acts = _acts(3, 2, 19, 40, device=device)
    cov = S.style_cov(acts, config=CovConfig(block_c=16, block_l=16, splits=2))
    _close(cov, reference.style_sensitivity(acts.double())[1], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_fp64_goes_to_reference(device):
    acts = _acts(3, 2, 5, 7, torch.float64, device)
    var, cov = S.style_sensitivity(acts)
    vr, cr = reference.style_sensitivity(acts)
    assert cov.dtype == torch.float64 and torch.equal(cov, cr) and torch.equal(var, vr)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_dispatch_runs_the_kernel(device, monkeypatch):
    monkeypatch.setenv("NPDG_KERNELS", "triton")
    acts = _acts(2, 2, 9, 21, device=device)
    var, cov = ops.style_sensitivity(acts, precision="ieee")
    _close(cov, reference.style_sensitivity(acts.double())[1], torch.float32)
    assert torch.equal(var, cov.diagonal())


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA, reason="tf32 needs CUDA tensor cores")
@pytest.mark.parametrize("c", [7, 67, 517])
def test_tf32_on_cuda(c):
    """All three precisions against float64. tf32x3 must reach fp32 accuracy AND be far more accurate than
    tf32 (so a tf32x3 that silently ran plain tf32 fails): an fp32 emulation of this input gives max errors
    (relative to max|cov|) of ~2e-5 for round-to-nearest tf32 (truncating hardware: ~1e-3) and ~2e-7 for
    tf32x3 and ieee."""
    acts = _acts(4, 2, c, 300, device="cuda")
    ref = reference.style_sensitivity(acts.double())[1]
    tf32 = S.style_cov(acts, precision="tf32")
    tf32x3 = S.style_cov(acts, precision="tf32x3")
    _close(tf32, ref, "tf32")
    _close(S.style_cov(acts, precision="ieee"), ref, torch.float32)
    _close(tf32x3, ref, torch.float32)

    def rel_err(cov):
        return ((cov.double() - ref).abs().max() / ref.abs().max()).item()

    assert rel_err(tf32x3) <= rel_err(tf32) / 10, (rel_err(tf32x3), rel_err(tf32))


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
def test_realistic_size_on_cuda():
    acts = _acts(4, 2, 1031, 1024, torch.bfloat16, device="cuda")
    _close(S.style_cov(acts), reference.style_sensitivity(acts.double())[1], torch.bfloat16)


@pytest.mark.skipif(not _INTERPRETED, reason="the autotuner with a fake timer, under the interpreter")
def test_autotuned_launch_path():
    """The GPU launch path (autotuner, META-dependent grid, config pruning) with an injected do_bench."""
    timings = iter(range(1000))
    fake_bench = lambda fn, quantiles=None: (fn(), [float(next(timings))] * 3)[1]
    for c in (5, 40):
        acts = _acts(3, 2, c, 50)
        out = torch.full((c, c), float("nan"))
        S._launch(acts, out, "ieee", 2, S._tuned_kernel(fake_bench), {})
        _close(out, reference.style_sensitivity(acts.double())[1], torch.float32)
    kept = S._prune_configs(S._AUTOTUNE_CONFIGS, {"C": 5})
    assert kept and all(cfg.kwargs["BLOCK_C"] == 16 for cfg in kept)


@triton.jit
def _tile_coords_probe(OUT):
    pid = tl.program_id(0)
    ti, tj = S._tile_coords(pid)
    tl.store(OUT + 2 * pid, ti)
    tl.store(OUT + 2 * pid + 1, tj)


@pytest.mark.parametrize("device", DEVICES)
def test_tile_coords_cover_upper_triangle(device):
    nb = 24 if device == "cpu" else 1024
    out = torch.full((nb * (nb + 1) // 2, 2), -1, dtype=torch.int32, device=device)
    _tile_coords_probe[(out.shape[0],)](out)
    expected = torch.tensor([(i, j) for j in range(nb) for i in range(j + 1)], dtype=torch.int32)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_rejects_bad_input_and_handles_empty(device):
    acts = _acts(2, 1, 3, 4, device=device)
    with pytest.raises(ValueError, match="K, N, C, L"):
        S.style_cov(acts[0])
    with pytest.raises(TypeError, match="dtype"):
        S.style_cov(acts.to(torch.int32))
    with pytest.raises(ValueError, match="precision"):
        S.style_cov(acts, precision="fp8")
    with pytest.raises(ValueError, match="out"):
        S.style_cov(acts, out=torch.empty(3, 4, device=device))
    with pytest.raises(ValueError, match="power of two"):
        CovConfig(block_c=8)
    assert S.style_cov(acts[:, :, :0]).shape == (0, 0)
    empty = acts[:, :, :, :0]
    torch.testing.assert_close(S.style_cov(empty), reference.style_sensitivity(empty)[1])


def test_config_heuristics():
    """Shapes only (meta tensors; 4 'SMs' on CPU): the split turns on when tiles are few."""
    small = S.cov_config(torch.empty(4, 2, 64, 1024, device="meta"))
    assert small.block_c == 64 and small.splits > 1
    tiny = S.cov_config(torch.empty(2, 1, 3, 5, device="meta"))
    assert tiny.block_c == 16 and tiny.block_l == 16
    big = S.cov_config(torch.empty(4, 2, 2048, 1024, device="meta"))
    assert big.splits == 1


_COMPILE_SCRIPT = r"""
import json
from npdg.kernels import sensitivity as S
from npdg.kernels.utils import compile_report

rows = []
for dt in ("fp32", "bf16"):
    for prec in ("ieee", "tf32", "tf32x3"):
        for cfg in S._AUTOTUNE_CONFIGS[:1] if dt == "bf16" else S._AUTOTUNE_CONFIGS:
            const = dict(sal=1, OFF64=False, PRECISION=prec, **cfg.kwargs)
            r = compile_report(S._style_cov_kernel, dict(A=dt, OUT="fp32"), const, floats=("inv_m",),
                               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            rows.append((f"{dt} {prec} {cfg.kwargs} w{cfg.num_warps}", r))
const = dict(C=1, K=1, OFF64=True, PRECISION="ieee", BLOCK_C=16, BLOCK_L=16)
rows.append(("C=1 K=1 int64", compile_report(S._style_cov_kernel, dict(A="fp32", OUT="fp32"), const,
                                             floats=("inv_m",))))
print(json.dumps(rows))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for real")
def test_kernel_compiles_for_sm90():
    """Ahead-of-time compile (triton's bundled ptxas; no GPU) of every autotune candidate in every
    precision: catches what the interpreter lets through (dot shapes, precisions, layouts). The default
    config must not spill; the others may spill a little -- under 32 bytes, as _AUTOTUNE_CONFIGS claims
    (measured with triton 3.9: at most 24 bytes) -- and the autotuner then just doesn't pick them."""
    rows = dict(run_compiled(_COMPILE_SCRIPT))
    assert len(rows) == 3 * len(S._AUTOTUNE_CONFIGS) + 3 + 1
    default = S._AUTOTUNE_CONFIGS[0]
    for prec in ("ieee", "tf32", "tf32x3"):
        assert rows[f"fp32 {prec} {default.kwargs} w{default.num_warps}"]["stack"] == 0
    assert max(r["stack"] for r in rows.values()) < 32, rows
