"""End-to-end smoke of the training CLI on a tiny synthetic run (CPU, seconds)."""

import json

import pytest

from npdg import load_model
from npdg.train import main

TINY = ["--iters=4", "--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0",
        "--batch_size=2", "--log_every=2", "--targets=synthetic:fog,synthetic:night"]


def test_train_writes_run_dir(tmp_path):
    out = tmp_path / "run"
    metrics = main(TINY + ["--out", str(out)])
    for name in ("config.json", "metrics.json", "checkpoint.pt", "model.pt", "report.md", "loss.png",
                 "train_log.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["domains"].keys() == {"synthetic:source", "synthetic:fog", "synthetic:night"}
    for res in saved["domains"].values():
        assert 0.0 <= res["miou"] <= 100.0
    assert metrics["train_images_per_s"] > 0
    assert json.loads((out / "config.json").read_text())["iters"] == 4
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    model = load_model(out / "checkpoint.pt")  # the training checkpoint loads as a model too
    assert model.registry_name == "deeplabv3plus_r18"


def test_bad_target_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--targets=synthetic:nowhere", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "unknown synthetic domain" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_bad_override_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--itres=3"])
    assert "unknown config key 'itres'" in capsys.readouterr().err
