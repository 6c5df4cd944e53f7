"""python -m npdg.export: ONNX / torch.export round trips of every model (pruned widths included), the
equality check, bad input (one line, exit 2, no partial file) and missing packages.

Every model is random-init, random-γ pruned at ratio 0.3 (round_to 8) and compacted, then exported at 64x128
and checked (max |Δlogit| <= 1e-4 x max |logit|) in ONNX Runtime. The exporter's time grows with the
number of blocks (2 busy cores: R18 / B0 ~4 s, B2 ~17 s, B3-B5 35-65 s each): the R18 and SegFormer-B0 rows
run always, R50 / R101 / VGG16 / B1 / B2 are marked slow, and B3-B5 (the same blocks as B2, more of them)
run only with NPDG_EXPORT_ALL=1 (the committed benches/results/cpu_export_all_models.json has all ten).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest
import torch
from helpers import run_main
from torch import nn

import npdg
from npdg import export as E
from npdg.models import available_models, create_model
from npdg.pruning import compact, select_masks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
SIZE = (64, 128)
FAST_MODELS = {"deeplabv3plus_r18", "segformer_b0"}
OPT_IN_MODELS = {"segformer_b3", "segformer_b4", "segformer_b5"}


def pruned(name: str, ratio: float = 0.3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    dense = create_model(name, num_classes=19).eval()
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in dense.prunable_units()}
    return compact(dense, select_masks(dense, ratio=ratio, round_to=8, scores=scores)).eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    npdg.save_model(pruned("deeplabv3plus_r18"), d / "final.pt")
    return d


def _run(argv, capsys):
    return run_main(E.main, argv, capsys)


def _conv_shapes_onnx(path) -> Counter:
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    return Counter(inits[n.input[1]] for n in g.node if n.op_type == "Conv" and n.input[1] in inits)


def _conv_shapes_model(model: nn.Module) -> Counter:
    return Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d))


def _dense_conv_shapes(name: str) -> Counter:
    return _conv_shapes_model(create_model(name, num_classes=19))


def _marks(name: str):
    if name in FAST_MODELS:
        return ()
    if name in OPT_IN_MODELS:
        return (pytest.mark.slow, pytest.mark.skipif(os.environ.get("NPDG_EXPORT_ALL") != "1",
                                                     reason="35-65 s export each; NPDG_EXPORT_ALL=1 runs it"))
    return (pytest.mark.slow,)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in available_models()])
def test_onnx_round_trip_every_model(name, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = pruned(name)
    info = E.export_model(model, "onnx", tmp_path / f"{name}.onnx", size=SIZE)
    (check,) = info["checks"]
    assert check["ok"] and check["max_abs_diff"] <= 1e-4 * check["scale"]
    assert check["shape"] == [1, 3, *SIZE]
    # the graph has the pruned widths: every conv of the compacted model, with its shape, and no dense one
    shapes = _conv_shapes_onnx(tmp_path / f"{name}.onnx")
    assert shapes == _conv_shapes_model(model)
    assert shapes != _dense_conv_shapes(name)
    assert info["widths"] == model.widths()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # no temporary file left


@pytest.mark.parametrize("name", sorted(FAST_MODELS))
def test_torch_export_round_trip(name, tmp_path):
    model = pruned(name)
    info = E.export_model(model, "torch_export", tmp_path / "m.pt2", size=SIZE)
    assert info["checks"][0]["ok"]
    program = torch.export.load(str(tmp_path / "m.pt2"))
    shapes = Counter(tuple(v.shape) for k, v in program.state_dict.items() if k.endswith("weight") and v.dim() == 4)
    assert shapes == _conv_shapes_model(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_cli_run_dir_and_dynamic(fmt, run_dir, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"m{E.FORMATS[fmt]}"
    code, stdout, err = _run([str(run_dir), "--format", fmt, "--out", str(out), "--height", "64", "--width", "96",
                              "--dynamic"], capsys)
    assert code == 0, err
    assert out.is_file() and f"wrote {out}" in stdout and "MiB" in stdout and "logits equal PyTorch's" in stdout
    x = torch.randn(3, 3, 96, 64)  # another batch and size than the export's
    with torch.no_grad():
        ref = npdg.load_model(run_dir / "final.pt").eval()(x)
    got = E.run_file(fmt, out, x)
    assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_cli_default_output_next_to_checkpoint(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    npdg.save_model(create_model("deeplabv3plus_r18", num_classes=3).eval(), d / "dense.pt")
    code, out, err = _run([str(d), "--which", "dense", "--format", "torch_export", "--height", "32", "--width", "32"],
                          capsys)
    assert code == 0, err
    assert sorted(p.name for p in d.iterdir()) == ["dense.pt", "dense.pt2"]


@pytest.mark.parametrize("args, message", [
    (["{bad}"], "is not an npdg model file"),
    (["{text}"], "is not an npdg model file"),
    (["{missing}"], "does not exist"),
    (["{empty_dir}"], "final.pt does not exist"),
    (["{model}", "--format", "tflite"], "unsupported format 'tflite' (use onnx or torch_export)"),
    (["{model}", "--height", "0"], "must be >= 1"),
    ([], "the following arguments are required"),
])
def test_bad_input_one_line_exit_2(args, message, run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, bad)  # a torch file, but not an npdg model
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    fill = {"{bad}": str(bad), "{text}": str(tmp_path / "t.txt"), "{missing}": str(tmp_path / "nope.pt"),
            "{empty_dir}": str(tmp_path / "empty"), "{model}": str(run_dir / "final.pt")}
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run([fill.get(a, a) for a in args] + ["--out", str(tmp_path / "x.onnx")], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("python -m npdg.export: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_failed_equality_check_names_the_difference_and_leaves_no_file(fmt, run_dir, tmp_path, capsys, monkeypatch):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    real = E.run_file
    monkeypatch.setattr(E, "run_file", lambda *a: real(*a) + 0.5)  # an exporter that got the logits wrong
    code, out, err = _run([str(run_dir), "--format", fmt, "--out", str(tmp_path / "m.out"), "--height", "32",
                           "--width", "32"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "equality check failed" in err and "max |Δlogit| 0.5 >" in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary file


def test_failed_export_one_line(run_dir, tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("Unsupported operator: aten::frobnicate\nmore detail")

    monkeypatch.setattr(torch.export, "export", broken)
    code, _, err = _run([str(run_dir), "--format", "torch_export", "--out", str(tmp_path / "m.pt2")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "torch.export of deeplabv3plus_r18 failed: RuntimeError: Unsupported operator: aten::frobnicate" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_package_exit_2_names_pip_package(missing, run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    code, _, err = _run([str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--height", "32",
                         "--width", "32"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"pip install {missing}" in err
    assert list(tmp_path.iterdir()) == []
