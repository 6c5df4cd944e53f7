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
import re
from pathlib import Path

import torch

RUN_FORMAT = "npdg-run/1"
STATE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A file that is not what it claims to be (wrong format, untrusted content, unreadable)."""


def atomic(path: Path, write) -> None:
    """Write ``path`` with ``write(binary file)``: to NAME.tmp, fsynced, renamed over NAME."""
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
    atomic(path, lambda f: torch.save(obj, f))


def write_text(path, text: str) -> None:
    atomic(path, lambda f: f.write(text.encode()))


def write_json(path, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig, path, **kwargs) -> None:
    """fig.savefig(path), atomically (the format from the suffix, default png)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    atomic(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def save_image(image, path) -> None:
    """A PIL image (or uint8 array) as PNG/JPEG by suffix, atomically."""
    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    atomic(path, lambda f: image.save(f, format=fmt))


def load(path, what: str = "checkpoint"):
    """torch.load(path, weights_only=True) with errors that name the file instead of a traceback."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for truncation
        text = str(exc)
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsupported:
            raise CheckpointError(f"{path}: refused — it carries a pickled Python object ({unsupported.group(1)}) "
                                  "that could run code; npdg reads tensors and plain data only") from exc
        reason = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        first = reason.group(1) if reason else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot be read as an npdg {what} ({first.strip()[:200]})") from exc


def load_state(run_dir) -> dict:
    """The resumable state of a run directory; a clear error if the folder is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such directory")
    path = run_dir / STATE
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: not a run directory (no {STATE})")
    state = load(path)
    check_format(state, RUN_FORMAT, str(path))
    return state


def check_format(payload, expected: str, where: str) -> None:
    """CheckpointError unless ``payload`` is a dict of format ``expected`` ("kind/version"); a payload of
    the same kind but another version says which npdg wrote it."""
    found = payload.get("format") if isinstance(payload, dict) else None
    if found == expected:
        return
    kind = expected.split("/")[0]
    if isinstance(found, str) and found.split("/")[0] == kind:
        from npdg import __version__

        raise CheckpointError(f"{where}: written in format {found} by npdg {payload.get('version', '?')}; "
                              f"this npdg {__version__} reads {expected} only (use the npdg version that wrote it)")
    what = f"format {found!r}" if found is not None else (
        f"a {type(payload).__name__}" if not isinstance(payload, dict) else f"keys {sorted(map(str, payload))[:6]}")
    raise CheckpointError(f"{where}: not an npdg {kind.split('-')[-1]} file ({expected}); found {what}")


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
