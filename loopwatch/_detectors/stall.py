"""``stall``: the loop did not get control back for longer than ``stall_after``; loop lag.

Two parts work together, and neither needs asyncio's debug mode (uvloop has none):

- **The heartbeat**, a timer on the loop (``loop.call_later`` every
  ``Options.heartbeat`` seconds). Each beat notes how late it ran: that lateness
  is the loop lag, kept in a bounded log-scale histogram for the whole run
  (Node's ``monitorEventLoopDelay`` works the same way).
- **The watchdog**, one daemon thread per loop (``loopwatch-watchdog``). It wakes
  every few milliseconds; when the pending beat is overdue by more than
  ``stall_after`` while the loop runs, the loop is blocked *now*, so it reads the
  loop thread's stack with ``sys._current_frames()`` while the blocking line is
  still on it, and which task is running. It samples again on every wake until
  the beat runs; the line seen most often is the site, and the beat's final
  lateness is the stall's duration.

The watchdog thread is also the clock of the other detectors: it calls every
detector's ``tick`` hook about once a second, and lets the parked scan poll at
its own pace (see ``parked.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import linecache
import logging
import math
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._frames import Frame, frame_of, is_library
from .._report import Finding, TaskRef
from .._threads import keep_out_of_signals
from . import Detector

if TYPE_CHECKING:
    from .._watcher import Watcher

__all__ = ["LagHistogram", "StallDetector", "blocking_site", "loop_stack"]

log = logging.getLogger("loopwatch")

_monotonic = time.monotonic

HINT = ("blocking code on the loop thread stops every task: run sync I/O and CPU-heavy work in a "
        "thread (await asyncio.to_thread(...) or loop.run_in_executor(...)), use an async library "
        "for I/O, or split long loops with await asyncio.sleep(0)")
HINT_SLEEP = "replace time.sleep(...) with await asyncio.sleep(...): time.sleep blocks every task"
HINT_IDLE = ("no callback of this loop was running while it was late: the loop thread waited for "
             "the CPU or for the GIL, which another thread held (CPU-bound Python threads, a C "
             "extension that does not release the GIL), or the process was suspended")

#: how many stalls are kept as findings: the longest ones
MAX_KEPT = 100
#: frames of the loop thread's stack read at most
STACK_LIMIT = 64
#: seconds between ``tick`` broadcasts
TICK_EVERY = 1.0


# -- loop lag ---------------------------------------------------------------------------


class LagHistogram:
    """Beat lateness in a fixed log-scale histogram: bounded memory for a whole run.

    Buckets are ``2 ** (1 / SUB)`` wide (about 3%) from 1 microsecond to days, as in
    HdrHistogram; percentiles are exact to within one bucket, ``max`` is exact.
    Written by the loop thread only; read from any thread.
    """

    SUB = 24
    BUCKETS = SUB * 42 + 1

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.samples = 0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        us = seconds * 1e6
        if us < 1.0:
            idx = 0
        else:
            idx = min(self.BUCKETS - 1, int(math.log2(us) * self.SUB) + 1)
        self.counts[idx] += 1
        self.samples += 1
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in seconds, 0.0 when empty."""
        n = self.samples
        if not n:
            return 0.0
        rank = max(1, math.ceil(q * n))
        seen = 0
        for idx, count in enumerate(list(self.counts)):
            seen += count
            if seen >= rank:
                if idx == 0:
                    return 0.0
                # the bucket's geometric middle, never above the exact maximum
                return min(self.max, float(2.0 ** ((idx - 0.5) / self.SUB)) / 1e6)
        return self.max

    def stats(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"p50": self.percentile(0.50), "p99": self.percentile(0.99), "max": self.max,
                "samples": float(self.samples)}


# -- reading the loop thread ------------------------------------------------------------

# Frames above these are the loop's own machinery, not what it is running: asyncio's
# Handle._run (every callback and task step of the asyncio loop) and the watched
# loop's run_forever (the boundary on uvloop, whose loop is all C).
_HANDLE_RUN = asyncio.events.Handle._run.__code__


def _boundary_codes() -> frozenset[Any]:
    codes: set[Any] = {_HANDLE_RUN}
    try:
        from .._loops import _WatchedLoopMixin
    except ImportError:  # pragma: no cover - the package is always whole
        return frozenset(codes)
    for name in ("run_forever", "run_until_complete"):
        func = getattr(_WatchedLoopMixin, name, None)
        code = getattr(func, "__code__", None)
        if code is not None:
            codes.add(code)
    return frozenset(codes)


_BOUNDARY: frozenset[Any] | None = None


def loop_stack(ident: int | None, *, limit: int = STACK_LIMIT,
               skip_files: Sequence[str] = ()) -> tuple[list[Frame], bool] | None:
    """The stack of thread ``ident`` inside the loop, outermost first.

    Returns ``(frames, inside)``: ``inside`` is True when a callback or task step of
    the loop was found (the frames are then only the ones it runs), False when the
    thread is outside any callback (frames are its whole stack). None when the
    thread has no Python frame. Innermost frames from ``skip_files`` (the caller's
    own, when it reads its own thread) are left out. Keeps no frame object.
    """
    global _BOUNDARY
    if ident is None:
        return None
    if _BOUNDARY is None:
        _BOUNDARY = _boundary_codes()
    boundary = _BOUNDARY
    frames = sys._current_frames()
    f = frames.get(ident)
    del frames
    if f is None:
        return None
    while skip_files and f is not None and f.f_code.co_filename in skip_files:
        f = f.f_back
    out: list[Frame] = []
    inside = False
    try:
        while f is not None:
            code = f.f_code
            if code in boundary:
                inside = True
                break
            if len(out) < limit:
                out.append(frame_of(f))
            f = f.f_back
    finally:
        del f
    out.reverse()
    return out, inside


def _in_site_packages(file: str) -> bool:
    return "site-packages" in file or "dist-packages" in file


def blocking_site(frames: Sequence[Frame]) -> Frame | None:
    """The line that blocked: the innermost frame of the program's own code.

    A third-party package is passed over for the program's line that called it
    (``requests.get(...)`` rather than a line deep in urllib3); when every frame is
    installed code, the innermost non-plumbing frame is used.
    """
    for frame in reversed(frames):
        if not is_library(frame.file) and not _in_site_packages(frame.file):
            return frame
    for frame in reversed(frames):
        if not is_library(frame.file):
            return frame
    return None


# -- one stall --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Stall:
    #: when the beat the loop missed was due (monotonic): identifies the stall
    due: float
    #: samples per site; the first stack and task seen at each site
    samples: Counter[Frame | None] = dataclasses.field(default_factory=Counter)
    stacks: dict[Frame | None, list[Frame]] = dataclasses.field(default_factory=dict)
    tasks: dict[Frame | None, TaskRef | None] = dataclasses.field(default_factory=dict)
    idle: dict[Frame | None, bool] = dataclasses.field(default_factory=dict)
    #: every task seen running during the stall (tasks stepped back to back, with no
    #: return to the loop's timers in between, make one stall), in order
    all_tasks: dict[str, TaskRef] = dataclasses.field(default_factory=dict)
    #: the latest sample's site (what the loop is on right now)
    latest: Frame | None = None
    duration: float = 0.0
    ongoing: bool = True
    #: seconds when the finding was last written, and its slot among the kept
    published: float = 0.0
    slot: int | None = None
    #: pushed out of the kept stalls by a longer one: never written again
    evicted: bool = False
    finding: Finding | None = None

    def site(self) -> Frame | None:
        if not self.samples:
            return None
        best = max(self.samples.values())
        for site, count in self.samples.items():  # first seen wins a tie
            if count == best:
                return site
        return None


class StallDetector(Detector):
    """The heartbeat, the watchdog thread, ``stall`` findings and loop lag."""

    name = "stall"
    # Always made, even with "stall" disabled: its thread is the clock of every
    # detector's tick hook. Stall findings are not made when the kind is disabled.
    kinds = ()
    reports = ("stall",)

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(watcher)
        opts = watcher.options
        self.measure = bool(opts.watchdog)
        self.report = self.measure and "stall" not in opts.disabled
        # stall_after=0 would make every beat a stall; one millisecond is the floor
        self.stall_after = max(float(opts.stall_after), 0.001)
        self.heartbeat = float(opts.heartbeat)
        #: how often the watchdog wakes: often enough to catch a stall while it lasts
        self.period = min(0.05, max(0.005, self.stall_after / 4, self.heartbeat / 4))
        self.lag = LagHistogram()
        #: monotonic time the pending beat is due; None while the loop is not running
        self._due: float | None = None
        self._handle: Any = None
        #: (due, lateness) of beats later than stall_after, written by the loop thread
        self._late: deque[tuple[float, float]] = deque(maxlen=256)
        #: dues of beats seen late while the loop was not running (an attached loop
        #: that stopped and started again): not stalls
        self._paused_dues: deque[float] = deque(maxlen=16)
        self._current: _Stall | None = None
        #: recent stalls by due, so a late beat read after the stall ended finds it
        self._recent: dict[float, _Stall] = {}
        self._kept: dict[int, _Stall] = {}
        self.total = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False
        self._closing = False
        self._next_tick = 0.0
        self._failed_notes: list[str] = []

    # -- the loop's life ---------------------------------------------------------------

    def loop_started(self) -> None:
        self._active = True
        if self.measure:
            self._schedule(self.watcher.loop)
        self._start_thread()
        self._kick.set()

    def loop_stopped(self) -> None:
        self._active = False
        due = self._due
        if due is not None:
            late = _monotonic() - due
            if late > self.stall_after:  # blocked until the loop stopped: the stall ends here
                self._late.append((due, late))
        self._due = None
        self._cancel_heartbeat()

    def before_close(self) -> None:
        # Never left for the loop to drop at close (it would be a dropped callback).
        self._due = None
        self._cancel_heartbeat()

    def after_close(self) -> None:
        self._stop_thread()
        self._settle()

    def uninstall(self) -> None:
        self._due = None
        handle = self._handle
        self._handle = None
        if handle is not None:
            loop = self.watcher.loop
            thread = self.watcher.loop_thread
            if thread is threading.current_thread() or not loop.is_running():
                handle.cancel()
            else:
                try:
                    loop.call_soon_threadsafe(handle.cancel)
                except RuntimeError:  # closed meanwhile
                    pass
        self._stop_thread()

    # -- the heartbeat (loop thread) ----------------------------------------------------

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._cancel_heartbeat()
        self._due = _monotonic() + self.heartbeat
        self._handle = loop.call_later(self.heartbeat, self._beat)

    def _beat(self) -> None:
        try:
            now = _monotonic()
            due = self._due
            if due is None or not self.measure:
                return
            late = now - due
            if late < 0.0:  # timers may run up to the clock's resolution early
                late = 0.0
            if due not in self._paused_dues:  # not the time an attached loop was stopped
                self.lag.record(late)
                if late > self.stall_after:
                    self._late.append((due, late))  # before the next due is published
            self._due = now + self.heartbeat
            self._handle = self.watcher.loop.call_later(self.heartbeat, self._beat)
        except Exception as exc:  # a loop callback: never let it reach the program
            self._switch_off(exc)

    def _cancel_heartbeat(self) -> None:
        handle = self._handle
        self._handle = None
        if handle is not None:
            handle.cancel()

    def _switch_off(self, exc: BaseException) -> None:
        # Only the measuring stops: the thread keeps driving the other detectors' ticks.
        self.measure = False
        self._due = None  # the next beat sees it and does not come back
        log.warning("loopwatch: the stall check failed and is switched off: %s: %s",
                    type(exc).__name__, exc, exc_info=exc)
        self._failed_notes.append(f"stall check switched off after an internal error: "
                                  f"{type(exc).__name__}: {exc}")

    # -- the watchdog thread ------------------------------------------------------------

    def _start_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        self._closing = False
        thread = threading.Thread(target=_watchdog_main, args=(weakref.ref(self), self._kick),
                                  name="loopwatch-watchdog", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # interpreter shutdown, or no more threads
            self._failed_notes.append(f"the watchdog thread could not start ({exc}): no stall "
                                      "checks or periodic scans on this loop")
            return
        self._thread = thread

    def _stop_thread(self) -> None:
        self._closing = True
        self._active = False
        self._kick.set()
        thread = self._thread
        self._thread = None
        # (At interpreter exit, where asyncio's __del__ closes a loop left open, daemon
        # threads are frozen: waiting for one would only delay the exit by a second.)
        if thread is not None and thread is not threading.current_thread() \
                and not sys.is_finalizing():
            thread.join(timeout=1.0)
            if thread.is_alive():
                log.warning("loopwatch: the watchdog thread did not stop within 1 s")

    def _wake(self) -> float | None:
        """One wake of the watchdog thread. Returns the seconds to sleep, None to exit."""
        if self._closing:
            return None
        now = _monotonic()
        if self.enabled and self.measure:
            try:
                with self._step_lock:
                    self._step(now)
            except Exception as exc:
                self._switch_off(exc)
        if not self._active or not self.watcher.loop.is_running():
            return 1.0 if not self._active else self.period
        self._drive_ticks(now)
        return self.period

    def _drive_ticks(self, now: float) -> None:
        w = self.watcher
        if now >= self._next_tick:
            self._next_tick = now + TICK_EVERY
            w._broadcast("tick", now)
        else:
            parked = w.detector("parked")
            if parked is not None and hasattr(parked, "poll"):
                w.call(parked, "poll", now)

    # -- finding stalls (watchdog thread; under _step_lock) ------------------------------

    def _step(self, now: float) -> None:
        if not self.measure:
            return
        self._drain()
        loop = self.watcher.loop
        due = self._due
        running = due is not None and loop.is_running()
        current = self._current
        if current is not None and current.due != due:
            # its beat ran (or the loop stopped): the exact lateness is in _late, now or soon
            self._drain()
            if self._current is current:
                self._end(current, max(current.duration, now - current.due))
        if due is None:
            return
        if not running:
            # An attached loop stopped with a beat pending (our own loops cancel it in
            # loop_stopped): its lateness when the loop runs again is no stall. A beat
            # that is not overdue yet is the moment between loop_started and running.
            if now - due > self.stall_after and due not in self._paused_dues:
                self._paused_dues.append(due)
            return
        if now - due > self.stall_after and due not in self._paused_dues:
            stall = self._current
            if stall is None or stall.due != due:
                stall = self._current = _Stall(due=due)
                self._remember(stall)
            stall.duration = now - due
            self._sample(stall)
            if self.report and (not stall.published or stall.duration >= stall.published * 1.25):
                self._publish(stall)

    def _drain(self) -> None:
        late = self._late
        while late:
            due, lateness = late.popleft()
            stall = self._recent.get(due)
            if stall is not None:
                if stall.ongoing or stall.duration != lateness:
                    self._end(stall, lateness)
                continue
            if due in self._paused_dues:
                continue
            # Late, but the watchdog never saw it while it lasted (the thread did not get
            # the CPU in time, or a C call held the GIL the whole time): report it
            # without the blocking line rather than not at all.
            stall = _Stall(due=due, duration=lateness, ongoing=False)
            self._remember(stall)
            if self.report:
                self._publish(stall)

    def _remember(self, stall: _Stall) -> None:
        self.total += 1
        self._recent[stall.due] = stall
        if len(self._recent) > 32:
            for due in sorted(self._recent)[:-32]:
                if self._recent[due] is not self._current:
                    del self._recent[due]

    def _end(self, stall: _Stall, duration: float) -> None:
        stall.duration = duration
        stall.ongoing = False
        if self._current is stall:
            self._current = None
        if self.report:
            self._publish(stall)

    def _sample(self, stall: _Stall) -> None:
        thread = self.watcher.loop_thread
        read = loop_stack(thread.ident if thread is not None else None)
        task = self._running_task()
        frames, inside = read if read is not None else ([], False)
        site = blocking_site(frames)
        if not inside and task is None and (not frames or is_library(frames[-1].file)):
            # No loop boundary on the stack (an attached uvloop) and the innermost frame
            # is plumbing: the loop is in its own machinery, not in a callback.
            site = None
        idle = site is None and task is None
        stall.samples[site] += 1
        stall.latest = site
        if task is not None and task.id not in stall.all_tasks and len(stall.all_tasks) < 100:
            stall.all_tasks[task.id] = task
        if site not in stall.stacks:
            stall.stacks[site] = frames
            stall.tasks[site] = task
            stall.idle[site] = idle

    def _running_task(self) -> TaskRef | None:
        try:
            task = asyncio.current_task(self.watcher.loop)
        except RuntimeError:
            return None
        if task is None:
            return None
        from .._watcher import task_ref

        try:
            return task_ref(task)
        finally:
            del task

    def _publish(self, stall: _Stall) -> None:
        if stall.evicted:
            return
        finding = self._finding(stall)
        with self._lock:
            if stall.slot is None:
                slot = self._take_slot(stall)
                if slot is None:
                    if not stall.ongoing:
                        self.dropped += 1
                    return
                stall.slot = slot
            stall.finding = finding
            stall.published = stall.duration
            finding.key = ("stall", stall.slot)
        self.watcher.add_finding(finding)

    def _take_slot(self, stall: _Stall) -> int | None:
        """A slot among the kept stalls: a free one, or the shortest one's if shorter."""
        if len(self._kept) < MAX_KEPT:
            slot = len(self._kept)
            self._kept[slot] = stall
            return slot
        slot, shortest = min(self._kept.items(), key=lambda kv: kv[1].duration)
        if shortest.ongoing or shortest.duration >= stall.duration:
            return None
        shortest.slot = None
        shortest.evicted = True
        self.dropped += 1
        self._kept[slot] = stall
        return slot

    def _finding(self, stall: _Stall) -> Finding:
        site = stall.site()
        frames = stall.stacks.get(site, [])
        task = stall.tasks.get(site)
        idle = stall.idle.get(site, False)
        d = stall.duration
        if stall.ongoing:
            head = f"the loop has been blocked for {d:.2f} s so far"
        else:
            head = f"the loop was blocked for {d:.2f} s"
        if site is not None:
            where = f" at {site.file}:{site.line} in {site.function}"
        elif idle:
            where = " while no callback of the loop was running"
        elif not stall.samples:
            where = (" (the watchdog could not read the loop thread while it lasted: a C call "
                     "held the GIL throughout, or the process did not get the CPU)")
        else:
            where = ""
        in_task = f", in task {task.id} {task.name!r} ({task.coro})" if task is not None else ""
        others = [t for t in stall.all_tasks.values() if task is None or t.id != task.id]
        if others:
            in_task += (f"{' and' if task is not None else ', in'} {len(others)} more "
                        f"task{'s' if len(others) > 1 else ''} that ran one after another")
        message = f"{head}{where}{in_task} (stall_after {self.stall_after:g} s)"
        details: dict[str, Any] = {
            "duration": d,
            "running_task": task.id if task is not None else None,
            "ongoing": stall.ongoing,
            "samples": sum(stall.samples.values()),
            "stall_after": self.stall_after,
        }
        if len(stall.all_tasks) > 1:
            details["tasks"] = list(stall.all_tasks)
        if len(stall.samples) > 1:
            details["sites"] = [
                {**(s.to_dict() if s is not None else {"file": None, "line": None,
                                                       "function": None}), "samples": n}
                for s, n in stall.samples.most_common(5)
            ]
        hint = HINT
        if idle:
            hint = HINT_IDLE
        elif site is not None and "time.sleep(" in linecache.getline(site.file, site.line):
            hint = HINT_SLEEP
        stacks = {"blocked": list(frames)} if frames else {}
        return Finding(kind="stall", message=message, site=site, task=task, stacks=stacks,
                       hint=hint, details=details)

    def _settle(self) -> None:
        """Finish what the thread may not have seen: the loop is closed."""
        try:
            with self._step_lock:
                self._drain()
                current = self._current
                if current is not None:
                    self._end(current, current.duration)
        except Exception as exc:
            self._switch_off(exc)

    # -- what others read (any thread) --------------------------------------------------

    def blocked_state(self) -> tuple[float, Frame | None] | None:
        """``(seconds blocked so far, the blocking line)``, or None when the loop is not
        blocked. Safe from any thread (the console calls it from its own)."""
        due = self._due
        if due is None or not self.measure:
            return None
        now = _monotonic()
        seconds = now - due
        if seconds <= self.stall_after or due in self._paused_dues:
            return None
        if not self.watcher.loop.is_running():
            return None
        current = self._current
        if current is not None and current.due == due and current.samples:
            return seconds, current.latest
        thread = self.watcher.loop_thread
        read = loop_stack(thread.ident if thread is not None else None)
        return seconds, blocking_site(read[0]) if read else None

    def stalls(self) -> list[Finding]:
        """The stalls kept (the longest :data:`MAX_KEPT`), oldest first."""
        with self._lock:
            found = [s.finding for s in self._kept.values() if s.finding is not None]
        return sorted(found, key=lambda f: f.at)

    def lag_stats(self) -> dict[str, float]:
        return self.lag.stats()

    def notes(self) -> list[str]:
        notes = list(self._failed_notes)
        if not self.watcher.options.watchdog:
            notes.append("stall and loop-lag checks are off (watchdog=False)")
        if self.dropped:
            notes.append(f"{self.total} stalls in all; {self.dropped} shorter ones are not "
                         f"listed (the {MAX_KEPT} longest are)")
        return notes


def _watchdog_main(ref: weakref.ref[StallDetector], kick: threading.Event) -> None:
    """The watchdog thread. Holds its detector only while it works, so that a loop
    dropped without being closed can still be collected (the thread then ends)."""
    keep_out_of_signals()
    while True:
        detector = ref()
        if detector is None:
            return
        try:
            pause = detector._wake()
        except Exception:  # never let the thread die noisily: the program is not ours
            log.exception("loopwatch: the watchdog failed")
            pause = 1.0
        del detector
        if pause is None:
            return
        if kick.wait(pause):
            kick.clear()

