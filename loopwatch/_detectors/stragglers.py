"""``straggler``: tasks still pending when the loop shuts down, or when an audit runs.

asyncio's runners cancel whatever is left when the main coroutine returns, so the
evidence (where each task was parked) is gone by the time the loop closes. The
loop layer calls :meth:`run_finished` the moment a runner's main coroutine
returns, before the runner cancels anything; the findings are made from that
picture when the loop closes. A loop closed by hand (``loop.close()``) is pictured
at the close.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from .._frames import pick_site
from .._report import Finding
from .._watcher import TaskInfo
from . import Detector

__all__ = ["StragglerDetector", "straggler_finding"]

HINT = ("keep a reference to the task and await or cancel it before the loop closes; "
        "an asyncio.TaskGroup (or anyio task group) does this for you")


def straggler_finding(info: TaskInfo, *, when: str) -> Finding:
    """The finding for one pending task; ``when`` ends the sentence ("at shutdown")."""
    awaiting = info.awaiting
    parked_at = pick_site(awaiting.frames) if awaiting and awaiting.frames else None
    where = ""
    if awaiting is not None:
        what = awaiting.what + (f" ({awaiting.detail})" if awaiting.detail else "")
        where = f", waiting on {what}"
        if parked_at is not None:
            where += f" at {parked_at.file}:{parked_at.line}"
    message = f"task {info.id} {info.name!r} ({info.coro}) was still pending {when}{where}"
    stacks: dict[str, Any] = {}
    if info.stack:
        stacks["created"] = list(info.stack)
    if awaiting is not None and awaiting.frames:
        stacks["await"] = list(awaiting.frames)
    details: dict[str, Any] = {"age": info.age, "parked_for": info.parked_for}
    if awaiting is not None:
        details["awaiting"] = awaiting.what
        details["awaiting_detail"] = awaiting.detail
        if parked_at is not None:
            details["parked_at"] = parked_at.to_dict()
    return Finding(
        kind="straggler",
        message=message,
        task=info.ref(),
        site=info.site or parked_at,
        stacks=stacks,
        hint=HINT,
        details=details,
        key=("straggler", info.id),
    )


class StragglerDetector(Detector):
    name = "stragglers"
    kinds = ("straggler",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        #: the picture taken when the last run finished: id -> info
        self._left: dict[str, TaskInfo] = {}
        #: tasks loopwatch or the test framework own: never reported
        self.ignored: set[int] = set()

    def _pending(self, exclude: Any = None) -> list[TaskInfo]:
        w = self.watcher
        now = time.monotonic()
        current = None
        if w.loop_thread is threading.current_thread() or w.loop_thread is None:
            try:
                current = asyncio.current_task(w.loop)
            except RuntimeError:
                current = None
        out = []
        for task in w.live_tasks():
            if task is exclude or task is current:
                continue
            if getattr(task, "_lw_id", None) in self.ignored:
                continue
            out.append(w.info(task, now=now))
        out.sort(key=lambda i: i.number)
        return out

    def run_finished(self, fut: Any) -> None:
        self._left = {info.id: info for info in self._pending(exclude=fut)}

    def audit(self) -> list[Finding]:
        if self.watcher.closed:
            return []
        return [straggler_finding(info, when="at the audit") for info in self._pending()]

    def before_close(self) -> None:
        left = dict(self._left)
        self._left = {}
        for info in self._pending():
            left.setdefault(info.id, info)
        for info in sorted(left.values(), key=lambda i: i.number):
            self.watcher.add_finding(straggler_finding(info, when="when the loop shut down"))
