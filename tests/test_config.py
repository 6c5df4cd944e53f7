import json

import pytest

from npdg.config import Config, load_config, parse_overrides, save_config


def test_defaults_validate():
    cfg = load_config()
    assert cfg == Config().validate()


def test_yaml_then_cli_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("iters: 50\nmodel: segformer_b0\ncrop: [64, 128]\n")
    cfg = load_config(path, ["--iters=7", "--amp", "--targets", "synthetic:fog,synthetic:night"])
    assert cfg.iters == 7 and cfg.model == "segformer_b0" and cfg.crop == (64, 128)
    assert cfg.amp is True and cfg.targets == ["synthetic:fog", "synthetic:night"]


def test_parse_overrides_forms():
    assert parse_overrides(["--a=1", "--b", "x", "--flag", "--c=2"]) == {"a": "1", "b": "x", "flag": "true", "c": "2"}
    with pytest.raises(ValueError, match="expected --key"):
        parse_overrides(["iters=3"])


@pytest.mark.parametrize("override, match", [
    (["--nope=1"], "unknown config key 'nope'"),
    (["--iters=abc"], "cannot read 'abc'"),
    (["--iters=0"], "iters must be positive"),
    (["--method=magic"], "method='magic'"),
    (["--crop=64"], "crop must be two positive ints"),
    (["--amp=maybe"], "cannot read 'maybe'"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises((KeyError, ValueError), match=match):
        load_config(None, override)


def test_missing_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_save_roundtrip(tmp_path):
    cfg = load_config(None, ["--iters=3"])
    save_config(cfg, tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["iters"] == 3 and load_config(None, {k: v for k, v in data.items()}) == cfg
