#!/usr/bin/env bash
# Issue 33's candidate step (benches/results/fair_fast/PLAN.md): npdg --dsp_branch --adv_scale=0.5 on the default
# model, seeds 0-4 (or those given), paired with the full-step rows npdg_full-s*.json (the fair table's npdg rows before the flip).
#   bash benches/fast_step_runs.sh OUTDIR [SEED ...]
set -euo pipefail
out=${1:?usage: bash benches/fast_step_runs.sh OUTDIR [SEED ...]}
shift
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2 3 4)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
results="$here/results/fair_fast/deeplabv3plus_r18"
mkdir -p "$results"
for seed in "${seeds[@]}"; do
    dir="$out/npdg_fast-s$seed"
    if [ -f "$dir/metrics.json" ]; then
        echo "seed $seed: done"
    elif [ -f "$dir/checkpoint.pt" ]; then
        python -m npdg.train --resume "$dir"
    else
        python -m npdg.train --dsp_branch --adv_scale=0.5 --seed="$seed" --out "$dir"
    fi
    cp "$dir/metrics.json" "$results/npdg_fast-s$seed.json"
done
python -m npdg.compare "$results/npdg_full-s*.json" "$results/npdg_fast-s*.json" \
    --json "$results/compare-npdg_fast-npdg.json" | tee "$results/compare-npdg_fast-npdg.md"
