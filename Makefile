# A fresh clone needs only Python: every target builds the environment it uses.
#   make demo    .venv, then an example under `loopwatch run`
#   make test    lint + type-check, then the suite on Python 3.10-3.13 x asyncio/uvloop
#   make bench   benchmarks/run.py on .venv and on each matrix venv present
# Matrix knobs: make test PYTHONS="3.12 3.13" PYTEST_ARGS="-k parked"

PYTHON ?= $(shell command -v python3 2>/dev/null || command -v python 2>/dev/null)
VENV := .venv
EXTRAS := dev,uvloop,aiomonitor
PYTHONS ?= 3.10 3.11 3.12 3.13
PYTEST_ARGS ?=
BENCH_ARGS ?=
PIP_INSTALL := -m pip install --disable-pip-version-check -q

.DEFAULT_GOAL := $(VENV)
.PHONY: $(VENV) demo lint test bench docs clean

$(VENV): $(VENV)/.installed

# Reinstalls only when pyproject.toml or the compiled speedups change (the install is
# editable; the install compiles loopwatch/_speedups.c, see hatch_build.py).
$(VENV)/.installed: pyproject.toml hatch_build.py loopwatch/_speedups.c
	@test -n "$(PYTHON)" || { echo "error: neither python3 nor python is on PATH" >&2; exit 1; }
	@$(VENV)/bin/python -c 'import sys' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python $(PIP_INSTALL) -e '.[$(EXTRAS)]'
	@touch $@

# A short parked threshold so that a two-second demo shows a parked task; --verbose
# prints every finding in full (site, stacks, hint) after the summary.
demo: $(VENV)
	$(VENV)/bin/loopwatch run --parked-after 0.5 --verbose examples/demo.py

lint: $(VENV)
	$(VENV)/bin/ruff check $(wildcard loopwatch tests examples benchmarks hatch_build.py)
	$(VENV)/bin/mypy

test: lint
	PYTHONS="$(PYTHONS)" EXTRAS="$(EXTRAS)" sh scripts/test-matrix.sh $(PYTEST_ARGS)

bench: $(VENV)
	sh scripts/bench-matrix.sh $(BENCH_ARGS)

$(VENV)/.docs-installed: $(VENV)/.installed
	$(VENV)/bin/python $(PIP_INSTALL) -e '.[$(EXTRAS),docs]'
	@touch $@

docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .venvs build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
