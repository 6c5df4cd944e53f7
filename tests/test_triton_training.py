"""The Triton kernels inside the training code paths (CPU, TRITON_INTERPRET=1): a whole FeatureDSP step and a
sensitivity pass with NPDG_KERNELS=triton give what they give with NPDG_KERNELS=reference; AdaIN given the
caller's statistics equals AdaIN computing its own.

Tolerances (none grows with the problem size):
- training step in float64 (the AdaIN kernels accumulate in fp64 for fp64 input). The loss is fp32 (cross_entropy
  casts the logits) and the D-VAE is fp32 by design, so: loss / adversarial delta / D-VAE grads within a few fp32
  ulps (measured: bit-identical), model grads within 1e-9 of each tensor's largest entry (measured ~3e-12: fp64
  rounding amplified by the cancellations of the AdaIN / BatchNorm backward; a dropped term is O(1)).
- sensitivity pass in float32 (the sensitivity kernel is fp16/bf16/fp32 only; fp64 goes to the reference). Both
  fp32 paths are compared with the float64 reference pass: the Triton one may be off by at most 3x the fp32
  reference's own worst error (measured ~2e-5 relative on both: fp32 rounding of the activations, amplified by
  the cancellation in D = A - mean_k A; Triton measured 1.06x), i.e. the kernels are as accurate as the fp32
  reference. (A centring bug gives O(1) errors: measured 767.)
"""

import os

import pytest
import torch

from npdg import ops
from npdg.dsp.perturb import FeatureDSP, cross_entropy
from npdg.models import create_model
from npdg.reference import style_stats
from npdg.sensitivity import compute_sensitivity

triton = pytest.importorskip("triton")

pytestmark = [
    pytest.mark.usefixtures("one_intra_op_thread"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                       reason="runs the Triton kernels on CPU tensors: needs TRITON_INTERPRET=1"),
]


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the kernel launchers' calls (so a silent fallback to the reference cannot pass)."""
    from npdg.kernels import adain as K
    from npdg.kernels import sensitivity as S

    calls = {"fwd": 0, "fwd_stats": 0, "bwd": 0, "cov": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            if name == "fwd" and kwargs.get("stats") is not None:
                calls["fwd_stats"] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(K, "adain_forward", counting("fwd", K.adain_forward))
    monkeypatch.setattr(K, "adain_backward", counting("bwd", K.adain_backward))
    monkeypatch.setattr(S, "style_cov", counting("cov", S.style_cov))
    return calls


def _grads(module):
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def _train_step(monkeypatch, backend):
    """One FeatureDSP step as the trainer runs it (the dsp method's task_loss -> FeatureDSP.task_loss): ascent on delta,
    the restyled training forward, one backward. float64 model, seeded identically for every backend."""
    monkeypatch.setenv("NPDG_KERNELS", backend)
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5).train().double()
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=32, p=0.5, adv_steps=1)
    images = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 32, 64))
    labels[:, :4] = 255
    deltas = []
    ascent = dsp.adversarial_delta

    def recording(*args, **kwargs):  # keep the ascent's result (the adversarial latent step)
        delta, losses = ascent(*args, **kwargs)
        deltas.append(delta.detach().clone())
        return delta, losses

    dsp.adversarial_delta = recording
    loss, logs = dsp.task_loss(model, model, images, labels, loss_fn=cross_entropy)
    loss.backward()
    return loss.detach(), logs, deltas, _grads(model), _grads(dsp)


def _assert_grads_close(got, want, rel, label):
    assert got.keys() == want.keys(), label
    for name in want:
        scale = want[name].abs().max().item()
        err = (got[name] - want[name]).abs().max().item()
        assert err <= rel * scale + 1e-300, f"{label} {name}: |diff| {err:.3g} > {rel:g} * max|grad| {scale:.3g}"


def test_dsp_training_step_matches_reference(monkeypatch, kernel_calls):
    ref = _train_step(monkeypatch, "reference")
    assert kernel_calls == {"fwd": 0, "fwd_stats": 0, "bwd": 0, "cov": 0}
    tri = _train_step(monkeypatch, "triton")
    # ascent forward + training forward, each given the hook's statistics; both backward passes ran the kernels
    assert kernel_calls["fwd"] >= 2 and kernel_calls["fwd_stats"] == kernel_calls["fwd"]
    assert kernel_calls["bwd"] >= 2

    loss_r, logs_r, deltas_r, model_r, dvae_r = ref
    loss_t, logs_t, deltas_t, model_t, dvae_t = tri
    assert set(logs_t) == set(logs_r) and "adv_loss0" in logs_t and "dsp_pert" in logs_t  # restyled + ascent
    fp32_ulps = 4 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(loss_t, loss_r, rtol=fp32_ulps, atol=0)
    for key in logs_r:
        assert float(logs_t[key]) == pytest.approx(float(logs_r[key]), rel=fp32_ulps, abs=1e-12), key
    assert len(deltas_t) == len(deltas_r) == 1 and deltas_r[0].abs().max() > 0
    torch.testing.assert_close(deltas_t[0], deltas_r[0], rtol=fp32_ulps, atol=fp32_ulps)
    assert len(model_r) > 50 and all(g.dtype == torch.float64 for g in model_r.values())
    _assert_grads_close(model_t, model_r, 1e-9, "model")
    assert len(dvae_r) > 0
    _assert_grads_close(dvae_t, dvae_r, fp32_ulps, "D-VAE")


def _sensitivity(monkeypatch, backend, dtype):
    monkeypatch.setenv("NPDG_KERNELS", backend)
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5).to(dtype)
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=32)
    images = torch.randn(2, 3, 32, 64).to(dtype)  # the same draw for every dtype
    return compute_sensitivity(model, images, dsp, k=3, lam=0.4, generator=torch.Generator().manual_seed(1))


def test_sensitivity_pass_matches_reference(monkeypatch, kernel_calls):
    exact = _sensitivity(monkeypatch, "reference", torch.float64)
    ref = _sensitivity(monkeypatch, "reference", torch.float32)
    assert kernel_calls["cov"] == 0
    tri = _sensitivity(monkeypatch, "triton", torch.float32)
    assert kernel_calls["cov"] == len(tri.weights) - len(tri.upstream) > 10  # every downstream group
    assert kernel_calls["fwd_stats"] == kernel_calls["fwd"] == 1  # random_restyle, given its statistics
    assert tri.upstream == ref.upstream == exact.upstream

    def rel_errors(got):
        return {(part, name): ((getattr(got, part)[name] - t).abs().max() / t.abs().max().clamp_min(1e-30)).item()
                for part in ("unary", "binary", "weights") for name, t in getattr(exact, part).items()}

    ref_err, tri_err = rel_errors(ref), rel_errors(tri)
    bound = max(3 * max(ref_err.values()), 1e-6)
    assert max(ref_err.values()) < 1e-3  # the calibration itself is sane (fp32 vs fp64)
    worst = max(tri_err, key=tri_err.get)
    assert tri_err[worst] <= bound, f"{worst}: rel. error {tri_err[worst]:.3g} > {bound:.3g} (3x the fp32 reference's)"


# --- AdaIN given the caller's statistics (one pass) == AdaIN computing them


def _adain_inputs(dtype, layout="contiguous"):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) * 3 + 2
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    mean = torch.randn(2, 3, generator=g, dtype=torch.float64)
    std = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.5
    dy = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(t is not dy) for t in (x, mean, std)] + [dy.to(dtype)]


def _adain_and_grads(fn, x, mean, std, dy, with_stats):
    args = [t.detach().clone().requires_grad_(True) for t in (x, mean, std)]
    stats = style_stats(args[0].detach()) if with_stats else None
    y = fn(*args, stats=stats)
    y.backward(dy)
    return [y.detach()] + [a.grad for a in args]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["auto", "chunked", "split"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_kernel_adain_given_stats_equals_own_stats(dtype, mode, layout):
    from npdg.kernels import adain as K

    cfg = {"auto": None, "chunked": K.AdaINConfig(2, 4), "split": K.AdaINConfig(2, 4, splits=3)}[mode]
    x, mean, std, dy = _adain_inputs(dtype, layout)

    def fn(a, m, s, stats):
        return K.adain(a, m, s, config=cfg, stats=stats)

    own = _adain_and_grads(fn, x, mean, std, dy, with_stats=False)
    given = _adain_and_grads(fn, x, mean, std, dy, with_stats=True)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for label, got, want in zip(("y", "dx", "dmean", "dstd"), given, own, strict=True):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, label=label: f"{label}: {m}")


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
def test_ops_adain_given_stats_equals_own_stats(monkeypatch, backend):
    """Every ops.adain path (reference, the fused C++ CPU op under auto, Triton) with and without stats."""
    monkeypatch.setenv("NPDG_KERNELS", backend)
    x, mean, std, dy = _adain_inputs(torch.float64)
    own = _adain_and_grads(ops.adain, x, mean, std, dy, with_stats=False)
    given = _adain_and_grads(ops.adain, x, mean, std, dy, with_stats=True)
    for got, want in zip(given, own, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no gradient recorded: the reference uses the given statistics as values
        torch.testing.assert_close(ops.adain(x, mean, std, stats=style_stats(x)), own[0], rtol=1e-12, atol=1e-12)


def test_adain_rejects_bad_stats(monkeypatch):
    x = torch.randn(2, 3, 4, 4)
    mean, std = torch.zeros(2, 3), torch.ones(2, 3)
    for backend in ("reference", "triton"):
        monkeypatch.setenv("NPDG_KERNELS", backend)
        with pytest.raises(ValueError, match=r"stats mu of shape \(3,\)"):
            ops.adain(x, mean, std, stats=(torch.zeros(3), torch.ones(2, 3)))
        with pytest.raises(TypeError, match="pair of tensors"):
            ops.adain(x, mean, std, stats=torch.zeros(2, 3))


_COMPILE_STATS_KERNEL = r"""
import json
from npdg.kernels import adain as K
from npdg.kernels.utils import compile_report

rows = []
for dt, layout, bc, bl, w in (("fp32", "nchw", 1, 4096, 8), ("fp32", "cl", 16, 256, 8),
                              ("fp32", "cl", 64, 64, 8), ("bf16", "cl", 8, 512, 8)):
    u = "l" if layout == "nchw" else "c"
    ptrs = dict(X=dt, Y=dt, MEAN=dt, STD=dt, MU="fp32", RSTD="fp32")
    rows.append((f"{dt} {layout} {bc}x{bl}", compile_report(K._adain_fwd_stats_kernel, ptrs,
                 {"sx" + u: 1, "sy" + u: 1, "BLOCK_C": bc, "BLOCK_L": bl}, num_warps=w)))
print(json.dumps(rows))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for real")
def test_given_stats_kernel_compiles_for_sm90_without_spills():
    """The one-pass (given statistics) forward kernel in the streaming tiles adain_forward gives it (at most
    _STREAM_TILE elements) compiles (triton's bundled ptxas, no GPU) without register spills."""
    from helpers import run_compiled

    rows = run_compiled(_COMPILE_STATS_KERNEL)
    assert len(rows) == 4
    assert not [(label, r) for label, r in rows if r["stack"] > 0], rows
