"""Residual-stream pruning of SegFormer (MiT) backbones (issue 19): exact, via LayerNorms that keep the
statistics of the dense stream width (``npdg.models.mit.StreamLayerNorm``)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    check_compacted_equals_masked,
    random_scores,
    randomize_,
    run_main,
    stream_groups,
    tiny_npdg_runs_with_and_without_residual,
)
from test_prune_residual import test_residual_pruning_is_cheaper_than_without, test_save_load_round_trip  # noqa: F401
from torch import nn

import npdg
from npdg.models import create_model
from npdg.models.mit import StreamLayerNorm
from npdg.pruning import compact, flops, l1_penalty, select_masks, unit_importance

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
SIZE = (64, 64)
NUM_CLASSES = 5
VARIANTS = ["segformer_b0", "segformer_b1", "segformer_b2", "segformer_b3", "segformer_b4", "segformer_b5"]


def _randomize(model, seed=0):
    """BN statistics plus every LayerNorm affine and conv / linear bias far from their init (zero biases
    and unit γ would hide a writer that is not silenced)."""
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def _dense(name):
    torch.manual_seed(0)
    return _randomize(create_model(name, num_classes=NUM_CLASSES)).eval()


def test_streams_declared_only_when_asked():
    m = create_model("segformer_b0", num_classes=NUM_CLASSES)
    assert m.supports_residual() and "segformer_b0" in npdg.models.residual_models()
    plain, coupled = m.prunable_units(), m.prunable_units(residual=True)
    assert [g.name for g in coupled[: len(plain)]] == [g.name for g in plain]
    assert {g.name: (g.size, len(g.scale_modules)) for g in coupled[len(plain):]} == {
        f"backbone.stages.{i}.residual": (w, 6) for i, w in enumerate((32, 64, 160, 256))}
    assert m.widths() == {g.name: g.size for g in plain}  # dense streams: arch_config unchanged
    for g in coupled:
        g.check()
    assert set(select_masks(m, ratio=0.3)) == {g.name for g in plain}


def test_dense_model_is_plain_layer_norm_and_old_checkpoints_load(tmp_path):
    m = _dense("segformer_b0")
    norms = [mod for mod in m.modules() if isinstance(mod, StreamLayerNorm)]
    assert norms and all(n.norm_count == n.normalized_shape[0] for n in norms)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    ref = _dense("segformer_b0")
    for mod in list(ref.modules()):  # the same model with plain nn.LayerNorm everywhere
        for child_name, child in list(mod.named_children()):
            if isinstance(child, StreamLayerNorm):
                plain = nn.LayerNorm(child.normalized_shape[0], eps=child.eps)
                plain.load_state_dict(child.state_dict())
                setattr(mod, child_name, plain)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    # a dense checkpoint written from nn.LayerNorm modules (same keys) loads into the new model
    from npdg.serialization import model_payload

    payload = model_payload(m)
    payload["state_dict"] = {k: v.clone() for k, v in ref.state_dict().items()}
    torch.save(payload, tmp_path / "old.pt")
    loaded = npdg.load_model(tmp_path / "old.pt").eval()
    assert loaded.arch_config() == m.arch_config()
    with torch.no_grad():
        assert torch.equal(loaded(x), ref(x))


def test_stream_layer_norm_keeps_dense_statistics():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    x[..., [2, 5, 11]] = 0
    dense = nn.LayerNorm(16).double()
    with torch.no_grad():
        dense.weight.copy_(torch.rand(16, generator=gen) + 0.5)
        dense.bias.copy_(torch.randn(16, generator=gen))
    kept = torch.tensor([i for i in range(16) if i not in (2, 5, 11)])
    small = StreamLayerNorm(13, 16).double()
    with torch.no_grad():
        small.weight.copy_(dense.weight[kept])
        small.bias.copy_(dense.bias[kept])
        torch.testing.assert_close(small(x[..., kept]), dense(x)[..., kept], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        StreamLayerNorm(16, 8)


@pytest.fixture(scope="module", params=VARIANTS)
def case(request):
    dense = _dense(request.param)
    masks = select_masks(dense, ratio=0.3, round_to=8, scores=random_scores(dense), prune_residual=True)
    small = compact(dense, masks).eval()
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    return dense, masks, small, x


def test_compacted_equals_masked_with_residual_pruning(case):
    dense, masks, small, x = case
    streams, widths = check_compacted_equals_masked(dense, masks, small, x)
    assert all(widths[g.name] % 8 == 0 and widths[g.name] < g.size for g in streams)
    assert small.backbone.out_channels == [widths[g.name] for g in streams]
    assert small.style_channels == widths["backbone.stages.0.residual"]
    for s, g in zip(small.backbone.stages, streams, strict=True):  # statistics over the dense width
        norms = [s.patch_embed.norm, s.norm] + [n for b in s.blocks for n in (b.norm1, b.norm2)]
        assert all(n.norm_count == g.size and n.normalized_shape[0] < g.size for n in norms)


def test_importance_is_the_mean_abs_gamma_over_the_stream_layer_norms():
    m = _dense("segformer_b0")
    g = next(g for g in stream_groups(m) if g.name == "backbone.stages.1.residual")
    stage = m.backbone.stages[1]
    norms = [stage.patch_embed.norm, stage.norm] + [n for b in stage.blocks for n in (b.norm1, b.norm2)]
    assert {id(n) for n in g.scale_modules} == {id(n) for n in norms}
    want = sum(n.weight.detach().abs() for n in norms) / len(norms)
    assert torch.allclose(unit_importance(m, residual=True)[g.name], want)
    assert g.name not in unit_importance(m)
    assert l1_penalty(m, residual=True).item() > l1_penalty(m).item()


def test_train_prune_residual_end_to_end(tmp_path):
    finals = tiny_npdg_runs_with_and_without_residual(tmp_path, "segformer_b0", "--ratio=0.6")
    dense = create_model("segformer_b0", num_classes=finals["true"].num_classes)
    streams = {g.name: g.size for g in stream_groups(dense)}
    assert not any(k.endswith(".residual") for k in finals["false"].widths())
    got = {n: w for n, w in finals["true"].widths().items() if n in streams}
    # ratio 0.6 (the streams are ranked together; at 0.3 stage 0's stream may keep all its channels):
    # every stream is narrower, stage 0's included (the feature DSP follows the narrower style_channels)
    assert set(got) == set(streams) and all(w < streams[n] for n, w in got.items())
    assert finals["true"].style_channels == got["backbone.stages.0.residual"]
    assert flops(finals["true"], (40, 72)) < flops(finals["false"], (40, 72)) < flops(dense, (40, 72))


def test_residual_pruned_b0_exports_to_onnx(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from npdg import export as E

    dense = _dense("segformer_b0")
    small = compact(dense, select_masks(dense, ratio=0.3, round_to=8, scores=random_scores(dense),
                                        prune_residual=True)).eval()
    assert all(small.widths()[g.name] < g.size for g in stream_groups(dense))
    path = tmp_path / "small.pt"
    npdg.save_model(small, path)
    out = tmp_path / "m.onnx"
    code, stdout, err = run_main(E.main, [str(path), "--out", str(out), "--height", "64", "--width", "64"], capsys)
    assert code == 0, err
    assert out.is_file() and "logits equal PyTorch's" in stdout
