"""python -m npdg.profile: FLOPs / latency / efficiency report, per-layer table, sweep, plots, bad input.

Tiny problems (DeepLabV3+ R18 at 32x64, a few timed runs, one intra-op thread): the tests check the
bookkeeping (FLOPs attribution sums to npdg.pruning.flops, ratios are the documented quotients, lost times
add up), not the speed of this machine.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import run_main
from torch import nn

import npdg
from npdg import profile as P
from npdg.models import create_model
from npdg.pruning import compact, flops, select_masks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
SIZE = (32, 64)
FAST = ["--size", "32x64", "--runs", "3", "--warmup", "1", "--profile-runs", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with a random-init dense R18 and a 30 %-pruned compacted copy."""
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    dense = create_model("deeplabv3plus_r18").eval()
    gen = torch.Generator().manual_seed(0)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in dense.prunable_units()}
    pruned = compact(dense, select_masks(dense, ratio=0.3, round_to=8, scores=scores))
    npdg.save_model(dense, d / "dense.pt")
    npdg.save_model(pruned, d / "final.pt")
    return d


def _run(argv, capsys):
    return run_main(P.main, argv, capsys)


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_run_dir_compare_json_and_plot(run_dir, tmp_path, capsys):
    code, out, err = _run(["--checkpoint", str(run_dir), "--batch", "1", "2", *FAST,
                           "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "p.json").read_text())
    dense, pruned = npdg.load_model(run_dir / "dense.pt"), npdg.load_model(run_dir / "final.pt")
    assert rep["models"]["dense"]["flops"] == flops(dense, SIZE)
    assert rep["models"]["pruned"]["flops"] == flops(pruned, SIZE)
    r = rep["models"]["dense"]["flops"] / rep["models"]["pruned"]["flops"]
    assert r > 1.2  # 30 % of the units pruned
    for b in ("1", "2"):
        lat, c = rep["latency"][b], rep["comparison"][b]
        assert lat["dense"]["runs"] == lat["pruned"]["runs"] == 3
        assert lat["dense"]["p10_ms"] <= lat["dense"]["median_ms"] <= lat["dense"]["p90_ms"]
        assert c["flops_reduction"] == pytest.approx(r)
        assert c["speedup"] == pytest.approx(lat["dense"]["median_ms"] / lat["pruned"]["median_ms"])
        assert c["efficiency"] == pytest.approx(c["speedup"] / r)
        assert lat["pruned"]["images_per_s"] == pytest.approx(1e3 * int(b) / lat["pruned"]["median_ms"])
    layers = rep["layers"]
    # self FLOPs of all modules add up to the model's FLOPs: nothing double-counted or lost
    assert sum(row["flops_dense"] for row in layers["rows"]) == rep["models"]["dense"]["flops"]
    assert sum(row["flops_pruned"] for row in layers["rows"]) == rep["models"]["pruned"]["flops"]
    # lost times decompose the whole gap T_P - T_D / R; an unpruned layer's lost time is its time change
    assert sum(row["lost_ms"] for row in layers["rows"]) == pytest.approx(layers["lost_ms"], rel=1e-6)
    assert layers["lost_ms"] == pytest.approx(layers["total_pruned_ms"] - layers["total_dense_ms"] / r)
    same = [row for row in layers["rows"] if row["flops_dense"] == row["flops_pruned"]]
    assert any(row["type"] == "Conv2d" for row in same)  # e.g. the stem and the downsample convs
    for row in same:
        assert row["lost_ms"] == pytest.approx(row["time_pruned_ms"] - row["time_dense_ms"], abs=1e-9)
        assert row["own_efficiency"] is None
    for row in layers["rows"]:
        if row["flops_dense"] != row["flops_pruned"]:
            assert row["own_efficiency"] == pytest.approx(
                row["time_dense_ms"] / row["time_pruned_ms"] * row["flops_pruned"] / row["flops_dense"])
    # self times (range minus nested ranges) add up to the whole model's range
    assert sum(row["time_pruned_ms"] for row in layers["rows"]) == pytest.approx(layers["total_pruned_ms"], rel=1e-6)
    assert sum(row["time_dense_ms"] for row in layers["rows"]) == pytest.approx(layers["total_dense_ms"], rel=1e-6)
    assert [row["lost_ms"] for row in layers["rows"]] == sorted((row["lost_ms"] for row in layers["rows"]),
                                                                 reverse=True)
    convs = [row for row in layers["rows"] if row["type"] == "Conv2d"]
    assert convs and all(row["time_dense_ms"] > 0 for row in convs)
    assert "efficiency E = S/R" in out and "top 15 layers by lost time" in out
    _png(tmp_path / "p.png")


def test_single_model_and_compare_files(run_dir, tmp_path, capsys):
    code, out, err = _run(["--checkpoint", str(run_dir / "final.pt"), *FAST, "--json", str(tmp_path / "s.json")],
                          capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "s.json").read_text())
    assert rep["mode"] == "single" and list(rep["latency"]["1"]) == ["model"] and not rep["comparison"]
    rows = rep["layers"]["rows"]
    assert sum(r["flops_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["time_share"] for r in rows) == pytest.approx(1.0)
    code, out, err = _run(["--checkpoint", str(run_dir / "dense.pt"), "--compare", str(run_dir / "final.pt"),
                           *FAST, "--profile-runs", "0"], capsys)
    assert code == 0, err
    assert "FLOPs reduction R" in out and "Per layer" not in out


def test_sweep(tmp_path, capsys):
    code, out, err = _run(["--sweep", "deeplabv3plus_r18", "--ratios", "0,0.3", "--round_to", "1,8", *FAST,
                           "--layers-at", "0.3", "--json", str(tmp_path / "w.json"),
                           "--plot", str(tmp_path / "w.png")], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "w.json").read_text())
    pts = rep["points"]
    assert [(p["ratio"], p["round_to"]) for p in pts] == [(0, 1), (0.3, 1), (0, 8), (0.3, 8)]
    for p in pts:
        m = rep["models"][p["model"]]
        assert p["flops_reduction"] == pytest.approx(rep["models"]["dense"]["flops"] / m["flops"])
        assert p["efficiency"] == pytest.approx(p["speedup"] / p["flops_reduction"])
        if p["ratio"] == 0:
            assert p["model"] == "dense" and p["speedup"] == 1.0
        else:
            assert p["flops_reduction"] > 1.2
            assert all(w % 8 == 0 or p["round_to"] == 1 or w == rep["models"]["dense"]["widths"][g]
                       for g, w in m["widths"].items())
    assert set(rep["layers"]) == {"ratio 0.3 round_to 1", "ratio 0.3 round_to 8"}
    _png(tmp_path / "w.png")


class _Scripted(nn.Module):
    """A 'model' whose forward only logs its name; the fake timer below reports a scripted latency for it."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_interleaved_measurement_and_ratios(monkeypatch):
    """Warm-up, interleaved rotating rounds, auto run count and the documented ratios, on a fake clock."""
    log, cost = [], {"slow": 20.0, "fast": 10.0}
    drift = iter(range(1000))

    def fake_timer(device):
        def timed(fn):
            fn()
            return cost[log[-1]] * (1 + next(drift) / 100)  # the machine slows down: paired ratios see through it
        return timed

    monkeypatch.setattr(P.timing, "_timer", fake_timer)
    s = P.Settings(size=(2, 2), warmup=2, runs=6)
    lat, warm = P.measure({"slow": _Scripted("slow", log), "fast": _Scripted("fast", log)}, 3, s)
    assert log[:4] == ["slow", "slow", "fast", "fast"]  # warm-up, per model
    rounds = [log[4 + 2 * i: 6 + 2 * i] for i in range(6)]
    assert rounds == [["slow", "fast"], ["fast", "slow"]] * 3  # rotating order
    assert lat["slow"]["runs"] == lat["fast"]["runs"] == 6 and set(warm) == {"slow", "fast"}
    assert lat["fast"]["images_per_s"] == pytest.approx(3e3 / lat["fast"]["median_ms"])
    c = P.ratios(lat["slow"], lat["fast"], {"flops": 200, "params": 10}, {"flops": 100, "params": 5})
    assert c["flops_reduction"] == 2.0 and c["params_ratio"] == 0.5
    assert c["speedup"] == pytest.approx(lat["slow"]["median_ms"] / lat["fast"]["median_ms"])
    assert c["speedup_paired"] == pytest.approx(2.0, rel=0.02)
    assert c["efficiency"] == pytest.approx(c["speedup"] / 2)
    assert c["time_savings_efficiency"] == pytest.approx((1 - 1 / c["speedup"]) / 0.5)
    log.clear()
    monkeypatch.setattr(P.timing, "_timer", lambda device: lambda fn: (fn(), cost[log[-1]])[1])  # no drift
    auto = P.Settings(size=(2, 2), warmup=1, runs=0, min_runs=3, min_time=0.5)
    lat, _ = P.measure({"slow": _Scripted("slow", log), "fast": _Scripted("fast", log)}, 1, auto)
    assert lat["slow"]["runs"] == 25  # ceil(0.5 s / the slowest model's last warm-up, 20 ms)


def test_summary_percentiles():
    s = P.summarize([5.0, 1.0, 4.0, 2.0, 3.0], batch=4)
    assert (s["median_ms"], s["p25_ms"], s["p75_ms"], s["min_ms"]) == (3.0, 2.0, 4.0, 1.0)
    assert s["iqr_pct"] == pytest.approx(100 * 2 / 3) and s["images_per_s"] == pytest.approx(4000 / 3)


def test_layer_profile_leaves_no_hooks(run_dir):
    model = npdg.load_model(run_dir / "final.pt").eval()
    prof = P.layer_profile(model, 1, P.Settings(size=SIZE, profile_runs=1))
    assert prof["flops"] == flops(model, SIZE)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{bad}"], "is not an npdg model file"),
    (["--checkpoint", "{text}"], "is not an npdg model file"),
    (["--checkpoint", "{missing}"], "does not exist"),
    (["--checkpoint", "{empty_dir}"], "has no dense.pt / final.pt"),
    (["--sweep", "resnet_9000"], "unknown model 'resnet_9000'; available: deeplab"),
    (["--checkpoint", "{bad}", "--size", "0x64"], "too small"),
    (["--checkpoint", "{bad}", "--size", "32"], "expected HxW"),
    (["--checkpoint", "{bad}", "--batch", "0"], "must be >= 1"),
    (["--checkpoint", "{bad}", "--batch", "-2"], "must be >= 1"),
    (["--sweep", "deeplabv3plus_r18", "--ratios", "0,1.5"], "--ratios: every value must be in [0.0, 1.0)"),
    (["--sweep", "deeplabv3plus_r18", "--round_to", "0"], "--round_to: every value must be >= 1"),
    (["--sweep", "deeplabv3plus_r18", "--compare", "x.pt"], "--compare needs --checkpoint"),
    (["--checkpoint", "{bad}", "--device", "tpu"], "unknown device"),
    ([], "one of the arguments --checkpoint --sweep is required"),
    (["--checkpoint", "{bad}", "--runtime", "tensorrt"], "--runtime: unknown runtime tensorrt (use eager, compile"),
    (["--sweep", "deeplabv3plus_r18", "--runtime", "onnxruntime", "--dtype", "bf16"], "fp32 models only"),
])
def test_bad_input_one_line_exit_2(args, message, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, bad)  # a torch file, but not an npdg model
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    fill = {"{bad}": str(bad), "{text}": str(tmp_path / "t.txt"), "{missing}": str(tmp_path / "nope.pt"),
            "{empty_dir}": str(tmp_path / "empty")}
    code, out, err = _run([fill.get(a, a) for a in args], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("python -m npdg.profile: error:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(run_dir, capsys):
    code, _, err = _run(["--checkpoint", str(run_dir), "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and "CUDA is not available" in err


def test_runtimes_side_by_side(run_dir, tmp_path, capsys):
    """Dense and pruned in eager PyTorch and ONNX Runtime, one interleaved run: per-runtime S and E."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    code, out, err = _run(["--checkpoint", str(run_dir), *FAST, "--profile-runs", "0", "--runtime", "eager",
                           "onnxruntime", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["runtimes"] == ["eager", "onnxruntime"] and rep["versions"]["onnxruntime"]
    r = rep["models"]["dense"]["flops"] / rep["models"]["pruned"]["flops"]
    for rt in ("eager", "onnxruntime"):
        lat, c = rep["by_runtime"][rt]["latency"]["1"], rep["by_runtime"][rt]["comparison"]["1"]
        assert lat["dense"]["runs"] == lat["pruned"]["runs"] == 3
        assert c["speedup"] == pytest.approx(lat["dense"]["median_ms"] / lat["pruned"]["median_ms"])
        assert c["efficiency"] == pytest.approx(c["speedup"] / r)
        x = rep["vs_first_runtime"]["1"][rt]["pruned"]
        assert x == pytest.approx(rep["by_runtime"]["eager"]["latency"]["1"]["pruned"]["median_ms"]
                                  / lat["pruned"]["median_ms"])
    assert rep["latency"] == rep["by_runtime"]["eager"]["latency"]  # the first runtime, as without --runtime
    for label in ("dense", "pruned"):
        info = rep["runtime_info"]["1"][f"{label}|onnxruntime"]
        assert info["providers"] == ["CPUExecutionProvider"] and info["intra_op_threads"] == 1
        assert info["max_abs_diff"] <= 1e-4 * info["logit_scale"]  # the export was checked
    assert "[onnxruntime]" in out and "pruned x eager" in out


def test_sweep_round_to_per_runtime(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    code, out, err = _run(["--sweep", "deeplabv3plus_r18", "--ratios", "0,0.3", "--round_to", "1,16", *FAST,
                           "--runtime", "eager", "onnxruntime", "--json", str(tmp_path / "w.json")], capsys)
    assert code == 0, err
    pts = json.loads((tmp_path / "w.json").read_text())["points"]
    assert [(p["runtime"], p["ratio"], p["round_to"]) for p in pts] == [
        (rt, r, k) for rt in ("eager", "onnxruntime") for k in (1, 16) for r in (0, 0.3)]
    for p in pts:
        assert p["efficiency"] == pytest.approx(p["speedup"] / p["flops_reduction"])
        if p["ratio"] == 0:
            assert p["speedup"] == 1.0


@pytest.mark.parametrize("missing, pip", [("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"),
                                          ("openvino", "openvino")])
def test_missing_runtime_exit_2_names_pip_package(missing, pip, run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: find_spec -> None, import fails
    runtime = "openvino" if missing == "openvino" else "onnxruntime"
    code, out, err = _run(["--checkpoint", str(run_dir), *FAST, "--runtime", "eager", runtime], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("python -m npdg.profile: error:") and f"pip install {pip}" in err
    assert not out  # failed before measuring anything


@pytest.mark.parametrize("device, asked, inside", [("cuda", True, True), ("cuda", False, False),
                                                   ("cpu", True, False)])
def test_cudnn_algorithm_choice_set_for_the_measurement_and_restored(device, asked, inside):
    """On CUDA the measurement runs with cuDNN's algorithms timed per shape (Settings.cudnn_benchmark, the default)
    or its heuristics (--no-cudnn-benchmark); the flag is restored afterwards; the CPU leaves it alone."""
    from npdg.profile.timing import _Measuring

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        report = {}
        with _Measuring(P.Settings(device=device, cudnn_benchmark=asked), report):
            assert torch.backends.cudnn.benchmark is inside
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_cudnn_option_reaches_the_report(monkeypatch, tmp_path, capsys):
    """--no-cudnn-benchmark lands in the settings (and the JSON); the default is on; a CUDA report's header names
    how cuDNN chose (a report from before the setting existed: its heuristics)."""
    from npdg.profile import __main__ as cli_main
    from npdg.profile.report import _cudnn

    seen = []
    monkeypatch.setattr(P, "sweep", lambda *a, **k: seen.append(a[3]) or {"stub": True})
    monkeypatch.setattr(P, "format_report", lambda rep, top: "")
    for extra, want in (([], True), (["--no-cudnn-benchmark"], False), (["--cudnn-benchmark"], True)):
        assert cli_main.main(["--sweep", "deeplabv3plus_r18", *extra]) == 0
        assert seen[-1].cudnn_benchmark is want
    assert _cudnn({"cudnn_benchmark": True}) == ", cuDNN algorithms timed per shape"
    assert _cudnn({"cudnn_benchmark": False}) == _cudnn({}) == ", cuDNN heuristics"
