"""Reliability: bad input is one line + exit 2 on every CLI, untrusted files never run, worker crashes
surface, and no output file is ever left half-written."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import npdg
from npdg import checkpoint, cli
from npdg.data import DatasetError, build_dataset
from npdg.data.__main__ import export

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

ROOT = Path(__file__).parents[1]
SIZE = (24, 40)
TINY_TRAIN = ["--iters=2", "--train_num=4", "--val_num=1", "--crop=32x48", "--eval_size=32x48", "--workers=0",
              "--batch_size=2", "--targets=synthetic:fog", "--finetune_iters=1", "--method=erm",
              "--model=segformer_b0"]


# --- files that carry code -------------------------------------------------------------------------


class _Payload:
    """Unpickling this object runs Path(marker).touch() — the classic __reduce__ attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def evil(tmp_path):
    """(file path, marker path): a torch file whose unpickling would create the marker."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": "npdg-model/1", "payload": _Payload(marker)}, path)
    # sanity: the payload really runs when a file is loaded without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_pickled_payload_is_refused_everywhere_and_never_runs(evil, tmp_path, capsys):
    path, marker = evil
    with pytest.raises(checkpoint.CheckpointError, match=r"evil\.pt: refused .* pickled Python object \(getattr\)"):
        npdg.load_model(path)
    from npdg.dsp.generator import load_generator

    with pytest.raises(checkpoint.CheckpointError):
        load_generator(path)
    run = tmp_path / "run"
    run.mkdir()
    os.replace(tmp_path / "evil.pt", run / checkpoint.STATE)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_state(run)
    evil_file = run / checkpoint.STATE

    from npdg.eval import main as eval_main
    from npdg.profile import main as profile_main
    from npdg.train import main as train_main

    assert eval_main(["--checkpoint", str(evil_file), "--data", "synthetic:source", "--num", "1"]) == 2
    assert "refused" in capsys.readouterr().err
    assert profile_main(["--checkpoint", str(evil_file), "--size", "32x32"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_main(["--resume", str(run)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err
    assert not marker.exists(), "a pickled payload ran"


def test_incompatible_format_version_says_so(tmp_path):
    from npdg.models import create_model
    from npdg.serialization import model_payload

    payload = model_payload(create_model("segformer_b0", num_classes=3))
    assert payload["version"] == npdg.__version__
    payload["format"], payload["version"] = "npdg-model/2", "9.0.0"
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"format npdg-model/2 by npdg 9\.0\.0.*reads npdg-model/1"):
        npdg.load_model(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not an npdg model file"):
        npdg.load_model(tmp_path / "other.pt")
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "npdg-run/7", "version": "3.1"}, run / checkpoint.STATE)
    with pytest.raises(checkpoint.CheckpointError, match="format npdg-run/7 by npdg 3.1"):
        checkpoint.load_state(run)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    from npdg.models import create_model

    path = tmp_path / "m.pt"
    npdg.save_model(create_model("segformer_b0", num_classes=3), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="m.pt: cannot be read"):
        npdg.load_model(path)


# --- bad data: one line, exit code 2, through the CLIs ---------------------------------------------


def _folder(tmp_path, n=2):
    return export("painted", "val", n, tmp_path / "ds", size=SIZE, progress=False)


def _break(root: Path, kind: str):
    """Damage a valid folder dataset in one way; returns the text the error must contain."""
    images, labels = sorted((root / "images").iterdir()), sorted((root / "labels").iterdir())
    if kind == "corrupt_image":
        images[0].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
        return f"{images[0]}: cannot read image"
    if kind == "truncated_image":
        images[1].write_bytes(images[1].read_bytes()[:60])
        return f"{images[1]}: cannot read image"
    if kind == "label_size":
        Image.fromarray(np.zeros((SIZE[0] + 3, SIZE[1]), np.uint8)).save(labels[0])
        return "does not match image"
    if kind == "label_ids":
        Image.fromarray(np.full(SIZE, 77, np.uint8)).save(labels[1])
        return "label ids [77] are not defined"
    if kind == "missing_label":
        labels[0].unlink()
        return "has no label"
    if kind == "empty":
        for p in images:
            p.unlink()
        return "no images found"
    if kind == "no_images_dir":
        for p in images:
            p.unlink()
        (root / "images").rmdir()
        return "does not exist"
    raise AssertionError(kind)


BAD_DATA = ["corrupt_image", "truncated_image", "label_size", "label_ids", "missing_label", "empty", "no_images_dir"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from npdg.models import create_model

    path = tmp_path_factory.mktemp("m") / "model.pt"
    npdg.save_model(create_model("segformer_b0", num_classes=19).eval(), path)
    return path


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_eval_is_one_line(tmp_path, capsys, model_file, kind, workers):
    root = _folder(tmp_path)
    expected = _break(root, kind)
    from npdg.eval import main

    out = tmp_path / "out.json"
    code = main(["--checkpoint", str(model_file), "--data", f"folder:{root}", "--workers", str(workers),
                 "--batch_size", "1", "--json", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["corrupt_image", "label_ids", "empty"])
def test_bad_data_train_is_one_line_and_debug_shows_traceback(tmp_path, capsys, kind):
    root = _folder(tmp_path, n=4)
    expected = _break(root, kind)
    from npdg.train import main

    args = TINY_TRAIN + [f"--source=folder:{root}", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]  # (beside the stage's progress bar)
    assert exc.value.code == 2 and len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    with pytest.raises(DatasetError, match="folder|cannot read|not defined"):
        main(args[:-1] + [str(tmp_path / "run2"), "--debug"])


def test_unreadable_image_is_one_line(tmp_path, monkeypatch, capsys, model_file):
    """Permissions: this machine runs tests as root, where chmod 000 still reads; so the open is refused
    the way the kernel refuses it (EACCES) for that one file."""
    root = _folder(tmp_path)
    victim = sorted((root / "images").iterdir())[0]
    os.chmod(victim, 0)
    import npdg.data.base as base

    real_open = base.Image.open

    def refusing_open(fp, *a, **k):
        if Path(fp) == victim:
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(base.Image, "open", refusing_open)
    from npdg.eval import main

    assert main(["--checkpoint", str(model_file), "--data", f"folder:{root}", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{victim}: cannot read image" in err and "Permission denied" in err


def test_missing_split_file_is_one_line(tmp_path, capsys, model_file):
    (tmp_path / "gta" / "images").mkdir(parents=True)
    (tmp_path / "gta" / "labels").mkdir()
    from npdg.eval import main

    assert main(["--checkpoint", str(model_file), "--data", f"gta5:{tmp_path / 'gta'}", "--split", "val"]) == 2
    assert "needs the list file" in capsys.readouterr().err


# --- every CLI: one line for user errors, --debug for the traceback --------------------------------


CLI_ERRORS = [
    ("npdg.eval", ["--checkpoint", "/no/such.pt", "--data", "synthetic:source"], "does not exist"),
    ("npdg.eval", ["--checkpoint", "/no/such.pt", "--data", "synthetic:source", "--device", "cuda:7"], "cuda"),
    ("npdg.profile", ["--sweep", "resnet_nope"], "unknown model"),
    ("npdg.profile", ["--checkpoint", "/no/such.pt"], "does not exist"),
    ("npdg.dsp", ["preview", "--checkpoint", "/no/such.pt", "--out", "x.png"], "does not exist"),
    ("npdg.train", ["--model=resnet_nope"], "unknown model"),
    ("npdg.train", ["--resume", "/no/such/run"], "no such directory"),
    ("npdg.report", ["/no/such/run"], "not found"),
    ("npdg.data", ["export", "--domain", "fog", "--num", "1", "--out", "/sys/npdg-cannot-write"],
     "cannot access /sys/npdg-cannot-write: operation not permitted"),
]


def _main(module):
    import importlib

    return importlib.import_module(module + (".__main__" if module in ("npdg.data", "npdg.dsp") else "")).main


@pytest.mark.parametrize("module, args, expected", CLI_ERRORS, ids=[f"{m}-{a[0]}{i}" for i, (m, a, _) in
                                                                     enumerate(CLI_ERRORS)])
def test_cli_user_error_is_one_line_exit_2(module, args, expected, tmp_path, monkeypatch, capsys):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NPDG_DEBUG", raising=False)
    main = _main(module)
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and expected in err.lower() and "Traceback" not in err, err
    with pytest.raises(Exception) as debug:  # --debug: the exception itself, for its traceback
        main(args + ["--debug"])
    assert not isinstance(debug.value, SystemExit)


@pytest.mark.parametrize("module, args", [("npdg.train", ["--resume", "/no/such/run"]),
                                          ("npdg.eval", ["--checkpoint", "/no/such.pt", "--data", "synthetic:fog"])])
def test_cli_exit_codes_in_a_real_process(module, args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPDG_DEBUG": ""}
    run = [sys.executable, "-m", module, *args]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run(run + ["--debug"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr[-2000:]


def test_guard_classifies():
    from npdg.loop import NonFiniteError

    assert cli.classify(DatasetError("x")) == 2
    assert cli.classify(OSError(errno.ENOSPC, "No space left on device", "f")) == 2
    assert cli.classify(NonFiniteError("nan")) == 1
    assert cli.classify(RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly")) == 1
    assert cli.classify(RuntimeError("a bug")) is None and cli.classify(ValueError("a bug")) is None
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most "
                           "recent call last):\n  File \"x.py\", line 1\n"
                           "npdg.data.base.DatasetError: a.png: cannot read image")
    assert cli.one_line(wrapped) == "a.png: cannot read image"
    assert cli.guard("p", False, lambda: 7) == 7
    with pytest.raises(RuntimeError):
        cli.guard("p", False, lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


# --- a DataLoader worker that dies ------------------------------------------------------------------


_CRASHING_RUN = """
import os, signal, sys
import npdg.run as t
real = t.train_dataset
def crashing(cfg):
    ds = real(cfg)
    get = type(ds).__getitem__
    class Crash(type(ds)):
        def __getitem__(self, i):
            import torch.utils.data as d
            if d.get_worker_info() is not None:   # inside a worker process: die the hard way, or hang
                if os.environ["NPDG_TEST_WORKER"] == "hang":
                    import time
                    time.sleep(3600)
                os.kill(os.getpid(), signal.SIGKILL)
            return get(self, i)
    ds.__class__ = Crash
    return ds
t.train_dataset = crashing
import npdg.train
npdg.train.main(sys.argv[1:])
"""


@pytest.mark.parametrize("how, message", [("kill", "a data-loading worker died"),
                                          ("hang", "DataLoader timed out after 3 seconds: a data-loading worker hung")])
def test_dataloader_worker_crash_is_an_error_not_a_hang(tmp_path, how, message):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPDG_TEST_WORKER": how}
    args = [a for a in TINY_TRAIN if not a.startswith("--workers")] + ["--workers=1", "--data_timeout=3",
                                                                        "--out", str(tmp_path / "r")]
    proc = subprocess.run([sys.executable, "-c", _CRASHING_RUN, *args], capture_output=True, text=True,
                          timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message in proc.stderr and "--resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint.load_state(tmp_path / "r")["stage"] == "train"  # the run is resumable


# --- full disk / unwritable output -----------------------------------------------------------------


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    checkpoint.save({"step": 1}, path)

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as exc:
        checkpoint.save({"step": 2}, path)
    assert cli.classify(exc.value) == 2 and "No space left" in cli.message(exc.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no .tmp left behind


def test_every_output_writer_is_atomic(tmp_path, monkeypatch):
    """Each writer goes through checkpoint.atomic: a failure mid-write leaves the old file and no temp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    writers = {
        "a.json": lambda p: checkpoint.write_json(p, {"x": 1}),
        "a.txt": lambda p: checkpoint.write_text(p, "x"),
        "a.png": lambda p: checkpoint.save_figure(fig, p),
        "b.png": lambda p: checkpoint.save_image(np.zeros((4, 4), np.uint8), p),
        "a.pt": lambda p: checkpoint.save({"x": 1}, p),
    }
    for name, write in writers.items():
        write(tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(checkpoint.os, "fsync", boom)
    for name, write in writers.items():
        with pytest.raises(OSError):
            write(tmp_path / name)
    plt.close(fig)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_build_dataset_errors_name_the_file(tmp_path):
    root = _folder(tmp_path)
    _break(root, "label_ids")
    ds = build_dataset(f"folder:{root}")
    with pytest.raises(DatasetError, match=str(sorted((root / "labels").iterdir())[1])):
        ds[1]
    assert json.dumps(ds[0][1].unique().tolist())  # the good sample still loads


# --- SIGKILL at random moments, including inside a checkpoint write; --resume finishes the run -------


_KILLABLE = """
import os, sys, time
pause_at = int(os.environ.get("NPDG_TEST_PAUSE_AT", "0"))
if pause_at:  # stop inside the pause_at-th checkpoint write (temp file written + fsynced, not yet renamed)
    real_replace, seen = os.replace, [0]
    def replace(src, dst, *a, **k):
        if str(dst).endswith("checkpoint.pt"):
            seen[0] += 1
            if seen[0] == pause_at:
                open(os.environ["NPDG_TEST_MARKER"], "w").close()
                time.sleep(600)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
from npdg.train import main
main(sys.argv[1:])
"""
KILL_RUN = ["--iters=10", "--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0",
            "--batch_size=2", "--targets=synthetic:fog", "--finetune_iters=6", "--method=npdg", "--ratio=0.5",
            "--round_to=4", "--sens_every=2", "--sens_batch=2", "--sens_k=2", "--ckpt_every=1", "--log_every=1"]


def _start(args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", _KILLABLE, *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_result(tmp_path):
    import random
    import signal
    import time

    whole = tmp_path / "whole"
    proc = _start(KILL_RUN + ["--out", str(whole)])
    t0 = time.monotonic()
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    duration = time.monotonic() - t0

    cut, marker = tmp_path / "cut", tmp_path / "paused"
    rng = random.Random(0)
    # (kind, value): "write" = kill while the process sits inside its value-th checkpoint write;
    # "time" = kill after value x the uninterrupted run's duration
    plan = [("write", 2), ("time", rng.uniform(0.05, 0.25)), ("write", 3), ("time", rng.uniform(0.1, 0.3)),
            ("write", 12), ("time", rng.uniform(0.05, 0.25))]  # the 12th write of a resumed run: fine-tuning
    kills, in_write, stages = 0, 0, []
    for kind, value in plan:
        args = ["--resume", str(cut)] if (cut / checkpoint.STATE).exists() else KILL_RUN + ["--out", str(cut)]
        marker.unlink(missing_ok=True)
        env = {"NPDG_TEST_PAUSE_AT": str(value), "NPDG_TEST_MARKER": str(marker)} if kind == "write" else {}
        proc = _start(args, env)
        deadline = time.monotonic() + (600 if kind == "write" else value * duration)
        while time.monotonic() < deadline and proc.poll() is None and not (kind == "write" and marker.exists()):
            time.sleep(0.02)
        if proc.poll() is not None:  # finished before the kill: nothing left to interrupt
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        in_write += kind == "write"
        if (cut / checkpoint.STATE).exists():  # the last checkpoint is always loadable
            state = checkpoint.load_state(cut)
            stages.append((state["stage"], state["step"]))
            npdg.load_model(cut / checkpoint.STATE)
    assert kills >= 5 and in_write >= 3, (kills, in_write)
    assert len(stages) >= kills - 1  # only a kill in the first seconds may precede the first checkpoint
    if not (cut / "metrics.json").exists():
        proc = _start(["--resume", str(cut)])
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert a["final"]["miou"] == b["final"]["miou"] and a["final"]["widths"] == b["final"]["widths"]
    x, y = (npdg.load_model(d / "final.pt").state_dict() for d in (whole, cut))
    assert all(torch.equal(x[k], y[k]) for k in x), "the killed-and-resumed run differs from the uninterrupted one"
    print(f"survived {kills} SIGKILLs ({in_write} inside a checkpoint write); checkpoints seen: {stages}")


def test_disk_full_during_a_run_is_one_line_and_resume_finishes(tmp_path, monkeypatch, capsys):
    from npdg.train import main

    out = tmp_path / "run"
    real_save, writes = torch.save, []

    def filling_disk(obj, f, *a, **k):
        if str(getattr(f, "name", "")).endswith("checkpoint.pt.tmp"):
            writes.append(1)
            if len(writes) == 3:  # the third checkpoint write: the disk is full
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device", f.name)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", filling_disk)
    args = [a for a in TINY_TRAIN if not a.startswith("--iters")] + ["--iters=4", "--ckpt_every=1"]
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert exc.value.code == 2 and len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    monkeypatch.undo()
    state = checkpoint.load_state(out)  # the previous checkpoint, intact
    assert (state["stage"], state["step"]) == ("train", 1)
    assert not list(out.glob("*.tmp"))
    assert main(["--resume", str(out)])["method"] == "erm"
