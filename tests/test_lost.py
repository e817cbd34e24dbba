"""never_awaited, unretrieved_exception, destroyed_pending, on real loops."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from typing import Any

import pytest

import loopwatch
from loopwatch._detectors.lost import UnretrievedExceptionDetector

from ._sites import marked_line, new_loop, of_kind, site_checker


def line_of(marker: str) -> int:
    return marked_line(__file__, marker)


assert_site = site_checker(__file__)

UNAWAITED = "ignore:coroutine .* was never awaited:RuntimeWarning"










def run_on_new_loop(main: Any, **options: Any) -> loopwatch.Watcher:
    loop = new_loop(**options)
    w = loopwatch.watcher(loop)
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()
    return w


async def fetch(n: int) -> int:
    await asyncio.sleep(0)
    return n


# -- never_awaited ---------------------------------------------------------------------


def test_never_awaited_points_at_the_call_and_the_warning_is_unchanged() -> None:
    async def main() -> None:
        fetch(1)  # L:no-await
        await asyncio.sleep(0)

    with pytest.warns(RuntimeWarning, match="coroutine 'fetch' was never awaited") as record:
        w = run_on_new_loop(main())
    (warning,) = [r for r in record if "never awaited" in str(r.message)]
    assert warning.filename == __file__ and warning.lineno == line_of("no-await")
    (finding,) = of_kind(w, "never_awaited")
    assert_site(finding.site, "main", "no-await")
    assert finding.details["coro"] == f"{__name__}.fetch"
    assert finding.message.startswith("coroutine tests.test_lost.fetch was never awaited "
                                      f"(dropped unawaited at {__file__}:{line_of('no-await')})")
    assert "created" not in finding.stacks  # origin tracking is off by default


@pytest.mark.filterwarnings(UNAWAITED)
def test_track_origins_gives_the_creation_stack() -> None:
    kept: list[Any] = []

    async def main() -> None:
        kept.append(fetch(2))  # L:created
        await asyncio.sleep(0)
        kept.clear()  # L:dropped

    before = sys.get_coroutine_origin_tracking_depth()
    w = run_on_new_loop(main(), track_origins=True, stack_depth=6)
    assert sys.get_coroutine_origin_tracking_depth() == before  # restored when the loop stopped
    (finding,) = of_kind(w, "never_awaited")
    assert_site(finding.site, "main", "created")
    assert finding.stacks["created"][-1].line == line_of("created")
    assert_site(finding.stacks["dropped"][-1], "main", "dropped")
    assert finding.details["origin_tracked"] is True


@pytest.mark.filterwarnings(UNAWAITED)
def test_repeats_are_counted_and_attributed_to_the_running_loop() -> None:
    other = new_loop()  # the newest watcher, but not the loop that runs
    try:
        async def main() -> None:
            for n in range(3):
                fetch(n)  # L:loop
            await asyncio.sleep(0)

        w = run_on_new_loop(main())
        (finding,) = of_kind(w, "never_awaited")
        assert finding.details["count"] == 3 and finding.message.endswith("(3 times)")
        assert of_kind(loopwatch.watcher(other), "never_awaited") == []
    finally:
        other.close()


def test_an_existing_hook_is_chained_and_restored() -> None:
    seen: list[str] = []
    original = warnings._warn_unawaited_coroutine  # type: ignore[attr-defined]

    def theirs(coro: Any) -> None:
        seen.append(coro.__qualname__)

    warnings._warn_unawaited_coroutine = theirs  # type: ignore[attr-defined]
    try:
        loop = new_loop()
        w = loopwatch.watcher(loop)
        assert warnings._warn_unawaited_coroutine is not theirs  # type: ignore[attr-defined]

        async def main() -> None:
            fetch(3)  # L:chained
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        loop.close()
        assert seen == ["fetch"]
        assert_site(of_kind(w, "never_awaited")[0].site, "main", "chained")
        assert warnings._warn_unawaited_coroutine is theirs  # type: ignore[attr-defined]
    finally:
        warnings._warn_unawaited_coroutine = original  # type: ignore[attr-defined]


@pytest.mark.filterwarnings(UNAWAITED)
def test_no_finding_without_an_open_watcher() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.close()
    fetch(4)
    assert of_kind(w, "never_awaited") == []


# -- unretrieved_exception --------------------------------------------------------------


async def fail() -> None:
    await asyncio.sleep(0)
    raise KeyError("lost")  # L:raise


def test_task_exception_never_retrieved() -> None:
    handled: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: handled.append(ctx))
        asyncio.create_task(fail(), name="lost-one")  # L:spawn-fail
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    w = run_on_new_loop(main())
    (finding,) = of_kind(w, "unretrieved_exception")
    assert_site(finding.site, "main", "spawn-fail")
    assert finding.task is not None and finding.task.name == "lost-one"
    assert_site(finding.stacks["raised"][-1], "fail", "raise")
    assert finding.details["raised_at"]["line"] == line_of("raise")
    assert finding.details["exception"] == "KeyError: 'lost'"
    # the program's own handler still got it
    assert len(handled) == 1 and handled[0]["message"].endswith("exception was never retrieved")


def test_future_exception_never_retrieved() -> None:
    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        fut = asyncio.get_running_loop().create_future()
        try:
            raise ValueError("nobody looks")  # L:fut-raise
        except ValueError as exc:
            fut.set_exception(exc)
        del fut
        gc.collect()

    w = run_on_new_loop(main())
    (finding,) = of_kind(w, "unretrieved_exception")
    assert finding.task is None
    assert_site(finding.site, "main", "fut-raise")
    assert "a future (Future) failed with ValueError: nobody looks" in finding.message


def test_retrieved_exceptions_are_not_findings() -> None:
    async def main() -> None:
        task = asyncio.create_task(fail())
        with pytest.raises(KeyError):
            await task
        other = asyncio.create_task(fail())
        await asyncio.wait([other])
        assert isinstance(other.exception(), KeyError)

    w = run_on_new_loop(main())
    gc.collect()
    assert of_kind(w, "unretrieved_exception") == []


# -- destroyed_pending -----------------------------------------------------------------


async def wait_forever() -> None:
    fut = asyncio.get_running_loop().create_future()
    await fut  # L:parked


def test_task_destroyed_while_pending_in_a_reference_cycle() -> None:
    """The task, its coroutine and the future it awaits form a cycle that only the
    garbage collector frees; the record on the task survives (SPEC 9)."""

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        asyncio.create_task(wait_forever(), name="orphan")  # L:orphan
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()

    w = run_on_new_loop(main())
    (finding,) = of_kind(w, "destroyed_pending")
    assert_site(finding.site, "main", "orphan")
    assert finding.task is not None and finding.task.name == "orphan"
    assert finding.stacks["created"][-1].line == line_of("orphan")
    assert finding.details["awaiting"] == "future"
    if "await" in finding.stacks:  # gone when the collector finalized the coroutine first
        assert_site(finding.stacks["await"][-1], "wait_forever", "parked")


def test_tasks_destroyed_the_same_way_are_one_finding() -> None:
    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        for _ in range(3):
            asyncio.create_task(wait_forever())  # L:orphans
        await asyncio.sleep(0)
        gc.collect()

    w = run_on_new_loop(main())
    (finding,) = of_kind(w, "destroyed_pending")
    assert_site(finding.site, "main", "orphans")
    assert finding.details["count"] == 3 and len(finding.details["tasks"]) == 3
    assert finding.message.startswith("3 tasks running tests.test_lost.wait_forever (T")


def test_one_failing_detector_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, context: dict[str, Any]) -> None:
        raise RuntimeError("inside loopwatch")

    monkeypatch.setattr(UnretrievedExceptionDetector, "exception_context", broken)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        asyncio.create_task(fail())
        asyncio.create_task(wait_forever())  # L:still-seen
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        asyncio.create_task(fail())
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    w = run_on_new_loop(main())
    notes = [n for n in w.all_notes() if "switched off" in n]
    assert len(notes) == 1 and notes[0].startswith("unretrieved_exception check switched off")
    assert of_kind(w, "unretrieved_exception") == []
    (destroyed,) = of_kind(w, "destroyed_pending")
    assert_site(destroyed.site, "main", "still-seen")
