"""`loopwatch run`: the program runs as python would run it, every loop it makes is
watched, and the report of the whole run is written however the program ends.

Every test runs the real command in a subprocess on a small program written to
tmp_path, on the base loop of this test run (`--uvloop` when BASE_LOOP is uvloop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import BASE_LOOP

LOOPWATCH = [sys.executable, "-m", "loopwatch"]
BASE_FLAGS = ["--uvloop"] if BASE_LOOP == "uvloop" else []
SCRIPT_ENTRY = Path(sys.executable).parent / "loopwatch"

# A task left pending when the loop closes; the SITE line is its creation site. The
# program keeps a reference to it: a task dropped in a reference cycle may be collected
# before the loop closes, and is then reported as destroyed_pending instead.
STRAGGLER = """\
import asyncio

kept = []

async def forever():
    await asyncio.Event().wait()

async def main():
    kept.append(asyncio.create_task(forever(), name="left"))  # SITE
    await asyncio.sleep(0)
"""


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def site_line(path: Path) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "# SITE" in line:
            return number
    raise AssertionError(f"no '# SITE' line in {path}")


def run(*args: str | os.PathLike[str], cwd: Path, base: bool = True, timeout: float = 30,
        env: dict[str, str] | None = None,
        entry: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*(entry or LOOPWATCH), "run", *(BASE_FLAGS if base else []), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def plain(*args: str | os.PathLike[str], cwd: Path,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=30, env=env)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["schema"] == 1 and data["scope"] == "run"
    return data


def stragglers(report: dict[str, Any], name: str = "left") -> list[dict[str, Any]]:
    return [f for f in report["findings"]
            if f["kind"] == "straggler" and f["task"]["name"] == name]


def assert_straggler(report: dict[str, Any], script: Path) -> None:
    (finding,) = stragglers(report)
    assert finding["site"] == {"file": str(script), "line": site_line(script),
                               "function": "main"}


# -- the straggler, with its site, on every way a program makes loops ---------------------

WAYS = {
    "asyncio.run": ("asyncio.run(main())", BASE_LOOP),
    "new_event_loop": (
        "loop = asyncio.new_event_loop()\n"
        "loop.run_until_complete(main())\n"
        "loop.close()", BASE_LOOP),
    "get_event_loop_policy": (
        "loop = asyncio.get_event_loop_policy().new_event_loop()\n"
        "loop.run_until_complete(main())\n"
        "loop.close()", BASE_LOOP),
    "asyncio.Runner": (
        "with asyncio.Runner() as runner:\n"
        "    runner.run(main())", BASE_LOOP),
    "anyio.run": ("import anyio\nanyio.run(main)", BASE_LOOP),
    "anyio.run use_uvloop": (
        "import anyio\nanyio.run(main, backend_options={'use_uvloop': True})", "uvloop"),
    "uvloop.run": ("import uvloop\nuvloop.run(main())", "uvloop"),
    "uvloop.new_event_loop": (
        "import uvloop\n"
        "loop = uvloop.new_event_loop()\n"
        "loop.run_until_complete(main())\n"
        "loop.close()", "uvloop"),
    "uvloop.install": (
        "import uvloop, warnings\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore', DeprecationWarning)\n"
        "    uvloop.install()\n"
        "asyncio.run(main())", "uvloop"),
    "from uvloop import new_event_loop": (
        "from uvloop import new_event_loop\n"
        "loop = new_event_loop()\n"
        "loop.run_until_complete(main())\n"
        "loop.close()", "uvloop"),
    "loopwatch.run in the program": ("import loopwatch\nloopwatch.run(main())", "asyncio"),
    "loop in a thread": (
        "import threading\n"
        "t = threading.Thread(target=asyncio.run, args=(main(),))\n"
        "t.start(); t.join()", BASE_LOOP),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_every_way_of_making_a_loop_is_watched(tmp_path: Path, way: str) -> None:
    if way == "asyncio.Runner" and sys.version_info < (3, 11):
        pytest.skip("asyncio.Runner is new in 3.11")
    code, loop = WAYS[way]
    script = write(tmp_path, "app.py", STRAGGLER + code + "\nprint('done')\n")
    result = run("--report", "report.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    report = load(tmp_path / "report.json")
    assert_straggler(report, script)
    assert report["loop"] == loop
    # The summary on stderr: the summary line, then one line per finding with its site.
    # (Around it, what the program prints itself: asyncio's "Task was destroyed but it
    # is pending!" at interpreter exit for a loop closed by hand, the log lines of the
    # program's own loopwatch.run.)
    summary = [
        "loopwatch: 1 finding: 1 straggler",
        f"  straggler: {stragglers(report)[0]['message']} (app.py:{site_line(script)} in main)",
        f"loopwatch: report written to {tmp_path / 'report.json'}",
    ]
    lines = result.stderr.splitlines()
    start = lines.index(summary[0])
    assert lines[start:start + 3] == summary


def test_asyncio_run_with_uvloop_factory(tmp_path: Path) -> None:
    if sys.version_info < (3, 12):
        pytest.skip("asyncio.run takes loop_factory from 3.12")
    script = write(tmp_path, "app.py", STRAGGLER + textwrap.dedent("""\
        import uvloop
        asyncio.run(main(), loop_factory=uvloop.new_event_loop)
    """))
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = load(tmp_path / "r.json")
    assert_straggler(report, script)
    assert report["loop"] == "uvloop"


def test_uvloop_run_with_its_own_factory_is_attached(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + textwrap.dedent("""\
        import uvloop

        class MyLoop(uvloop.Loop):
            pass

        uvloop.run(main(), loop_factory=MyLoop)
    """))
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_straggler(load(tmp_path / "r.json"), script)


def test_clean_program_prints_nothing_and_reports_no_findings(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", """\
        import asyncio

        async def main():
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(10)))
            print("ok")

        asyncio.run(main())
    """)
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    report = load(tmp_path / "r.json")
    assert report["findings"] == [] and report["summary"] == {}
    assert report["argv"] == [str(script)]


def test_loop_never_closed_gets_a_final_audit(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + textwrap.dedent("""\
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        # never closed
    """))
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (finding,) = stragglers(load(tmp_path / "r.json"))
    assert "at the audit" in finding["message"]
    assert finding["site"]["line"] == site_line(script)


def test_every_loop_of_the_run_is_in_one_report(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + textwrap.dedent("""\
        asyncio.run(main())
        asyncio.run(main())
    """))
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = load(tmp_path / "r.json")
    assert len(stragglers(report)) == 2
    assert report["summary"] == {"straggler": 2}


# -- what happens after the program's last line --------------------------------------------


def test_report_sees_non_daemon_threads_and_atexit_handlers(tmp_path: Path) -> None:
    # A thread that starts its loop only once the main thread has finished (it waits
    # for it), and an atexit handler that runs one: both are in the report.
    script = write(tmp_path, "app.py", """\
        import asyncio, atexit, threading

        async def forever():
            await asyncio.Event().wait()

        async def leave(name):
            asyncio.create_task(forever(), name=name)
            await asyncio.sleep(0)

        def after_main():
            threading.main_thread().join()
            asyncio.run(leave("from-thread"))

        threading.Thread(target=after_main).start()
        atexit.register(lambda: asyncio.run(leave("from-atexit")))
        print("main done")
    """)
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = load(tmp_path / "r.json")
    assert len(stragglers(report, "from-thread")) == 1
    assert len(stragglers(report, "from-atexit")) == 1


def test_report_sees_a_thread_calling_into_a_closed_loop_after_main(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", """\
        import asyncio, threading

        loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

        def late():
            threading.main_thread().join()
            try:
                loop.call_soon_threadsafe(print, "never")  # SITE
            except RuntimeError:
                pass

        threading.Thread(target=late).start()
    """)
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (finding,) = [f for f in load(tmp_path / "r.json")["findings"]
                  if f["kind"] == "post_close_call"]
    assert finding["site"]["line"] == site_line(script)


# -- the program runs as python would run it --------------------------------------------------

PROBE = """\
import json, os, pickle, sys

class Point:
    def __init__(self, x):
        self.x = x

main = sys.modules["__main__"]
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "file": globals().get("__file__"),
    "path": sys.path,
    "spec": getattr(__spec__, "name", None),
    "package": __package__,
    "cached": globals().get("__cached__"),
    "loader": type(__loader__).__name__,
    "builtins": type(__builtins__).__name__,
    "main_is_me": main.__dict__ is globals(),
    "pickle": pickle.loads(pickle.dumps(Point(3))).x,
    "globals": sorted(k for k in globals() if k.startswith("__")),
}))
"""


@pytest.mark.parametrize("entry", ["python -m loopwatch", "loopwatch script"])
def test_script_sees_what_python_gives_it(tmp_path: Path, entry: str) -> None:
    write(tmp_path, "sub/probe.py", PROBE)
    expected = plain("sub/probe.py", "a", "--flag", cwd=tmp_path)
    assert expected.returncode == 0, expected.stderr
    result = run("sub/probe.py", "a", "--flag", cwd=tmp_path,
                 entry=LOOPWATCH if entry == "python -m loopwatch" else [str(SCRIPT_ENTRY)])
    assert result.returncode == 0, result.stderr
    got, want = json.loads(result.stdout), json.loads(expected.stdout)
    assert got == want
    assert got["argv"] == ["sub/probe.py", "a", "--flag"]
    assert got["path"][0] == str(tmp_path / "sub")


@pytest.mark.parametrize("module", ["pkg.probe", "pkg"])
def test_module_sees_what_python_dash_m_gives_it(tmp_path: Path, module: str) -> None:
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/probe.py", PROBE)
    write(tmp_path, "pkg/__main__.py", PROBE)
    expected = plain("-m", module, "x", cwd=tmp_path)
    assert expected.returncode == 0, expected.stderr
    result = run("-m", module, "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got, want = json.loads(result.stdout), json.loads(expected.stdout)
    assert got == want
    assert got["path"][0] == str(tmp_path)
    assert got["spec"] == ("pkg.probe" if module == "pkg.probe" else "pkg.__main__")


def test_folder_with_main_runs_like_python(tmp_path: Path) -> None:
    write(tmp_path, "app/__main__.py", PROBE)
    expected = plain("app", "x", cwd=tmp_path)
    result = run("app", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(expected.stdout)


def test_program_arguments_that_look_like_options_are_the_programs(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", "import sys; print(sys.argv[1:])")
    result = run("--depth", "4", script, "--report", "x", "-m", "--depth", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['--report', 'x', '-m', '--depth']\n"
    assert not (tmp_path / "x").exists()


# -- every ending: the status and the report ------------------------------------------------

CRASH = """\
import asyncio, os

async def inner():
    raise KeyError("inner")

async def main():
    try:
        await inner()
    except KeyError as e:
        raise ValueError("outer") from e

if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def test_crash_shows_the_programs_own_traceback_exactly(tmp_path: Path) -> None:
    script = write(tmp_path, "crash.py", CRASH)
    env = {**os.environ, "LOOP": BASE_LOOP}
    expected = plain(script, cwd=tmp_path, env=env)
    result = run("--report", "r.json", script, cwd=tmp_path, base=False, env=env)
    assert expected.returncode == result.returncode == 1
    assert "Traceback (most recent call last):" in expected.stderr
    assert result.stderr == expected.stderr
    assert load(tmp_path / "r.json")["findings"] == []


def test_crash_with_findings_still_writes_report(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + textwrap.dedent("""\
        asyncio.run(main())
        raise SystemError("late")
    """))
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == 1
    assert "SystemError: late" in result.stderr
    assert "loopwatch" not in result.stderr.split("SystemError: late")[0]
    assert_straggler(load(tmp_path / "r.json"), script)


def test_package_that_fails_to_import_is_the_programs_error(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "import missing_dependency_for_loopwatch_tests\n")
    write(tmp_path, "pkg/app.py", "print('never')\n")
    result = run("-m", "pkg.app", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "Traceback (most recent call last):\n"
        f'  File "{tmp_path / "pkg" / "__init__.py"}", line 1, in <module>\n'
        "    import missing_dependency_for_loopwatch_tests\n"
        "ModuleNotFoundError: No module named 'missing_dependency_for_loopwatch_tests'\n")


def test_syntax_error_is_shown_like_python(tmp_path: Path) -> None:
    script = write(tmp_path, "bad.py", "def broken(:\n    pass\n")
    expected = plain(script, cwd=tmp_path)
    result = run(script, cwd=tmp_path)
    assert expected.returncode == result.returncode == 1
    assert result.stderr == expected.stderr


@pytest.mark.parametrize(("call", "status", "stderr"), [
    ("sys.exit(7)", 7, ""),
    ("sys.exit()", 0, ""),
    ("sys.exit('bye')", 1, "bye\n"),
])
def test_sys_exit_status_and_report(tmp_path: Path, call: str, status: int, stderr: str) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + f"import sys\nasyncio.run(main())\n{call}\n")
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == status
    # The finding is logged when it is made (at the loop's close), python prints the exit
    # message when the program ends, and the summary comes last.
    logged = f"straggler: {stragglers(load(tmp_path / 'r.json'))[0]['message']}"
    assert result.stderr.startswith(logged)
    assert (stderr + "loopwatch: 1 finding: 1 straggler\n") in result.stderr
    assert_straggler(load(tmp_path / "r.json"), script)


WAITER = STRAGGLER + """\
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_and_signal(tmp_path: Path, sig: int) -> tuple[subprocess.Popen[str], str]:
    script = write(tmp_path, "app.py", WAITER)
    proc = subprocess.Popen([*LOOPWATCH, "run", *BASE_FLAGS, "--report", "r.json", str(script)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, err


def test_sigterm_writes_report_then_dies_of_sigterm(tmp_path: Path) -> None:
    proc, err = start_and_signal(tmp_path, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM
    report = load(tmp_path / "r.json")
    # The loop never closed: its final audit has both tasks, where they are parked.
    (left,) = stragglers(report)
    assert left["site"]["line"] == site_line(tmp_path / "app.py")
    assert "at the audit" in left["message"]
    assert "loopwatch: 2 findings: 2 straggler" in err


def test_program_sigterm_handler_is_left_alone(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", """\
        import os, signal
        signal.signal(signal.SIGTERM, lambda *a: print("mine", flush=True))
        os.kill(os.getpid(), signal.SIGTERM)
        print("still here")
    """)
    result = run("--report", "r.json", script, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "mine\nstill here\n")
    assert load(tmp_path / "r.json")["findings"] == []


def test_ctrl_c_writes_report_and_ends_like_python(tmp_path: Path) -> None:
    proc, err = start_and_signal(tmp_path, signal.SIGINT)
    # Python ends an uncaught KeyboardInterrupt by dying of SIGINT (status 130 in a shell).
    assert proc.returncode == -signal.SIGINT
    assert "\nKeyboardInterrupt\n" in err
    assert "_program.py" not in err and "_loops.py" not in err
    assert_straggler(load(tmp_path / "r.json"), tmp_path / "app.py")


# -- --fail-on ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fail_on", "status"), [
    ("any", 3),
    ("straggler", 3),
    ("parked,straggler", 3),
    ("parked", 0),
    ("none", 0),
])
def test_fail_on(tmp_path: Path, fail_on: str, status: int) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + "asyncio.run(main())\n")
    result = run("--fail-on", fail_on, "--report", "r.json", script, cwd=tmp_path)
    assert result.returncode == status, result.stderr
    assert_straggler(load(tmp_path / "r.json"), script)


def test_fail_on_keeps_program_status_when_nothing_matches(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", "import sys; sys.exit(5)")
    assert run("--fail-on", "any", script, cwd=tmp_path).returncode == 5


def test_fail_on_wins_over_program_status(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + "import sys\nasyncio.run(main())\nsys.exit(5)\n")
    assert run("--fail-on", "straggler", script, cwd=tmp_path).returncode == 3


# -- options reach the loops --------------------------------------------------------------


def test_depth_option_reaches_the_loops(tmp_path: Path) -> None:
    script = write(tmp_path, "app.py", STRAGGLER + textwrap.dedent("""\
        import loopwatch

        async def check():
            w = loopwatch.watcher()
            print(w.options.stack_depth, w.options.parked_after, w.options.stall_after,
                  w.options.track_origins, w.base)

        asyncio.run(check())
    """))
    result = run("--depth", "3", "--parked-after", "2.5", "--stall-after", "0.4",
                 "--track-origins", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"3 2.5 0.4 True {BASE_LOOP}\n"


# -- bad input: one line, status 2, the program never runs ----------------------------------

BAD_INPUT = {
    "missing script": (["missing.py"], "can't open file"),
    "unknown option": (["--no-such-option", "app.py"], "--no-such-option"),
    "negative depth": (["--depth", "-1", "app.py"], "--depth"),
    "nan seconds": (["--parked-after", "nan", "app.py"], "--parked-after"),
    "bad seconds": (["--stall-after", "soon", "app.py"], "--stall-after"),
    "unknown kind": (["--fail-on", "straggler,bogus", "app.py"], "'bogus'"),
    "missing module": (["-m", "no_such_module_for_loopwatch"], "no_such_module_for_loopwatch"),
    "missing parent package": (["-m", "nopkg_for_loopwatch.mod"], "nopkg_for_loopwatch"),
    "no program": ([], "name the program"),
    "report folder missing": (["--report", "nowhere/r.json", "app.py"], "--report"),
    "bad console address": (["--console", "nonsense", "app.py"], "--console"),
    "bad signal": (["--dump-on-signal", "SIGNOPE", "app.py"], "--dump-on-signal"),
    "dump on SIGTERM": (["--dump-on-signal", "TERM", "app.py"], "--dump-on-signal"),
    "dump after zero": (["--dump-after", "0", "app.py"], "--dump-after"),
    "option without value": (["--report"], "--report"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, case: str) -> None:
    args, mentions = BAD_INPUT[case]
    write(tmp_path, "app.py", "print('the program ran')")
    result = run(*args, cwd=tmp_path, base=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert mentions in result.stderr
    assert result.stderr.startswith("loopwatch run: error: ")


def test_no_command_is_one_line_and_status_2(tmp_path: Path) -> None:
    result = subprocess.run(LOOPWATCH, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "run" in result.stderr


# -- the command itself ---------------------------------------------------------------------


def test_console_script_entry_point(tmp_path: Path) -> None:
    assert SCRIPT_ENTRY.exists(), "the `loopwatch` console script is not installed"
    result = subprocess.run([str(SCRIPT_ENTRY), "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "--version" in result.stdout


def test_version_and_run_help(tmp_path: Path) -> None:
    import loopwatch

    version = subprocess.run([*LOOPWATCH, "--version"], capture_output=True, text=True,
                             timeout=30)
    from loopwatch._records import speedups

    build = "compiled speedups" if speedups is not None else "pure Python"
    assert (version.returncode, version.stdout) == (
        0, f"loopwatch {loopwatch.__version__} ({build})\n")
    helped = subprocess.run([*LOOPWATCH, "run", "--help"], capture_output=True, text=True,
                            timeout=30)
    assert helped.returncode == 0
    for option in ("--uvloop", "--console", "--parked-after", "--stall-after", "--depth",
                   "--report", "--fail-on", "--dump-on-signal", "--dump-after",
                   "--track-origins", "-m MODULE"):
        assert option in helped.stdout


def test_help_lists_every_command() -> None:
    result = subprocess.run([*LOOPWATCH, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for command in ("run ps tree where parked stalls lag cancel audit findings growth stack "
                    "dump console top").split():
        assert f"    {command} " in result.stdout, command


# -- the console of a program run under `loopwatch run` -------------------------------------

SERVED = """\
import asyncio, os, sys

async def forever():
    await asyncio.Event().wait()

async def main():
    task = asyncio.create_task(forever(), name="waiting-worker")
    print(os.getpid(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    task.cancel()

if os.environ.get("OWN_LOOPWATCH"):
    import loopwatch
    loopwatch.run(main())  # the program's own watched loop, without console options
else:
    asyncio.run(main())
"""


@pytest.mark.parametrize(("console", "own"), [("auto", False), ("off", False), ("auto", True)])
def test_console_is_on_by_default(tmp_path: Path, console: str, own: bool) -> None:
    script = write(tmp_path, "app.py", SERVED)
    env = {**os.environ, "OWN_LOOPWATCH": "1" if own else ""}
    proc = subprocess.Popen([*LOOPWATCH, "run", *BASE_FLAGS, "--console", console, str(script)],
                            env=env,
                            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        pid = proc.stdout.readline().strip()
        ps = subprocess.run([*LOOPWATCH, "ps", pid, "--json"], capture_output=True, text=True,
                            timeout=30)
        proc.stdin.write("\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    if console == "off":
        assert ps.returncode != 0
        return
    assert ps.returncode == 0, ps.stderr
    names = {row["coro"]: row["name"] for row in json.loads(ps.stdout)["tasks"]}
    assert names["__main__.forever"] == "waiting-worker"
    assert names["__main__.main"] == "Task-1"  # the console's own tasks took no number


@pytest.mark.parametrize("how", ["--dump-on-signal", "--dump-after"])
def test_dumps_show_the_tasks_while_the_program_runs(tmp_path: Path, how: str) -> None:
    script = write(tmp_path, "app.py", SERVED)
    options = ["--dump-on-signal", "USR1"] if how == "--dump-on-signal" else ["--dump-after",
                                                                             "0.2"]
    proc = subprocess.Popen([*LOOPWATCH, "run", *BASE_FLAGS, "--console", "off", *options,
                             str(script)], cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        proc.stdout.readline()
        if how == "--dump-on-signal":
            proc.send_signal(signal.SIGUSR1)
        seen = []
        for line in proc.stderr:  # the dump is written while the program waits
            seen.append(line)
            if "waiting-worker" in line:
                break
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "waiting-worker" in "".join(seen)


def test_busy_console_address_is_one_line_and_the_program_runs_on(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "busy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen()
        script = write(tmp_path, "app.py", "import asyncio\nasyncio.run(asyncio.sleep(0))\n"
                                           "print('ran')\n")
        result = run("--console", f"unix:{path}", script, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "ran\n")
    (line,) = result.stderr.splitlines()
    assert line.startswith("loopwatch: the console did not start: ") and str(path) in line


# -- the demo -----------------------------------------------------------------------------------


def test_demo_shows_several_kinds_of_findings_and_exits_0(tmp_path: Path) -> None:
    demo = Path(__file__).parent.parent / "examples" / "demo.py"
    result = run("--parked-after", "0.5", "--report", "r.json", demo, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("all orders processed\n")
    kinds = load(tmp_path / "r.json")["summary"]
    for kind in ("straggler", "stall", "parked", "never_awaited", "unretrieved_exception"):
        assert kinds.get(kind), (kind, kinds)
