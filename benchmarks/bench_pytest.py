"""pytest: a generated suite of 500 trivial async tests, with and without ``--loopwatch``.

The suite (10 files of 50 tests, each ``await asyncio.sleep(0)``) runs under
pytest-asyncio in auto mode, in a temporary directory with its own ini file, as a
child ``python -m pytest`` process; on uvloop through pytest-asyncio's
``pytest_asyncio_loop_factories`` hook. Runs with and without ``--loopwatch`` alternate;
the figure is the median ratio of their session times (collection and the tests,
without the interpreter's start and the plugins' imports, which would dilute the
ratio), and of the CPU time of the same span (steadier on a busy machine). The suite's
conftest reads both clocks from session start to session finish, at full precision:
pytest's own summary ("500 passed in 0.52s") rounds to 10 ms, 2% of a plain run,
which is what the ratio is judged to. The ratio of whole-process wall times is given
too. Plugin autoloading is off: only pytest-asyncio and loopwatch's
plugin are loaded, so that no other installed plugin's cost dilutes the ratio. The
first test writes down whether its loop is watched, so that a ``--loopwatch`` run that
does not watch is not taken for a cheap one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from _harness import Config, Figure, median, not_available, ratios, rotate, spread

NAME = "pytest"
TITLE = "500 async tests with --loopwatch"

TARGET = ("<=", 1.2)
PER_FILE = 50

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

CONFTEST = """\
import os
import time


def pytest_sessionstart(session):
    session.config._lw_bench_start = (time.process_time(), time.perf_counter())


def pytest_sessionfinish(session):
    cpu, wall = session.config._lw_bench_start
    with open(os.environ["LW_BENCH_CPU"], "w") as f:
        f.write(f"{time.process_time() - cpu!r} {time.perf_counter() - wall!r}")
"""

UVLOOP_CONFTEST = """
import uvloop


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
"""

FIRST_TEST = """\
import asyncio
import os


def watched(loop):
    try:
        import loopwatch

        loopwatch.watcher(loop)
        return True
    except Exception:
        pass
    try:  # attached to a loop that takes no attributes (uvloop)
        from loopwatch._watcher import all_watchers

        return any(w.loop is loop for w in all_watchers())
    except Exception:
        return False


async def test_loop_is_recorded():
    loop = asyncio.get_running_loop()
    with open(os.environ["LW_BENCH_PROBE"], "w") as f:
        f.write(("watched " if watched(loop) else "bare ") + type(loop).__name__)
"""

TEST = """
async def test_{i}():
    await asyncio.sleep(0)
"""


def make_suite(root: str, tests: int, base: str) -> None:
    with open(os.path.join(root, "pytest.ini"), "w") as f:
        f.write(INI)
    with open(os.path.join(root, "conftest.py"), "w") as f:
        f.write(CONFTEST + (UVLOOP_CONFTEST if base == "uvloop" else ""))
    with open(os.path.join(root, "test_0_probe.py"), "w") as f:
        f.write(FIRST_TEST)
    made = 1
    for k in range((tests + PER_FILE - 1) // PER_FILE):
        body = ["import asyncio\n"]
        while len(body) <= PER_FILE and made < tests:
            body.append(TEST.format(i=made))
            made += 1
        with open(os.path.join(root, f"test_suite_{k:02d}.py"), "w") as f:
            f.write("".join(body))


class Run:
    """One run of the suite."""

    def __init__(self, wall: float, summary: str, code: int, cpu: float,
                 session: float = math.nan) -> None:
        self.wall = wall
        self.summary = summary
        self.code = code
        if math.isnan(session):  # (pytest's own, rounded to 10 ms)
            found = re.search(r" in ([0-9.]+)s", summary)
            session = float(found.group(1)) if found else math.nan
        #: the session's time: collection and the tests, no interpreter start
        self.session = session
        #: the CPU time of the same span, from the suite's conftest
        self.cpu = cpu


def suite_env(root: str, probe: str) -> dict[str, str]:
    """The environment the suite runs in (its conftest writes ``cpu.txt`` in ``root``)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "LOOPWATCH_TEST_LOOP")}
    env["LW_BENCH_PROBE"] = probe
    env["LW_BENCH_CPU"] = os.path.join(root, "cpu.txt")
    # Only the plugins the suite needs: whatever else the environment holds would be
    # timed too (hypothesis's plugin alone spends 0.5 s in its terminal summary, more
    # than the 500 tests take, which diluted the ratio). loopwatch's plugin is loaded in
    # both variants, as it is wherever loopwatch is installed; --loopwatch switches it on.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def suite_command(root: str, loopwatch: bool) -> list[str]:
    """``python -m pytest`` on the suite in ``root``, with or without ``--loopwatch``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-p", "pytest_asyncio.plugin", "-p", "loopwatch.pytest_plugin", "-c",
           os.path.join(root, "pytest.ini"), "--rootdir", root, root]
    if loopwatch:
        cmd.append("--loopwatch")
    return cmd


def pytest_run(root: str, loopwatch: bool, probe: str) -> Run:
    env = suite_env(root, probe)
    cpu_file = env["LW_BENCH_CPU"]
    cmd = suite_command(root, loopwatch)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|error)", ln)),
                   lines[-1] if lines else "no output")
    cpu = session = math.nan
    try:
        with open(cpu_file) as f:
            cpu, session = (float(x) for x in f.read().split())
        os.unlink(cpu_file)
    except (OSError, ValueError):
        pass
    return Run(wall, summary.strip("= "), proc.returncode, cpu, session)


def probe_of(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "not run"


def run(base: str, cfg: Config) -> list[Figure]:
    tests = cfg.n(500, minimum=5)
    rounds = cfg.pick_rounds(3, 1)
    name = f"--loopwatch / plain session time, {tests} tests"
    root = tempfile.mkdtemp(prefix="lw-bench-suite-")
    probe = os.path.join(root, "probe.txt")
    runs: dict[str, list[Run]] = {"plain": [], "loopwatch": []}
    seen = ""
    try:
        make_suite(root, tests, base)
        warm = pytest_run(root, False, probe)  # also writes the bytecode caches
        if warm.code != 0 or f"{tests} passed" not in warm.summary:
            raise RuntimeError(f"the generated suite does not pass: {warm.summary}")
        for variant in rotate(["plain", "loopwatch"], rounds):
            got = pytest_run(root, variant == "loopwatch", probe)
            if variant == "loopwatch" and not runs["loopwatch"]:
                seen = probe_of(probe)
                if got.code == 4 or "unrecognized arguments" in got.summary:
                    return [not_available(NAME, base, name, "x", "the pytest plugin has not "
                                          f"landed (--loopwatch: {got.summary})", TARGET)]
                if got.code != 0 or f"{tests} passed" not in got.summary:
                    return [Figure(NAME, base, name, None, "x", TARGET, status="error",
                                   note=f"the suite does not pass under --loopwatch: "
                                        f"{got.summary}")]
                if not seen.startswith("watched"):
                    return [not_available(NAME, base, name, "x", "--loopwatch ran, but the "
                                          f"tests' loop was not watched ({seen}): the plugin "
                                          "has not landed", TARGET)]
            if got.code != 0:
                raise RuntimeError(f"a {variant} run failed: {got.summary}")
            runs[variant].append(got)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    session = {k: [r.session for r in v] for k, v in runs.items()}
    cpu = {k: [r.cpu for r in v] for k, v in runs.items()}
    wall = {k: [r.wall for r in v] for k, v in runs.items()}
    return [
        Figure(NAME, base, name, median(ratios(session, "loopwatch", "plain")), "x", TARGET,
               samples=ratios(session, "loopwatch", "plain"),
               details={"plain_s": spread(session["plain"]),
                        "loopwatch_s": spread(session["loopwatch"]), "loop": seen}),
        Figure(NAME, base, f"--loopwatch / plain session CPU time, {tests} tests",
               median(ratios(cpu, "loopwatch", "plain")), "x", TARGET,
               samples=ratios(cpu, "loopwatch", "plain"),
               details={"plain_s": spread(cpu["plain"]), "loopwatch_s": spread(cpu["loopwatch"])}),
        Figure(NAME, base, "--loopwatch / plain wall time (with interpreter start)",
               median(ratios(wall, "loopwatch", "plain")), "x",
               samples=ratios(wall, "loopwatch", "plain"),
               details={"plain_s": spread(wall["plain"]),
                        "loopwatch_s": spread(wall["loopwatch"])}),
        Figure(NAME, base, "plain session time", median(session["plain"]), "s"),
    ]


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
