"""The config a user sees (issue 35): at most 45 keys in npdg/config.py (the rarer knobs in npdg/knobs.py), both
listed by --help / --help_all, removed keys refused by name, and runs saved before the clean-up still resume."""

import dataclasses
import json
from pathlib import Path

import pytest

import npdg.run
from npdg import config, knobs
from npdg.config import Config, ConfigError, load_config
from npdg.train import main

KNOBS = {f.name for f in dataclasses.fields(knobs.Knobs)}
USER_KEYS = [f.name for f in dataclasses.fields(Config) if f.name not in KNOBS]


def test_config_py_shows_at_most_45_keys_in_at_most_300_lines():
    assert len(USER_KEYS) <= 45, USER_KEYS
    assert len(Path(config.__file__).read_text().splitlines()) <= 300
    assert not set(knobs.REMOVED) & {f.name for f in dataclasses.fields(Config)}


def test_help_lists_the_user_keys_and_help_all_the_knobs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for name in USER_KEYS:
        assert f"--{name}=" in shown, name
    assert "--dsp_latent=" not in shown and "--help_all" in shown
    assert "--budget=-1 " in shown and "--crop=96x192 " in shown  # the defaults, as the dataclass has them
    with pytest.raises(SystemExit) as exit_:
        main(["--help_all"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert f"--{f.name}=" in shown, f.name


@pytest.mark.parametrize("key", sorted(knobs.REMOVED))
def test_a_removed_key_is_refused_by_name(key, capsys):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'.*{key} was removed.*{knobs.REMOVED_AT}"):
        load_config(None, [f"--{key}=1"])
    with pytest.raises(SystemExit) as exit_:
        main([f"--{key}=1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{key}'" in err


def _resume_with(monkeypatch, tmp_path, saved: dict):
    monkeypatch.setattr(npdg.run.checkpoint, "load_state", lambda run_dir: {"config": saved})
    return npdg.run.prepare_run_dir(None, str(tmp_path))[0]


def test_a_run_saved_before_the_clean_up_resumes_as_it_ran(monkeypatch, tmp_path):
    # the config a real run saved before the clean-up: every removed key at its default of the day (sens_colour
    # true, eps_scale 1, lr_schedule stage, ...), and no dsp_branch / adv_scale (it ran the full step)
    saved = Path(__file__).resolve().parents[1] / "benches/results/fair_fast/segformer_b0/npdg_full-s0.json"
    before = json.loads(saved.read_text())["config"]
    assert set(knobs.REMOVED) <= set(before) and "dsp_branch" not in before and "adv_scale" not in before
    cfg = _resume_with(monkeypatch, tmp_path, before)
    assert cfg.dsp_branch is False and cfg.adv_scale == 1.0 and cfg.model == "segformer_b0"
    before = {k: v for k, v in load_config().to_dict().items() if k not in ("dsp_branch", "adv_scale")}
    before.update(swa=0.0, lr_schedule="stage", prune_fade=0.0, dsp_split_bn=False, dsp_local=0)  # removed, off
    cfg = _resume_with(monkeypatch, tmp_path, before)
    assert cfg.dsp_branch is False and cfg.adv_scale == 1.0 and cfg.iters == load_config().iters
    with pytest.raises(ConfigError, match=rf"swa=0.5, removed since .*{knobs.REMOVED_AT}"):
        _resume_with(monkeypatch, tmp_path, {**before, "swa": 0.5})


def test_the_fast_step_is_the_feature_level_default_and_off_in_the_paper_presets():
    cfg = load_config()
    assert cfg.dsp_branch is True and cfg.adv_scale == 0.25
    off = load_config(None, ["--dsp_copy=false"])
    assert off.dsp_branch is False and off.adv_scale == 0.25
    for preset in ("gta5_cityscapes_r50", "gta5_cityscapes_mitb5"):
        paper = load_config(None, [f"--preset={preset}"])
        assert paper.dsp_branch is False and paper.adv_scale == 1.0
    with pytest.raises(ConfigError, match="dsp_branch: .*dsp_copy"):
        load_config(None, ["--dsp_copy=false", "--dsp_branch"])
