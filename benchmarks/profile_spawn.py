"""Where the spawn benchmark's overhead goes: the watched loop with parts switched off.

    python benchmarks/profile_spawn.py [--loop asyncio|uvloop] [--tasks N] [--rounds R]
                                       [--cprofile]

Each variant runs the spawn workload (batches of 1000 ``create_task`` + ``gather`` of
a trivial coroutine) in turns with the bare loop; the table gives each one's median
CPU time and median ratio to bare. Reading down the table, the steps between rows
are the cost of one part: a Task subclass at all, the loop's Python ``create_task``
and the records, the creation stack, the history finalizer, the watchdog thread.
``--cprofile`` adds a profile of one run of the default watched loop.

On a machine too busy for wall times to mean much, ``--callgrind`` counts machine
instructions instead (valgrind must be installed): each variant runs in a process of
its own under ``valgrind --tool=callgrind``, at the given task count and at a fifth of
it, and the difference divided by the difference in tasks is its instructions per
task, which no other process can disturb. Under valgrind the program runs some 50
times slower, so a thread that wakes on a clock (the watchdog) is counted far more
often than it really runs: for the watchdog's cost, trust the wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import shutil
import sys
from collections.abc import Callable
from typing import Any

from _harness import (
    alternate,
    bare_loop,
    callgrind_instructions,
    column,
    median,
    quiet_loopwatch,
    ratios,
    watched_loop,
)
from bench_spawn import spawn, timed


class SlotTask(asyncio.Task):  # type: ignore[type-arg]
    """A Task subclass with as many slots as loopwatch's, and nothing else."""

    __slots__ = ("_a", "_b", "_c", "_d", "_e", "_f", "_g")


def subclass_factory_loop(base: str) -> asyncio.AbstractEventLoop:
    """The bare loop whose task factory makes :class:`SlotTask`: the price of a Task
    subclass made through a Python factory, with no recording at all."""
    loop = bare_loop(base)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> SlotTask:
        return SlotTask(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    return loop


def variants(base: str) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    off = {"stack_depth": 0, "history": 0, "watchdog": False}
    return {
        "bare": lambda: bare_loop(base),
        "bare + Task subclass via a Python factory": lambda: subclass_factory_loop(base),
        "watched, depth 0, history 0, no watchdog": lambda: watched_loop(base, **off),
        "watched, history 0, no watchdog": lambda: watched_loop(
            base, history=0, watchdog=False),
        "watched, depth 0, no watchdog": lambda: watched_loop(
            base, stack_depth=0, watchdog=False),
        "watched, no watchdog": lambda: watched_loop(base, watchdog=False),
        "watched, default options": lambda: watched_loop(base),
    }


def profile(base: str, batches: int) -> str:
    loop = watched_loop(base)
    prof = cProfile.Profile()
    try:
        prof.enable()
        loop.run_until_complete(spawn(batches, 1000))
        prof.disable()
    finally:
        loop.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


def instructions(loop: str, variant: int, tasks: int) -> int:
    """Machine instructions of one process that spawns ``tasks`` tasks on a variant."""
    return callgrind_instructions([sys.executable, __file__, "--loop", loop, "--one",
                                   str(variant), "--tasks", str(tasks)])


def callgrind(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        print("--callgrind needs valgrind on PATH", file=sys.stderr)
        return 2
    makers = list(variants(args.loop))
    small = max(1000, args.tasks // 5)
    per_task = []
    for i in range(len(makers)):
        big_ir, small_ir = instructions(args.loop, i, args.tasks), instructions(args.loop, i, small)
        per_task.append((big_ir - small_ir) / (args.tasks - small))
    print(f"Python {sys.version.split()[0]}, {args.loop}: instructions per task "
          f"(callgrind, {args.tasks:,} minus {small:,} tasks)")
    width = max(map(len, makers))
    for name, n in zip(makers, per_task, strict=True):
        print(f"  {name:<{width}}  {n:9,.0f}  {n / per_task[0]:5.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per task under valgrind instead of timing")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = max(1, args.tasks // 1000)
    if args.one is not None:  # one variant, once: what --callgrind measures
        with quiet_loopwatch():
            timed(list(variants(args.loop).values())[args.one], batches, 1000)
        return 0
    if args.callgrind:
        return callgrind(args)
    makers = variants(args.loop)
    with quiet_loopwatch():  # stalls that the machine's load causes are not the point here
        return report(args, batches, makers)


def report(args: argparse.Namespace, batches: int,
           makers: dict[str, Callable[[], asyncio.AbstractEventLoop]]) -> int:
    for make in makers.values():  # warm up
        timed(make, max(1, batches // 10), 1000)
    times = alternate({name: (lambda m=make: timed(m, batches, 1000))  # type: ignore[misc]
                       for name, make in makers.items()}, args.rounds)
    samples = column(times, "cpu")
    print(f"Python {sys.version.split()[0]}, {args.loop}, {batches * 1000:,} tasks, "
          f"{args.rounds} rounds, CPU time of the process")
    width = max(map(len, makers))
    for name in makers:
        r = median(ratios(samples, name, "bare"))
        print(f"  {name:<{width}}  {median(samples[name]):7.3f} s  {r:5.2f}x")
    if args.cprofile:
        print(profile(args.loop, batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
