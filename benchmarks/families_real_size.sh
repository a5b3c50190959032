#!/usr/bin/env bash
# Issue 15's real-size family runs: for gpt-oss-20b and GLM-4.5-Air, a random-weight checkpoint of the real shape,
# then the streamed trimming pass (expert_drop layerwise, 25% of each MoE layer's experts dropped) and GPTQ w4 g128
# in one `moecomp compress` (benchmarks/real_size.sh: peak host RSS, peak GPU memory, wall time per pass, per-layer
# times and an estimate at full depth). A stage a family refuses up front is left out of its recipe and named in
# its summary (benchmarks/real_size_report.py recipe). Each preset's checkpoint and output are deleted before the
# next one: RAM-backed storage holds one at a time.
#
#   benchmarks/families_real_size.sh WORK RESULTS [--gpt-oss-layers N] [--glm-layers N] [--samples N]
#                                    [--seq-len N] [--presets "P1 P2"] [--tiny]
#
# Defaults, sized for ~3 minutes a preset on one H200 (see benchmarks/results/slim_streamed_h200.md): gpt-oss-20b
# in full (24 layers, 40 GB bf16), GLM-4.5-Air's first 6 of 46 layers (the dense layer and 5 MoE layers, 24 GB;
# the whole model is 211 GB), calibration 128 x 2048 tokens, on cuda. --tiny: the -small presets (4 layers each),
# 8 x 128 tokens, on the CPU, about a minute; then each output is also reloaded with stock transformers.
# RESULTS/<preset>/ gets recipe.yaml, checkpoint.log, compress.log, rss.json, moecomp.json and summary.json.
set -euo pipefail
work=${1:?scratch folder (RAM-backed, e.g. /dev/shm/families)}; results=${2:?results folder}; shift 2
here=$(cd "$(dirname "$0")" && pwd)
presets="gpt-oss-20b glm-4.5-air"; declare -A layers=([gpt-oss-20b]=24 [glm-4.5-air]=6)
declare -A small=([gpt-oss-20b]=gpt-oss-small [glm-4.5-air]=glm-4.5-air-small)  # same layout, CPU-sized
samples=128; seq_len=2048; device=cuda; tiny=""
while (($#)); do
    case $1 in
        --gpt-oss-layers) layers[gpt-oss-20b]=$2 ;;
        --glm-layers) layers[glm-4.5-air]=$2 ;;
        --samples) samples=$2 ;;
        --seq-len) seq_len=$2 ;;
        --presets) presets=$2 ;;
        --tiny) tiny=1; samples=8; seq_len=128; device=cpu; shift; continue ;;
        *) echo "families_real_size.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
failed=0
for name in $presets; do
    preset=$name; depth=(--layers "${layers[$name]}")
    if [[ -n $tiny ]]; then preset=${small[$name]}; depth=(); fi  # the -small presets keep their own depth
    out=$results/$preset
    mkdir -p "$out"
    rm -rf "$work/model" "$work/out"
    echo "== $preset: $(date -u +%H:%M:%S)"
    if python3 "$here/real_size_report.py" recipe --preset "$preset" --out "$out/recipe.yaml" > /dev/null &&
        grep '^# ' "$out/recipe.yaml" &&
        bash "$here/real_size.sh" "$work" "$out" --preset "$preset" "${depth[@]}" --recipe "$out/recipe.yaml" \
            --device "$device" --samples "$samples" --seq-len "$seq_len"; then
        if [[ -n $tiny ]]; then python3 "$here/real_size_report.py" reload --model "$work/out"; fi
    else
        echo "== $preset FAILED (see $out/compress.log)"; failed=1
    fi
    rm -rf "$work/model" "$work/out"
done
exit "$failed"
