#!/usr/bin/env bash
# The real-size slimming run of issue 12 on one GPU host: a random-weight checkpoint of Qwen3-30B-A3B's shape
# (48 layers, 128 experts top-8, hidden 2048, moe_intermediate 768; 61 GB bf16) written to RAM-backed storage,
# then `moecomp compress` with [layer_drop 12, gptq w4 g128] at 128 x 2048 calibration tokens on cuda, under
# benchmarks/peak_rss.py (peak host RSS of the whole process tree, peak GPU memory in use).
#
#   benchmarks/real_size.sh /dev/shm/q3 RESULTS_DIR
#
# RESULTS_DIR gets rss.json (peak host and GPU memory, wall time), moecomp.json (the manifest: per-pass wall time
# and peak GPU memory, stage reports) and compress.log (the CLI's output).
set -euo pipefail
work=${1:?checkpoint folder (RAM-backed)}; results=${2:?results folder}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$results"
start=$(date +%s)
python3 "$here/make_random_checkpoint.py" --preset qwen3-30b-a3b --out "$work/model" | tail -1
echo "checkpoint written in $(( $(date +%s) - start )) s; $(du -sh "$work/model" | cut -f1) on disk"
python3 "$here/peak_rss.py" --out "$results/rss.json" -- \
    python3 -m moecomp.cli.main compress --model "$work/model" --recipe "$here/real_size_recipe.yaml" \
    --device cuda --out "$work/out" > "$results/compress.log" 2>&1 || { tail -40 "$results/compress.log"; exit 1; }
cp "$work/out/moecomp.json" "$results/moecomp.json"
du -sh "$work/out"
