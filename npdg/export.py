"""Export an npdg model file to ONNX or ``torch.export``, pruned widths included, and check the result.

    python -m npdg.export runs/x                        # runs/x/final.pt -> runs/x/final.onnx
    python -m npdg.export runs/x --which dense --format torch_export --height 256 --width 512
    python -m npdg.export model.pt --format onnx --out model.onnx --dynamic

CKPT is an npdg model file (``npdg.save_model``; a compacted pruned model keeps its pruned widths) or a
training checkpoint holding one; a run directory means its final.pt (``--which dense``: its dense.pt).

Formats (both from torch itself, no network needed):
    onnx          ``torch.onnx.export(dynamo=True)``: needs the pip packages ``onnx`` and ``onnxscript``;
                  the equality check runs the file in ONNX Runtime (pip package ``onnxruntime``).
    torch_export  ``torch.export.export`` + ``torch.export.save`` (a .pt2 archive; load it with
                  ``torch.export.load(path).module()``); needs nothing beyond torch.

The input is (batch, 3, H, W) fp32 (default 1x3x512x512); --dynamic makes batch, H and W dynamic (the
check then also runs at a second shape). Equality check: the exported model and PyTorch (eval mode, fp32)
run the same random input; it passes when max |logits_exported - logits_torch| <= --tol x max |logits_torch|
(default tol 1e-4). On success the file is renamed into place and its path and size are printed.

Bad input (a file that is not an npdg model, an unknown format, a missing package, a failed export or
equality check): one line on stderr naming the problem (the max difference for a failed check), exit
code 2, and no file left behind (the export is written to a temporary name and renamed only on success).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from npdg import cli

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
ONNX_OPSET = 18
PIP = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime", "openvino": "openvino"}


class ExportError(cli.UsageError):
    """An export that cannot be made or did not reproduce PyTorch's logits; the CLI prints one line, exit 2."""


class MissingPackage(ExportError):
    def __init__(self, package: str, what: str):
        super().__init__(f"{what} needs the Python package {package!r}, which is not installed "
                         f"(pip install {PIP.get(package, package)})")
        self.package = package


def require(module: str, what: str):
    """``import module`` or MissingPackage naming its pip package."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(module.split(".")[0], what) from None


def resolve_source(path, which: str = "final") -> Path:
    """The model file: `path` itself, or `path`/final.pt (dense.pt) for a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{which}.pt"
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    return path


def load(path) -> nn.Module:
    """An npdg model file as an eval-mode fp32 CPU model; ExportError for anything else."""
    import npdg

    try:
        model = npdg.load_model(path, map_location="cpu")
    except Exception as exc:  # torch.load / unpickling / format errors come as many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ExportError(f"{path} is not an npdg model file ({reason})") from None
    return model.eval().float()


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warnings; a CLI prints its own one-line summary."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _dynamic_shapes(dynamic: bool):
    if not dynamic:
        return None
    d = torch.export.Dim.AUTO
    return {"x": {0: d, 2: d, 3: d}}


def _input_name(model: nn.Module) -> str:
    import inspect

    return next(iter(inspect.signature(model.forward).parameters))


def write_onnx(model: nn.Module, x: torch.Tensor, path, dynamic: bool = False) -> None:
    require("onnx", "--format onnx")
    require("onnxscript", "--format onnx (torch's dynamo ONNX exporter)")
    shapes = _dynamic_shapes(dynamic)
    if shapes:
        shapes = {_input_name(model): shapes["x"]}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, optimize=True,
                              opset_version=ONNX_OPSET, input_names=["image"], output_names=["logits"],
                              dynamic_shapes=shapes, verbose=False)
    except Exception as exc:  # the exporter's failures (an unsupported op, ...) come as many types
        raise ExportError(f"ONNX export of {_name(model)} failed: {_first_line(exc)}") from None


def write_torch_export(model: nn.Module, x: torch.Tensor, path, dynamic: bool = False) -> None:
    shapes = _dynamic_shapes(dynamic)
    if shapes:
        shapes = {_input_name(model): shapes["x"]}
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=shapes)
            torch.export.save(program, str(path))
    except Exception as exc:
        raise ExportError(f"torch.export of {_name(model)} failed: {_first_line(exc)}") from None


def onnx_session(path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session for `path` on the CPU (or CUDA), intra-op threads = `threads` (torch's by
    default); spin-waiting off when OMP_WAIT_POLICY=PASSIVE, as for torch's OpenMP threads."""
    ort = require("onnxruntime", "running an ONNX model")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingPackage("onnxruntime-gpu", "ONNX Runtime on CUDA")
        index = torch.device(device).index or 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def run_file(fmt: str, path, x: torch.Tensor) -> torch.Tensor:
    """The logits of the exported file at `path` for input `x` (CPU)."""
    if fmt == "onnx":
        sess = onnx_session(path)
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with _quiet(), torch.no_grad():
        return torch.export.load(str(path)).module()(x)


def compare(ref: torch.Tensor, out: torch.Tensor, tol: float = 1e-4) -> dict:
    """{"max_abs_diff", "scale" (max |ref|), "tol" (absolute), "ok"}."""
    if tuple(out.shape) != tuple(ref.shape):
        return {"max_abs_diff": float("inf"), "scale": 0.0, "tol": 0.0, "ok": False,
                "output_shapes": [list(ref.shape), list(out.shape)]}
    diff = (out.float() - ref.float()).abs().max().item()
    scale = ref.abs().max().item()
    return {"max_abs_diff": diff, "scale": scale, "tol": tol * scale, "ok": diff <= tol * scale}


def check_file(model: nn.Module, fmt: str, path, shapes: list, tol: float = 1e-4, seed: int = 0) -> list:
    """Equality check of the exported file against `model` at every (B, H, W) in `shapes`; ExportError
    naming the max difference when one fails."""
    results = []
    for b, h, w in shapes:
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = model(x)
        try:
            out = run_file(fmt, path, x)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"the exported {_name(model)} does not run at {b}x3x{h}x{w}: {_first_line(exc)}"
                              ) from None
        c = {"shape": [b, 3, h, w], **compare(ref, out, tol)}
        results.append(c)
        if not c["ok"]:
            got = f" (output shape {c['output_shapes'][1]}, PyTorch's {c['output_shapes'][0]})" \
                if "output_shapes" in c else ""
            raise ExportError(f"equality check failed for {_name(model)} ({fmt}, input {b}x3x{h}x{w}): max |Δlogit| "
                              f"{c['max_abs_diff']:.3g} > {tol:g} x max |logit| {c['scale']:.3g} = {c['tol']:.3g}"
                              f"{got}")
    return results


def _name(model: nn.Module) -> str:
    return getattr(model, "registry_name", "") or type(model).__name__


def export_model(model: nn.Module, fmt: str, out, size=(512, 512), batch: int = 1, dynamic: bool = False,
                 tol: float = 1e-4, seed: int = 0) -> dict:
    """Write `model` to `out` in `fmt` and check it (module docstring); atomic: a temporary name in the
    output folder is renamed to `out` only after the check passed, and removed on any failure."""
    if fmt not in FORMATS:
        raise ExportError(f"unsupported format {fmt!r} (use {' or '.join(FORMATS)})")
    model = model.eval().float()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}{FORMATS[fmt]}")  # torch.export.save wants .pt2
    h, w = size
    # a dynamic batch is traced at >= 2: an example batch of 1 would be specialized to 1
    x = torch.randn(max(batch, 2) if dynamic else batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    shapes = [(batch, h, w)]
    if dynamic:
        shapes.append((batch + 1, h + 32, w - 32 if w > 64 else w + 32))
    try:
        (write_onnx if fmt == "onnx" else write_torch_export)(model, x, tmp, dynamic)
        checks = check_file(model, fmt, tmp, shapes, tol, seed)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return {"path": str(out), "bytes": out.stat().st_size, "format": fmt, "model": _name(model),
            "widths": model.widths() if hasattr(model, "widths") else {}, "checks": checks}


# --- CLI -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m npdg.export", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Formats, the equality check and bad input: python -c 'import npdg.export; "
                          "help(npdg.export)'.")
    p.add_argument("checkpoint", metavar="CKPT|RUN_DIR", help="npdg model file, or a run directory (its final.pt)")
    p.add_argument("--format", default="onnx", help="onnx (default) | torch_export")
    p.add_argument("--which", choices=["final", "dense"], default="final", help="run directory: which model")
    p.add_argument("--out", type=Path, help="output file (default: the checkpoint's path with .onnx / .pt2)")
    p.add_argument("--height", type=cli.int_at_least(1), default=512, help="input height (default 512)")
    p.add_argument("--width", type=cli.int_at_least(1), default=512, help="input width (default 512)")
    p.add_argument("--batch", type=cli.int_at_least(1), default=1, help="input batch (default 1)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--tol", type=float, default=1e-4, help="equality check: max |Δlogit| / max |logit| (1e-4)")
    cli.add_debug(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli.guard("python -m npdg.export", args.debug, lambda: _run(args))


def _run(args) -> int:
    if args.format not in FORMATS:
        raise ExportError(f"unsupported format {args.format!r} (use {' or '.join(FORMATS)})")
    src = resolve_source(args.checkpoint, args.which)
    model = load(src)
    out = args.out or src.with_suffix(FORMATS[args.format])
    info = export_model(model, args.format, out, (args.height, args.width), args.batch, args.dynamic, args.tol)
    worst = max(info["checks"], key=lambda c: c["max_abs_diff"] / (c["scale"] or 1))
    shape = "x".join(map(str, info["checks"][0]["shape"])) + (" (dynamic batch/H/W)" if args.dynamic else "")
    print(f"wrote {info['path']} ({info['bytes'] / 2**20:.1f} MiB, {args.format}, {info['model']}, input {shape}); "
          f"logits equal PyTorch's: max |Δ| {worst['max_abs_diff']:.2g} <= {args.tol:g} x max |logit| "
          f"{worst['scale']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
