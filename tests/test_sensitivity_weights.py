"""npdg.sensitivity: unary / binary scores from the hook path against a float64 brute force, and the weights.

The brute force captures every group's activations explicitly (test hooks registered before
compute_sensitivity's own, so both see the same forward) and computes the style covariance with einsum in
float64. Tolerances: the hook path accumulates the same fp32 activations in fp32 over M = K*N*L <= 384
samples, so its relative error is ~M * 2**-24 ~ 2e-5 of the largest |cov| entry of the layer.
"""

import pytest
import torch

from npdg.dsp.perturb import FeatureDSP
from npdg.models import create_model
from npdg.sensitivity import Sensitivity, compute_sensitivity, plot_sensitivity, pruned_vs_kept, sensitivity_weights

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

K = 3
UPSTREAM = {"deeplabv3plus_r18": "backbone.layer1.", "segformer_b0": "backbone.stages.0."}


def _setup(name, seed=0):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=5).eval()
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=16)
    images = torch.randn(2, 3, 32, 64)
    return model, dsp, images


def _brute_force(acts: torch.Tensor):
    """(unary, binary) in float64 from activations (K*N, C, ...)."""
    a = acts.double().reshape(K, acts.shape[0] // K, acts.shape[1], -1)
    d = a - a.mean(0, keepdim=True)
    cov = torch.einsum("knil,knjl->ij", d, d) / (d.shape[0] * d.shape[1] * d.shape[3])
    off = cov.abs() - torch.diag(cov.diagonal().abs())
    return cov.diagonal(), off.sum(1)


@pytest.fixture(scope="module", params=["deeplabv3plus_r18", "segformer_b0"])
def run(request):
    """(name, model, sensitivity, captured activations) for one model."""
    model, dsp, images = _setup(request.param)
    captured = {}
    handles = [g.activation_module.register_forward_hook(
        lambda m, i, out, name=g.name: captured.__setitem__(name, out.detach().clone()))
        for g in model.prunable_units()]
    sens = compute_sensitivity(model, images, dsp, k=K, lam=0.4, generator=torch.Generator().manual_seed(1))
    for h in handles:
        h.remove()
    return request.param, model, sens, captured


def test_scores_match_float64_brute_force(run):
    name, model, sens, captured = run
    assert list(sens.unary) == [g.name for g in model.prunable_units()]
    assert set(sens.upstream) == {g for g in sens.unary if g.startswith(UPSTREAM[name])} != set()
    for group, acts in captured.items():
        if group in sens.upstream:
            assert acts.shape[0] == 2  # computed once, before the perturbation point
            assert sens.unary[group].abs().max() == 0 and sens.binary[group].abs().max() == 0
            continue
        assert acts.shape[0] == K * 2
        unary, binary = _brute_force(acts)
        scale = unary.max()
        assert scale > 0, group
        torch.testing.assert_close(sens.unary[group].double(), unary, atol=2e-5 * scale, rtol=2e-5)
        torch.testing.assert_close(sens.binary[group].double(), binary, atol=2e-5 * binary.max(), rtol=2e-5)


def test_units_one_sample_each_and_heads(run):
    name, _, sens, captured = run
    if name == "deeplabv3plus_r18":  # ASPP image pool: one value per unit and sample (L = 1)
        assert captured["head.aspp.branches.4.bn"].shape[-2:] == (1, 1)
        assert sens.unary["head.aspp.branches.4.bn"].gt(0).all()
    else:  # heads: (N, heads, L, d) -> one score per head
        head = "backbone.stages.3.blocks.0.attn.head_gate"
        assert captured[head].dim() == 4 and sens.unary[head].shape == (captured[head].shape[1],)


def test_weights_mean_one_and_neutral_upstream(run):
    _, _, sens, _ = run
    all_w = torch.cat(list(sens.weights.values()))
    torch.testing.assert_close(all_w.mean(), torch.tensor(1.0), atol=1e-6, rtol=0)
    assert all_w.min() >= 0
    # the upstream groups share one value: the neutral 1 divided by the global mean before the rescale
    neutral = {float(v) for g in sens.upstream for v in sens.weights[g]}
    assert len(neutral) == 1
    w = sensitivity_weights(sens.unary, sens.binary, 0.4, set(sens.upstream))
    total = torch.cat([torch.ones_like(v) if g in sens.upstream else
                       0.4 * sens.unary[g] / sens.unary[g].mean() + 0.6 * sens.binary[g] / sens.binary[g].mean()
                       for g, v in w.items()]).mean()
    assert neutral.pop() == pytest.approx(1 / float(total), rel=1e-6)


def test_lam_one_is_normalised_unary_and_lam_zero_binary():
    model, dsp, images = _setup("deeplabv3plus_r18")
    for lam, key in ((1.0, "unary"), (0.0, "binary")):
        sens = compute_sensitivity(model, images, dsp, k=K, lam=lam, generator=torch.Generator().manual_seed(1))
        ratios = torch.cat([sens.weights[g] / (getattr(sens, key)[g] / getattr(sens, key)[g].mean())
                            for g in sens.weights if g not in sens.upstream])
        torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])), rtol=1e-5, atol=0)


def test_style_independent_channel_scores_zero():
    model, dsp, images = _setup("deeplabv3plus_r18")
    with torch.no_grad():
        model.head.fuse1.conv.weight[3] = 0  # its BN output is the constant beta - gamma * mu / sigma
    sens = compute_sensitivity(model, images, dsp, k=K, generator=torch.Generator().manual_seed(1))
    unary, binary = sens.unary["head.fuse1.bn"], sens.binary["head.fuse1.bn"]
    assert unary[3] == 0 and binary[3] == 0 and sens.weights["head.fuse1.bn"][3] == 0
    assert unary[torch.arange(len(unary)) != 3].gt(0).all()


def test_validation_mode_and_persistence(tmp_path):
    model, dsp, images = _setup("segformer_b0")
    for kwargs in ({"k": 1}, {"lam": 1.5}, {"lam": -0.1}):
        with pytest.raises(ValueError):
            compute_sensitivity(model, images, dsp, **kwargs)
    model.train()
    sens = compute_sensitivity(model, images, dsp, k=2)
    assert model.training  # mode restored
    assert not bool(dsp.dvae.initialised)  # eval-mode statistics never become the D-VAE's standardiser
    sens.save(tmp_path / "s.json")
    back = Sensitivity.load(tmp_path / "s.json")
    assert back.upstream == sens.upstream and (back.k, back.lam) == (2, 0.4)
    for g in sens.weights:
        torch.testing.assert_close(back.weights[g], sens.weights[g])
        torch.testing.assert_close(back.binary[g], sens.binary[g])
    plot_sensitivity(sens, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_pruned_vs_kept_means_downstream_groups_only():
    w = {"up": torch.tensor([1.0, 1.0]), "b": torch.tensor([3.0, 1.0, 0.5, 0.5]), "c": torch.tensor([2.0, 0.0])}
    sens = Sensitivity(unary=w, binary=w, weights=w, upstream=["up"])
    masks = {"up": torch.tensor([0, 1]), "b": torch.tensor([0, 1, 1, 1]), "c": torch.tensor([0, 1]),
             "other": torch.tensor([0, 0, 1])}  # a group without weights is ignored
    out = pruned_vs_kept(sens, masks)
    assert out == {"pruned": 2.5, "kept": 0.5, "units_pruned": 2, "units_kept": 4}
    assert pruned_vs_kept(sens, {"b": torch.ones(4), "up": torch.tensor([0, 1])}) is None  # nothing removed downstream


def test_scale_free_weights_match_float64_brute_force(run):
    """relative unary = style variance / the unit's total variance; binary = sum_j |Cov| / sqrt(Var_c Var_j)."""
    name, model, sens, captured = run
    unary_rel, binary_rel = {}, {}
    for group, acts in captured.items():
        if group in sens.upstream:
            unary_rel[group] = binary_rel[group] = torch.zeros(acts.shape[1], dtype=torch.float64)
            continue
        a = acts.double().reshape(K, acts.shape[0] // K, acts.shape[1], -1)
        d = a - a.mean(0, keepdim=True)
        cov = torch.einsum("knil,knjl->ij", d, d) / (d.shape[0] * d.shape[1] * d.shape[3])
        total = a.transpose(0, 2).reshape(a.shape[2], -1).var(1, unbiased=False)
        inv = torch.where(total > 0, total.rsqrt(), torch.zeros_like(total))
        rel = cov.abs() * inv[:, None] * inv[None, :]
        unary_rel[group] = rel.diagonal().clone()
        binary_rel[group] = rel.fill_diagonal_(0).sum(1)
        assert float(unary_rel[group].max()) <= 1 + 1e-12  # a fraction of the unit's variance
    expect = sensitivity_weights(unary_rel, binary_rel, 0.4, set(sens.upstream))
    for group, w in expect.items():
        torch.testing.assert_close(sens.relative[group].double(), w, rtol=1e-3, atol=1e-5)
    assert sens.scale == "output" and sens.scale_free is sens.relative


def test_scale_free_weights_ignore_a_units_gamma():
    """Scaling a downstream BN's γ_c and β_c by a_c (different per unit) multiplies unit c's output-based unary by
    a_c**2 and leaves its scale-free weight where it was (up to the global mean-1 rescale, one constant)."""
    model, dsp, images = _setup("deeplabv3plus_r18")
    group = next(g for g in model.prunable_units() if g.name.startswith("backbone.layer3."))
    a = torch.linspace(0.5, 4.0, group.size)

    def sens():
        return compute_sensitivity(model, images, dsp, k=K, generator=torch.Generator().manual_seed(1),
                                   scale="relative")

    before = sens()
    with torch.no_grad():
        group.scale_module.weight.mul_(a)
        group.scale_module.bias.mul_(a)
    after = sens()
    torch.testing.assert_close(after.unary[group.name], a**2 * before.unary[group.name], rtol=1e-3, atol=1e-9)
    ratio = after.relative[group.name] / before.relative[group.name]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.mean())), rtol=1e-3, atol=1e-4)
    assert after.weights is after.relative
