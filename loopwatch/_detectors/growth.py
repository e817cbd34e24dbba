"""Task snapshots and ``task_growth``: which creation sites keep adding live tasks.

A :class:`TaskSnapshot` counts the live tasks of a loop by creation site (the
user's ``create_task`` line) and by coroutine; ``newer.compare_to(older)`` lists the
differences, largest growth first, like ``tracemalloc``'s ``Snapshot.compare_to``
and its ``StatisticDiff``. Counting reads only the raw records on the tasks: no
stack is formatted, one :class:`Frame` is made per distinct site.

The ``task_growth`` detector takes a snapshot every ``growth_every`` seconds from
the watchdog's ``tick`` and reports a site whose live tasks grew in
:data:`STEPS` consecutive snapshots by ``growth_min`` or more in all: a leak of one
task per request grows that way, a burst of work that drains does not.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from types import CodeType
from typing import TYPE_CHECKING, Any, Literal

from .._frames import Frame, RawStack, format_raw
from .._records import coro_name, coro_of
from .._report import Finding
from . import Detector
from .closed import code_site, is_user_code

if TYPE_CHECKING:
    from .._watcher import Watcher

__all__ = [
    "STEPS",
    "GrowthDetector",
    "TaskSnapshot",
    "TaskStat",
    "TaskStatDiff",
    "take_snapshot",
]

#: consecutive growing snapshots (intervals) before ``task_growth`` is reported
STEPS = 3

Key = Literal["site", "coro"]


@dataclasses.dataclass(frozen=True)
class TaskStat:
    """Live tasks of one creation site (a :class:`Frame`, or None when unknown) or one
    coroutine (its qualified name)."""

    key: Frame | str | None
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": _key_dict(self.key), "count": self.count}


@dataclasses.dataclass(frozen=True)
class TaskStatDiff:
    """One row of :meth:`TaskSnapshot.compare_to`: the count now and its change."""

    key: Frame | str | None
    count: int
    count_diff: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": _key_dict(self.key), "count": self.count, "count_diff": self.count_diff}

    def __str__(self) -> str:
        return f"{_key_text(self.key)}: {self.count} tasks ({self.count_diff:+d})"


def _key_dict(key: Frame | str | None) -> Any:
    return key.to_dict() if isinstance(key, Frame) else key


def _key_text(key: Frame | str | None) -> str:
    if isinstance(key, Frame):
        return f"{key.file}:{key.line} in {key.function}"
    return key if key is not None else "<unknown site>"


@dataclasses.dataclass(frozen=True)
class TaskSnapshot:
    """The live task population of one loop at one moment. Holds no task."""

    #: live tasks per creation site (None: created before loopwatch attached)
    sites: dict[Frame | None, int]
    #: live tasks per coroutine qualified name
    coros: dict[str, int]
    #: the creation stack of one task per site (outermost first)
    examples: dict[Frame | None, tuple[Frame, ...]]
    #: coroutine of the first task counted per site
    site_coros: dict[Frame | None, str]
    #: ``time.monotonic()`` and ``time.time()`` when it was taken
    taken: float
    at: float

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def _table(self, key: Key) -> dict[Any, int]:
        if key == "site":
            return dict(self.sites)
        if key == "coro":
            return dict(self.coros)
        raise ValueError(f"key must be 'site' or 'coro', got {key!r}")

    def statistics(self, key: Key = "site") -> list[TaskStat]:
        """Live tasks per site or coroutine, most first."""
        table = self._table(key)
        rows = [TaskStat(k, n) for k, n in table.items()]
        rows.sort(key=lambda r: (-r.count, _key_text(r.key)))
        return rows

    def compare_to(self, older: TaskSnapshot, key: Key = "site") -> list[TaskStatDiff]:
        """What changed since ``older``: one row per site (or coroutine) in either
        snapshot, sorted by the size of the change, then by count (largest first)."""
        new = self._table(key)
        old = older._table(key)
        rows = [TaskStatDiff(k, new.get(k, 0), new.get(k, 0) - old.get(k, 0))
                for k in {**old, **new}]
        rows.sort(key=lambda r: (-abs(r.count_diff), -r.count, _key_text(r.key)))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken": self.taken,
            "at": self.at,
            "total": self.total,
            "sites": [r.to_dict() for r in self.statistics("site")],
            "coros": [r.to_dict() for r in self.statistics("coro")],
        }


_site_cache: dict[tuple[CodeType, int], Frame] = {}
_coro_cache: dict[CodeType, str] = {}


def _site_of(raw: RawStack) -> Frame | None:
    """The innermost user frame of a raw stack (the innermost frame when all are library)."""
    if not raw:
        return None
    n = len(raw) - 1
    i = 0
    while i < n:
        code = raw[i]
        if is_user_code(code):
            break
        i += 2
    else:
        i = 0
    pair = (raw[i], raw[i + 1])
    site = _site_cache.get(pair)
    if site is None:
        site = code_site(*pair)
        if len(_site_cache) > 100_000:
            _site_cache.clear()
        _site_cache[pair] = site
    return site


def _coro_of(task: Any) -> str:
    try:
        coro = coro_of(task)
    except Exception:
        return type(task).__name__
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    if code is None:
        return coro_name(coro)
    name = _coro_cache.get(code)
    if name is None:
        name = coro_name(coro)
        if len(_coro_cache) > 100_000:
            _coro_cache.clear()
        _coro_cache[code] = name
    return name


def take_snapshot(watcher: Watcher) -> TaskSnapshot:
    """Count the live tasks of ``watcher``'s loop by creation site and coroutine.

    Safe from any thread (it only reads the records on the tasks)."""
    sites: dict[Frame | None, int] = {}
    coros: dict[str, int] = {}
    raws: dict[Frame | None, RawStack] = {}
    site_coros: dict[Frame | None, str] = {}
    for task in watcher.live_tasks():
        raw = getattr(task, "_lw_stack", ()) or ()
        site = _site_of(raw)
        coro = _coro_of(task)
        if site in sites:
            sites[site] += 1
        else:
            sites[site] = 1
            raws[site] = raw
            site_coros[site] = coro
        coros[coro] = coros.get(coro, 0) + 1
    examples = {site: tuple(format_raw(raw)) for site, raw in raws.items()}
    return TaskSnapshot(sites=sites, coros=coros, examples=examples, site_coros=site_coros,
                        taken=time.monotonic(), at=time.time())


GROWTH_HINT = (
    "tasks from this line start faster than they finish: bound them (a fixed pool of "
    "workers reading a queue, a Semaphore, a TaskGroup per request) and give what they "
    "await a timeout, so that every task can end"
)


class GrowthDetector(Detector):
    name = "task_growth"
    kinds = ("task_growth",)

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(watcher)
        #: (tick time, snapshot), the last STEPS + 1 of them
        self._snapshots: deque[tuple[float, TaskSnapshot]] = deque(maxlen=STEPS + 1)
        self._next: float | None = None
        self._lock = threading.Lock()

    def loop_started(self) -> None:
        # A loop run again later (run_until_complete by hand) starts a fresh window.
        with self._lock:
            self._snapshots.clear()
            self._next = None

    def tick(self, now: float) -> None:
        with self._lock:
            if self._next is not None and now < self._next:
                return
            self._next = now + self.watcher.options.growth_every
            self._snapshots.append((now, take_snapshot(self.watcher)))
            if len(self._snapshots) < STEPS + 1:
                return
            window = list(self._snapshots)
        self._check(window)

    def _check(self, window: list[tuple[float, TaskSnapshot]]) -> None:
        last = window[-1][1]
        need = self.watcher.options.growth_min
        for site, count in last.sites.items():
            if site is None:
                continue
            counts = [snap.sites.get(site, 0) for _, snap in window]
            if count - counts[0] < need:
                continue
            if not all(counts[i + 1] > counts[i] for i in range(len(counts) - 1)):
                continue
            self.watcher.add_finding(self._finding(site, window, counts))

    def _finding(self, site: Frame, window: list[tuple[float, TaskSnapshot]],
                 counts: list[int]) -> Finding:
        last = window[-1][1]
        start = window[0][0]
        span = window[-1][0] - start
        coro = last.site_coros.get(site, "")
        series = " -> ".join(str(c) for c in counts)
        stacks: dict[str, list[Frame]] = {}
        example = last.examples.get(site)
        if example:
            stacks["created"] = list(example)
        return Finding(
            kind="task_growth",
            message=(f"live tasks created at {site.file}:{site.line} ({coro}) keep growing: "
                     f"{series} over {span:.3g} s (a snapshot every "
                     f"{self.watcher.options.growth_every:g} s)"),
            site=site,
            stacks=stacks,
            hint=GROWTH_HINT,
            details={"coro": coro, "counts": counts,
                     "times": [round(t - start, 3) for t, _ in window],
                     "growth": counts[-1] - counts[0], "live_tasks": last.total},
            key=("task_growth", site),
        )
