"""npdg.report's table of finished runs: one row per run, then the seed means."""

import json

from npdg.report import compare_runs, main


def _metrics(path, method, seed, source, fog, flops, lam=0.4):
    miou = {"synthetic:source": source, "synthetic:fog": fog}
    path.write_text(json.dumps({
        "method": method, "config": {"seed": seed, "lam": lam, "source": "synthetic:source",
                                     "targets": ["synthetic:fog"]},
        "dense": {"miou": miou, "flops": 4e9, "params": 2e6},
        "final": {"miou": miou, "flops": flops, "params": 1e6}, "unseen_mean": {"final": fog}}))
    return path


def test_rows_then_seed_means(tmp_path):
    files = [_metrics(tmp_path / "a.json", "npdg", 0, 30.0, 10.0, 2e9),
             _metrics(tmp_path / "b.json", "npdg", 1, 34.0, 13.0, 3e9),
             _metrics(tmp_path / "c.json", "npdg", 0, 50.0, 50.0, 4e9, lam=1.0),
             _metrics(tmp_path / "d.json", "erm", 0, 40.0, 20.0, 4e9)]
    lines = compare_runs(files).splitlines()
    assert lines[0] == ("| run | source | fog | unseen mean | final GFLOPs (vs dense) | final params M (vs dense) |")
    assert lines[2] == "| npdg λ=0.4 · seed 0 | 30.00 | 10.00 | **10.00** | 2.000 (50%) | 1.00 (50%) |"
    assert lines[5] == "| erm · seed 0 | 40.00 | 20.00 | **20.00** | 4.000 (100%) | 1.00 (50%) |"
    # only λ=0.4 npdg has two seeds; λ=1 and erm are alone and get no mean row
    assert lines[6:] == ["| npdg λ=0.4 · mean of seeds 0, 1 | 32.00 | 11.50 | **11.50** | 2.500 (62%) | 1.00 (50%) |",
                         "", "mIoU definition: labels_present (npdg.metrics)"]  # files without the key: legacy


def test_the_table_names_the_mIoU_definition_and_flags_a_mix(tmp_path):
    old = _metrics(tmp_path / "a.json", "erm", 0, 40.0, 20.0, 4e9)
    new = _metrics(tmp_path / "b.json", "erm", 1, 40.0, 20.0, 4e9)
    new.write_text(json.dumps({**json.loads(new.read_text()), "miou_definition": "standard"}))
    assert compare_runs([new]).splitlines()[-1] == "mIoU definition: standard (npdg.metrics)"
    assert "MIXED" in compare_runs([old, new]).splitlines()[-1]


def test_cli_prints_the_table_and_refuses_a_half_written_file(tmp_path, capsys):
    good = _metrics(tmp_path / "a.json", "erm", 0, 40.0, 20.0, 4e9)
    assert main([str(good)]) == 0
    assert "| erm · seed 0 |" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"method": "erm"')
    assert main([str(bad)]) == 2
    assert "not the metrics of a finished npdg run" in capsys.readouterr().err


def test_steps_are_what_ran_with_the_config_as_fallback():
    from types import SimpleNamespace

    from npdg.report import stage_steps

    npdg_cfg = SimpleNamespace(iters=200, finetune_iters=60, prunes=True)
    erm_cfg = SimpleNamespace(iters=260, finetune_iters=60, prunes=False)
    assert stage_steps(npdg_cfg, {"steps": {"train": 7, "finetune": 3}}) == {"train": 7, "finetune": 3}
    # a run resumed from a checkpoint written before the record existed: its config (the stages ran to the end)
    assert stage_steps(npdg_cfg, {"steps": {"train": 7}}) == {"train": 7, "finetune": 60}
    assert stage_steps(erm_cfg, {}) == {"train": 260, "finetune": 0}  # no prune: no fine-tuning steps
