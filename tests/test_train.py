"""End-to-end runs of the training CLI on tiny synthetic problems (CPU, seconds each)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import interrupt_fit_at

import npdg
from npdg import load_model
from npdg.config import available_presets, load_config
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = ["--iters=4", "--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0",
        "--batch_size=2", "--log_every=2", "--targets=synthetic:fog,synthetic:night", "--finetune_iters=2",
        "--sens_every=2", "--sens_batch=2", "--sens_k=2", "--ckpt_every=2"]
RUN_FILES = ("config.json", "metrics.json", "checkpoint.pt", "dense.pt", "final.pt", "report.md", "loss.png",
             "train_log.jsonl")


def _state_dict(path):
    return load_model(path).state_dict()


def test_erm_writes_run_dir(tmp_path):
    out = tmp_path / "run"
    metrics = main(TINY + ["--method=erm", "--out", str(out)])
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "erm" and saved["miou_unit"] == "percent"
    for key in ("dense", "final"):
        assert saved[key]["miou"].keys() == {"synthetic:source", "synthetic:fog", "synthetic:night"}
        assert all(0.0 <= v <= 100.0 for v in saved[key]["miou"].values())
        assert saved[key]["flops"] > 0 and saved[key]["params"] > 0
    assert saved["final"]["flops"] == saved["dense"]["flops"]  # erm does not prune
    assert metrics["train"]["images_per_s"]["train"] > 0
    assert json.loads((out / "config.json").read_text())["iters"] == 4
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("train", 2), ("train", 4)]
    dense, final = _state_dict(out / "dense.pt"), _state_dict(out / "final.pt")
    assert all(torch.equal(dense[k], final[k]) for k in dense)
    assert load_model(out / "checkpoint.pt").registry_name == "deeplabv3plus_r18"
    for name in ("dense.pt", "final.pt", "checkpoint.pt"):  # every file records who wrote it and how
        payload = torch.load(out / name, weights_only=True)
        assert payload["version"] == npdg.__version__
        assert (payload.get("extra") or payload)["config"]["iters"] == 4


def test_slimming_prunes_and_compacts(tmp_path):
    out = tmp_path / "slim"
    main(TINY + ["--method=slimming", "--ratio=0.5", "--round_to=4", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    dense, final = load_model(out / "dense.pt"), load_model(out / "final.pt")
    assert saved["final"]["widths"] == final.widths()
    assert saved["final"]["sizes"] == dense.widths()
    assert sum(final.widths().values()) < sum(dense.widths().values())
    assert all(w % 4 == 0 or w == dense.widths()[g] for g, w in final.widths().items())
    assert saved["final"]["flops"] < saved["dense"]["flops"]
    assert saved["final"]["params"] < saved["dense"]["params"]
    assert (out / "kept.png").is_file()
    stages = {json.loads(line)["stage"] for line in (out / "train_log.jsonl").read_text().splitlines()}
    assert stages == {"train", "finetune"}
    assert "| dense |" in (out / "report.md").read_text()


def test_dsp_warmup_trains_the_first_steps_unperturbed(tmp_path):
    out = tmp_path / "warm"
    main(TINY + ["--method=npdg", "--dsp_warmup=0.5", "--log_every=1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    perturbed = {(r["stage"], r["step"]): "dsp_pert" in r and "adv_loss0" in r for r in rows if "loss" in r}
    assert perturbed == {("train", 1): False, ("train", 2): False, ("train", 3): True, ("train", 4): True,
                         ("finetune", 1): True, ("finetune", 2): True}  # the warm-up is the train stage's
    assert all(r["dsp_recon"] > 0 for r in rows if "loss" in r)  # the D-VAE learns during the warm-up too
    # the report says whether the prune removed the style-sensitive units (mean w of pruned vs kept)
    pk = json.loads((out / "metrics.json").read_text())["final"]["sensitivity_pruned_vs_kept"]
    assert pk["units_pruned"] > 0 and pk["units_kept"] > 0 and pk["pruned"] > 0 and pk["kept"] > 0
    assert "style sensitivity (last pass, mean w): pruned units" in (out / "report.md").read_text()


class _Interrupt(BaseException):
    pass


@pytest.mark.parametrize("where", ["between_stages", "inside_finetune", "inside_train"])
def test_resume_matches_uninterrupted(tmp_path, monkeypatch, where):
    args = TINY + ["--method=slimming", "--ratio=0.5", "--round_to=4", "--iters=6", "--finetune_iters=4"]
    main(args + ["--out", str(tmp_path / "whole")])

    import npdg.train

    if where == "between_stages":

        def stage_prune(self, *a, **k):
            raise _Interrupt

        monkeypatch.setattr(npdg.train.Run, "stage_prune", stage_prune)
    else:
        stage = "finetune" if where == "inside_finetune" else "train"
        interrupt_fit_at(monkeypatch, stage, 3, _Interrupt)  # after the checkpoint at step cut_at - 1
    with pytest.raises(_Interrupt):
        main(args + ["--out", str(tmp_path / "cut")])
    monkeypatch.undo()
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    expected = {"between_stages": ("prune", 0), "inside_finetune": ("finetune", 2), "inside_train": ("train", 2)}
    assert (state["stage"], state["step"]) == expected[where]
    main(["--resume", str(tmp_path / "cut")])

    whole, cut = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "cut"))
    assert whole.keys() == cut.keys()
    assert whole["final"]["widths"] == cut["final"]["widths"]
    a, b = _state_dict(tmp_path / "whole" / "final.pt"), _state_dict(tmp_path / "cut" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must reproduce the uninterrupted one"
    assert whole["final"]["miou"] == cut["final"]["miou"]


def test_resume_of_finished_run_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "run"
    main(TINY + ["--method=erm", "--out", str(out)])
    before = (out / "final.pt").stat().st_mtime_ns
    metrics = main(["--resume", str(out)])
    assert metrics["method"] == "erm"
    assert (out / "final.pt").stat().st_mtime_ns == before
    assert "already complete" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--ratio=1.0"], "ratio must be in [0, 1)"),
    (["--ratio=-0.1"], "ratio must be in [0, 1)"),
    (["--round_to=0"], "round_to must be >= 1"),
    (["--threshold=-1"], "threshold must be in [0"),
    (["--lam=1.5"], "lam must be in [0, 1]"),
    (["--sens_k=1"], "sens_k must be >= 2"),
    (["--dsp_beta=-1"], "dsp_beta must be in [0"),
    (["--adv_steps=-1"], "adv_steps must be >= 0"),
    (["--dsp_warmup=1.5"], "dsp_warmup must be in [0, 1]"),
    (["--finetune_iters=-2"], "finetune_iters must be >= 0 (or -1"),
    (["--method=magic"], "method='magic'"),
    (["--itres=3"], "unknown config key 'itres'; did you mean 'iters'?"),
    (["--preset=nope"], "preset='nope'"),
    (["--generator=/no/such.pt"], "generator: file not found"),
])
def test_bad_config_is_a_usage_error(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as exc:
        main(TINY + bad + ["--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_target_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--targets=synthetic:nowhere", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "unknown synthetic domain" in capsys.readouterr().err
    assert not (tmp_path / "r" / "dense.pt").exists()


def test_resume_needs_a_run_dir(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "keep.txt").write_text("x")
    for target in (tmp_path / "notarun", tmp_path / "missing"):
        with pytest.raises(SystemExit) as exc:
            main(["--resume", str(target)])
        assert exc.value.code == 2
        assert str(target) in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "notarun").iterdir()) == ["keep.txt"]


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    main(TINY + ["--method=erm", "--out", str(out)])
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--method=erm", "--out", str(out)])
    assert exc.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_finetune_iters_default_per_method():
    assert load_config(overrides=["--method=slimming"]).finetune_iters == 150
    npdg = load_config(overrides=["--method=npdg"])
    assert (npdg.iters, npdg.finetune_iters) == (60, 200)  # prunes early: the compact network trains with DSP
    assert load_config(overrides=["--method=npdg", "--iters=7"]).iters == 7
    for method in ("erm", "dsp"):  # the default budget: 260 steps in all (issue 32)
        assert load_config(overrides=[f"--method={method}"]).iters == 260
    assert load_config(overrides=["--method=slimming"]).iters == 110  # + 150 fine-tuning
    for method in ("erm", "dsp", "slimming"):  # budget off: the per-method stage lengths
        assert load_config(overrides=[f"--method={method}", "--budget=0"]).iters == 200
    assert load_config(overrides=["--method=slimming", "--finetune_iters=7"]).finetune_iters == 7
    assert load_config(overrides=["--preset=quick", "--method=slimming"]).finetune_iters == 20


@pytest.mark.parametrize("name", available_presets())
def test_presets_load_and_validate(name):
    cfg = load_config(overrides=[f"--preset={name}"])
    assert cfg.preset == name
    if name.startswith("gta5"):
        assert cfg.source.startswith("gta5:") and cfg.iters >= 10000
        assert {t.split(":")[0] for t in cfg.targets} == {"cityscapes", "bdd100k", "mapillary"}
        from npdg.models import available_models

        assert cfg.model in available_models()


def test_ddp_two_cpu_processes_slimming(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo) through every slimming stage (rank 0 chooses the masks and
    broadcasts them)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "npdg.train",
           *TINY, "--method=slimming", "--device=cpu", "--ratio=0.5", "--round_to=4", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"]["flops"] < saved["dense"]["flops"]
    assert load_model(out / "final.pt").widths() == saved["final"]["widths"]


def _nan_at(monkeypatch, stage, step):
    """Make the loss of one step NaN."""
    import npdg.loop
    import npdg.run

    original_fit = npdg.loop.fit

    def fit(ctx, name, model, dataset, loss_fn, *a, **k):
        def poisoned(net, s, images, labels):
            loss, logs = loss_fn(net, s, images, labels)
            return (loss * float("nan") if (name, s) == (stage, step) else loss), logs

        return original_fit(ctx, name, model, dataset, poisoned, *a, **k)

    monkeypatch.setattr(npdg.run, "fit", fit)  # (the stage machine calls fit)


def test_nan_loss_stops_with_stage_and_step(tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, "train", 3)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--method=erm", "--out", str(out)])
    assert exc.value.code == 1
    assert "stage 'train', step 3: the loss became non-finite" in capsys.readouterr().err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["stage"], state["step"]) == ("train", 2)  # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in state["model"]["state_dict"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_and_logs(tmp_path, monkeypatch):
    _nan_at(monkeypatch, "train", 3)
    out = tmp_path / "run"
    main(TINY + ["--method=erm", "--skip_nonfinite=1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"stage": "train", "step": 3, "skipped": "loss"} in rows
    assert (out / "final.pt").is_file()
