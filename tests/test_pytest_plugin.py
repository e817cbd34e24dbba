"""The pytest plugin, tested as users use it: real test files run by pytest in a subprocess.

Each run batches many small inner tests (one subprocess costs far more than the tests
in it) and is then read back from pytest's ``-rA`` summary and from the session's
``--loopwatch-report`` JSON, which names the test of every finding. The inner runs
use the suite's base loop: with LOOPWATCH_TEST_LOOP=uvloop the inner conftest gives
pytest-asyncio a uvloop loop factory and anyio ``use_uvloop``.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass

import pytest

from loopwatch import Report
from loopwatch.testing import ORIGIN_DEPTH

from .conftest import BASE_LOOP

INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
{extra}
"""

UVLOOP_CONFTEST = """\
import pytest
import uvloop

def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}

@pytest.fixture
def anyio_backend():
    return ("asyncio", {"use_uvloop": True})
"""

ASYNCIO_CONFTEST = """\
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


@dataclass
class Run:
    result: pytest.RunResult
    #: test name -> statuses from the -rA summary (PASSED, FAILED, ERROR, ...)
    status: dict[str, set[str]]
    #: test name -> finding kinds from the JSON report
    kinds: dict[str, list[str]]
    report: Report | None

    @property
    def text(self) -> str:
        return self.result.stdout.str()


def run(pytester: pytest.Pytester, files: dict[str, str], *args: str, ini: str = "",
        report: bool = True) -> Run:
    pytester.makefile(".ini", pytest=INI.format(extra=ini))
    pytester.makeconftest(UVLOOP_CONFTEST if BASE_LOOP == "uvloop" else ASYNCIO_CONFTEST)
    for name, body in files.items():
        pytester.makepyfile(**{name: textwrap.dedent(body)})
    argv = ["-rA", "-p", "no:cacheprovider", *args]
    if report:
        argv.append("--loopwatch-report=lw-report.json")
    result = pytester.runpytest_subprocess(*argv)
    status: dict[str, set[str]] = defaultdict(set)
    for line in result.outlines:
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) \S+?::(\S+)", line)
        if m:
            status[m.group(2)].add(m.group(1))
    kinds: dict[str, list[str]] = defaultdict(list)
    parsed = None
    path = pytester.path / "lw-report.json"
    if report and path.exists():
        parsed = Report.from_json(path.read_text())
        for finding in parsed.findings:
            kinds[finding.details["test"].split("::", 1)[1]].append(finding.kind)
    return Run(result, dict(status), {k: sorted(v) for k, v in kinds.items()}, parsed)


KINDS_FILE = """
    import asyncio
    import gc
    import pytest
    import pytest_asyncio

    pytestmark = pytest.mark.asyncio


    async def worker(event):
        await event.wait()


    async def boom():
        raise ValueError("nobody looked")


    async def test_clean():
        task = asyncio.create_task(asyncio.sleep(0))
        await task


    async def test_straggler():
        asyncio.create_task(worker(asyncio.Event()), name="left-behind")
        await asyncio.sleep(0)


    async def test_finishes_within_grace():
        asyncio.create_task(asyncio.sleep(0.01))


    async def test_timer():
        asyncio.get_running_loop().call_later(30, print, "never")


    async def test_never_awaited():
        worker(asyncio.Event())


    async def test_unretrieved():
        task = asyncio.create_task(boom())
        await asyncio.sleep(0.01)
        del task


    async def test_destroyed_pending():
        async def waits_forever():
            await asyncio.get_running_loop().create_future()
        asyncio.create_task(waits_forever(), name="dropped")
        await asyncio.sleep(0)
        gc.collect()


    async def test_await_cycle():
        box = {}
        async def first():
            await asyncio.sleep(0)
            await box["second"]
        async def second():
            await asyncio.sleep(0)
            await box["first"]
        box["first"] = asyncio.create_task(first())
        box["second"] = asyncio.create_task(second())
        await asyncio.sleep(0.01)


    @pytest.fixture
    def late_caller():
        box = {}
        yield box
        try:
            box["loop"].call_soon(print, "too late")  # the loop closed before this teardown
        except RuntimeError:
            pass


    async def test_post_close(late_caller):
        late_caller["loop"] = asyncio.get_running_loop()


    @pytest_asyncio.fixture
    async def leaks_in_teardown():
        yield
        asyncio.create_task(worker(asyncio.Event()), name="from-teardown")


    async def test_fixture_teardown_leaks(leaks_in_teardown):
        await asyncio.sleep(0)


    async def test_unclosed_resource():
        async def handle(reader, writer):
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        global connection
        connection = await asyncio.open_connection("127.0.0.1", port)
        await connection[0].read()  # the server hung up; this side never closes
        server.close()


    async def test_fails_and_leaks():
        global kept
        kept = asyncio.create_task(worker(asyncio.Event()), name="fails-too")
        await asyncio.sleep(0)
        assert 1 == 2
"""


def test_each_kind_fails_the_test_that_left_it(pytester: pytest.Pytester) -> None:
    r = run(pytester, {"test_kinds": KINDS_FILE}, "--loopwatch")
    expected = {
        "test_straggler": ["straggler"],
        "test_timer": ["dropped_callback"],
        "test_never_awaited": ["never_awaited"],
        "test_unretrieved": ["unretrieved_exception"],
        "test_destroyed_pending": ["destroyed_pending"],
        "test_await_cycle": ["await_cycle", "straggler", "straggler"],
        "test_post_close": ["post_close_call"],
        "test_fixture_teardown_leaks": ["straggler"],
        "test_unclosed_resource": ["unclosed_resource"],
        "test_fails_and_leaks": ["straggler"],
    }
    assert r.kinds == expected, r.text
    for name in expected:
        if name == "test_fails_and_leaks":
            continue
        # The test itself passed; its own teardown is what failed.
        assert r.status[name] == {"PASSED", "ERROR"}, (name, r.text)
    for name in ("test_clean", "test_finishes_within_grace"):
        assert r.status[name] == {"PASSED"}, (name, r.text)
    # A test that failed is not failed a second time, and its report says what was seen.
    assert r.status["test_fails_and_leaks"] == {"FAILED"}
    assert r.report is not None
    (failed,) = [f for f in r.report.findings if f.details["test"].endswith("fails_and_leaks")]
    assert failed.details["test_failed"] is True
    assert "not failed again for this, as it already failed" in r.text
    r.result.assert_outcomes(passed=11, failed=1, errors=9)
    assert "loopwatch: 12 findings in 10 tests" in r.text


def test_failure_text_and_json_report(pytester: pytest.Pytester) -> None:
    r = run(pytester, {"test_one": """
        import asyncio
        import pytest

        async def worker(event):
            await event.wait()

        @pytest.mark.asyncio
        async def test_leak():
            asyncio.create_task(worker(asyncio.Event()), name="left-behind")
            await asyncio.sleep(0)
    """}, "--loopwatch")
    text = r.text
    flat = " ".join(text.split())  # the report is wrapped to the terminal's width
    assert "ERROR at teardown of test_leak" in text
    assert "loopwatch: test_one.py::test_leak left its event loop unclean (1 straggler)" in text
    assert re.search(r"straggler: task T\d+ 'left-behind' \(test_one\.worker\) was still "
                     r"pending when the test ended, waiting on Event\.wait", flat)
    assert "at test_one.py:9 in test_leak" in text  # the creation site
    assert "test_one.py:5 in worker" in text  # where it was parked
    assert "loopwatch cancelled the stragglers" in text
    # The report is the failure text, not a traceback into the plugin.
    assert "pytest_plugin.py" not in text
    # The session's JSON report: schema 1, every finding tagged with its test.
    data = json.loads((pytester.path / "lw-report.json").read_text())
    assert data["schema"] == 1
    assert data["summary"] == {"straggler": 1}
    (finding,) = data["findings"]
    assert finding["kind"] == "straggler"
    assert finding["details"]["test"] == "test_one.py::test_leak"
    assert finding["task"]["name"] == "left-behind"
    assert finding["site"] == {"file": str(pytester.path / "test_one.py"), "line": 9,
                               "function": "test_leak"}
    assert all({"file", "line", "function"} == set(f) for f in finding["stacks"]["created"])
    assert finding["details"]["parked_at"]["line"] == 5
    assert r.report is not None and r.report.scope == "run"
    assert "loopwatch: report written to lw-report.json" in text


MODULE_SCOPE_FILE = """
    import asyncio
    import pytest
    import pytest_asyncio

    pytestmark = pytest.mark.asyncio(loop_scope="module")


    async def worker(event):
        await event.wait()


    @pytest_asyncio.fixture(loop_scope="module", scope="module")
    async def server():
        task = asyncio.create_task(worker(asyncio.Event()), name="server")
        yield task
        task.cancel()


    async def test_first(server):
        await asyncio.sleep(0)


    async def test_second_leaks(server):
        asyncio.create_task(worker(asyncio.Event()), name="from-second")
        await asyncio.sleep(0)


    async def test_fails_and_leaks(server):
        global kept
        kept = asyncio.create_task(worker(asyncio.Event()), name="failed-and-left")
        await asyncio.sleep(0)
        assert 1 == 2


    async def test_third(server):
        assert not server.done()
        # The leak of the test that failed was cleaned up all the same.
        assert kept.cancelled()
        await asyncio.sleep(0)
"""

SLOPPY_MODULE_FILE = """
    import asyncio
    import pytest
    import pytest_asyncio

    pytestmark = pytest.mark.asyncio(loop_scope="module")


    async def worker(event):
        await event.wait()


    @pytest_asyncio.fixture(loop_scope="module", scope="module")
    async def never_stopped():
        yield asyncio.create_task(worker(asyncio.Event()), name="never-stopped")


    async def test_uses_it(never_stopped):
        await asyncio.sleep(0)


    async def test_last_of_module(never_stopped):
        await asyncio.sleep(0)
"""

SESSION_SCOPE_FILES = {
    "test_session_a": """
        import asyncio
        import pytest

        @pytest.mark.asyncio(loop_scope="session")
        async def test_a_leaks():
            asyncio.create_task(asyncio.Event().wait(), name="a-leak")
            await asyncio.sleep(0)

        @pytest.mark.asyncio(loop_scope="session")
        async def test_a_clean():
            await asyncio.sleep(0)
    """,
    "test_session_b": """
        import asyncio
        import pytest

        @pytest.mark.asyncio(loop_scope="session")
        async def test_b_clean():
            await asyncio.sleep(0)
    """,
}


def test_module_and_session_loops_blame_the_right_test(pytester: pytest.Pytester) -> None:
    r = run(pytester, {"test_module_scope": MODULE_SCOPE_FILE,
                       "test_sloppy_module": SLOPPY_MODULE_FILE, **SESSION_SCOPE_FILES},
            "--loopwatch")
    # A task a module-scoped fixture keeps is not blamed on the tests that run beside it;
    # the test that leaks on the shared loop is, and its leak does not reach the next.
    assert r.kinds == {
        "test_second_leaks": ["straggler"],
        "test_fails_and_leaks": ["straggler"],
        "test_last_of_module": ["straggler"],
        "test_a_leaks": ["straggler"],
    }, r.text
    for name in ("test_first", "test_third", "test_uses_it", "test_a_clean", "test_b_clean"):
        assert r.status[name] == {"PASSED"}, (name, r.text)
    # A module fixture that never stops its task: found when the module's loop is about
    # to close, in the teardown of the module's last test.
    assert "'never-stopped'" in r.text
    assert r.status["test_last_of_module"] == {"PASSED", "ERROR"}
    assert r.status["test_fails_and_leaks"] == {"FAILED"}


ANYIO_FILE = """
    import asyncio
    import anyio
    import pytest

    pytestmark = pytest.mark.anyio


    async def worker(event):
        await event.wait()


    @pytest.fixture(scope="module")
    def anyio_backend(request):
        return request.getfixturevalue("_backend_choice")


    @pytest.fixture(scope="module")
    def _backend_choice():
        {backend}


    @pytest.fixture(scope="module")
    async def keeps_a_task():
        task = asyncio.create_task(worker(asyncio.Event()), name="module-fixture-task")
        yield task
        task.cancel()


    @pytest.fixture
    async def leaks_in_teardown():
        yield
        asyncio.create_task(worker(asyncio.Event()), name="anyio-teardown-leak")


    async def test_clean(keeps_a_task):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0)


    async def test_leak(keeps_a_task):
        asyncio.create_task(worker(asyncio.Event()), name="anyio-leak")
        await asyncio.sleep(0)


    async def test_fixture_teardown(leaks_in_teardown):
        await asyncio.sleep(0)


    async def test_loop_is_what_was_asked():
        loop = asyncio.get_running_loop()
        assert ("uvloop" in type(loop).__module__) == {uvloop}


    async def test_after(keeps_a_task):
        assert not keeps_a_task.done()
"""


def test_anyio_plugin(pytester: pytest.Pytester) -> None:
    # On uvloop: anyio's use_uvloop, which calls uvloop.new_event_loop itself.
    uvloop = BASE_LOOP == "uvloop"
    backend = 'return ("asyncio", {"use_uvloop": True})' if uvloop else 'return "asyncio"'
    r = run(pytester, {"test_anyio_plugin": ANYIO_FILE.replace("{backend}", backend)
                       .replace("{uvloop}", str(uvloop))}, "--loopwatch")
    assert r.kinds == {"test_leak": ["straggler"], "test_fixture_teardown": ["straggler"]}, \
        r.text
    for name in ("test_clean", "test_loop_is_what_was_asked", "test_after"):
        assert r.status[name] == {"PASSED"}, (name, r.text)
    assert "'anyio-leak'" in r.text and "'anyio-teardown-leak'" in r.text
    # anyio's own runner task and the module fixture's task are never reported.
    assert r.report is not None
    assert not [f for f in r.report.findings
                if f.task is not None and f.task.coro.endswith("_run_tests_and_fixtures")]
    assert "module-fixture-task" not in r.text


OPTIONS_FILE = """
    import asyncio
    import pytest

    pytestmark = pytest.mark.asyncio


    async def worker(event):
        await event.wait()


    async def background_heartbeat(event):
        await event.wait()


    async def test_ignored_by_ini_coro_name():
        asyncio.create_task(background_heartbeat(asyncio.Event()))
        await asyncio.sleep(0)


    async def test_ignored_by_ini_task_name():
        asyncio.create_task(worker(asyncio.Event()), name="pool-worker-3")
        await asyncio.sleep(0)


    async def test_ignored_by_ini_site():
        asyncio.create_task(worker(asyncio.Event()))  # ignored: this line's file:line
        await asyncio.sleep(0)


    @pytest.mark.loopwatch(ignore=["*worker"])
    async def test_ignored_by_marker():
        asyncio.create_task(worker(asyncio.Event()))
        await asyncio.sleep(0)


    @pytest.mark.loopwatch(enabled=False)
    async def test_disabled_by_marker():
        asyncio.create_task(worker(asyncio.Event()))
        await asyncio.sleep(0)


    @pytest.mark.loopwatch(checks="default,-straggler")
    async def test_straggler_not_checked():
        asyncio.create_task(worker(asyncio.Event()))
        await asyncio.sleep(0)


    @pytest.mark.loopwatch(checks=["never_awaited"])
    async def test_only_never_awaited_checked():
        asyncio.get_running_loop().call_later(30, print)
        worker(asyncio.Event())


    async def slow():
        await asyncio.sleep(0.05)


    @pytest.mark.loopwatch(grace=0)
    async def test_no_grace():
        asyncio.create_task(slow(), name="slow-no-grace")


    @pytest.mark.loopwatch(grace=2)
    async def test_long_grace():
        asyncio.create_task(slow(), name="slow-long-grace")


    async def test_not_ignored():
        asyncio.create_task(worker(asyncio.Event()), name="still-reported")
        await asyncio.sleep(0)
"""


def test_ini_patterns_marker_checks_and_grace(pytester: pytest.Pytester) -> None:
    written = textwrap.dedent(OPTIONS_FILE).lstrip("\n")  # as makepyfile writes it
    site_line = next(i for i, line in enumerate(written.splitlines(), 1)
                     if "ignored: this line" in line)
    ini = ("loopwatch_mode = error\n"
           "loopwatch_ignore =\n"
           "    *background_heartbeat\n"
           "    pool-worker-*\n"
           f"    */test_options.py:{site_line}\n")
    r = run(pytester, {"test_options": OPTIONS_FILE}, ini=ini)
    assert r.kinds == {
        "test_only_never_awaited_checked": ["never_awaited"],
        "test_no_grace": ["straggler"],
        "test_not_ignored": ["straggler"],
    }, r.text
    assert "'slow-no-grace'" in r.text and "slow-long-grace" not in r.text
    r.result.assert_outcomes(passed=10, errors=3)


GC_FILE = """
    import asyncio
    import gc
    import pytest

    pytestmark = pytest.mark.asyncio


    async def boom():
        raise ValueError("lost in a cycle")


    async def test_lost_in_a_cycle():
        gc.disable()  # only loopwatch collects garbage in this module
        task = asyncio.create_task(boom(), name="lost-in-a-cycle")
        await asyncio.sleep(0.01)
        holder = [task]
        holder.append(holder)  # only the garbage collector can free the task now


    async def test_last_of_module():
        gc.enable()
        import sys
        assert sys.get_coroutine_origin_tracking_depth() == ORIGIN_DEPTH
        # only the detectors of the kinds some test checks are installed
        import loopwatch
        watcher = loopwatch.watcher(asyncio.get_running_loop())
        assert [d.name for d in watcher.detectors] == ["unretrieved_exception"]
"""


@pytest.mark.parametrize(("mode", "expected"), [
    ("test", {"test_lost_in_a_cycle": ["unretrieved_exception"]}),
    ("module", {"test_last_of_module": ["unretrieved_exception"]}),
    ("off", {}),
])
def test_gc_modes(pytester: pytest.Pytester, mode: str, expected: dict[str, list[str]]) -> None:
    # What only the collector can find is found after the test (test), after the
    # module's last test (module), or not during the session (off).
    # Coroutine origin tracking is on while tests run, unless turned off (here with gc).
    origins = "false" if mode == "off" else "true"
    r = run(pytester, {"test_gc": GC_FILE.replace("ORIGIN_DEPTH", "0" if mode == "off" else str(ORIGIN_DEPTH))},
            "--loopwatch", "-o", f"loopwatch_gc={mode}", "-o",
            "loopwatch_checks=unretrieved_exception", "-o", f"loopwatch_track_origins={origins}")
    assert r.kinds == expected, r.text
    assert "PASSED" in r.status["test_last_of_module"], r.text  # its own asserts held


OLD_GENERATION_FILE = """
    import asyncio
    import gc
    import pytest

    pytestmark = pytest.mark.asyncio


    async def boom():
        raise ValueError("lost in the oldest generation")


    async def test_promoted_then_lost():
        task = asyncio.create_task(boom(), name="promoted")
        await asyncio.sleep(0.01)
        holder = [task]
        holder.append(holder)
        gc.collect(1)  # as an automatic collection would: the live cycle moves to the oldest
        del holder, task  # garbage now, in the oldest generation


    async def test_after():
        await asyncio.sleep(0)
"""


def test_gc_per_test_finds_garbage_in_the_oldest_generation(pytester: pytest.Pytester) -> None:
    # The per-test collection walks only the young generations while nothing can have
    # reached the oldest one since the last freeze; here something has.
    r = run(pytester, {"test_old": OLD_GENERATION_FILE}, "--loopwatch", "-o",
            "loopwatch_checks=unretrieved_exception")
    assert r.kinds == {"test_promoted_then_lost": ["unretrieved_exception"]}, r.text


def test_off_unless_asked(pytester: pytest.Pytester) -> None:
    # The leaked tasks are held, as programs hold their tasks: a pending task that
    # nothing holds may be collected by any garbage collection, and is then (rightly) a
    # destroyed_pending finding instead of a straggler.
    files = {"test_off": """
        import asyncio
        import pytest

        HELD = set()

        @pytest.mark.asyncio
        async def test_leaks_unwatched():
            HELD.add(asyncio.create_task(asyncio.Event().wait()))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        @pytest.mark.loopwatch(enabled=True)
        async def test_leaks_opted_in():
            HELD.add(asyncio.create_task(asyncio.Event().wait(), name="opted-in"))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_fixture_watches_without_failing(loopwatch):
            HELD.add(asyncio.create_task(asyncio.Event().wait(), name="seen-by-fixture"))
            await asyncio.sleep(0)
            report = loopwatch.report()
            assert [f.task.name for f in report.of_kind("straggler")] == ["seen-by-fixture"]
            assert loopwatch.watcher.loop is asyncio.get_running_loop()
    """}
    r = run(pytester, files)
    assert r.status == {"test_leaks_unwatched": {"PASSED"}, "test_leaks_opted_in":
                        {"PASSED", "ERROR"}, "test_fixture_watches_without_failing":
                        {"PASSED"}}, r.text
    assert r.kinds == {"test_leaks_opted_in": ["straggler"],
                       "test_fixture_watches_without_failing": ["straggler"]}


def test_warn_mode_and_w_error(pytester: pytest.Pytester) -> None:
    r = run(pytester, {"test_warn": """
        import asyncio
        import pytest

        HELD = set()  # (held: see test_off_unless_asked)

        @pytest.mark.asyncio
        async def test_warned():
            HELD.add(asyncio.create_task(asyncio.Event().wait(), name="warned-about"))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        @pytest.mark.filterwarnings("error::loopwatch.pytest_plugin.LoopwatchWarning")
        async def test_warning_is_an_error():
            HELD.add(asyncio.create_task(asyncio.Event().wait(), name="made-an-error"))
            await asyncio.sleep(0)
    """}, "--loopwatch", ini="loopwatch_mode = warn", report=False)
    # --loopwatch keeps the warn mode of the ini file; -W error makes the warning fail.
    assert r.status == {"test_warned": {"PASSED"},
                        "test_warning_is_an_error": {"PASSED", "ERROR"}}, r.text
    r.result.assert_outcomes(passed=2, errors=1, warnings=1)
    assert "LoopwatchWarning: loopwatch: test_warn.py::test_warned left its event loop " \
           "unclean (1 straggler)" in r.text
    assert "ERROR at teardown of test_warning_is_an_error" in r.text
    assert "'made-an-error'" in r.text


def test_bad_settings_are_usage_errors(pytester: pytest.Pytester) -> None:
    # No loop is involved: these run in this process.
    pytester.makefile(".ini", pytest=INI.format(extra="loopwatch_mode = loud"))
    pytester.makepyfile(test_x="def test_x(): pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loopwatch_mode must be one of error, warn, off, got 'loud'*"])
    pytester.makefile(".ini", pytest=INI.format(extra="loopwatch_checks = straggler stragler"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown finding kind 'stragler'*"])
    pytester.makefile(".ini", pytest=INI.format(extra="loopwatch_gc = sometimes"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*loopwatch_gc must be one of test, module, off*"])
    pytester.makefile(".ini", pytest=INI.format(extra=""))
    pytester.makepyfile(test_x="""
        import pytest
        @pytest.mark.loopwatch(grace=-1)
        def test_x(): pass
        @pytest.mark.loopwatch(chekcs=["straggler"])
        def test_y(): pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--loopwatch")
    result.stdout.fnmatch_lines([
        "*loopwatch(grace=...) must be a finite number of seconds >= 0, got -1*",
        "*@pytest.mark.loopwatch got unknown argument(s) chekcs*"])


def test_dump_after_and_pytest_timeout(pytester: pytest.Pytester) -> None:
    files = {"test_slow": """
        import asyncio
        import pytest

        async def stuck(event):
            await event.wait()

        @pytest.mark.asyncio
        async def test_slow_then_fails():
            event = asyncio.Event()
            task = asyncio.create_task(stuck(event), name="the-stuck-one")
            await asyncio.sleep(0.6)
            event.set()
            await task
            assert False, "fails after the dump"

        @pytest.mark.asyncio
        async def test_hangs_until_timeout():
            await asyncio.create_task(stuck(asyncio.Event()), name="hangs-forever")
    """}
    # pytest-timeout's signal method cannot interrupt uvloop (the exception raised by
    # its SIGALRM handler is lost inside uvloop's run loop), so on uvloop it is the
    # thread method, which ends the whole process: the dump must already be out.
    method = "signal" if BASE_LOOP == "asyncio" else "thread"
    r = run(pytester, files, "--loopwatch", "--loopwatch-dump-after=0.1", "--timeout=1.5",
            f"--timeout-method={method}", report=False)
    err = r.result.stderr.str()
    # Written straight to the terminal, while each test was still running.
    assert "loopwatch: test_slow.py::test_slow_then_fails is still running" in err, err
    assert "loopwatch: test_slow.py::test_hangs_until_timeout is still running" in err, err
    assert re.search(r"T\d+ 'the-stuck-one' test_slow\.stuck", err), err
    assert re.search(r"T\d+ 'hangs-forever' test_slow\.stuck", err), err
    assert "Timeout" in r.text + err
    if method == "signal":
        # And shown with each failure in pytest's report.
        text = r.text
        assert r.status["test_slow_then_fails"] == {"FAILED"}
        assert r.status["test_hangs_until_timeout"] == {"FAILED"}
        assert text.count("Captured loopwatch dump call") == 2, text
        assert re.search(r"T\d+ 'hangs-forever'", text)


def test_a_failure_inside_loopwatch_never_fails_a_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(conftest_broken="""
        import loopwatch.testing

        def broken(self, watcher=None):
            raise RuntimeError("a bug in loopwatch")

        loopwatch.testing.LeakCheck.sweep = broken
    """)
    r = run(pytester, {"test_broken": """
        import asyncio
        import pytest

        pytest_plugins = ["conftest_broken"]

        @pytest.mark.asyncio
        async def test_leaks_while_loopwatch_is_broken():
            asyncio.create_task(asyncio.Event().wait())
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_never_awaited_still_found():
            asyncio.sleep(0)
    """}, "--loopwatch", "-W", "ignore::RuntimeWarning")
    assert r.status["test_leaks_while_loopwatch_is_broken"] == {"PASSED"}, r.text
    assert r.kinds == {"test_never_awaited_still_found": ["never_awaited"]}, r.text
    assert "the check at the end of the test failed inside loopwatch: RuntimeError: a bug " \
           "in loopwatch" in " ".join(r.text.split())


def test_a_tests_loop_is_freed_when_the_test_ends(pytester: pytest.Pytester) -> None:
    # The plugin freezes what survives each test's collection (so that the next one
    # walks only new objects); a test's watched loop must not be frozen with it, or
    # every loop of the session would stay in memory (a uvloop loop holds 256 KB).
    # Released by loopwatch, a loop is freed as soon as it is dropped; one that is
    # still there at the end of the test (in a reference cycle) is collected then.
    r = run(pytester, {"test_one": """
        import asyncio
        import weakref

        import pytest

        pytestmark = pytest.mark.asyncio
        loops = []


        @pytest.mark.parametrize("n", range(3))
        async def test_make_a_loop(n):
            loops.append(weakref.ref(asyncio.get_running_loop()))
            await asyncio.sleep(0)


        async def test_make_a_loop_in_a_cycle():
            # Only the collector can free this one: the end of the test must see that
            # it is still there, and collect.
            loop = asyncio.get_running_loop()
            loop.lw_test_cycle = [loop]
            loops.append(weakref.ref(loop))
            await asyncio.sleep(0)


        def test_the_loops_are_gone():
            assert len(loops) == 4
            assert [ref() for ref in loops] == [None, None, None, None]
    """}, "--loopwatch")
    assert r.status == {"test_make_a_loop[0]": {"PASSED"}, "test_make_a_loop[1]": {"PASSED"},
                        "test_make_a_loop[2]": {"PASSED"}, "test_make_a_loop_in_a_cycle":
                        {"PASSED"}, "test_the_loops_are_gone": {"PASSED"}}, r.text


@pytest.mark.skipif(BASE_LOOP == "uvloop", reason="asyncio's own event loop policy only")
def test_a_runners_loop_is_born_of_the_shared_class(pytester: pytest.Pytester) -> None:
    # pytest-asyncio's runner makes its loop of the class that loopwatch would switch
    # it to when attached (switching the class of a loop that exists slows every call
    # on it). The policy is put back after; a policy that does not make its loops from
    # a loop class, or one that a test suite's own event_loop_policy fixture gives,
    # makes them as before, switched when attached.
    r = run(pytester, {"test_born": """
        import asyncio

        import pytest

        pytestmark = pytest.mark.asyncio
        loops = []


        class RecordingPolicy(asyncio.DefaultEventLoopPolicy):
            made = []

            def new_event_loop(self):
                loop = super().new_event_loop()
                self.made.append(type(loop))
                return loop


        # (pytest-asyncio's event_loop_policy fixture gives the policy in effect)
        asyncio.set_event_loop_policy(RecordingPolicy())


        async def test_born():
            loop = asyncio.get_running_loop()
            loops.append(loop)
            assert RecordingPolicy.made == [type(loop)]
            assert "_lw_hooked" in type(loop).__dict__
            assert loop._lw_watcher is not None
            assert "_loop_factory" not in vars(asyncio.get_event_loop_policy())


        def test_released():
            (loop,) = loops
            assert loop.is_closed()
            assert "_lw_hooked" not in type(loop).__dict__
            assert "_lw_watcher" not in vars(loop)
    """, "test_switched": """
        import asyncio

        import pytest

        pytestmark = pytest.mark.asyncio


        class FactoryPolicy(asyncio.DefaultEventLoopPolicy):
            made = []

            def _loop_factory(self):
                loop = asyncio.SelectorEventLoop()
                self.made.append(type(loop))
                return loop


        @pytest.fixture(scope="module")
        def event_loop_policy():
            return FactoryPolicy()


        async def test_switched():
            loop = asyncio.get_running_loop()
            assert "_lw_hooked" not in FactoryPolicy.made[-1].__dict__
            assert "_lw_hooked" in type(loop).__dict__
            assert loop._lw_watcher is not None
    """}, "--loopwatch")
    assert r.status == {"test_born": {"PASSED"}, "test_released": {"PASSED"},
                        "test_switched": {"PASSED"}}, r.text
