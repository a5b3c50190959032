#!/usr/bin/env bash
# A real-size compression run on one GPU host: a random-weight checkpoint of a real shape (a preset of
# make_random_checkpoint.py) written to RAM-backed storage, then `moecomp compress` on it under
# benchmarks/peak_rss.py (peak host RSS of the whole process tree, peak GPU memory in use).
#
#   benchmarks/real_size.sh WORK RESULTS [--preset P] [--layers N] [--recipe FILE] [--device D]
#                           [--samples N] [--seq-len N]
#
# Defaults: issue 12's run, Qwen3-30B-A3B's shape (48 layers, 128 experts top-8, hidden 2048, moe_intermediate 768;
# 61 GB bf16) with real_size_recipe.yaml ([layer_drop 12, gptq w4 g128] at 128 x 2048 calibration tokens) on cuda.
# WORK gets model/ (the checkpoint) and out/ (the compressed one), both left there. RESULTS gets checkpoint.log
# (the generation), rss.json (peak host and GPU memory, wall time), moecomp.json (the manifest: per-pass wall time
# and peak GPU memory, stage reports), compress.log (the CLI's output) and summary.json (benchmarks/
# real_size_report.py: those figures, the sizes, per-layer times and an estimate at the preset's full layer count).
set -euo pipefail
work=${1:?checkpoint folder (RAM-backed)}; results=${2:?results folder}; shift 2
here=$(cd "$(dirname "$0")" && pwd)
preset=qwen3-30b-a3b; layers=""; recipe="$here/real_size_recipe.yaml"; device=cuda; calibration=()
while (($#)); do
    case $1 in
        --preset) preset=$2 ;;
        --layers) layers=$2 ;;
        --recipe) recipe=$2 ;;
        --device) device=$2 ;;
        --samples | --seq-len) calibration+=("$1" "$2") ;;
        *) echo "real_size.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
mkdir -p "$results"
[[ $recipe -ef $results/recipe.yaml ]] || cp "$recipe" "$results/recipe.yaml"
start=$(date +%s%N)
python3 "$here/make_random_checkpoint.py" --preset "$preset" ${layers:+--layers "$layers"} --out "$work/model" \
    > "$results/checkpoint.log"
ms=$((($(date +%s%N) - start) / 1000000))
generation=$((ms / 1000)).$(printf %03d $((ms % 1000)))
tail -1 "$results/checkpoint.log"
status=0
python3 "$here/peak_rss.py" --out "$results/rss.json" -- \
    python3 -m moecomp.cli.main compress --model "$work/model" --recipe "$recipe" --device "$device" \
    "${calibration[@]}" --out "$work/out" > "$results/compress.log" 2>&1 || status=$?
[[ -f $work/out/moecomp.json ]] && cp "$work/out/moecomp.json" "$results/moecomp.json"
layers=${layers:-$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' \
    "$work/model/config.json")}
if ((status)); then tail -40 "$results/compress.log"; fi
python3 "$here/real_size_report.py" summary --results "$results" --preset "$preset" --layers "$layers" \
    --checkpoint "$work/model" --output "$work/out" --generation-seconds "$generation" || status=$((status ? status : 1))
exit "$status"
