"""The exceptions loopwatch raises, all under one base class."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._report import Report

__all__ = [
    "ConsoleError",
    "LoopLeakError",
    "LoopwatchError",
    "NotWatchedError",
    "OptionsError",
]


class LoopwatchError(Exception):
    """Base class of every error loopwatch raises on purpose."""


class OptionsError(LoopwatchError, ValueError):
    """An option was given a value that makes no sense (a negative threshold, NaN, ...)."""


class NotWatchedError(LoopwatchError, RuntimeError):
    """The loop asked about is not watched by loopwatch."""


class ConsoleError(LoopwatchError, OSError):
    """The console could not start (busy port or path, bad address)."""


class LoopLeakError(LoopwatchError, AssertionError):
    """A loop was left unclean: tasks, timers, lost exceptions or open resources.

    The full :class:`~loopwatch.Report` is in :attr:`report`.
    """

    def __init__(self, report: Report, message: str | None = None) -> None:
        self.report = report
        super().__init__(message if message is not None else report.summary())
