#!/usr/bin/env bash
# Create ./.venv and install NPDG into it, building the C++ extension npdg._C.
#
# - torch: pinned to the 2.13.0 CPU wheel when no torch is present (an unpinned torch would pull a
#   multi-GB CUDA build). To use a CUDA torch, install it into the venv first (or point PYTHON at an
#   interpreter whose venv has it: NPDG_VENV=/path/to/venv bash install.sh).
# - The project is installed the way the README says, `pip install -e .`: the extension is compiled against
#   the venv's torch (setup.py finds it from pip's isolated build; torch is not a build requirement).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv=${NPDG_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip() { python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip install --upgrade pip setuptools wheel
python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install ninja pybind11 numpy tqdm PyYAML matplotlib Pillow scipy "triton>=3.0" \
    pytest pytest-benchmark hypothesis onnx onnxscript onnxruntime cityscapesscripts
MAX_JOBS=${MAX_JOBS:-2} python -m pip --disable-pip-version-check install -q -e . 2>&1 \
    | grep -v "^WARNING: Location" || true
python -c "import npdg, npdg._ext as e; print('npdg', npdg.__version__, '| extension:', 'built' if e.available() else 'MISSING')"
