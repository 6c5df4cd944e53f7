#!/usr/bin/env bash
# One-command GPU check for the target machine (H100/H200; Python 3.12, torch 2.11+cu130, triton 3.6,
# no network). Builds the project with CUDA, runs the CUDA tests and the benches, and writes
# JSON + a markdown summary into OUTDIR. Budget: about 6-8 minutes. OUTDIR gets six files (the device
# tool returns at most 8): summary.log, summary.md, bench_{adain,sensitivity,compact,train}.json.
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
tmp=$(mktemp -d)
log() { echo "=== [$((SECONDS - t0))s] $*" | tee -a "$out/summary.log"; }

log "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())'
} 2>&1 | tee -a "$out/summary.log"

log "build (pip install --no-build-isolation --no-deps -e .)"
if ! $PY -m pip install -q --no-build-isolation --no-deps -e . >"$tmp/build.log" 2>&1; then
    tail -30 "$tmp/build.log" | tee -a "$out/summary.log"; log "BUILD FAILED"; exit 1
fi
$PY -c 'import torch, npdg._ext as e; assert e.available(); print("extension ok; CUDA kernels:", torch._C._dispatch_has_kernel_for_dispatch_key("npdg::compact", "CUDA"))' 2>&1 | tee -a "$out/summary.log"

log "CUDA tests"
NPDG_REQUIRE_EXT=1 timeout 150 $PY -m pytest tests/ -q -m cuda 2>&1 \
    | tail -15 | tee -a "$out/summary.log" || status=1

# Benches in order of importance, each with its own time cap so one slow suite can't starve the rest.
bench() {  # bench NAME SECONDS FILES...
    local name=$1 cap=$2; shift 2
    log "bench $name"
    # SIGINT first: pytest stops like on Ctrl-C and pytest-benchmark still writes the rows it has.
    timeout -s INT -k 15 "$cap" $PY -m pytest "$@" -q --benchmark-json="$out/bench_$name.json" --benchmark-min-rounds=5 \
        --benchmark-max-time=0.5 --benchmark-warmup=on --benchmark-columns=median,min,rounds \
        >"$tmp/bench_$name.log" 2>&1 || { status=1; tail -20 "$tmp/bench_$name.log" | tee -a "$out/summary.log"; }
}
bench adain 110 benches/bench_adain.py
bench sensitivity 80 benches/bench_sensitivity.py
bench compact 30 benches/bench_compact.py
bench train 60 benches/bench_train.py
$PY benches/summarize.py "$out"/bench_*.json >"$out/summary.md" && cat "$out/summary.md"

log "done (status $status)"
exit $status
