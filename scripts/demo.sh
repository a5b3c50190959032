#!/usr/bin/env bash
# The README's first command: install, start the service in the embedded mode (SQLite, no broker
# server), compress the bundled tiny Mixtral (expert drop 8 -> 6), watch it, download the checkpoint
# and check its sha256. The service keeps running afterwards; the last lines say how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${MOECOMP_PORT:-8000}
export MOECOMP_URL="http://127.0.0.1:${PORT}"
DATA=${MOECOMP_DATA_DIR:-var}
export MOECOMP_DATA_DIR="$DATA"
unset MOECOMP_DATABASE_URL MOECOMP_BROKER_URL  # the embedded mode
mkdir -p "$DATA"

echo "== 1/5 install (.venv; torch first, pinned, then moecomp)"
scripts/setup.sh
MOECOMP=.venv/bin/moecomp

echo "== 2/5 start the service on port ${PORT} (log: ${DATA}/serve.log)"
if [ -f "$DATA/serve.pid" ] && kill -0 "$(cat "$DATA/serve.pid")" 2>/dev/null; then
    echo "already running (pid $(cat "$DATA/serve.pid"))"
else
    nohup "$MOECOMP" serve --port "$PORT" >>"$DATA/serve.log" 2>&1 &
    echo $! >"$DATA/serve.pid"
fi
for _ in $(seq 180); do
    curl -fsS "$MOECOMP_URL/readyz" >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$DATA/serve.pid")" 2>/dev/null; then
        echo "the service stopped; its log:" >&2; tail -n 40 "$DATA/serve.log" >&2; exit 1
    fi
    sleep 1
done
curl -fsS "$MOECOMP_URL/readyz" >/dev/null || { echo "not ready after 180 s; see $DATA/serve.log" >&2; exit 1; }
export MOECOMP_KEY
MOECOMP_KEY=$(cat "$DATA/local-key")

echo "== 3/5 submit: tiny-mixtral, examples/demo-recipe.yaml"
JOB=$("$MOECOMP" submit --model moecomp/assets/models/tiny-mixtral \
    --recipe examples/demo-recipe.yaml --evaluation examples/demo-evaluation.yaml)

echo "== 4/5 watch job ${JOB}"
"$MOECOMP" watch "$JOB"

echo "== 5/5 download the checkpoint (its sha256 is checked against the service's)"
"$MOECOMP" download "$JOB" --kind checkpoint --out "$DATA/demo-checkpoint.tar"
"$MOECOMP" download "$JOB" --kind report_html --out "$DATA/demo-report.html"

cat <<DONE

Done. The compressed checkpoint: $DATA/demo-checkpoint.tar (a folder that transformers loads).
  Dashboard:  $MOECOMP_URL/dashboard
  API key:    $MOECOMP_KEY   (also in $DATA/local-key)
  Report:     $DATA/demo-report.html
  CLI:        export MOECOMP_KEY=$MOECOMP_KEY; .venv/bin/moecomp status $JOB
The service keeps running. Stop it with:  kill \$(cat $DATA/serve.pid)
DONE
