"""Build script for the npdg package and its compiled extension ``npdg._C``.

Install (torch must already be installed; the build imports it):

    pip install --no-build-isolation -e .

Environment switches:
    NPDG_NO_EXT=1      skip the extension (ops fall back to the PyTorch reference)
    FORCE_CUDA=1       build the CUDA part even without a visible GPU (set TORCH_CUDA_ARCH_LIST too)
    MAX_JOBS=N         parallel compile jobs (ninja)
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    # setuptools wants source paths relative to this file; glob from ROOT so the cwd never matters.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    if os.environ.get("NPDG_NO_EXT", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

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


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["npdg", "npdg.*"]) + ["npdg.kernels"],
    package_dir={"npdg.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
