"""Fused AdaIN Triton kernels (npdg.kernels.adain) against the float64 reference (npdg.reference).

On a CPU-only machine the kernels run under the Triton interpreter: TRITON_INTERPRET must be set
before npdg.kernels.adain is first imported (@triton.jit reads it when it decorates the kernels), so it
is set below before that import; CI also exports it for the whole pytest run. On a GPU machine the
same tests run compiled on CUDA (the `cuda` marker) and the CPU cases are skipped. Without a GPU, the
kernels are also compiled ahead of time for sm_90 (in a subprocess, without the interpreter).
"""

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from helpers import run_compiled  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from npdg import ops, reference  # noqa: E402
from npdg.kernels import adain as K  # noqa: E402
from npdg.kernels.adain import AdaINConfig  # noqa: E402

_INTERPRETED = isinstance(K._adain_fwd_kernel, InterpretedFunction)
_NEEDS_INTERPRETER = "CPU runs need TRITON_INTERPRET=1 before npdg.kernels is imported"
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)),
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available() or _INTERPRETED,
                                                   reason="needs CUDA (compiled kernels)")]),
]
# (atol, rtol) of outputs stored in each dtype: inputs are exact in every dtype (the reference sees the
# same rounded values), so the budget is the final rounding -- one ulp -- plus fp32 arithmetic.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),   # ulp = 2**-10 relative
    torch.bfloat16: (1e-2, 8e-3),  # ulp = 2**-7 relative
    torch.float64: (1e-10, 1e-10),
}
DTYPES = list(TOL)
SHAPES = [
    (2, 3, 5, 7),     # H*W = 35, not a multiple of any block
    (1, 1, 1, 1),     # N*C = 1, H*W = 1
    (2, 1, 9, 11),    # C = 1
    (2, 5, 4, 4),     # several channel blocks, the last one partly masked
    (1, 2, 1, 4099),  # "large" H*W: 5 chunks of 1024, split in 3 (scaled-down 262 144)
]
MODES = ["auto", "stream", "split", "one_pass"]


def _config(mode: str, hw: int) -> AdaINConfig | None:
    """Small explicit configs so every code path runs on tiny inputs."""
    if mode == "auto":
        return None
    block_l = min(1024, max(1, 1 << max(0, (hw - 1).bit_length() - 2)))  # 3-4 chunks per row
    if mode == "stream":
        return AdaINConfig(block_c=2, block_l=block_l)
    if mode == "split":
        return AdaINConfig(block_c=2, block_l=block_l, splits=3)
    return AdaINConfig(block_c=2, block_l=1 << max(0, (hw - 1).bit_length()), one_pass=True)


def _cuda_subset(shape, mode, layout, dtype) -> bool:
    """The slice of the CPU matrix also run on CUDA, where every new combination is a Triton compile."""
    if shape not in ((2, 3, 5, 7), (1, 2, 1, 4099)):
        return False
    return (dtype == torch.float32 or (mode == "auto" and dtype != torch.float64)
            or (dtype == torch.float64 and mode == "split" and layout == "contiguous"))


def _inputs(shape, dtype, device, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    mean = (torch.randn(n, c, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    std = (torch.rand(n, c, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x.to(device), mean.to(device), std.to(device), dy.to(device)


def _reference(x, mean, std, dy, eps=reference.DEFAULT_EPS):
    """y, dx, d mean, d std of the float64 reference, via autograd."""
    xr, mr, sr = (t.detach().double().requires_grad_() for t in (x, mean, std))
    yr = reference.adain(xr, mr, sr, eps)
    yr.backward(dy.double())
    return yr.detach(), xr.grad, mr.grad, sr.grad


def _close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def _close_rows(actual, expected, dtype):
    """d mean' / d std' (sums over H*W, one per (n, c)) against the float64 reference: absolute error within
    TOL[dtype] of the largest reference value (plus the relative TOL). Never scaled by H*W: a zero, sign-
    flipped or one-row-missing gradient misses by ~ a typical row's magnitude and fails."""
    atol, rtol = TOL[dtype]
    scale = expected.double().abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_launchers_match_reference(device, shape, mode, layout, dtype):
    if device == "cuda" and not _cuda_subset(shape, mode, layout, dtype):
        pytest.skip("run on CPU only: keeps the GPU check's compile count small")
    x, mean, std, dy = _inputs(shape, dtype, device, layout)
    hw = math.prod(shape[2:])
    cfg = _config(mode, hw)
    y = torch.full_like(x, float("nan"))  # poisoned: every element must be written
    dx = torch.full_like(x, float("nan"))
    y_out, mu, rstd = K.adain_forward(x, mean, std, config=cfg, out=y)
    dx_out, dmean, dstd = K.adain_backward(dy, x, mu, rstd, std, config=cfg, out=dx)
    assert y_out is y and dx_out is dx
    yr, dxr, dmr, dsr = _reference(x, mean, std, dy)
    _close(y, yr, dtype)
    _close(dx, dxr, dtype)
    # d mean', d std' are sums over H*W and come back in fp32 (fp64): fp32 accuracy of the sums
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert dmean.dtype == dstd.dtype == mu.dtype == acc
    _close_rows(dmean, dmr, acc)
    _close_rows(dstd, dsr, acc)
    mur, sigmar = reference.style_stats(x.double())
    _close(mu, mur, acc)
    _close(1 / rstd, sigmar, acc)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("param_shape", ["NC", "C", "1C", "NC11"])
def test_autograd_function_broadcast_params(device, dtype, param_shape):
    x, mean, std, dy = _inputs((2, 3, 6, 5), dtype, device)
    shape = {"NC": (2, 3), "C": (3,), "1C": (1, 3), "NC11": (2, 3, 1, 1)}[param_shape]
    rows = 2 if param_shape.startswith("NC") else 1
    m, s = (t[:rows].reshape(shape).clone().requires_grad_() for t in (mean, std))
    xg = x.clone().requires_grad_()
    y = K.adain(xg, m, s)
    y.backward(dy)
    assert m.grad.shape == m.shape and s.grad.shape == s.shape and m.grad.dtype == dtype
    xr, mr, sr = (t.detach().double().requires_grad_() for t in (x, m, s))
    yr = reference.adain(xr, mr.reshape(-1, 3).expand(2, 3), sr.reshape(-1, 3).expand(2, 3))
    yr.backward(dy.double())
    _close(y, yr, dtype)
    _close(xg.grad, xr.grad, dtype)
    _close_rows(m.grad, mr.grad, dtype)
    _close_rows(s.grad, sr.grad, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout, mode", [("contiguous", "stream"), ("contiguous", "one_pass"),
                                          ("contiguous", "split"), ("channels_last", "split")])
def test_gradcheck_fp64_through_kernels(device, layout, mode):
    """gradcheck in float64 through the Triton path itself (the kernels accumulate fp64 for fp64 input)."""
    x, mean, std, _ = _inputs((2, 2, 1, 3), torch.float64, device, layout)
    cfg = {"stream": AdaINConfig(block_c=2, block_l=2),
           "one_pass": AdaINConfig(block_c=2, block_l=4, one_pass=True),
           "split": AdaINConfig(block_c=2, block_l=2, splits=2)}[mode]
    args = tuple(t.detach().clone().requires_grad_() for t in (x, mean, std))
    assert torch.autograd.gradcheck(lambda a, m, s: K.adain(a, m, s, config=cfg), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["stream", "split", "one_pass"])
def test_constant_channel_is_finite(device, dtype, mode):
    """sigma = 0: eps keeps rstd finite, y = mean' on that channel, no NaN anywhere (fwd or bwd)."""
    if device == "cuda" and dtype in (torch.float16, torch.float64):
        pytest.skip("run on CPU only: keeps the GPU check's compile count small")
    x, mean, std, dy = _inputs((2, 3, 1, 4099), dtype, device)
    x[:, 1] = 2.5
    x, mean, std = (t.clone().requires_grad_() for t in (x, mean, std))
    y = K.adain(x, mean, std, config=_config(mode, 4099))
    y.backward(dy)
    for t in (y, x.grad, mean.grad, std.grad):
        assert torch.isfinite(t).all()
    yr, dxr, dmr, dsr = _reference(x, mean, std, dy)
    _close(y, yr, dtype)
    _close(y[:, 1], mean.detach()[:, 1, None, None].expand(2, 1, 4099), dtype)
    _close(x.grad, dxr, dtype)
    _close_rows(std.grad, dsr, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_layouts_differ_and_expanded(device):
    """dy in another layout than x, and the stride-0 dy of y.sum().backward()."""
    x, mean, std, dy = _inputs((2, 3, 5, 7), torch.float32, device, "channels_last")
    dy = dy.contiguous()
    x.requires_grad_()
    y = K.adain(x, mean, std)
    assert y.is_contiguous(memory_format=torch.channels_last)  # outputs keep x's layout
    y.backward(dy)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    _, dxr, _, _ = _reference(x, mean, std, dy)
    _close(x.grad, dxr, torch.float32)
    x.grad = None
    K.adain(x, mean, std).sum().backward()
    _, dxr, _, _ = _reference(x, mean, std, torch.ones_like(dy))
    _close(x.grad, dxr, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_other_ranks_and_strided_input(device):
    """(N, C, L) and (N, C, D, H, W) inputs, and a slice whose spatial strides don't merge (copied)."""
    for shape in [(2, 3, 10), (1, 2, 3, 4, 5)]:
        x, mean, std, dy = _inputs(shape, torch.float32, device)
        _close(K.adain(x, mean, std), _reference(x, mean, std, dy)[0], torch.float32)
    x, mean, std, dy = _inputs((2, 3, 6, 10), torch.float32, device)
    xs = x[..., ::2]
    _close(K.adain(xs, mean, std), _reference(xs, mean, std, dy[..., ::2])[0], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["stream", "split", "one_pass"])
def test_backward_without_dx(device, mode):
    x, mean, std, dy = _inputs((2, 3, 5, 7), torch.float32, device)
    cfg = _config(mode, 35)
    _, mu, rstd = K.adain_forward(x, mean, std, config=cfg)
    dx, dmean, dstd = K.adain_backward(dy, x, mu, rstd, std, config=cfg, need_dx=False)
    _, _, dmr, dsr = _reference(x, mean, std, dy)
    assert dx is None
    _close_rows(dmean, dmr, torch.float32)
    _close_rows(dstd, dsr, torch.float32)
    m, s = mean.clone().requires_grad_(), std.clone().requires_grad_()
    K.adain(x, m, s, config=cfg).backward(dy)  # x needs no grad: dx is skipped inside
    _close_rows(s.grad, dsr, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_dispatch_runs_the_kernel(device, monkeypatch):
    monkeypatch.setenv("NPDG_KERNELS", "triton")
    x, mean, std, dy = _inputs((2, 3, 5, 7), torch.float32, device)
    x.requires_grad_()
    y = ops.adain(x, mean, std)
    y.backward(dy)
    yr, dxr, _, _ = _reference(x, mean, std, dy)
    _close(y, yr, torch.float32)
    _close(x.grad, dxr, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_rejects_bad_input(device):
    x, mean, std, _ = _inputs((2, 3, 5, 7), torch.float32, device)
    with pytest.raises(ValueError, match="spatial"):
        K.adain(x[:, :, 0, 0], mean, std)
    with pytest.raises(TypeError, match="dtype"):
        K.adain(x.to(torch.int32), mean, std)
    with pytest.raises(ValueError, match="broadcast"):
        K.adain(x, mean[:, :2], std)
    with pytest.raises(ValueError, match="one_pass"):
        K.adain(x, mean, std, config=AdaINConfig(block_c=2, block_l=8, one_pass=True))
    with pytest.raises(ValueError, match="power of two"):
        AdaINConfig(block_c=3, block_l=8)
    with pytest.raises(ValueError, match="out"):
        K.adain_forward(x, mean, std, out=torch.empty(2, 3, 5, 6, device=device))


def test_empty_input():
    x = torch.empty(2, 3, 0, 4)
    y, mu, _ = K.adain_forward(x, torch.ones(2, 3), torch.ones(2, 3))
    assert y.shape == x.shape and torch.isnan(mu).all()


def test_config_heuristics():
    """Shapes only (meta tensors): which path a real workload takes on the GPU (here: 4 'SMs')."""
    def cfg(shape, channels_last=False, dtype=torch.float32, inputs=1):
        x = torch.empty(shape, device="meta", dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return K.adain_config(x.flatten(2), inputs)

    r50 = cfg((8, 256, 128, 128))  # H*W = 16384 fits: read x once
    assert r50.one_pass and r50.block_l == 16384 and r50.splits == 1
    r50_bwd = cfg((8, 256, 128, 128), inputs=2)  # backward (x and dy): two loops, which won on the H200
    assert not r50_bwd.one_pass and r50_bwd.splits == 1 and r50_bwd.block_l <= 2048
    assert cfg((8, 256, 64, 64), inputs=2).one_pass  # half the row: a single read still fits
    big = cfg((8, 256, 192, 192))  # H*W = 36864: two loops
    assert not big.one_pass and big.splits == 1 and big.block_l <= 4096
    few_rows = cfg((1, 1, 512, 512))  # one row of 262 144: split
    assert few_rows.splits > 1 and few_rows.block_l * few_rows.splits < 262144 * 2
    cl = cfg((8, 256, 192, 192), channels_last=True, dtype=torch.bfloat16)
    assert cl.block_c * 2 >= 32  # at least one 32-byte sector of channels per position
    assert cfg((8, 256, 192, 192), inputs=2).block_l <= 2048


_CUDA = pytest.mark.skipif(not torch.cuda.is_available() or _INTERPRETED, reason="needs CUDA (compiled)")


@pytest.mark.cuda
@_CUDA
@pytest.mark.parametrize("shape, dtype, layout, path", [
    ((8, 64, 128, 128), torch.float32, "contiguous", "one_pass"),  # MiT stage 1: H*W = 16384
    ((4, 96, 192, 192), torch.float32, "contiguous", "stream"),    # H*W = 36864 (R50 at 768)
    ((1, 3, 512, 512), torch.float32, "contiguous", "split"),      # 3 rows of 262 144
    ((8, 256, 32, 32), torch.bfloat16, "channels_last", "one_pass"),
    ((8, 256, 192, 192), torch.float32, "channels_last", "stream"),
    ((1, 8, 512, 512), torch.bfloat16, "channels_last", "split"),
], ids=str)
def test_heuristic_configs_on_cuda(shape, dtype, layout, path):
    """Real-size shapes through the default (heuristic) configs the GPU actually uses."""
    x, mean, std, dy = _inputs(shape, dtype, "cuda", layout)
    cfg = K.adain_config(x.flatten(2))
    assert path == ("split" if cfg.splits > 1 else "one_pass" if cfg.one_pass else "stream")
    x, mean, std = (t.clone().requires_grad_() for t in (x, mean, std))
    y = K.adain(x, mean, std)
    y.backward(dy)
    yr, dxr, dmr, dsr = _reference(x, mean, std, dy)
    _close(y, yr, dtype)
    _close(x.grad, dxr, dtype)
    assert mean.grad.dtype == std.grad.dtype == dtype  # bf16 grads: compared at bf16 rounding, not / H*W
    _close_rows(mean.grad, dmr, dtype)
    _close_rows(std.grad, dsr, dtype)


@pytest.mark.cuda
@_CUDA
def test_int64_offsets_on_cuda():
    """8 x 257 x 1024 x 1024 fp16: 2**31 + 2**23 elements (4.3 GB per tensor), so the largest flat offset,
    2**31 + 2**23 - 1, exceeds 2**31 - 1 and rows (7, 249..256) lie wholly past it: an int32 offset wraps
    there (a wrong value or an illegal address). With exactly 2**31 elements an int32 kernel would pass."""
    shape = (8, 257, 1024, 1024)
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs ~18 GB of GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.empty(shape, dtype=torch.float16, device="cuda").normal_(2, 3, generator=gen)
    assert x.numel() - 1 > 2**31 - 1
    dy = torch.empty_like(x).normal_(generator=gen)
    mean = torch.randn(8, 257, device="cuda", generator=gen)
    std = torch.rand(8, 257, device="cuda", generator=gen) + 0.5
    y, mu, rstd = K.adain_forward(x, mean, std)
    dx, dmean, dstd = K.adain_backward(dy, x, mu, rstd, std)
    # rows 248 (ends at 2**31 - 1) .. 256 (the last, past 2**31 + 2**23 - 2**20) of the last image, and a first row
    for n, c in ((7, slice(248, 257)), (0, slice(0, 2))):
        sl = (slice(n, n + 1), c)
        yr, dxr, dmr, dsr = _reference(x[sl], mean[sl], std[sl], dy[sl])
        _close(y[sl], yr, torch.float16)
        _close(dx[sl], dxr, torch.float16)
        _close_rows(dmean[sl], dmr, torch.float32)
        _close_rows(dstd[sl], dsr, torch.float32)
    del x, dy, y, dx
    torch.cuda.empty_cache()


_COMPILE_SCRIPT = r"""
import json
from npdg.kernels import adain as K
from npdg.kernels.utils import compile_report

rows = []
def report(label, kernel, pointers, constexprs, **kw):
    rows.append((label, compile_report(kernel, pointers, constexprs, floats=("eps",), **kw)))

for dt, layouts in (("fp32", ("nchw", "cl")), ("bf16", ("cl",))):
    fwd = dict(X=dt, Y=dt, MEAN=dt, STD=dt, MU="fp32", RSTD="fp32")
    bwd = dict(DY=dt, X=dt, MU="fp32", RSTD="fp32", STD=dt, DX=dt, DMEAN="fp32", DSTD="fp32")
    for layout in layouts:  # unit strides as the launcher specializes them: positions or channels
        u = "l" if layout == "nchw" else "c"
        fu, bu = {"sx" + u: 1, "sy" + u: 1}, {"sd" + u: 1, "sx" + u: 1, "sdx" + u: 1}
        for bc, bl, one, w in ((1, 16384, True, 16), (1, 4096, False, 8)) if layout == "nchw" else \
                ((16, 1024, True, 16), (8, 512, False, 8)):
            tag = f"{dt} {layout} {'one_pass' if one else 'stream'}"
            report(tag + " fwd", K._adain_fwd_kernel, fwd, dict(fu, BLOCK_C=bc, BLOCK_L=bl, ONE_PASS=one),
                   num_warps=w)
            bwd_bl = bl if one else bl // 2
            report(tag + " bwd", K._adain_bwd_kernel, bwd, dict(bu, BLOCK_C=bc, BLOCK_L=bwd_bl, ONE_PASS=one,
                   COMPUTE_DX=True), num_warps=w if one else 4)
        if dt == "fp32":
            bc, bl = (1, 4096) if layout == "nchw" else (8, 512)
            sx = {"sx" + u: 1}
            report(f"fp32 {layout} split fwd partial", K._adain_fwd_partial_kernel,
                   dict(X=dt, PMEAN="fp32", PM2="fp32"), dict(sx, BLOCK_C=bc, BLOCK_L=bl), num_warps=8)
            report(f"fp32 {layout} split fwd apply", K._adain_fwd_apply_kernel, dict(fwd, PMEAN="fp32",
                   PM2="fp32"), dict(fu, BLOCK_C=bc, BLOCK_L=bl, BLOCK_S=128), num_warps=8)
            report(f"fp32 {layout} split bwd partial", K._adain_bwd_partial_kernel,
                   dict(DY=dt, X=dt, MU="fp32", RSTD="fp32", PSDY="fp32", PSDYX="fp32"),
                   dict(BLOCK_C=bc, BLOCK_L=bl // 2))
            report(f"fp32 {layout} split bwd apply", K._adain_bwd_apply_kernel,
                   dict(bwd, PSDY="fp32", PSDYX="fp32"), dict(bu, BLOCK_C=bc, BLOCK_L=bl // 2, BLOCK_S=128,
                   COMPUTE_DX=True))
print(json.dumps(rows))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for real")
def test_kernels_compile_for_sm90_without_spills():
    """Ahead-of-time compile (triton's bundled ptxas; no GPU) of every AdaIN kernel in the configs the
    GPU heuristics pick: catches what the interpreter lets through (types, layouts) and register spills."""
    rows = run_compiled(_COMPILE_SCRIPT)
    assert len(rows) == 20
    spilled = [(label, r) for label, r in rows if r["stack"] > 0]
    assert not spilled, spilled
