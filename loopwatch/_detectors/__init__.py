"""The detectors. Each one watches for some finding kinds and returns findings.

A detector is a :class:`Detector` subclass with no-op hooks that the watcher calls
at the moments of a loop's life (trio's ``Instrument`` pattern). Every call is
guarded by the watcher: a detector that raises is reported once and switched off,
and the program never sees the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._report import Finding
    from .._watcher import Watcher

__all__ = ["Detector", "make_detectors"]


class Detector:
    """Base class: every hook does nothing."""

    #: short name, used in notes and error messages
    name = "detector"
    #: the finding kinds this detector makes
    kinds: tuple[str, ...] = ()

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.enabled = True

    def install(self) -> None:
        """The loop was created or attached: set up hooks."""

    def uninstall(self) -> None:
        """The watcher closes: remove hooks."""

    def loop_started(self) -> None:
        """``run_forever`` begins on the loop thread."""

    def loop_stopped(self) -> None:
        """``run_forever`` returned."""

    def run_finished(self, fut: Any) -> None:
        """A runner's main coroutine finished; shutdown comes next."""

    def exception_context(self, context: dict[str, Any]) -> None:
        """The loop's exception handler was called with ``context`` (before the user's)."""

    def tick(self, now: float) -> None:
        """Periodic work, called about once a second from the watchdog thread (not the
        loop thread) while the loop runs. Must be cheap and must not block."""

    def audit(self) -> list[Finding]:
        """What this detector would report if the loop shut down now."""
        return []

    def before_close(self) -> None:
        """``loop.close()`` was called; the loop is not closed yet."""

    def after_close(self) -> None:
        """The loop is closed."""

    def notes(self) -> list[str]:
        """Checks this detector cannot observe on this loop, and why."""
        return []

    def lag_stats(self) -> dict[str, float]:
        """Loop-lag statistics, for the one detector that measures them."""
        return {}


#: every detector, as (module, class) under ``loopwatch._detectors``, in report order
DETECTORS: tuple[tuple[str, str], ...] = (
    ("stragglers", "StragglerDetector"),
    ("stall", "StallDetector"),
    ("parked", "ParkedDetector"),
    ("closed", "PostCloseDetector"),
    ("closed", "DroppedCallbackDetector"),
    ("lost", "NeverAwaitedDetector"),
    ("lost", "UnretrievedExceptionDetector"),
    ("lost", "DestroyedPendingDetector"),
    ("resources", "ExecutorThreadDetector"),
    ("resources", "AsyncgenDetector"),
    ("resources", "UnclosedResourceDetector"),
    ("growth", "GrowthDetector"),
)


_detector_classes: list[type[Detector]] = []


def _classes() -> list[type[Detector]]:
    """The detector classes, imported once (a loop per test must not pay for imports)."""
    if not _detector_classes:
        import importlib

        for module_name, class_name in DETECTORS:
            module = importlib.import_module(f"{__name__}.{module_name}")
            _detector_classes.append(getattr(module, class_name))
    return _detector_classes


def make_detectors(watcher: Watcher) -> list[Detector]:
    """One instance of every detector that has a kind still switched on."""
    disabled = watcher.options.disabled
    detectors = []
    for cls in _classes():
        if cls.kinds and set(cls.kinds) <= disabled:
            continue
        detectors.append(cls(watcher))
    return detectors
