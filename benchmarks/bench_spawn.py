"""spawn: create and finish 100,000 trivial tasks (100 batches of 1000 create_task + gather).

Variants, each on a fresh loop, timed inside the loop (loop creation and closing are
not counted) by the wall clock and by the process's CPU time (every thread's, so the
watchdog's too):
- bare: the base loop;
- watched: ``loopwatch.loop_factory(base)()`` at default options (creation stacks of
  up to 8 frames recorded for every task);
- for comparison, on 30% of the tasks: aiomonitor 0.7's traced task factory
  (``Monitor(loop, hook_task_factory=True)``, its servers on free loopback ports) and
  the loop's debug mode (``loop.set_debug(True)``; uvloop has one too: coroutine origin
  tracking, handle creation tracebacks and slow-callback warnings, like asyncio's).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from _harness import (
    Config,
    Figure,
    Times,
    alternate,
    bare_loop,
    column,
    median,
    module_missing,
    not_available,
    quiet_asyncio,
    ratios,
    spread,
    watched_loop,
)

NAME = "spawn"
TITLE = "spawn and finish 100,000 trivial tasks"

TARGET = ("<=", 1.3)
BATCH = 1000


async def trivial() -> None:
    return None


async def spawn_batch(size: int) -> None:
    create_task = asyncio.create_task
    await asyncio.gather(*[create_task(trivial()) for _ in range(size)])


async def spawn(batches: int, size: int) -> Times:
    start = Times.now()
    for _ in range(batches):
        await spawn_batch(size)
    return start.since()


def timed(make: Callable[[], asyncio.AbstractEventLoop], batches: int, size: int,
          setup: Callable[[asyncio.AbstractEventLoop], Any] | None = None) -> Times:
    """Time to spawn and finish ``batches * size`` tasks on a new loop from ``make``."""
    loop = make()
    extra = None
    try:
        if setup is not None:
            extra = setup(loop)
        elapsed: Times = loop.run_until_complete(spawn(batches, size))
        return elapsed
    finally:
        if extra is not None:
            extra.close()
        loop.close()


def start_aiomonitor(loop: asyncio.AbstractEventLoop) -> Any:
    """aiomonitor's monitor with its traced task factory; its three servers on free
    loopback ports (the factory needs the monitor's thread, which runs them)."""
    from aiomonitor import Monitor

    monitor = Monitor(loop, host="127.0.0.1", termui_port=0, webui_port=0, console_port=0,
                      console_enabled=False, hook_task_factory=True)
    monitor.start()
    return monitor


def debug_loop(base: str) -> asyncio.AbstractEventLoop:
    loop = bare_loop(base)
    loop.set_debug(True)
    return loop


def aiomonitor_problem(base: str) -> str | None:
    """Why aiomonitor's traced factory cannot run on this loop, or None."""
    missing = module_missing("aiomonitor")
    if missing:
        return missing
    try:
        timed(lambda: bare_loop(base), 1, 2, start_aiomonitor)
    except Exception as exc:
        return f"aiomonitor's task factory fails here: {type(exc).__name__}: {exc}"
    return None


def run(base: str, cfg: Config) -> list[Figure]:
    size = max(2, min(BATCH, cfg.n(BATCH)))
    batches = max(1, cfg.n(100_000) // size)
    tasks = batches * size
    rounds = cfg.pick_rounds(7, 3)

    # Warm up both (imports, code caches, the allocator), untimed.
    timed(lambda: bare_loop(base), max(1, batches // 10), size)
    timed(lambda: watched_loop(base), max(1, batches // 10), size)

    samples = alternate({
        "bare": lambda: timed(lambda: bare_loop(base), batches, size),
        "watched": lambda: timed(lambda: watched_loop(base), batches, size),
    }, rounds)
    wall, cpu = column(samples, "wall"), column(samples, "cpu")
    figures = []
    for clock, by in (("wall", wall), ("CPU", cpu)):
        r = ratios(by, "watched", "bare")
        figures.append(Figure(
            NAME, base, f"watched / bare {clock} time, {tasks:,} tasks", median(r), "x", TARGET,
            samples=r, details={"bare_s": spread(by["bare"]), "watched_s": spread(by["watched"]),
                                "rounds": rounds, "tasks": tasks}))
    figures.append(Figure(NAME, base, "bare loop, per task", median(wall["bare"]) / tasks * 1e6,
                          "µs/task"))

    # The comparisons cost 12-25x as much: they run on 30% of the tasks, in 2 rounds.
    # (Not fewer: over the first few batches the bare loop is faster per task than it
    # stays, and debug mode slower, which would inflate their ratios.)
    small = max(1, batches * 3 // 10)
    small_tasks = small * size
    cmp_rounds = cfg.pick_rounds(2, 1)
    variants: dict[str, Callable[[], Times]] = {
        "bare": lambda: timed(lambda: bare_loop(base), small, size),
    }
    aiomonitor_note = aiomonitor_problem(base)
    if aiomonitor_note is None:
        variants["aiomonitor"] = lambda: timed(lambda: bare_loop(base), small, size,
                                               start_aiomonitor)
    variants["debug"] = lambda: timed(lambda: debug_loop(base), small, size)
    with quiet_asyncio():
        cmp = column(alternate(variants, cmp_rounds), "wall")

    name = f"aiomonitor traced factory / bare wall time, {small_tasks:,} tasks"
    if "aiomonitor" in cmp:
        r = ratios(cmp, "aiomonitor", "bare")
        figures.append(Figure(NAME, base, name, median(r), "x", samples=r,
                              note="for comparison: about 12x expected"))
    else:
        figures.append(not_available(NAME, base, name, "x", aiomonitor_note or ""))
    r = ratios(cmp, "debug", "bare")
    figures.append(Figure(NAME, base, f"debug mode / bare wall time, {small_tasks:,} tasks",
                          median(r), "x", samples=r,
                          note="for comparison: 14-24x expected on asyncio"))
    return figures


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
