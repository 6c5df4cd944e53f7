#!/usr/bin/env bash
# The README's results table: every method on the embedded benchmark with the default budget.
#   bash benches/dg_table.sh OUTDIR [RUN ...]     RUN = METHOD-sSEED, METHOD in erm dsp npdg slimming
#                                                 npdg_lam1 npdg_lam0 (default: the table's twelve runs)
# About 10 minutes a run on 2 CPU cores; finished runs are skipped, an interrupted one is resumed.
# Each run's metrics.json is copied to benches/results/dg/RUN.json; the table (with seed means) is printed at the end.
set -euo pipefail
out=${1:?usage: bash benches/dg_table.sh OUTDIR [RUN ...]}
shift
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(erm-s0 erm-s1 erm-s2 dsp-s0 dsp-s1 dsp-s2 npdg-s0 npdg-s1 npdg-s2 slimming-s0 npdg_lam1-s0 npdg_lam0-s0)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out" "$here/results/dg"
for run in "${runs[@]}"; do
    method=${run%-s*}
    seed=${run##*-s}
    extra=()
    case $method in
        npdg_lam1) method=npdg; extra=(--lam=1) ;;
        npdg_lam0) method=npdg; extra=(--lam=0) ;;
    esac
    dir="$out/$run"
    if [ -f "$dir/metrics.json" ]; then
        echo "$run: done"
    elif [ -f "$dir/checkpoint.pt" ]; then
        python -m npdg.train --resume "$dir"
    else
        python -m npdg.train --method="$method" --seed="$seed" "${extra[@]}" --out "$dir"
    fi
    cp "$dir/metrics.json" "$here/results/dg/$run.json"
done
python -m npdg.report "${runs[@]/#/$out/}"
