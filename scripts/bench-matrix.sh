#!/bin/sh
# Runs benchmarks/run.py on .venv, then on each matrix venv (.venvs/pyX.Y, made by
# `make test` or scripts/test-matrix.sh) that exists and is not the same Python as .venv.
#   sh scripts/bench-matrix.sh [ARGS FOR run.py...]
#   env: BENCH_PYTHONS   matrix versions to try (default "3.11 3.12 3.13": the full run
#                        takes about 5 minutes a Python; add 3.10 when there is time)
#        BENCH_JSON_DIR  write each Python's figures to DIR/pyX.Y.json and all of them,
#                        as the Markdown tables of docs/benchmarks.md, to DIR/tables.md
set -u
cd "$(dirname "$0")/.." || exit 1

BENCH_PYTHONS=${BENCH_PYTHONS:-"3.11 3.12 3.13"}
BENCH_JSON_DIR=${BENCH_JSON_DIR:-}

status=0
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
main=$(version .venv/bin/python) || exit 1
[ -n "$BENCH_JSON_DIR" ] && { mkdir -p "$BENCH_JSON_DIR" || exit 1; }

# run_one PYTHON VERSION [ARGS...]
run_one() {
    py=$1 v=$2
    shift 2
    if [ -n "$BENCH_JSON_DIR" ]; then
        "$py" benchmarks/run.py "$@" --json "$BENCH_JSON_DIR/py$v.json"
    else
        "$py" benchmarks/run.py "$@"
    fi
}

echo "=== benchmarks on python $main (.venv) ==="
run_one .venv/bin/python "$main" "$@" || status=1
for v in $BENCH_PYTHONS; do
    py=.venvs/py$v/bin/python
    [ "$v" != "$main" ] && [ -x "$py" ] || continue
    echo
    echo "=== benchmarks on python $v (.venvs/py$v) ==="
    run_one "$py" "$v" "$@" || status=1
done
if [ -n "$BENCH_JSON_DIR" ]; then
    .venv/bin/python benchmarks/report.py "$BENCH_JSON_DIR"/py*.json >"$BENCH_JSON_DIR/tables.md" \
        && echo && echo "tables for docs/benchmarks.md: $BENCH_JSON_DIR/tables.md" || status=1
fi
exit $status
