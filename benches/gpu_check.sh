#!/usr/bin/env bash
# One-command GPU check for the target machine (H100/H200; Python 3.12, torch 2.11+cu130, triton 3.6,
# no network). Builds the project with CUDA, runs the CUDA tests and the benches, and writes
# JSON + a markdown summary into OUTDIR. Budget: about 6 minutes.
#
#   bash benches/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:?usage: bash benches/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET NPDG_BENCH_QUICK
PY=${PYTHON:-python3}
status=0
t0=$SECONDS
log() { echo "=== [$((SECONDS - t0))s] $*" | tee -a "$out/summary.log"; }

log "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())'
} 2>&1 | tee "$out/env.txt"

log "build (pip install --no-build-isolation --no-deps -e .)"
if ! $PY -m pip install -q --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
    tail -30 "$out/build.log"; log "BUILD FAILED"; exit 1
fi
$PY -c 'import torch, npdg._ext as e; assert e.available(); print("extension ok; CUDA kernels:", torch._C._dispatch_has_kernel_for_dispatch_key("npdg::compact", "CUDA"))' 2>&1 | tee -a "$out/summary.log"

log "CUDA tests"
NPDG_REQUIRE_EXT=1 timeout 150 $PY -m pytest tests/ -q -m cuda -x --junitxml="$out/tests_cuda.xml" 2>&1 \
    | tail -15 | tee -a "$out/summary.log" || status=1

log "benches (kernels, compaction, training throughput)"
timeout 240 $PY -m pytest benches/ -q --benchmark-json="$out/bench.json" --benchmark-min-rounds=5 \
    --benchmark-max-time=0.5 --benchmark-warmup=on --benchmark-columns=median,min,rounds 2>&1 \
    | tail -40 >"$out/bench.log" || status=1
tail -5 "$out/bench.log"
$PY benches/summarize.py "$out/bench.json" >"$out/summary.md" && cat "$out/summary.md"

log "done (status $status)"
exit $status
