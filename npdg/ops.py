"""The only public door to NPDG's custom ops.

    adain(x, mean, std, eps)        fused AdaIN style perturbation (autograd: x, mean, std)
    style_sensitivity(acts)         (var, cov) of style deviations of acts (K, N, C, L)
    compact(src, out_index, in_index)
    compact_many(srcs, out_indices, in_indices)

Dispatch:
- adain / style_sensitivity run the Triton kernels (``npdg.kernels``) on CUDA tensors and the plain
  PyTorch reference (``npdg.reference``) elsewhere. ``NPDG_KERNELS=reference|triton`` forces one;
  with ``TRITON_INTERPRET=1``, ``triton`` also runs on CPU tensors (slow, for correctness tests).
- compact / compact_many call the compiled extension ``torch.ops.npdg.*`` (built by
  ``pip install --no-build-isolation -e .``, else JIT-built on first use); if neither works they fall
  back to the reference after a one-line notice.
"""

from __future__ import annotations

import os

import torch

from npdg import _ext, reference

_BACKENDS = ("auto", "reference", "triton")


def kernel_backend(t: torch.Tensor) -> str:
    """Which implementation adain / style_sensitivity use for tensor t: 'triton' or 'reference'."""
    choice = os.environ.get("NPDG_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"NPDG_KERNELS={choice!r}: expected one of {', '.join(_BACKENDS)}")
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if not (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
            raise RuntimeError("NPDG_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1")
        return "triton"
    return "triton" if t.is_cuda and _triton_available() else "reference"


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def adain(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = reference.DEFAULT_EPS):
    """AdaIN(x, mean', std') = std' * (x - mu(x)) / sigma(x) + mean' per (n, c); mean/std are (N, C)."""
    if kernel_backend(x) == "triton":
        from npdg.kernels import adain as _adain

        return _adain.adain(x, mean, std, eps)
    return reference.adain(x, mean, std, eps)


def style_sensitivity(acts: torch.Tensor, precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor]:
    """(var (C,), cov (C, C)) of D = acts - mean_k(acts) for acts (K, N, C, L), fp32 accumulation.

    precision: 'ieee' (exact fp32 products) or 'tf32' (faster tensor-core products on the GPU); the
    reference path ignores it.
    """
    if kernel_backend(acts) == "triton":
        from npdg.kernels import sensitivity as _sens

        return _sens.style_sensitivity(acts, precision=precision)
    return reference.style_sensitivity(acts)


def compact(src: torch.Tensor, out_index: torch.Tensor | None = None,
            in_index: torch.Tensor | None = None) -> torch.Tensor:
    """src[out_index][:, in_index] as a new contiguous tensor (None keeps a dimension whole)."""
    if _ext.available():
        return torch.ops.npdg.compact(src, out_index, in_index)
    return reference.compact(src, out_index, in_index)


def compact_many(srcs, out_indices, in_indices) -> list[torch.Tensor]:
    """compact() over a whole parameter list in one call (one kernel launch on CUDA)."""
    srcs, out_indices, in_indices = list(srcs), list(out_indices), list(in_indices)
    if not (len(srcs) == len(out_indices) == len(in_indices)):
        raise ValueError(f"compact_many: list lengths differ ({len(srcs)}, {len(out_indices)}, {len(in_indices)})")
    if _ext.available():
        return list(torch.ops.npdg.compact_many(srcs, out_indices, in_indices))
    return reference.compact_many(srcs, out_indices, in_indices)
