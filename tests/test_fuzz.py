"""Hypothesis fuzzing: malformed folders/images/labels for the folder loader, malformed arguments for every
CLI. Nothing may crash with an unexpected exception, hang (a per-example deadline), or leave a partial
output file (``*.tmp``) behind. The heavy work behind each CLI is replaced by a stub: the fuzz targets
parsing, validation and file reading, which is where malformed input lands."""

import io
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from npdg.data import DatasetError, SpecError, build_dataset

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FUZZ = settings(max_examples=int(os.environ.get("NPDG_FUZZ_EXAMPLES", "150")), deadline=timedelta(seconds=30),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=True)
EXPECTED = (DatasetError, SpecError, FileNotFoundError)  # what the loader may raise: one line, naming the file

# --- the folder loader ------------------------------------------------------------------------------


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


sizes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def image_bytes(draw, size):
    kind = draw(st.sampled_from(["rgb", "rgba", "grey", "jpeg", "garbage", "empty", "truncated", "other_size"]))
    h, w = size
    if kind == "other_size":
        h, w = draw(sizes)
    rgb = draw(st.integers(0, 255).map(lambda v: np.full((h, w, 3), v, np.uint8)))
    if kind in ("rgb", "other_size"):
        return _png(rgb)
    if kind == "rgba":
        return _png(np.dstack([rgb, rgb[..., :1]]))
    if kind == "grey":
        return _png(rgb[..., 0])
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG")
        return buf.getvalue()
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=64))
    if kind == "empty":
        return b""
    data = _png(rgb)
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def label_bytes(draw, size):
    kind = draw(st.sampled_from(["ids", "ids", "bad_ids", "rgb", "i16", "other_size", "garbage", "truncated",
                                 "missing"]))
    h, w = draw(sizes) if kind == "other_size" else size
    ids = np.array(draw(st.lists(st.sampled_from(list(range(19)) + [255]), min_size=h * w, max_size=h * w)),
                   np.uint8).reshape(h, w)
    if kind in ("ids", "other_size"):
        return _png(ids)
    if kind == "bad_ids":
        ids[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(st.integers(19, 254))
        return _png(ids)
    if kind == "rgb":
        return _png(np.dstack([ids] * 3))
    if kind == "i16":
        return _png(ids.astype(np.uint16) * draw(st.sampled_from([1, 300])))  # a 16-bit grey PNG
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=64))
    if kind == "truncated":
        data = _png(ids)
        return data[: draw(st.integers(0, len(data) - 1))]
    return None  # no label file


@st.composite
def folders(draw):
    """[(stem, image bytes, image suffix, label bytes or None)] plus structural damage."""
    n = draw(st.integers(0, 3))
    samples = []
    for i in range(n):
        size = draw(sizes)
        suffix = draw(st.sampled_from([".png", ".jpg", ".PNG"]))
        samples.append((f"s{i}", draw(image_bytes(size)), suffix, draw(label_bytes(size))))
    damage = draw(st.sampled_from(["none", "none", "no_labels_dir", "no_images_dir", "labels_is_file",
                                   "stray_files"]))
    return samples, damage


def _write(root: Path, samples, damage):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, img, suffix, lab in samples:
        (root / "images" / f"{stem}{suffix}").write_bytes(img)
        if lab is not None:
            (root / "labels" / f"{stem}.png").write_bytes(lab)
    if damage == "no_labels_dir":
        for p in (root / "labels").iterdir():
            p.unlink()
        (root / "labels").rmdir()
    elif damage == "no_images_dir":
        for p in (root / "images").iterdir():
            p.unlink()
        (root / "images").rmdir()
    elif damage == "labels_is_file":
        for p in (root / "labels").iterdir():
            p.unlink()
        (root / "labels").rmdir()
        (root / "labels").write_text("not a folder")
    elif damage == "stray_files":
        (root / "images" / "notes.txt").write_text("x")
        (root / "images" / "sub.png").mkdir()


@FUZZ
@given(folders(), st.sampled_from([None, (8, 10)]))
def test_folder_loader_fuzz(folder, size):
    samples, damage = folder
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        _write(root, samples, damage)
        try:
            ds = build_dataset(f"folder:{root}", size=size)
        except EXPECTED:
            return
        for i in range(len(ds)):
            try:
                image, label = ds[i]
            except EXPECTED as exc:
                assert str(root) in str(exc)  # the message names the file
                continue
            assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
            assert label.dtype == torch.int64 and label.shape == image.shape[1:]
            assert set(label.unique().tolist()) <= set(range(19)) | {255}
            if size is not None:
                assert tuple(image.shape[1:]) == size


# --- every CLI -----------------------------------------------------------------------------------------


def _values():
    return st.one_of(
        st.integers(-3, 40).map(str), st.sampled_from(["0", "1", "-1", "0.5", "1.5", "nan", "inf", "-inf", "1e9"]),
        st.sampled_from(["", "x", "96x", "0x0", "8x8", "32x64", "axb", "3x-4", "a,b", "true", "off"]),
        st.sampled_from(["synthetic:source", "synthetic:nope", "folder:/no/such", "kitti:x", "cpu", "cuda",
                         "cuda:3", "tpu", "{model}", "{dir}", "{text}", "/no/such.pt", "{out}/o.json",
                         "{out}/o.png"]),
        st.text(max_size=8))


@st.composite
def argv(draw, flags: dict, positional=()):
    """Arguments for one CLI: each flag with a plausible value 3/4 of the time and a malformed one otherwise,
    now and then an unknown flag or a flag without its value."""
    out = list(draw(st.sampled_from(positional))) if positional else []
    for _ in range(draw(st.integers(0, 6))):
        flag = draw(st.sampled_from(sorted(flags)))
        if draw(st.integers(0, 9)) == 0:
            flag = draw(st.sampled_from(["--nope", "--debug-not", "-x", "--"]))
        plausible = st.sampled_from(flags.get(flag) or ["1"])
        value = draw(st.one_of(plausible, plausible, plausible, _values()))  # malformed a quarter of the time
        form = draw(st.sampled_from(["pair"] * 6 + ["eq"] * 3 + ["bare"]))
        out += {"pair": [flag, value], "eq": [f"{flag}={value}"], "bare": [flag]}[form]
    return out


def _fill(args, files):
    out = []
    for a in args:
        for key in ("model", "dir", "text", "out"):
            a = a.replace("{" + key + "}", files[key])
        out.append(a)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import npdg
    from npdg.models import create_model

    base = tmp_path_factory.mktemp("fuzz")
    npdg.save_model(create_model("segformer_b0", num_classes=19), base / "model.pt")
    (base / "text.txt").write_text("hello")
    (base / "dir").mkdir()
    (base / "out").mkdir()
    return {"model": str(base / "model.pt"), "dir": str(base / "dir"), "text": str(base / "text.txt"),
            "out": str(base / "out"), "base": base}


def _call(main, args, capsys):
    """(exit code, stderr) of one CLI call; any exception other than SystemExit fails the test."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    code = 0 if code is None or isinstance(code, dict) else code
    return code, capsys.readouterr().err


def _check(code, err, files):
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error:" in lines[0], err
    leftovers = [p for p in Path(files["base"]).rglob("*.tmp")]
    assert not leftovers, leftovers


@pytest.fixture
def stubbed(monkeypatch, files):
    """Replace the long-running work of each CLI with a stub that returns at once; relative output paths
    land in a scratch folder, which must hold no temporary file afterwards."""
    monkeypatch.chdir(files["out"])
    import npdg.data.__main__ as data_cli
    import npdg.dsp.__main__ as dsp_cli
    import npdg.eval as eval_cli
    import npdg.profile as profile_cli
    import npdg.train as train_cli

    monkeypatch.setattr(train_cli, "train", lambda cfg, resume=None: {})
    monkeypatch.setattr(eval_cli, "evaluate", lambda *a, **k: {"miou": 0.0, "per_class": {}})
    monkeypatch.setattr(eval_cli, "format_table", lambda results: "table")
    monkeypatch.setattr(profile_cli, "sweep", lambda *a, **k: {})
    monkeypatch.setattr(profile_cli, "profile_checkpoints", lambda *a, **k: {})
    monkeypatch.setattr(profile_cli, "format_report", lambda *a, **k: "report")
    monkeypatch.setattr(profile_cli, "plot_report", lambda *a, **k: None)
    monkeypatch.setattr(data_cli, "export", lambda *a, **k: Path("x"))
    monkeypatch.setattr(data_cli, "preview", lambda *a, **k: Path("x"))
    monkeypatch.setattr(dsp_cli, "train", lambda *a, **k: {"total": 0.0})
    monkeypatch.setattr(dsp_cli, "preview_columns", lambda *a, **k: [])
    monkeypatch.setattr(dsp_cli, "save_grid", lambda *a, **k: Path("x"))
    monkeypatch.setattr(dsp_cli, "build_dataset", lambda *a, **k: _tiny_dataset(*a, **k))


def _tiny_dataset(spec, **kwargs):
    kwargs["num"] = min(kwargs.get("num") or 2, 2)
    kwargs["size"] = (16, 16)
    return build_dataset(spec, **kwargs)


SIZES = ["32x64", "16x16", "8x8"]
TRAIN_FLAGS = {"--iters": ["1", "5"], "--model": ["segformer_b0", "deeplabv3plus_r18", "vgg16_deeplab"],
               "--method": ["erm", "slimming", "dsp", "npdg"], "--ratio": ["0", "0.3", "0.99"], "--lam": ["0", "1"],
               "--sens_k": ["2", "4"], "--crop": SIZES, "--targets": ["synthetic:fog", "synthetic:fog,synthetic:rain"],
               "--source": ["synthetic:source", "folder:{dir}"], "--round_to": ["1", "8"], "--dsp_beta": ["0", "1e-3"],
               "--adv_steps": ["0", "2"], "--optimizer": ["sgd", "adamw"], "--preset": ["quick", "gta5_cityscapes_r50"],
               "--config": ["{text}", "{dir}"], "--resume": ["{dir}"], "--generator": ["{model}"],
               "--device": ["cpu", "auto"], "--dsp_level": ["feature", "image"], "--lr": ["0.01"],
               "--batch_size": ["2"], "--workers": ["0", "2"], "--amp": ["true", "false"], "--itres": ["3"],
               "--eval_size": SIZES, "--threshold": ["0.1"], "--sens_precision": ["tf32"], "--out": ["{out}/r"]}
EVAL_FLAGS = {"--checkpoint": ["{model}", "{text}"], "--data": ["synthetic:fog", "folder:{dir}", "gta5:{dir}"],
              "--split": ["val", "train", "all"], "--json": ["{out}/e.json"], "--size": SIZES, "--num": ["1", "2"],
              "--seed": ["0", "3"], "--batch-size": ["1", "4"], "--workers": ["0", "1"], "--sliding": [],
              "--window": SIZES, "--stride": SIZES, "--device": ["cpu", "cuda"]}
PROFILE_FLAGS = {"--checkpoint": ["{model}", "{dir}"], "--sweep": ["segformer_b0"], "--compare": ["{model}"],
                 "--device": ["cpu", "cuda"], "--batch": ["1", "2"], "--size": SIZES, "--dtype": ["fp32", "bf16"],
                 "--warmup": ["1"], "--runs": ["0", "2"], "--min-runs": ["1"], "--ratios": ["0,0.3", "0.5"],
                 "--round_to": ["1,8"], "--layers-at": ["0.3"], "--json": ["{out}/p.json"], "--plot": ["{out}/p.png"],
                 "--threads": ["1"]}
DATA_FLAGS = {"--domain": ["fog", "source"], "--split": ["val", "train"], "--num": ["1", "2"],
              "--out": ["{out}/d", "{out}/d.png"], "--size": SIZES, "--seed": ["0"]}
DSP_FLAGS = {"--out": ["{out}/g"], "--source": ["synthetic:source", "folder:{dir}"], "--preset": ["quick"],
             "--iters": ["1"], "--size": SIZES, "--batch": ["2"], "--lr": ["1e-3"], "--width": ["8"],
             "--depth": ["2", "3"], "--num": ["2"], "--encoder_weights": ["{model}", "{text}"], "--beta": ["0"],
             "--checkpoint": ["{dir}", "{model}"], "--styles": ["1"], "--adv_steps": ["0", "1"],
             "--model_checkpoint": ["{model}"], "--device": ["cpu", "cuda"], "--threads": ["1"]}


OUTCOMES: dict = {}  # (cli, exit code) -> count, printed at the end of the module with -s


def _fuzz_cli(main, flags, positional, files, capsys, data):
    args = _fill(data.draw(argv(flags, positional)), files)
    code, err = _call(main, args, capsys)
    _check(code, err, files)
    key = (main.__module__, code)
    OUTCOMES[key] = OUTCOMES.get(key, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    if OUTCOMES:
        print("\nCLI fuzz outcomes (module, exit code): count —", dict(sorted(OUTCOMES.items())))


@FUZZ
@given(data=st.data())
def test_train_cli_fuzz(stubbed, files, capsys, data):
    from npdg.train import main

    _fuzz_cli(main, TRAIN_FLAGS, (), files, capsys, data)


@FUZZ
@given(data=st.data())
def test_eval_cli_fuzz(stubbed, files, capsys, data):
    from npdg.eval import main

    base = [("--checkpoint", "{model}", "--data", "synthetic:source"), ()]
    _fuzz_cli(main, EVAL_FLAGS, base, files, capsys, data)


@FUZZ
@given(data=st.data())
def test_profile_cli_fuzz(stubbed, files, capsys, data):
    from npdg.profile import main

    _fuzz_cli(main, PROFILE_FLAGS, [("--checkpoint", "{model}"), ("--sweep", "segformer_b0"), ()], files, capsys,
              data)


@FUZZ
@given(data=st.data())
def test_data_cli_fuzz(stubbed, files, capsys, data):
    from npdg.data.__main__ import main

    _fuzz_cli(main, DATA_FLAGS, [("export",), ("preview",), ("export", "--domain", "fog", "--num", "1", "--out",
                                                             "{out}/e")], files, capsys, data)


@FUZZ
@given(data=st.data())
def test_dsp_cli_fuzz(stubbed, files, capsys, data):
    from npdg.dsp.__main__ import main

    _fuzz_cli(main, DSP_FLAGS, [("train", "--out", "{out}/g"), ("preview", "--checkpoint", "{dir}", "--out",
                                                                "{out}/p.png"), ("train",)], files, capsys, data)
