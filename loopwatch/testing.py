"""Asserting clean shutdown in tests: context managers, ``assert_clean`` and a unittest mixin.

The pytest plugin (``pytest --loopwatch``, see ``docs/testing.md``) is built on the
same pieces as the tools here:

- :func:`clean_shutdown` checks a block of code. ``async with clean_shutdown():``
  checks the running loop when the block ends (tasks created inside that are still
  pending, timers, lost exceptions, never-awaited coroutines); ``with
  clean_shutdown():`` around a runner (``asyncio.run``, ``anyio.run``, a
  ``Runner``) watches every loop created inside and checks what their shutdown
  left behind.
- :func:`assert_clean` raises :class:`~loopwatch.LoopLeakError` for a report that
  has findings.
- :class:`LoopwatchTestMixin` does it for every test of a
  ``unittest.IsolatedAsyncioTestCase``.

Stragglers (tasks still pending at the end) get a grace period in which the loop
keeps running, with backoff as goleak does (yield once, then 1 ms, 2 ms, 4 ms ...
up to ``grace``); the ones still pending after it are reported, then cancelled and
awaited so that they cannot spill into whatever runs next. Tasks that wait on each
other in a cycle are left alone: ``Task.cancel()`` on them recurses until
``RecursionError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import functools
import gc
import logging
import math
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, ClassVar

from ._awaits import find_cycles, waits_on
from ._detectors import Detector
from ._detectors.stragglers import straggler_finding
from ._exceptions import LoopLeakError, NotWatchedError, OptionsError
from ._frames import Frame, format_raw, pick_site
from ._options import Options
from ._records import coro_name, coro_of, task_id
from ._report import KINDS, Finding, Report
from ._watcher import Watcher

__all__ = [
    "DEFAULT_CHECKS",
    "CheckSettings",
    "CleanShutdown",
    "LeakCheck",
    "LoopLeakError",
    "LoopwatchTestMixin",
    "assert_clean",
    "clean_shutdown",
    "parse_checks",
]

log = logging.getLogger("loopwatch")

#: the finding kinds a test is checked for unless told otherwise: everything a test
#: can leave behind on its loop. ``parked``, ``stall`` and ``task_growth`` are about a
#: program's behaviour over time, and ``executor_thread`` flags the idle worker threads
#: of a loop that is still open; ask for them with ``checks``.
DEFAULT_CHECKS: frozenset[str] = frozenset({
    "straggler",
    "await_cycle",
    "dropped_callback",
    "post_close_call",
    "never_awaited",
    "unretrieved_exception",
    "destroyed_pending",
    "asyncgen_unfinalized",
    "unclosed_resource",
})

#: seconds a cancelled straggler gets to finish its ``finally`` blocks
CANCEL_TIMEOUT = 1.0

#: (file name ending, coroutine qualified name) of tasks owned by test frameworks
_FRAMEWORK_TASKS: tuple[tuple[str, str], ...] = (
    ("anyio/_backends/_asyncio.py", "TestRunner._run_tests_and_fixtures"),
    ("unittest/async_case.py", "IsolatedAsyncioTestCase._asyncioLoopRunner"),
)

#: the options loopwatch watches a test's loop with: quiet (findings go to the test's
#: report, not the log), no watchdog thread, and coroutine origins for never_awaited
TEST_OPTIONS: dict[str, Any] = {"log": False, "watchdog": False, "track_origins": True}


def parse_checks(spec: str | Iterable[str] | None, *, base: frozenset[str] = DEFAULT_CHECKS,
                 what: str = "checks") -> frozenset[str]:
    """The set of kinds named by ``spec``.

    ``spec`` is a comma- or space-separated string or a list of kind names; ``all``
    means every kind, ``default`` the default test checks, and ``-kind`` takes one
    away (``"default,-dropped_callback"``; a spec made only of removals starts from
    ``base``). ``None`` is ``base``.
    """
    if spec is None:
        return base
    if isinstance(spec, str):
        tokens = spec.replace(",", " ").split()
    else:
        tokens = []
        for item in spec:
            if not isinstance(item, str):
                raise OptionsError(f"{what} must name finding kinds as strings, got {item!r}")
            tokens.extend(item.replace(",", " ").split())
    if not tokens:
        return frozenset()
    result: set[str] = set(base) if all(t.startswith("-") for t in tokens) else set()
    for token in tokens:
        remove = token.startswith("-")
        name = token[1:] if remove else token
        if name in ("all", "any"):
            names: frozenset[str] = frozenset(KINDS)
        elif name == "default":
            names = DEFAULT_CHECKS
        elif name in KINDS:
            names = frozenset({name})
        else:
            raise OptionsError(
                f"{what}: unknown finding kind {name!r}; kinds are {', '.join(KINDS)} "
                "(or 'all', 'default', and '-kind' to leave one out)")
        if remove:
            result -= names
        else:
            result |= names
    return frozenset(result)


def _parse_grace(value: object, what: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip().removesuffix("s").strip())
        except ValueError:
            raise OptionsError(f"{what} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"{what} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise OptionsError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _parse_patterns(value: str | Iterable[str] | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.splitlines() if p.strip())
    out = []
    for p in value:
        if not isinstance(p, str):
            raise OptionsError(f"{what} must be a list of patterns (strings), got {p!r}")
        if p.strip():
            out.append(p.strip())
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """What a check looks for and how patient it is."""

    #: finding kinds that count
    checks: frozenset[str] = DEFAULT_CHECKS
    #: fnmatch patterns on the coroutine's qualified name, the task name and the
    #: creation site ``file:line``; a finding or task that matches one is not reported
    ignore: tuple[str, ...] = ()
    #: seconds stragglers get to finish (retried with backoff)
    grace: float = 0.1
    #: run the garbage collector before judging, so that lost exceptions, tasks
    #: destroyed while pending and never-awaited coroutines show up in time
    gc: bool = True

    @classmethod
    def make(cls, checks: str | Iterable[str] | None = None,
             ignore: str | Iterable[str] | None = None, grace: float | str = 0.1,
             gc: bool = True) -> CheckSettings:
        """Validated settings (the errors name the argument that was wrong)."""
        return cls(checks=parse_checks(checks), ignore=_parse_patterns(ignore, "ignore"),
                   grace=_parse_grace(grace, "grace"), gc=bool(gc))

    def ignores(self, finding: Finding) -> bool:
        """Whether ``finding`` matches one of the ignore patterns."""
        if not self.ignore:
            return False
        names: list[str] = []
        if finding.task is not None:
            names.extend(_coro_names(finding.task.coro))
            names.append(finding.task.name)
        coro = finding.details.get("coro") if isinstance(finding.details, dict) else None
        if isinstance(coro, str):
            names.extend(_coro_names(coro))
        callback = finding.details.get("callback") if isinstance(finding.details, dict) else None
        if isinstance(callback, str) and callback:
            names.append(callback)
        return self._match(names, finding.site)

    def ignores_task(self, name: str, coro: str, site: Frame | None) -> bool:
        if not self.ignore:
            return False
        return self._match([*_coro_names(coro), name], site)

    def _match(self, names: list[str], site: Frame | None) -> bool:
        if site is not None:
            names = [*names, f"{site.file}:{site.line}", f"{_short(site.file)}:{site.line}"]
        for pattern in self.ignore:
            for name in names:
                if name and fnmatch.fnmatchcase(name, pattern):
                    return True
        return False


def _coro_names(full: str) -> list[str]:
    """``pkg.mod.Class.run`` is matched as itself and as each shorter dotted suffix
    (``mod.Class.run``, ``Class.run``, ``run``), so a pattern can leave the module out."""
    parts = full.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _short(path: str) -> str:
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def _is_framework_task(task: asyncio.Future[Any]) -> bool:
    coro = coro_of(task)
    code = getattr(coro, "cr_code", None)
    if code is None:
        return False
    qualname = getattr(coro, "__qualname__", "")
    filename = code.co_filename.replace("\\", "/")
    return any(qualname == q and filename.endswith(f) for f, q in _FRAMEWORK_TASKS)


# -- where findings reach a check ----------------------------------------------------------

_sinks: weakref.WeakKeyDictionary[Watcher, list[Callable[[Finding], None]]] = \
    weakref.WeakKeyDictionary()
_sinks_lock = threading.Lock()


def _forward(ref: weakref.ref[Watcher], finding: Finding) -> None:
    watcher = ref()
    if watcher is None:
        return
    for sink in list(_sinks.get(watcher, ())):
        sink(finding)


def subscribe(watcher: Watcher, sink: Callable[[Finding], None]) -> Callable[[], None]:
    """Send every new finding of ``watcher`` to ``sink``; returns the unsubscriber."""
    with _sinks_lock:
        sinks = _sinks.get(watcher)
        if sinks is None:
            sinks = _sinks[watcher] = []
            watcher.add_listener(functools.partial(_forward, weakref.ref(watcher)))
        sinks.append(sink)

    def unsubscribe() -> None:
        with _sinks_lock:
            current = _sinks.get(watcher)
            if current is not None and sink in current:
                current.remove(sink)
    return unsubscribe


def watch_loop(loop: asyncio.AbstractEventLoop, options: Options | None = None,
               **changes: Any) -> Watcher:
    """The watcher of ``loop``, attaching one if it has none: with ``options`` (built
    once by a caller that watches many loops), else :data:`TEST_OPTIONS` and ``changes``."""
    from ._loops import _attach, attach

    existing = getattr(loop, "_lw_watcher", None)
    if isinstance(existing, Watcher):
        return existing
    if options is not None:
        return _attach(loop, options)
    return attach(loop, **{**TEST_OPTIONS, **changes})


# -- the check ---------------------------------------------------------------------------


class _Loop:
    """One loop a check looks at, with what was there before."""

    __slots__ = ("watcher", "baseline", "audit_keys")

    def __init__(self, watcher: Watcher, baseline: set[int], audit_keys: set[Any]) -> None:
        self.watcher = watcher
        self.baseline = baseline
        self.audit_keys = audit_keys


class LeakCheck:
    """Findings made on some loops since a baseline, and stragglers swept with grace.

    This is the engine of the pytest plugin, :func:`clean_shutdown` and
    :class:`LoopwatchTestMixin`; most code wants one of those instead.
    """

    def __init__(self, settings: CheckSettings, *, when: str = "when the test ended",
                 exempt: dict[Any, set[int]] | None = None,
                 collect: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.when = when
        #: task ids that something bigger than the check owns (a module-scoped fixture),
        #: by owner; shared with whoever maintains it
        self.exempt = exempt if exempt is not None else {}
        self._collect = collect if collect is not None else _collect_garbage
        self.loops: dict[int, _Loop] = {}
        #: ids of tasks already judged, loopwatch's own, and the frameworks'
        self.handled: set[int] = set()
        self.own: set[int] = set()
        self._ignored: dict[int, bool] = {}
        self._inbox: deque[Finding] = deque()
        self._found: list[Finding] = []
        self._keys: dict[Any, int] = {}
        self.notes: list[str] = []
        self._unsubscribe: list[Callable[[], None]] = []

    # -- what is watched ---------------------------------------------------------

    def watch(self, watcher: Watcher, *, baseline: bool = True, subscribe_: bool = True) -> None:
        """Look at ``watcher``'s loop from now on. With ``baseline``, tasks pending now
        and timers scheduled now are not this check's business."""
        if watcher.serial in self.loops:
            return
        pending: set[int] = set()
        keys: set[Any] = set()
        if baseline and not watcher.closed:
            # Tasks a bigger owner keeps (a module-scoped fixture) are not in the
            # baseline: they are judged once that owner lets go of them.
            pending = {task_id(t) for t in watcher.live_tasks()}
            for ids in self.exempt.values():
                pending -= ids
            keys = {_key(f) for f in self._audits(watcher)}
        self.loops[watcher.serial] = _Loop(watcher, pending, keys)
        if subscribe_:
            self._unsubscribe.append(subscribe(watcher, self.deliver))

    def deliver(self, finding: Finding) -> None:
        """A finding made on a watched loop (any thread)."""
        self._inbox.append(finding)

    def watchers(self) -> list[Watcher]:
        return [s.watcher for s in self.loops.values()]

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    # -- stragglers ----------------------------------------------------------------

    def _skip(self, state: _Loop, task: asyncio.Future[Any]) -> bool:
        n = task_id(task)
        if n in state.baseline or n in self.handled or n in self.own:
            return True
        for ids in self.exempt.values():
            if n in ids:
                return True
        if _is_framework_task(task):
            self.handled.add(n)
            return True
        if self.settings.ignore:
            ignored = self._ignored.get(n)
            if ignored is None:
                name = task.get_name() if hasattr(task, "get_name") else ""
                get_coro = getattr(task, "get_coro", None)
                coro = coro_name(coro_of(task)) if get_coro is not None else ""
                site = pick_site(format_raw(getattr(task, "_lw_stack", ()) or ()))
                ignored = self._ignored[n] = self.settings.ignores_task(name, coro, site)
            if ignored:
                return True
        return False

    def candidates(self, state: _Loop) -> list[asyncio.Future[Any]]:
        """Tasks of the loop that would be stragglers if judged now (strong references:
        do not keep the list)."""
        loop = state.watcher.loop
        current = None
        try:
            if asyncio._get_running_loop() is loop:
                current = asyncio.current_task(loop)
        except RuntimeError:
            current = None
        out = []
        for task in state.watcher.live_tasks():
            if task is current or self._skip(state, task):
                continue
            out.append(task)
        return out

    def sweep(self, watcher: Watcher | None = None) -> None:
        """Judge the stragglers of loops that are open and not running, running each
        loop for the grace period when something is pending (synchronous form)."""
        states = [self.loops[watcher.serial]] if watcher is not None and \
            watcher.serial in self.loops else ([] if watcher is not None else
                                               list(self.loops.values()))
        for state in states:
            loop = state.watcher.loop
            if loop.is_closed() or loop.is_running() or not self.candidates(state):
                continue
            try:
                task = loop.create_task(self._settle(state), name="loopwatch-sweep")
                self.own.add(task_id(task))
                loop.run_until_complete(task)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # never break the test run over a sweep
                log.warning("loopwatch: the straggler sweep failed: %s: %s",
                            type(exc).__name__, exc, exc_info=exc)
                self.notes.append(f"straggler sweep failed: {type(exc).__name__}: {exc}")

    async def sweep_running(self) -> None:
        """Judge the stragglers of the running loop, from inside it (asynchronous form)."""
        loop = asyncio.get_running_loop()
        try:
            for state in list(self.loops.values()):
                if state.watcher.loop is loop and self.candidates(state):
                    current = asyncio.current_task()
                    if current is not None:
                        self.own.add(task_id(current))
                    await self._settle(state)
        except Exception as exc:  # a bug in loopwatch is not the program's failure
            log.warning("loopwatch: the straggler sweep failed: %s: %s",
                        type(exc).__name__, exc, exc_info=exc)
            self.notes.append(f"straggler sweep failed: {type(exc).__name__}: {exc}")

    async def _settle(self, state: _Loop) -> None:
        loop = state.watcher.loop
        grace = self.settings.grace
        if grace > 0:
            await asyncio.sleep(0)
            start = loop.time()
            delay = 0.001
            while self.candidates(state):
                left = grace - (loop.time() - start)
                if left <= 0:
                    break
                await asyncio.sleep(min(delay, left))
                delay *= 2
        left_tasks = self.candidates(state)
        if not left_tasks:
            return
        self._judge(state, left_tasks)
        await self._cancel(state, left_tasks)

    def _judge(self, state: _Loop, tasks: list[asyncio.Future[Any]]) -> None:
        watcher = state.watcher
        stuck, cycles, by_id = _cycle_picture(tasks, watcher)
        for cycle in cycles:
            try:
                finding = _cycle_finding(cycle, by_id, watcher)
            except Exception as exc:
                self.notes.append(f"could not describe an await cycle: {exc}")
                continue
            if not self.settings.ignores(finding):
                self._add(finding)
        del by_id
        for task in tasks:
            n = task_id(task)
            self.handled.add(n)
            try:
                info = watcher.info(task)
                finding = straggler_finding(info, when=self.when)
            except Exception as exc:  # a task that cannot be read is still counted
                self.notes.append(f"could not read task T{n}: {type(exc).__name__}: {exc}")
                continue
            if n in stuck:
                finding.message += ("; it waits in an await cycle, so loopwatch left it "
                                    "pending (Task.cancel() on a cycle recurses until "
                                    "RecursionError)")
                finding.details["await_cycle"] = True
            if self.settings.ignores(finding):
                continue
            self._add(finding)

    async def _cancel(self, state: _Loop, tasks: list[asyncio.Future[Any]]) -> None:
        stuck = _cycle_picture(tasks, state.watcher)[0]
        doomed = [t for t in tasks if task_id(t) not in stuck]
        for task in doomed:
            task.cancel("loopwatch: straggler cleanup")
        if not doomed:
            return
        done, pending = await asyncio.wait(doomed, timeout=max(CANCEL_TIMEOUT,
                                                              self.settings.grace))
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a cleaned-up straggler is not a lost error
        for task in pending:
            for f in self._found:
                if f.task is not None and f.task.id == f"T{task_id(task)}":
                    f.message += (f"; it was still running {CANCEL_TIMEOUT:g} s after "
                                  "loopwatch cancelled it")
                    f.details["survived_cancel"] = True

    # -- everything else -----------------------------------------------------------

    def _audits(self, watcher: Watcher) -> list[Finding]:
        """What the detectors (other than stragglers, judged here) see on the loop now."""
        found: list[Finding] = []
        if watcher.closed:
            return found
        for detector in list(watcher.detectors):
            if "straggler" in detector.kinds or type(detector).audit is Detector.audit:
                continue
            result = watcher.call(detector, "audit")
            if result:
                found.extend(result)
        return found

    def collect(self, *, garbage: bool = True) -> None:
        """Gather the findings made since the baseline: what the detectors' audits see
        now, then (after running the garbage collector, when configured) the ones
        delivered by the watchers."""
        # The audits first: they read live tasks (tasks waiting on each other in a
        # cycle may well be garbage that the collector is about to finalize).
        for state in self.loops.values():
            for finding in self._audits(state.watcher):
                key = _key(finding)
                if key in state.audit_keys:
                    continue
                state.audit_keys.add(key)
                self._consider(finding, state.baseline)
        if garbage and self.settings.gc:
            self._collect()
        while self._inbox:
            self._consider(self._inbox.popleft(), set())

    def _consider(self, finding: Finding, baseline: set[int]) -> None:
        if finding.kind in ("straggler", "destroyed_pending") and finding.task is not None:
            # The shutdown detector's view of tasks this check already judged, or that
            # are not the check's business; and the end of a straggler already reported
            # (one left pending in an await cycle is collected with its loop).
            n = _number(finding.task.id)
            if n is None or n in self.handled or n in self.own:
                return
            if finding.kind == "straggler" and (
                    n in baseline or any(n in ids for ids in self.exempt.values())
                    or any(n in s.baseline for s in self.loops.values())):
                return
        if self.settings.ignores(finding):
            return
        self._add(finding)

    def _add(self, finding: Finding) -> None:
        if finding.kind not in self.settings.checks:
            return
        key = finding.key
        if key is not None and key in self._keys:
            self._found[self._keys[key]] = finding
            return
        if key is not None:
            self._keys[key] = len(self._found)
        self._found.append(finding)

    def take(self) -> list[Finding]:
        """The findings gathered so far, in kind order; the check starts afresh."""
        found = sorted(self._found, key=lambda f: KINDS.index(f.kind))
        self._found = []
        self._keys = {}
        return found

    def all_notes(self, kinds: Iterable[str] | None = None) -> list[str]:
        """Notes of the watched loops: checks that cannot be observed there, and why.

        A note about one kind is kept only when that kind is checked (and, with
        ``kinds``, when it is among them: a report of stragglers does not need to say
        which timers uvloop hides)."""
        wanted = set(self.settings.checks if kinds is None else kinds)
        notes = list(self.notes)
        for state in self.loops.values():
            for note in state.watcher.all_notes():
                first = note.replace(":", " ").split(None, 1)[0] if note.strip() else ""
                if note not in notes and (first not in KINDS or first in wanted):
                    notes.append(note)
        return notes

    def report(self, findings: list[Finding]) -> Report:
        bases = sorted({s.watcher.base for s in self.loops.values()})
        return Report(findings=findings, notes=self.all_notes({f.kind for f in findings}),
                      scope="test", loop=",".join(bases))


def _number(ident: str) -> int | None:
    text = ident[1:] if ident[:1] in "Tt" else ident
    return int(text) if text.isdigit() else None


def _key(finding: Finding) -> Any:
    if finding.key is not None:
        return finding.key
    site = finding.site
    return (finding.kind, finding.task.id if finding.task else None,
            (site.file, site.line) if site else None, finding.message)


def _cycle_picture(tasks: list[asyncio.Future[Any]], watcher: Watcher) -> tuple[
        set[int], list[tuple[int, ...]], dict[int, asyncio.Future[Any]]]:
    """The await cycles that ``tasks`` are in or wait on, the ids of those of ``tasks``
    that reach one (cancelling any of them would recurse forever), and the tasks by id
    (strong references: drop them)."""
    by_id: dict[int, asyncio.Future[Any]] = {task_id(t): t for t in watcher.live_tasks()}
    for t in tasks:
        by_id.setdefault(task_id(t), t)
    edges: dict[int, Iterable[int]] = {}
    todo = [task_id(t) for t in tasks]
    while todo:
        n = todo.pop()
        if n in edges:
            continue
        task = by_id.get(n)
        edges[n] = waits_on(task) if task is not None else ()
        todo.extend(m for m in edges[n] if m not in edges)
    cycles = [tuple(c) for c in find_cycles(edges)]
    if not cycles:
        return set(), [], by_id
    bad = {n for cycle in cycles for n in cycle}
    changed = True
    while changed:
        changed = False
        for n, targets in edges.items():
            if n not in bad and any(m in bad for m in targets):
                bad.add(n)
                changed = True
    return {task_id(t) for t in tasks} & bad, cycles, by_id


def _cycle_finding(cycle: tuple[int, ...], by_id: dict[int, asyncio.Future[Any]],
                   watcher: Watcher) -> Finding:
    """An ``await_cycle`` finding (the same key as the parked detector's, so that one
    cycle seen by both is reported once)."""
    from ._awaits import describe
    from ._detectors.parked import CYCLE_HINT, await_site
    from ._watcher import task_ref

    refs = []
    chains = []
    sites = []
    for n in cycle:
        task = by_id[n]
        aw = describe(task, watcher.loop)
        refs.append(task_ref(task))
        chains.append(list(aw.frames))
        sites.append(await_site(aw.frames))
    parts = []
    for i, ref in enumerate(refs):
        nxt = refs[(i + 1) % len(refs)]
        site = sites[i]
        at = f" at {site.file}:{site.line}" if site is not None else ""
        parts.append(f"{ref.id} {ref.name!r} awaits {nxt.id}{at}")
    return Finding(
        kind="await_cycle",
        message=(f"{len(refs)} tasks wait on each other in a cycle and none can finish: "
                 + "; ".join(parts)),
        site=sites[0],
        task=refs[0],
        stacks={f"await {ref.id}": chain for ref, chain in zip(refs, chains, strict=True) if chain},
        hint=CYCLE_HINT,
        details={"tasks": [ref.id for ref in refs]},
        key=("await_cycle", cycle),
    )


def _collect_garbage() -> None:
    gc.collect()


class _OriginTracking:
    """Coroutine origin tracking switched on for this thread, and restored after."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.before: int | None = None

    def start(self) -> None:
        before = sys.get_coroutine_origin_tracking_depth()
        if before < self.depth:
            self.before = before
            sys.set_coroutine_origin_tracking_depth(self.depth)

    def stop(self) -> None:
        if self.before is not None:
            sys.set_coroutine_origin_tracking_depth(self.before)
            self.before = None


#: frames of coroutine origin recorded in tests: the creating line and its caller (the
#: user's line when a library helper such as anyio's ``start_soon`` made the coroutine).
#: Every coroutine made while a test runs pays for each frame: on 3.13 a pytest-asyncio
#: test paid about 0.12M instructions at depth 8, 0.07M at 4, 0.04M at 2, 0.015M at 1.
ORIGIN_DEPTH = 2


# -- rendering ------------------------------------------------------------------------------


def format_report(report: Report, title: str, *, width: int = 100, footer: str = "") -> str:
    """The plain text of a failure: a title line, each finding rendered, notes, a footer."""
    from rich.console import Group, RenderableType
    from rich.text import Text

    from ._render import finding_renderable, render_text

    parts: list[RenderableType] = []
    for finding in report.findings:
        parts.append(finding_renderable(finding))
        parts.append(Text(""))
    for note in report.notes:
        parts.append(Text(f"note: {note}"))
    body = render_text(Group(*parts), width=width).rstrip()
    text = f"{title}\n\n{body}"
    if footer:
        text += f"\n\n{footer}"
    return text


# -- the public tools ---------------------------------------------------------------------


def assert_clean(report: Report | Watcher, *, checks: str | Iterable[str] | None = None,
                 ignore: str | Iterable[str] | None = None) -> None:
    """Raise :class:`~loopwatch.LoopLeakError` when ``report`` has findings.

    ``report`` is a :class:`~loopwatch.Report` or a :class:`~loopwatch.Watcher` (its
    report so far). ``checks`` keeps only those kinds (default: every kind in the
    report); ``ignore`` drops findings that match a pattern (coroutine qualified name,
    task name, creation site ``file:line``).
    """
    if isinstance(report, Watcher):
        report = report.report()
    if not isinstance(report, Report):
        raise TypeError(f"assert_clean() needs a loopwatch.Report or a Watcher, got {report!r}")
    settings = CheckSettings(checks=parse_checks(checks, base=frozenset(KINDS)),
                             ignore=_parse_patterns(ignore, "ignore"))
    kept = [f for f in report.findings if f.kind in settings.checks and not settings.ignores(f)]
    if kept:
        filtered = dataclasses.replace(report, findings=kept, notes=list(report.notes))
        raise LoopLeakError(filtered, format_report(
            filtered, f"loopwatch: the loop was left unclean ({_counts(filtered)})"))


def _counts(report: Report) -> str:
    return report.summary().split(": ", 2)[-1]


class CleanShutdown:
    """Checks that a block of code leaves its loops clean; see :func:`clean_shutdown`."""

    def __init__(self, *, checks: str | Iterable[str] | None = None,
                 ignore: str | Iterable[str] | None = None, grace: float = 0.1,
                 gc: bool = True, base: str | None = None) -> None:
        self.settings = CheckSettings.make(checks, ignore, grace, gc)
        if base not in (None, "asyncio", "uvloop"):
            raise OptionsError(f"clean_shutdown() base must be None, 'asyncio' or 'uvloop', "
                               f"got {base!r}")
        self.base = base
        #: the report of the block, once it has ended
        self.report: Report | None = None
        self._check: LeakCheck | None = None
        self._origins = _OriginTracking(ORIGIN_DEPTH)
        self._policy: Any = None
        self._seen: list[Watcher] = []
        self._on_new: Callable[[Watcher], None] | None = None
        self._mode = ""

    # -- async with: the running loop --------------------------------------------

    @property
    def watcher(self) -> Watcher:
        """The watcher of the loop being checked (``async with`` form)."""
        if self._check is None or not self._check.loops:
            raise NotWatchedError("clean_shutdown: no loop is being checked yet")
        return next(iter(self._check.loops.values())).watcher

    async def __aenter__(self) -> CleanShutdown:
        self._enter("async")
        loop = asyncio.get_running_loop()
        watcher = watch_loop(loop)
        check = self._check = LeakCheck(self.settings, when="when the block ended")
        check.watch(watcher)
        current = asyncio.current_task()
        if current is not None:
            check.own.add(task_id(current))
        self._origins.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        check = self._check
        assert check is not None
        try:
            await check.sweep_running()
            check.collect()
            self.report = check.report(check.take())
        finally:
            self._origins.stop()
            check.close()
            self._mode = ""
        if exc_type is None:
            self._raise()

    # -- with: loops created inside ----------------------------------------------

    @property
    def watchers(self) -> list[Watcher]:
        """The watchers of loops created inside the block (``with`` form)."""
        return list(self._seen)

    def loop_factory(self) -> asyncio.AbstractEventLoop:
        """Make a watched loop: for ``asyncio.run(..., loop_factory=cs.loop_factory)``,
        ``asyncio.Runner`` and ``anyio.run(..., backend_options={"loop_factory": ...})``."""
        from ._loops import loop_factory

        return loop_factory(self.base, log=False, track_origins=True)()

    def __enter__(self) -> CleanShutdown:
        from . import _watcher
        from ._loops import WatchedEventLoopPolicy

        self._enter("sync")
        self._seen = []
        self._on_new = self._seen.append
        _watcher.on_new_watcher.append(self._on_new)
        if sys.version_info < (3, 14):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old = asyncio.get_event_loop_policy()
                base = _policy_base(old) if self.base is None else self.base
                asyncio.set_event_loop_policy(WatchedEventLoopPolicy(
                    base, log=False, track_origins=True))
            self._policy = old
        self._origins.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from . import _watcher

        try:
            self._origins.stop()
            if self._on_new is not None and self._on_new in _watcher.on_new_watcher:
                _watcher.on_new_watcher.remove(self._on_new)
            if self._policy is not None:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    asyncio.set_event_loop_policy(self._policy)
                self._policy = None
            check = LeakCheck(self.settings, when="when the loop shut down")
            for watcher in self._seen:
                check.watch(watcher, baseline=False, subscribe_=False)
                for finding in watcher.findings():
                    check.deliver(finding)
            if self.settings.gc:
                # Findings made by the collector reach the watchers' listeners; these
                # loops were created inside the block, so everything on them counts.
                subs = [subscribe(w, check.deliver) for w in self._seen]
                try:
                    check.collect()
                finally:
                    for unsubscribe in subs:
                        unsubscribe()
            else:
                check.collect(garbage=False)
            for watcher in self._seen:
                if not watcher.closed:
                    # A loop still open: what would be left if it shut down now.
                    for state_task in check.candidates(check.loops[watcher.serial]):
                        info = watcher.info(state_task)
                        check._add(straggler_finding(info, when="when the block ended"))
            self.report = check.report(check.take())
        finally:
            self._mode = ""
            self._seen_done()
        if exc_type is None:
            self._raise()

    def _seen_done(self) -> None:
        self._on_new = None

    # -- shared ------------------------------------------------------------------

    def _enter(self, mode: str) -> None:
        if self._mode:
            raise RuntimeError("clean_shutdown() is not reentrant: make a new one for each block")
        self._mode = mode
        self.report = None

    def _raise(self) -> None:
        report = self.report
        if report is not None and report.findings:
            raise LoopLeakError(report, format_report(
                report, f"loopwatch: the block left its loop unclean ({_counts(report)})",
                footer="loopwatch cancelled the stragglers it reported."
                if report.of_kind("straggler") and self._check is not None else ""))


def _policy_base(policy: Any) -> Any:
    """The base loop a watched policy should build on, to keep what ``policy`` made."""
    if type(policy) is asyncio.DefaultEventLoopPolicy:
        return None
    module = type(policy).__module__ or ""
    if module.startswith("uvloop"):
        return "uvloop"
    return policy.new_event_loop


def clean_shutdown(*, checks: str | Iterable[str] | None = None,
                   ignore: str | Iterable[str] | None = None, grace: float = 0.1,
                   gc: bool = True, base: str | None = None) -> CleanShutdown:
    """Check that a block of code leaves its event loop clean.

    ``async with clean_shutdown():`` watches the running loop (attaching to it if it
    is not watched) and, when the block ends, gives tasks created inside that are
    still pending ``grace`` seconds to finish, reports and cancels the rest, runs the
    garbage collector, and raises :class:`~loopwatch.LoopLeakError` with the report
    when anything was found (never while another exception is propagating).

    ``with clean_shutdown():`` around synchronous code watches every loop created
    inside (an event loop policy for ``asyncio.run``, ``asyncio.Runner`` and
    ``anyio.run``; ``cs.loop_factory`` for code that takes a loop factory, such as
    anyio with ``use_uvloop``) and checks what their shutdown left behind.

    ``checks`` (kinds, default :data:`DEFAULT_CHECKS`), ``ignore`` (fnmatch patterns on
    the coroutine's qualified name, the task name, the creation site ``file:line``),
    ``grace`` (seconds), ``gc`` (collect garbage first), ``base`` (the loop the
    ``with`` form makes: ``"asyncio"``, ``"uvloop"``, default: what the current policy
    makes). After the block, the report is in ``.report``.
    """
    return CleanShutdown(checks=checks, ignore=ignore, grace=grace, gc=gc, base=base)


# -- unittest -----------------------------------------------------------------------------


class LoopwatchTestMixin:
    """Fail an ``IsolatedAsyncioTestCase`` test that leaves its loop unclean::

        class TestServer(loopwatch.testing.LoopwatchTestMixin,
                         unittest.IsolatedAsyncioTestCase):
            loopwatch_ignore = ("*Heartbeat.run",)

    Before ``setUp`` the test's loop is watched; after the last cleanup (so after
    ``asyncTearDown`` and every ``addAsyncCleanup``), on the same loop, stragglers get
    ``loopwatch_grace`` seconds, the rest are reported and cancelled, the garbage
    collector runs, and the test fails with :class:`~loopwatch.LoopLeakError` carrying
    the report. A test that already failed is not failed again; its leaks are still
    cleaned up. The report is in ``self.loopwatch_report`` afterwards.
    """

    #: finding kinds checked (a comma-separated string or a list; default: DEFAULT_CHECKS)
    loopwatch_checks: ClassVar[str | Iterable[str] | None] = None
    #: patterns of tasks and findings not to report
    loopwatch_ignore: ClassVar[Iterable[str]] = ()
    #: seconds stragglers get to finish
    loopwatch_grace: ClassVar[float] = 0.1
    #: run the garbage collector before judging
    loopwatch_gc: ClassVar[bool] = True

    loopwatch_report: Report | None = None
    _lw_check: LeakCheck | None = None
    _lw_failed: bool = False
    _lw_origins: _OriginTracking | None = None

    def _lw_loop(self) -> asyncio.AbstractEventLoop | None:
        runner = getattr(self, "_asyncioRunner", None)
        if runner is not None:
            loop: asyncio.AbstractEventLoop = runner.get_loop()
            return loop
        return getattr(self, "_asyncioTestLoop", None)

    def _lw_begin(self) -> None:
        self._lw_failed = False
        self.loopwatch_report = None
        loop = self._lw_loop()
        if loop is None:
            return
        settings = CheckSettings.make(self.loopwatch_checks, self.loopwatch_ignore,
                                      self.loopwatch_grace, self.loopwatch_gc)
        check = self._lw_check = LeakCheck(settings)
        check.watch(watch_loop(loop))
        calls = getattr(self, "_asyncioCallsTask", None)  # 3.10: the runner task
        if calls is not None:
            check.own.add(task_id(calls))
        self._lw_origins = _OriginTracking(ORIGIN_DEPTH)
        self._lw_origins.start()
        self.addAsyncCleanup(self._lw_check_loop)  # type: ignore[attr-defined]

    async def _lw_check_loop(self) -> None:
        check = self._lw_check
        if check is None:
            return
        try:
            await check.sweep_running()
            check.collect()
            report = self.loopwatch_report = check.report(check.take())
        finally:
            check.close()
            self._lw_check = None
        if report.findings and not self._lw_failed:
            raise LoopLeakError(report, format_report(
                report, f"loopwatch: {self} left its loop unclean ({_counts(report)})",
                footer=_FOOTER_UNITTEST))

    # IsolatedAsyncioTestCase's runner hooks (3.8 to 3.13): begin before setUp, and
    # note any failure so that a failed test is not failed again for its leaks.

    def _callSetUp(self) -> None:
        self._lw_begin()
        with self._lw_noting():
            super()._callSetUp()  # type: ignore[misc]

    def _callTestMethod(self, method: Any) -> None:
        with self._lw_noting():
            super()._callTestMethod(method)  # type: ignore[misc]

    def _callTearDown(self) -> None:
        with self._lw_noting():
            super()._callTearDown()  # type: ignore[misc]

    def _callCleanup(self, function: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(function, "__func__", None) is LoopwatchTestMixin._lw_check_loop:
            try:
                super()._callCleanup(function, *args, **kwargs)  # type: ignore[misc]
            finally:
                # Here, not inside the check: a loop in debug mode (as this test case's
                # is) puts back the depth it found when it stops running.
                if self._lw_origins is not None:
                    self._lw_origins.stop()
                    self._lw_origins = None
            return
        with self._lw_noting():
            super()._callCleanup(function, *args, **kwargs)  # type: ignore[misc]

    @contextlib.contextmanager
    def _lw_noting(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._lw_failed = True
            raise


_FOOTER_UNITTEST = ("loopwatch cancelled the stragglers it reported. To accept a task, add a "
                    "pattern to loopwatch_ignore; to check other kinds, set loopwatch_checks.")
