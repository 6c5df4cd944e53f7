"""``--prune_residual`` in python -m npdg.profile (issue 19): the sweep prunes the coupled residual streams too,
a model without them is one line / exit 2, and a residual-pruned checkpoint keeps its stream widths through
save -> profile --checkpoint and save -> npdg.export.

Tiny problems (DeepLabV3+ R18, 3 classes, 32x64, a few timed runs, one intra-op thread), as in test_profile.py.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from helpers import random_scores, run_main, stream_groups
from torch import nn

import npdg
from npdg import export as E
from npdg import profile as P
from npdg.models import create_model
from npdg.pruning import compact, flops, select_masks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
SIZE = (32, 64)
FAST = ["--size", "32x64", "--runs", "2", "--warmup", "1", "--profile-runs", "0", "--device", "cpu"]
NAME = "deeplabv3plus_r18"


@pytest.fixture(scope="module")
def residual_pruned(tmp_path_factory):
    """(dense, residual-pruned compacted R18, its npdg model file)."""
    torch.manual_seed(0)
    dense = create_model(NAME, num_classes=3).eval()
    scores = random_scores(dense, residual=True, seed=0)
    small = compact(dense, select_masks(dense, ratio=0.3, round_to=8, scores=scores, prune_residual=True)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    npdg.save_model(small, path)
    return dense, small, path


def _sweep(tmp_path, capsys, *extra):
    out = tmp_path / f"sweep{'_res' if extra else ''}.json"
    code, _, err = run_main(P.main, ["--sweep", NAME, "--ratios", "0,0.3", "--round_to", "8", *FAST,
                                     "--json", str(out), *extra], capsys)
    assert code == 0, err
    return json.loads(out.read_text())


def test_sweep_prune_residual_fewer_flops_and_recorded(tmp_path, capsys, monkeypatch):
    import npdg.pruning

    calls, select = [], npdg.pruning.select_masks

    def recording(model, **kw):
        calls.append((kw.get("prune_residual", False), set(kw["scores"])))
        return select(model, **kw)

    monkeypatch.setattr(npdg.pruning, "select_masks", recording)
    plain = _sweep(tmp_path, capsys)
    res = _sweep(tmp_path, capsys, "--prune_residual")
    # random scores for every group, the residual streams too (not their default |γ|, all 1 at init)
    streams = [g.name for g in stream_groups(create_model(NAME, num_classes=3))]
    (off, off_scores), (on, on_scores) = calls
    assert (off, on) == (False, True)
    assert on_scores == off_scores | set(streams) and not off_scores & set(streams)
    assert plain["prune_residual"] is False and res["prune_residual"] is True
    assert all(p["prune_residual"] is False for p in plain["points"])
    assert all(p["prune_residual"] is True for p in res["points"])
    (kp,), (kr,) = ({p["model"] for p in rep["points"] if p["ratio"] == 0.3} for rep in (plain, res))
    mp, mr = plain["models"][kp], res["models"][kr]
    assert (mp["ratio"], mp["round_to"], mp["prune_residual"]) == (0.3, 8, False)
    assert (mr["ratio"], mr["round_to"], mr["prune_residual"]) == (0.3, 8, True)
    assert plain["models"]["dense"]["flops"] == res["models"]["dense"]["flops"]
    assert mr["flops"] < mp["flops"] < plain["models"]["dense"]["flops"]
    # the streams are narrower (and multiples of 8); the other groups drew the same random scores either way
    assert set(streams) <= set(mr["widths"]) and not set(streams) & set(mp["widths"])
    assert all(mr["widths"][g] % 8 == 0 for g in streams)
    assert {g: w for g, w in mr["widths"].items() if g not in streams} == mp["widths"]
    pt = next(p for p in res["points"] if p["ratio"] == 0.3)
    assert pt["flops_reduction"] == pytest.approx(res["models"]["dense"]["flops"] / mr["flops"])


@pytest.mark.parametrize("name", ["deeplab_vgg16"])
def test_model_without_residual_streams_exit_2_before_building(name, capsys, monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("built a model before checking --prune_residual")

    monkeypatch.setattr("npdg.models.create_model", no_build)
    code, out, err = run_main(P.main, ["--sweep", name, "--ratios", "0,0.3", *FAST, "--prune_residual"], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m npdg.profile: error:")
    assert f"model {name} declares no residual-stream unit groups" in lines[0] and NAME in lines[0]


def test_prune_residual_needs_sweep(residual_pruned, capsys):
    code, _, err = run_main(P.main, ["--checkpoint", str(residual_pruned[2]), *FAST, "--prune_residual"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--prune_residual needs --sweep" in lines[0], err


def test_checkpoint_profile_keeps_stream_widths(residual_pruned, tmp_path, capsys):
    dense, small, path = residual_pruned
    streams = [g.name for g in stream_groups(dense)]
    assert all(small.widths()[g] < dense_w for g, dense_w in
               ((g.name, g.size) for g in dense.prunable_units(residual=True) if g.name in streams))
    loaded = npdg.load_model(path).eval()
    assert loaded.widths() == small.widths()
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    code, out, err = run_main(P.main, ["--checkpoint", str(path), *FAST, "--json", str(tmp_path / "c.json")],
                              capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "c.json").read_text())["models"]["model"]
    assert m["flops"] == flops(small, SIZE) < flops(dense, SIZE)
    assert m["widths"] == small.widths() and set(streams) <= set(m["widths"])


def _conv_shapes_onnx(path) -> Counter:
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    return Counter(inits[n.input[1]] for n in g.node if n.op_type == "Conv" and n.input[1] in inits)


def test_checkpoint_exports_to_onnx(residual_pruned, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    _, small, path = residual_pruned
    out = tmp_path / "m.onnx"
    code, stdout, err = run_main(E.main, [str(path), "--out", str(out), "--height", "32", "--width", "64"], capsys)
    assert code == 0, err
    assert out.is_file() and "logits equal PyTorch's" in stdout
    # the graph has the residual-pruned widths: exactly the compacted model's convs
    assert _conv_shapes_onnx(out) == Counter(tuple(m.weight.shape) for m in small.modules()
                                             if isinstance(m, nn.Conv2d))
