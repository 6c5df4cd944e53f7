"""The only public door to NPDG's custom ops.

    adain(x, mean, std, eps, stats=None)   fused AdaIN style perturbation (autograd: x, mean, std)
    style_sensitivity(acts)                (var, cov) of style deviations of acts (K, N, C, L)
    compact(src, out_index, in_index)
    compact_many(srcs, out_indices, in_indices)

Dispatch:
- adain / style_sensitivity run the Triton kernels (``npdg.kernels``) on CUDA tensors and the plain
  PyTorch reference (``npdg.reference``) elsewhere; on CUDA only if the project's kernel modules import
  (checked once: a failure gives a one-line notice and the reference). ``NPDG_KERNELS=reference|triton`` forces one;
  with ``TRITON_INTERPRET=1``, ``triton`` also runs on CPU tensors (slow, for correctness tests).
- adain on CPU tensors (NPDG_KERNELS unset / ``auto``): the fused C++ op ``torch.ops.npdg.adain_forward``
  / ``adain_backward`` of the extension (``csrc/adain.cpp``) for contiguous fp32/fp64/bf16/fp16 x when
  the extension is available, the reference otherwise (other layouts, no extension, NPDG_NO_EXT=1).
- compact / compact_many call the compiled extension ``torch.ops.npdg.*`` (built by
  ``pip install -e .``, else JIT-built on first use); if neither works they fall
  back to the reference after a one-line notice.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from npdg import _ext, reference

_BACKENDS = ("auto", "reference", "triton")


def kernel_backend(t: torch.Tensor) -> str:
    """Which implementation adain / style_sensitivity use for tensor t: 'triton' or 'reference'."""
    return select_backend(t.device.type)


def select_backend(device_type: str) -> str:
    """The decision of kernel_backend for a tensor on a device of this type ('cpu', 'cuda', ...).

    NPDG_KERNELS (read on every call): 'reference', 'triton' (CPU only with TRITON_INTERPRET=1), or
    'auto' / unset: Triton on CUDA when the project's kernels (``npdg.kernels``) import, else the reference.
    """
    choice = os.environ.get("NPDG_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"NPDG_KERNELS={choice!r}: expected one of {', '.join(_BACKENDS)}")
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if not (device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
            raise RuntimeError("NPDG_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1")
        return "triton"
    return "triton" if device_type == "cuda" and _kernels_available() else "reference"


@functools.cache
def _kernels_available() -> bool:
    """Whether the project's Triton kernels import (checked once): `import triton` working is not enough
    -- npdg.kernels may be missing from the install, or fail to import against this Triton."""
    try:
        import npdg.kernels.adain  # noqa: F401
        import npdg.kernels.sensitivity  # noqa: F401
    except Exception as exc:  # ImportError, or anything a kernel module raises while it is decorated
        first_line = (str(exc).splitlines() or [""])[0]
        warnings.warn(f"npdg: Triton kernels unavailable ({type(exc).__name__}: {first_line}); "
                      "adain / style_sensitivity use the PyTorch reference (NPDG_KERNELS=auto).",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


_CPU_ADAIN_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def adain_backend(x: torch.Tensor) -> str:
    """Which implementation adain uses for x: 'triton', 'cpp' (fused CPU op of the extension) or 'reference'."""
    backend = kernel_backend(x)
    if backend == "reference" and x.device.type == "cpu" and _cpu_adain_fits(x) \
            and os.environ.get("NPDG_KERNELS", "auto").strip().lower() in ("", "auto"):
        return "cpp"
    return backend


def _cpu_adain_fits(x: torch.Tensor) -> bool:
    # NCHW-contiguous rows only: another layout would cost a copy that the reference does not make.
    return (x.dim() >= 3 and x.dtype in _CPU_ADAIN_DTYPES and x.is_contiguous() and _ext.available()
            and _has_cpu_kernel("npdg::adain_forward"))


def _has_cpu_kernel(op: str) -> bool:
    # An extension built before the op existed simply lacks it: use the reference then.
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")


def adain(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = reference.DEFAULT_EPS, *,
          stats: tuple[torch.Tensor, torch.Tensor] | None = None):
    """AdaIN(x, mean', std') = std' * (x - mu(x)) / sigma(x) + mean' per (n, c); mean/std are (N, C)
    or broadcastable to it. Differentiable in x, mean and std (no double backward on the fused paths).

    stats: optional (mu, sigma) = ``npdg.reference.style_stats(x, eps)`` that the caller already has
    (detached is fine): values only -- the gradient to x still includes the path through x's statistics.
    The Triton kernels then skip their reduction (one read of x); the reference uses them when no gradient
    to x is recorded; the fused CPU op computes its own (its single-read forward does not take them).
    """
    backend = adain_backend(x)
    if backend == "triton":
        from npdg.kernels import adain as _adain

        return _adain.adain(x, mean, std, eps, stats=stats)
    if backend == "cpp":
        if stats is not None:
            reference.check_stats(stats, x)  # the same contract on every path
        mean, std = reference.broadcast_style(mean, x, "mean"), reference.broadcast_style(std, x, "std")
        return torch.ops.npdg.adain_forward(x, mean, std, float(eps))[0]
    return reference.adain(x, mean, std, eps, stats=stats)


def style_sensitivity(acts: torch.Tensor, precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor]:
    """(var (C,), cov (C, C)) of D = acts - mean_k(acts) for acts (K, N, C, L), fp32 accumulation.

    precision: 'ieee' (exact fp32 products), 'tf32' (faster tensor-core products on the GPU) or 'tf32x3'
    (tensor cores, ~fp32 accuracy); the reference path ignores it. See :func:`sensitivity_backend` for which runs.
    """
    if sensitivity_backend(acts, precision) == "triton":
        from npdg.kernels import sensitivity as _sens

        return _sens.style_sensitivity(acts, precision=precision)
    return reference.style_sensitivity(acts)


def sensitivity_backend(acts: torch.Tensor, precision: str = "ieee") -> str:
    """'triton' or 'reference' for style_sensitivity. Under NPDG_KERNELS=auto the exact-fp32 Gram ('ieee') runs
    on the reference (cuBLAS fp32 on CUDA): on the one GPU measured (H200, benches/results/gpu_h200/summary.md)
    the Triton 'ieee' kernel ran at 0.38-0.53x of it on every shape, while 'tf32x3' (~fp32 accuracy) ran at
    1.06-1.35x and 'tf32' at 1.5-2.3x, so those two keep the kernel. NPDG_KERNELS=triton forces the kernel."""
    backend = kernel_backend(acts)
    forced = (os.environ.get("NPDG_KERNELS", "auto").strip().lower() or "auto") == "triton"
    return "reference" if backend == "triton" and precision == "ieee" and not forced else backend


def compact(src: torch.Tensor, out_index: torch.Tensor | None = None,
            in_index: torch.Tensor | None = None) -> torch.Tensor:
    """src[out_index][:, in_index] as a new contiguous tensor (None keeps a dimension whole).

    Indices are 1-D int64 on src's device; out-of-range / negative values raise IndexError. Works on
    any trailing dims (conv (O, I, kh, kw), linear (O, I), vectors (C,): in_index must be None).
    """
    if _ext.supports(src.device):
        return torch.ops.npdg.compact(src, out_index, in_index)
    return reference.compact(src, out_index, in_index)


def compact_many(srcs, out_indices, in_indices) -> list[torch.Tensor]:
    """compact() over a whole parameter list in one call (one kernel launch on CUDA)."""
    srcs, out_indices, in_indices = list(srcs), list(out_indices), list(in_indices)
    if not (len(srcs) == len(out_indices) == len(in_indices)):
        raise ValueError(
            f"compact_many: list lengths differ ({len(srcs)}, {len(out_indices)}, {len(in_indices)})")
    if srcs and _ext.supports(srcs[0].device):
        return list(torch.ops.npdg.compact_many(srcs, out_indices, in_indices))
    return reference.compact_many(srcs, out_indices, in_indices)


# --- compaction glue: fake impls (torch.compile / opcheck) and autograd for torch.ops.npdg.compact*.
# Registered when the extension loads (npdg._ext.when_loaded), so importing this module stays cheap.


def _fake_index_len(src, index, dim, label):
    # The checks that need no index values, as in csrc/compact.cpp (values are unknown here).
    torch._check(src.dim() > dim, lambda: f"{label} must be None: src is {src.dim()}-D")
    torch._check(index.dim() == 1, lambda: f"{label} must be 1-D, got {index.dim()}-D")
    torch._check(index.dtype == torch.long, lambda: f"{label} must be int64, got {index.dtype}")
    return index.shape[0]


def _compact_fake_shape(src, out_index, in_index, op):
    shape = list(src.shape)
    if out_index is not None:
        shape[0] = _fake_index_len(src, out_index, 0, f"{op}: out_index")
    if in_index is not None:
        shape[1] = _fake_index_len(src, in_index, 1, f"{op}: in_index")
    return shape


def _compact_fake(src, out_index, in_index):
    return src.new_empty(_compact_fake_shape(src, out_index, in_index, "compact"))


def _compact_many_fake(srcs, out_indices, in_indices):
    torch._check(len(srcs) == len(out_indices) == len(in_indices),
                 lambda: "compact_many: list lengths differ")
    return [s.new_empty(_compact_fake_shape(s, o, i, "compact_many"))
            for s, o, i in zip(srcs, out_indices, in_indices, strict=True)]


def _compact_grad(grad, shape, out_index, in_index):
    """Adjoint of the gather: scatter-add grad back into zeros of the source shape."""
    if grad is None:
        return None
    # index_add: a channel listed twice was gathered twice, so its grads add up.
    if in_index is not None:
        grad = grad.new_zeros((grad.shape[0], shape[1], *shape[2:])).index_add(1, in_index, grad)
    if out_index is not None:
        grad = grad.new_zeros(shape).index_add(0, out_index, grad)
    return grad


def _compact_setup(ctx, inputs, output):
    src, ctx.out_index, ctx.in_index = inputs
    ctx.src_shape = src.shape


def _compact_backward(ctx, grad):
    return _compact_grad(grad, ctx.src_shape, ctx.out_index, ctx.in_index), None, None


def _compact_many_setup(ctx, inputs, output):
    srcs, ctx.out_indices, ctx.in_indices = inputs
    ctx.src_shapes = [s.shape for s in srcs]


def _compact_many_backward(ctx, grads):
    per_tensor = zip(grads, ctx.src_shapes, ctx.out_indices, ctx.in_indices, ctx.needs_input_grad[0],
                     strict=True)
    grads = [_compact_grad(g, shape, o, i) if need else None for g, shape, o, i, need in per_tensor]
    return grads, None, None


def _register_compact_glue():
    torch.library.register_fake("npdg::compact", _compact_fake)
    torch.library.register_fake("npdg::compact_many", _compact_many_fake)
    torch.library.register_autograd("npdg::compact", _compact_backward, setup_context=_compact_setup)
    torch.library.register_autograd("npdg::compact_many", _compact_many_backward,
                                    setup_context=_compact_many_setup)


_ext.when_loaded(_register_compact_glue)


# --- AdaIN glue (csrc/adain.cpp): fake impls and autograd for torch.ops.npdg.adain_forward / _backward.


def _adain_acc(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _adain_forward_fake(x, mean, std, eps):
    torch._check(x.dim() >= 3, lambda: f"npdg::adain_forward: x must be (N, C, *spatial), got {x.dim()}-D")
    n, c = x.shape[:2]
    acc = _adain_acc(x)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((n, c), dtype=acc),
            x.new_empty((n, c), dtype=acc))


def _adain_backward_fake(dy, x, mu, rstd, std, need_dx):
    n, c = x.shape[:2]
    acc = _adain_acc(x)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_dx else x.new_empty((0,))
    return dx, x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc)


def _adain_setup(ctx, inputs, output):
    x, mean, std, _ = inputs
    _, mu, rstd = output
    ctx.mark_non_differentiable(mu, rstd)  # statistics of x, returned for backward only
    ctx.save_for_backward(x, mu, rstd, std)
    ctx.dtypes = (mean.dtype, std.dtype)


def _adain_backward(ctx, dy, _dmu, _drstd):
    x, mu, rstd, std = ctx.saved_tensors
    need_x, need_mean, need_std = ctx.needs_input_grad[:3]
    dx, dmean, dstd = torch.ops.npdg.adain_backward(dy, x, mu, rstd, std, need_x)
    return (dx if need_x else None, dmean.to(ctx.dtypes[0]) if need_mean else None,
            dstd.to(ctx.dtypes[1]) if need_std else None, None)


def _register_adain_glue():
    if not hasattr(torch.ops.npdg, "adain_forward"):  # an extension built before the op existed
        return
    torch.library.register_fake("npdg::adain_forward", _adain_forward_fake)
    torch.library.register_fake("npdg::adain_backward", _adain_backward_fake)
    torch.library.register_autograd("npdg::adain_forward", _adain_backward, setup_context=_adain_setup)


_ext.when_loaded(_register_adain_glue)
