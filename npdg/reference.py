"""Plain-PyTorch reference of every custom op.

This is the single source of truth for what the ops compute. Tests compare the Triton kernels and the
C++/CUDA extension against it (in float64), benches use it as the `eager` provider, and `npdg.ops`
falls back to it wherever a compiled path is unavailable.

Conventions used everywhere in the project:
- style of a feature map x (N, C, *spatial): per-(n, c) mean and std over the spatial positions, with
  the *biased* variance and std = sqrt(var + eps), eps = 1e-5 by default;
- sensitivity activations are shaped (K, N, C, L): K style variants of the same N contents, C units
  (channels or heads), L samples per unit (spatial positions x head dims). The style deviation is
  D = A - mean_k A, and the covariance is Cov = D^T D / (K * N * L) over the C units, so that the
  unary score (variance across styles) is diag(Cov).
"""

from __future__ import annotations

import torch

DEFAULT_EPS = 1e-5


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    # Statistics are accumulated in at least fp32; float64 inputs stay float64 (test references).
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def style_stats(x: torch.Tensor, eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and std of x (N, C, *spatial), accumulated in fp32 (fp64 for fp64 input)."""
    if x.dim() < 3:
        raise ValueError(f"style_stats expects (N, C, *spatial), got shape {tuple(x.shape)}")
    xf = x.to(_acc_dtype(x)).flatten(2)
    mean = xf.mean(-1)
    var = (xf - mean.unsqueeze(-1)).square().mean(-1)  # two-pass, centred: no E[x^2]-E[x]^2
    return mean, (var + eps).sqrt()


def broadcast_style(p: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """Target mean/std given as (N, C), (C,), (1, C) or (N, C, 1, ..., 1) as an (N, C) view for x."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"adain: {name} must be a tensor, got {type(p).__name__}")
    if p.device != x.device:
        raise ValueError(f"adain: {name} is on {p.device}, x on {x.device}")
    if not p.is_floating_point():
        raise TypeError(f"adain: {name} must be floating point, got {p.dtype}")
    n, c = x.shape[:2]
    if p.dim() > 2 and all(s == 1 for s in p.shape[2:]):
        p = p.reshape(p.shape[:2])
    if p.dim() <= 2:
        try:
            return p.expand(n, c)
        except RuntimeError:
            pass
    raise ValueError(f"adain: {name} of shape {tuple(p.shape)} does not broadcast to (N, C) = ({n}, {c})")


def check_stats(stats, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Caller-given statistics (mu, sigma) of x as two (N, C) views (shape / device / dtype checked)."""
    if not (isinstance(stats, (tuple, list)) and len(stats) == 2
            and all(isinstance(t, torch.Tensor) for t in stats)):
        raise TypeError("adain: stats must be a pair of tensors (mu, sigma) = style_stats(x, eps)")
    n, c = x.shape[:2]
    out = []
    for name, t in zip(("mu", "sigma"), stats, strict=True):
        if tuple(t.shape[:2]) != (n, c) or any(s != 1 for s in t.shape[2:]):
            raise ValueError(f"adain: stats {name} of shape {tuple(t.shape)}, expected (N, C) = ({n}, {c})")
        if t.device != x.device or not t.is_floating_point():
            raise ValueError(f"adain: stats {name} must be floating point on {x.device}, got {t.dtype} on {t.device}")
        out.append(t.reshape(n, c))
    return out[0], out[1]


def adain(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = DEFAULT_EPS,
          stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """AdaIN: std * (x - mu(x)) / sigma(x) + mean, per (n, c); output has x's dtype.

    mean/std: (N, C) or broadcastable to it ((C,), (1, C), (N, C, 1, 1)). stats: optional (mu, sigma) =
    style_stats(x, eps) already computed by the caller, used as values when no gradient to x is recorded;
    when one is, mu(x) and sigma(x) are recomputed in the graph so that the gradient through them flows.
    """
    mean, std = broadcast_style(mean, x, "mean"), broadcast_style(std, x, "std")
    if stats is not None:
        stats = check_stats(stats, x)
    if stats is not None and not (torch.is_grad_enabled() and x.requires_grad):
        acc = _acc_dtype(x)
        mu, sigma = stats[0].detach().to(acc), stats[1].detach().to(acc)
    else:
        mu, sigma = style_stats(x, eps)
    acc = mu.dtype
    shape = mu.shape + (1,) * (x.dim() - 2)
    y = (x.to(acc) - mu.reshape(shape)) / sigma.reshape(shape) * std.to(acc).view(shape) + mean.to(acc).view(shape)
    return y.to(x.dtype)


def style_sensitivity(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(var, cov) of the style deviations of acts (K, N, C, L): var (C,) = diag(cov), cov (C, C)."""
    if acts.dim() != 4:
        raise ValueError(f"style_sensitivity expects (K, N, C, L), got shape {tuple(acts.shape)}")
    k, n, c, length = acts.shape
    a = acts.to(_acc_dtype(acts))
    d = a - a.mean(0, keepdim=True)
    m = d.permute(2, 0, 1, 3).reshape(c, k * n * length)
    cov = m @ m.T / max(k * n * length, 1)
    return cov.diagonal().clone(), cov


def compact(src: torch.Tensor, out_index: torch.Tensor | None, in_index: torch.Tensor | None) -> torch.Tensor:
    """src[out_index][:, in_index] as a new contiguous tensor; a None index keeps that dimension whole."""
    out = src if out_index is None else src.index_select(0, out_index)
    if in_index is not None:
        out = out.index_select(1, in_index)
    return out.contiguous() if out is not src else out.clone(memory_format=torch.contiguous_format)


def compact_many(srcs, out_indices, in_indices) -> list[torch.Tensor]:
    """compact() over parallel lists."""
    return [compact(s, o, i) for s, o, i in zip(srcs, out_indices, in_indices, strict=True)]
