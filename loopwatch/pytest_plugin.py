"""The pytest plugin: fail a test that leaves its loop unclean (``pytest --loopwatch``).

Registered through the ``pytest11`` entry point; off unless asked for (``--loopwatch``,
ini ``loopwatch_mode = error|warn``, ``@pytest.mark.loopwatch(enabled=True)``).

How a test is watched, whatever runs its loop:

- pytest-asyncio (any loop scope, any loop factory): when one of its runner fixtures
  is set up, loopwatch attaches to the runner's loop before anything runs on it, and
  adds a finalizer that runs just before the runner closes the loop (after the async
  fixtures on it were torn down): the stragglers are judged there, while they still
  exist.
- anyio's plugin on asyncio (also ``use_uvloop``, which bypasses policies): loopwatch
  holds a lease on anyio's shared test runner from the test's first async fixture (or
  its call) to the end of its teardown, so the loop stays open until it is checked;
  it attaches to that loop when the lease is taken.
- Every test is judged at the end of its own teardown: by a finalizer added to the
  test when its first function-scoped fixture is set up, which runs after all its
  fixtures are torn down; a test without one, and whatever happens later in the
  teardown (a module-scoped loop closing after the module's last test), is checked at
  the very end of the teardown phase.

With a module- or session-scoped loop, a test is judged against a baseline taken when
it started, and tasks created by a higher-scoped fixture belong to that fixture until
it is torn down.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Generator
from typing import Any

import pytest

from ._exceptions import LoopLeakError, NotWatchedError, OptionsError
from ._loops import _attach, shared_class_of
from ._options import Options, make_options
from ._records import task_id
from ._report import KINDS, Finding, Report
from ._watcher import Watcher
from .testing import (
    ORIGIN_DEPTH,
    TEST_OPTIONS,
    CheckSettings,
    LeakCheck,
    _OriginTracking,
    _parse_grace,
    _parse_patterns,
    format_report,
    parse_checks,
)

__all__ = ["LoopwatchWarning", "TestWatch"]

log = logging.getLogger("loopwatch")

MODES = ("error", "warn", "off")
GC_MODES = ("test", "module", "off")
MARKER_ARGS = ("checks", "ignore", "grace", "enabled")


class LoopwatchWarning(pytest.PytestWarning):
    """A test left its loop unclean (``loopwatch_mode = warn``; ``-W error`` makes it fail)."""


# -- options ----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopwatch", "loopwatch: fail tests that leave the loop unclean")
    group.addoption("--loopwatch", action="store_true", default=False,
                    help="check every async test for leftover tasks, timers and lost work "
                         "(the test that leaves them fails at its teardown)")
    group.addoption("--loopwatch-report", metavar="PATH", default=None,
                    help="write every loopwatch finding of the session to PATH as one JSON "
                         "report (schema 1; each finding names its test in details.test)")
    group.addoption("--loopwatch-dump-after", metavar="SECONDS", type=float, default=None,
                    help="when a test runs longer than SECONDS, dump every task of its loop "
                         "with its await chain (to the terminal and the test's report)")
    parser.addini("loopwatch_mode", "loopwatch: 'error' (a leaking test fails), 'warn' (it "
                  "emits a LoopwatchWarning) or 'off' (default; --loopwatch means error)",
                  default="off")
    parser.addini("loopwatch_checks", "loopwatch: finding kinds to check ('all', 'default', "
                  "kind names, '-kind' to leave one out)", type="args", default=[])
    parser.addini("loopwatch_ignore", "loopwatch: fnmatch patterns (one a line) on the "
                  "coroutine's qualified name, the task name or the creation site file:line "
                  "of what is not reported", type="linelist", default=[])
    parser.addini("loopwatch_grace", "loopwatch: seconds stragglers get to finish, retried "
                  "with backoff (default 0.1)", default="0.1")
    parser.addini("loopwatch_track_origins", "loopwatch: record where each coroutine is "
                  "created while tests run, so that a never-awaited one is reported at that "
                  "line (default true)", type="bool", default=True)
    parser.addini("loopwatch_gc", "loopwatch: when to collect garbage so that lost "
                  "exceptions and never-awaited coroutines are found: 'test' (default), "
                  "'module' or 'off'", default="test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "loopwatch(checks=None, ignore=(), grace=None, enabled=None): loopwatch settings for "
        "a test: finding kinds checked, patterns not reported, seconds of grace for "
        "stragglers; enabled=False skips the check, enabled=True checks even without "
        "--loopwatch")
    try:
        state = _Session.from_config(config)
    except OptionsError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_session_key] = state
    config.add_cleanup(state.cleanup)


_session_key = pytest.StashKey["_Session"]()
_item_key = pytest.StashKey["_ItemCheck"]()


#: the last config asked about and its session (the hooks ask several times per test)
_last: tuple[pytest.Config | None, _Session | None] = (None, None)


def _session(config: pytest.Config) -> _Session | None:
    global _last
    last = _last
    if last[0] is config:
        return last[1]
    state = config.stash.get(_session_key, None)
    if state is not None:
        _last = (config, state)
    return state


# -- garbage ------------------------------------------------------------------------------


class _Garbage:
    """The collector at test boundaries, made cheap.

    A full ``gc.collect()`` walks every object in the process: tens of milliseconds
    in a pytest process, more than a small async test takes. So in ``test`` mode the
    heap that exists when the first test starts is frozen (``gc.freeze``), and after
    each collection what survived is frozen too: each test's collection walks only the
    objects made since the last one, which is where that test's garbage is. What was
    frozen and became garbage later is collected by a full pass at module boundaries
    once the frozen heap has grown a lot, and at the end of the session.

    Right after a freeze every generation is empty, and what a test makes reaches the
    oldest one only through a collection of an older generation than the youngest. So
    while none has run since the last freeze (a ``gc.callbacks`` hook says), collecting
    the two young generations walks exactly the objects a full collection would (what
    is frozen is left to the full passes either way), without a full collection's
    extra work (CPython empties its free lists then). ``gc.get_freeze_count()`` is not
    asked: it walks the whole frozen heap.
    """

    #: tests between two full passes (each at a module boundary)
    FULL_EVERY = 1000

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.frozen = False
        self._since_full = 0
        #: something may have reached the oldest generation since the last freeze
        self._old = True
        self._ours = False
        #: collected since the last freeze: freeze once the test's loops are let go
        self._settle = False
        #: the closed loops of the test being settled (weak): each should be freed by now
        self._loops: list[weakref.ref[Any]] = []
        self._held = False

    def prepare(self) -> None:
        if self.mode == "test" and not self.frozen:
            # No collection first: garbage made before the first test is nobody's
            # business here, and a full pass costs more than many small tests.
            gc.callbacks.append(self._seen)
            self._freeze()
            self.frozen = True

    def _freeze(self) -> None:
        gc.freeze()
        self._old = False

    def _seen(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` hook: a collection that is not ours, of an older
        generation than the youngest, moves objects into the oldest."""
        if not self._ours and phase == "start" and info.get("generation", 2) >= 1:
            self._old = True

    def _collect(self, generation: int) -> None:
        self._ours = True
        try:
            gc.collect(generation)
        finally:
            self._ours = False

    def collect(self) -> None:
        self._collect(1 if self.frozen and not self._old else 2)
        # Not frozen yet: the test's loops are still held (by its check) and would be
        # frozen with the rest, kept until the next full pass (a uvloop loop holds a
        # 256 KB buffer, and each new loop then faults in fresh pages).
        self._settle = self.frozen

    def expect_freed(self, loops: list[Any]) -> None:
        """The test's closed loops, let go of now: :meth:`settle` checks that they are gone."""
        for loop in loops:
            try:
                self._loops.append(weakref.ref(loop))
            except TypeError:  # cannot tell: settle as if it were still held
                self._held = True

    def settle(self) -> None:
        """A test is over and its loops are let go: freeze what is left.

        A loop whose watcher was released (``Watcher.release``) is freed as soon as it
        is dropped, with no collection. Since the test's last collection (the judging
        one, after its fixtures' teardown; at a module's end, the one after the
        module's teardown) only pytest's and loopwatch's own bookkeeping has run, which
        makes no cyclic garbage: what is young is frozen as it is. A loop still alive
        here (held in a reference cycle: one made by a loop
        factory of loopwatch's, say) survived the judging collection, which moved it to
        the oldest generation: then a full pass frees it first (it walks only what was
        made since the last freeze all the same), or every such loop would stay in
        memory until the next full pass over the frozen heap (a uvloop loop holds a
        256 KB read buffer, and each new one would fault in fresh pages). Whatever else
        was alive at the judging collection and became cyclic garbage by now is frozen
        with the rest, until that full pass."""
        loops, self._loops = self._loops, []
        held, self._held = self._held, False
        if not self._settle:
            return
        self._settle = False
        if held or self._old or any(ref() is not None for ref in loops):
            self._collect(2)
        self._freeze()
        self._since_full += 1

    def boundary(self) -> None:
        """A module boundary: now and then, a full pass over what was frozen."""
        if self.frozen and self._since_full >= self.FULL_EVERY:
            gc.unfreeze()
            gc.collect()
            self._freeze()
            self._since_full = 0

    def release(self) -> None:
        if self.frozen:
            self.frozen = False
            gc.unfreeze()
            try:
                gc.callbacks.remove(self._seen)
            except ValueError:
                pass


# -- the session ---------------------------------------------------------------------------


class _Session:
    """What the plugin knows for the whole run (kept in ``config.stash``)."""

    def __init__(self, config: pytest.Config, *, mode: str, settings: CheckSettings,
                 gc_mode: str, report_path: str | None, dump_after: float | None) -> None:
        self.config = config
        self.mode = mode
        self.settings = settings
        self.gc_mode = gc_mode
        self.garbage = _Garbage(gc_mode)
        self.report_path = report_path
        self.dump_after = dump_after
        #: the watchers the plugin attached whose loops are still open (weak), by serial
        self.open: dict[int, weakref.ref[Watcher]] = {}
        #: serials of the watchers the plugin made itself (it stops them after their test)
        self.ours: set[int] = set()
        #: the base loops seen, for the session report
        self.bases: set[str] = set()
        #: watchers of closed loops waiting for the module's end to be stopped
        self._closed: list[Watcher] = []
        #: coroutine origin tracking while tests run
        self.track_origins = True
        #: the test being checked now; ``quiet`` while an unwatched test runs
        self.current: _ItemCheck | None = None
        self.quiet = False
        #: findings that arrived between tests (delivered to the next watched one)
        self.stray: list[Finding] = []
        #: tasks owned by higher-scoped fixtures, by owner (shared with every check)
        self.exempt: dict[Any, set[int]] = {}
        #: every finding reported in the session, tagged with its test
        self.findings: list[Finding] = []
        self.tests_with_findings = 0
        #: finding kinds some test may check: loops are attached with the others off
        self.wanted: frozenset[str] = settings.checks
        #: whether watchers keep a history of finished tasks: only the ``loopwatch``
        #: fixture (``watcher.tasks(history=True)``) and the parked check read it
        self.history = True
        #: the options every loop the plugin attaches to gets (built once)
        self._options: Options | None = None
        self._terminal_fd: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: pytest.Config) -> _Session:
        mode = str(config.getini("loopwatch_mode") or "off").strip().lower()
        if mode not in MODES:
            raise OptionsError(f"loopwatch_mode must be one of {', '.join(MODES)}, got {mode!r}")
        if config.getoption("loopwatch", False) and mode == "off":
            mode = "error"
        gc_mode = str(config.getini("loopwatch_gc") or "test").strip().lower()
        if gc_mode not in GC_MODES:
            raise OptionsError(f"loopwatch_gc must be one of {', '.join(GC_MODES)}, "
                               f"got {gc_mode!r}")
        checks_spec = config.getini("loopwatch_checks")
        settings = CheckSettings(
            checks=parse_checks(checks_spec or None, what="loopwatch_checks"),
            ignore=_parse_patterns(config.getini("loopwatch_ignore"), "loopwatch_ignore"),
            grace=_parse_grace(config.getini("loopwatch_grace"), "loopwatch_grace"),
            gc=gc_mode != "off",
        )
        dump_after = config.getoption("loopwatch_dump_after", None)
        if dump_after is not None:
            dump_after = _parse_grace(dump_after, "--loopwatch-dump-after")
            if dump_after <= 0:
                raise OptionsError(f"--loopwatch-dump-after must be > 0 seconds, "
                                   f"got {dump_after!r}")
        state = cls(config, mode=mode, settings=settings, gc_mode=gc_mode,
                    report_path=config.getoption("loopwatch_report", None),
                    dump_after=dump_after)
        state.track_origins = bool(config.getini("loopwatch_track_origins"))
        if mode != "off":
            # Once for the session, not in the middle of its first test.
            from ._detectors import _classes

            _classes()
        if dump_after is not None:
            # The terminal, as it is before any test output is captured.
            try:
                state._terminal_fd = os.dup(sys.__stderr__.fileno()) if sys.__stderr__ else None
            except (OSError, ValueError):
                state._terminal_fd = None
        return state

    # -- loops -------------------------------------------------------------------

    def options(self) -> Options:
        """The options of the loops the plugin attaches to (built once, after collection
        says which kinds some test checks)."""
        options = self._options
        if options is None:
            # Stragglers and await cycles are judged by the check itself, at the end of
            # each test. No test reports a kind that none checks: its detector is not
            # installed at all (a loop per test pays for every detector it gets), and
            # the watchdog is off unless some test checks stalls or parked tasks.
            off = {"straggler"} | (set(KINDS) - self.wanted)
            if "parked" not in self.wanted:
                off.add("await_cycle")
            else:
                off.discard("await_cycle")
            changes: dict[str, Any] = {
                **TEST_OPTIONS, "disabled": frozenset(off),
                "watchdog": bool({"stall", "parked"} & self.wanted),
                "track_origins": self.track_origins}
            if not self.history:
                changes["history"] = 0
            options = self._options = make_options(**changes)
        return options

    def attach(self, loop: asyncio.AbstractEventLoop) -> Watcher:
        """Watch ``loop`` (once) and send its findings to whichever test is current."""
        existing = getattr(loop, "_lw_watcher", None)
        watcher = existing if isinstance(existing, Watcher) else _attach(loop, self.options())
        if watcher.serial not in self.open and not watcher.closed:
            self.open[watcher.serial] = weakref.ref(watcher)
            self.bases.add(watcher.base)
            if existing is None:
                self.ours.add(watcher.serial)
            watcher.add_listener(self._deliver)
        return watcher

    def _deliver(self, finding: Finding) -> None:
        current = self.current
        check = current.check if current is not None else None
        if check is not None:
            check.deliver(finding)
        elif not self.quiet:
            with self._lock:
                self.stray.append(finding)

    def open_watchers(self) -> list[Watcher]:
        out = []
        for serial, ref in list(self.open.items()):
            w = ref()
            if w is None or w.closed:
                del self.open[serial]
                continue
            out.append(w)
        return out

    def stop_closed(self, watchers: list[Watcher]) -> None:
        """Stop the plugin's own watchers of loops that closed during a test: their
        detectors leave the process-wide hooks (warnings, ...) they joined. With
        ``loopwatch_gc = module`` that waits for the module's garbage collection, which
        still needs their detectors."""
        if self.gc_mode == "module":
            self._closed.extend(watchers)
            return
        self._stop(watchers)

    def _stop(self, watchers: list[Watcher]) -> None:
        for w in watchers:
            if w.closed and w.serial in self.ours:
                self.ours.discard(w.serial)
                try:
                    w.release()
                except Exception:  # never break the run over a watcher that will not stop
                    pass

    def pending_ids(self) -> set[int]:
        ids: set[int] = set()
        for w in self.open_watchers():
            ids.update(task_id(t) for t in w.live_tasks())
        return ids

    # -- a test begins -----------------------------------------------------------

    def begin(self, item: pytest.Item) -> None:
        self.current = None
        self.quiet = False
        resolved = _item_settings(item, self)
        if resolved is None:
            self.quiet = True
            return
        mode, settings = resolved
        assert isinstance(item, pytest.Function)
        self.garbage.prepare()
        ic = _ItemCheck(self, item, mode, settings)
        item.stash[_item_key] = ic
        with self._lock:
            stray, self.stray = self.stray, []
        check = ic.check
        assert check is not None
        for finding in stray:
            check.deliver(finding)
        for watcher in self.open_watchers():
            check.watch(watcher, subscribe_=False)
        ic.origins.start()
        self.current = ic

    # -- fixtures ----------------------------------------------------------------

    def fixture_window(self, owner: object) -> set[int]:
        """Before a higher-scoped fixture is set up: the tasks that exist already."""
        return self.pending_ids()

    def exempt_new(self, owner: object, before: set[int]) -> None:
        new = self.pending_ids() - before
        if new:
            self.exempt[owner] = new

    def release(self, owner: object) -> None:
        self.exempt.pop(owner, None)

    def adopt_runner(self, fixturedef: Any, runner: Any) -> None:
        """A pytest-asyncio runner was set up: watch its loop, judge it before it closes."""
        loop = runner.get_loop()
        watcher = self.attach(loop)
        ic = self.current
        if ic is not None and ic.check is not None:
            ic.check.watch(watcher, subscribe_=False)
        fixturedef.addfinalizer(lambda: self.runner_closing(watcher))

    def runner_closing(self, watcher: Watcher) -> None:
        """Just before a pytest-asyncio runner closes its loop (its async fixtures are
        torn down): judge the stragglers while they exist."""
        ic = self.current
        if ic is None or ic.check is None:
            return
        check = ic.check
        try:
            check.watch(watcher, subscribe_=False)
            check.sweep(watcher)
        except Exception as exc:
            ic.failed("the check before the loop closed", exc)
        try:
            # No garbage collection here: the test's own check, after the loop closed,
            # does it.
            check.collect(garbage=False)
        except Exception as exc:
            ic.failed("the check before the loop closed", exc)

    def anyio_lease(self, ic: _ItemCheck, backend: Any) -> None:
        """Hold anyio's shared test runner open for this test, and watch its loop."""
        if ic.anyio is not None or ic.check is None:
            return
        try:
            from anyio import pytest_plugin as anyio_plugin
        except ImportError:
            return
        try:
            name, options = anyio_plugin.extract_backend_and_options(backend)
        except TypeError:
            return
        if name != "asyncio":
            return
        try:
            lease = anyio_plugin.get_runner(name, options)
            runner: Any = lease.__enter__()
            ic.anyio = lease
            watcher = self.attach(runner.get_loop())
            ic.check.watch(watcher, subscribe_=False)
        except Exception as exc:
            ic.failed("holding anyio's test runner", exc)

    # -- a test ends -------------------------------------------------------------

    def end(self, ic: _ItemCheck, nextitem: pytest.Item | None, *, raise_ok: bool) -> None:
        """The very end of the teardown phase: judge what is left, release the loops."""
        boundary = nextitem is None or (nextitem.parent is not ic.item.parent and
                                        _module_of(nextitem) is not _module_of(ic.item))
        try:
            try:
                self._end_check(ic, boundary)
            except Exception as exc:
                ic.failed("the check at the end of the teardown", exc)
            ic.conclude(stage="end", raise_ok=raise_ok)
        finally:
            ic.finish()
            if boundary and self._closed:
                waiting, self._closed = self._closed, []
                self._stop(waiting)
            if self.current is ic:
                self.current = None
            self.quiet = False
            # The test's loops are let go: free them before anything is frozen.
            self.garbage.settle()

    def _end_check(self, ic: _ItemCheck, boundary: bool) -> None:
        check = ic.check
        if check is not None and ic.guarded and ic.anyio is None and not boundary:
            # Judged already, and nothing ran since: only what other threads did.
            check.collect(garbage=False)
        elif check is not None:
            try:
                for watcher in self.open_watchers():
                    check.watch(watcher, subscribe_=False)
                check.sweep()
            except Exception as exc:
                ic.failed("the check at the end of the teardown", exc)
            lease, ic.anyio = ic.anyio, None
            if lease is not None:
                try:
                    lease.__exit__(None, None, None)
                except Exception as exc:
                    check.notes.append(f"anyio's test runner failed to close: "
                                       f"{type(exc).__name__}: {exc}")
            if boundary:
                self.garbage.boundary()
            # After the test's own check, only a module's teardown or anyio's runner
            # closing can have made more garbage.
            late = not ic.guarded or lease is not None or boundary
            check.collect(garbage=(self.gc_mode == "test" and late) or
                          (self.gc_mode == "module" and boundary))

    # -- the end of the session ---------------------------------------------------

    def write_report(self) -> None:
        if not self.report_path:
            return
        path = self.report_path
        worker = getattr(self.config, "workerinput", None)
        if isinstance(worker, dict) and worker.get("workerid"):
            path = f"{path}.{worker['workerid']}"
        report = Report(findings=list(self.findings), scope="run",
                        loop=",".join(sorted(self.bases)))
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(report.to_json())
            fh.write("\n")

    def cleanup(self) -> None:
        global _last
        if _last[1] is self:
            _last = (None, None)
        self.garbage.release()
        if self._terminal_fd is not None:
            try:
                os.close(self._terminal_fd)
            except OSError:
                pass
            self._terminal_fd = None


def _module_of(item: pytest.Item) -> Any:
    return item.getparent(pytest.Module)


# -- one test ----------------------------------------------------------------------------


class _ItemCheck:
    """One test being checked."""

    def __init__(self, session: _Session, item: pytest.Function, mode: str,
                 settings: CheckSettings) -> None:
        self.session = session
        self.item = item
        #: "error", "warn", or "off" (watched for the ``loopwatch`` fixture, never failed)
        self.mode = mode
        self.check: LeakCheck | None = LeakCheck(
            settings, exempt=session.exempt, collect=session.garbage.collect)
        self.origins = _OriginTracking(ORIGIN_DEPTH if session.track_origins else 0)
        self.anyio: Any = None
        self.phase: dict[str, pytest.TestReport] = {}
        self.raised = False
        #: judged at the end of its fixtures' teardown (``anchored``: that is arranged)
        self.guarded = False
        self.anchored = False
        #: every report made for this test (the ``loopwatch`` fixture reads them)
        self.reports: list[Report] = []
        self._dumping = False

    @property
    def nodeid(self) -> str:
        return self.item.nodeid

    def already_failed(self) -> bool:
        for when in ("setup", "call"):
            rep = self.phase.get(when)
            if rep is not None and (rep.failed or rep.skipped or hasattr(rep, "wasxfail")):
                return True
        return False

    def conclude(self, *, stage: str, raise_ok: bool) -> None:
        """Report what was gathered since the last time; fail or warn when that is asked."""
        check = self.check
        if check is None:
            return
        findings = check.take()
        if not findings:
            return
        failed = self.already_failed()
        for finding in findings:
            finding.details["test"] = self.nodeid
            if failed:
                finding.details["test_failed"] = True
        self.session.findings.extend(findings)
        self.session.tests_with_findings += 1 if not self.reports else 0
        report = check.report(findings)
        self.reports.append(report)
        if self.mode == "off":
            return
        text = _failure_text(self, report)
        if failed:
            self._note_on_failure(text)
            return
        if self.raised or not raise_ok:
            self.item.add_report_section("teardown", "loopwatch", text)
            return
        self.raised = True
        if self.mode == "warn":
            warning = LoopwatchWarning(text)
            warning._loopwatch_text = text  # type: ignore[attr-defined]
            warnings.warn(warning, stacklevel=1)
            return
        error = LoopLeakError(report, text)
        error._loopwatch_text = text  # type: ignore[attr-defined]
        raise error

    def _note_on_failure(self, text: str) -> None:
        """A failed test is not failed again; its report shows what loopwatch saw."""
        note = ("not failed again for this, as it already failed; loopwatch cleaned up:\n\n"
                + text)
        for when in ("call", "setup"):
            rep = self.phase.get(when)
            if rep is not None and (rep.failed or rep.skipped):
                rep.sections.append(("loopwatch", note))
                return

    def judge(self) -> None:
        """After every fixture of the test was torn down: judge it."""
        check = self.check
        if check is None:
            return
        state = self.session
        self.guarded = True
        # (one part failing does not stop the others; plain try blocks, as this runs
        # for every test)
        what = "the check at the end of the test"
        try:
            for watcher in state.open_watchers():
                check.watch(watcher, subscribe_=False)
        except Exception as exc:
            self.failed(what, exc)
        try:
            check.sweep()
        except Exception as exc:
            self.failed(what, exc)
        try:
            check.collect(garbage=state.gc_mode == "test")
        except Exception as exc:
            self.failed(what, exc)
        self.conclude(stage="judge", raise_ok=True)

    def failed(self, what: str, exc: Exception) -> None:
        """A failure inside loopwatch never fails the test: it is logged and noted."""
        log.warning("loopwatch: %s failed: %s: %s", what, type(exc).__name__, exc,
                    exc_info=exc)
        check = self.check
        if check is not None:
            check.notes.append(f"{what} failed inside loopwatch: {type(exc).__name__}: {exc}")

    def arm_dump(self, seconds: float) -> None:
        from ._dump import dump_later

        try:
            sink: Any = _DumpSink(self, self.session._terminal_fd)
            dump_later(seconds, file=sink)
            self._dumping = True
        except Exception as exc:  # never break the run over a dump
            if self.check is not None:
                self.check.notes.append(f"--loopwatch-dump-after failed: {exc}")

    def finish(self) -> None:
        """The test is over: stop everything, drop the references to its loops."""
        self.origins.stop()
        if self._dumping:
            from ._dump import cancel_dump_later

            self._dumping = False
            cancel_dump_later()
        lease, self.anyio = self.anyio, None
        if lease is not None:
            try:
                lease.__exit__(None, None, None)
            except Exception:
                pass
        if self.check is not None:
            self.check.close()
            watchers = self.check.watchers()
            self.session.stop_closed(watchers)
            self.session.garbage.expect_freed([w.loop for w in watchers if w.closed])
            self.check = None


class _DumpSink:
    """Where ``--loopwatch-dump-after`` writes: the terminal, and the test's report."""

    def __init__(self, ic: _ItemCheck, fd: int | None) -> None:
        self._item = ic.item
        self._nodeid = ic.nodeid
        self._fd = fd

    def write(self, text: str) -> int:
        header = f"loopwatch: {self._nodeid} is still running\n"
        if self._fd is not None:
            try:
                os.write(self._fd, ("\n" + header + text).encode("utf-8", "replace"))
            except OSError:
                pass
        self._item.add_report_section("call", "loopwatch dump", header + text)
        return len(text)

    def flush(self) -> None:
        pass


def _failure_text(ic: _ItemCheck, report: Report) -> str:
    counts = report.summary().split(": ", 2)[-1]
    title = f"loopwatch: {ic.nodeid} left its event loop unclean ({counts})"
    lines = []
    if report.of_kind("straggler"):
        lines.append("loopwatch cancelled the stragglers above (except any in an await cycle).")
    lines.append("To accept one in this test: @pytest.mark.loopwatch(ignore=[\"PATTERN\"]);\n"
                 "in every test: loopwatch_ignore in the ini file. A pattern matches the\n"
                 "coroutine's qualified name, the task name or the creation site file:line.")
    try:
        width = max(80, min(160, ic.item.config.get_terminal_writer().fullwidth))
    except Exception:
        width = 100
    return format_report(report, title, width=width, footer="\n".join(lines))


def _item_settings(item: pytest.Item, state: _Session) -> tuple[str, CheckSettings] | None:
    """The mode and settings for one test, or None when it is not watched at all."""
    if not isinstance(item, pytest.Function) or _is_unittest(item):
        return None
    markers = list(item.iter_markers("loopwatch"))
    mode = state.mode
    settings = state.settings
    if markers:
        values: dict[str, Any] = {}
        ignore: list[str] = []
        for mark in markers:  # closest first
            if mark.args:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.loopwatch takes only keyword arguments "
                    f"({', '.join(MARKER_ARGS)}), got positional {mark.args!r}")
            unknown = sorted(set(mark.kwargs) - set(MARKER_ARGS))
            if unknown:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.loopwatch got unknown argument(s) "
                    f"{', '.join(unknown)}; it takes {', '.join(MARKER_ARGS)}")
            for key, value in mark.kwargs.items():
                if key == "ignore":
                    ignore.extend(_parse_patterns(value, "loopwatch(ignore=...)"))
                else:
                    values.setdefault(key, value)
        try:
            settings = CheckSettings(
                checks=parse_checks(values["checks"], base=settings.checks,
                                    what="loopwatch(checks=...)")
                if "checks" in values else settings.checks,
                ignore=settings.ignore + tuple(ignore),
                grace=_parse_grace(values["grace"], "loopwatch(grace=...)")
                if "grace" in values else settings.grace,
                gc=settings.gc,
            )
        except OptionsError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        enabled = values.get("enabled")
        if enabled is False:
            mode = "off"
        elif enabled is True and mode == "off":
            mode = "error"
        elif enabled is not None and not isinstance(enabled, bool):
            raise pytest.UsageError(f"{item.nodeid}: loopwatch(enabled=...) must be True or "
                                    f"False, got {enabled!r}")
    if mode == "off" and "loopwatch" not in item.fixturenames:
        return None
    return mode, settings


def _is_unittest(item: pytest.Item) -> bool:
    return type(item).__name__ == "TestCaseFunction"


# -- hooks -----------------------------------------------------------------------------------


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    state = _session(config)
    if state is None:
        return
    wanted = set(state.settings.checks)
    fixture = False
    for item in items:
        fixture = fixture or "loopwatch" in getattr(item, "fixturenames", ())
        for mark in item.iter_markers("loopwatch"):
            checks = mark.kwargs.get("checks")
            if checks is not None:
                try:
                    wanted |= parse_checks(checks, base=state.settings.checks)
                except OptionsError:
                    pass  # reported when the test runs
    state.wanted = frozenset(wanted)
    state.history = fixture or "parked" in wanted
    state._options = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    state = _session(item.config)
    if state is not None:
        state.begin(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[
        None, Any, Any]:
    state = _session(request.config)
    ic = state.current if state is not None else None
    if state is None or (ic is None and (state.quiet or state.mode == "off")):
        return (yield)
    # (with no test current, a session fixture set up early: its runner is watched anyway)
    owner: object | None = None
    before: set[int] = set()
    if ic is not None:
        if not ic.anchored and request.node is ic.item:
            # The first function-scoped fixture of the test: a finalizer added to the
            # test now runs after every fixture of the test is torn down (and before
            # anything of the module is). That is where the test is judged.
            ic.anchored = True
            ic.item.addfinalizer(ic.judge)
        if fixturedef.scope != "function":
            owner = object()
            before = state.fixture_window(owner)
            fixturedef.addfinalizer(lambda: state.release(owner))
        if _is_async(getattr(fixturedef, "func", None)) and \
                "anyio_backend" in request.fixturenames:
            try:
                backend = request.getfixturevalue("anyio_backend")
            except Exception:
                backend = None
            if backend is not None:
                state.anyio_lease(ic, backend)
    undo = _runner_loop_born_shared(fixturedef)
    try:
        result = yield
    finally:
        if undo is not None:
            undo()
        if owner is not None:
            state.exempt_new(owner, before)
    if _is_runner(fixturedef, result):
        state.adopt_runner(fixturedef, result)
    return result


#: fixture functions seen, and whether each is async (asked at every fixture's setup)
_async_funcs: dict[Any, bool] = {}


def _is_async(func: Any) -> bool:
    try:
        return _async_funcs[func]
    except (KeyError, TypeError):
        pass
    result = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    try:
        if len(_async_funcs) < 10_000:
            _async_funcs[func] = result
    except TypeError:  # not hashable
        pass
    return result


def _is_runner_name(fixturedef: Any) -> bool:
    """pytest-asyncio's scoped runner fixtures (``_function_scoped_runner``, ...)."""
    name = getattr(fixturedef, "argname", "")
    return name.startswith("_") and name.endswith("_scoped_runner")


def _is_runner(fixturedef: Any, value: Any) -> bool:
    return _is_runner_name(fixturedef) and callable(getattr(value, "get_loop", None))


#: the event loop policy in effect (without 3.14's deprecation warning)
_current_policy: Any = getattr(asyncio.events, "_get_event_loop_policy", None) or \
    asyncio.get_event_loop_policy


def _runner_loop_born_shared(fixturedef: Any) -> Any:
    """Before pytest-asyncio's runner fixture makes its loop: have the event loop policy
    it uses make the loop of its class's shared subclass (see ``_detectors/shared.py``)
    from the start, rather than switch its class when it is attached. Returns what
    undoes that (None: nothing was done).

    Switching the class of a loop that exists costs every call on it afterwards: on
    3.11 to 3.13 its attributes leave the fast storage that the interpreter's
    specialized instructions read, and running one short test's coroutine took some
    3 µs more. A loop born of the shared class keeps it, and behaves as its own class
    until it is attached (no watcher: every method passes through).

    Only the policy in effect now is changed (``event_loop_policy``, pytest-asyncio's
    fixture, gives that one unless a test suite overrides it: asking the fixture cost
    as much as the change saves), and only when its ``_loop_factory`` is a loop class
    (asyncio's own), for the time the fixture is set up. A loop factory given to
    pytest-asyncio, or another policy, makes its loop as before, which is then
    switched at attach."""
    if not _is_runner_name(fixturedef):
        return None
    try:
        policy = _current_policy()
        factory = getattr(policy, "_loop_factory", None)
        if not isinstance(factory, type):
            return None
        shared = shared_class_of(factory)
        if shared is None:
            return None
        own = vars(policy)
    except Exception:  # (a policy that is not asyncio's: its loop is switched at attach)
        return None
    missing = object()
    before = own.get("_loop_factory", missing)
    own["_loop_factory"] = shared

    def undo() -> None:
        if own.get("_loop_factory") is shared:
            if before is missing:
                del own["_loop_factory"]
            else:
                own["_loop_factory"] = before

    return undo


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # (not a wrapper: nothing to do after the call, and a wrapper costs every test more)
    state = _session(item.config)
    ic = state.current if state is not None else None
    if state is None or ic is None or ic.item is not item:
        return
    if state.dump_after is not None:
        ic.arm_dump(state.dump_after)  # cancelled at the end of the teardown
    # An anyio test runs in anyio's shared runner: hold it open for this test before
    # anyio's pytest_pyfunc_call runs the test in it.
    backend = getattr(item, "funcargs", {}).get("anyio_backend")
    if backend and inspect.iscoroutinefunction(getattr(item, "obj", None)):
        state.anyio_lease(ic, backend)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[
        None, None, None]:
    state = _session(item.config)
    ic = item.stash.get(_item_key, None) if state is not None else None
    if state is None or ic is None or ic.check is None:
        if state is not None:
            state.quiet = False
            state.current = None
        return (yield)
    try:
        result = yield
    except BaseException:
        state.end(ic, nextitem, raise_ok=False)
        raise
    state.end(ic, nextitem, raise_ok=True)
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    ic = item.stash.get(_item_key, None)
    if ic is not None:
        ic.phase[rep.when] = rep
        excinfo = call.excinfo
        text = getattr(excinfo.value, "_loopwatch_text", None) if excinfo is not None else None
        if isinstance(text, str) and rep.failed:
            rep.longrepr = text
    return rep


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = _session(session.config)
    if state is None:
        return
    state.garbage.release()
    try:
        state.write_report()
    except OSError as exc:
        session.config.issue_config_time_warning(
            LoopwatchWarning(f"loopwatch: could not write --loopwatch-report "
                             f"{state.report_path}: {exc}"), stacklevel=2)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _session(config)
    if state is None or (not state.findings and not state.report_path):
        return
    if state.findings:
        counts: dict[str, int] = {}
        for f in state.findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        parts = ", ".join(f"{counts[k]} {k}" for k in KINDS if k in counts)
        terminalreporter.write_sep("-", "loopwatch")
        terminalreporter.write_line(f"loopwatch: {len(state.findings)} finding"
                                    f"{'s' if len(state.findings) != 1 else ''} in "
                                    f"{state.tests_with_findings} test"
                                    f"{'s' if state.tests_with_findings != 1 else ''} "
                                    f"({parts})")
    if state.report_path:
        terminalreporter.write_line(f"loopwatch: report written to {state.report_path}")


# -- the loopwatch fixture -------------------------------------------------------------------


class TestWatch:
    """The ``loopwatch`` fixture: the test's watcher and what loopwatch found so far."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, ic: _ItemCheck | None) -> None:
        self._ic = ic

    def _check(self) -> LeakCheck:
        ic = self._ic
        if ic is None or ic.check is None:
            raise NotWatchedError("loopwatch is not watching this test (it is over, or the "
                                  "loopwatch plugin is disabled)")
        return ic.check

    @property
    def watchers(self) -> list[Watcher]:
        """Every loop this test is watched on."""
        return self._check().watchers()

    @property
    def watcher(self) -> Watcher:
        """The watcher of the running loop (inside the test), else of the test's loop."""
        check = self._check()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            found = getattr(loop, "_lw_watcher", None)
            if isinstance(found, Watcher):
                return found
        watchers = [w for w in check.watchers() if not w.closed] or check.watchers()
        if not watchers:
            raise NotWatchedError("this test has no watched loop yet")
        return watchers[-1]

    @property
    def settings(self) -> CheckSettings:
        return self._check().settings

    def ignore(self, *patterns: str) -> None:
        """Do not report tasks or findings that match ``patterns`` in this test."""
        check = self._check()
        check.settings = CheckSettings(checks=check.settings.checks,
                                       ignore=check.settings.ignore + tuple(patterns),
                                       grace=check.settings.grace, gc=check.settings.gc)

    def report(self) -> Report:
        """What would be reported if the test ended now: findings so far, and tasks that
        would be stragglers (no grace period, nothing is cancelled)."""
        from ._detectors.stragglers import straggler_finding

        check = self._check()
        check.collect(garbage=False)
        findings = check.take()
        for finding in findings:  # put them back: the end of the test reports them
            check._add(finding)
        for state in check.loops.values():
            if state.watcher.closed:
                continue
            for task in check.candidates(state):
                findings.append(straggler_finding(state.watcher.info(task), when="so far"))
        return check.report([f for f in findings if f.kind in check.settings.checks])


@pytest.fixture
def loopwatch(request: pytest.FixtureRequest) -> TestWatch:
    """The test's loopwatch: ``loopwatch.watcher``, ``loopwatch.report()``,
    ``loopwatch.ignore(pattern)``. Requesting it watches the test even when the plugin
    is off (it then reports but never fails)."""
    return TestWatch(request.node.stash.get(_item_key, None))
