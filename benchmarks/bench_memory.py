"""memory: bytes tracked per live task (tracemalloc), watched minus bare.

100,000 tasks are created and left parked on one ``asyncio.Event``; the memory that
tracemalloc traces after they all parked (and after one parked scan, so that the
``_lw_waiter``/``_lw_since`` a scan records are counted too) minus the memory before,
divided by the number of tasks. The same on the bare loop; the figure is the
difference. Two creation sites: a shallow one (the task is created in the coroutine
that the loop runs: a stack of 1 or 2 frames) and a deep one (8 frames of user code
above ``create_task``: a full stack at the default ``stack_depth``), the worst case.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from _harness import (
    Config,
    Figure,
    bare_loop,
    median,
    parked_scan,
    rotate,
    spread,
    watched_loop,
)

NAME = "memory"
TITLE = "bytes tracked per live task"

TARGET = ("<=", 400.0)
DEEP = 8


async def parked(event: asyncio.Event) -> None:
    await event.wait()


def make_tasks(levels: int, n: int, event: asyncio.Event) -> list[asyncio.Task[None]]:
    """``n`` tasks created under ``levels`` extra frames of plain functions."""
    if levels > 0:
        return make_tasks(levels - 1, n, event)
    create_task = asyncio.create_task
    return [create_task(parked(event)) for _ in range(n)]


async def measure(n: int, levels: int, scan: Callable[[], Any] | None) -> tuple[float, int]:
    """Traced bytes per parked task, and the creation-stack depth recorded (frames)."""
    event = asyncio.Event()
    await asyncio.sleep(0)
    gc.collect()
    tracemalloc.start(1)  # traced only while the tasks are made and parked: it is slow
    before = tracemalloc.get_traced_memory()[0]
    tasks = make_tasks(levels, n, event)
    await asyncio.sleep(0)  # every task runs its first step and parks on event.wait()
    await asyncio.sleep(0)
    if scan is not None:
        scan()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    depth = len(getattr(tasks[0], "_lw_stack", ())) // 2
    assert all(t._fut_waiter is not None for t in tasks[:100])  # type: ignore[attr-defined]
    event.set()
    await asyncio.gather(*tasks)
    return (after - before) / n, depth


def once(base: str, watched: bool, n: int, levels: int) -> tuple[float, int, str]:
    loop = watched_loop(base) if watched else bare_loop(base)
    try:
        what = ""
        scan = None
        if watched:
            import loopwatch

            what, scan = parked_scan(loopwatch.watcher(loop))
        try:
            per_task, depth = loop.run_until_complete(measure(n, levels, scan))
        finally:
            tracemalloc.stop()
        return per_task, depth, what
    finally:
        loop.close()


def run(base: str, cfg: Config) -> list[Figure]:
    n = cfg.n(100_000, minimum=10)
    rounds = cfg.pick_rounds(1, 1)  # bytes per task vary by a few bytes between rounds
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 2000))
    figures = []
    # The deep site on a quarter of the tasks: per-task bytes do not depend on the count.
    for site, levels, count in (("shallow", 0, n), ("deep", DEEP, max(10, n // 4))):
        samples: dict[str, list[float]] = {"bare": [], "watched": []}
        depths = set()
        scan_what = ""
        for variant in rotate(["bare", "watched"], rounds):
            per_task, depth, what = once(base, variant == "watched", count, levels)
            samples[variant].append(per_task)
            if variant == "watched":
                depths.add(depth)
                scan_what = what
        bare, watched = median(samples["bare"]), median(samples["watched"])
        frames = "/".join(str(d) for d in sorted(depths))
        figures.append(Figure(
            NAME, base, f"watched - bare, {count:,} tasks, {site} creation site",
            watched - bare, "B/task", TARGET, note=f"creation stacks of {frames} frames",
            samples=[w - b for w, b in zip(samples["watched"], samples["bare"], strict=True)],
            details={"bare_per_task": spread(samples["bare"]),
                     "watched_per_task": spread(samples["watched"]), "tasks": count,
                     "stack_frames": sorted(depths), "scan": scan_what},
        ))
        if site == "shallow":
            figures.append(Figure(NAME, base, "bare loop, per parked task", bare, "B/task"))
    return figures


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
