"""Fused AdaIN: y = std' * (x - mu(x)) / sigma(x) + mean', per (n, c) over the spatial positions.

Convention (npdg.reference): mu, sigma over H*W per (n, c), biased variance, sigma = sqrt(var + eps).
Statistics and all arithmetic in fp32 (fp64 for fp64 input, so gradcheck runs through the kernels);
the output has x's dtype. Variance by per-lane Welford + Chan merge -- never E[x^2] - E[x]^2.

x (N, C, *spatial) is handled as rows (N, C, L), L = prod(spatial), through its strides: NCHW
(positions contiguous) and channels_last (channels contiguous) are both read natively, with tiles of
BLOCK_C channels x BLOCK_L positions. Only a layout whose spatial dims do not merge into one stride
(e.g. a strided slice) is copied with .contiguous() first.

Memory traffic (what the kernels are designed for):
- forward, row fits (BLOCK_C * next_pow2(L) <= _ONE_PASS_MAX): read x once, write y;
- forward, long rows: a stats loop then a normalize loop in the same program, so the second read of
  the row is (mostly) an L2 hit: ~1 DRAM read of x + 1 write of y;
- few rows (N*C small vs the SM count): the H*W reduction is split over S programs per row; a partial
  kernel writes (mean, M2) per split, the apply kernel Chan-merges the S partials and normalizes its
  split -- x is read twice from DRAM, traded for a full GPU.
Backward is the same shape with two inputs: sums of dy and dy*xhat (which are also d mean' and d std'),
then dx = std' * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)). Saved for backward: x, mu, rstd, std'.

Configs come from a heuristic (`adain_config`), not from @triton.autotune: the config picks the grid,
the kernel (single read / two loops / split) and the partial-buffer sizes, which autotune can't, and
for a bandwidth-bound kernel num_warps only has to give enough bytes in flight. Tests pass explicit
small configs so the chunked and split paths run on tiny inputs under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from npdg.reference import DEFAULT_EPS, broadcast_style, check_stats  # project-wide eps and broadcast rules

from .utils import cdiv, check_launchable, next_pow2, num_sms

# --- constants (design reasoning for H100/H200; re-measure with benches/bench_adain.py) ---------------
# Streaming tile (elements) of the loop kernels: 16 fp32 per thread at 8 warps = four 16-byte loads in
# flight per thread (enough to cover HBM latency) while the per-lane Welford state (mean, M2) and the
# backward sums (2 tiles each) stay in registers.
_STREAM_TILE = 4096
# Largest whole-row tile (BLOCK_C * next_pow2(L)) kept in registers by the single-read path: 32 fp32 per
# thread at 16 warps for x (plus as much for dy in backward), under the 255-register limit without
# spilling. It covers the stage-1 rows of DeepLabV3+/MiT at 512x512 crops (H*W = 128*128 = 16384).
_ONE_PASS_MAX = 16384
# Channels-last tiles start at 64 consecutive channels (128-256 bytes per position, full cache lines)...
_CL_BLOCK_C = 64
# ...and are narrowed (for more programs) down to one 32-byte DRAM sector per position, never below.
_SECTOR_BYTES = 32
# Channels-last blocks are narrowed until there are 2 programs per SM (free: no extra traffic). The H*W
# reduction is split only below 1 program per SM -- a split re-reads x from DRAM (3 passes instead of ~2),
# which beats idle SMs but not a second wave -- aiming at 4 programs per SM; each split still streams
# >= _MIN_SPLIT_SPAN positions so the partial merge stays negligible.
_PROGRAMS_PER_SM = 2
_SPLIT_BELOW_PER_SM = 1
_SPLIT_TARGET_PER_SM = 4
_MIN_SPLIT_SPAN = 2048
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --- kernels -----------------------------------------------------------------------------------------
@triton.jit
def _program_rows(C, ncb, BLOCK_C: tl.constexpr):
    """The block of rows (n, channels) of this program along grid axis 0: (n as int64, channel mask,
    channel offsets as int64 -- row offsets like n*C*H*W overflow int32 at real sizes)."""
    pid = tl.program_id(0)
    offs_c = (pid % ncb) * BLOCK_C + tl.arange(0, BLOCK_C)
    return (pid // ncb).to(tl.int64), offs_c < C, offs_c.to(tl.int64)


@triton.jit
def _welford_rows(X, ACC_REF, x_rows, mask_c, sxl, lo, hi, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """(mean, M2) of each row of X over positions [lo, hi): per-lane Welford, then a Chan merge of lanes.

    ACC_REF is any pointer of the accumulation dtype (fp32, or fp64 for fp64 input).
    """
    acc_ty = ACC_REF.dtype.element_ty
    mean = tl.zeros([BLOCK_C, BLOCK_L], dtype=acc_ty)
    m2 = tl.zeros([BLOCK_C, BLOCK_L], dtype=acc_ty)
    cnt = tl.zeros([BLOCK_L], dtype=acc_ty)  # values seen per lane, the same for every row
    for start in range(lo, hi, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        in_l = offs < hi
        x = tl.load(X + x_rows[:, None] + offs[None, :].to(tl.int64) * sxl,
                    mask=mask_c[:, None] & in_l[None, :], other=0.0).to(acc_ty)
        cnt += in_l.to(acc_ty)
        step = tl.where(in_l, 1.0 / tl.maximum(cnt, 1.0), 0.0)  # 1/n for lanes that got a value, else 0
        delta = x - mean
        mean += delta * step[None, :]
        m2 += tl.where(in_l[None, :], delta * (x - mean), 0.0)
    n = tl.sum(cnt, axis=0)  # exact: integers (< 2**24 per row in fp32)
    row_mean = tl.sum(mean * cnt[None, :], axis=1) / tl.maximum(n, 1.0)
    d = mean - row_mean[:, None]
    row_m2 = tl.sum(m2 + d * d * cnt[None, :], axis=1)
    return row_mean, row_m2


@triton.jit
def _normalize_rows(X, Y, ACC_REF, x_rows, y_rows, mask_c, sxl, syl, lo, hi, mu, scale, shift,
                    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Y[rows, lo:hi] = (X - mu) * scale + shift (scale = std' * rstd, shift = mean')."""
    acc_ty = ACC_REF.dtype.element_ty
    for start in range(lo, hi, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        mask = mask_c[:, None] & (offs < hi)[None, :]
        offs64 = offs[None, :].to(tl.int64)
        x = tl.load(X + x_rows[:, None] + offs64 * sxl, mask=mask, other=0.0).to(acc_ty)
        y = (x - mu[:, None]) * scale[:, None] + shift[:, None]
        tl.store(Y + y_rows[:, None] + offs64 * syl, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _adain_fwd_kernel(X, Y, MEAN, STD, MU, RSTD, C, L, ncb, eps,
                      sxn, sxc, sxl, syn, syc, syl, smn, smc, ssn, ssc,
                      BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ONE_PASS: tl.constexpr):
    """One program per (n, block of BLOCK_C channels): statistics, then normalization, of whole rows."""
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    acc_ty = MU.dtype.element_ty
    x_rows = n * sxn + c64 * sxc
    y_rows = n * syn + c64 * syc
    new_mean = tl.load(MEAN + n * smn + c64 * smc, mask=mask_c, other=0.0).to(acc_ty)
    new_std = tl.load(STD + n * ssn + c64 * ssc, mask=mask_c, other=0.0).to(acc_ty)
    if ONE_PASS:  # the whole row is one tile: read x once
        offs = tl.arange(0, BLOCK_L)
        mask = mask_c[:, None] & (offs < L)[None, :]
        offs64 = offs[None, :].to(tl.int64)
        x = tl.load(X + x_rows[:, None] + offs64 * sxl, mask=mask, other=0.0).to(acc_ty)
        mu = tl.sum(x, axis=1) / L
        xc = tl.where(mask, x - mu[:, None], 0.0)  # two-pass centred variance, in registers
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / L + eps)
        y = xc * (new_std * rstd)[:, None] + new_mean[:, None]
        tl.store(Y + y_rows[:, None] + offs64 * syl, y.to(Y.dtype.element_ty), mask=mask)
    else:
        mu, m2 = _welford_rows(X, MU, x_rows, mask_c, sxl, 0, L, BLOCK_C, BLOCK_L)
        rstd = 1.0 / tl.sqrt(m2 / L + eps)
        _normalize_rows(X, Y, MU, x_rows, y_rows, mask_c, sxl, syl, 0, L, mu, new_std * rstd, new_mean,
                        BLOCK_C, BLOCK_L)
    st = n * C + c64
    tl.store(MU + st, mu, mask=mask_c)
    tl.store(RSTD + st, rstd, mask=mask_c)


@triton.jit
def _adain_fwd_partial_kernel(X, PMEAN, PM2, C, L, ncb, span, sxn, sxc, sxl,
                              BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Split reduction, step 1: (mean, M2) of positions [s*span, (s+1)*span) of each row."""
    s = tl.program_id(1)
    num_s = tl.num_programs(1)
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    lo = s * span
    mean, m2 = _welford_rows(X, PMEAN, n * sxn + c64 * sxc, mask_c, sxl, lo, tl.minimum(lo + span, L),
                             BLOCK_C, BLOCK_L)
    p = (n * C + c64) * num_s + s
    tl.store(PMEAN + p, mean, mask=mask_c)
    tl.store(PM2 + p, m2, mask=mask_c)


@triton.jit
def _adain_fwd_apply_kernel(X, Y, MEAN, STD, PMEAN, PM2, MU, RSTD, C, L, ncb, span, eps,
                            sxn, sxc, sxl, syn, syc, syl, smn, smc, ssn, ssc,
                            BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr):
    """Split reduction, step 2: Chan-merge the S partials of each row, normalize this split's positions."""
    s = tl.program_id(1)
    num_s = tl.num_programs(1)
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    acc_ty = MU.dtype.element_ty
    offs_s = tl.arange(0, BLOCK_S)
    p = ((n * C + c64) * num_s)[:, None] + offs_s[None, :]
    pmask = mask_c[:, None] & (offs_s < num_s)[None, :]
    pmean = tl.load(PMEAN + p, mask=pmask, other=0.0)
    pm2 = tl.load(PM2 + p, mask=pmask, other=0.0)
    cnt = tl.minimum(tl.maximum(L - offs_s * span, 0), span).to(acc_ty)  # positions per split
    mu = tl.sum(pmean * cnt[None, :], axis=1) / L
    d = pmean - mu[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(pm2 + d * d * cnt[None, :], axis=1) / L + eps)
    new_mean = tl.load(MEAN + n * smn + c64 * smc, mask=mask_c, other=0.0).to(acc_ty)
    new_std = tl.load(STD + n * ssn + c64 * ssc, mask=mask_c, other=0.0).to(acc_ty)
    lo = s * span
    _normalize_rows(X, Y, MU, n * sxn + c64 * sxc, n * syn + c64 * syc, mask_c, sxl, syl,
                    lo, tl.minimum(lo + span, L), mu, new_std * rstd, new_mean, BLOCK_C, BLOCK_L)
    if s == 0:
        st = n * C + c64
        tl.store(MU + st, mu, mask=mask_c)
        tl.store(RSTD + st, rstd, mask=mask_c)


@triton.jit
def _adain_fwd_stats_kernel(X, Y, MEAN, STD, MU, RSTD, C, L, ncb, span,
                            sxn, sxc, sxl, syn, syc, syl, smn, smc, ssn, ssc,
                            BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Statistics given (mu, rstd of x, e.g. the caller's style_stats): normalize positions
    [s*span, (s+1)*span) of each row -- one read of x, one write of y, no reduction."""
    s = tl.program_id(1)
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    acc_ty = MU.dtype.element_ty
    st = n * C + c64
    mu = tl.load(MU + st, mask=mask_c, other=0.0)
    rstd = tl.load(RSTD + st, mask=mask_c, other=0.0)
    new_mean = tl.load(MEAN + n * smn + c64 * smc, mask=mask_c, other=0.0).to(acc_ty)
    new_std = tl.load(STD + n * ssn + c64 * ssc, mask=mask_c, other=0.0).to(acc_ty)
    lo = s * span
    _normalize_rows(X, Y, MU, n * sxn + c64 * sxc, n * syn + c64 * syc, mask_c, sxl, syl,
                    lo, tl.minimum(lo + span, L), mu, new_std * rstd, new_mean, BLOCK_C, BLOCK_L)


@triton.jit
def _bwd_sums_rows(X, DY, ACC_REF, x_rows, dy_rows, mask_c, sxl, sdl, lo, hi, mu, rstd,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """(sum dy, sum dy * xhat) of each row over positions [lo, hi); lane-wise accumulation, one final sum."""
    acc_ty = ACC_REF.dtype.element_ty
    sdy = tl.zeros([BLOCK_C, BLOCK_L], dtype=acc_ty)
    sdyx = tl.zeros([BLOCK_C, BLOCK_L], dtype=acc_ty)
    for start in range(lo, hi, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        mask = mask_c[:, None] & (offs < hi)[None, :]
        offs64 = offs[None, :].to(tl.int64)
        x = tl.load(X + x_rows[:, None] + offs64 * sxl, mask=mask, other=0.0).to(acc_ty)
        dy = tl.load(DY + dy_rows[:, None] + offs64 * sdl, mask=mask, other=0.0).to(acc_ty)
        sdy += dy
        sdyx += dy * ((x - mu[:, None]) * rstd[:, None])  # masked lanes: dy = 0
    return tl.sum(sdy, axis=1), tl.sum(sdyx, axis=1)


@triton.jit
def _bwd_dx_rows(X, DY, DX, ACC_REF, x_rows, dy_rows, dx_rows, mask_c, sxl, sdl, sdxl, lo, hi,
                 mu, rstd, gain, mean_dy, mean_dyx, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """DX[rows, lo:hi] = gain * (dy - mean(dy) - xhat * mean(dy * xhat)), gain = std' * rstd."""
    acc_ty = ACC_REF.dtype.element_ty
    for start in range(lo, hi, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        mask = mask_c[:, None] & (offs < hi)[None, :]
        offs64 = offs[None, :].to(tl.int64)
        x = tl.load(X + x_rows[:, None] + offs64 * sxl, mask=mask, other=0.0).to(acc_ty)
        dy = tl.load(DY + dy_rows[:, None] + offs64 * sdl, mask=mask, other=0.0).to(acc_ty)
        xhat = (x - mu[:, None]) * rstd[:, None]
        dx = gain[:, None] * (dy - mean_dy[:, None] - xhat * mean_dyx[:, None])
        tl.store(DX + dx_rows[:, None] + offs64 * sdxl, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _adain_bwd_kernel(DY, X, MU, RSTD, STD, DX, DMEAN, DSTD, C, L, ncb,
                      sdn, sdc, sdl, sxn, sxc, sxl, sdxn, sdxc, sdxl, ssn, ssc,
                      BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ONE_PASS: tl.constexpr,
                      COMPUTE_DX: tl.constexpr):
    """One program per (n, channel block): d mean' = sum dy, d std' = sum dy * xhat, then dx."""
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    acc_ty = MU.dtype.element_ty
    st = n * C + c64
    mu = tl.load(MU + st, mask=mask_c, other=0.0)
    rstd = tl.load(RSTD + st, mask=mask_c, other=0.0)
    gain = tl.load(STD + n * ssn + c64 * ssc, mask=mask_c, other=0.0).to(acc_ty) * rstd
    x_rows = n * sxn + c64 * sxc
    dy_rows = n * sdn + c64 * sdc
    dx_rows = n * sdxn + c64 * sdxc
    if ONE_PASS:  # whole row in registers: read x and dy once
        offs = tl.arange(0, BLOCK_L)
        mask = mask_c[:, None] & (offs < L)[None, :]
        offs64 = offs[None, :].to(tl.int64)
        x = tl.load(X + x_rows[:, None] + offs64 * sxl, mask=mask, other=0.0).to(acc_ty)
        dy = tl.load(DY + dy_rows[:, None] + offs64 * sdl, mask=mask, other=0.0).to(acc_ty)
        xhat = tl.where(mask, (x - mu[:, None]) * rstd[:, None], 0.0)
        sdy = tl.sum(dy, axis=1)
        sdyx = tl.sum(dy * xhat, axis=1)
        if COMPUTE_DX:
            dx = gain[:, None] * (dy - (sdy / L)[:, None] - xhat * (sdyx / L)[:, None])
            tl.store(DX + dx_rows[:, None] + offs64 * sdxl, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        sdy, sdyx = _bwd_sums_rows(X, DY, MU, x_rows, dy_rows, mask_c, sxl, sdl, 0, L, mu, rstd,
                                   BLOCK_C, BLOCK_L)
        if COMPUTE_DX:
            _bwd_dx_rows(X, DY, DX, MU, x_rows, dy_rows, dx_rows, mask_c, sxl, sdl, sdxl, 0, L,
                         mu, rstd, gain, sdy / L, sdyx / L, BLOCK_C, BLOCK_L)
    tl.store(DMEAN + st, sdy, mask=mask_c)
    tl.store(DSTD + st, sdyx, mask=mask_c)


@triton.jit
def _adain_bwd_partial_kernel(DY, X, MU, RSTD, PSDY, PSDYX, C, L, ncb, span, sdn, sdc, sdl, sxn, sxc, sxl,
                              BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Split reduction, step 1: (sum dy, sum dy * xhat) of positions [s*span, (s+1)*span) of each row."""
    s = tl.program_id(1)
    num_s = tl.num_programs(1)
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    st = n * C + c64
    mu = tl.load(MU + st, mask=mask_c, other=0.0)
    rstd = tl.load(RSTD + st, mask=mask_c, other=0.0)
    lo = s * span
    sdy, sdyx = _bwd_sums_rows(X, DY, MU, n * sxn + c64 * sxc, n * sdn + c64 * sdc, mask_c, sxl, sdl,
                               lo, tl.minimum(lo + span, L), mu, rstd, BLOCK_C, BLOCK_L)
    p = st * num_s + s
    tl.store(PSDY + p, sdy, mask=mask_c)
    tl.store(PSDYX + p, sdyx, mask=mask_c)


@triton.jit
def _adain_bwd_apply_kernel(DY, X, MU, RSTD, STD, PSDY, PSDYX, DX, DMEAN, DSTD, C, L, ncb, span,
                            sdn, sdc, sdl, sxn, sxc, sxl, sdxn, sdxc, sdxl, ssn, ssc,
                            BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr,
                            COMPUTE_DX: tl.constexpr):
    """Split reduction, step 2: add the S partial sums of each row, write dx for this split's positions."""
    s = tl.program_id(1)
    num_s = tl.num_programs(1)
    n, mask_c, c64 = _program_rows(C, ncb, BLOCK_C)
    acc_ty = MU.dtype.element_ty
    st = n * C + c64
    offs_s = tl.arange(0, BLOCK_S)
    p = (st * num_s)[:, None] + offs_s[None, :]
    pmask = mask_c[:, None] & (offs_s < num_s)[None, :]
    sdy = tl.sum(tl.load(PSDY + p, mask=pmask, other=0.0), axis=1)
    sdyx = tl.sum(tl.load(PSDYX + p, mask=pmask, other=0.0), axis=1)
    if COMPUTE_DX:
        mu = tl.load(MU + st, mask=mask_c, other=0.0)
        rstd = tl.load(RSTD + st, mask=mask_c, other=0.0)
        gain = tl.load(STD + n * ssn + c64 * ssc, mask=mask_c, other=0.0).to(acc_ty) * rstd
        lo = s * span
        _bwd_dx_rows(X, DY, DX, MU, n * sxn + c64 * sxc, n * sdn + c64 * sdc, n * sdxn + c64 * sdxc, mask_c,
                     sxl, sdl, sdxl, lo, tl.minimum(lo + span, L), mu, rstd, gain, sdy / L, sdyx / L,
                     BLOCK_C, BLOCK_L)
    if s == 0:
        tl.store(DMEAN + st, sdy, mask=mask_c)
        tl.store(DSTD + st, sdyx, mask=mask_c)


# --- launchers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaINConfig:
    """Launch configuration. block_c/block_l: powers of two; splits: programs per row (H*W split);
    one_pass: the whole row is one tile (needs block_l >= H*W and splits == 1)."""

    block_c: int
    block_l: int
    splits: int = 1
    one_pass: bool = False
    num_warps: int = 4

    def __post_init__(self):
        for name in ("block_c", "block_l"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"AdaINConfig.{name}={v}: must be a power of two")
        if self.splits < 1:
            raise ValueError(f"AdaINConfig.splits={self.splits}: must be >= 1")
        if self.one_pass and self.splits != 1:
            raise ValueError("AdaINConfig: one_pass needs splits == 1")


def _num_warps(tile: int) -> int:
    # 16 elements per thread for a streaming tile, 32 for the largest single-read tile.
    return max(4, min(16, tile // 512))


def adain_config(x3: torch.Tensor, inputs: int = 1) -> AdaINConfig:
    """Heuristic config for rows x3 (N, C, L); inputs = tensors streamed per position (2 in backward)."""
    n, c, hw = x3.shape
    sms = num_sms(x3.device)
    tile = _STREAM_TILE // inputs
    if x3.stride(1) == 1 and x3.stride(2) != 1 and c > 1:  # channels_last: channels contiguous
        block_c = min(next_pow2(c), _CL_BLOCK_C)
        min_c = max(1, _SECTOR_BYTES // x3.element_size())
        while block_c > min_c and n * cdiv(c, block_c) < _PROGRAMS_PER_SM * sms:
            block_c //= 2
        block_l = min(next_pow2(hw), max(1, tile // block_c))
    else:
        block_l = min(next_pow2(hw), tile)
        block_c = min(next_pow2(c), max(1, tile // block_l))
    programs = n * cdiv(c, block_c)
    if programs < _SPLIT_BELOW_PER_SM * sms and hw >= 2 * _MIN_SPLIT_SPAN:
        splits = min(cdiv(_SPLIT_TARGET_PER_SM * sms, programs), hw // _MIN_SPLIT_SPAN)
        return AdaINConfig(block_c, block_l, splits, False, _num_warps(block_c * block_l))
    # The single read holds a whole row per input in registers: in backward (x and dy) the same row is twice the
    # state, and at the R50 512x512 stage-1 shape (8, 256, 128x128) it lost to the two loops on the H200
    # (fwd+bwd 0.675 vs 0.527 ms, forward alone 0.184 vs 0.223: benches/results/gpu_h200/summary.md), so the
    # whole-row bound is per input.
    if block_c * next_pow2(hw) <= _ONE_PASS_MAX // inputs:
        return AdaINConfig(block_c, next_pow2(hw), 1, True, _num_warps(block_c * next_pow2(hw)))
    return AdaINConfig(block_c, block_l, 1, False, _num_warps(block_c * block_l))


def _rows(t: torch.Tensor, n: int, c: int, hw: int) -> torch.Tensor:
    """(N, C, L) view of t (N, C, *spatial); a copy only when the spatial strides don't merge."""
    try:
        return t.view(n, c, hw)
    except RuntimeError:
        return t.contiguous().view(n, c, hw)


def _out_rows(out: torch.Tensor | None, like3: torch.Tensor, shape, name: str):
    """(out, out as (N, C, L)): a new tensor with like3's strides, or the caller's buffer (never copied)."""
    if out is None:
        out3 = torch.empty_like(like3)
        return out3.view(shape), out3
    if out.shape != shape or out.dtype != like3.dtype or out.device != like3.device:
        raise ValueError(f"{name}: out must be {tuple(shape)} {like3.dtype} on {like3.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    try:
        return out, out.view(like3.shape)
    except RuntimeError:
        raise ValueError(f"{name}: out must be viewable as (N, C, H*W) (mergeable spatial strides)") from None


def _split_span(hw: int, cfg: AdaINConfig) -> tuple[int, int]:
    """Positions per split (a multiple of block_l, so loads stay aligned) and the resulting split count."""
    span = cdiv(cdiv(hw, cfg.splits), cfg.block_l) * cfg.block_l
    return span, cdiv(hw, span)


def _check_one_pass(cfg: AdaINConfig, hw: int) -> None:
    if cfg.one_pass and cfg.block_l < hw:
        raise ValueError(f"AdaINConfig.one_pass needs block_l >= H*W = {hw}, got {cfg.block_l}")


def adain_forward(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = DEFAULT_EPS, *,
                  config: AdaINConfig | None = None, out: torch.Tensor | None = None,
                  stats: tuple[torch.Tensor, torch.Tensor] | None = None):
    """(y, mu, rstd) for x (N, C, *spatial) and mean'/std' (N, C) of any strides.

    mu, rstd: (N, C) fp32 (fp64 for fp64 x) -- what backward needs. out: optional buffer for y.
    stats: x's own (mu, sigma) = npdg.reference.style_stats(x, eps), already computed by the caller: the
    kernel then only normalizes (one read of x, no reduction) and returns (mu, 1 / sigma).
    """
    n, c, hw = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x3 = _rows(x, n, c, hw)
    y, y3 = _out_rows(out, x3, x.shape, "adain_forward")
    if stats is not None:
        mu, rstd = given_stats(stats, x, acc)
    else:
        mu = torch.empty((n, c), dtype=acc, device=x.device)  # every path writes every row
        rstd = torch.empty_like(mu)
    if x3.numel() == 0:  # no positions: undefined statistics, as in the reference
        return y, mu.fill_(float("nan")), rstd.fill_(float("nan"))
    check_launchable(_adain_fwd_kernel, x3, "adain_forward")
    cfg = config or adain_config(x3)
    ncb = cdiv(c, cfg.block_c)
    strides = (*x3.stride(), *y3.stride(), *mean.stride(), *std.stride())
    if stats is not None:
        span, splits = (hw, 1) if cfg.splits == 1 else _split_span(hw, cfg)
        # No row is held in registers: stream whole-row (one_pass) tiles in _STREAM_TILE pieces (a 16 x 1024
        # channels-last tile spilled on sm_90); a smaller power of two still divides a split's span.
        block_l = min(cfg.block_l, max(1, _STREAM_TILE // cfg.block_c))
        warps = cfg.num_warps if block_l == cfg.block_l else _num_warps(cfg.block_c * block_l)
        _adain_fwd_stats_kernel[(n * ncb, splits)](x3, y3, mean, std, mu, rstd, c, hw, ncb, span, *strides,
                                                   BLOCK_C=cfg.block_c, BLOCK_L=block_l, num_warps=warps)
        return y, mu, rstd
    if cfg.splits == 1:
        _check_one_pass(cfg, hw)
        _adain_fwd_kernel[(n * ncb,)](x3, y3, mean, std, mu, rstd, c, hw, ncb, eps, *strides,
                                      BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l, ONE_PASS=cfg.one_pass,
                                      num_warps=cfg.num_warps)
        return y, mu, rstd
    span, splits = _split_span(hw, cfg)
    pmean = torch.empty((n * c, splits), dtype=acc, device=x.device)
    pm2 = torch.empty_like(pmean)
    grid = (n * ncb, splits)
    _adain_fwd_partial_kernel[grid](x3, pmean, pm2, c, hw, ncb, span, *x3.stride(),
                                    BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l, num_warps=cfg.num_warps)
    _adain_fwd_apply_kernel[grid](x3, y3, mean, std, pmean, pm2, mu, rstd, c, hw, ncb, span, eps, *strides,
                                  BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l, BLOCK_S=next_pow2(splits),
                                  num_warps=cfg.num_warps)
    return y, mu, rstd


def given_stats(stats, x: torch.Tensor, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, rstd) (N, C) contiguous in acc from the caller's (mu, sigma) of x; detached: they are x's own
    statistics, whose gradient the backward already carries analytically (dx's mean(dy), xhat terms)."""
    mu, rstd = check_stats(stats, x)
    return mu.detach().to(acc).contiguous(), rstd.detach().to(acc).reciprocal().contiguous()


def adain_backward(dy: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, rstd: torch.Tensor,
                   std: torch.Tensor, *, config: AdaINConfig | None = None, need_dx: bool = True,
                   out: torch.Tensor | None = None):
    """(dx or None, d mean', d std') from dy and what forward saved.

    d mean' = sum dy and d std' = sum dy * xhat per (n, c), (N, C) in mu's dtype. out: optional buffer for dx.
    """
    n, c, hw = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if dy.shape != x.shape:
        raise ValueError(f"adain_backward: dy {tuple(dy.shape)} and x {tuple(x.shape)} differ")
    dmean = torch.empty_like(mu)  # every path writes every row
    dstd = torch.empty_like(mu)
    x3, dy3 = _rows(x, n, c, hw), _rows(dy, n, c, hw)
    dx, dx3 = _out_rows(out, x3, x.shape, "adain_backward") if need_dx else (None, x3)  # x3: unused pointer
    if x3.numel() == 0:
        return dx, dmean.zero_(), dstd.zero_()
    check_launchable(_adain_bwd_kernel, x3, "adain_backward")
    cfg = config or adain_config(x3, inputs=2)
    ncb = cdiv(c, cfg.block_c)
    strides = (*dy3.stride(), *x3.stride(), *dx3.stride(), *std.stride())
    if cfg.splits == 1:
        _check_one_pass(cfg, hw)
        _adain_bwd_kernel[(n * ncb,)](dy3, x3, mu, rstd, std, dx3, dmean, dstd, c, hw, ncb, *strides,
                                      BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l, ONE_PASS=cfg.one_pass,
                                      COMPUTE_DX=need_dx, num_warps=cfg.num_warps)
        return dx, dmean, dstd
    span, splits = _split_span(hw, cfg)
    psdy = torch.empty((n * c, splits), dtype=mu.dtype, device=x.device)
    psdyx = torch.empty_like(psdy)
    grid = (n * ncb, splits)
    _adain_bwd_partial_kernel[grid](dy3, x3, mu, rstd, psdy, psdyx, c, hw, ncb, span, *dy3.stride(),
                                    *x3.stride(), BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l,
                                    num_warps=cfg.num_warps)
    _adain_bwd_apply_kernel[grid](dy3, x3, mu, rstd, std, psdy, psdyx, dx3, dmean, dstd, c, hw, ncb, span,
                                  *strides, BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l,
                                  BLOCK_S=next_pow2(splits), COMPUTE_DX=need_dx, num_warps=cfg.num_warps)
    return dx, dmean, dstd


# --- autograd ----------------------------------------------------------------------------------------
class AdaINFunction(torch.autograd.Function):
    """AdaIN with gradients for x, mean and std. Saves x, mu, rstd, std (not y)."""

    @staticmethod
    def forward(ctx, x, mean, std, eps=DEFAULT_EPS, config=None, stats=None):
        y, mu, rstd = adain_forward(x, mean, std, eps, config=config, stats=stats)
        ctx.save_for_backward(x, mu, rstd, std)
        ctx.config = config
        ctx.dtypes = (mean.dtype, std.dtype)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mu, rstd, std = ctx.saved_tensors
        need_x, need_mean, need_std = ctx.needs_input_grad[:3]
        dx, dmean, dstd = adain_backward(dy, x, mu, rstd, std, config=ctx.config, need_dx=need_x)
        dmean = dmean.to(ctx.dtypes[0]) if need_mean else None
        dstd = dstd.to(ctx.dtypes[1]) if need_std else None
        return dx, dmean, dstd, None, None, None


def adain(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = DEFAULT_EPS, *,
          config: AdaINConfig | None = None, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """AdaIN(x, mean', std') per (n, c) with the Triton kernels; x (N, C, *spatial) fp16/bf16/fp32/fp64.

    mean/std: (N, C), or broadcastable to it ((C,), (1, C), (N, C, 1, 1)). Differentiable in all three.
    stats: optional (mu, sigma) of x itself (``npdg.reference.style_stats(x, eps)``, e.g. detached, as the
    DSP hooks compute them anyway): the forward then skips its reduction. The gradient to x is the same
    either way -- it includes the path through x's statistics -- so stats are taken as values only.
    """
    if x.dim() < 3:
        raise ValueError(f"adain expects x of shape (N, C, *spatial), got {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED:
        raise TypeError(f"adain: x dtype {x.dtype} not supported (fp16, bf16, fp32, fp64)")
    mean = broadcast_style(mean, x, "mean")
    std = broadcast_style(std, x, "std")
    if stats is not None:
        stats = tuple(t.detach() for t in check_stats(stats, x))
    return AdaINFunction.apply(x, mean, std, float(eps), config, stats)
