"""Contract tests every registered model must pass, plus registry, output-stride and serialization tests.

Each model is built once (module-scoped parametrized fixture); inputs are tiny and odd-sized.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import randomize_

import npdg
from npdg.models import Gate, UnitGroup, available_models, compact_state_dict, create_model

EXPECTED_NAMES = {
    "deeplabv3plus_r18",
    "deeplabv3plus_r50",
    "deeplabv3plus_r101",
    "deeplab_vgg16",
    *(f"segformer_b{i}" for i in range(6)),
}
NUM_CLASSES = 5
ODD = (33, 45)
# Same code as r50 / b2 with more blocks: by default only built, checked and run forward once; their
# seconds-long backward, file I/O and compaction checks are marked `slow`.
DEEP = {"deeplabv3plus_r101", "segformer_b3", "segformer_b4", "segformer_b5"}
EVERY_MODEL = sorted(EXPECTED_NAMES)
EVERY_MODEL_DEEP_SLOW = [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in EVERY_MODEL]
each_model = pytest.mark.parametrize("model", EVERY_MODEL, indirect=True)
each_model_deep_slow = pytest.mark.parametrize("model", EVERY_MODEL_DEEP_SLOW, indirect=True)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def axis_positions(groups, role) -> dict[tuple[str, int], torch.Tensor]:
    """(state key, dim) -> every position declared on that axis by the groups' producers/consumers."""
    out = {}
    for g in groups:
        for s in getattr(g, role):
            pos = s.positions(torch.arange(g.size))
            out[(s.key, s.dim)] = torch.cat([out.get((s.key, s.dim), torch.empty(0, dtype=torch.long)), pos])
    return out


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def model(request):
    """Built once per name for the whole module (tests are grouped by this indirect parameter)."""
    torch.manual_seed(0)
    return randomize_(create_model(request.param, num_classes=NUM_CLASSES)).eval()


def test_registry_lists_every_model():
    assert set(available_models()) == EXPECTED_NAMES


def test_unknown_name_lists_valid_names():
    for exc in (KeyError, ValueError):
        with pytest.raises(exc, match="deeplabv3plus_r50.*segformer_b0"):
            create_model("resnet_9000")


# ---- contract: every model -------------------------------------------------------------------------


@each_model_deep_slow
def test_forward_backward_odd_size(model):
    model.train()
    try:
        x = torch.randn(2, 3, *ODD)
        logits = model(x)
        assert logits.shape == (2, NUM_CLASSES, *ODD)
        logits.square().mean().backward()
        for g in model.prunable_units():  # the sparsity loss needs a gradient on every γ
            assert g.gamma().grad is not None and torch.isfinite(g.gamma().grad).all(), g.name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@each_model
def test_eval_any_size(model):
    with torch.no_grad():
        for size in [(37, 53), (9, 13)]:  # 9x13: smaller than the coarsest stride and SegFormer's sr window
            assert model(torch.randn(1, 3, *size)).shape == (1, NUM_CLASSES, *size)


@each_model
def test_units_match_layer_shapes(model):
    groups = model.prunable_units()
    assert groups and len({g.name for g in groups}) == len(groups)
    names = dict(model.named_modules())
    for g in groups:
        assert isinstance(g, UnitGroup) and g.kind in ("channel", "head", "hidden")
        assert names[g.name] is g.scale_module and g.gamma().shape == (g.size,)
        g.check()
    state = model.state_dict()
    for (key, dim), positions in axis_positions(groups, "producers").items():
        # Producer axes are owned entirely by their group(s): q rows, k+v halves of kv, BN params, ...
        assert torch.equal(positions.sort().values, torch.arange(state[key].shape[dim])), key
    for (key, dim), positions in axis_positions(groups, "consumers").items():
        # Consumer blocks of different groups (concat inputs) never overlap and stay inside the axis.
        assert positions.unique().numel() == positions.numel() and positions.max() < state[key].shape[dim], (
            key
        )
    assert model.arch_config()["widths"] == {g.name: g.size for g in groups}


@each_model_deep_slow
def test_activation_modules_put_units_on_dim1(model):
    groups = model.prunable_units()
    shapes = {}
    hooks = [
        g.activation_module.register_forward_hook(
            lambda m, i, out, n=g.name: shapes.__setitem__(n, out.shape)
        )
        for g in groups
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, *ODD))
    for h in hooks:
        h.remove()
    for g in groups:
        assert shapes[g.name][:2] == (2, g.size), g.name
        if g.kind == "head":  # (N, heads, L, head_dim)
            assert len(shapes[g.name]) == 4 and shapes[g.name][3] * g.size == g.producers[1].tensor().shape[0]


@each_model_deep_slow
def test_gates_at_one_and_empty_mask_change_nothing(model):
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        ref = model(x)
        gates = [m for m in model.modules() if isinstance(m, Gate)]
        assert all(torch.equal(g.weight, torch.ones_like(g.weight)) for g in gates)
        for g in gates:
            g.forward = lambda t: t  # bypass: the gated model must equal the ungated one exactly
        try:
            assert torch.equal(model(x), ref)
        finally:
            for g in gates:
                del g.forward
        for g in model.prunable_units():
            g.mask_(torch.zeros(g.size, dtype=torch.bool))
        assert torch.equal(model(x), ref)


@each_model_deep_slow
def test_style_layer_hook_changes_output(model):
    x = torch.randn(1, 3, *ODD)
    seen = []

    def perturb(module, inputs, out):
        seen.append(out.shape)
        return out * 1.5 + 0.3

    with torch.no_grad():
        ref = model(x)
        handle = model.style_layer.register_forward_hook(perturb)
        try:
            out = model(x)
        finally:
            handle.remove()
    n, c, h, w = seen[0]
    assert (n, c) == (1, model.style_channels) and abs(h - ODD[0] / 4) < 1 and abs(w - ODD[1] / 4) < 1
    assert not torch.allclose(out, ref)


@each_model_deep_slow
def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.pt"
    npdg.save_model(model, path, note="hi")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "npdg-model/1" and raw["name"] == model.registry_name
    assert raw["kwargs"]["num_classes"] == NUM_CLASSES
    loaded = npdg.load_model(path).eval()
    assert loaded.saved_extra == {"note": "hi"}
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@each_model_deep_slow
def test_mask_then_compact_matches(model):
    """Mask ~30% of every group, slice all declared tensors, rebuild from widths: same output."""
    dense = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in (m for m in dense.modules() if isinstance(m, Gate)):  # away from 1: slicing must matter
            gate.weight.copy_(torch.rand(gate.weight.shape, generator=gen) + 0.5)
    keep = {}
    for g in dense.prunable_units():
        kept = max(g.min_size, g.size - math.ceil(0.3 * g.size))
        keep[g.name] = torch.randperm(g.size, generator=gen)[:kept].sort().values
        pruned = torch.ones(g.size, dtype=torch.bool)
        pruned[keep[g.name]] = False
        g.mask_(pruned)
    x = torch.randn(2, 3, *ODD)
    with torch.no_grad():
        masked = dense(x)
        assert not torch.allclose(masked, model(x))  # masking (and the gates) did something
        state, widths = compact_state_dict(dense, keep)
        small = create_model(model.registry_name, **{**dense.arch_config(), "widths": widths}).eval()
        small.load_state_dict(state)  # strict: every declared tensor was sliced consistently
        assert small.widths() == widths
        assert rel_err(small(x), masked) <= 1e-5
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())


# ---- architecture options ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deeplabv3plus_r18", "deeplab_vgg16"])
def test_output_stride_8(name):
    x = torch.randn(1, 3, *ODD)
    sizes = {}
    for os_ in (8, 16):
        m = create_model(name, num_classes=3, output_stride=os_).eval()
        with torch.no_grad():
            low, high = m.backbone(x)
            assert m(x).shape == (1, 3, *ODD)
        sizes[os_] = high.shape[-2:]
        assert all(abs(s - full / os_) < 1 for s, full in zip(high.shape[-2:], ODD, strict=True)), (
            os_,
            high.shape,
        )
    assert sizes[8][0] > sizes[16][0]
    with pytest.raises(ValueError):
        create_model(name, output_stride=4)


# ---- pretrained backbones from local files ------------------------------------------------------------


def _to_segformer_keys(state):
    """Our MiT keys -> original SegFormer / mmseg keys (patch_embed1, block1.0, norm1, dwconv.dwconv)."""
    out = {}
    for k, v in state.items():
        if "_gate." in k:
            continue
        parts = k.split(".")
        stage = int(parts[1]) + 1
        if parts[2] == "blocks":
            k = f"block{stage}.{parts[3]}." + ".".join(parts[4:])
            k = k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
        else:  # patch_embed / norm
            k = f"{parts[2]}{stage}." + ".".join(parts[3:])
        out["backbone." + k] = v
    return out


def _to_hf_keys(state):
    """Our MiT keys -> Hugging Face SegformerForImageClassification keys (kv split into key/value)."""
    names = [
        (".norm1.", ".layer_norm_1."),
        (".norm2.", ".layer_norm_2."),
        (".attn.q.", ".attention.self.query."),
        (".attn.sr.", ".attention.self.sr."),
        (".attn.norm.", ".attention.self.layer_norm."),
        (".attn.proj.", ".attention.output.dense."),
        (".mlp.fc1.", ".mlp.dense1."),
        (".mlp.fc2.", ".mlp.dense2."),
        (".mlp.dwconv.", ".mlp.dwconv.dwconv."),
    ]
    out = {}
    for k, v in state.items():
        if "_gate." in k:
            continue
        parts = k.split(".")
        i, rest = parts[1], ".".join(parts[3:])
        if parts[2] == "patch_embed":
            k = f"patch_embeddings.{i}." + rest.replace("norm.", "layer_norm.")
        elif parts[2] == "norm":
            k = f"layer_norm.{i}.{rest}"
        else:
            k = f"block.{i}.{rest}"
            for ours, theirs in names:
                k = k.replace(ours, theirs)
            if ".attn.kv." in k:
                half = v.shape[0] // 2
                out["segformer.encoder." + k.replace(".attn.kv.", ".attention.self.key.")] = v[:half]
                out["segformer.encoder." + k.replace(".attn.kv.", ".attention.self.value.")] = v[half:]
                continue
        out["segformer.encoder." + k] = v
    return out


def _assert_backbone_equal(a, b):
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    "name, to_file_keys",
    [
        ("deeplabv3plus_r18", lambda s: {**s, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}),
        ("deeplab_vgg16", lambda s: {**s, "classifier.0.weight": torch.zeros(4, 4)}),
        (
            "segformer_b0",
            lambda s: {"state_dict": {**_to_segformer_keys(s), "head.weight": torch.zeros(2, 2)}},
        ),
        ("segformer_b0", lambda s: {**_to_hf_keys(s), "classifier.weight": torch.zeros(2, 256)}),
    ],
    ids=["torchvision-resnet", "torchvision-vgg", "segformer-mmseg", "huggingface"],
)
def test_pretrained_backbone_loads_every_key(name, to_file_keys, tmp_path, recwarn):
    torch.manual_seed(1)
    source = randomize_(create_model(name, num_classes=3))
    path = tmp_path / "imagenet.pth"
    torch.save(to_file_keys(source.backbone.state_dict()), path)
    torch.manual_seed(2)
    model = create_model(name, num_classes=3, pretrained=str(path))
    assert model.pretrained_report.missing == [] and model.pretrained_report.unexpected == []
    assert not [w for w in recwarn if "pretrained" in str(w.message)]
    _assert_backbone_equal(model, source)


def test_pretrained_reports_missing_and_unexpected(tmp_path):
    state = create_model("deeplabv3plus_r18").backbone.state_dict()
    state.pop("layer1.0.conv1.weight")
    state["layer9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="1 missing keys"):
        model = create_model("deeplabv3plus_r18", pretrained=tmp_path / "partial.pth")
    assert model.pretrained_report.missing == ["layer1.0.conv1.weight"]
    assert model.pretrained_report.unexpected == ["layer9.weight"]


def test_pretrained_shape_mismatch_is_an_error(tmp_path):
    torch.save(_to_segformer_keys(create_model("segformer_b1").backbone.state_dict()), tmp_path / "b1.pth")
    with pytest.raises(ValueError, match="shapes do not fit"):
        create_model("segformer_b0", pretrained=tmp_path / "b1.pth")


def test_misspelt_or_invalid_widths_are_errors():
    with pytest.raises(ValueError, match="unknown unit groups"):
        create_model("segformer_b0", widths={"backbone.stages.0.blocks.0.attn.gate": 1})
    with pytest.raises(ValueError, match="invalid widths"):
        create_model("deeplabv3plus_r18", widths={"head.fuse1.bn": 0})
