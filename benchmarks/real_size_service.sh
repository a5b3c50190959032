#!/usr/bin/env bash
# The real-size job through the service on one GPU host: a random-weight checkpoint of Qwen3-30B-A3B's shape in
# RAM-backed storage (as benchmarks/real_size.sh), `moecomp serve` in the embedded mode (SQLite, embedded broker,
# supervised worker) under benchmarks/peak_rss.py, then `moecomp submit` of [layer_drop 12, gptq w4 g128] at
# 128 x 2048 calibration tokens with perplexity, fidelity and speed (both runtimes), `moecomp watch`, and
# `moecomp download` of the checkpoint with its sha256 checked against the API's.
#
#   benchmarks/real_size_service.sh start WORK RESULTS [options]  # everything in the background; returns at once
#   benchmarks/real_size_service.sh poll  WORK RESULTS            # progress; exit 0 done, 3 running, 1 failed
#   benchmarks/real_size_service.sh run   WORK RESULTS [options]  # start, then poll until it ends
#   benchmarks/real_size_service.sh stop  WORK RESULTS            # stop the background run (serve, sampler)
#
# WORK (RAM-backed, e.g. /dev/shm/rs) holds the model, the recipe and spec, state and the downloaded checkpoint;
# the service's data dir (--data-dir, default on disk so that its disk peak is measured) holds the job's files.
# start is resumable: run again after an interruption, it skips a complete checkpoint and the idempotency key
# finds the job already submitted. RESULTS gets rss.json (peak host RSS of serve's process tree), gpu_peak.txt,
# disk_peak.txt (sampled), job.json, events.json, artifacts.json, report.json, moecomp.json, job.log, serve.log,
# watch.log, driver.log and summary.json (benchmarks/service_probe.py summary).
#
# Options (start/run): --preset P (qwen3-30b-a3b) --layers N --device D (cuda) --drop N (12) --samples N (128)
#   --seq-len N (2048) --eval-seq-len N (2048) --eval-tokens N (65536) --prefill-tokens N (2048)
#   --decode-tokens N (32) --data-dir DIR (/var/tmp/moecomp-real-size) --port N (8765)
# A CPU check of the whole flow in a few minutes:
#   PYTHON=.venv/bin/python benchmarks/real_size_service.sh run /tmp/rs /tmp/rs-results --preset qwen3-small \
#     --device cpu --drop 1 --samples 16 --seq-len 256 --eval-seq-len 128 --eval-tokens 2048 \
#     --prefill-tokens 64 --decode-tokens 8 --data-dir /tmp/rs-data
set -euo pipefail
cmd=${1:?start, poll, run or stop}; work=${2:?WORK folder (RAM-backed)}; results=${3:?RESULTS folder}; shift 3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PY=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$work" "$results"
work=$(cd "$work" && pwd); results=$(cd "$results" && pwd)
state=$work/state.env

options() {  # defaults, then the flags given; written to $state by start
    preset=qwen3-30b-a3b layers="" device=cuda drop=12 samples=128 seq_len=2048 eval_seq_len=2048
    eval_tokens=65536 prefill_tokens=2048 decode_tokens=32 data_dir=/var/tmp/moecomp-real-size port=8765
    while (($#)); do
        case $1 in
            --preset) preset=$2 ;; --layers) layers=$2 ;; --device) device=$2 ;; --drop) drop=$2 ;;
            --samples) samples=$2 ;; --seq-len) seq_len=$2 ;; --eval-seq-len) eval_seq_len=$2 ;;
            --eval-tokens) eval_tokens=$2 ;; --prefill-tokens) prefill_tokens=$2 ;;
            --decode-tokens) decode_tokens=$2 ;; --data-dir) data_dir=$2 ;; --port) port=$2 ;;
            *) echo "unknown option $1" >&2; exit 2 ;;
        esac
        shift 2
    done
    mkdir -p "$data_dir"; data_dir=$(cd "$data_dir" && pwd)
    key="real-size-service-$(date +%s)"
    local name
    for name in preset layers device drop samples seq_len eval_seq_len eval_tokens prefill_tokens decode_tokens \
        data_dir port key; do
        printf '%s=%q\n' "$name" "${!name}"
    done > "$state"
}

environment() {  # the service's settings and the client's address, from $state
    # shellcheck disable=SC1090
    source "$state"
    unset MOECOMP_DATABASE_URL MOECOMP_BROKER_URL  # the embedded mode
    export MOECOMP_DATA_DIR=$data_dir MOECOMP_DEVICE=$device MOECOMP_ALLOWED_MODEL_ROOTS="[\"$work\"]"
    export MOECOMP_URL=http://127.0.0.1:$port MOECOMP_RETENTION_DAYS=0
    export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # a local model only: never wait on the network
}

phase() { echo "$1" > "$work/phase"; echo "$(date +%T) phase: $1"; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null; }
moecomp() { "$PY" -m moecomp.cli.main "$@"; }
probe() { "$PY" "$here/service_probe.py" "$@"; }
elapsed() {  # "name seconds" once: a resumed run keeps the first figure
    grep -qs "^$1 " "$work/timings.txt" || echo "$1 $(( $(date +%s) - $2 ))" >> "$work/timings.txt"
}

write_request() {
    cat > "$work/recipe.yaml" <<EOF
# benchmarks/real_size_recipe.yaml's shape of recipe: [layer_drop $drop, gptq w4 g128] at $samples x $seq_len.
version: 1
stages:
  - {method: layer_drop, drop: $drop}
  - {method: gptq, bits: 4, group_size: 128}
calibration: {samples: $samples, seq_len: $seq_len}
EOF
    local fidelity_tokens=$(( eval_tokens < 16384 ? eval_tokens : 16384 ))
    cat > "$work/evaluation.json" <<EOF
{"perplexity": ["bundled:heldout"], "seq_len": $eval_seq_len, "max_tokens": $eval_tokens,
 "fidelity": true, "fidelity_tokens": $fidelity_tokens, "fidelity_topk": 256, "speed": true,
 "speed_settings": {"prefill_tokens": $prefill_tokens, "decode_tokens": $decode_tokens, "decode_batch_sizes": [1],
                    "decode_prompt_tokens": 128, "warmup": 1, "repeats": 3, "served": true}}
EOF
}

generate() {
    if [[ -f $work/model.done ]]; then echo "checkpoint already complete in $work/model"; return; fi
    local t0; t0=$(date +%s)
    rm -rf "$work/model"
    "$PY" "$here/make_random_checkpoint.py" --preset "$preset" ${layers:+--layers "$layers"} --out "$work/model" \
        > "$results/generate.log" 2>&1 || { tail -20 "$results/generate.log"; return 1; }
    tail -1 "$results/generate.log"
    elapsed checkpoint_generation_s "$t0"
    du -sb "$work/model" | cut -f1 > "$work/model.done"
}

start_services() {  # each unless still running from before an interruption
    if ! alive "$work/sampler.pid"; then
        setsid "$PY" "$here/service_probe.py" sample --data-dir "$data_dir" --results "$results" \
            >> "$results/sampler.log" 2>&1 < /dev/null &
        echo $! > "$work/sampler.pid"
    fi
    local t0; t0=$(date +%s)
    if ! alive "$work/serve.pid"; then
        setsid "$PY" "$here/peak_rss.py" --out "$results/rss.json" -- "$PY" -m moecomp.cli.main serve --port "$port" \
            >> "$results/serve.log" 2>&1 < /dev/null &
        echo $! > "$work/serve.pid"
    fi
    probe wait-ready --timeout 900 --pid "$(cat "$work/serve.pid")"
    elapsed serve_ready_s "$t0"
}

stop_services() {  # serve by its own pid (peak_rss.py then writes rss.json), then the sampler
    if alive "$work/serve.pid"; then
        local wrapper child; wrapper=$(cat "$work/serve.pid")
        child=$(ps -o pid= --ppid "$wrapper" | head -1 || true)
        [[ -n $child ]] && kill -TERM "$child" 2> /dev/null || kill -TERM "$wrapper" 2> /dev/null || true
        for _ in $(seq 60); do alive "$work/serve.pid" || break; sleep 1; done
        alive "$work/serve.pid" && kill -KILL "$wrapper" 2> /dev/null || true
    fi
    if alive "$work/sampler.pid"; then kill -TERM "$(cat "$work/sampler.pid")" 2> /dev/null || true; fi
    rm -f "$work/serve.pid" "$work/sampler.pid"
}

submit_and_watch() {
    if [[ ! -s $work/job_id ]]; then
        moecomp submit --model "$work/model" --recipe "$work/recipe.yaml" --evaluation "$work/evaluation.json" \
            --idempotency-key "$key" > "$work/job_id"
    fi
    local job; job=$(cat "$work/job_id")
    echo "job $job"
    phase running
    moecomp watch "$job" --poll >> "$results/watch.log" 2>&1 || echo "watch: the job did not succeed"
}

collect() {
    local job t0; job=$(cat "$work/job_id"); t0=$(date +%s)
    probe record "$job" --results "$results"
    moecomp download "$job" --kind manifest --out "$results/moecomp.json" || true
    moecomp download "$job" --kind report --out "$results/report.json" || true
    moecomp download "$job" --kind log --out "$results/job.log" || true
    if moecomp download "$job" --kind checkpoint --out "$work/checkpoint.tar"; then
        elapsed download_s "$t0"
        sha256sum "$work/checkpoint.tar" | cut -d' ' -f1 > "$work/checkpoint.sha256"
        rm -f "$work/checkpoint.tar"  # RAM-backed: the sha256 is what was to be checked
    fi
}

drive() {  # the whole run, in the background (start launches it with setsid)
    environment
    trap 'exit 143' TERM INT
    trap 'rc=$?; [[ $(cat "$work/phase") == done || $(cat "$work/phase") == failed:* ]] || { stop_services; probe summary --work "$work" \
        --results "$results" > /dev/null 2>&1 || true; phase "failed in $(cat "$work/phase") (exit $rc)"; }' EXIT
    phase generate; generate; write_request
    phase serve; start_services
    phase submit; submit_and_watch
    phase collect; collect; stop_services
    probe summary --work "$work" --results "$results" > /dev/null
    local status; status=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$results/job.json")
    [[ $status == succeeded ]] || { phase "failed: the job ended $status (see job.log)"; exit 0; }
    phase done
}

start() {
    if alive "$work/driver.pid"; then echo "already running (driver $(cat "$work/driver.pid"))"; return; fi
    if [[ -f $state && $(cat "$work/phase" 2> /dev/null) == done ]]; then echo "already done"; return; fi
    [[ -f $state ]] && echo "resuming the run in $work" || options "$@"
    rm -f "$work/phase"; echo starting > "$work/phase"
    setsid nohup bash "$here/$(basename "$0")" _drive "$work" "$results" >> "$results/driver.log" 2>&1 < /dev/null &
    echo $! > "$work/driver.pid"
    echo "started (driver $!); log $results/driver.log"
}

poll() {
    [[ -f $state ]] || { echo "not started: no $state" >&2; return 1; }
    environment
    local now; now=$(cat "$work/phase" 2> /dev/null || echo unknown)
    echo "$(date +%T) phase: $now"
    if [[ -s $work/job_id && $now == running ]]; then
        timeout 30 "$PY" -m moecomp.cli.main status "$(cat "$work/job_id")" || true
    fi
    case $now in
        done) cat "$results/summary.json"; return 0 ;;
        failed*) tail -30 "$results/driver.log"; return 1 ;;
    esac
    alive "$work/driver.pid" && return 3
    echo "the driver is gone while in phase $now: run start again to resume" >&2; tail -20 "$results/driver.log"
    return 1
}

case $cmd in
    start) start "$@" ;;
    _drive) drive ;;
    poll) poll ;;
    stop)  # serve first, gracefully (rss.json is written), then the driver's process group
        environment; stop_services
        if alive "$work/driver.pid"; then kill -TERM -- "-$(cat "$work/driver.pid")" || true; fi ;;
    run)
        start "$@"
        while true; do
            rc=0; poll > "$work/poll.out" 2>&1 || rc=$?
            if ((rc != 3)); then cat "$work/poll.out"; exit "$rc"; fi
            cat "$work/poll.out"; sleep "${POLL_S:-30}"
        done ;;
    *) echo "unknown command $cmd (start, poll, run, stop)" >&2; exit 2 ;;
esac
