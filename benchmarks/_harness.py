"""What every benchmark shares: the loops, paired timing, figures and their targets.

A benchmark module has a ``NAME``, a one-line ``TITLE`` and ``run(base, cfg)``, which
returns a list of :class:`Figure` for one base loop ("asyncio" or "uvloop"). Each
benchmark runs in a child process of ``run.py`` (see there), so that one benchmark's
imports, threads, tracemalloc or garbage never weigh on the next one.

Overhead figures are ratios of the watched work to the same work on the bare loop,
measured in the same process: the variants run in turns (the order rotates every
round, so that drift in the machine's speed falls on all of them alike) and the
figure is the median of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib.util
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

BASES = ("asyncio", "uvloop")

#: the operators a target can use, and what "met" means for each
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda v, limit: v <= limit,
    "<": lambda v, limit: v < limit,
    ">=": lambda v, limit: v >= limit,
    "==": lambda v, limit: v == limit,
}


@dataclasses.dataclass
class Config:
    """How big and how long: the same for every benchmark of one run."""

    #: multiplies every task/request count (the smoke test uses a tiny scale)
    scale: float = 1.0
    #: overrides every benchmark's number of rounds (None: each benchmark's default)
    rounds: int | None = None
    #: fewer rounds, for a first look
    quick: bool = False

    def n(self, full: int, minimum: int = 1) -> int:
        """A count of ``full`` at scale 1."""
        return max(minimum, int(full * self.scale))

    def pick_rounds(self, full: int, quick: int) -> int:
        if self.rounds is not None:
            return self.rounds
        return quick if self.quick else full


@dataclasses.dataclass
class Figure:
    """One measured figure, with its target when it has one."""

    bench: str
    loop: str
    #: what was measured, e.g. "watched / bare time"
    name: str
    value: float | None
    #: "x" (a ratio), "B/task", "s", "req/s", "µs/task", "of N"
    unit: str
    #: (operator, limit) or None for a figure given for context
    target: tuple[str, float] | None = None
    #: "ok", "n/a" (could not be measured here: see note) or "error"
    status: str = "ok"
    note: str = ""
    samples: list[float] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None or self.status != "ok":
            return None
        op, limit = self.target
        return _OPS[op](self.value, limit)

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return self.status
        met = self.met
        if met is None:
            return "info"
        return "met" if met else "MISSED"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op, limit = self.target
        return f"{op} {fmt_value(limit, self.unit)}"

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        text = fmt_value(self.value, self.unit)
        if self.unit == "x" and self.target is not None:
            # 0.9695 is a miss against 0.97: show as many digits as it takes to see that
            op, limit = self.target
            digits = 2
            while digits < 6 and _OPS[op](round(self.value, digits), limit) != self.met:
                digits += 1
            text = f"{self.value:.{digits}f}x"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "loop": self.loop,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": list(self.target) if self.target else None,
            "met": self.met,
            "verdict": self.verdict,
            "status": self.status,
            "note": self.note,
            "samples": self.samples,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        target = data.get("target")
        return cls(
            bench=data["bench"], loop=data["loop"], name=data["name"], value=data["value"],
            unit=data["unit"], target=(target[0], float(target[1])) if target else None,
            status=data.get("status", "ok"), note=data.get("note", ""),
            samples=list(data.get("samples", [])), details=dict(data.get("details", {})),
        )


def fmt_value(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit.startswith("of "):
        return f"{value:g}/{unit[3:]}"
    if unit in ("B/task", "req/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def not_available(bench: str, loop: str, name: str, unit: str, reason: str,
                  target: tuple[str, float] | None = None) -> Figure:
    """A figure that cannot be measured here, with the reason."""
    return Figure(bench, loop, name, None, unit, target, status="n/a", note=reason)


# -- loops --------------------------------------------------------------------------------


def bare_loop(base: str) -> asyncio.AbstractEventLoop:
    """A new base loop without loopwatch: what the program would run on anyway."""
    if base == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.SelectorEventLoop()


def watched_loop(base: str, **options: Any) -> asyncio.AbstractEventLoop:
    """A new watched loop, made the documented way (``loopwatch.loop_factory``)."""
    import loopwatch

    return loopwatch.loop_factory(base, **options)()


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a loop the way a runner does (executor and async generators first)."""
    if loop.is_closed():
        return
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def uvloop_missing() -> str | None:
    """Why uvloop cannot be used here, or None."""
    if sys.platform == "win32":
        return "uvloop does not run on Windows"
    if importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install 'loopwatch[uvloop]')"
    return None


def module_missing(name: str) -> str | None:
    """Why ``name`` cannot be imported, or None (a module another engineer is writing
    may not have landed yet)."""
    try:
        found = importlib.util.find_spec(name)
    except ImportError as exc:
        return f"{name} cannot be imported: {exc}"
    if found is None:
        return f"{name} is not there yet"
    return None


def detector_for(watcher: Any, kind: str) -> Any | None:
    """The watcher's detector that makes findings of ``kind``, or None."""
    for detector in getattr(watcher, "detectors", ()):
        makes = (*getattr(detector, "kinds", ()), *getattr(detector, "reports", ()),
                 getattr(detector, "name", None))
        if kind in makes and getattr(detector, "enabled", True):
            return detector
    return None


def parked_scan(watcher: Any) -> tuple[str, Callable[[], Any]]:
    """One parked scan over every live task, and what it is.

    The parked detector's own ``scan`` when it has one, else its periodic ``tick``
    (the watchdog's call), else ``Watcher.observe`` over every task: the part of the
    scan that every version of the detector has to do.
    """
    detector = detector_for(watcher, "parked")
    if detector is not None:
        method = "scan" if callable(getattr(detector, "scan", None)) else "tick"
        fn = getattr(detector, method)
        return f"{type(detector).__name__}.{method}", lambda: fn(time.monotonic())
    observe = type(watcher).observe
    loop = watcher.loop

    def observe_all() -> None:
        now = time.monotonic()
        for task in asyncio.all_tasks(loop):
            observe(task, now)

    return "Watcher.observe over all tasks (no parked detector yet)", observe_all


# -- timing -------------------------------------------------------------------------------


def rotate(names: list[str], rounds: int) -> Iterator[str]:
    """The order variants run in: every round once each, starting one later each round."""
    for r in range(rounds):
        k = r % len(names)
        yield from names[k:] + names[:k]


class Times(NamedTuple):
    """Elapsed wall-clock seconds, and CPU seconds of this process (every thread).

    On a busy machine the wall clock also counts the time other processes had the
    CPU; the process's CPU time does not, so it is the steadier of the two there.
    It does count loopwatch's own threads (the watchdog, the console), as it should.
    """

    wall: float
    cpu: float

    @classmethod
    def now(cls) -> Times:
        return cls(time.perf_counter(), time.process_time())

    def since(self) -> Times:
        return Times(time.perf_counter() - self.wall, time.process_time() - self.cpu)


def alternate(variants: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run each variant once a round, in rotating order; their samples by name."""
    samples: dict[str, list[T]] = {name: [] for name in variants}
    for name in rotate(list(variants), rounds):
        gc.collect()
        samples[name].append(variants[name]())
    return samples


def column(samples: dict[str, list[Times]], clock: str) -> dict[str, list[float]]:
    """One clock ("wall" or "cpu") of every sample."""
    return {name: [getattr(t, clock) for t in ts] for name, ts in samples.items()}


def ratios(samples: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-round ratios num/den (a round's variants ran next to each other)."""
    return [a / b for a, b in zip(samples[num], samples[den], strict=True) if b > 0]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: list[float]) -> dict[str, float]:
    """min/median/max, for the details of a figure."""
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


@contextlib.contextmanager
def quiet_asyncio() -> Iterator[None]:
    """Silence asyncio's logger (debug mode warns about every slow callback)."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_loopwatch() -> Iterator[None]:
    """Findings are counted, not logged, while a benchmark runs."""
    logger = logging.getLogger("loopwatch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def here(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), *parts)


def callgrind_instructions(cmd: list[str], **run: Any) -> int:
    """Machine instructions of one process running ``cmd`` under valgrind's callgrind
    (``run``: more arguments for ``subprocess.run``, such as ``cwd`` and ``env``)."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           *cmd], capture_output=True, text=True, **run)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1:3]} failed under valgrind: "
                           f"{(proc.stdout + proc.stderr)[-500:]}")
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {proc.stderr[-500:]}")
    return int(found.group(1))
