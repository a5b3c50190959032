#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up, start the services the tests need, lint, test.
# With no arguments the library's tests (tests/compression: CPU-bound, no services) run beside the rest (mostly
# waiting on processes, databases and a browser), each on one of the two cores; with arguments, one pytest runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
[ -x scripts/install_chromium.sh ] && scripts/install_chromium.sh
.venv/bin/ruff check moecomp tests benchmarks
.venv/bin/ruff format --check moecomp tests benchmarks
.venv/bin/mypy moecomp
if (($#)); then
    exec .venv/bin/python -m pytest -q "$@"
fi
library_log=$(mktemp)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/compression >"$library_log" 2>&1 &
library=$!
service=0
# One torch thread here too: with the other core busy, a second thread only waits for it (tests/worker/procs.py).
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m pytest -q --ignore=tests/compression || service=$?
library_status=0
wait "$library" || library_status=$?
echo "=== tests/compression (run beside the above) ==="
cat "$library_log"
rm -f "$library_log"
echo "service tests: exit $service; library tests: exit $library_status"
exit $((service || library_status))
