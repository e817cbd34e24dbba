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

__all__ = ["HOOKS_OF", "Detector", "hook_table", "make_detectors", "own_hooks"]


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

#: the hooks a watcher calls (the public methods of :class:`Detector`)
HOOKS: tuple[str, ...] = tuple(name for name, value in vars(Detector).items()
                               if callable(value) and not name.startswith("_"))

#: the hooks a detector class defines itself, by class (filled by :func:`own_hooks`)
HOOKS_OF: dict[type[Detector], frozenset[str]] = {}


def own_hooks(cls: type[Detector]) -> frozenset[str]:
    """The hooks ``cls`` overrides: the watcher calls only those (a loop per test
    would otherwise pay for every no-op hook of every detector)."""
    hooks = HOOKS_OF.get(cls)
    if hooks is None:
        hooks = HOOKS_OF[cls] = frozenset(
            name for name in HOOKS if getattr(cls, name) is not getattr(Detector, name))
    return hooks


#: per tuple of detector classes: hook -> positions of the classes that define it
_hook_tables: dict[tuple[type[Detector], ...], dict[str, tuple[int, ...]]] = {}


def hook_table(classes: tuple[type[Detector], ...]) -> dict[str, tuple[int, ...]]:
    """For detectors of ``classes`` (in order): each hook, and the positions of the
    detectors that define it. Shared by every watcher with the same classes (a loop per
    test would otherwise ask each of its detectors about each hook)."""
    table = _hook_tables.get(classes)
    if table is None:
        table = {hook: tuple(i for i, cls in enumerate(classes) if hook in own_hooks(cls))
                 for hook in HOOKS}
        if len(_hook_tables) < 64:
            _hook_tables[classes] = table
    return table


def _classes() -> list[type[Detector]]:
    """The detector classes, imported once (a loop per test must not pay for imports)."""
    if not _detector_classes:
        import importlib

        for module_name, class_name in DETECTORS:
            module = importlib.import_module(f"{__name__}.{module_name}")
            _detector_classes.append(getattr(module, class_name))
    return _detector_classes


#: the detector classes a watcher gets, by (disabled kinds, watchdog)
_chosen: dict[tuple[frozenset[str], bool], tuple[type[Detector], ...]] = {}


def make_detectors(watcher: Watcher) -> list[Detector]:
    """One instance of every detector that has a kind still switched on.

    The stall detector has no kind of its own to switch off: it is the heartbeat and
    the watchdog thread, whose clock drives every ``tick`` hook. It is left out only
    when it would have nothing to do (no watchdog, ``stall`` off, and no other
    detector ticks), as for a test's loop, which is made by the hundred (and which
    is why the choice is remembered for the next watcher with the same options).
    """
    options = watcher.options
    key = (options.disabled, options.watchdog)
    classes = _chosen.get(key)
    if classes is None:
        disabled = options.disabled
        chosen = [cls for cls in _classes() if not (cls.kinds and set(cls.kinds) <= disabled)]
        if not options.watchdog and "stall" in disabled and not any(
                cls.tick is not Detector.tick for cls in chosen if cls.name != "stall"):
            chosen = [cls for cls in chosen if cls.name != "stall"]
        classes = tuple(chosen)
        if len(_chosen) < 64:
            _chosen[key] = classes
    return [cls(watcher) for cls in classes]
