"""npdg.compare: runs paired by seed, the mean paired difference B − A and its 95 % t-interval, refusals of
unfair or bad input; and --budget: every method runs the same number of optimiser steps in total."""

import json
import math

import pytest

from npdg.compare import compare, main

# t(0.975, 2 dof) by hand: with 2 dof the quantile is closed-form, (2p - 1) * sqrt(2 / (4p(1 - p))) = 4.3026527...
T_975_2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
TARGETS = ["synthetic:fog", "synthetic:night"]


def _metrics(path, method, seed, source, fog, night, steps=(200, 0), with_steps=True):
    """A finished run's metrics.json, by hand: unseen mean = (fog + night) / 2."""
    miou = {"synthetic:source": source, "synthetic:fog": fog, "synthetic:night": night}
    m = {"method": method,
         "config": {"seed": seed, "method": method, "source": "synthetic:source", "targets": TARGETS,
                    "iters": steps[0], "finetune_iters": steps[1] or 60},
         "dense": {"miou": miou}, "final": {"miou": miou}, "unseen_mean": {"final": (fog + night) / 2}}
    if with_steps:
        m["steps"] = {"train": steps[0], "finetune": steps[1]}
    path.write_text(json.dumps(m))
    return path


def _sets(tmp_path, b_source=(11.0, 22.0, 33.0), extra_a_seed=True):
    """A: erm seeds 0, 1, 2 (+ 5); B: npdg seeds 2, 0, 1 (file order != seed order). Source diffs B − A = 1, 2, 3;
    fog diffs 0, 0, 6 -> unseen-mean diffs 0, 0, 3 (night equal)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for seed, source in zip((0, 1, 2), (10.0, 20.0, 30.0), strict=True):
        _metrics(tmp_path / "a" / f"erm-s{seed}.json", "erm", seed, source, 20.0, 10.0, steps=(260, 0))
    if extra_a_seed:
        _metrics(tmp_path / "a" / "erm-s5.json", "erm", 5, 99.0, 99.0, 99.0, steps=(260, 0))
    for name, seed, source, fog in (("x", 2, b_source[2], 26.0), ("y", 0, b_source[0], 20.0),
                                    ("z", 1, b_source[1], 20.0)):
        _metrics(tmp_path / "b" / f"{name}.json", "npdg", seed, source, fog, 10.0, steps=(200, 60))
    return str(tmp_path / "a" / "*.json"), str(tmp_path / "b" / "*.json")


def test_mean_paired_difference_and_t_interval_by_hand(tmp_path):
    a, b = _sets(tmp_path)
    r = compare(a, b)
    src = r["metrics"]["source"]
    assert r["seeds"] == [0, 1, 2] and src["n"] == 3
    assert src["diff"] == [1.0, 2.0, 3.0]  # paired by seed, not by file order
    assert src["mean_diff"] == pytest.approx(2.0) and src["sd"] == pytest.approx(1.0)  # sd over n - 1
    assert src["t"] == pytest.approx(T_975_2, abs=1e-9) and src["t"] == pytest.approx(4.3026527, abs=1e-7)
    half = T_975_2 * 1.0 / math.sqrt(3)  # 2.48414...
    assert src["half_width"] == pytest.approx(half) and src["half_width"] == pytest.approx(2.484, abs=5e-4)
    assert src["ci"] == pytest.approx([2.0 - half, 2.0 + half])
    assert (src["mean_a"], src["mean_b"]) == (pytest.approx(20.0), pytest.approx(22.0))
    uns = r["metrics"]["unseen_mean"]  # diffs 0, 0, 3: mean 1, sd sqrt((1 + 1 + 4) / 2) = sqrt(3)
    assert uns["diff"] == [0.0, 0.0, 3.0]
    assert uns["mean_diff"] == pytest.approx(1.0) and uns["sd"] == pytest.approx(math.sqrt(3))
    assert uns["half_width"] == pytest.approx(T_975_2)  # t * sqrt(3) / sqrt(3)
    fog, night = r["targets"]["synthetic:fog"], r["targets"]["synthetic:night"]
    assert fog["mean_diff"] == pytest.approx(2.0) and fog["sd"] == pytest.approx(math.sqrt(12))
    assert night["mean_diff"] == 0.0 and night["half_width"] == 0.0


def test_a_seed_in_one_set_only_is_left_out_and_said(tmp_path, capsys):
    a, b = _sets(tmp_path)
    r = compare(a, b)
    assert r["left_out"] == {"a_only": [5], "b_only": []}
    assert 99.0 not in r["metrics"]["source"]["a"]
    assert main([a, b]) == 0
    out = capsys.readouterr().out
    assert "seed 5 only in A" in out and "n = 3: seeds 0, 1, 2" in out
    assert "| 0 | 10.00 | 11.00 | +1.00 | 15.00 | 15.00 | +0.00 | 260 / 260 |" in out
    assert "| source | 20.00 | 22.00 | +2.00 | [-0.48, +4.48] (±2.48) | 3 |" in out
    assert "equal totals" in out


def test_one_shared_seed_has_no_interval(tmp_path, capsys):
    _metrics(tmp_path / "a.json", "erm", 3, 10.0, 20.0, 10.0)
    _metrics(tmp_path / "b.json", "dsp", 3, 12.0, 20.0, 10.0)
    r = compare(str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert r["metrics"]["source"]["mean_diff"] == 2.0 and r["metrics"]["source"]["ci"] is None
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "n = 1: no interval" in capsys.readouterr().out


def test_unequal_total_steps_are_refused_unless_allowed(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    _metrics(tmp_path / "a" / "erm-s0.json", "erm", 0, 40.0, 20.0, 10.0, steps=(200, 0), with_steps=False)
    _metrics(tmp_path / "npdg-s0.json", "npdg", 0, 35.0, 22.0, 12.0, steps=(200, 60))
    a, b = str(tmp_path / "a" / "erm-s*.json"), str(tmp_path / "npdg-s*.json")
    assert main([a, b]) == 2  # (erm's config says finetune_iters 60, but erm does not fine-tune: 200 steps)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "seed 0: A 200 (train 200) vs B 260 (train 200 + fine-tune 60)" in err and "--allow_unequal" in err
    assert main([a, b, "--allow_unequal", "--json", str(tmp_path / "out.json")]) == 0
    assert "UNEQUAL totals" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["unequal_steps"] and saved["metrics"]["source"]["diff"] == [-5.0]


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    a, b = _sets(tmp_path)
    (tmp_path / "c").mkdir()
    _metrics(tmp_path / "c" / "s7.json", "npdg", 7, 1.0, 1.0, 1.0, steps=(200, 60))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "metrics.json").write_text('{"method": "erm", "final": {"miou"')
    (tmp_path / "twice").mkdir()
    for name in ("p", "q"):
        _metrics(tmp_path / "twice" / f"{name}.json", "npdg", 0, 1.0, 1.0, 1.0, steps=(200, 60))
    cases = [([str(tmp_path / "nothing-*.json"), b], "no runs match"),
             ([a, str(tmp_path / "c" / "*.json")], "no shared seeds"),
             ([a, str(tmp_path / "half")], "not the metrics of a finished npdg run"),
             ([a, str(tmp_path / "twice" / "*.json")], "seed 0 appears twice")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


# --- --budget: equal total steps, end to end ----------------------------------------------------------------

@pytest.mark.usefixtures("one_intra_op_thread")
def test_budget_gives_every_method_the_same_total_steps(tmp_path, capsys):
    from test_train import TINY  # (tests/ is on sys.path)

    from npdg.train import main as train

    budget = ["--budget=6", "--finetune_iters=2", "--log_every=1", "--ckpt_every=100"]
    for method in ("erm", "npdg"):
        train(TINY + budget + [f"--method={method}", "--seed=0", "--out", str(tmp_path / method)])
    for method, steps in (("erm", {"train": 6, "finetune": 0}), ("npdg", {"train": 4, "finetune": 2})):
        out = tmp_path / method
        assert json.loads((out / "metrics.json").read_text())["steps"] == steps
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        ran = {stage: max([r["step"] for r in rows if r.get("stage") == stage and "loss" in r], default=0)
               for stage in ("train", "finetune")}
        assert ran == steps, method  # what fit actually ran (log_every=1: a row per step)
        assert json.loads((out / "config.json").read_text())["iters"] == steps["train"]
    capsys.readouterr()
    assert main([str(tmp_path / "erm"), str(tmp_path / "npdg")]) == 0
    assert "6 / 6 |" in capsys.readouterr().out


@pytest.mark.parametrize("bad, message", [
    (["--method=npdg", "--budget=2", "--finetune_iters=2"], "budget=2 must exceed finetune_iters=2"),
    (["--method=slimming", "--finetune_iters=-1", "--budget=100"], "budget=100 must exceed finetune_iters=150"),
    (["--budget=-2"], "budget must be >= 0"),
])
def test_bad_budget_is_a_config_error(tmp_path, capsys, bad, message):
    from test_train import TINY

    from npdg.train import main as train

    with pytest.raises(SystemExit) as exc:
        train(TINY + bad + ["--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_budget_resolves_the_train_stage():
    from npdg.config import load_config

    assert load_config(overrides=["--method=erm", "--budget=260"]).iters == 260  # no prune: all steps train
    assert load_config(overrides=["--method=dsp", "--budget=260", "--iters=50"]).iters == 260
    cfg = load_config(overrides=["--method=npdg", "--budget=260"])
    assert (cfg.iters, cfg.finetune_iters) == (60, 200)
    assert cfg.validate().iters == 60  # idempotent: a resumed run re-validates its saved config
    assert load_config(overrides=["--method=npdg", "--budget=780", "--finetune_iters=600"]).iters == 180
    assert load_config(overrides=["--method=slimming", "--budget=350"]).iters == 200
    assert load_config(overrides=["--method=npdg", "--iters=7"]).iters == 7  # budget 0: today's behaviour


def test_a_comma_joins_globs_from_two_folders(tmp_path):
    a, b = _sets(tmp_path, extra_a_seed=False)
    (tmp_path / "more").mkdir()
    _metrics(tmp_path / "more" / "erm-s3.json", "erm", 3, 40.0, 20.0, 10.0, steps=(260, 0))
    _metrics(tmp_path / "more" / "npdg-s3.json", "npdg", 3, 44.0, 20.0, 10.0, steps=(200, 60))
    r = compare(f"{a},{tmp_path / 'more' / 'erm-*.json'}", f"{b},{tmp_path / 'more' / 'npdg-*.json'}")
    assert r["seeds"] == [0, 1, 2, 3] and r["metrics"]["source"]["diff"] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(Exception, match="nothing-\\*.json: no runs match"):
        compare(f"{a},{tmp_path / 'nothing-*.json'}", b)


def test_runs_scored_under_different_miou_definitions_are_never_compared(tmp_path, capsys):
    """A file without miou_definition used the legacy mean (classes present in the labels); pairing it with a
    run of the standard mIoU would compare two metrics, so compare refuses and names both."""
    a, b = _sets(tmp_path)
    assert compare(a, b)["miou_definition"] == "labels_present"
    for f in (tmp_path / "b").glob("*.json"):
        f.write_text(json.dumps({**json.loads(f.read_text()), "miou_definition": "standard"}))
    code = main([a, b, "--allow_unequal"])
    err = capsys.readouterr().err
    assert code == 2 and "different mIoU definitions" in err and "labels_present" in err and "standard" in err
    for f in (tmp_path / "a").glob("*.json"):
        f.write_text(json.dumps({**json.loads(f.read_text()), "miou_definition": "standard"}))
    result = compare(a, b, allow_unequal=True)
    assert result["miou_definition"] == "standard"
    from npdg.compare import markdown

    assert "mIoU definition: standard" in markdown(result)
