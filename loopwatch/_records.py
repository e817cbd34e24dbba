"""Task records: what loopwatch knows about each task, and the task factory that records it.

The record lives on the task itself, in slots of :class:`WatchedTask` (a subclass of
the C ``asyncio.Task``): no registry holds a strong reference to a live task, and the
record is still there when the garbage collector finalizes a task that was dropped
while pending (a ``WeakKeyDictionary`` entry would already be gone, SPEC section 9).
Tasks made by a chained task factory are not ours to subclass: they carry the same
fields as plain attributes.

The factory is the hottest code in loopwatch (it runs for every task), so it does
as little as it can: the creation stack is stored raw (code objects and instruction
offsets), and nothing is formatted until somebody looks.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._frames import RawStack

if TYPE_CHECKING:
    from ._watcher import Watcher

__all__ = [
    "FinishedTask",
    "WatchedTask",
    "make_task_factory",
    "record_existing",
    "task_id",
]

_ids = itertools.count(1)
_monotonic = time.monotonic
_getframe = sys._getframe
_current_task = asyncio.current_task


class WatchedTask(asyncio.Task):  # type: ignore[type-arg]
    """An ``asyncio.Task`` that carries its loopwatch record in slots.

    It behaves exactly like ``asyncio.Task`` (``get_coro()`` is the program's own
    coroutine); the slots cost 56 bytes per task, where a ``__dict__`` would cost
    several hundred.
    """

    __slots__ = ("_lw_id", "_lw_stack", "_lw_created", "_lw_parent", "_lw_name", "_lw_waiter",
                 "_lw_since")
    _lw_id: int
    _lw_stack: RawStack
    _lw_created: float | None
    _lw_parent: int
    #: the name given to create_task (None: asyncio's default ``Task-N``)
    _lw_name: str | None
    _lw_waiter: Any
    _lw_since: float


_base_finalize = asyncio.Task.__del__

#: CPython 3.12's ``Task.get_coro()`` crashes the interpreter for a task that finished
#: eagerly (its coroutine is already released; python/cpython#122332, fixed in a later
#: 3.12 bugfix release; seen here on 3.12.1), where the ``_coro`` attribute says None.
_GET_CORO_CRASHES = sys.version_info[:2] == (3, 12)


def coro_of(task: Any) -> Any:
    """``task.get_coro()``, safely on every Python (None for what has no coroutine)."""
    if _GET_CORO_CRASHES:
        try:
            return task._coro
        except AttributeError:
            pass
    get_coro = getattr(task, "get_coro", None)
    return get_coro() if get_coro is not None else None


class _HistoryTask(WatchedTask):
    """A watched task that leaves a raw record in its watcher's history when it is
    released: each watcher has its own subclass (see :func:`task_class`), whose
    ``__del__`` appends to that watcher's history. Recording at release rather than in
    a done callback costs no handle and no extra loop iteration per task."""

    __slots__ = ()

    def set_name(self, value: object) -> None:
        # Before 3.13 asyncio.create_task names the task after loop.create_task returns.
        super().set_name(value)
        self._lw_name = self.get_name()


def _exc_text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:200]
    except Exception:
        return type(exc).__name__


def task_class(sink: Callable[[tuple[Any, ...]], None] | None) -> type[WatchedTask]:
    """The task class of one watcher: finished tasks go to ``sink`` (no history: None)."""
    if sink is None:
        return WatchedTask
    if speedups is not None:  # the same finalizer, compiled
        cls = type("WatchedTask", (_HistoryTask,), {"__slots__": (), "__module__": __name__})
        speedups.install_finalizer(cls, sink)
        return cls
    base_finalize = _base_finalize
    get_coro: Callable[[Any], Any] = coro_of if _GET_CORO_CRASHES else asyncio.Task.get_coro

    # Methods and slots, not the Task's private attributes: Python looks those up
    # slowly on a subclass, and a finalizer runs for every task.
    def __del__(self: Any) -> None:
        # The base finalizer logs "Task was destroyed but it is pending!" and "exception
        # was never retrieved" (and does nothing else).
        base_finalize(self)
        try:
            try:  # (one method call in the common case, where three would ask the same)
                exc = self.exception()
                state = "FINISHED"
            except BaseException:  # CancelledError, or InvalidStateError: still pending
                exc = None
                state = "CANCELLED" if self.cancelled() else "PENDING"
            # The code, never the coroutine: an unfinished one would keep its locals alive
            # (and warn later about its own cleanup), and a record that holds only what
            # the garbage collector does not track (code, numbers, strings) costs nothing
            # at each collection: 1000 coroutines in the history cost every task some
            # 4000 machine instructions of collector time.
            # (An awaitable that is not a native coroutine leaves its name instead.)
            coro = get_coro(self)
            code = getattr(coro, "cr_code", None) or (
                coro_name(coro) if coro is not None else None)
            sink((self._lw_id, self._lw_stack, self._lw_created, self._lw_parent,
                  self._lw_name, state, code, None if exc is None else _exc_text(exc)))
        except Exception:  # never let loopwatch break a finalizer
            pass

    return type("WatchedTask", (_HistoryTask,), {"__slots__": (), "__del__": __del__,
                                                 "__module__": __name__})


def task_id(task: asyncio.Future[Any]) -> int:
    """The task's loopwatch number (``T<n>``), giving one to a task that has none."""
    n: int | None = getattr(task, "_lw_id", None)
    if n is None:
        n = next(_ids)
        try:
            task._lw_id = n  # type: ignore[attr-defined]
        except AttributeError:
            return 0
    return n


# asyncio's own create_task plumbing (asyncio.create_task, ensure_future,
# TaskGroup.create_task, run_until_complete): the fast paths start a creation stack at
# the first frame from elsewhere. The Python one asks for frames' modules by name (3.12+)
# or looks at their files, the compiled one at their files.
_CREATE_TASK_MODULES = frozenset({"asyncio.tasks", "asyncio.taskgroups", "asyncio.base_events"})
_CREATE_TASK_FILES = frozenset(
    f.__code__.co_filename for f in (
        asyncio.tasks.ensure_future,
        asyncio.base_events.BaseEventLoop.create_task,
        # (3.11+; on 3.10 this repeats the line above)
        getattr(getattr(asyncio, "taskgroups", None), "TaskGroup",
                asyncio.BaseEventLoop).create_task,
    )
)

# Frames the task factory skips when it captures a stack: the same, and asyncio.events.
_PLUMBING_MODULES = _CREATE_TASK_MODULES | {"asyncio.events"}
_PLUMBING_CODES: tuple[Any, ...] = tuple(
    c for c in (
        getattr(asyncio.BaseEventLoop.create_task, "__code__", None),
        getattr(asyncio.tasks.create_task, "__code__", None),
    ) if c is not None
)

# The loop's own frames above a task step: a creation stack stops there.
_STOP = asyncio.events.Handle._run.__code__

if hasattr(sys, "_getframemodulename"):  # 3.12+: look without materializing frames
    _modname = sys._getframemodulename

    def _first_frame(skip: int) -> Any:
        d = skip + 1
        while _modname(d) in _PLUMBING_MODULES:
            d += 1
        return _getframe(d)
else:
    _c1 = _PLUMBING_CODES[0]
    _c2 = _PLUMBING_CODES[1]

    def _first_frame(skip: int) -> Any:
        f: Any = _getframe(skip + 1)
        code = f.f_code
        while code is _c1 or code is _c2:
            f = f.f_back
            code = f.f_code
        return f


def make_task_factory(
    watcher: Watcher,
    chained: Callable[..., asyncio.Future[Any]] | None = None,
    *,
    eager: bool = False,
) -> Callable[..., asyncio.Future[Any]]:
    """The task factory of a watched loop: records every task, chains ``chained``.

    ``eager=True`` starts tasks eagerly by default, like ``asyncio.eager_task_factory``.
    """
    depth = watcher.options.stack_depth
    first_frame = _first_frame
    stop = _STOP
    Task = watcher.task_class

    def capture(skip: int) -> RawStack:
        if not depth:
            return ()
        try:
            f = first_frame(skip + 1)
        except (ValueError, AttributeError):
            return ()
        out: list[Any] = []
        n = depth
        while f is not None and n:
            code = f.f_code
            if code is stop:
                break
            out.append(code)
            out.append(f.f_lasti)
            f = f.f_back
            n -= 1
        return tuple(out)

    if chained is None:

        def loopwatch_task_factory(
            loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
        ) -> asyncio.Future[Any]:
            if eager and kwargs.get("eager_start") is None:
                kwargs["eager_start"] = True
            if kwargs and "eager_start" in kwargs:
                if kwargs["eager_start"] is None:
                    del kwargs["eager_start"]
                elif kwargs["eager_start"]:
                    # An eager task runs its first step inside the constructor: the
                    # record must be in place before it.
                    task = Task.__new__(Task)
                    _fill(task, capture(1), loop, kwargs.get("name"))
                    task.__init__(coro, loop=loop, **kwargs)  # type: ignore[misc]
                    return task
            task = Task(coro, loop=loop, **kwargs)
            _fill(task, capture(1), loop, kwargs.get("name"))
            return task

    else:
        prev = chained
        history = watcher.history if watcher.options.history else None

        def loopwatch_task_factory(
            loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
        ) -> asyncio.Future[Any]:
            if "eager_start" in kwargs and kwargs["eager_start"] is None:
                # uvloop passes eager_start=None; factories written for 3.12-3.13.0
                # (asyncio.eager_task_factory among them) do not accept it.
                del kwargs["eager_start"]
            stack = capture(1)
            task = prev(loop, coro, **kwargs)
            if getattr(task, "_lw_id", None) is None:
                try:
                    _fill(task, stack, loop, kwargs.get("name"))
                except AttributeError:
                    return task  # a future type that takes no attributes: no record
                if history is not None and not isinstance(task, WatchedTask):
                    task.add_done_callback(_foreign_done(history.append))
            return task

    loopwatch_task_factory.__loopwatch__ = True  # type: ignore[attr-defined]
    if speedups is not None and chained is None and not eager:
        # The compiled fast path serves as the factory too (the create_task of a loop
        # loopwatch attached to, a test's loop among them); what it does not handle
        # (eager_start) it hands to the Python factory above.
        fast: Callable[..., asyncio.Future[Any]] = compiled_create_task(
            watcher.loop, Task, depth, loopwatch_task_factory)
        return fast
    return loopwatch_task_factory


def compiled_create_task(loop: Any, task_class: type[WatchedTask], depth: int,
                         slow: Callable[..., Any]) -> Any:
    """The compiled fast path (``speedups`` must be loaded) for ``loop``: a watched
    loop's ``create_task``, or the task factory of a loop loopwatch attached to. What
    it does not handle itself (``eager_start``) it hands to ``slow``, with the same
    arguments."""
    assert speedups is not None
    return speedups.FastCreateTask(loop, task_class, depth, slow, _current_task, _STOP,
                                   _CREATE_TASK_FILES)


def _foreign_done(sink: Callable[[tuple[Any, ...]], None]) -> Callable[[Any], None]:
    """A done callback that puts a task made by a chained factory in the history."""

    def done(task: Any) -> None:
        exc = None if task.cancelled() else task._exception
        sink((task._lw_id, task._lw_stack, task._lw_created, task._lw_parent, task.get_name(),
              task._state, getattr(coro_of(task), "cr_code", None),
              _exc_text(exc) if exc is not None else None))

    return done


def _fill(task: Any, stack: RawStack, loop: asyncio.AbstractEventLoop,
          name: str | None = None) -> None:
    task._lw_id = next(_ids)
    task._lw_name = name
    task._lw_stack = stack
    task._lw_created = _monotonic()
    parent = _current_task(loop)
    task._lw_parent = getattr(parent, "_lw_id", 0) if parent is not None else 0


def record_existing(task: asyncio.Future[Any]) -> None:
    """Give a task that existed before loopwatch attached a record, without a stack."""
    if getattr(task, "_lw_id", None) is not None:
        return
    try:
        task._lw_id = next(_ids)  # type: ignore[attr-defined]
        task._lw_stack = ()  # type: ignore[attr-defined]
        task._lw_created = None  # type: ignore[attr-defined]
        task._lw_parent = 0  # type: ignore[attr-defined]
        task._lw_waiter = None  # type: ignore[attr-defined]
        task._lw_since = 0.0  # type: ignore[attr-defined]
    except AttributeError:
        pass


class FinishedTask:
    """A finished task in the bounded history: everything but the task itself."""

    __slots__ = ("id", "name", "coro", "stack", "created", "parent", "outcome", "detail")

    def __init__(self, id: int, name: str, coro: str, stack: RawStack, created: float | None,
                 parent: int, outcome: str, detail: str) -> None:
        self.id = id
        self.name = name
        self.coro = coro
        self.stack = stack
        self.created = created
        self.parent = parent
        self.outcome = outcome
        self.detail = detail


_coro_names: dict[int, tuple[Any, str]] = {}


def coro_name(coro: Any) -> str:
    """The qualified name of a coroutine (or awaitable) as shown to people."""
    code = getattr(coro, "cr_code", None)
    if code is not None:
        hit = _coro_names.get(id(code))
        if hit is not None and hit[0] is code and hit[1].endswith(coro.__qualname__):
            return hit[1]
        name = _coro_name(coro)
        if len(_coro_names) > 10_000:
            _coro_names.clear()
        _coro_names[id(code)] = (code, name)
        return name
    return _coro_name(coro)


def _coro_name(coro: Any) -> str:
    qualname = getattr(coro, "__qualname__", None)
    if qualname is None:
        qualname = type(coro).__qualname__
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    module = None
    if code is not None:
        module = _module_of(code.co_filename)
    return f"{module}.{qualname}" if module else str(qualname)


def code_name(code: Any) -> str:
    """The qualified name of a coroutine's code object, with its module."""
    qualname = getattr(code, "co_qualname", None) or getattr(code, "co_name", "?")
    module = _module_of(code.co_filename) if hasattr(code, "co_filename") else None
    return f"{module}.{qualname}" if module else str(qualname)


_module_cache: dict[str, str | None] = {}


def _module_of(filename: str) -> str | None:
    try:
        return _module_cache[filename]
    except KeyError:
        pass
    result = None
    # dict.copy() takes the modules in one step (it runs no Python code, so no other
    # thread can import meanwhile); list(sys.modules.items()) does not, and raised
    # "dictionary changed size during iteration" next to aiomonitor's console thread.
    for name, mod in sys.modules.copy().items():
        if getattr(mod, "__file__", None) == filename:
            result = name
            break
    if len(_module_cache) < 10_000:
        _module_cache[filename] = result
    return result


def finished_from_raw(raw: tuple[Any, ...]) -> FinishedTask:
    """A :class:`FinishedTask` from the tuple a finished task left in the history."""
    n, stack, created, parent, name, state, coro, exc_text = raw
    if state == "PENDING":
        outcome, detail = "destroyed", "destroyed while pending"
    elif state == "CANCELLED":
        outcome, detail = "cancelled", ""
    elif exc_text:
        outcome, detail = "exception", exc_text
    else:
        outcome, detail = "result", ""
    return FinishedTask(id=n, name=name or f"T{n}",
                        coro=(coro if isinstance(coro, str) else code_name(coro))
                        if coro is not None else "",
                        stack=stack, created=created, parent=parent, outcome=outcome,
                        detail=detail)


def short_repr(obj: Any, limit: int = 100) -> str:
    """``repr(obj)`` cut to ``limit`` characters; a repr that raises gives the type name."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _load_speedups() -> Any:
    """The compiled versions of the per-task paths (``_speedups.c``), or None where
    they were not built or ``LOOPWATCH_NO_SPEEDUPS`` is set: the Python versions in
    this module and in ``_loops`` do the same, more slowly."""
    if os.environ.get("LOOPWATCH_NO_SPEEDUPS"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    _speedups.configure(WatchedTask, _ids, coro_name, _exc_text, _monotonic)
    return _speedups


#: ``loopwatch._speedups`` when it is in use, else None
speedups = _load_speedups()
