"""Training throughput: one full step (forward, loss terms, backward, update) per method, in images/s.

Rows: ``erm``, ``slimming`` (+ L1 on γ), ``dsp`` (style-perturbed half batch + adversarial latent step +
online D-VAE), ``npdg`` (dsp + sensitivity-weighted L1), ``sfp`` (a step between soft prunes: ERM's; the soft prune
every sfp_every steps is not in the row) and ``shade`` (the batch + its style-hallucinated copies from the style
layer on, + the JSD); ``npdg_sensitivity`` is one sensitivity pass
(K style variants of ``sens_batch`` images), which the default run amortises over ``sens_every`` steps —
``extra_info["amortised_step_s"]`` of the npdg row adds that share.
Full mode on a GPU: DeepLabV3+ R50 and SegFormer-B0 at 512x512, batch 8, bf16 autocast; also with
``NPDG_KERNELS=reference`` (Triton kernels off) for the dsp/npdg rows. Full mode on a CPU: R18 and B0 at
the default run's shape (batch 8, 96x192, fp32). ``layout``: erm and npdg also with channels_last model
and inputs (the memory-format lever). Quick mode (CI): tiny shapes, each run once.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import pytest
import torch

from benches.conftest import env_info, quick_mode, sync
from benches.step_breakdown import step_fn
from npdg.config import Config
from npdg.loop import Context
from npdg.methods import build_method
from npdg.models import create_model

GPU = torch.cuda.is_available() and not quick_mode()
MODELS = ["deeplabv3plus_r50", "segformer_b0"] if GPU else ["deeplabv3plus_r18", "segformer_b0"]
METHODS = ["erm", "slimming", "dsp", "npdg", "sfp", "shade"]
KERNELS = ["auto", "reference"] if GPU else ["auto"]
LAYOUTS = ["contiguous", "channels_last"]  # the memory-format lever, erm and npdg rows side by side


def problem_size(device: torch.device, quick: bool) -> tuple[int, tuple[int, int]]:
    if quick:
        return 2, (33, 65)
    return (8, (512, 512)) if device.type == "cuda" else (8, (96, 192))


def _setup(name, method, device, quick, layout="contiguous"):
    batch, (h, w) = problem_size(device, quick)
    torch.manual_seed(0)
    cfg = Config(method=method, model=name, batch_size=batch, sens_batch=min(batch, 8), device=str(device),
                 shade_every=max(20, -(-64 // batch)))  # (quick: enough styles for shade's 64 basis styles)
    cfg.validate()  # the method's defaults resolve (npdg: iters 60, flops_target 0.6)
    model = create_model(name, num_classes=19).to(device).train()
    ctx = Context(cfg, device)
    recipe = build_method(ctx, model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, h, w, device=device)
    labels = torch.randint(0, 19, (batch, h, w), device=device)
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return cfg, model, recipe, opt, images, labels


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_train_step(benchmark, name, method, kernels, layout, bench_device, quick, monkeypatch):
    if kernels == "reference" and method in ("erm", "slimming", "sfp"):
        pytest.skip("erm / slimming / sfp use no custom op")
    if layout != "contiguous" and (method in ("slimming", "dsp", "sfp", "shade") or kernels != "auto"):
        pytest.skip("the layout lever is measured on the erm and npdg rows")
    if kernels != "auto":
        monkeypatch.setenv("NPDG_KERNELS", kernels)
    cfg, model, recipe, opt, images, labels = _setup(name, method, bench_device, quick, layout)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bench_device.type == "cuda" else nullcontext()
    if method == "shade":  # a basis (from stand-in styles: the step's cost does not depend on their values)
        from npdg.reference import style_stats

        styles = style_stats(torch.randn(cfg.shade_k, model.style_channels, 4, 4, device=images.device))
        recipe.bank = [torch.cat(styles, 1)]
        recipe.choose_basis()
    one_step = step_fn(cfg, model, recipe, opt, images, labels, amp)  # (npdg: refreshes the sensitivity once)

    def step():
        loss = one_step()
        sync(bench_device)
        return loss.item()

    for _ in range(0 if quick else 2):  # warm-up: cuDNN autotuning, allocator, Triton compiles
        step()
    benchmark.group = f"train_step {name}"
    loss = benchmark(step)
    assert loss == loss  # not NaN
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(model=name, method=method, kernels=os.environ.get("NPDG_KERNELS", "auto"),
                                layout=layout, batch=images.shape[0], crop=f"{images.shape[2]}x{images.shape[3]}",
                                amp="bf16" if bench_device.type == "cuda" else "fp32")
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = images.shape[0] / benchmark.stats.stats.median


@pytest.mark.parametrize("name", MODELS)
def test_sensitivity_pass(benchmark, name, bench_device, quick):
    cfg, model, recipe, opt, images, labels = _setup(name, "npdg", bench_device, quick)

    def refresh():
        recipe.refresh_sensitivity(model, images)
        sync(bench_device)

    benchmark.group = f"train_step {name}"
    benchmark.pedantic(refresh, rounds=1 if quick else 3, warmup_rounds=0 if quick else 1)
    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(model=name, method="npdg_sensitivity", sens_k=cfg.sens_k,
                                sens_batch=cfg.sens_batch, sens_every=cfg.sens_every)
