"""What every command (``npdg.train|eval|data|profile|dsp|report``) does when something goes wrong.

Expected errors — bad data, bad config or CLI values, missing or unreadable files, unknown names, an
untrusted checkpoint, a full disk — print ONE line naming the file/key and the problem and exit with
code 2; a NaN/inf stop exits 1; Ctrl-C exits 130. ``--debug`` (or ``NPDG_DEBUG=1``) re-raises instead,
with the traceback. Anything else is a bug and keeps its traceback.

    def main(argv=None):
        args = parser.parse_args(argv)
        return cli.guard(parser.prog, args.debug, lambda: _run(args))
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

# errno values that mean "this cannot be written here" rather than a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM, errno.EISDIR, errno.ENOTDIR}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse's default prints the whole usage first); exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def format_help(self):
        if callable(self.epilog):  # an epilog that costs work (e.g. reading source files) is built on --help only
            self.epilog = self.epilog()
        return super().format_help()


def int_at_least(low: int):
    """argparse type: an int >= low, with a one-line error."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
        return v

    parse.__name__ = f"int>={low}"  # argparse names the type in "invalid <name> value"
    return parse


def float_in(low: float, high: float):
    """argparse type: a float in [low, high], with a one-line error."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in [{low}, {high}], got {text!r}") from None
        if not low <= v <= high:  # (NaN fails too)
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text!r}")
        return v

    parse.__name__ = f"float in [{low}, {high}]"
    return parse


class UsageError(ValueError):
    """A command-line value that parsed but cannot be used (a CUDA device on a machine without one, ...)."""


def resolve_device(name: str):
    """torch.device for cpu | cuda | cuda:N; UsageError when this machine does not have it."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name} requested, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r} (use cpu, cuda or cuda:N)")
    return device


def add_debug(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input, not the program (imported late: no import cycles)."""
    from npdg.checkpoint import CheckpointError
    from npdg.data import DatasetError, SpecError
    from npdg.data.predictions import PredictionError
    from npdg.knobs import ConfigError
    from npdg.models.pretrained import PretrainedError
    from npdg.models.registry import UnknownModelError
    from npdg.pruning import PruningError

    return (UsageError, CheckpointError, ConfigError, DatasetError, SpecError, UnknownModelError, PruningError,
            PretrainedError, PredictionError,
            FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. An exception re-raised from a DataLoader worker carries the
    worker's whole traceback; its last line is the original message."""
    text = str(exc).strip().strip("'\"") if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
    if "Original Traceback" in text:
        text = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", text.strip())
    text = " ".join(text.split()) or type(exc).__name__
    return text[:1000]


def _loader_failure(exc: BaseException) -> bool:
    return "DataLoader worker" in str(exc) or "DataLoader timed out" in str(exc)


def classify(exc: BaseException) -> int | None:
    """Exit code for an expected error, None for a bug."""
    from npdg.loop import NonFiniteError

    if isinstance(exc, NonFiniteError):
        return 1
    if isinstance(exc, user_errors()):
        return 2
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return 2
    if isinstance(exc, RuntimeError) and _loader_failure(exc):
        return 1  # a worker process died (killed, out of memory, segfault) or hung past data_timeout
    return None


def message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        hint = ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            hint = (" (files written before are intact; free space or choose another output, then rerun — "
                    "a training run continues with --resume)")
        return f"cannot access {exc.filename or 'the output'}: {exc.strerror}{hint}"
    if isinstance(exc, RuntimeError) and "DataLoader timed out" in str(exc):
        return (f"{one_line(exc)}: a data-loading worker hung (raise --data_timeout for slow storage; rerun "
                "with --workers 0 or --debug to see where) — a training run continues with --resume")
    if isinstance(exc, RuntimeError) and _loader_failure(exc):
        return (f"a data-loading worker died ({one_line(exc)}); rerun with --workers 0 (or --debug) to see "
                "why — a training run continues with --resume")
    return one_line(exc)


def guard(prog: str, debug: bool, body):
    """``body()``'s result, or the exit code of an expected error after printing it as one line."""
    debug = debug or os.environ.get("NPDG_DEBUG", "") not in ("", "0")
    try:
        return body()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = classify(exc)
        if debug or code is None:
            raise
        print(f"{prog}: error: {message(exc)}", file=sys.stderr)
        return code


_FIELD = re.compile(r"^    (\w+): [^=]+= .+?(?:  # (.*))?$")


def keys_help(cls, source_file) -> str:
    """The config keys of dataclass ``cls`` written in ``source_file`` as help text: its ``# --- heading`` lines,
    then one line per key, ``--key=DEFAULT`` and the first sentence of its comment (the source is the one place
    they are written)."""
    import textwrap
    from pathlib import Path

    defaults, out, lines = vars(cls()), [], Path(source_file).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    # --- "):
            out.append("\n" + re.split(r" \(|;|\. ", line[len("    # --- "):])[0] + ":")
        elif (m := _FIELD.match(line)) and m.group(1) in defaults:
            name, comment = m.groups()
            for more in lines[i + 1:]:  # the comment's continuation lines
                if not more.startswith("    #   "):
                    break
                comment += " " + more[len("    #   "):]
            default = defaults[name]
            shown = "x".join(map(str, default)) if isinstance(default, tuple) else (
                ",".join(default) if isinstance(default, list) else default)
            note = re.split(r"(?<!e\.g)(?<!i\.e)\. ", comment or "")[0]  # the first sentence
            out.append(f"  --{name}={shown}".ljust(30) + " " + textwrap.shorten(note, 88, placeholder=" ..."))
    return "\n".join(line.rstrip() for line in out).strip("\n")
