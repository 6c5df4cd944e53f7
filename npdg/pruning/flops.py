"""Model cost: FLOPs of one forward pass and parameter count (the "how much smaller" of a pruned model)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def flops(model: nn.Module, size: tuple[int, int] = (512, 512), batch: int = 1) -> int:
    """FLOPs of one eval-mode forward of a (batch, 3, H, W) zeros input on the model's device.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs and
    only the matrix ops (convolutions, linears / matmuls, attention); normalisation, activations,
    interpolation and elementwise ops add nothing. The model's train/eval mode is restored afterwards.
    """
    h, w = size
    p = next(model.parameters(), None)
    x = torch.zeros(batch, 3, h, w, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def params(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
