"""The one options object, shared by every way of starting loopwatch.

``loopwatch.run``, ``loop_factory``, ``install``, ``attach``, the CLI and the
pytest plugin all take the same keyword options; they are validated here, once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._exceptions import OptionsError

__all__ = ["Options", "make_options"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Every loopwatch option with its default. See ``docs/configuration.md``."""

    #: frames of the creation stack recorded for each task
    stack_depth: int = 8
    #: seconds a task may wait on the same future before it is reported as ``parked``
    parked_after: float = 10.0
    #: seconds the loop may go without getting control back before a ``stall`` is reported
    stall_after: float = 0.1
    #: finished tasks kept, with their outcome, in the bounded history
    history: int = 1000
    #: console address (``unix:PATH``, ``tcp:HOST:PORT``), ``"auto"`` for the per-process
    #: default, or ``None`` / ``"off"`` for no console
    console: str | None = None
    #: allow the console's ``eval`` command (runs code in the process)
    allow_eval: bool = False
    #: seconds a console client may stay silent before the console closes its connection
    console_idle_timeout: float = 300.0
    #: full coroutine origin tracking for ``never_awaited`` (costly; on in tests)
    track_origins: bool = False
    #: the stall watchdog and loop-lag heartbeat
    watchdog: bool = True
    #: seconds between heartbeats; also the resolution of loop-lag measurements
    heartbeat: float = 0.02
    #: finding kinds that are switched off
    disabled: frozenset[str] = frozenset()
    #: log each new finding once on the ``loopwatch`` logger (WARNING)
    log: bool = True
    #: seconds between the task snapshots that ``task_growth`` compares
    growth_every: float = 10.0
    #: live tasks one creation site must gain over three consecutive snapshots (each one
    #: higher than the last) before ``task_growth`` reports it
    growth_min: int = 10
    #: ResourceWarnings about transports and sockets (``unclosed_resource``): ``None``
    #: listens to those the program shows (its own filters decide; nothing is changed),
    #: ``True`` also turns them on for loopwatch alone (``loopwatch run``), ``False`` ignores them
    resource_warnings: bool | None = None

    def __post_init__(self) -> None:
        _check_int("stack_depth", self.stack_depth, low=0, high=256)
        _check_int("history", self.history, low=0, high=10_000_000)
        _check_seconds("parked_after", self.parked_after)
        _check_seconds("stall_after", self.stall_after)
        _check_seconds("heartbeat", self.heartbeat, allow_zero=False)
        _check_seconds("growth_every", self.growth_every, allow_zero=False)
        _check_int("growth_min", self.growth_min, low=1, high=10_000_000)
        if self.resource_warnings not in (None, True, False):
            raise OptionsError(f"resource_warnings must be True, False or None, "
                               f"got {self.resource_warnings!r}")
        _check_seconds("console_idle_timeout", self.console_idle_timeout, allow_zero=False)
        if self.console is not None and not isinstance(self.console, str):
            raise OptionsError(
                f"console must be an address string such as 'unix:/tmp/app.sock' or "
                f"'tcp:127.0.0.1:5000', 'auto' or None, got {self.console!r}"
            )
        if not isinstance(self.disabled, frozenset):
            object.__setattr__(self, "disabled", frozenset(self.disabled))

    def replace(self, **changes: Any) -> Options:
        """A copy with some options changed (validated again)."""
        return make_options(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(Options)}


def make_options(base: Options | None = None, /, **options: Any) -> Options:
    """Build validated :class:`Options` from keyword options, on top of ``base``.

    Unknown names are an :class:`OptionsError` that lists the known ones.
    """
    unknown = sorted(set(options) - _FIELDS)
    if unknown:
        raise OptionsError(
            f"unknown loopwatch option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; known options are: {', '.join(sorted(_FIELDS))}"
        )
    if base is None:
        return Options(**options)
    return dataclasses.replace(base, **options)


def _check_int(name: str, value: object, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise OptionsError(f"{name} must be between {low} and {high}, got {value!r}")


def _check_seconds(name: str, value: object, *, allow_zero: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        raise OptionsError(
            f"{name} must be a finite number of seconds "
            f"{'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
