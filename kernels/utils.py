"""Helpers shared by the Triton kernels: device facts, launch checks, optional autotuning.

Import-light on purpose (no kernel is compiled here); `triton` is imported lazily so that
``import npdg.kernels.utils`` works on machines without Triton.

Interpreter note (checked on triton 3.9, same mechanism in 3.6's ``triton.knobs``): the
``TRITON_INTERPRET`` flag is read when ``@triton.jit`` *decorates* a function, i.e. when a kernel
module such as ``npdg.kernels.adain`` is first imported -- not when ``triton`` is imported, and not
at launch. Set it before the first import of a kernel module; `check_launchable` turns the silent
mismatch (compiled kernel, CPU tensors) into a clear error.
"""

from __future__ import annotations

import functools
import os

import torch

# SM count assumed on CPU (interpreter runs): only shapes the split heuristics, never correctness.
_CPU_SMS = 4


def interpreting() -> bool:
    """True when Triton kernels are (or will be) run by the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a small fixed number on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return _CPU_SMS


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_launchable(kernel, t: torch.Tensor, name: str) -> None:
    """Raise a clear error instead of a cryptic one when kernel and tensor device don't match."""
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(kernel, InterpretedFunction)
    if t.device.type == "cpu" and not interpreted:
        hint = ("TRITON_INTERPRET=1 was set after npdg.kernels was imported; set it before the first import"
                if interpreting() else "CPU tensors need TRITON_INTERPRET=1 before npdg.kernels is imported")
        raise RuntimeError(f"{name}: cannot launch a compiled Triton kernel on a CPU tensor: {hint}")
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{name}: unsupported device {t.device}")


def autotune_enabled(device: torch.device) -> bool:
    """Autotune only where a GPU driver exists: CUDA tensors, not interpreting, NPDG_AUTOTUNE != 0.

    (``@triton.autotune`` fails under the interpreter on a machine without a GPU: "0 active drivers".)
    """
    return (torch.device(device).type == "cuda" and not interpreting()
            and os.environ.get("NPDG_AUTOTUNE", "1") != "0")


def compile_report(kernel, pointers: dict, constexprs: dict, *, floats=(), num_warps=4, num_stages=3,
                   arch: int = 90) -> dict:
    """Compile `kernel` ahead of time for sm_<arch> -- no GPU needed -- and report its resources.

    pointers: {arg: "fp32" | "bf16" | ...}; constexprs: {arg: value} (use 1 for a unit stride, as the
    launcher's specialization does); floats: fp32 scalar args; other args are i32. Returns
    {"regs", "stack"} (stack > 0 means register spills) from the cubin. Needs a compiled kernel, i.e.
    TRITON_INTERPRET unset when the kernel module was imported (tests run it in a subprocess).
    """
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {name: "constexpr" if name in constexprs else "*" + pointers[name] if name in pointers
           else "fp32" if name in floats else "i32" for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=dict(constexprs)),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
    return {"regs": int(found.group(1)), "stack": int(found.group(2))}
