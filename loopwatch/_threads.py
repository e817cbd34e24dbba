"""What every thread loopwatch starts does first."""

from __future__ import annotations

import signal

__all__ = ["keep_out_of_signals"]

#: the signals a program sends to itself or gets from outside (Ctrl-C, kill, a timer,
#: a child's end, a terminal's resize), never a fault (SIGSEGV and the like must reach
#: the thread that caused them)
_PROGRAM_SIGNALS = tuple(
    sig for sig in (getattr(signal, name, None) for name in (
        "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
        "SIGCHLD", "SIGWINCH"))
    if sig is not None
)


def keep_out_of_signals() -> None:
    """Block the program's signals in the calling thread (one of loopwatch's own).

    The kernel gives a signal sent to the process to any thread that does not block it.
    Python runs its handlers in the main thread, but only wakes it from a blocking call
    (an idle event loop's ``select``) when the signal landed there: a Ctrl-C taken by
    loopwatch's watchdog would leave an idle program waiting. Blocked here, such signals
    go to the program's own threads, as without loopwatch.
    """
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or not _PROGRAM_SIGNALS:
        return
    try:
        mask(signal.SIG_BLOCK, _PROGRAM_SIGNALS)
    except (OSError, ValueError):
        pass
