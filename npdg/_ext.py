"""Load the compiled compaction extension (``torch.ops.npdg.compact`` / ``compact_many``).

Order of attempts, done once per process on first use (never at import):
1. ``import npdg._C`` -- built by ``pip install -e .`` / ``pip install .`` (into an env that has torch);
2. JIT-build the CPU sources of ``csrc/`` beside the package with ninja
   (``torch.utils.cpp_extension.load``, cached under ``$TORCH_EXTENSIONS_DIR`` or
   ``~/.cache/torch_extensions``), only when running from a source checkout;
3. give up with a one-line notice: ``npdg.ops`` then uses ``npdg.reference``.

``NPDG_NO_EXT=1`` forces the reference path (checked on every call, so it also works after loading).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_JIT_NAME = "npdg_C_jit"

_loaded: bool | None = None  # None: not tried yet
_how = "not loaded"
_on_load: list[Callable[[], None]] = []


def disabled() -> bool:
    return os.environ.get("NPDG_NO_EXT", "0") == "1"


def available() -> bool:
    """True if torch.ops.npdg.compact* are registered (loading or building them on first call)."""
    global _loaded
    if disabled():
        return False
    if _loaded is None:
        _loaded = _load()
        if _loaded:
            for fn in _on_load:
                fn()
    return _loaded


def supports(device: str | object) -> bool:
    """True if the extension is available and has kernels for this device type ('cpu', 'cuda')."""
    if not available():
        return False
    import torch

    key = {"cpu": "CPU", "cuda": "CUDA"}.get(getattr(device, "type", str(device)).split(":")[0])
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("npdg::compact", key)


def how() -> str:
    """How the extension was obtained: 'npdg._C', 'jit: <path>', or why it is not loaded."""
    return _how


def when_loaded(fn: Callable[[], None]) -> None:
    """Run fn() once the extension is loaded (now, if it already is). npdg.ops registers its
    fake/autograd glue this way, without forcing a load at import time."""
    if _loaded:
        fn()
    else:
        _on_load.append(fn)


def _load() -> bool:
    global _how
    try:
        import npdg._C  # noqa: F401  (loading the library registers the ops)

        _how = "npdg._C"
        return True
    except ImportError as exc:
        reason = f"import npdg._C failed ({exc})"
    if os.path.isdir(_CSRC):
        try:
            _how = "jit: " + _jit_build()
            return True
        except Exception as exc:  # a missing compiler or ninja shows up as many exception types
            first_line = (str(exc).splitlines() or [""])[0]
            reason += f"; JIT build failed ({type(exc).__name__}: {first_line})"
    else:
        reason += "; no csrc/ beside the package to JIT-build from"
    _how = reason
    warnings.warn(
        f"npdg: compiled compaction ops unavailable, using the PyTorch reference ({reason}). "
        "To build them, reinstall with `pip install -e .` (or `pip install .`) in an environment that has torch "
        "and a C++ compiler.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def _jit_build() -> str:
    import torch
    from torch.utils.cpp_extension import load

    sources = sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))
    path = load(  # returns the library path on recent torch, None on older ones
        name=_JIT_NAME,
        sources=sources,
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[_CSRC],
        is_python_module=False,
        verbose=False,
    )
    if not torch._C._dispatch_has_kernel_for_dispatch_key("npdg::compact", "CPU"):
        raise RuntimeError("JIT-built library did not register npdg::compact")
    return str(path or _JIT_NAME)
