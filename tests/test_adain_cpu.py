"""Fused CPU AdaIN (csrc/adain.cpp: torch.ops.npdg.adain_forward / adain_backward) against the float64
reference, through the npdg.ops.adain door (autograd registered in npdg/ops.py).

Gradients of mean' / std' are sums over H*W; they are compared with the float64 reference at a tolerance
relative to the largest reference value (never scaled by H*W), so a zero or wrong-row gradient fails.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from npdg import _ext, ops, reference

# (atol, rtol) for y and dx stored in each dtype (inputs are exact in every dtype, so: final rounding +
# fp32 arithmetic), and for the (N, C) gradients relative to max |reference|.
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-2, 8e-3),  # ulp = 2**-7 relative
    torch.float16: (1e-3, 1e-3),   # ulp = 2**-10 relative
}
SHAPES = [
    (5, 123, 123),      # (N, C, L): odd C and L, 3-D input
    (2, 3, 5, 7),       # L = 35: lanes tail only
    (1, 1, 1, 1),       # HW = 1: var = 0
    (3, 4, 1, 1),       # HW = 1, several rows
    (2, 3, 1, 4099),    # L > 4 flush blocks of 1024, + a lane tail of 3
    (1, 2, 2, 3, 5),    # 5-D
]


@pytest.fixture(autouse=True)
def _fused_cpu_path(monkeypatch):
    monkeypatch.delenv("NPDG_KERNELS", raising=False)
    monkeypatch.delenv("NPDG_NO_EXT", raising=False)
    if not _ext.available() or not hasattr(torch.ops.npdg, "adain_forward"):
        if os.environ.get("NPDG_REQUIRE_EXT", "0") == "1":
            pytest.fail(f"NPDG_REQUIRE_EXT=1 but the fused CPU AdaIN is missing ({_ext.how()})")
        pytest.skip(f"extension without the fused CPU AdaIN: {_ext.how()}")


def _inputs(shape, dtype, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    mean = (torch.randn(n, c, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    std = (torch.rand(n, c, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if grad:
        x, mean, std = (t.requires_grad_() for t in (x, mean, std))
    return x, mean, std, dy


def _reference(x, mean, std, dy):
    """y, dx, d mean', d std' of the float64 reference (autograd)."""
    xr, mr, sr = (t.detach().double().requires_grad_() for t in (x, mean, std))
    yr = reference.adain(xr, mr, sr)
    yr.backward(dy.double())
    return yr.detach(), xr.grad, mr.grad, sr.grad


def _close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol)


def _close_rows(actual, expected, dtype):
    """(N, C) sums: error relative to the largest reference value; a zero/wrong gradient can't pass."""
    atol, rtol = TOL[dtype]
    scale = expected.abs().max().item()
    assert scale > 0.5, "the check needs non-trivial reference gradients"
    torch.testing.assert_close(actual.double(), expected, atol=atol * scale, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_matches_float64_reference(shape, dtype):
    x, mean, std, dy = _inputs(shape, dtype)
    assert ops.adain_backend(x) == "cpp"
    y = ops.adain(x, mean, std)
    assert "npdg_adain_forward" in type(y.grad_fn).__name__  # the fused op ran, not the reference
    y.backward(dy)
    yr, dxr, dmr, dsr = _reference(x, mean, std, dy)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    _close(y, yr, dtype)
    _close(x.grad, dxr, dtype)
    assert mean.grad.dtype == std.grad.dtype == dtype
    if math.prod(shape[2:]) == 1:  # one position: xhat = 0, so dx = 0 and d std' = 0 exactly
        assert torch.equal(x.grad, torch.zeros_like(x.grad)) and torch.equal(std.grad, torch.zeros_like(std.grad))
        torch.testing.assert_close(y.double(), mean.detach().double().view(yr.shape), atol=0, rtol=0)
    else:
        _close_rows(std.grad, dsr, dtype)
    _close_rows(mean.grad, dmr, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_statistics_outputs(dtype):
    x, mean, std, _ = _inputs((2, 5, 3, 1500), dtype, grad=False)
    y, mu, rstd = torch.ops.npdg.adain_forward(x, mean, std, 1e-5)
    mur, sigmar = reference.style_stats(x.double())
    assert mu.dtype == rstd.dtype == dtype  # fp32 stats for fp32, fp64 for fp64
    _close(mu, mur, dtype)
    _close(1 / rstd, sigmar, dtype)


def test_large_offset_mean_is_accurate():
    """|mean| = 1000 >> std = 3: the centred two-pass variance keeps fp32 accuracy. The budget is the fp32
    rounding of mu (half an ulp of 1000 = 3e-5, times std'/sigma <= 1); E[x^2] - E[x]^2 in fp32 would be
    off by ~1e-2 (var ~ 9 from a difference of two ~1e6 numbers)."""
    x, mean, std, dy = _inputs((2, 3, 64, 64), torch.float32, grad=False)
    x = x + 1000
    torch.testing.assert_close(ops.adain(x, mean, std).double(), _reference(x, mean, std, dy)[0],
                               atol=1e-4, rtol=1e-5)


def test_gradcheck_fp64():
    x, mean, std, _ = _inputs((2, 3, 4, 5), torch.float64)
    assert torch.autograd.gradcheck(ops.adain, (x, mean, std))
    c_mean, c_std = (t.detach()[0].clone().requires_grad_() for t in (mean, std))  # (C,): broadcast over N
    assert torch.autograd.gradcheck(ops.adain, (x, c_mean, c_std))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(dtype):
    x, mean, std, dy = _inputs((2, 3, 5, 7), dtype)
    torch.library.opcheck(torch.ops.npdg.adain_forward.default, (x, mean, std, 1e-5))
    _, mu, rstd = torch.ops.npdg.adain_forward(x.detach(), mean.detach(), std.detach(), 1e-5)
    for need_dx in (True, False):
        torch.library.opcheck(torch.ops.npdg.adain_backward.default,
                              (dy, x.detach(), mu, rstd, std.detach(), need_dx))


def test_grads_for_style_only_and_expanded_dy():
    """x without grad (dx skipped inside); stride-0 dy (y.sum(), and one dy row expanded over N)."""
    x, mean, std, dy = _inputs((2, 3, 6, 7), torch.float32)
    x = x.detach()
    ops.adain(x, mean, std).sum().backward()
    _, _, dmr, dsr = _reference(x, mean, std, torch.ones_like(dy))
    _close_rows(mean.grad, dmr, torch.float32)  # = H*W
    torch.testing.assert_close(std.grad, torch.zeros_like(std.grad), atol=1e-5 * 42, rtol=0)  # sum of xhat = 0
    mean.grad = std.grad = None
    dy = dy[:1].expand_as(dy)
    ops.adain(x, mean, std).backward(dy)
    _, _, dmr, dsr = _reference(x, mean, std, dy)
    _close_rows(mean.grad, dmr, torch.float32)
    _close_rows(std.grad, dsr, torch.float32)


def test_constant_channel_is_finite():
    x, mean, std, dy = _inputs((2, 3, 1, 4099), torch.float32, grad=False)
    x[:, 1] = 2.5
    x, mean, std = (t.requires_grad_() for t in (x, mean, std))
    y = ops.adain(x, mean, std)
    y.backward(dy)
    for t in (y, x.grad, mean.grad, std.grad):
        assert torch.isfinite(t).all()
    yr, dxr, _, _ = _reference(x, mean, std, dy)
    _close(y, yr, torch.float32)
    _close(x.grad, dxr, torch.float32)


def test_empty_input():
    x = torch.empty(2, 3, 0, 4, requires_grad=True)
    mean, std = torch.zeros(2, 3, requires_grad=True), torch.ones(2, 3, requires_grad=True)
    y = ops.adain(x, mean, std)
    assert y.shape == x.shape
    _, mu, _ = torch.ops.npdg.adain_forward(x.detach(), mean.detach(), std.detach(), 1e-5)
    assert torch.isnan(mu).all()  # undefined statistics, as in the reference
    y.sum().backward()
    assert torch.equal(mean.grad, torch.zeros(2, 3)) and torch.equal(std.grad, torch.zeros(2, 3))


def test_dispatch(monkeypatch):
    x = torch.randn(2, 3, 4, 5)
    assert ops.adain_backend(x) == "cpp"
    assert ops.adain_backend(x.contiguous(memory_format=torch.channels_last)) == "reference"
    assert ops.adain_backend(x[..., ::2]) == "reference"
    assert ops.adain_backend(x.to(torch.int32)) == "reference"
    monkeypatch.setenv("NPDG_KERNELS", "reference")
    assert ops.adain_backend(x) == "reference"
    y = ops.adain(x.requires_grad_(), torch.zeros(2, 3), torch.ones(2, 3))
    assert "npdg" not in type(y.grad_fn).__name__
    monkeypatch.setenv("NPDG_KERNELS", "auto")
    monkeypatch.setenv("NPDG_NO_EXT", "1")
    assert ops.adain_backend(x) == "reference"


def test_channels_last_falls_back_with_the_same_result():
    x, mean, std, dy = _inputs((2, 3, 5, 7), torch.float32, grad=False)
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.adain(xc, mean, std), ops.adain(x, mean, std), atol=1e-6, rtol=1e-6)


def test_rejects_bad_input():
    x, mean, std, dy = _inputs((2, 3, 5, 7), torch.float32, grad=False)
    with pytest.raises(ValueError, match="broadcast"):
        ops.adain(x, mean[:, :2], std)
    with pytest.raises(RuntimeError, match=r"mean must be \(N, C\)"):
        torch.ops.npdg.adain_forward(x, mean[:, :2], std, 1e-5)
    with pytest.raises(RuntimeError, match="spatial"):
        torch.ops.npdg.adain_forward(x[:, :, 0, 0], mean, std, 1e-5)
    with pytest.raises(RuntimeError, match="not supported"):
        torch.ops.npdg.adain_forward(x.to(torch.int32), mean, std, 1e-5)
    y, mu, rstd = torch.ops.npdg.adain_forward(x, mean, std, 1e-5)
    with pytest.raises(RuntimeError, match="differ"):
        torch.ops.npdg.adain_backward(dy[:1], x, mu, rstd, std, True)
