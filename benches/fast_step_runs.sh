#!/usr/bin/env bash
# Issue 33's candidate steps on the default model (benches/results/fair_fast/PLAN*.md), seeds 0-4 (or those given),
# each paired by seed with a baseline's rows:
#   bash benches/fast_step_runs.sh OUTDIR [SEED ...]
#       npdg_fast: --dsp_branch --adv_scale=0.5 against npdg_full-s*.json (the fair table's npdg rows before the flip)
#   CANDIDATE=npdg_adv025 FLAGS="--adv_scale=0.25" BASELINE=fair/deeplabv3plus_r18/npdg bash benches/fast_step_runs.sh OUTDIR
#       any other candidate against any committed rows (BASELINE: a path under benches/results/, without -sS.json)
set -euo pipefail
out=${1:?usage: bash benches/fast_step_runs.sh OUTDIR [SEED ...]}
shift
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2 3 4)
candidate=${CANDIDATE:-npdg_fast}
read -r -a flags <<< "${FLAGS:---dsp_branch --adv_scale=0.5}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
results="$here/results/fair_fast/deeplabv3plus_r18"
baseline="$here/results/${BASELINE:-fair_fast/deeplabv3plus_r18/npdg_full}"
mkdir -p "$results"
for seed in "${seeds[@]}"; do
    dir="$out/$candidate-s$seed"
    if [ -f "$dir/metrics.json" ]; then
        echo "seed $seed: done"
    elif [ -f "$dir/checkpoint.pt" ]; then
        python -m npdg.train --resume "$dir"
    else
        python -m npdg.train "${flags[@]}" --seed="$seed" --out "$dir"
    fi
    cp "$dir/metrics.json" "$results/$candidate-s$seed.json"
done
name=$(basename "$baseline")
python -m npdg.compare "$baseline-s*.json" "$results/$candidate-s*.json" \
    --json "$results/compare-$candidate-$name.json" | tee "$results/compare-$candidate-$name.md"
