"""Lost work: ``never_awaited``, ``unretrieved_exception``, ``destroyed_pending``.

- ``never_awaited``: CPython reports a coroutine that is finalized without ever
  having run through ``warnings._warn_unawaited_coroutine(coro)`` (3.10 to 3.13; the
  C code looks the function up on the ``warnings`` module each time). loopwatch
  puts its own function there while at least one watcher is open, so it gets the
  coroutine object itself: its name, where it was dropped (the frame running when it
  was finalized: in the common ``f()``-without-``await`` case, the very line that
  called ``f``), and with ``track_origins`` the stack that created it
  (``cr_origin``). The ``RuntimeWarning`` is then issued exactly as CPython would,
  with the same text, category, source object and location, so filters, ``-W error``
  and ``pytest.warns`` behave as before. A function somebody else put there first is
  chained, not replaced.
- ``unretrieved_exception`` and ``destroyed_pending``: asyncio hands these to the
  loop's exception handler from the finalizer of the task or future; the watcher
  sees every context before the program's handler. The task's record lives on the
  task itself (SPEC section 9), so its creation site is known even when the garbage
  collector found it in a reference cycle.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import threading
import traceback
import warnings
import weakref
from types import FrameType, TracebackType
from typing import Any

from .._frames import Frame, format_raw, frame_of, pick_site
from .._records import coro_name, coro_of
from .._report import Finding
from . import Detector
from .closed import EventDetector, raw_from, times

__all__ = [
    "DestroyedPendingDetector",
    "NeverAwaitedDetector",
    "UnretrievedExceptionDetector",
    "frames_of_traceback",
]


# -- never_awaited ---------------------------------------------------------------------

_HOOK_NAME = "_warn_unawaited_coroutine"
_lock = threading.Lock()
#: open detectors, oldest first (weak: a forgotten watcher does not keep the hook)
_active: list[weakref.ref[NeverAwaitedDetector]] = []
#: what was in ``warnings._warn_unawaited_coroutine`` before loopwatch
_previous: Any = None


def _is_stdlib_hook(fn: Any) -> bool:
    return getattr(fn, "__module__", None) in ("warnings", "_py_warnings") and \
        getattr(fn, "__name__", None) == _HOOK_NAME


def _warning_text(coro: Any) -> str:
    """The text CPython gives the warning (``warnings._warn_unawaited_coroutine``)."""
    lines = [f"coroutine '{coro.__qualname__}' was never awaited\n"]
    origin = getattr(coro, "cr_origin", None)
    if origin is not None:
        entries = [(filename, lineno, funcname, linecache.getline(filename, lineno))
                   for filename, lineno, funcname in reversed(origin)]
        lines.append("Coroutine created at (most recent call last)\n")
        lines.extend(traceback.format_list(entries))
    return "".join(lines).rstrip("\n")


def _unawaited_coroutine(coro: Any) -> None:
    """Installed as ``warnings._warn_unawaited_coroutine``; called by CPython."""
    try:
        frame: FrameType | None = sys._getframe(1)
    except ValueError:
        frame = None
    detector = _target()
    if detector is not None and detector.enabled:
        try:
            detector.record(coro, frame)
        except Exception as exc:
            detector.failed(exc)
    del frame
    previous = _previous
    if previous is None or _is_stdlib_hook(previous):
        # stacklevel=2: the frame that was running when the coroutine was finalized,
        # exactly where CPython's own function points the warning.
        warnings.warn(_warning_text(coro), category=RuntimeWarning, stacklevel=2, source=coro)
    else:
        previous(coro)


def _target() -> NeverAwaitedDetector | None:
    """The detector of the loop running in this thread, else the newest open one."""
    loop = asyncio._get_running_loop()
    watcher = getattr(loop, "_lw_watcher", None) if loop is not None else None
    newest = None
    for ref in list(_active):
        det = ref()
        if det is None or not det.enabled:
            continue
        if watcher is not None and det.watcher is watcher:
            return det
        if not det.watcher.closed:
            newest = det
    return newest


def _register(det: NeverAwaitedDetector) -> bool:
    global _previous
    with _lock:
        _active[:] = [r for r in _active if r() is not None]
        current = getattr(warnings, _HOOK_NAME, None)
        if current is None:
            return False
        if current is not _unawaited_coroutine:
            _previous = current
            setattr(warnings, _HOOK_NAME, _unawaited_coroutine)
        _active.append(weakref.ref(det))
        return True


def _unregister(det: NeverAwaitedDetector) -> None:
    global _previous
    with _lock:
        if len(_active) == 1 and _active[0]() is det:  # (the last one: a loop per test)
            _active.clear()
        else:
            _active[:] = [r for r in _active if r() is not None and r() is not det]
        if _active:
            return
        if getattr(warnings, _HOOK_NAME, None) is _unawaited_coroutine and _previous is not None:
            setattr(warnings, _HOOK_NAME, _previous)
            _previous = None
        # else: somebody wrapped us; ours stays in their chain and passes straight through


NEVER_AWAITED_HINT = (
    "await it (or hand it to asyncio.create_task() / a TaskGroup and keep the task): "
    "calling an async function without await only makes a coroutine object, and the "
    "code inside never runs"
)


class NeverAwaitedDetector(EventDetector):
    name = "never_awaited"
    kinds = ("never_awaited",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        self._lock = threading.Lock()
        self._by_key: dict[Any, Finding] = {}
        self._registered = False
        self._note = ""
        #: (thread id, depth before) while origin tracking is switched on by us
        self._origin: tuple[int, int] | None = None

    def install(self) -> None:
        self._registered = _register(self)
        if not self._registered:
            self._note = ("never_awaited is not observable on this Python: warnings has no "
                          f"{_HOOK_NAME}()")

    def notes(self) -> list[str]:
        return [self._note] if self._note else []

    def loop_started(self) -> None:
        opts = self.watcher.options
        if opts.track_origins and opts.stack_depth and self._origin is None:
            before = sys.get_coroutine_origin_tracking_depth()
            if before < opts.stack_depth:
                sys.set_coroutine_origin_tracking_depth(opts.stack_depth)
                self._origin = (threading.get_ident(), before)

    def loop_stopped(self) -> None:
        self._stop_origins()

    def _stop_origins(self) -> None:
        if self._origin is not None and self._origin[0] == threading.get_ident():
            sys.set_coroutine_origin_tracking_depth(self._origin[1])
            self._origin = None

    def after_close(self) -> None:
        self._stop_origins()
        self._leave()

    def uninstall(self) -> None:
        self._stop_origins()
        self._leave()

    def _leave(self) -> None:
        if self._registered:
            self._registered = False
            _unregister(self)

    def record(self, coro: Any, frame: FrameType | None) -> None:
        """``coro`` was finalized without ever running; ``frame`` was running then."""
        dropped = format_raw(raw_from(frame, max(self.watcher.options.stack_depth, 1)))
        origin = getattr(coro, "cr_origin", None)
        created: list[Frame] = []
        if origin:
            created = [Frame(_abs(filename), lineno, funcname)
                       for filename, lineno, funcname in reversed(origin)]
        site = pick_site(created) if created else pick_site(dropped)
        name = coro_name(coro)
        key = ("never_awaited", name, site.file if site else "", site.line if site else 0)
        thread = threading.current_thread().name
        with self._lock:
            seen = self._by_key.get(key)
            if seen is not None:
                seen.details["count"] += 1
                seen.message = times(seen.message, seen.details["count"])
                return
            drop_site = pick_site(dropped)
            where = ""
            if created and site is not None:
                where = f" (created at {site.file}:{site.line}"
                if drop_site is not None and drop_site != site:
                    where += f", dropped at {drop_site.file}:{drop_site.line}"
                where += ")"
            elif drop_site is not None:
                where = f" (dropped unawaited at {drop_site.file}:{drop_site.line})"
            stacks: dict[str, list[Frame]] = {}
            if created:
                stacks["created"] = created
            if dropped:
                stacks["dropped"] = dropped
            finding = Finding(
                kind="never_awaited",
                message=f"coroutine {name} was never awaited{where}",
                site=site,
                stacks=stacks,
                hint=NEVER_AWAITED_HINT,
                details={"coro": name, "count": 1, "thread": thread,
                         "origin_tracked": bool(created)},
                key=key,
            )
            if len(self._by_key) < 1000:
                self._by_key[key] = finding
        self.watcher.add_finding(finding)


def _abs(filename: str) -> str:
    import os

    return filename if filename.startswith("<") else os.path.abspath(filename)


# -- unretrieved_exception, destroyed_pending -------------------------------------------

_NEVER_RETRIEVED = " exception was never retrieved"  # "Task ...", "Future ...", "<subclass> ..."
_DESTROYED = "Task was destroyed but it is pending!"

UNRETRIEVED_HINT = (
    "await the task (or run it in a TaskGroup), or give it a done callback that calls "
    "task.exception(); a task that nobody awaits fails silently until it is collected"
)
DESTROYED_HINT = (
    "keep a strong reference to every task until it finishes (a set you discard from in "
    "a done callback, or a TaskGroup): the loop holds tasks only weakly, so a task that "
    "nobody references can be collected in the middle of an await"
)


def frames_of_traceback(tb: TracebackType | None, limit: int = 64) -> list[Frame]:
    """A traceback's frames, outermost first."""
    out: list[Frame] = []
    while tb is not None and len(out) < limit:
        out.append(Frame(_abs(tb.tb_frame.f_code.co_filename), tb.tb_lineno,
                         getattr(tb.tb_frame.f_code, "co_qualname", tb.tb_frame.f_code.co_name)))
        tb = tb.tb_next
    return out


def _exc_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _is_task(fut: Any) -> bool:
    return isinstance(fut, asyncio.Task) or getattr(fut, "_lw_id", None) is not None


class UnretrievedExceptionDetector(Detector):
    name = "unretrieved_exception"
    kinds = ("unretrieved_exception",)

    def exception_context(self, context: dict[str, Any]) -> None:
        message = context.get("message")
        if not isinstance(message, str) or not message.endswith(_NEVER_RETRIEVED):
            return
        fut = context.get("future")
        exc = context.get("exception")
        raised = frames_of_traceback(getattr(exc, "__traceback__", None))
        raised_at = pick_site(raised)
        stacks: dict[str, list[Frame]] = {}
        task = None
        created_at = None
        key: Any = None
        if fut is not None and _is_task(fut):
            info = self.watcher.info(fut, awaiting=False)
            task = info.ref()
            created_at = info.site
            if info.stack:
                stacks["created"] = list(info.stack)
            what = f"task {info.id} {info.name!r} ({info.coro})"
            key = ("unretrieved_exception", info.id)
        else:
            what = "a future" + (f" ({type(fut).__name__})" if fut is not None else "")
        if raised:
            stacks["raised"] = raised
        text = f"{what} failed with {_exc_text(exc)} and nobody retrieved the exception"
        if raised_at is not None:
            text += f" (raised at {raised_at.file}:{raised_at.line})"
        self.watcher.add_finding(Finding(
            kind="unretrieved_exception",
            message=text,
            site=created_at or raised_at,
            task=task,
            stacks=stacks,
            hint=UNRETRIEVED_HINT,
            details={"exception": _exc_text(exc),
                     "exception_type": type(exc).__name__ if exc is not None else "",
                     "raised_at": raised_at.to_dict() if raised_at else None},
            key=key,
        ))


class DestroyedPendingDetector(Detector):
    name = "destroyed_pending"
    kinds = ("destroyed_pending",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        self._lock = threading.Lock()
        #: (coroutine, site) -> the finding that groups tasks lost the same way
        self._groups: dict[Any, Finding] = {}

    def exception_context(self, context: dict[str, Any]) -> None:
        if context.get("message") != _DESTROYED:
            return
        task = context.get("task")
        if task is None:
            return
        try:
            info = self.watcher.info(task)
        except Exception:  # the task is being finalized: read what can be read
            info = self.watcher.info(task, awaiting=False)
        site = info.site
        key = ("destroyed_pending", info.coro, site.file if site else "",
               site.line if site else 0)
        with self._lock:
            seen = self._groups.get(key) if site is not None else None
            if seen is not None:
                seen.details["count"] += 1
                ids = seen.details["tasks"]
                if len(ids) < 20:
                    ids.append(info.id)
                n = seen.details["count"]
                shown = ", ".join(ids) + (", ..." if n > len(ids) else "")
                seen.message = (f"{n} tasks running {info.coro} ({shown}) were garbage-collected "
                                "while still pending: nothing kept a reference to them")
                return
        stacks: dict[str, list[Frame]] = {}
        if info.stack:
            stacks["created"] = list(info.stack)
        where = ""
        awaiting = info.awaiting
        if awaiting is not None:
            if awaiting.frames:
                stacks["await"] = list(awaiting.frames)
            parked = pick_site(awaiting.frames) if awaiting.frames else None
            where = f" (waiting on {awaiting.what}"
            if parked is not None:
                where += f" at {parked.file}:{parked.line}"
            where += ")"
        if not info.stack:
            coro = coro_of(task)
            frame = getattr(coro, "cr_frame", None)
            if frame is not None:
                stacks["coroutine"] = [frame_of(frame)]
        finding = Finding(
            kind="destroyed_pending",
            message=(f"task {info.id} {info.name!r} ({info.coro}) was garbage-collected while "
                     f"still pending{where}: nothing kept a reference to it"),
            site=site,
            task=info.ref(),
            stacks=stacks,
            hint=DESTROYED_HINT,
            details={"awaiting": awaiting.what if awaiting else None, "age": info.age,
                     "count": 1, "tasks": [info.id]},
            key=key if site is not None else ("destroyed_pending", info.id),
        )
        with self._lock:
            if site is not None and len(self._groups) < 1000:
                self._groups[key] = finding
        self.watcher.add_finding(finding)
