"""The benchmarks cannot rot: each one runs, tiny, the way `make bench` runs it.

`benchmarks/run.py --scale 0.01 --rounds 1` on this suite's base loop, one benchmark
at a time, as a real subprocess; the JSON it writes is checked for its structure.
Never for absolute times or for the targets being met: that is docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import BASE_LOOP

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

#: every benchmark, and the start of the name of the figure it exists for
HEADLINE = {
    "spawn": "watched / bare wall time",
    "memory": "watched - bare",
    "echo": "watched / bare throughput",
    "stall": "0.2 s blocks caught with the blocking line",
    "scan": "parked scan of",
    "pytest": "--loopwatch / plain session time",
}


def run_bench(*args: str, timeout: float = 55) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)


def check_figure(f: dict[str, Any], name: str) -> None:
    assert f["bench"] == name
    assert f["loop"] == BASE_LOOP
    assert f["status"] in ("ok", "n/a"), f  # "error": the benchmark itself broke
    assert isinstance(f["name"], str) and f["name"]
    if f["status"] == "n/a":
        assert f["value"] is None and f["note"], f  # not measured, and says why
        assert f["verdict"] == "n/a"
        return
    assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]), f
    assert f["value"] >= 0
    if f["target"] is None:
        assert f["verdict"] == "info" and f["met"] is None
    else:
        op, limit = f["target"]
        assert op in ("<=", "<", ">=", "==") and isinstance(limit, (int, float))
        assert isinstance(f["met"], bool)
        assert f["verdict"] == ("met" if f["met"] else "MISSED")
    if f["unit"] == "x":  # a ratio measured in rounds: one sample per round
        assert f["samples"] and all(s > 0 for s in f["samples"]), f


@pytest.mark.parametrize("name", list(HEADLINE))
def test_benchmark_runs_tiny(name: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_bench("--only", name, "--loops", BASE_LOOP, "--scale", "0.01", "--rounds", "1",
                     "--timeout", "50", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1
    assert doc["machine"]["python"] == platform.python_version()
    assert doc["args"]["only"] == [name] and doc["args"]["loops"] == [BASE_LOOP]
    figures = doc["figures"]
    assert figures, doc
    for f in figures:
        check_figure(f, name)
    assert any(f["name"].startswith(HEADLINE[name]) for f in figures), figures
    # The same figures, as the table on stdout.
    table = proc.stdout
    assert "benchmark" in table and "verdict" in table
    for f in figures:
        assert f["name"] in table


def test_unknown_benchmark_is_a_usage_error() -> None:
    proc = run_bench("--only", "nope", timeout=30)
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_lw_bench_harness",
                                                  ROOT / "benchmarks" / "_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_verdicts_and_rotation() -> None:
    h = harness()
    ratio = h.Figure("spawn", "asyncio", "watched / bare", 1.31, "x", ("<=", 1.3))
    assert (ratio.met, ratio.verdict, ratio.value_text()) == (False, "MISSED", "1.31x")
    ratio.value = 1.3
    assert ratio.verdict == "met"
    echo = h.Figure("echo", "uvloop", "throughput", 0.96, "x", (">=", 0.97))
    assert echo.verdict == "MISSED" and echo.target_text() == ">= 0.97x"
    echo.value = 0.9695  # a miss that two decimals would show as 0.97x
    assert (echo.verdict, echo.value_text()) == ("MISSED", "0.9695x")
    echo.value = 0.9712
    assert (echo.verdict, echo.value_text()) == ("met", "0.97x")
    count = h.Figure("stall", "asyncio", "caught", 20, "of 20", ("==", 20))
    assert count.verdict == "met" and count.value_text() == "20/20"
    absent = h.not_available("scan", "asyncio", "ps", "s", "no console yet", ("<", 1.0))
    assert (absent.met, absent.verdict) == (None, "n/a")
    assert h.Figure.from_dict(ratio.to_dict()).to_dict() == ratio.to_dict()
    # Every variant runs once a round, and each round starts one later.
    assert list(h.rotate(["bare", "watched", "debug"], 3)) == [
        "bare", "watched", "debug", "watched", "debug", "bare", "debug", "bare", "watched"]
    assert h.ratios({"a": [2.0, 3.0], "b": [1.0, 2.0]}, "a", "b") == [2.0, 1.5]
