"""Training throughput: one full SGD step (forward, loss, backward, update) in images/s.

Full mode on a GPU: DeepLabV3+ R50/R101 and SegFormer-B0 at 512x512, batch 8, bf16 autocast.
Full mode on a CPU: the two smallest models at 128x256, batch 2, fp32 (what the default CPU run uses).
Quick mode (CI): the two smallest models on a tiny crop, run once.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from benches.conftest import env_info, quick_mode, sync
from npdg.models import create_model
from npdg.train import train_step

SMALL = ["deeplabv3plus_r18", "segformer_b0"]
MODELS = SMALL if quick_mode() or not torch.cuda.is_available() else [
    "deeplabv3plus_r50", "deeplabv3plus_r101", "segformer_b0"]


def problem_size(device: torch.device, quick: bool) -> tuple[int, tuple[int, int]]:
    if quick:
        return 2, (33, 65)
    return (8, (512, 512)) if device.type == "cuda" else (2, (128, 256))


@pytest.mark.parametrize("name", MODELS)
def test_train_step(benchmark, name, bench_device, quick):
    batch, (h, w) = problem_size(bench_device, quick)
    benchmark.group = f"train_step {name}"
    torch.manual_seed(0)
    model = create_model(name, num_classes=19).to(bench_device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, h, w, device=bench_device)
    labels = torch.randint(0, 19, (batch, h, w), device=bench_device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bench_device.type == "cuda" else None
    for _ in range(0 if quick else 3):  # warm-up: cuDNN autotuning, allocator
        train_step(model, opt, images, labels, amp or nullcontext())

    def step():
        loss = train_step(model, opt, images, labels, amp or nullcontext())
        sync(bench_device)
        return loss

    loss = benchmark(step)
    assert loss == loss  # not NaN
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(model=name, batch=batch, crop=f"{h}x{w}", amp="bf16" if amp else "fp32")
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
