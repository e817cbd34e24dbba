"""Task snapshots, compare_to, and task_growth."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import loopwatch
from loopwatch import TaskSnapshot
from loopwatch._detectors.growth import GrowthDetector, TaskStatDiff

from .conftest import BASE_LOOP


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# L:<marker>``."""
    with open(__file__) as f:
        for number, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# L:{marker}"):
                return number
    raise LookupError(marker)


def run(main: Any, **options: Any) -> Any:
    options.setdefault("log", False)
    return loopwatch.run(main, loop=BASE_LOOP, **options)


async def park(event: asyncio.Event) -> None:
    await event.wait()


async def quick() -> None:
    await asyncio.sleep(0)


def spawn_parked(event: asyncio.Event, n: int, keep: list[asyncio.Task[None]]) -> None:
    for _ in range(n):
        keep.append(asyncio.create_task(park(event)))  # L:parked


def spawn_quick(n: int, keep: list[asyncio.Task[None]]) -> None:
    for _ in range(n):
        keep.append(asyncio.create_task(quick()))  # L:quick


def row_for(rows: list[TaskStatDiff], marker: str) -> TaskStatDiff:
    for row in rows:
        if isinstance(row.key, loopwatch.Frame) and row.key.line == line_of(marker):
            return row
    raise AssertionError(f"no row for {marker}: {rows}")


def test_snapshot_counts_live_tasks_by_site_and_coroutine() -> None:
    async def main() -> TaskSnapshot:
        event = asyncio.Event()
        keep: list[asyncio.Task[None]] = []
        spawn_parked(event, 3, keep)
        spawn_quick(2, keep)
        snap = loopwatch.watcher().snapshot()
        event.set()
        await asyncio.gather(*keep)
        return snap

    snap = run(main())
    assert isinstance(snap, TaskSnapshot)
    by_site = {s.key: s.count for s in snap.statistics("site")}
    parked = [k for k in by_site if isinstance(k, loopwatch.Frame) and k.line == line_of("parked")]
    assert len(parked) == 1 and by_site[parked[0]] == 3
    assert parked[0].file == __file__ and parked[0].function == "spawn_parked"
    quick_site = [k for k in by_site if isinstance(k, loopwatch.Frame)
                  and k.line == line_of("quick")]
    assert by_site[quick_site[0]] == 2
    coros = {s.key: s.count for s in snap.statistics("coro")}
    assert coros[f"{__name__}.park"] == 3 and coros[f"{__name__}.quick"] == 2
    assert snap.total == sum(by_site.values()) == 6  # with the main task
    data = snap.to_dict()
    assert data["total"] == 6 and data["sites"][0]["count"] == 3


def test_compare_to_lists_the_largest_changes_first() -> None:
    async def main() -> tuple[TaskSnapshot, TaskSnapshot]:
        w = loopwatch.watcher()
        event = asyncio.Event()
        keep: list[asyncio.Task[None]] = []
        spawn_parked(event, 1, keep)
        spawn_quick(2, keep)
        first = w.snapshot()
        await asyncio.gather(*keep[1:])  # the quick ones finish (no timing involved)
        spawn_parked(event, 4, keep)
        second = w.snapshot()
        event.set()
        await asyncio.gather(*keep)
        return first, second

    first, second = run(main())
    rows = second.compare_to(first, key="site")
    assert row_for(rows, "parked").count == 5 and row_for(rows, "parked").count_diff == 4
    assert row_for(rows, "quick").count == 0 and row_for(rows, "quick").count_diff == -2
    assert rows[0] == row_for(rows, "parked") and rows[1] == row_for(rows, "quick")
    assert "tasks (+4)" in str(rows[0])
    by_coro = {r.key: r.count_diff for r in second.compare_to(first, key="coro")}
    assert by_coro[f"{__name__}.park"] == 4 and by_coro[f"{__name__}.quick"] == -2
    with pytest.raises(ValueError, match="key must be 'site' or 'coro'"):
        second.compare_to(first, key="line")  # type: ignore[arg-type]


def drive(detector: GrowthDetector, start: float, step: int, every: float) -> None:
    detector.tick(start + step * every)


def own_detector(w: loopwatch.Watcher) -> GrowthDetector:
    """A growth detector on ``w`` that only this test ticks (the watcher's own one is
    ticked by the watchdog thread, in real time)."""
    return GrowthDetector(w)


def test_task_growth_reports_the_site_that_keeps_growing() -> None:
    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        detector = own_detector(w)
        event = asyncio.Event()
        keep: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for step in range(4):
            spawn_parked(event, 3, keep)  # leaks: 3, 6, 9, 12
            spawn_quick(20, keep)  # a burst that drains
            drive(detector, start, step, 2.0)
            drive(detector, start, step, 2.0)  # a second tick in the same interval: no snapshot
            await asyncio.sleep(0.001)
        event.set()
        await asyncio.gather(*keep)
        return w

    w = run(main(), growth_every=2.0, growth_min=6)
    (finding,) = [f for f in w.findings() if f.kind == "task_growth"]
    assert finding.site is not None and finding.site.file == __file__
    assert finding.site.line == line_of("parked") and finding.site.function == "spawn_parked"
    assert finding.details["counts"] == [3, 6, 9, 12]
    assert finding.details["times"] == [0.0, 2.0, 4.0, 6.0]
    assert finding.details["coro"] == f"{__name__}.park"
    assert "keep growing: 3 -> 6 -> 9 -> 12 over 6 s" in finding.message
    assert finding.stacks["created"][-1].line == line_of("parked")


@pytest.mark.parametrize("per_step, growth_min", [((3, 0, 3, 3), 1), ((1, 1, 1, 1), 6)])
def test_no_growth_finding_when_growth_stalls_or_is_small(per_step: tuple[int, ...],
                                                          growth_min: int) -> None:
    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        detector = own_detector(w)
        event = asyncio.Event()
        keep: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for step, n in enumerate(per_step):
            spawn_parked(event, n, keep)
            drive(detector, start, step, 1.0)
        event.set()
        await asyncio.gather(*keep)
        return w

    w = run(main(), growth_every=1.0, growth_min=growth_min)
    assert [f for f in w.findings() if f.kind == "task_growth"] == []


def test_growth_is_found_through_the_watchdogs_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    stall = pytest.importorskip("loopwatch._detectors.stall")
    monkeypatch.setattr(stall, "TICK_EVERY", 0.01)

    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        event = asyncio.Event()
        keep: list[asyncio.Task[None]] = []
        deadline = time.monotonic() + 20
        while not any(f.kind == "task_growth" for f in w.findings()):
            assert time.monotonic() < deadline, "no task_growth finding"
            spawn_parked(event, 2, keep)
            await asyncio.sleep(0.005)
        event.set()
        await asyncio.gather(*keep)
        return w

    w = run(main(), growth_every=0.02, growth_min=4)
    (finding,) = [f for f in w.findings() if f.kind == "task_growth"]
    assert finding.site is not None and finding.site.line == line_of("parked")
