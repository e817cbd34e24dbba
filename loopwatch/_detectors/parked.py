"""``parked`` and ``await_cycle``: tasks stuck on one future, and tasks waiting on each other.

The scan reads every live task from the outside, with no wrapper around any step:
it notes the future each task waits on (``Watcher.observe``: a new future restarts
the task's clock) and the tasks it waits for (``await task``, a gather). That pass
is a few attribute reads per task; only the tasks that have waited longer than
``parked_after`` get their await chain read (``describe``), and only once per wait.

- **parked**: a task that waited on the same future longer than ``parked_after``.
  A task in ``asyncio.sleep`` wakes at a known time and is not parked; a task that
  only waits for other tasks is not reported itself: the leaf it waits for is, with
  the waiting tasks listed as "awaited by". A task that resumes keeps its finding,
  with the time it waited.
- **await_cycle**: tasks that wait on each other in a cycle, through ``await task``,
  a gather, ``asyncio.wait`` or ``wait_for``. Found on the scan (a cycle must be seen twice, so
  that a picture read while the loop runs cannot invent one) and, without that
  rule, when a runner's main coroutine returns: before the runner cancels, because
  CPython's ``Task.cancel`` on a cycle recurses into ``RecursionError``.

The scan runs on the watchdog thread (``StallDetector`` calls :meth:`poll` on every
wake; it scans every ``parked_after / 4`` seconds, at most once a second, and never
more than 5% of the time), and once more when a run finishes.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._awaits import Awaiting, describe, find_cycles
from .._frames import Frame, format_raw, is_library, pick_site
from .._records import coro_of, task_id
from .._report import Finding, TaskRef
from .._watcher import weak_waiter
from . import Detector

if TYPE_CHECKING:
    from .._watcher import Watcher

__all__ = ["ParkedDetector", "await_site", "hint_for", "task_refs"]

_monotonic = time.monotonic

#: parked findings kept per loop; more are counted in a note
MAX_FINDINGS = 500
#: await chains read per scan (the rest wait for the next scan)
DESCRIBE_PER_SCAN = 256
#: await chains read by the last scan of a run
DESCRIBE_FINAL = 4096
#: a finding is rewritten when the wait grew by this factor since it was last written
GROWTH = 1.25
#: up to this many tasks waiting on plain futures, each scan looks whether they are in
#: asyncio.wait (a cycle through it is then found at once); above it, only the tasks
#: that waited longer than parked_after are looked at
FRAME_EDGES_UP_TO = 2000

#: waits that are the point of the task: never parked
BY_DESIGN = frozenset({"sleep", "sleep_forever", "Server.serve_forever"})

_HINTS: dict[str, str] = {
    "Event.wait": "nothing set this event: check that the code meant to call event.set() runs, "
                  "on every path (errors too), or bound the wait with asyncio.timeout()",
    "Queue.get": "nothing was put on this queue: check that the producer is alive (did it fail?) "
                 "and puts on this same queue; stop idle consumers with a sentinel or cancel "
                 "them when the work is done",
    "Queue.put": "the queue is full and nothing takes from it: check that its consumers are alive",
    "Queue.join": "queue.join() waits for one task_done() per item: check that every consumer "
                  "calls task_done(), also when an item fails",
    "Lock.acquire": "another task holds this lock and does not release it: take it with "
                    "'async with lock:' so it is released on every path",
    "Semaphore.acquire": "the semaphore's holders do not release it: take it with "
                         "'async with sem:' so it is released on every path",
    "Condition.wait": "nothing notified this condition: check the code meant to call notify() "
                      "runs, or use wait_for(predicate) with a timeout",
    "Barrier.wait": "fewer tasks than the barrier's parties reached it",
    "executor job": "the thread running this executor job has not finished: it may be blocked, "
                    "or the pool is full; give the blocking call a timeout",
    "stream read": "the peer sends nothing: add a read timeout (asyncio.timeout()) and close "
                   "idle connections",
    "stream drain": "the peer does not read what is written: add a write timeout",
    "future": "nothing set a result on this future: check that the code meant to call "
              "set_result() / set_exception() runs, on every path",
    "memory stream receive": "nothing sends on this stream: check that the sender is alive and "
                             "closes the stream when done",
}
_DEFAULT_HINT = ("if this wait is by design, raise parked_after; otherwise make sure what it "
                 "waits for happens, or bound the wait with asyncio.timeout()")
CYCLE_HINT = ("each of these tasks waits for the next one and the last waits for the first: none "
              "can ever finish. Break the cycle (one of them must not wait for the others, or "
              "must use a timeout). Do not cancel them to clean up: CPython's Task.cancel() "
              "recurses around a cycle until RecursionError")


def await_site(frames: Sequence[Frame], created: Sequence[Frame] = ()) -> Frame | None:
    """The user's await line in an await chain. A chain that is all plumbing (a task
    running ``Event.wait()`` itself, as ``wait_for`` makes on 3.10 and 3.11) points at
    the line that created the task instead."""
    for frame in reversed(frames):
        if not is_library(frame.file):
            return frame
    if created:
        return pick_site(created)
    return frames[-1] if frames else None


def hint_for(what: str) -> str:
    """The hint for a task parked on ``what`` (an ``Awaiting.what``)."""
    return _HINTS.get(what, _DEFAULT_HINT)


# asyncio.wait's inner coroutine: a task parked in it waits for tasks (found only by
# reading its frame, so only read for tasks that waited long, or at the end of a run)
_WAIT_CODES = tuple(
    code for code in (
        getattr(getattr(asyncio.tasks, "_wait", None), "__code__", None),
        getattr(getattr(asyncio.tasks, "wait_for", None), "__code__", None),
    ) if code is not None
)


class _Parked:
    """One parked wait: a task on one future, since ``since``."""

    __slots__ = ("key", "task", "ref", "since", "last_seen", "awaiting", "created",
                 "awaited_by", "published", "finding", "listed")

    def __init__(self, key: tuple[Any, ...], task: asyncio.Future[Any], since: float,
                 awaiting: Awaiting, now: float) -> None:
        from .._watcher import task_ref

        self.key = key
        self.task = weakref.ref(task)
        self.ref: TaskRef = task_ref(task)
        self.since = since
        self.last_seen = now
        self.awaiting = awaiting
        self.created: list[Frame] = format_raw(getattr(task, "_lw_stack", ()) or ())
        #: (id, name) of the tasks waiting for this one
        self.awaited_by: tuple[tuple[str, str], ...] = ()
        self.published = 0.0
        self.finding: Finding | None = None
        #: holds one of the MAX_FINDINGS places
        self.listed = False


def _classify(waiter: Any, cache: dict[type, int]) -> int:
    """0: a plain future; 1: a task; 2: a gather."""
    cls = type(waiter)
    kind = cache.get(cls)
    if kind is None:
        if isinstance(waiter, asyncio.Task):
            kind = 1
        elif cls.__name__ == "_GatheringFuture":
            kind = 2
        else:
            kind = 0
        cache[cls] = kind
    return kind


def _innermost_code(task: asyncio.Future[Any]) -> Any:
    """The code of the innermost coroutine of ``task``'s await chain (cheap)."""
    obj = coro_of(task)
    code = None
    for _ in range(200):
        frame = getattr(obj, "cr_frame", None)
        if frame is not None:
            code = frame.f_code
            obj = getattr(obj, "cr_await", None)
            continue
        frame = getattr(obj, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            obj = getattr(obj, "gi_yieldfrom", None)
            continue
        break
    return code


def _compiled_await(task: asyncio.Future[Any]) -> str:
    """The qualified name of a compiled coroutine at the end of the await chain (uvloop's
    ``Server.serve_forever`` is Cython: no frame, so ``describe`` calls it a future)."""
    import gc

    obj = coro_of(task)
    for _ in range(200):
        nxt = getattr(obj, "cr_await", None) if hasattr(obj, "cr_frame") else None
        if nxt is None:
            break
        obj = nxt
    if obj is None or hasattr(obj, "cr_frame") or hasattr(obj, "gi_frame"):
        return ""
    name = getattr(obj, "__qualname__", None)
    if isinstance(name, str):
        return name
    for inner in gc.get_referents(obj):  # a coroutine_wrapper holds its coroutine
        name = getattr(inner, "__qualname__", None)
        if isinstance(name, str):
            return name
    return ""


class _Picture:
    """One pass over the live tasks: who waits for whom, and who waited long."""

    __slots__ = ("edges", "over", "by_id", "others", "count")

    def __init__(self) -> None:
        #: pending tasks of the loop read
        self.count = 0
        #: task id -> ids of the tasks it waits for
        self.edges: dict[int, tuple[int, ...]] = {}
        #: tasks that have waited on one future since before the cutoff
        self.over: list[asyncio.Future[Any]] = []
        #: tasks that wait for tasks, by id (strong references: drop with the picture)
        self.by_id: dict[int, asyncio.Future[Any]] = {}
        #: tasks waiting on a plain future (only collected when asked)
        self.others: list[asyncio.Future[Any]] = []


# asyncio's registry of tasks (a WeakSet: 3.10 and 3.11 ``_all_tasks``, 3.12 and 3.13
# ``_scheduled_tasks`` plus the ``_eager_tasks`` set). Reading its weak references is
# three times faster than ``asyncio.all_tasks(loop)`` (a Python call per task), and
# holds no task for longer than the scan looks at it; ``Watcher.live_tasks`` is the
# fallback wherever the registry is laid out otherwise.
_REGISTRY: Any = getattr(asyncio.tasks, "_scheduled_tasks", None)
if _REGISTRY is None:  # not "or": an empty WeakSet is false
    _REGISTRY = getattr(asyncio.tasks, "_all_tasks", None)
_EAGER: Any = getattr(asyncio.tasks, "_eager_tasks", None)


def task_refs(watcher: Watcher) -> list[Callable[[], Any]]:
    """Weak references to the tasks in asyncio's registry (any loop, done or not: the
    scan filters them as it reads each one). Nothing here keeps a task alive for longer
    than the scan looks at it, so a task the program drops is still collected on time."""
    data = getattr(_REGISTRY, "data", None)
    if isinstance(data, set):
        for _ in range(10):
            try:
                refs: list[Callable[[], Any]] = list(data)
                if isinstance(_EAGER, set):
                    refs.extend(weakref.ref(t) for t in list(_EAGER))
                return refs
            except RuntimeError:  # changed size under another thread: read again
                continue
    return [weakref.ref(t) for t in watcher.live_tasks()]


Ref = weakref.ReferenceType


def _picture(refs: list[Callable[[], Any]], loop: asyncio.AbstractEventLoop, now: float,
             cutoff: float, cache: dict[type, int], *, others: bool = False) -> _Picture:
    """The scan's single pass over the pending tasks of ``loop``. Notes the future each
    task waits on (a new one restarts its clock, as ``Watcher.observe`` does), so it must
    stay cheap: 100,000 tasks."""
    pic = _Picture()
    edges = pic.edges
    over = pic.over
    by_id = pic.by_id
    t: Any = None
    count = 0
    for ref in refs:
        t = ref()
        if t is None or getattr(t, "_loop", None) is not loop or t.done():
            continue
        count += 1
        waiter: Any = getattr(t, "_fut_waiter", None)
        if waiter is None:
            try:
                if t._lw_waiter is not None:
                    t._lw_waiter = None
                    t._lw_since = 0.0
            except AttributeError:
                pass
            continue
        # As Watcher.observe: the waiter is noted by weak reference (weak_waiter)
        noted: Any = getattr(t, "_lw_waiter", None)
        if (noted() if type(noted) is Ref else noted) is waiter:
            since = t._lw_since
        else:
            try:
                t._lw_waiter = weak_waiter(waiter)
                t._lw_since = since = now
            except AttributeError:
                continue  # a task type that takes no attributes: its clock is unknown
        kind = cache.get(type(waiter))
        if kind is None:
            kind = _classify(waiter, cache)
        if kind:
            tid = task_id(t)
            if kind == 1:
                edges[tid] = (task_id(waiter),)
            else:
                edges[tid] = tuple(task_id(c) for c in (getattr(waiter, "_children", ()) or ())
                                   if isinstance(c, asyncio.Task) and not c.done())
            by_id[tid] = t
        elif others:
            pic.others.append(t)
        if since and since <= cutoff:
            over.append(t)
    del t
    pic.count = count
    return pic


def _reverse(edges: dict[int, tuple[int, ...]]) -> dict[int, list[int]]:
    rev: dict[int, list[int]] = {}
    for waiter, targets in edges.items():
        for target in targets:
            rev.setdefault(target, []).append(waiter)
    return rev


def _cycles(edges: dict[int, tuple[int, ...]]) -> list[tuple[int, ...]]:
    graph: dict[int, Iterable[int]] = dict(edges)
    return [tuple(c) for c in find_cycles(graph)]


def _name(task: asyncio.Future[Any] | None) -> str:
    get_name = getattr(task, "get_name", None)
    return str(get_name()) if get_name is not None else ""


class ParkedDetector(Detector):
    """``parked`` tasks and ``await_cycle`` deadlocks."""

    name = "parked"
    kinds = ("parked", "await_cycle")

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(watcher)
        opts = watcher.options
        self.parked_after = float(opts.parked_after)
        self.report_parked = "parked" not in opts.disabled
        self.report_cycles = "await_cycle" not in opts.disabled
        #: seconds between scans: a quarter of parked_after, between 20 ms and 1 s
        self.interval = min(1.0, max(0.02, self.parked_after / 4))
        self._next_scan = 0.0
        self._lock = threading.Lock()
        self._types: dict[type, int] = {}
        #: parked waits open now, by (task id, since)
        self._open: dict[tuple[int, float], _Parked] = {}
        #: long waits that are not parked (sleep, waiting for tasks) -> the tasks they wait
        #: for when only the frames tell (asyncio.wait, wait_for on 3.10 and 3.11)
        self._skip: dict[tuple[int, float], tuple[int, ...]] = {}
        #: (task id, since) -> tasks waited for, of tasks on plain futures (see _frame_edges)
        self._frame_cache: dict[tuple[int, float], tuple[int, ...]] = {}
        #: cycles seen by the last scan, and those reported
        self._cycles_seen: set[tuple[int, ...]] = set()
        self._cycles_reported: set[tuple[int, ...]] = set()
        #: parked findings made, and the most parked waits at once that were not listed
        #: (once MAX_FINDINGS were)
        self.listed = 0
        self.unlisted = 0
        self._unlisted_now = 0
        self._shutting_down = False
        #: the last scan: (tasks read, seconds it took)
        self.last_scan: tuple[int, float] = (0, 0.0)

    # -- hooks -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.poll(now)

    def poll(self, now: float) -> None:
        """Scan if one is due (the watchdog thread calls this on every wake)."""
        if now < self._next_scan or self.watcher.closed:
            return
        self.scan(now)

    def run_finished(self, fut: Any) -> None:
        # The loop is not running: the picture is exact, so a cycle needs no second look.
        self.scan(_monotonic(), final=True)
        self._shutting_down = True  # what is cancelled from now on, the runner cancels

    def audit(self) -> list[Finding]:
        """Parked tasks and cycles as of now that have no finding yet (any thread)."""
        w = self.watcher
        if w.closed or not (self.report_parked or self.report_cycles):
            return []
        now = _monotonic()
        found: list[Finding] = []
        with self._lock:
            pic = _picture(task_refs(w), w.loop, now, now - self.parked_after, self._types,
                           others=True)
            records: dict[tuple[int, float], _Parked] = {}
            extra = self._examine(pic, now, DESCRIBE_FINAL, records, {}, count=False)
            for t in pic.others:
                if _innermost_code(t) in _WAIT_CODES:
                    waits = describe(t, w.loop).waits_on
                    if waits:
                        extra[task_id(t)] = waits
                        pic.by_id[task_id(t)] = t
            edges = {**pic.edges, **extra}
            if self.report_parked and records:
                rev = _reverse(edges)
                for key, rec in records.items():
                    if w.has_finding(("parked", *key)):
                        continue
                    rec.awaited_by = self._awaited_by(key[0], rev, pic.by_id)
                    found.append(self._finding(rec, now - rec.since, ended=False))
            if self.report_cycles:
                for cycle in _cycles(edges):
                    if not w.has_finding(("await_cycle", cycle)):
                        f = self._cycle_finding(cycle, pic.by_id)
                        if f is not None:
                            found.append(f)
            del pic
        return found

    def notes(self) -> list[str]:
        if self.unlisted:
            return [f"up to {self.unlisted} more tasks were parked at once than are listed "
                    f"(parked findings stop at {MAX_FINDINGS})"]
        return []

    # -- the scan ----------------------------------------------------------------------

    def scan(self, now: float, *, final: bool = False) -> None:
        """Read every live task once; report what is parked and what waits in a cycle."""
        w = self.watcher
        out: list[Finding] = []
        with self._lock:
            started = _monotonic()
            pic = _picture(task_refs(w), w.loop, now, now - self.parked_after, self._types,
                           others=True)
            count = pic.count
            records: dict[tuple[int, float], _Parked] = {}
            skip: dict[tuple[int, float], tuple[int, ...]] = {}
            extra = self._examine(pic, now, DESCRIBE_FINAL if final else DESCRIBE_PER_SCAN,
                                  records, skip, count=True)
            if final or len(pic.others) <= FRAME_EDGES_UP_TO:
                extra.update(self._frame_edges(pic))
            edges = {**pic.edges, **extra}
            if self.report_parked:
                rev = _reverse(edges) if records else {}
                for key, rec in list(records.items()):
                    rec.awaited_by = self._awaited_by(key[0], rev, pic.by_id)
                    f = self._update(rec, now, ended=False)
                    if f is not None:
                        out.append(f)
                    if not rec.listed:  # the list is full: keep nothing for it
                        del records[key]
                        self._unlisted_now += 1
                for key, rec in self._open.items():
                    if key not in records and rec.listed:
                        out.append(self._update_ended(rec))
                self.unlisted = max(self.unlisted, self._unlisted_now)
            self._open = records
            self._skip = skip
            if self.report_cycles:
                cycles = set(_cycles(edges))
                confirmed = cycles if final else cycles & self._cycles_seen
                for cycle in sorted(confirmed - self._cycles_reported):
                    f = self._cycle_finding(cycle, pic.by_id)
                    if f is not None:
                        self._cycles_reported.add(cycle)
                        out.append(f)
                self._cycles_seen = cycles
            del pic
            cost = _monotonic() - started
            self.last_scan = (count, cost)
            # never more than 5% of the time, however many tasks there are
            self._next_scan = now + max(self.interval, cost * 20)
        for finding in out:
            w.add_finding(finding)

    def _examine(self, pic: _Picture, now: float, budget: int,
                 records: dict[tuple[int, float], _Parked],
                 skip: dict[tuple[int, float], tuple[int, ...]], *,
                 count: bool) -> dict[int, tuple[int, ...]]:
        """Sort the long waits into parked (``records``) and not (``skip``); returns the
        waits-on edges that only the frames show. Reads an await chain once per wait."""
        extra: dict[int, tuple[int, ...]] = {}
        loop = self.watcher.loop
        unlisted = 0
        for t in pic.over:
            tid = task_id(t)
            key = (tid, float(getattr(t, "_lw_since", 0.0)))
            rec = self._open.get(key)
            if rec is not None:
                rec.last_seen = now
                records[key] = rec
                continue
            known = self._skip.get(key)
            if known is not None:
                skip[key] = known
                if known:
                    extra[tid] = known
                    pic.by_id[tid] = t
                continue
            if count and self.listed >= MAX_FINDINGS and self.report_parked:
                unlisted += 1  # a full list: read no chain and keep nothing
                continue
            if budget <= 0:
                continue
            budget -= 1
            awaiting = describe(t, loop)
            if awaiting.sleeping or awaiting.what in BY_DESIGN or (
                    awaiting.what == "future" and _compiled_await(t) in BY_DESIGN):
                skip[key] = ()
            elif awaiting.on_tasks:
                skip[key] = awaiting.waits_on
                if awaiting.waits_on and tid not in pic.edges:
                    extra[tid] = awaiting.waits_on
                    pic.by_id[tid] = t
            else:
                records[key] = _Parked(key, t, key[1], awaiting, now)
        if count:
            self._unlisted_now = unlisted
        return extra

    def _frame_edges(self, pic: _Picture) -> dict[int, tuple[int, ...]]:
        """Edges of tasks in asyncio.wait (or 3.10/3.11 wait_for) whatever their age;
        each wait is read once."""
        extra: dict[int, tuple[int, ...]] = {}
        cache: dict[tuple[int, float], tuple[int, ...]] = {}
        loop = self.watcher.loop
        for t in pic.others:
            tid = task_id(t)
            key = (tid, float(getattr(t, "_lw_since", 0.0)))
            waits = self._frame_cache.get(key)
            if waits is None:
                waits = ()
                if _innermost_code(t) in _WAIT_CODES:
                    waits = describe(t, loop).waits_on
            cache[key] = waits
            if waits:
                extra[tid] = waits
                pic.by_id[tid] = t
        self._frame_cache = cache
        return extra

    @staticmethod
    def _awaited_by(tid: int, rev: dict[int, list[int]],
                    by_id: dict[int, asyncio.Future[Any]]) -> tuple[tuple[str, str], ...]:
        """The tasks waiting, directly or through others, for task ``tid`` (nearest first)."""
        out: list[tuple[str, str]] = []
        seen = {tid}
        queue = list(rev.get(tid, ()))
        while queue and len(out) < 20:
            n = queue.pop(0)
            if n in seen:
                continue
            seen.add(n)
            out.append((f"T{n}", _name(by_id.get(n))))
            queue.extend(rev.get(n, ()))
        return tuple(out)

    # -- findings ----------------------------------------------------------------------

    def _update(self, rec: _Parked, now: float, *, ended: bool) -> Finding | None:
        parked_for = now - rec.since
        if rec.finding is not None and parked_for < rec.published * GROWTH and \
                rec.finding.details.get("awaited_by") == [i for i, _ in rec.awaited_by]:
            return None
        if not rec.listed:
            if self.listed >= MAX_FINDINGS:
                return None
            rec.listed = True
            self.listed += 1
        finding = self._finding(rec, parked_for, ended=ended)
        rec.published = parked_for
        rec.finding = finding
        return finding

    def _update_ended(self, rec: _Parked) -> Finding:
        finding = self._finding(rec, rec.last_seen - rec.since, ended=True)
        rec.finding = finding
        return finding

    def _finding(self, rec: _Parked, parked_for: float, *, ended: bool) -> Finding:
        aw = rec.awaiting
        site = await_site(aw.frames, rec.created)
        ref = rec.ref
        what = aw.what + (f" ({aw.detail})" if aw.detail else "")
        where = f" at {site.file}:{site.line}" if site is not None else ""
        if ended:
            message = (f"task {ref.id} {ref.name!r} ({ref.coro}) was parked for "
                       f"{parked_for:.1f} s on {what}{where}, {self._outcome(rec)}")
        else:
            message = (f"task {ref.id} {ref.name!r} ({ref.coro}) has been parked for "
                       f"{parked_for:.1f} s on {what}{where}")
        if aw.timeout is not None:
            message += f" (timeout {aw.timeout:g} s)"
        if rec.awaited_by:
            shown = ", ".join(f"{i} {n!r}" if n else i for i, n in rec.awaited_by[:4])
            more = len(rec.awaited_by) - 4
            message += f"; awaited by {shown}" + (f" and {more} more" if more > 0 else "")
        stacks: dict[str, list[Frame]] = {}
        if aw.frames:
            stacks["await"] = list(aw.frames)
        if rec.created:
            stacks["created"] = list(rec.created)
        details: dict[str, Any] = {
            "parked_for": parked_for,
            "awaiting": aw.what,
            "awaiting_detail": aw.detail,
            "timeout": aw.timeout,
            "awaited_by": [i for i, _ in rec.awaited_by],
            "resumed": ended,
            "parked_after": self.parked_after,
        }
        return Finding(kind="parked", message=message, site=site, task=ref, stacks=stacks,
                       hint=hint_for(aw.what), details=details, key=("parked", *rec.key))

    def _outcome(self, rec: _Parked) -> str:
        task = rec.task()
        if task is None:
            return self._outcome_from_history(rec.key[0])
        try:
            if not task.done():
                return "then it moved on"
            if task.cancelled():
                return ("until the runner cancelled it at shutdown" if self._shutting_down
                        else "until it was cancelled")
            return "then it finished"
        finally:
            del task

    def _outcome_from_history(self, tid: int) -> str:
        """How a task that is gone ended, from the watcher's bounded history."""
        from .._records import finished_from_raw

        for raw in reversed(list(self.watcher.history)):
            if raw and raw[0] == tid:
                outcome = finished_from_raw(raw).outcome
                return {"cancelled": ("until the runner cancelled it at shutdown"
                                      if self._shutting_down else "until it was cancelled"),
                        "exception": "then it failed",
                        "destroyed": "until it was garbage-collected while pending"}.get(
                            outcome, "then it finished")
        return "then it stopped waiting"

    def _cycle_finding(self, cycle: tuple[int, ...],
                       by_id: dict[int, asyncio.Future[Any]]) -> Finding | None:
        from .._watcher import task_ref

        tasks = [by_id.get(n) for n in cycle]
        if any(t is None for t in tasks):
            return None
        loop = self.watcher.loop
        refs: list[TaskRef] = []
        sites: list[Frame | None] = []
        chains: list[tuple[Frame, ...]] = []
        whats: list[str] = []
        timeouts: list[float | None] = []
        for t in tasks:
            assert t is not None
            aw = describe(t, loop)
            refs.append(task_ref(t))
            chains.append(aw.frames)
            sites.append(await_site(aw.frames))
            whats.append(aw.what)
            timeouts.append(aw.timeout)
        del tasks
        parts = []
        for i, ref in enumerate(refs):
            nxt = refs[(i + 1) % len(refs)]
            site = sites[i]
            at = f" at {site.file}:{site.line}" if site is not None else ""
            how = [] if whats[i] == "task" else [f"through {whats[i]}"]
            if timeouts[i] is not None:
                how.append(f"timeout {timeouts[i]:g} s")
            how_text = f" ({', '.join(how)})" if how else ""
            parts.append(f"{ref.id} {ref.name!r} awaits {nxt.id}{how_text}{at}")
        ending = ("none can finish until a timeout ends a wait" if any(
            t is not None for t in timeouts) else "none can finish")
        message = (f"{len(refs)} tasks wait on each other in a cycle and {ending}: "
                   + "; ".join(parts))
        stacks = {f"await {ref.id}": list(chain)
                  for ref, chain in zip(refs, chains, strict=True) if chain}
        details: dict[str, Any] = {
            "cycle": [ref.id for ref in refs],
            "tasks": [{"id": ref.id, "name": ref.name, "coro": ref.coro, "awaiting": what,
                       "timeout": timeout, "site": site.to_dict() if site is not None else None}
                      for ref, what, timeout, site in zip(refs, whats, timeouts, sites,
                                                          strict=True)],
        }
        return Finding(kind="await_cycle", message=message, site=sites[0], task=refs[0],
                       stacks=stacks, hint=CYCLE_HINT, details=details,
                       key=("await_cycle", cycle))
