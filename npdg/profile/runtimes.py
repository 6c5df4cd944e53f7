"""The runtimes ``--runtime`` measures a model in, each behind the same ``bind(x) -> call()`` interface so
that ``npdg.profile.timing.measure`` times them all with one protocol (warm-up, interleaved rounds, medians).

    eager        the PyTorch module, ``torch.inference_mode``
    compile      ``torch.compile(model, dynamic=False)`` (compiled during the warm-up)
    onnxruntime  the model exported to ONNX (``npdg.export``, static shape per batch size, equality-checked
                 against PyTorch) in an ONNX Runtime session: CPUExecutionProvider with intra-op threads =
                 torch's threads, sequential execution, all graph optimizations; CUDAExecutionProvider
                 (pip package onnxruntime-gpu) with I/O bound to the torch CUDA tensors on --device cuda
    openvino     the same ONNX file compiled by OpenVINO for the CPU, INFERENCE_NUM_THREADS = torch's threads

The input conversion (a torch tensor to a NumPy array or an I/O binding) happens once in ``bind``, untimed.
A runtime whose package is missing is a ``npdg.export.MissingPackage`` (one line, exit 2, the pip name).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
from torch import nn

from npdg import export
from npdg.profile.timing import ProfileError, Settings

RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
ONNX_RUNTIMES = ("onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": ["onnx", "onnxscript", "onnxruntime"], "openvino": ["onnx", "onnxscript", "openvino"]}


def check_runtimes(runtimes, s: Settings) -> None:
    """Fail early (before any model is built or measured) for a runtime this machine cannot run."""
    for rt in runtimes:
        if rt not in RUNTIMES:
            raise ProfileError(f"unknown runtime {rt!r} (use {', '.join(RUNTIMES)})")
        for module in _PACKAGES.get(rt, []):
            if importlib.util.find_spec(module) is None:
                raise export.MissingPackage(module, f"--runtime {rt}")
        if rt in ONNX_RUNTIMES and s.dtype != "fp32":
            raise ProfileError(f"--runtime {rt} measures fp32 models only (its export is checked in fp32); "
                               f"use --dtype fp32 (got {s.dtype})")
        if rt == "openvino" and torch.device(s.device).type != "cpu":
            raise ProfileError("--runtime openvino is measured on the CPU only (use --device cpu)")
        if rt == "onnxruntime" and torch.device(s.device).type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise export.MissingPackage("onnxruntime-gpu", "--runtime onnxruntime on --device cuda")


class TorchRunner:
    def __init__(self, model: nn.Module):
        self.model = model
        self.info: dict = {}

    def bind(self, x: torch.Tensor):
        def call():
            with torch.inference_mode():
                self.model(x)
        return call


class OrtRunner:
    def __init__(self, path, device: torch.device, threads: int):
        self.session = export.onnx_session(path, str(device), threads)
        self.device = device
        self.info = {"providers": self.session.get_providers(), "intra_op_threads": threads}

    def bind(self, x: torch.Tensor):
        sess = self.session
        name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        if self.device.type == "cuda":
            import numpy as np

            x = x.contiguous()
            binding = sess.io_binding()
            binding.bind_input(name, "cuda", self.device.index or 0, np.float32, list(x.shape), x.data_ptr())
            binding.bind_output(out_name, "cuda", self.device.index or 0)

            def call(x=x):  # keeps x alive while bound
                sess.run_with_iobinding(binding)
            return call
        feed = {name: x.detach().cpu().contiguous().numpy()}
        return lambda: sess.run(None, feed)


class OpenVinoRunner:
    def __init__(self, path, threads: int):
        import openvino

        core = openvino.Core()
        self.compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.info = {"openvino": openvino.__version__, "inference_num_threads": threads}

    def bind(self, x: torch.Tensor):
        request = self.compiled.create_infer_request()
        feed = {0: x.detach().cpu().contiguous().numpy()}
        return lambda: request.infer(feed)


def export_checked(model: nn.Module, batch: int, s: Settings, path: Path) -> dict:
    """Export an fp32 CPU copy of `model` to ONNX at (batch, 3, H, W) and check it against PyTorch."""
    cpu = copy.deepcopy(model).to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format).eval()
    h, w = s.size
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    export.write_onnx(cpu, x, path)
    check = export.check_file(cpu, "onnx", path, [(batch, h, w)])[0]
    return {"onnx_bytes": path.stat().st_size, "max_abs_diff": check["max_abs_diff"], "logit_scale": check["scale"]}


def build_runners(models: dict, runtimes, batch: int, s: Settings, workdir: Path) -> tuple[dict, dict]:
    """({"label|runtime": runner}, {"label|runtime": info}) for every model x runtime; the ONNX file of a
    model is made once per batch size and shared by onnxruntime and openvino."""
    runners, infos, onnx_files = {}, {}, {}
    threads = torch.get_num_threads()
    device = torch.device(s.device)
    compiled = {}
    if "compile" in runtimes:
        torch._dynamo.reset()
        compiled = {label: torch.compile(m, dynamic=False) for label, m in models.items()}
    for rt in runtimes:
        for label, model in models.items():
            key = f"{label}|{rt}"
            if rt == "eager":
                runners[key] = TorchRunner(model)
            elif rt == "compile":
                runners[key] = TorchRunner(compiled[label])
            else:
                if label not in onnx_files:
                    path = workdir / f"{label}_b{batch}.onnx"
                    onnx_files[label] = (path, export_checked(model, batch, s, path))
                path, exported = onnx_files[label]
                runners[key] = (OrtRunner(path, device, threads) if rt == "onnxruntime"
                                else OpenVinoRunner(path, threads))
                runners[key].info.update(exported)
            infos[key] = {"runtime": rt, "threads": threads, **runners[key].info}
    return runners, infos


def versions() -> dict:
    out = {"torch": torch.__version__}
    for module in ("onnxruntime", "onnx", "onnxscript", "openvino"):
        try:
            out[module] = importlib.import_module(module).__version__
        except ImportError:
            out[module] = None
    return out
