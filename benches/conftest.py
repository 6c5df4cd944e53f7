"""Shared fixtures for the pytest-benchmark suites.

Quick mode (CI): ``NPDG_BENCH_QUICK=1 pytest benches/ --benchmark-disable`` runs every bench once on
small shapes, as a smoke test. Full mode (a GPU machine): ``pytest benches/ --benchmark-json=OUT.json``.
Every benchmark row records the device name and library versions in ``extra_info``.
"""

from __future__ import annotations

import os
import platform

import pytest
import torch


def quick_mode() -> bool:
    return os.environ.get("NPDG_BENCH_QUICK", "0") == "1"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # platform.processor() is empty on many Linux machines; /proc/cpuinfo names the model
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(device) -> dict:
    """What a benchmark row needs to be comparable later: card, versions."""
    info = {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def baseline_provider(provider: str, device, reference_fn):
    """The `eager` (reference_fn itself) and `compile` (torch.compile of it) providers; None for any
    other provider (the bench's own kernels). Everything but eager is benchmarked on CUDA only."""
    if provider != "eager" and torch.device(device).type != "cuda":
        pytest.skip(f"{provider} is benchmarked on CUDA only")
    if provider == "eager":
        return reference_fn
    if provider == "compile":
        torch._dynamo.reset()  # a fresh compile per case (no recompile-limit fallback to eager)
        return torch.compile(reference_fn, dynamic=False)
    return None


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    """CUDA where there is one, with cuDNN's algorithms timed per shape as npdg.train and npdg.profile run
    (Config.cudnn_benchmark, profile's Settings.cudnn_benchmark); else the CPU."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(scope="session")
def quick() -> bool:
    return quick_mode()
