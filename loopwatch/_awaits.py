"""Where a task waits: its await chain, what the future is, who awaits whom.

Everything here reads a task from the outside: the coroutine's ``cr_await`` chain
and the task's ``_fut_waiter``. Nothing wraps a coroutine or a step, so reading is
free until somebody asks. It is safe to call from another thread (the console, the
watchdog) while the loop is blocked; when the loop is running at the same time the
answer may be a step old, never an exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import sys
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

from ._frames import Frame, frame_of
from ._records import coro_of, short_repr, task_id

__all__ = [
    "Awaiting",
    "await_chain",
    "describe",
    "find_cycles",
    "waits_on",
]


@dataclasses.dataclass(frozen=True)
class Awaiting:
    """What a pending task is waiting for right now."""

    #: the await chain, outermost (the task's coroutine) first, innermost last
    frames: tuple[Frame, ...]
    #: what the future is: ``Event.wait``, ``Lock.acquire``, ``Queue.get``, ``sleep``,
    #: ``task``, ``gather``, ``executor job``, ``stream read``, ``future``, ...
    what: str
    #: more about it: ``"2.5 s left"``, ``"T12"``, the future's repr
    detail: str = ""
    #: loopwatch ids of the tasks this one waits for (another task, a gather's children)
    waits_on: tuple[int, ...] = ()
    #: a timeout around the wait, in seconds, when one is visible
    timeout: float | None = None

    @property
    def sleeping(self) -> bool:
        """In ``asyncio.sleep``: wakes at a known time, so never parked."""
        return self.what == "sleep"

    @property
    def on_tasks(self) -> bool:
        """Only waiting for other tasks (the leaf they wait on is what matters)."""
        return self.what in ("task", "gather", "asyncio.wait", "task group")

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "detail": self.detail,
            "timeout": self.timeout,
            "waits_on": [f"T{n}" for n in self.waits_on],
            "chain": [f.to_dict() for f in self.frames],
        }


def _frame_and_next(obj: Any) -> tuple[FrameType | None, Any]:
    frame = getattr(obj, "cr_frame", None)
    if frame is not None:
        return frame, getattr(obj, "cr_await", None)
    frame = getattr(obj, "gi_frame", None)
    if frame is not None:
        return frame, getattr(obj, "gi_yieldfrom", None)
    frame = getattr(obj, "ag_frame", None)
    if frame is not None:
        return frame, getattr(obj, "ag_await", None)
    return None, None


def _walk(coro: Any) -> Iterator[FrameType]:
    seen = 0
    obj = coro
    while obj is not None and seen < 200:
        frame, nxt = _frame_and_next(obj)
        if frame is None:
            # A coroutine wrapper (``types.coroutine``, async generator asend/athrow):
            # follow what it wraps when that is visible.
            inner = getattr(obj, "gi_yieldfrom", None) or getattr(obj, "cr_await", None)
            if inner is None or inner is obj:
                return
            obj = inner
            seen += 1
            continue
        yield frame
        obj = nxt
        seen += 1


def await_chain(task: asyncio.Future[Any]) -> list[tuple[FrameType, Frame]]:
    """The live frames of the task's await chain, outermost first."""
    try:
        return [(f, frame_of(f)) for f in _walk(coro_of(task))]
    except Exception:  # the loop thread moved on under us
        return []


# Functions whose frame tells what a wait is, by (module, qualname).
_KNOWN: dict[tuple[str, str], str] = {
    ("asyncio.locks", "Event.wait"): "Event.wait",
    ("asyncio.locks", "Lock.acquire"): "Lock.acquire",
    ("asyncio.locks", "Semaphore.acquire"): "Semaphore.acquire",
    ("asyncio.locks", "BoundedSemaphore.acquire"): "Semaphore.acquire",
    ("asyncio.locks", "Condition.wait"): "Condition.wait",
    ("asyncio.locks", "Condition.wait_for"): "Condition.wait",
    ("asyncio.locks", "Barrier.wait"): "Barrier.wait",
    ("asyncio.queues", "Queue.get"): "Queue.get",
    ("asyncio.queues", "Queue.put"): "Queue.put",
    ("asyncio.queues", "Queue.join"): "Queue.join",
    ("asyncio.tasks", "sleep"): "sleep",
    ("asyncio.taskgroups", "TaskGroup.__aexit__"): "task group",
    ("asyncio.taskgroups", "TaskGroup._aexit"): "task group",
    ("anyio._backends._asyncio", "TaskGroup.__aexit__"): "task group",
    ("asyncio.tasks", "wait"): "asyncio.wait",
    ("asyncio.tasks", "_wait"): "asyncio.wait",
    ("asyncio.tasks", "wait_for"): "wait_for",
    ("asyncio.streams", "StreamReader._wait_for_data"): "stream read",
    ("asyncio.streams", "FlowControlMixin._drain_helper"): "stream drain",
    ("asyncio.streams", "StreamWriter.drain"): "stream drain",
    ("asyncio.base_events", "BaseEventLoop.sock_connect"): "socket connect",
    ("asyncio.selector_events", "BaseSelectorEventLoop.sock_recv"): "socket read",
    ("asyncio.selector_events", "BaseSelectorEventLoop.sock_accept"): "socket accept",
    ("asyncio.base_events", "Server.serve_forever"): "Server.serve_forever",
    ("asyncio.base_events", "BaseEventLoop.shutdown_default_executor"): "executor shutdown",
    ("asyncio.subprocess", "Process.wait"): "subprocess wait",
    ("anyio._backends._asyncio", "Event.wait"): "Event.wait",
    ("anyio._synchronization", "Event.wait"): "Event.wait",
    ("anyio._synchronization", "Lock.acquire"): "Lock.acquire",
    ("anyio._synchronization", "Semaphore.acquire"): "Semaphore.acquire",
    ("anyio._synchronization", "Condition.wait"): "Condition.wait",
    ("anyio.streams.memory", "MemoryObjectReceiveStream.receive"): "memory stream receive",
    ("anyio.streams.memory", "MemoryObjectSendStream.send"): "memory stream send",
    ("anyio._backends._asyncio", "sleep"): "sleep",
    ("anyio._core._eventloop", "sleep"): "sleep",
    ("anyio._core._eventloop", "sleep_forever"): "sleep_forever",
}

_known_codes: tuple[int, dict[int, tuple[Any, str]]] | None = None


def _known() -> dict[int, tuple[Any, str]]:
    """``_KNOWN`` by code object (id -> (code, kind)): exact on every Python version
    (3.10 code objects have no qualified name)."""
    global _known_codes
    n = len(sys.modules)
    if _known_codes is not None and _known_codes[0] == n:
        return _known_codes[1]
    table: dict[int, tuple[Any, str]] = {}
    for (module, qualname), kind in _KNOWN.items():
        obj: Any = sys.modules.get(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        obj = inspect.unwrap(obj) if callable(obj) else obj
        code = getattr(obj, "__code__", None)
        if code is not None:
            table[id(code)] = (code, kind)
    _known_codes = (n, table)
    return table


def _kind_of(frame: FrameType) -> str | None:
    code = frame.f_code
    hit = _known().get(id(code))
    return hit[1] if hit is not None and hit[0] is code else None


def describe(task: asyncio.Future[Any], loop: asyncio.AbstractEventLoop | None = None) -> Awaiting:
    """What ``task`` waits for now, with its await chain."""
    chain = await_chain(task)
    frames = tuple(fr for _, fr in chain)
    waiter = getattr(task, "_fut_waiter", None)
    what = ""
    detail = ""
    timeout: float | None = None
    waits: tuple[int, ...] = ()
    known_frame: FrameType | None = None
    wait_for_inner: asyncio.Future[Any] | None = None
    for live, _ in reversed(chain):  # innermost first
        kind = _kind_of(live)
        if kind is None:
            continue
        if kind == "wait_for":
            timeout = _number(live, "timeout")
            # 3.10 and 3.11: wait_for awaits a plain future that the awaited task
            # releases; the task itself is its local ``fut``.
            inner = _local(live, "fut")
            if not what and isinstance(inner, asyncio.Future) and not inner.done():
                wait_for_inner = inner
            continue
        if not what:
            what = kind
            known_frame = live
    if waiter is not None:
        if wait_for_inner is not None and waiter is not wait_for_inner and (
                isinstance(wait_for_inner, asyncio.Task)
                or type(wait_for_inner).__name__ == "_GatheringFuture"):
            waiter = wait_for_inner  # what the wait_for is waiting for
        if isinstance(waiter, asyncio.Task):
            if not what or what in ("wait_for",):
                what = "task"
            waits = (task_id(waiter),)
            detail = f"T{waits[0]}"
        elif type(waiter).__name__ == "_GatheringFuture":
            children = getattr(waiter, "_children", ()) or ()
            waits = tuple(task_id(c) for c in children if isinstance(c, asyncio.Task)
                          and not c.done())
            what = "gather"
            detail = ", ".join(f"T{n}" for n in waits) or "done children"
        elif not what:
            what = "executor job" if _is_executor_future(waiter) else "future"
            if what == "future":
                detail = short_repr(waiter)
    if what == "asyncio.wait" and known_frame is not None:
        fs = _local(known_frame, "fs")
        if fs:
            waits = tuple(task_id(f) for f in fs if isinstance(f, asyncio.Task) and not f.done())
            detail = ", ".join(f"T{n}" for n in waits)
        timeout = timeout if timeout is not None else _number(known_frame, "timeout")
    if what == "task group" and known_frame is not None:
        group = _local(known_frame, "self")
        members = getattr(group, "_tasks", None) or ()
        waits = tuple(task_id(t) for t in list(members)
                      if isinstance(t, asyncio.Task) and not t.done())
        detail = ", ".join(f"T{n}" for n in waits)
    if what == "sleep" and known_frame is not None:
        handle = _local(known_frame, "h")
        when = getattr(handle, "when", None)
        if callable(when) and loop is not None:
            try:
                detail = f"{max(0.0, when() - loop.time()):.1f} s left"
            except Exception:
                pass
    if not what:
        what = "running" if waiter is None and not task.done() else "future"
    return Awaiting(frames=frames, what=what, detail=detail, waits_on=waits, timeout=timeout)


def _is_executor_future(fut: Any) -> bool:
    for cb in getattr(fut, "_callbacks", None) or ():
        func = cb[0] if isinstance(cb, tuple) else cb
        if getattr(func, "__name__", "") == "_call_check_cancel":
            return True
    return False


def _local(frame: FrameType, name: str) -> Any:
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _number(frame: FrameType, name: str) -> float | None:
    value = _local(frame, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def waits_on(task: asyncio.Future[Any]) -> tuple[int, ...]:
    """The ids of tasks ``task`` waits for directly (cheap: no frame reading)."""
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None:
        return ()
    if isinstance(waiter, asyncio.Task):
        return (task_id(waiter),)
    children = getattr(waiter, "_children", None)
    if children:
        return tuple(task_id(c) for c in children if isinstance(c, asyncio.Task) and not c.done())
    return ()


def find_cycles(edges: dict[int, Iterable[int]]) -> list[list[int]]:
    """Cycles in a waits-on graph, each as a list of ids (smallest first), no repeats."""
    cycles: list[list[int]] = []
    seen_keys: set[tuple[int, ...]] = set()
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    for root in list(edges):
        if state.get(root):
            continue
        stack: list[tuple[int, Iterator[int]]] = [(root, iter(edges.get(root, ())))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            mark = state.get(nxt)
            if mark == 1:
                cycle = path[path.index(nxt):]
                i = cycle.index(min(cycle))
                cycle = cycle[i:] + cycle[:i]
                key = tuple(cycle)
                if key not in seen_keys:
                    seen_keys.add(key)
                    cycles.append(cycle)
            elif mark is None:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(edges.get(nxt, ()))))
    return cycles
