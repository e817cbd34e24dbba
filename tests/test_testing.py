"""loopwatch.testing outside pytest's plugin: clean_shutdown, assert_clean, the unittest mixin."""

from __future__ import annotations

import asyncio
import sys
import unittest
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
import pytest

import loopwatch
from loopwatch import Finding, LoopLeakError, OptionsError, Report
from loopwatch.testing import (
    DEFAULT_CHECKS,
    CheckSettings,
    LoopwatchTestMixin,
    assert_clean,
    clean_shutdown,
    parse_checks,
)

from .conftest import BASE_LOOP


async def forever(event: asyncio.Event) -> None:
    await event.wait()


async def boom() -> None:
    raise ValueError("nobody looked")


# -- async with clean_shutdown() --------------------------------------------------------


@pytest.mark.asyncio
async def test_async_block_reports_and_cancels_its_stragglers() -> None:
    cs = clean_shutdown()
    with pytest.raises(LoopLeakError) as caught:
        async with cs:
            task = asyncio.create_task(forever(asyncio.Event()), name="left-in-block")
            await asyncio.sleep(0)
    report = caught.value.report
    assert report is cs.report
    (finding,) = report.findings
    assert finding.kind == "straggler"
    assert finding.task is not None and finding.task.name == "left-in-block"
    assert finding.site is not None and finding.site.file == __file__
    assert "when the block ended" in finding.message
    assert finding.details["awaiting"] == "Event.wait"
    assert isinstance(caught.value, AssertionError)
    assert "loopwatch: the block left its loop unclean (1 straggler)" in str(caught.value)
    assert task.cancelled()  # cleaned up, so it cannot spill into what runs next


@pytest.mark.asyncio
async def test_async_block_that_is_clean_or_finishes_within_grace() -> None:
    async with clean_shutdown(grace=1.0) as cs:
        asyncio.create_task(asyncio.sleep(0.01))
        done = asyncio.create_task(asyncio.sleep(0))
        await done
    assert cs.report is not None and not cs.report.findings
    assert cs.watcher.loop is asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_async_block_judges_only_what_it_made() -> None:
    event = asyncio.Event()
    before = asyncio.create_task(forever(event), name="before-the-block")
    await asyncio.sleep(0)
    async with clean_shutdown():
        await asyncio.sleep(0)
    assert not before.done()
    event.set()
    await before


@pytest.mark.asyncio
async def test_async_block_never_masks_the_blocks_own_error() -> None:
    cs = clean_shutdown()
    with pytest.raises(KeyError):
        async with cs:
            task = asyncio.create_task(forever(asyncio.Event()), name="left-by-failure")
            await asyncio.sleep(0)
            raise KeyError("the real problem")
    assert cs.report is not None
    assert [f.task.name for f in cs.report.findings if f.task] == ["left-by-failure"]
    assert task.cancelled()


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:coroutine 'forever' was never awaited:RuntimeWarning")
async def test_async_block_lost_work_and_ignore_patterns() -> None:
    with pytest.raises(LoopLeakError) as caught:
        async with clean_shutdown(ignore=["helper-*"]):
            asyncio.create_task(forever(asyncio.Event()), name="helper-1")  # ignored
            task = asyncio.create_task(boom(), name="failed-quietly")
            await asyncio.sleep(0.01)
            del task
            forever(asyncio.Event())  # never awaited
    kinds = sorted(f.kind for f in caught.value.report.findings)
    assert kinds == ["never_awaited", "unretrieved_exception"]
    (lost,) = caught.value.report.of_kind("unretrieved_exception")
    assert lost.task is not None and lost.task.name == "failed-quietly"
    (dropped,) = caught.value.report.of_kind("never_awaited")
    assert dropped.site is not None and dropped.site.file == __file__


@pytest.mark.asyncio
async def test_async_block_checks_only_the_kinds_asked() -> None:
    async with clean_shutdown(checks="never_awaited") as cs:
        keep = asyncio.create_task(forever(asyncio.Event()))
        await asyncio.sleep(0)
    assert cs.report is not None and not cs.report.findings
    keep.cancel()


def test_clean_shutdown_arguments_are_validated() -> None:
    with pytest.raises(OptionsError, match="unknown finding kind 'straggle'"):
        clean_shutdown(checks=["straggle"])
    with pytest.raises(OptionsError, match="grace must be a finite number"):
        clean_shutdown(grace=-1)
    with pytest.raises(OptionsError, match="base must be None, 'asyncio' or 'uvloop'"):
        clean_shutdown(base="trio")


# -- with clean_shutdown(): loops created inside ----------------------------------------


async def leave_one() -> int:
    asyncio.create_task(forever(asyncio.Event()), name="left-at-shutdown")
    await asyncio.sleep(0)
    return 7


@contextmanager
def base_policy() -> Iterator[None]:
    """The suite's base loop for code that makes loops through the policy."""
    if BASE_LOOP != "uvloop":
        yield
        return
    import warnings

    import uvloop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(old)


def test_sync_block_around_asyncio_run() -> None:
    with base_policy():
        cs = clean_shutdown()
        before = type(asyncio.get_event_loop_policy())
        with pytest.raises(LoopLeakError) as caught:
            with cs:
                assert asyncio.run(leave_one()) == 7
        assert type(asyncio.get_event_loop_policy()) is before  # restored
    (finding,) = caught.value.report.findings
    assert finding.kind == "straggler" and finding.task is not None
    assert finding.task.name == "left-at-shutdown"
    assert "when the loop shut down" in finding.message
    (watcher,) = cs.watchers
    assert watcher.closed and watcher.base == BASE_LOOP


def test_sync_block_with_its_loop_factory() -> None:
    cs = clean_shutdown(base=BASE_LOOP)
    with pytest.raises(LoopLeakError) as caught:
        with cs:
            assert anyio.run(leave_one, backend="asyncio",
                             backend_options={"loop_factory": cs.loop_factory}) == 7
    assert [f.kind for f in caught.value.report.findings] == ["straggler"]
    assert [w.base for w in cs.watchers] == [BASE_LOOP]


def test_sync_block_around_a_loop_closed_by_hand() -> None:
    async def numbers() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def start() -> AsyncIterator[int]:
        gen = numbers()
        await gen.__anext__()
        return gen

    with base_policy():
        with pytest.raises(LoopLeakError) as caught:
            with clean_shutdown():
                loop = asyncio.new_event_loop()
                gen = loop.run_until_complete(start())
                loop.close()  # without shutdown_asyncgens(): the generator never finishes
    assert [f.kind for f in caught.value.report.findings] == ["asyncgen_unfinalized"]
    assert "numbers" in caught.value.report.findings[0].message
    del gen


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
def test_sync_block_that_is_clean() -> None:
    async def tidy() -> None:
        task = asyncio.create_task(asyncio.sleep(0))
        await task

    with clean_shutdown(base=BASE_LOOP) as cs:
        with asyncio.Runner(loop_factory=cs.loop_factory) as runner:
            runner.run(tidy())
    assert cs.report is not None and not cs.report.findings


# -- assert_clean -------------------------------------------------------------------------


def _finding(kind: str, name: str = "t") -> Finding:
    return Finding(kind=kind, message=f"a {kind}", task=loopwatch.TaskRef("T1", name, "m.f"))


def test_assert_clean() -> None:
    assert_clean(Report())
    report = Report(findings=[_finding("straggler", "worker-1"), _finding("parked")])
    with pytest.raises(LoopLeakError) as caught:
        assert_clean(report)
    assert caught.value.report.kinds() == {"straggler": 1, "parked": 1}
    assert "the loop was left unclean (1 parked, 1 straggler)" in str(caught.value)
    assert_clean(report, checks="never_awaited")
    assert_clean(report, ignore=["worker-*"], checks=["straggler"])
    with pytest.raises(LoopLeakError):
        assert_clean(report, ignore=["worker-*"])
    with pytest.raises(TypeError, match="needs a loopwatch.Report or a Watcher"):
        assert_clean("nothing")  # type: ignore[arg-type]


def test_assert_clean_takes_a_watcher() -> None:
    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        asyncio.create_task(forever(asyncio.Event()), name="audited")
        await asyncio.sleep(0)
        with pytest.raises(LoopLeakError, match="1 straggler"):
            assert_clean(w)
        return w

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_parse_checks_and_settings() -> None:
    assert parse_checks(None) == DEFAULT_CHECKS
    assert parse_checks("all") == frozenset(loopwatch.KINDS)
    assert parse_checks("default,-straggler") == DEFAULT_CHECKS - {"straggler"}
    assert parse_checks("-straggler -await_cycle") == DEFAULT_CHECKS - {"straggler",
                                                                        "await_cycle"}
    assert parse_checks(["parked", "stall"]) == {"parked", "stall"}
    assert parse_checks("") == frozenset()
    with pytest.raises(OptionsError, match="unknown finding kind 'nope'"):
        parse_checks("straggler,nope")
    settings = CheckSettings.make(ignore=["pkg.*Worker.run", "pool-*", "*/vendor/*:*"])
    assert settings.ignores_task("x", "pkg.mod.Worker.run", None)
    assert settings.ignores_task("pool-3", "a.b", None)
    assert settings.ignores_task("x", "a.b", loopwatch.Frame("/src/vendor/lib.py", 3, "f"))
    assert not settings.ignores_task("x", "a.b", loopwatch.Frame("/src/app.py", 3, "f"))
    bare = CheckSettings.make(ignore=["Worker.run"])
    assert bare.ignores_task("x", "pkg.mod.Worker.run", None)  # the module can be left out


# -- unittest -----------------------------------------------------------------------------


class _Cases(LoopwatchTestMixin, unittest.IsolatedAsyncioTestCase):
    __test__ = False  # run by test_unittest_mixin, not collected by pytest
    loopwatch_ignore = ("*background",)

    if BASE_LOOP == "uvloop" and sys.version_info >= (3, 13):
        import uvloop

        loop_factory = staticmethod(uvloop.new_event_loop)

    async def asyncSetUp(self) -> None:
        self.event = asyncio.Event()
        self.server = asyncio.create_task(forever(self.event), name="set-up-in-asyncSetUp")

    async def asyncTearDown(self) -> None:
        self.event.set()
        await self.server

    async def test_clean(self) -> None:
        await asyncio.sleep(0)

    async def test_leaks(self) -> None:
        self.kept = asyncio.create_task(forever(asyncio.Event()), name="leaked-by-unittest")
        await asyncio.sleep(0)

    async def test_fails_and_leaks(self) -> None:
        self.kept = asyncio.create_task(forever(asyncio.Event()), name="leaked-by-failure")
        await asyncio.sleep(0)
        self.assertEqual(1, 2)

    async def test_cleanup_cleans_it(self) -> None:
        task = asyncio.create_task(forever(asyncio.Event()))
        self.addAsyncCleanup(self._cancel, task)
        await asyncio.sleep(0)

    async def test_ignored(self) -> None:
        async def background() -> None:
            await asyncio.Event().wait()

        asyncio.create_task(background())
        await asyncio.sleep(0)

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_unittest_mixin() -> None:
    cases = {name: _Cases(name) for name in ("test_clean", "test_leaks", "test_fails_and_leaks",
                                             "test_cleanup_cleans_it", "test_ignored")}
    result = unittest.TestResult()
    with base_policy():
        unittest.TestSuite(list(cases.values())).run(result)
    assert not result.errors, result.errors
    failed = {test._testMethodName: text for test, text in result.failures}
    assert set(failed) == {"test_leaks", "test_fails_and_leaks"}
    assert "LoopLeakError" in failed["test_leaks"]
    assert "straggler: task" in failed["test_leaks"]
    assert "'leaked-by-unittest'" in failed["test_leaks"]
    # A test that failed is not failed again: its failure is the assertion.
    assert "AssertionError: 1 != 2" in failed["test_fails_and_leaks"]
    assert "LoopLeakError" not in failed["test_fails_and_leaks"]
    report = cases["test_fails_and_leaks"].loopwatch_report
    assert report is not None and [f.task.name for f in report.findings if f.task] == \
        ["leaked-by-failure"]
    assert cases["test_leaks"].kept.cancelled()  # cleaned up on the test's own loop
    for name in ("test_clean", "test_cleanup_cleans_it", "test_ignored"):
        report = cases[name].loopwatch_report
        assert report is not None and not report.findings, (name, report)
    assert sys.get_coroutine_origin_tracking_depth() == 0  # restored after each test
