"""Build script for the npdg package and its compiled extension ``npdg._C``.

Install into an environment that already has torch (the extension is compiled against that torch):

    pip install -e .                                   # or `pip install .`, `pip wheel .`
    pip install --no-build-isolation --no-deps -e .    # offline: build tools (setuptools, ninja) preinstalled

Under pip's default build isolation the build runs in a temporary environment without torch; setup.py then
asks the target interpreter where its torch lives and appends that interpreter's import path to its own, so
the build tools of the isolated environment still come first and no second torch is ever downloaded.

Environment switches:
    NPDG_NO_EXT=1      skip the extension (ops fall back to the PyTorch reference); torch is not needed
    FORCE_CUDA=1       build the CUDA part even without a visible GPU (set TORCH_CUDA_ARCH_LIST too)
    MAX_JOBS=N         parallel compile jobs (ninja)
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

NO_TORCH = (
    "npdg: building the extension npdg._C needs PyTorch, and none was found for {python}.\n"
    "Install torch into this environment first -- `pip install torch==2.13.0` for the CPU wheel (or the CUDA "
    "build you want) -- then rerun `pip install -e .`. (NPDG_NO_EXT=1 installs without the extension.)"
)

# Run by the target interpreter with -E (ignores PYTHONPATH, which pip points at its isolated environment):
# where torch is, without importing it, and the import path that would load it.
_PROBE = (
    "import importlib.util, json, sys, sysconfig\n"
    "spec = importlib.util.find_spec('torch')\n"
    "print(json.dumps({'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX'), 'path': sys.path[1:],\n"
    "                  'torch': spec.origin if spec and spec.origin else None}))\n"
)


def _rel(pattern):
    # setuptools wants source paths relative to this file; glob from ROOT so the cwd never matters.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _probe(python):
    """(torch's __init__.py or None, import path) as `python` sees them; None if unusable for this build."""
    try:
        res = subprocess.run([python, "-E", "-c", _PROBE], capture_output=True, text=True, timeout=60, cwd=ROOT)
        info = json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if info.get("ext_suffix") != sysconfig.get_config_var("EXT_SUFFIX"):  # another Python version / ABI
        return None
    return info.get("torch"), [p for p in info.get("path", []) if isinstance(p, str)]


def find_target_torch_path(python=sys.executable, probe=_probe):
    """Import-path entries to append so that the torch of `python`'s environment (and torch's dependencies)
    can be imported here: its sys.path entries missing from ours, torch's parent directory always among them;
    [] if it has no torch. Under pip's build isolation sys.executable is still the target's interpreter (only
    the import path is isolated), so its environment is the one being installed into."""
    found = probe(python)
    if not found or not found[0]:
        return []
    torch_init, path = found
    parent = os.path.dirname(os.path.dirname(torch_init))
    extra = [p for p in path if p and p not in sys.path and os.path.isdir(p)]
    return extra + [parent] if parent not in sys.path and parent not in extra else extra


def _import_torch():
    try:
        import torch
    except ImportError:
        pass
    else:
        return torch
    # pip's isolated build environment hides the target's site-packages. Append (never prepend) the target's
    # import path so the isolated setuptools/ninja keep precedence; site.addsitedir is avoided on purpose:
    # it would run the target's .pth files (e.g. an older setuptools' distutils hack).
    sys.path.extend(find_target_torch_path())
    try:
        import torch
    except ImportError as exc:
        detail = "" if exc.name == "torch" else f"\n(torch was found but failed to import: {exc})"
        if os.path.basename(sys.prefix).startswith("pip-build-env"):  # pip's opt-in venv isolation
            detail += "\n(This pip builds in a separate venv that hides the target's torch: add --no-build-isolation.)"
        raise SystemExit(NO_TORCH.format(python=sys.executable) + detail) from None
    return torch


def _ensure_ninja_on_path():
    # torch runs `ninja --version` from PATH; pip's isolated build puts its bin dir there, but a
    # --no-build-isolation build from a non-activated venv may only have the `ninja` Python package.
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass  # BuildExtension then warns and compiles without ninja


def _extensions():
    if os.environ.get("NPDG_NO_EXT", "0") == "1":
        return [], {}
    torch = _import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    _ensure_ninja_on_path()
    cpu_sources = _rel("csrc/*.cpp")
    cuda_sources = _rel("csrc/cuda/*.cu") + _rel("csrc/cuda/*.cpp")
    with_cuda = CUDA_HOME is not None and torch.version.cuda is not None and (
        torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"
    )
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is left to torch (its headers need C++20 from 2.10 on)
    extra = {"cxx": cxx}
    kwargs = dict(extra_link_args=["-fopenmp"], include_dirs=[os.path.join(ROOT, "csrc")])
    if with_cuda:
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext = CUDAExtension("npdg._C", cpu_sources + cuda_sources, extra_compile_args=extra,
                            define_macros=[("NPDG_WITH_CUDA", None)], **kwargs)
    else:
        ext = CppExtension("npdg._C", cpu_sources, extra_compile_args=extra, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":
    ext_modules, cmdclass = _extensions()

    setup(
        # npdg.presets holds only YAML files (package data, see pyproject.toml); kernels/ installs as npdg.kernels
        packages=find_packages(include=["npdg", "npdg.*"]) + ["npdg.presets", "npdg.kernels"],
        package_dir={"npdg.kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
