"""The watcher: everything loopwatch knows about one loop, and the detectors on it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _frames
from ._awaits import Awaiting, describe
from ._detectors import hook_table, make_detectors
from ._frames import Frame
from ._options import Options
from ._records import (
    FinishedTask,
    coro_name,
    coro_of,
    finished_from_raw,
    task_class,
    task_id,
)
from ._report import Finding, Report, TaskRef

if TYPE_CHECKING:
    from ._detectors import Detector

__all__ = ["TaskInfo", "Watcher", "all_watchers", "recorded_waiter", "task_ref", "weak_waiter"]

log = logging.getLogger("loopwatch")

_watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
#: called with every new watcher (the CLI keeps them alive to report at exit)
on_new_watcher: list[Callable[[Watcher], None]] = []


def all_watchers() -> list[Watcher]:
    """Every watcher alive in this process, oldest first."""
    return sorted(_watchers, key=lambda w: w.serial)


@dataclasses.dataclass(slots=True)
class TaskInfo:
    """A task as loopwatch sees it, at one moment. Holds no reference to the task."""

    #: short id unique in the process: ``"T7"``
    id: str
    name: str
    #: the coroutine's qualified name, with its module
    coro: str
    #: ``pending``, ``done``, ``cancelled``, ``failed`` (or ``destroyed`` in history)
    state: str
    #: the user's line that created the task
    site: Frame | None
    #: the creation stack, outermost first as in a traceback (empty for tasks that existed
    #: before attach)
    stack: tuple[Frame, ...]
    #: seconds since the task was created (None when unknown)
    age: float | None
    #: id of the task that created this one
    parent: str | None
    #: seconds the task has waited on its current future (None when running or done)
    parked_for: float | None
    #: where and on what the task waits (None for finished tasks)
    awaiting: Awaiting | None
    #: outcome of a finished task (``result``, ``exception``, ``cancelled``) and its text
    outcome: str = ""
    detail: str = ""

    @property
    def number(self) -> int:
        return int(self.id[1:])

    def ref(self) -> TaskRef:
        return TaskRef(self.id, self.name, self.coro)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "coro": self.coro,
            "state": self.state,
            "site": self.site.to_dict() if self.site else None,
            "stack": [f.to_dict() for f in self.stack],
            "age": self.age,
            "parent": self.parent,
            "parked_for": self.parked_for,
            "awaiting": self.awaiting.to_dict() if self.awaiting else None,
            "outcome": self.outcome,
            "detail": self.detail,
        }


def task_ref(task: asyncio.Future[Any]) -> TaskRef:
    get_name = getattr(task, "get_name", None)
    get_coro = getattr(task, "get_coro", None)
    return TaskRef(
        f"T{task_id(task)}",
        get_name() if get_name else "",
        coro_name(coro_of(task)) if get_coro else type(task).__name__,
    )


def _state(task: asyncio.Future[Any]) -> str:
    if not task.done():
        return "pending"
    if task.cancelled():
        return "cancelled"
    return "failed" if task._exception is not None else "done"  # type: ignore[attr-defined]


_serials = iter(range(1, 1 << 62))


class Watcher:
    """Everything loopwatch knows about one loop.

    Get the watcher of a loop with :func:`loopwatch.watcher`; a loop made by
    :func:`loopwatch.loop_factory` has one from birth, :func:`loopwatch.attach`
    gives one to a running loop.
    """

    #: the detectors that the methods of a loop's shared class call, when it has one
    #: (see ``_detectors/shared.py``; each registers itself when it is installed)
    hook_timers: Any = None
    hook_asyncgens: Any = None
    hook_openers: Any = None
    hook_post_close: Any = None

    def __init__(self, loop: asyncio.AbstractEventLoop, options: Options, *,
                 attached: bool = False, base: str = "") -> None:
        self.loop = loop
        self.options = options
        self.attached = attached
        self.base = base or _base_name(loop)
        self.serial = next(_serials)
        #: raw tuples left by finished tasks (see ``WatchedTask.__del__``)
        self.history: deque[tuple[Any, ...]] = deque(maxlen=options.history or 1)
        self.task_class = task_class(self.history.append if options.history else None)
        self.closed = False
        self.loop_thread: threading.Thread | None = None
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._findings: list[Finding] = []
        self._keys: dict[Any, Finding] = {}
        self._listeners: list[Callable[[Finding], None]] = []
        self.detectors: list[Detector] = []
        #: hook -> positions in ``detectors`` of those that define it (see :meth:`_broadcast`)
        self._hooked: dict[str, tuple[int, ...]] | None = None
        self._hooked_for = 0
        self.console: Any = None
        #: undoes what attaching put on the loop (see :meth:`release`)
        self._detach: Callable[[], None] | None = None
        _watchers.add(self)
        if on_new_watcher:
            for callback in list(on_new_watcher):
                callback(self)

    # -- detectors -------------------------------------------------------------------

    def install_detectors(self) -> None:
        """Create and install every detector (called once by the loop layer)."""
        self.detectors.extend(make_detectors(self))
        self._broadcast("install")

    def detector(self, name: str) -> Detector | None:
        for d in self.detectors:
            if d.name == name:
                return d
        return None

    def call(self, detector: Detector, hook: str, *args: Any) -> Any:
        """Run one detector hook; a failure is reported once and switches it off."""
        if not detector.enabled:
            return None
        try:
            return getattr(detector, hook)(*args)
        except Exception as exc:
            self._switch_off(detector, exc)
            return None

    def _switch_off(self, detector: Detector, exc: Exception) -> None:
        detector.enabled = False
        log.warning("loopwatch: the %s check failed and is switched off: %s: %s",
                    detector.name, type(exc).__name__, exc, exc_info=exc)
        self.notes.append(f"{detector.name} check switched off after an internal error: "
                          f"{type(exc).__name__}: {exc}")

    def _broadcast(self, hook: str, *args: Any) -> None:
        # Only the detectors that define the hook (the base's hooks do nothing), from a
        # table shared by every watcher with the same detector classes; :meth:`call`,
        # inlined. A loop per test pays for every hook of every detector.
        detectors = list(self.detectors)  # (tick runs in the watchdog thread)
        hooked = self._hooked
        if hooked is None or self._hooked_for != len(detectors):
            hooked = self._hooked = hook_table(tuple(map(type, detectors)))
            self._hooked_for = len(detectors)
        for i in hooked.get(hook, ()):
            detector = detectors[i]
            if detector.enabled:
                try:
                    getattr(detector, hook)(*args)
                except Exception as exc:
                    self._switch_off(detector, exc)

    # -- findings --------------------------------------------------------------------

    def add_finding(self, finding: Finding) -> Finding:
        """Record a finding (thread-safe). A finding with the key of an earlier one
        replaces it (the same parked task, seen again later, for longer)."""
        if finding.kind in self.options.disabled:
            return finding
        with self._lock:
            if finding.key is not None and finding.key in self._keys:
                old = self._keys[finding.key]
                idx = self._findings.index(old)
                self._findings[idx] = finding
                self._keys[finding.key] = finding
                return finding
            self._findings.append(finding)
            if finding.key is not None:
                self._keys[finding.key] = finding
        if self.options.log:
            site = f" ({finding.site.file}:{finding.site.line})" if finding.site else ""
            log.warning("%s: %s%s", finding.kind, finding.message, site)
        for listener in list(self._listeners):
            try:
                listener(finding)
            except Exception:
                log.exception("loopwatch: a finding listener failed")
        return finding

    def has_finding(self, key: Any) -> bool:
        with self._lock:
            return key in self._keys

    def add_listener(self, callback: Callable[[Finding], None]) -> None:
        """Call ``callback(finding)`` for each new finding, once: a later finding that
        replaces it (the same key: a parked task seen again, for longer) is not passed
        on again, so that a listener that counts findings counts each bug once. The
        latest version is in :meth:`findings`."""
        self._listeners.append(callback)

    def findings(self) -> list[Finding]:
        """Every finding made so far on this loop."""
        with self._lock:
            return list(self._findings)

    def audit(self) -> Report:
        """What would be left behind if the loop shut down now, plus the findings so far.

        Safe to call from any thread; it only reads.
        """
        found: list[Finding] = []
        for detector in list(self.detectors):
            result = self.call(detector, "audit")
            if result:
                found.extend(result)
        return Report(findings=self.findings() + found, notes=self.all_notes(), scope="audit",
                      loop=self.base, lag=self.lag())

    def report(self) -> Report:
        """The findings of the whole run so far (an audit is added while the loop is open)."""
        if self.closed:
            return Report(findings=self.findings(), notes=self.all_notes(), scope="run",
                          loop=self.base, lag=self.lag())
        report = self.audit()
        report.scope = "run"
        return report

    def all_notes(self) -> list[str]:
        notes = list(self.notes)
        for detector in self.detectors:
            notes.extend(detector.notes())
        return notes

    def lag(self) -> dict[str, float]:
        for detector in self.detectors:
            stats = detector.lag_stats()
            if stats:
                return stats
        return {}

    # -- tasks -----------------------------------------------------------------------

    def live_tasks(self) -> list[asyncio.Future[Any]]:
        """The loop's pending tasks (strong references: do not keep the list)."""
        if not _tasks_may_exist():
            return []  # no task at all in the process (a loop per test: the common case)
        loop = self.loop
        for _ in range(100):
            try:
                return [t for t in asyncio.all_tasks(loop) if not t.done()]
            except RuntimeError:  # the set changed under another thread
                continue
        return []

    def tasks(self, *, history: bool = False) -> list[TaskInfo]:
        """Every pending task, oldest first; with ``history=True`` finished ones too."""
        now = time.monotonic()
        infos = [self.info(t, now=now) for t in self.live_tasks()]
        infos.sort(key=lambda i: i.number)
        if history:
            infos.extend(self.finished_info(finished_from_raw(r), now)
                         for r in list(self.history))
        return infos

    def info(self, task: asyncio.Future[Any], *, now: float | None = None,
             awaiting: bool = True, stack: bool = True) -> TaskInfo:
        """A :class:`TaskInfo` for one task.

        ``awaiting=False`` skips reading the await chain and ``stack=False`` formats only
        the creation site, not the whole stack: the cheap form for listing many tasks.
        """
        if now is None:
            now = time.monotonic()
        raw = getattr(task, "_lw_stack", None) or ()
        if stack:
            frames = tuple(_frames.format_raw(raw))
            site = _frames.pick_site(frames)
        else:
            frames = ()
            site = _frames.raw_site(raw)
        created = getattr(task, "_lw_created", None)
        parent = getattr(task, "_lw_parent", 0)
        state = "pending" if not task.done() else _state(task)
        pending = state == "pending"
        get_coro = getattr(task, "get_coro", None)
        return TaskInfo(
            id=f"T{task_id(task)}",
            name=task.get_name() if hasattr(task, "get_name") else "",
            coro=coro_name(coro_of(task)) if get_coro is not None else type(task).__name__,
            state=state,
            site=site,
            stack=frames,
            age=(now - created) if created is not None else None,
            parent=f"T{parent}" if parent else None,
            parked_for=self.parked_for(task, now) if pending else None,
            awaiting=describe(task, self.loop) if awaiting and pending else None,
        )

    def finished_info(self, record: FinishedTask, now: float) -> TaskInfo:
        stack = tuple(_frames.format_raw(record.stack))
        return TaskInfo(
            id=f"T{record.id}", name=record.name, coro=record.coro, state=record.outcome
            if record.outcome == "destroyed" else ("failed" if record.outcome == "exception"
                                                   else ("cancelled" if record.outcome ==
                                                         "cancelled" else "done")),
            site=_frames.pick_site(stack), stack=stack,
            age=None,
            parent=f"T{record.parent}" if record.parent else None, parked_for=None,
            awaiting=None, outcome=record.outcome, detail=record.detail,
        )

    def parked_for(self, task: asyncio.Future[Any], now: float | None = None) -> float | None:
        """Seconds ``task`` has waited on its current future, as last observed.

        The time a wait began is learned by the parked scan (``observe``), so it is
        exact to within one scan interval; no step of the task is ever wrapped.
        """
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is None:
            return None
        if recorded_waiter(task) is not waiter:
            self.observe(task, time.monotonic() if now is None else now)
        since = getattr(task, "_lw_since", 0.0)
        if not since:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - since)

    @staticmethod
    def observe(task: asyncio.Future[Any], now: float) -> None:
        """Note the future ``task`` waits on now; a new future restarts its clock.

        A task or gather waited on is noted by weak reference (see :func:`weak_waiter`):
        a task that has moved on must not keep the task it awaited alive after the
        program dropped it.
        """
        waiter = getattr(task, "_fut_waiter", None)
        try:
            if recorded_waiter(task) is waiter and (
                    waiter is not None or getattr(task, "_lw_waiter", None) is None):
                return
            task._lw_waiter = weak_waiter(waiter)  # type: ignore[attr-defined]
            task._lw_since = now if waiter is not None else 0.0  # type: ignore[attr-defined]
        except AttributeError:
            pass

    def find_task(self, ident: str | int) -> asyncio.Future[Any]:
        """The live task with id ``T7`` / ``7`` or with that name.

        Raises ``LookupError`` naming the ids that exist.
        """
        tasks = self.live_tasks()
        text = str(ident).strip()
        number: int | None = None
        if text[:1] in "Tt" and text[1:].isdigit():
            number = int(text[1:])
        elif text.isdigit():
            number = int(text)
        for task in tasks:
            if number is not None and getattr(task, "_lw_id", None) == number:
                return task
        named = [t for t in tasks if getattr(t, "get_name", lambda: None)() == text]
        if len(named) == 1:
            return named[0]
        ids = sorted(task_id(t) for t in tasks)
        shown = ", ".join(f"T{n}" for n in ids[:20]) + (" ..." if len(ids) > 20 else "")
        if len(named) > 1:
            raise LookupError(f"{len(named)} tasks are named {text!r}: "
                              f"{', '.join(f'T{task_id(t)}' for t in named)}; name one by id")
        raise LookupError(f"no live task {text!r}; live tasks: {shown or 'none'}")

    # -- the loop layer calls these ---------------------------------------------------

    def _exception_context(self, context: dict[str, Any]) -> None:
        self._broadcast("exception_context", context)

    def _loop_started(self) -> None:
        self.loop_thread = threading.current_thread()
        self._broadcast("loop_started")

    def _loop_stopped(self) -> None:
        self._broadcast("loop_stopped")

    def _run_finished(self, fut: Any) -> None:
        """A runner's main coroutine returned: what is still pending is left behind."""
        self._broadcast("run_finished", fut)

    def _before_close(self) -> None:
        self._broadcast("before_close")

    def _after_close(self) -> None:
        self.closed = True
        self._broadcast("after_close")
        if self.console is not None:
            try:
                self.console.stop()
            except Exception:
                log.exception("loopwatch: the console did not stop cleanly")
            self.console = None

    # -- public extras ---------------------------------------------------------------

    def snapshot(self) -> Any:
        """The live task population by creation site (see ``TaskSnapshot``)."""
        from ._detectors.growth import take_snapshot

        return take_snapshot(self)

    def start_console(self, address: str | None = "auto") -> Any:
        """Start the console server for this loop in its own thread; returns it."""
        from .console import start_console

        self.console = start_console(self, address)
        return self.console

    def close(self) -> None:
        """Stop watching: detectors are removed and the console stops. The loop runs on."""
        self._broadcast("uninstall")
        self.detectors.clear()
        if self.console is not None:
            self.console.stop()
            self.console = None

    def release(self) -> None:
        """Stop watching a closed loop, and let go of it: what attaching put on the loop
        (its wrappers, the task factory, ``_lw_watcher``) is taken off again, so that the
        loop and the watcher no longer hold each other and the loop is freed as soon as
        its owner drops it, without waiting for the garbage collector. The report stays
        readable. Does only :meth:`close` while the loop is open."""
        self.close()
        if self.closed and self._detach is not None:
            detach, self._detach = self._detach, None
            detach()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<loopwatch.Watcher {self.base} loop {state}, {len(self._findings)} findings>"


_Ref = weakref.ReferenceType

#: asyncio's registry of tasks (what ``all_tasks`` reads): a ``WeakSet`` (its ``data``
#: holds the weak references), and from 3.12 a set of eager tasks still in their first step
_scheduled: Any = getattr(asyncio.tasks, "_scheduled_tasks",
                          getattr(asyncio.tasks, "_all_tasks", None))
_eager: Any = getattr(asyncio.tasks, "_eager_tasks", set() if sys.version_info < (3, 12) else None)
_REGISTRY_KNOWN = isinstance(_scheduled, weakref.WeakSet) and isinstance(_eager, set)


def _tasks_may_exist() -> bool:
    """False when no task exists in the process at all (a cheap look at asyncio's own
    registry, before ``all_tasks`` walks it); True when some may."""
    return not _REGISTRY_KNOWN or bool(_scheduled.data) or bool(_eager)


def weak_waiter(waiter: Any) -> Any:
    """What ``_lw_waiter`` holds for ``waiter``: a weak reference to a task or a gather
    (they hold tasks, which must not outlive the wait); any other future as it is (a
    done one holds only its result until the next look, and costs no memory here)."""
    if waiter is None:
        return None
    if isinstance(waiter, asyncio.Task) or type(waiter).__name__ == "_GatheringFuture":
        try:
            return weakref.ref(waiter)
        except TypeError:  # a future type without weak references: kept as it is
            return waiter
    return waiter


def recorded_waiter(task: asyncio.Future[Any]) -> Any:
    """The future ``task`` was last seen waiting on (None when none, or when it is gone)."""
    noted = getattr(task, "_lw_waiter", None)
    if type(noted) is _Ref:
        return noted()
    return noted


#: the base name of each loop class seen (a loop per test asks for it every time)
_base_names: dict[type, str] = {}


def _base_name(loop: asyncio.AbstractEventLoop) -> str:
    kind = type(loop)
    name = _base_names.get(kind)
    if name is not None:
        return name
    module = kind.__module__
    name = "asyncio" if module.startswith(("asyncio", "loopwatch")) else module
    for cls in kind.__mro__:
        if cls.__module__.startswith("uvloop"):
            name = "uvloop"
            break
    if len(_base_names) < 256:
        _base_names[kind] = name
    return name
