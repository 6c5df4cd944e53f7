"""The run directory's files, written atomically, read without executing code.

Every file goes to ``NAME.tmp`` first, is fsynced, then renamed over ``NAME``: a kill or a full disk
mid-write leaves the previous version intact. Checkpoints are plain data + tensors and are read with
``torch.load(weights_only=True)``, so a file carrying a pickled object is refused, never run.

The resumable state of a training run (``checkpoint.pt``):

    {"format": "npdg-run/1", "version": npdg.__version__, "config": {...},
     "stage": name of the stage to run (or continue), "step": steps of that stage already done,
     "model": npdg model payload, "optimizer"/"scheduler": state dicts or None,
     "dsp": {"state": ..., "optimizer": ...} or None, "sensitivity": {group: tensor} or None,
     "rng": {"torch": ByteTensor, "cuda": [...]}, "history": {"losses": {stage: [...]}, ...}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

RUN_FORMAT = "npdg-run/1"
STATE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A file that is not what it claims to be (wrong format, untrusted content, unreadable)."""


def _atomic(path: Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save(obj, path) -> None:
    """torch.save(obj, path), atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def load(path, what: str = "checkpoint"):
    """torch.load(path, weights_only=True) with errors that name the file instead of a traceback."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for truncation
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot be read as an npdg {what} ({first[:200]})") from exc


def load_state(run_dir) -> dict:
    """The resumable state of a run directory; a clear error if the folder is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such directory")
    path = run_dir / STATE
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: not a run directory (no {STATE})")
    state = load(path)
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an {RUN_FORMAT} checkpoint (format {found!r})")
    return state


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
