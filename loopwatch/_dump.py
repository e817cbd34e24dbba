"""Dumps that survive in a log: every task of every watched loop, as plain text.

``loopwatch.dump()`` is the asyncio twin of ``faulthandler.dump_traceback()``: for
each watched loop in the process it writes the loop thread's stack and every live
task with its await chain and creation site. ``dump_on_signal`` and ``dump_later``
are the twins of ``faulthandler.register`` and ``dump_traceback_later``.

A dump only reads: it takes no lock that the program or loopwatch may hold (no
logging, no rich console, no watcher lock), so it works from any thread, from a
signal handler, and while the loop is blocked.
"""

from __future__ import annotations

import linecache
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import IO, Any

from ._awaits import describe
from ._frames import Frame, format_raw, frame_of
from ._records import task_id
from ._threads import keep_out_of_signals
from ._watcher import Watcher, all_watchers, task_ref

__all__ = ["cancel_dump_later", "dump", "dump_later", "dump_on_signal", "format_dump"]

#: tasks written per loop by default; the rest are counted
DEFAULT_LIMIT = 1000

DumpFile = IO[str] | int | None

_THIS_FILE = __file__


def _check_file(api: str, file: object) -> None:
    if file is None or isinstance(file, int) and not isinstance(file, bool) and file >= 0:
        return
    if not callable(getattr(file, "write", None)):
        raise TypeError(f"{api}() file must be a text file with a write() method, a file "
                        f"descriptor or None (sys.stderr), got {file!r}")


def _check_limit(api: str, limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"{api}() limit must be a whole number >= 0, got {limit!r}")


def _write(text: str, file: DumpFile) -> None:
    """Write ``text`` in one piece. A file descriptor (or stderr's, from a signal
    handler) is written with ``os.write``: no buffer lock to re-enter."""
    if file is None:
        file = sys.stderr
        if file is None:  # pythonw, or stderr closed
            return
    if isinstance(file, int):
        data = text.encode("utf-8", "replace")
        while data:
            n = os.write(file, data)
            data = data[n:]
        return
    file.write(text)
    flush = getattr(file, "flush", None)
    if flush is not None:
        flush()


def dump(file: DumpFile = None, *, limit: int = DEFAULT_LIMIT) -> None:
    """Write every task of every watched loop in this process, with its await chain
    and creation site, and each loop thread's stack, as plain text.

    ``file`` is a text file (default ``sys.stderr``) or a file descriptor. At most
    ``limit`` tasks are written per loop (0: no limit). Safe from any thread, from a
    signal handler, and while a loop is blocked.
    """
    _check_file("loopwatch.dump", file)
    _check_limit("loopwatch.dump", limit)
    _write(format_dump(limit=limit), file)


def format_dump(watchers: Iterable[Watcher] | None = None, *, limit: int = DEFAULT_LIMIT,
                interrupted: FrameType | None = None) -> str:
    """The text of a dump (``watchers`` default to every watched loop)."""
    lines: list[str] = []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines.append(f"loopwatch dump, pid {os.getpid()}, {stamp}, thread "
                 f"{threading.current_thread().name}")
    found = list(all_watchers() if watchers is None else watchers)
    closed = [w for w in found if w.closed]
    open_ = [w for w in found if not w.closed]
    if not open_:
        lines.append("no watched loop is open" + (f" ({len(closed)} closed)" if closed else ""))
    for w in open_:
        lines.append("")
        try:
            _dump_loop(w, lines, limit, interrupted)
        except Exception as exc:  # a dump never raises into the program
            lines.append(f"  (could not read this loop: {type(exc).__name__}: {exc})")
    if closed and open_:
        lines.append("")
        lines.append(f"({len(closed)} closed watched loop{'s' if len(closed) != 1 else ''} "
                     "not shown)")
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _frames(lines: list[str], frames: Sequence[Frame], indent: str) -> None:
    for f in frames:
        lines.append(f"{indent}{f.file}:{f.line} in {f.function}")
        source = linecache.getline(f.file, f.line).strip()
        if source:
            lines.append(f"{indent}    {source}")


def _thread_frames(ident: int, interrupted: FrameType | None) -> list[Frame]:
    """The stack of thread ``ident``, outermost first, without the dump's own frames."""
    if ident == threading.get_ident():
        f: FrameType | None = interrupted or sys._getframe(1)
    else:
        f = sys._current_frames().get(ident)
    out: list[Frame] = []
    try:
        while f is not None and f.f_code.co_filename == _THIS_FILE:
            f = f.f_back
        while f is not None and len(out) < 100:
            out.append(frame_of(f))
            f = f.f_back
    finally:
        del f
    out.reverse()
    return out


def _dump_loop(w: Watcher, lines: list[str], limit: int, interrupted: FrameType | None) -> None:
    loop = w.loop
    thread = w.loop_thread
    running = loop.is_running()
    tasks = w.live_tasks()
    state = "running" if running else "not running"
    where = f" in thread {thread.name!r} (ident {thread.ident})" if thread is not None else ""
    lines.append(f"== loop {w.serial} ({w.base}), {state}{where}, {len(tasks)} live "
                 f"task{'s' if len(tasks) != 1 else ''} ==")
    stall = w.detector("stall")
    blocked_state: Callable[[], Any] | None = getattr(stall, "blocked_state", None)
    if running and blocked_state is not None:
        blocked = blocked_state()
        if blocked is not None:
            seconds, frame = blocked
            at = f" at {frame.file}:{frame.line} in {frame.function}" if frame else ""
            lines.append(f"loop blocked for {_seconds(seconds)}{at}")
    lag = w.lag()
    if lag:
        lines.append(f"loop lag: p50 {_seconds(lag.get('p50'))}, p99 {_seconds(lag.get('p99'))}, "
                     f"max {_seconds(lag.get('max'))}")
    if running and thread is not None and thread.ident is not None:
        lines.append("loop thread stack (most recent call last):")
        _frames(lines, _thread_frames(thread.ident, interrupted), "  ")
    now = time.monotonic()
    tasks.sort(key=task_id)
    shown = tasks if not limit else tasks[:limit]
    for task in shown:
        lines.append("")
        _dump_task(w, task, now, lines)
    if len(shown) < len(tasks):
        lines.append("")
        lines.append(f"... {len(tasks) - len(shown)} more tasks not shown (limit={limit})")
    del tasks, shown


def _dump_task(w: Watcher, task: Any, now: float, lines: list[str]) -> None:
    ref = task_ref(task)
    created = getattr(task, "_lw_created", None)
    parent = getattr(task, "_lw_parent", 0)
    head = f"{ref.id} {ref.name!r} {ref.coro}"
    facts = []
    if created is not None:
        facts.append(f"age {_seconds(now - created)}")
    if parent:
        facts.append(f"parent T{parent}")
    lines.append(head + (f" ({', '.join(facts)})" if facts else ""))
    awaiting = describe(task, w.loop)
    if awaiting.what == "running":
        lines.append("  running now (its stack is the loop thread's)")
    else:
        parked = w.parked_for(task, now)
        what = awaiting.what + (f" {awaiting.detail}" if awaiting.detail else "")
        extra = f", timeout {awaiting.timeout:g} s" if awaiting.timeout is not None else ""
        since = f" for {_seconds(parked)}" if parked is not None else ""
        lines.append(f"  waiting on {what}{since}{extra}")
    if awaiting.frames:
        lines.append("  await chain (most recent call last):")
        _frames(lines, awaiting.frames, "    ")
    stack = format_raw(getattr(task, "_lw_stack", ()) or ())
    if stack:
        lines.append("  created at (most recent call last):")
        _frames(lines, stack, "    ")
    elif created is None:
        lines.append("  created before loopwatch was attached (no creation stack)")


# -- on a signal -------------------------------------------------------------------------

_signal_files: dict[int, DumpFile] = {}


def dump_on_signal(sig: int | None = None, file: DumpFile = None, *,
                   limit: int = DEFAULT_LIMIT) -> Any:
    """Dump every watched loop when the process receives ``sig`` (default SIGUSR1):
    ``kill -USR1 PID`` prints the tasks of a live process, like ``faulthandler.register``.

    Call it from the main thread. Returns the handler that was there before.
    """
    if sig is None:
        sig = getattr(signal, "SIGUSR1", None)
        if sig is None:
            raise ValueError("loopwatch.dump_on_signal(): this platform has no SIGUSR1; "
                             "name a signal, e.g. signal.SIGBREAK")
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"loopwatch.dump_on_signal() sig must be a signal number such as "
                        f"signal.SIGUSR1, got {sig!r}")
    valid = getattr(signal, "valid_signals", None)
    if valid is not None and sig not in valid():
        raise ValueError(f"loopwatch.dump_on_signal(): {sig!r} is not a valid signal number "
                         "on this platform")
    if sig in (getattr(signal, "SIGKILL", -1), getattr(signal, "SIGSTOP", -1)):
        raise ValueError(f"loopwatch.dump_on_signal(): {signal.Signals(sig).name} cannot be "
                         "caught")
    _check_file("loopwatch.dump_on_signal", file)
    _check_limit("loopwatch.dump_on_signal", limit)
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("loopwatch.dump_on_signal() must be called from the main thread "
                         "(Python runs signal handlers there)")

    def loopwatch_dump_handler(signum: int, frame: FrameType | None) -> None:
        out = _signal_files.get(signum)
        try:
            text = format_dump(limit=limit, interrupted=frame)
            if out is None:
                stderr = sys.stderr
                fileno = getattr(stderr, "fileno", None)
                try:
                    out = fileno() if fileno is not None else stderr
                except (OSError, ValueError):
                    out = stderr
                if isinstance(out, int) and stderr is not None:
                    try:
                        stderr.flush()
                    except (OSError, ValueError, RuntimeError):
                        pass
            _write(text, out)
        except Exception:  # a signal handler must never raise into the program
            pass

    previous = signal.signal(sig, loopwatch_dump_handler)
    _signal_files[int(sig)] = file
    return previous


# -- later, from a timer thread ----------------------------------------------------------

_later_lock = threading.Lock()
_later: tuple[threading.Thread, threading.Event] | None = None


def dump_later(seconds: float, *, repeat: bool = False, file: DumpFile = None,
               limit: int = DEFAULT_LIMIT) -> None:
    """Dump every watched loop after ``seconds`` (every ``seconds`` with ``repeat``),
    from a daemon thread, like ``faulthandler.dump_traceback_later``. A new call
    replaces the pending one; :func:`cancel_dump_later` cancels it."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"loopwatch.dump_later() seconds must be a number, got {seconds!r}")
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise ValueError(f"loopwatch.dump_later() seconds must be a finite number > 0, "
                         f"got {seconds!r}")
    _check_file("loopwatch.dump_later", file)
    _check_limit("loopwatch.dump_later", limit)
    global _later
    cancel_dump_later()
    stop = threading.Event()
    thread = threading.Thread(target=_later_main, args=(float(seconds), repeat, file, limit, stop),
                              name="loopwatch-dump-later", daemon=True)
    with _later_lock:
        _later = (thread, stop)
    thread.start()


def cancel_dump_later() -> None:
    """Cancel the dump scheduled by :func:`dump_later` (nothing when there is none)."""
    global _later
    with _later_lock:
        pending = _later
        _later = None
    if pending is None:
        return
    thread, stop = pending
    stop.set()
    if thread is not threading.current_thread():
        thread.join(timeout=5.0)


def _later_main(seconds: float, repeat: bool, file: DumpFile, limit: int,
                stop: threading.Event) -> None:
    keep_out_of_signals()
    while not stop.wait(seconds):
        try:
            _write(format_dump(limit=limit), file)
        except Exception:  # a closed file, a full disk: never raise in a daemon thread
            pass
        if not repeat:
            break
