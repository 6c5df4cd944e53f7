"""Style sensitivity: covariance of style deviations as one fused, centred Gram matrix.

For activations A (K, N, C, L) -- K style variants of the same N contents, C units, L samples per unit --
the style deviation is D = A - mean_k A and Cov = D^T D / M over the M = K*N*L samples (npdg.reference).
var = diag(Cov) (the unary score) comes out of the same matrix.

One kernel: each program owns a BLOCK_C x BLOCK_C tile (ti <= tj) of Cov and loops over (n, l-block).
Per step it loads the K tiles of rows I and J, takes their mean over k in registers (first k-loop),
reloads them (an L1/L2 hit) and centres them in the load prologue, and accumulates D_I D_J^T with
tl.dot in fp32 (input_precision "ieee" = exact fp32 products on FMA units, "tf32" = tensor cores,
"tf32x3" = tensor cores with ~fp32 accuracy; the interpreter computes all three exactly).
D is never written to memory. Only upper tiles are computed; each stores its tile and the mirror
(strictly-lower part only on diagonal tiles), so Cov is exactly symmetric. When the C x C tiles are too
few to fill the GPU, the (n, l) loop is split over S programs writing S partial Gram matrices, summed
afterwards (deterministic, no atomics).

Any K >= 1 (K = 1 gives Cov = 0), any C, any L, any strides; fp16/bf16/fp32 inputs, fp32 results.
fp64 inputs go to the fp64 reference (npdg.reference.style_sensitivity) and return fp64: fp64 tl.dot is
not something to rely on across GPUs, and fp64 only serves as a test reference.

On CUDA (not interpreting, NPDG_AUTOTUNE != 0) tile sizes are autotuned; otherwise a fixed heuristic
config is used (@triton.autotune cannot run under the interpreter without a GPU driver).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .utils import autotune_enabled, cdiv, check_launchable, next_pow2, num_sms

# --- constants (design reasoning for H100/H200; re-measure with benches/bench_sensitivity.py) ----------
# tl.dot needs every dimension >= 16; 16 is also the smallest tile that keeps C = 1..16 cheap.
_MIN_BLOCK = 16
# Default tile: 64 x 64 fp32 accumulator = 16 registers per thread at 8 warps, a classic fp32-GEMM tile;
# BLOCK_L = 32 keeps the 2 x K operand loads of a step small enough to be re-read from L1
# (150-230 registers, no spills on sm_90 in the three precisions).
_BLOCK_C = 64
_BLOCK_L = 32
# Split the (n, l) loop when the upper-triangle tiles give fewer than 2 programs per SM, aiming at 4.
_SPLIT_BELOW_PER_SM = 2
_SPLIT_TARGET_PER_SM = 4
# Candidates for the GPU autotuner: tile sizes of an fp32/tf32 Gram at C = 256..2048 that compile for
# sm_90 without (or with < 32 bytes of) register spills in all three precisions (checked with ptxas).
_AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_C": 64, "BLOCK_L": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 64, "BLOCK_L": 16}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 64, "BLOCK_L": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_C": 128, "BLOCK_L": 16}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 32, "BLOCK_L": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_C": 16, "BLOCK_L": 32}, num_warps=4, num_stages=3),
]
# ieee: exact fp32 products (FMA units); tf32: tensor cores, 10-bit mantissa products; tf32x3: three tf32
# products per fp32 product (hi*hi + hi*lo + lo*hi), ~fp32 accuracy at tensor-core speed.
_PRECISIONS = ("ieee", "tf32", "tf32x3")
# In-tile offsets c * sac + l * sal at or above this need the int64 kernel variant (OFF64).
_INT32_OFFSETS = 2**31
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


# --- kernel ------------------------------------------------------------------------------------------
@triton.jit
def _tile_coords(pid):
    """pid -> (ti, tj) with ti <= tj, column by column: pid = tj * (tj + 1) / 2 + ti."""
    tj = ((tl.sqrt(8.0 * pid + 1.0) - 1.0) * 0.5).to(tl.int32)
    tj = tl.where((tj + 1) * (tj + 2) // 2 <= pid, tj + 1, tj)  # fix fp32 rounding of the sqrt
    tj = tl.where(tj * (tj + 1) // 2 > pid, tj - 1, tj)
    return pid - tj * (tj + 1) // 2, tj


@triton.jit
def _style_cov_kernel(A, OUT, N, C, L, K, sak, san, sac, sal, so_s, inv_m,
                      BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, PRECISION: tl.constexpr,
                      OFF64: tl.constexpr):
    """OUT[s] tile (ti, tj) and its mirror = sum over this split's (n, l) of D_I D_J^T / M.

    k and n enter through a scalar int64 pointer; the in-tile offsets (c * sac + l * sal) are int32
    unless OFF64 (the host sets it when they can pass 2**31): int64 pointer tiles would cost the
    registers the fp32 tiles need (spills at 64 x 64).
    """
    ti, tj = _tile_coords(tl.program_id(0))
    s = tl.program_id(1)
    num_s = tl.num_programs(1)
    offs_i = ti * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_j = tj * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_i = offs_i < C
    mask_j = offs_j < C
    if OFF64:
        rows_i = offs_i.to(tl.int64) * sac
        rows_j = offs_j.to(tl.int64) * sac
    else:
        rows_i = offs_i * sac
        rows_j = offs_j * sac
    n_lb = tl.cdiv(L, BLOCK_L)
    steps = N * n_lb
    per = tl.cdiv(steps, num_s)
    start = s * per
    acc = tl.zeros([BLOCK_C, BLOCK_C], dtype=tl.float32)
    for it in range(start, tl.minimum(start + per, steps)):
        n = it // n_lb
        offs_l = (it - n * n_lb) * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        if OFF64:
            cols = offs_l.to(tl.int64) * sal
        else:
            cols = offs_l * sal
        off_i = rows_i[:, None] + cols[None, :]
        off_j = rows_j[:, None] + cols[None, :]
        m_i = mask_i[:, None] & mask_l[None, :]
        m_j = mask_j[:, None] & mask_l[None, :]
        a_n = A + n.to(tl.int64) * san
        sum_i = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
        sum_j = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
        a_k = a_n
        for _k in range(K):  # mean over the K styles, in registers
            sum_i += tl.load(a_k + off_i, mask=m_i, other=0.0).to(tl.float32)
            sum_j += tl.load(a_k + off_j, mask=m_j, other=0.0).to(tl.float32)
            a_k += sak
        mean_i = sum_i / K
        mean_j = sum_j / K
        a_k = a_n
        for _k in range(K):  # reload (L1/L2 hit), centre in the load prologue (masked: 0 - 0), Gram
            d_i = tl.load(a_k + off_i, mask=m_i, other=0.0).to(tl.float32) - mean_i
            d_j = tl.load(a_k + off_j, mask=m_j, other=0.0).to(tl.float32) - mean_j
            acc = tl.dot(d_i, tl.trans(d_j), acc, input_precision=PRECISION)
            a_k += sak
    acc = acc * inv_m
    out = OUT + s.to(tl.int64) * so_s
    both = mask_i[:, None] & mask_j[None, :]
    tl.store(out + offs_i[:, None].to(tl.int64) * C + offs_j[None, :], acc,
             mask=both & (offs_i[:, None] <= offs_j[None, :]))
    tl.store(out + offs_j[None, :].to(tl.int64) * C + offs_i[:, None], acc,  # mirror: strictly lower only
             mask=both & (offs_i[:, None] < offs_j[None, :]))


# --- launcher ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CovConfig:
    """Fixed launch configuration: block_c/block_l powers of two >= 16; splits of the (n, l) loop."""

    block_c: int = _BLOCK_C
    block_l: int = _BLOCK_L
    splits: int = 1
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self):
        for name in ("block_c", "block_l"):
            v = getattr(self, name)
            if v < _MIN_BLOCK or v & (v - 1):
                raise ValueError(f"CovConfig.{name}={v}: must be a power of two >= {_MIN_BLOCK}")
        if self.splits < 1:
            raise ValueError(f"CovConfig.splits={self.splits}: must be >= 1")


def _splits(n: int, c: int, length: int, block_c: int, device) -> int:
    """Split the (n, l) loop when the upper-triangle tiles can't fill the GPU."""
    nb = cdiv(c, block_c)
    tiles = nb * (nb + 1) // 2
    sms = num_sms(device)
    if tiles >= _SPLIT_BELOW_PER_SM * sms:
        return 1
    return max(1, min(cdiv(_SPLIT_TARGET_PER_SM * sms, tiles), n * cdiv(length, _BLOCK_L)))


def cov_config(acts: torch.Tensor) -> CovConfig:
    """Heuristic fixed config (used where autotuning is off, e.g. under the interpreter)."""
    _, n, c, length = acts.shape
    block_c = max(_MIN_BLOCK, min(_BLOCK_C, next_pow2(c)))
    block_l = max(_MIN_BLOCK, min(_BLOCK_L, next_pow2(length)))
    warps = 8 if block_c >= 64 else 4
    return CovConfig(block_c, block_l, _splits(n, c, length, block_c, acts.device), warps, 3)


def _prune_configs(configs, named_args, **kwargs):
    # A tile wider than next_pow2(C) only computes masked lanes; keep the narrowest that covers C.
    widest = max(_MIN_BLOCK, next_pow2(named_args["C"]))
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] <= widest]
    return kept or [min(configs, key=lambda cfg: cfg.kwargs["BLOCK_C"])]


_tuned_kernels: dict = {}


def _tuned_kernel(do_bench=None):
    """The autotuned kernel (built lazily: only where a GPU driver exists, or with an injected do_bench)."""
    if do_bench not in _tuned_kernels:
        extra = {} if do_bench is None else {"do_bench": do_bench}
        _tuned_kernels[do_bench] = triton.autotune(
            configs=_AUTOTUNE_CONFIGS, key=["N", "C", "L", "K", "sal", "PRECISION", "OFF64"],
            prune_configs_by={"early_config_prune": _prune_configs}, **extra)(_style_cov_kernel)
    return _tuned_kernels[do_bench]


def _launch(acts, out, precision, splits, kernel, meta):
    """Run kernel over a (splits, C, C) fp32 buffer (out itself when splits == 1); returns Cov (C, C)."""
    k, n, c, length = acts.shape
    buf = out.view(1, c, c) if splits == 1 else torch.empty((splits, c, c), dtype=torch.float32,
                                                              device=acts.device)
    grid = lambda m: (cdiv(c, m["BLOCK_C"]) * (cdiv(c, m["BLOCK_C"]) + 1) // 2, splits)
    sk, sn, sc, sl = acts.stride()
    off64 = (c - 1) * abs(sc) + (length - 1) * abs(sl) >= _INT32_OFFSETS
    kernel[grid](acts, buf, n, c, length, k, sk, sn, sc, sl, c * c, 1.0 / (k * n * length),
                 PRECISION=precision, OFF64=off64, **meta)
    if splits > 1:
        torch.sum(buf, dim=0, out=out)
    return out


def style_cov(acts: torch.Tensor, precision: str = "ieee", *, config: CovConfig | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Cov (C, C) fp32 of D = acts - mean_k(acts) for acts (K, N, C, L): D^T D / (K * N * L).

    config: a fixed CovConfig (default: autotuned on CUDA, heuristic elsewhere). out: optional (C, C)
    contiguous fp32 buffer.
    """
    if acts.dim() != 4:
        raise ValueError(f"style_cov expects acts of shape (K, N, C, L), got {tuple(acts.shape)}")
    if acts.dtype not in _SUPPORTED:
        raise TypeError(f"style_cov: dtype {acts.dtype} not supported (fp16, bf16, fp32; fp64 -> reference)")
    if precision not in _PRECISIONS:
        raise ValueError(f"style_cov: precision={precision!r}, expected one of {_PRECISIONS}")
    k, n, c, length = acts.shape
    if out is None:
        out = torch.empty((c, c), dtype=torch.float32, device=acts.device)
    elif (out.shape != (c, c) or out.dtype != torch.float32 or out.device != acts.device
          or not out.is_contiguous()):
        raise ValueError(f"style_cov: out must be a contiguous ({c}, {c}) float32 tensor on {acts.device}")
    if c == 0:
        return out
    if k * n * length == 0:
        return out.zero_()  # an empty Gram, as in the reference
    check_launchable(_style_cov_kernel, acts, "style_cov")
    if config is None and autotune_enabled(acts.device):
        splits = _splits(n, c, length, _BLOCK_C, acts.device)
        return _launch(acts, out, precision, splits, _tuned_kernel(), {})
    cfg = config or cov_config(acts)
    meta = dict(BLOCK_C=cfg.block_c, BLOCK_L=cfg.block_l, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return _launch(acts, out, precision, cfg.splits, _style_cov_kernel, meta)


def style_sensitivity(acts: torch.Tensor, precision: str = "ieee", *,
                      config: CovConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(var (C,), cov (C, C)) of the style deviations of acts (K, N, C, L); var = diag(cov) exactly.

    fp16/bf16/fp32 -> fp32 via the kernel; fp64 -> the fp64 reference (fp64 results).
    """
    if acts.dim() == 4 and acts.dtype == torch.float64:
        from npdg import reference

        return reference.style_sensitivity(acts)
    cov = style_cov(acts, precision, config=config)
    return cov.diagonal().clone(), cov
