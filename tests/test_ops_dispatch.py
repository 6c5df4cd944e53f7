"""Which implementation npdg.ops picks, and its errors."""

import sys
import warnings

import pytest
import torch

from npdg import ops


def test_cpu_defaults_to_reference(monkeypatch):
    monkeypatch.delenv("NPDG_KERNELS", raising=False)
    assert ops.kernel_backend(torch.zeros(1)) == "reference"


def test_forced_reference(monkeypatch):
    monkeypatch.setenv("NPDG_KERNELS", "reference")
    assert ops.kernel_backend(torch.zeros(1)) == "reference"


def test_bad_backend_name(monkeypatch):
    monkeypatch.setenv("NPDG_KERNELS", "cuda-magic")
    with pytest.raises(ValueError, match="NPDG_KERNELS='cuda-magic'"):
        ops.kernel_backend(torch.zeros(1))


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("NPDG_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.kernel_backend(torch.zeros(1))


def test_reference_path_values(monkeypatch):
    """ops.* on CPU with the reference backend equal a direct float64 computation."""
    monkeypatch.setenv("NPDG_KERNELS", "reference")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) * 3 + 2
    mean = torch.randn(2, 3, generator=g, dtype=torch.float64)
    std = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.5
    mu = x.mean((2, 3), keepdim=True)
    sigma = (x.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    expect = (x - mu) / sigma * std[..., None, None] + mean[..., None, None]
    torch.testing.assert_close(ops.adain(x, mean, std), expect, rtol=1e-12, atol=1e-12)

    acts = torch.randn(3, 2, 4, 6, generator=g, dtype=torch.float64)
    var, cov = ops.style_sensitivity(acts)
    d = (acts - acts.mean(0, keepdim=True)).permute(2, 0, 1, 3).reshape(4, -1)
    torch.testing.assert_close(cov, d @ d.T / d.shape[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, d.square().mean(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(3,), (1, 3), (2, 3, 1, 1)])
def test_reference_adain_broadcasts_like_the_kernel(monkeypatch, shape):
    monkeypatch.setenv("NPDG_KERNELS", "reference")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    std = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    full = ops.adain(x, mean.reshape(-1, 3).expand(2, 3), std.reshape(-1, 3).expand(2, 3))
    torch.testing.assert_close(ops.adain(x, mean, std), full, rtol=0, atol=0)


def test_reference_adain_rejects_bad_style_shape():
    with pytest.raises(ValueError, match=r"mean of shape \(4,\) does not broadcast"):
        ops.adain(torch.randn(2, 3, 4, 4), torch.zeros(4), torch.ones(2, 3))


@pytest.fixture
def fresh_kernel_check():
    """ops._kernels_available is cached per process: start and leave every test with a fresh check."""
    ops._kernels_available.cache_clear()
    yield
    ops._kernels_available.cache_clear()


def test_auto_on_cuda_needs_the_project_kernels(monkeypatch, fresh_kernel_check):
    """NPDG_KERNELS=auto picks Triton for a CUDA tensor only when npdg.kernels imports (no GPU needed:
    the decision takes the device type). A failing import -> the reference, with one notice, cached."""
    monkeypatch.delenv("NPDG_KERNELS", raising=False)
    monkeypatch.setitem(sys.modules, "npdg.kernels.adain", None)  # `import npdg.kernels.adain` -> ImportError
    with pytest.warns(RuntimeWarning, match="Triton kernels unavailable.*ModuleNotFoundError"):
        assert ops.select_backend("cuda") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the notice comes once: the result is cached
        assert ops.select_backend("cuda") == "reference"
    assert ops.select_backend("cpu") == "reference"
    monkeypatch.setenv("NPDG_KERNELS", "triton")  # forcing still forces (and then fails loudly on use)
    assert ops.select_backend("cuda") == "triton"


def test_auto_on_cuda_any_import_error(monkeypatch, fresh_kernel_check):
    """Not only ImportError: whatever a kernel module raises while it is imported selects the reference."""
    monkeypatch.delenv("NPDG_KERNELS", raising=False)

    class Boom:
        def find_spec(self, name, path=None, target=None):
            if name == "npdg.kernels.sensitivity":
                raise AttributeError("triton.language has no attribute 'dot'")
            return None

    monkeypatch.delitem(sys.modules, "npdg.kernels.sensitivity", raising=False)  # restored afterwards
    monkeypatch.setattr(sys, "meta_path", [Boom(), *sys.meta_path])
    with pytest.warns(RuntimeWarning, match="AttributeError"):
        assert ops.select_backend("cuda") == "reference"


def test_auto_on_cuda_with_the_project_kernels(monkeypatch, fresh_kernel_check):
    pytest.importorskip("triton")
    monkeypatch.delenv("NPDG_KERNELS", raising=False)
    assert ops.select_backend("cuda") == "triton"
    assert ops.select_backend("cpu") == "reference"


def test_sensitivity_dispatch_follows_the_measured_gpu_speeds(monkeypatch):
    """Under auto, an 'ieee' Gram on a tensor the kernels would take runs the reference (the H200's Triton ieee
    kernel was 0.38-0.53x of cuBLAS fp32); tf32 / tf32x3 keep the kernel; NPDG_KERNELS=triton forces it."""
    acts = torch.zeros(2, 1, 3, 4)
    monkeypatch.setenv("NPDG_KERNELS", "auto")
    monkeypatch.setattr(ops, "kernel_backend", lambda t: "triton")  # as on a CUDA tensor with the kernels
    assert ops.sensitivity_backend(acts, "ieee") == "reference"
    assert ops.sensitivity_backend(acts, "tf32x3") == "triton" and ops.sensitivity_backend(acts, "tf32") == "triton"
    monkeypatch.setenv("NPDG_KERNELS", "triton")
    assert ops.sensitivity_backend(acts, "ieee") == "triton"
    monkeypatch.setattr(ops, "kernel_backend", lambda t: "reference")
    assert ops.sensitivity_backend(acts, "tf32x3") == "reference"
