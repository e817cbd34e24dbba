#!/bin/sh
# The test matrix: every supported Python x every base loop.
#
#   sh scripts/test-matrix.sh [PYTEST ARGS...]
#   env: PYTHONS  versions to try   (default "3.10 3.11 3.12 3.13")
#        LOOPS    base loops        (default "asyncio uvloop"), passed to the
#                 suite as LOOPWATCH_TEST_LOOP
#        EXTRAS   extras installed  (default "dev,uvloop,aiomonitor")
#        PURE     "1" (default): one more run, on the last Python with the first loop,
#                 with LOOPWATCH_NO_SPEEDUPS=1: loopwatch's Python paths, which are
#                 what runs where the compiled speedups were not built; "0": none
#
# Each Python gets its own venv in .venvs/pyX.Y, reinstalled only when
# pyproject.toml changes. A version that is not installed is skipped with a
# SKIP line. Every run is made even after a failure; the script exits non-zero
# if any run failed, including pytest's exit 5 (no tests collected), or if no
# run could be made at all.
set -u
cd "$(dirname "$0")/.." || exit 1

PYTHONS=${PYTHONS:-"3.10 3.11 3.12 3.13"}
LOOPS=${LOOPS:-"asyncio uvloop"}
EXTRAS=${EXTRAS:-"dev,uvloop,aiomonitor"}
PURE=${PURE:-1}

# Prints the path of an interpreter for version $1 (X.Y) that really runs and
# really is X.Y, or nothing. pyenv's versions directory comes first: a pyenv
# shim on PATH exists for every installed version but fails when that version
# is not the active one, so PATH alone cannot be trusted.
find_python() {
    v=$1
    root=
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root 2>/dev/null)
    fi
    root=${root:-${PYENV_ROOT:-$HOME/.pyenv}}
    for cand in "$root"/versions/"$v"*/bin/python"$v" "$(command -v "python$v" 2>/dev/null)"; do
        [ -n "$cand" ] && [ -x "$cand" ] || continue
        if "$cand" -c "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$v')" >/dev/null 2>&1; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

# Creates or refreshes .venvs/pyX.Y; prints its python.
ensure_venv() {
    base=$2 venv=.venvs/py$1
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$venv"
        "$base" -m venv "$venv" >&2 || return 1
    fi
    stamp=$venv/.installed
    # (hatch_build.py compiles loopwatch/_speedups.c at install: a change to either
    # needs a reinstall too)
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hatch_build.py -nt "$stamp" ] \
            || [ loopwatch/_speedups.c -nt "$stamp" ]; then
        echo "installing loopwatch[$EXTRAS] into $venv" >&2
        "$venv/bin/python" -m pip install --disable-pip-version-check -q -e ".[$EXTRAS]" >&2 || return 1
        touch "$stamp"
    fi
    echo "$venv/bin/python"
}

passed=0 failed=0 skipped=0 failures=
last_v= last_py= last_vpy=

# count_run NAME STATUS: one run's result in the totals. Status 5 (no tests collected)
# is a failure too: a run that tested nothing failed.
count_run() {
    if [ "$2" -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures="$failures $1(exit $2)"
    fi
}
for v in $PYTHONS; do
    if ! py=$(find_python "$v"); then
        echo "SKIP python $v: not installed"
        skipped=$((skipped + 1))
        continue
    fi
    if ! vpy=$(ensure_venv "$v" "$py"); then
        echo "FAIL python $v: could not create .venvs/py$v from $py"
        failed=$((failed + 1))
        failures="$failures py$v/venv"
        continue
    fi
    last_v=$v last_py=$py last_vpy=$vpy
    for loop in $LOOPS; do
        echo
        echo "=== python $v ($py) x $loop ==="
        LOOPWATCH_TEST_LOOP=$loop "$vpy" -m pytest -q -p no:cacheprovider "$@"
        count_run "py$v/$loop" $?
    done
done

if [ "$PURE" = 1 ] && [ -n "$last_vpy" ]; then
    loop=${LOOPS%% *}
    echo
    echo "=== python $last_v ($last_py) x $loop, pure Python (LOOPWATCH_NO_SPEEDUPS=1) ==="
    LOOPWATCH_NO_SPEEDUPS=1 LOOPWATCH_TEST_LOOP=$loop "$last_vpy" -m pytest -q -p no:cacheprovider "$@"
    count_run "py$last_v/$loop-pure" $?
fi

echo
[ -n "$failures" ] && echo "failed runs:$failures"
[ "$passed" -eq 0 ] && [ "$failed" -eq 0 ] && echo "no run was made: none of the Pythons \"$PYTHONS\" is installed"
echo "matrix: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
