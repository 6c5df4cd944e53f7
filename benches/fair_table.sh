#!/usr/bin/env bash
# The README's headline table (issue 32): the DEFAULT run of each method, nothing but --method / --model / --seed
# given, so every method spends the same 260 optimiser steps on the same inputs (see npdg.config BUDGET), scored
# with the standard mIoU (npdg.metrics).
#   bash benches/fair_table.sh OUTDIR [RUN ...]     RUN = MODEL/METHOD-sSEED (default: seeds 0-4 of erm, dsp,
#                                                   slimming, npdg on deeplabv3plus_r18 and erm, npdg on
#                                                   segformer_b0, seed by seed so a cut-off run still pairs)
# Finished runs are skipped, an interrupted one is resumed. Each run's metrics.json is copied to
# benches/results/fair/MODEL/METHOD-sSEED.json; at the end every method is compared with npdg
# (python -m npdg.compare: mean paired difference with its 95 % interval) into benches/results/fair/MODEL/.
set -euo pipefail
out=${1:?usage: bash benches/fair_table.sh OUTDIR [RUN ...]}
shift
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
    for seed in 0 1 2 3 4; do
        for m in erm dsp slimming npdg; do runs+=("deeplabv3plus_r18/$m-s$seed"); done
        for m in erm npdg; do runs+=("segformer_b0/$m-s$seed"); done
    done
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for run in "${runs[@]}"; do
    model=${run%%/*}
    rest=${run#*/}
    method=${rest%-s*}
    seed=${rest##*-s}
    [[ "$run" == */* && "$seed" =~ ^[0-9]+$ ]] || { echo "bad RUN '$run': expected MODEL/METHOD-sSEED" >&2; exit 2; }
    dir="$out/$model/$rest"
    results="$here/results/fair/$model"
    mkdir -p "$results"
    if [ -f "$dir/metrics.json" ]; then
        echo "$run: done"
    elif [ -f "$dir/checkpoint.pt" ]; then
        python -m npdg.train --resume "$dir"
    else
        python -m npdg.train --method="$method" --model="$model" --seed="$seed" --out "$dir"
    fi
    cp "$dir/metrics.json" "$results/$rest.json"
done
for model_dir in "$here"/results/fair/*/; do
    model=$(basename "$model_dir")
    compgen -G "$model_dir/npdg-s*.json" >/dev/null || continue
    for m in erm dsp slimming sfp shade; do
        compgen -G "$model_dir/$m-s*.json" >/dev/null || continue
        python -m npdg.compare "$model_dir/$m-s*.json" "$model_dir/npdg-s*.json" \
            --json "$model_dir/compare-npdg-$m.json" > "$model_dir/compare-npdg-$m.md"
        echo "$model: npdg - $m"; sed -n '/| final mIoU/,/^$/p' "$model_dir/compare-npdg-$m.md"
    done
done
