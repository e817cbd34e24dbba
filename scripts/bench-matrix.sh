#!/bin/sh
# Runs benchmarks/run.py on .venv, then on each matrix venv (.venvs/pyX.Y,
# made by `make test`) that exists and is not the same Python as .venv.
#   sh scripts/bench-matrix.sh [ARGS FOR run.py...]
set -u
cd "$(dirname "$0")/.." || exit 1

status=0
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
main=$(version .venv/bin/python) || exit 1

echo "=== benchmarks on python $main (.venv) ==="
.venv/bin/python benchmarks/run.py "$@" || status=1
for v in 3.11 3.12 3.13; do
    py=.venvs/py$v/bin/python
    [ "$v" != "$main" ] && [ -x "$py" ] || continue
    echo
    echo "=== benchmarks on python $v (.venvs/py$v) ==="
    "$py" benchmarks/run.py "$@" || status=1
done
exit $status
