#!/usr/bin/env bash
# The README's results table: every method on the embedded benchmark with the default budget.
#   bash benches/dg_table.sh OUTDIR [RUN ...]     RUN = METHOD-sSEED, METHOD in erm dsp npdg slimming
#                                                 npdg_lam1 npdg_lam0 npdg_default erm_in (default: the table's twelve runs)
# The table's dsp / npdg runs are the paper's recipe (restyled samples replace half the batch, one loss mean,
# sensitivity from the γ-scaled outputs, |γ| prune), which was the default when they ran: they get those keys
# explicitly (and its schedule then: 200 train + 60 fine-tuning steps). npdg_default is `python -m npdg.train
# --method npdg` as it is now (restyled copies weighted 0.5 beside the whole clean batch, scale-free sensitivity,
# prune_sens 2, the early prune to 60 % of the FLOPs: 60 train + 200 fine-tuning steps, input_norm; see README "At equal
# budgets"); erm_in is ERM with the same input normalisation (the baseline that isolates what NPDG adds to it).
# About 10 minutes a run on 2 CPU cores; finished runs are skipped, an interrupted one is resumed.
# Each run's metrics.json is copied to benches/results/dg/RUN.json; the table (with seed means) is printed at the end,
# then the paired comparison npdg - erm over their shared seeds (python -m npdg.compare).
#   BUDGET=N bash benches/dg_table.sh OUTDIR ...  every run gets --budget=N: N optimiser steps in total for every
#                                                 method (erm/dsp train N; npdg/slimming train N - finetune_iters,
#                                                 then fine-tune); metrics go to benches/results/dg-budgetN/RUN.json
#                                                 (the default budget's committed files are not overwritten). Unset
#                                                 (default): iters + fine-tuning; the comparison says totals differ.
set -euo pipefail
out=${1:?usage: bash benches/dg_table.sh OUTDIR [RUN ...]}
shift
budget=${BUDGET:-}
[ -z "$budget" ] || [[ "$budget" =~ ^[1-9][0-9]*$ ]] || { echo "BUDGET must be a positive integer, got '$budget'" >&2; exit 2; }
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(erm-s0 erm-s1 erm-s2 dsp-s0 dsp-s1 dsp-s2 npdg-s0 npdg-s1 npdg-s2 slimming-s0 npdg_lam1-s0 npdg_lam0-s0)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
results="$here/results/dg${budget:+-budget$budget}"
allow=()
[ -n "$budget" ] || allow=(--allow_unequal)  # without a budget npdg runs iters + finetune_iters, erm only iters
mkdir -p "$out" "$results"
for run in "${runs[@]}"; do
    method=${run%-s*}
    seed=${run##*-s}
    extra=(${budget:+--budget="$budget"})
    paper=(--dsp_copy=false --sens_scale=output --prune_sens=0 --dsp_weight=0 --iters=200 --finetune_iters=60
           --input_norm=false --flops_target=0)
    case $method in
        dsp) extra+=("${paper[@]}") ;;
        npdg) extra+=("${paper[@]}") ;;
        npdg_lam1) method=npdg; extra+=("${paper[@]}" --lam=1) ;;
        npdg_lam0) method=npdg; extra+=("${paper[@]}" --lam=0) ;;
        npdg_default) method=npdg ;;
        erm_in) method=erm; extra+=(--input_norm) ;;
    esac
    dir="$out/$run"
    if [ -f "$dir/config.json" ]; then  # a finished or interrupted run must have been started with this budget
        had=$(python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("budget", 0))' "$dir/config.json")
        [ "$had" = "${budget:-0}" ] || { echo "$dir: ran with budget $had, not ${budget:-0} (BUDGET); use another OUTDIR" >&2; exit 2; }
    fi
    if [ -f "$dir/metrics.json" ]; then
        echo "$run: done"
    elif [ -f "$dir/checkpoint.pt" ]; then
        python -m npdg.train --resume "$dir"
    else
        python -m npdg.train --method="$method" --seed="$seed" "${extra[@]}" --out "$dir"
    fi
    cp "$dir/metrics.json" "$results/$run.json"
done
python -m npdg.report "${runs[@]/#/$out/}"
if compgen -G "$out/erm-s*/metrics.json" >/dev/null && compgen -G "$out/npdg-s*/metrics.json" >/dev/null; then
    echo
    python -m npdg.compare "$out/erm-s*/metrics.json" "$out/npdg-s*/metrics.json" "${allow[@]}" \
        --json "$results/compare-npdg-erm.json"
fi
