"""Resources left behind: ``executor_thread``, ``asyncgen_unfinalized``, ``unclosed_resource``.

- ``executor_thread``: ``run_in_executor(None, func)`` is wrapped (an instance
  attribute of the loop) so that each job submitted to the loop's default executor
  carries where it was submitted and knows, while it runs, which thread runs it.
  Jobs still running when the loop closes are the findings: ``asyncio.run`` waits
  for them (on 3.12+ up to five minutes), a loop closed by hand does not, and the
  interpreter then waits for the thread at exit.
- ``asyncgen_unfinalized``: the loop's ``_asyncgen_firstiter_hook`` and
  ``_asyncgen_finalizer_hook`` are wrapped (asyncio and uvloop both look them up by
  name when they start running). CPython records no creation site for an async
  generator; its first iteration is the earliest moment anyone hears of it, so the
  caller of the first-iteration hook is its site (for ``async for x in gen()`` it is
  the line that made it). Generators still unfinished when the loop closes (nobody
  called ``shutdown_asyncgens``, or their ``aclose()`` was queued but never ran) are
  the findings: their ``finally`` blocks never ran.
- ``unclosed_resource``: when the loop closes, transports still open (asyncio's
  selector loop keeps them in ``_transports``), servers still serving (asyncio's
  selector knows their listening sockets) and client connections or servers opened
  through ``create_connection`` / ``create_server`` (wrapped, to learn the line that
  opened them; this is how they are seen on uvloop) are the findings. Resources
  garbage-collected while open announce themselves only with a ``ResourceWarning``:
  loopwatch listens to the warnings the program shows (``warnings._showwarnmsg``,
  chained), and with ``resource_warnings=True`` (what ``loopwatch run`` uses) it adds
  one filter of its own, for ``ResourceWarning`` only, and keeps the warnings the
  program would not have shown to itself. The global filters are never changed in
  library mode.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import re
import sys
import threading
import time
import tracemalloc
import warnings
import weakref
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from .._frames import Frame, RawStack, format_raw, is_library, pick_site
from .._records import short_repr
from .._report import Finding
from .closed import (
    EventDetector,
    LoopPatches,
    base_class,
    callable_name,
    callable_site,
    hooks,
    is_loopwatch_file,
    pass_through,
    raw_from,
    wrapper_of,
)

__all__ = [
    "AsyncgenDetector",
    "ExecutorThreadDetector",
    "UnclosedResourceDetector",
]


# -- executor_thread ----------------------------------------------------------------------

EXECUTOR_HINT = (
    "make the blocking call finish before shutdown (a timeout, or a stop flag it checks), "
    "and await the job or loop.shutdown_default_executor() before closing the loop "
    "(asyncio.run does); otherwise the interpreter waits for this thread at exit"
)


class _Job:
    """A callable submitted to the default executor, with where it came from."""

    __slots__ = ("func", "raw", "thread", "started", "done", "__weakref__")

    def __init__(self, func: Callable[..., Any], raw: RawStack) -> None:
        self.func = func
        self.raw = raw
        self.thread: str | None = None
        self.started = 0.0
        self.done = False

    def __call__(self, *args: Any) -> Any:
        self.thread = threading.current_thread().name
        self.started = time.monotonic()
        try:
            return self.func(*args)
        finally:
            self.done = True
            self.func = None  # type: ignore[assignment]  # let its arguments go


def _is_coroutine_function(func: Any) -> bool:
    return inspect.iscoroutinefunction(func) or asyncio.iscoroutine(func) or \
        getattr(func, "_is_coroutine", None) is not None


class ExecutorThreadDetector(EventDetector):
    name = "executor_thread"
    kinds = ("executor_thread",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        self._jobs: weakref.WeakSet[_Job] = weakref.WeakSet()
        self._patches: LoopPatches | None = None
        self._note = ""

    def install(self) -> None:
        self._patches = LoopPatches(self.watcher.loop)
        if not self._patches.wrap("run_in_executor", self._wrapper):
            self._note = (f"executor_thread: {type(self.watcher.loop).__name__} takes no "
                          "attributes, so executor jobs cannot be followed")

    def uninstall(self) -> None:
        if self._patches is not None:
            self._patches.undo()
            self._patches = None

    def notes(self) -> list[str]:
        return [self._note] if self._note else []

    def _wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        getframe = sys._getframe

        def run_in_executor(executor: Any, func: Any, *args: Any) -> Any:
            if executor is None and self.enabled and callable(func) \
                    and not _is_coroutine_function(func):
                try:
                    job = _Job(func, raw_from(getframe(1),
                                              max(self.watcher.options.stack_depth, 1)))
                    self._jobs.add(job)
                    func = job
                except Exception as exc:
                    self.failed(exc)
            return original(executor, func, *args)

        run_in_executor.__wrapped__ = original  # type: ignore[attr-defined]
        pass_through(run_in_executor.__code__)
        return run_in_executor

    def running_jobs(self) -> list[_Job]:
        for _ in range(100):
            try:
                return [j for j in list(self._jobs) if j.thread is not None and not j.done]
            except RuntimeError:  # the set changed in another thread
                continue
        return []

    def before_close(self) -> None:
        now = time.monotonic()
        for job in self.running_jobs():
            frames = format_raw(job.raw)
            site = pick_site(frames)
            func = callable_name(job.func) if job.func is not None else "?"
            running = now - job.started
            where = f"; submitted at {site.file}:{site.line}" if site else ""
            self.watcher.add_finding(Finding(
                kind="executor_thread",
                message=(f"default executor thread {job.thread!r} was still running {func}() "
                         f"when the loop closed (for {running:.3g} s){where}"),
                site=site,
                stacks={"submitted": frames},
                hint=EXECUTOR_HINT,
                details={"thread": job.thread, "func": func, "running_for": round(running, 6)},
                key=("executor_thread", id(job)),
            ))


# -- asyncgen_unfinalized ---------------------------------------------------------------------

ASYNCGEN_HINT = (
    "call `await loop.shutdown_asyncgens()` before loop.close() (asyncio.run does), or close "
    "the generator yourself: `async with contextlib.aclosing(gen()) as g: async for x in g:`"
)


class _GenRef(weakref.ref):  # type: ignore[type-arg]
    __slots__ = ("key", "raw", "name")
    key: int
    raw: RawStack
    name: str


def _gen_name(agen: Any) -> str:
    qualname = getattr(agen, "__qualname__", None) or type(agen).__name__
    frame = getattr(agen, "ag_frame", None)
    module = frame.f_globals.get("__name__") if frame is not None else None
    return f"{module}.{qualname}" if module else str(qualname)


def _unfinished(agen: Any) -> bool:
    return getattr(agen, "ag_frame", None) is not None


_ASYNCGEN_HOOKS = ("_asyncgen_firstiter_hook", "_asyncgen_finalizer_hook")


def note_first(det: AsyncgenDetector, agen: Any, frame: FrameType) -> None:
    """``agen`` is iterated for the first time, by ``frame``."""
    if det.enabled:
        try:
            det._first(agen, frame)
        except Exception as exc:
            det.failed(exc)


def note_finalizing(det: AsyncgenDetector, agen: Any) -> None:
    """``agen`` was handed to the loop's finalizer hook."""
    if det.enabled:
        try:
            det._finalizing(agen)
        except Exception as exc:
            det.failed(exc)


def _firstiter(det: AsyncgenDetector, original: Callable[[Any], Any], agen: Any) -> Any:
    """A watched loop's async generator first-iteration hook."""
    note_first(det, agen, sys._getframe(1))
    return original(agen)


def _finalizer(det: AsyncgenDetector, original: Callable[[Any], Any], agen: Any) -> Any:
    """A watched loop's async generator finalizer hook."""
    note_finalizing(det, agen)
    return original(agen)


class AsyncgenDetector(EventDetector):
    name = "asyncgen_unfinalized"
    kinds = ("asyncgen_unfinalized",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        #: generators first iterated on this loop: id -> weak reference with the site
        self._gens: dict[int, _GenRef] = {}
        #: generators whose weak reference was just cleared: their finalizer may follow
        self._dying: dict[int, tuple[RawStack, str]] = {}
        #: generators handed to the finalizer hook while the loop is open (their
        #: ``aclose()`` is queued; the queued call holds them anyway)
        self._closing: dict[int, tuple[Any, RawStack, str]] = {}
        self._prune_at = 64
        self._patches: LoopPatches | None = None
        self._note = ""

    def install(self) -> None:
        loop = self.watcher.loop
        target: Any = loop
        if hooks(loop, _ASYNCGEN_HOOKS):  # the loop's class calls this detector
            self.watcher.hook_asyncgens = self
            base = base_class(loop)
            original: Any = getattr(base, _ASYNCGEN_HOOKS[0]).__get__(loop, base)
        else:
            patches = LoopPatches(loop)
            self._patches = patches
            # (both in one pass: a loop per test pays for each)
            if not all(getattr(loop, name, None) is not None for name in _ASYNCGEN_HOOKS) or \
                    patches.wrap_each(_ASYNCGEN_HOOKS, self._hook_wrapper):
                self._note = (f"asyncgen_unfinalized: {type(loop).__name__} has no async "
                              "generator hooks that loopwatch can wrap, so generators are not "
                              "followed")
                return
            original = target._asyncgen_firstiter_hook.__wrapped__
        # Attached to a loop that is running now: its hooks are already installed.
        firstiter, _ = sys.get_asyncgen_hooks()
        if firstiter is not None and firstiter == original:
            sys.set_asyncgen_hooks(firstiter=target._asyncgen_firstiter_hook,
                                   finalizer=target._asyncgen_finalizer_hook)

    def uninstall(self) -> None:
        if self.watcher.hook_asyncgens is self:
            self.watcher.hook_asyncgens = None
        if self._patches is not None:
            self._patches.undo()
            self._patches = None
        self._closing.clear()

    def notes(self) -> list[str]:
        return [self._note] if self._note else []

    def _hook_wrapper(self, name: str, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return wrapper_of(_firstiter if name == "_asyncgen_firstiter_hook" else _finalizer,
                          self, original)

    def _first(self, agen: Any, frame: FrameType) -> None:
        key = id(agen)
        ref = _GenRef(agen, self._forget)
        ref.key = key
        ref.raw = raw_from(frame, max(self.watcher.options.stack_depth, 1))
        ref.name = _gen_name(agen)
        self._dying.pop(key, None)
        self._gens[key] = ref

    def _forget(self, ref: _GenRef) -> None:
        # A generator's weak references are cleared before its finalizer hook runs
        # (SPEC section 9): keep its site a moment longer for that hook.
        if self._gens.get(ref.key) is ref:
            del self._gens[ref.key]
        dying = self._dying
        dying[ref.key] = (ref.raw, ref.name)
        while len(dying) > 256:
            dying.pop(next(iter(dying)), None)

    def _finalizing(self, agen: Any) -> None:
        entry = self._dying.pop(id(agen), None)
        if entry is None or self.watcher.closed or self.watcher.loop.is_closed():
            return
        # No new weak reference here: an object that is not resurrected by its finalizer
        # would leave it dangling. The queued aclose() holds the generator anyway.
        self._closing[id(agen)] = (agen, entry[0], entry[1])
        if len(self._closing) >= self._prune_at:
            for key, (gen, _, _) in list(self._closing.items()):
                if not _unfinished(gen):
                    del self._closing[key]
            self._prune_at = max(64, 2 * len(self._closing))

    def before_close(self) -> None:
        left: list[tuple[RawStack, str]] = []
        for ref in list(self._gens.values()):
            agen = ref()
            if agen is not None and _unfinished(agen):
                left.append((ref.raw, ref.name))
        for agen, raw, name in list(self._closing.values()):
            if _unfinished(agen):
                left.append((raw, name))
        self._closing.clear()
        groups: dict[Any, Finding] = {}
        for raw, name in left:
            frames = format_raw(raw)
            site = pick_site(frames)
            key = ("asyncgen_unfinalized", name, site.file if site else "",
                   site.line if site else 0)
            seen = groups.get(key)
            if seen is not None:
                seen.details["count"] += 1
                seen.message = (f"{seen.details['count']} async generators {name} were not "
                                "finalized before the loop closed: their cleanup (finally "
                                "blocks, async with exits) never ran")
                continue
            where = f" (first iterated at {site.file}:{site.line})" if site else ""
            groups[key] = Finding(
                kind="asyncgen_unfinalized",
                message=(f"async generator {name} was not finalized before the loop closed: "
                         f"its cleanup (finally blocks, async with exits) never ran{where}"),
                site=site,
                stacks={"first_iteration": frames},
                hint=ASYNCGEN_HINT,
                details={"generator": name, "count": 1},
                key=key,
            )
        for finding in groups.values():
            self.watcher.add_finding(finding)


# -- unclosed_resource ------------------------------------------------------------------------

UNCLOSED_HINT = (
    "close what you open: `async with server:` / server.close() + await "
    "server.wait_closed(), writer.close() + await writer.wait_closed(), transport.close(); "
    "before the loop closes"
)

#: loop methods that open something, wrapped to learn the line that opened it
_OPENERS = ("create_connection", "create_server", "create_unix_connection", "create_unix_server")

_FILTER_MARK = "(?#loopwatch)"
_HEX = re.compile(r"0x[0-9a-fA-F]+")


class _ResRef(weakref.ref):  # type: ignore[type-arg]
    __slots__ = ("key", "raw", "method", "handles")
    key: int
    raw: RawStack
    method: str
    #: addresses in its repr (uvloop names a transport by its handle's address)
    handles: tuple[str, ...]


_wlock = threading.RLock()  # RLock: a weak reference callback may run under it
#: detectors that listen to ResourceWarnings (weak), oldest first, and whether each
#: asked for them to be turned on (``resource_warnings=True``)
_listeners: list[tuple[weakref.ref[UnclosedResourceDetector], bool]] = []
_previous_show: Any = None
#: whether loopwatch ever added its ResourceWarning filter (``resource_warnings=True``)
_filtered = False
#: the detector whose loop is closing in this thread (uvloop warns during close)
_closing = threading.local()


def _show_warning(msg: Any) -> None:
    """Installed as ``warnings._showwarnmsg`` while a detector listens."""
    resource = False
    try:
        resource = issubclass(msg.category, ResourceWarning)
        if resource:
            _resource_warning(msg)
    except Exception:
        pass
    previous = _previous_show
    if previous is None:
        return
    if resource and _forcing():
        action = _program_action(msg)
        if action == "ignore":
            return  # shown only because loopwatch turned ResourceWarnings on
        if action == "error":
            raise msg.message  # what the program's own filter would have done
    previous(msg)


def _forcing() -> bool:
    return any(force and ref() is not None for ref, force in list(_listeners))


def _resource_warning(msg: Any) -> bool:
    text = str(msg.message)
    source = getattr(msg, "source", None)
    if not text.startswith(("unclosed transport", "unclosed resource <", "unclosed <socket.socket",
                            "unclosed <StreamWriter")):
        return False
    det = _warning_target(source)
    if det is None or not det.enabled:
        return False
    try:
        det.from_warning(text, source, msg)
    except Exception as exc:
        det.failed(exc)
    return True


def _warning_target(source: Any) -> UnclosedResourceDetector | None:
    dets = [r() for r, _ in list(_listeners)]
    live = [d for d in dets if d is not None]
    loop = getattr(source, "_loop", None)
    if loop is not None:
        for det in live:
            if det.watcher.loop is loop:
                return det
        return None
    closing: UnclosedResourceDetector | None = getattr(_closing, "detector", None)
    if closing is not None and closing in live:
        return closing
    running = asyncio._get_running_loop()
    if running is not None:
        for det in live:
            if det.watcher.loop is running:
                return det
    return None


def _program_action(msg: Any) -> str:
    """What the program's own filters (not loopwatch's) say about this warning."""
    text = str(msg.message)
    filename = str(getattr(msg, "filename", "") or "")
    module = os.path.splitext(os.path.basename(filename))[0]
    lineno = int(getattr(msg, "lineno", 0) or 0)
    for action, message, category, mod, ln in list(warnings.filters):
        if message is not None and getattr(message, "pattern", None) == _FILTER_MARK:
            continue
        if (message is None or message.match(text)) and issubclass(msg.category, category) \
                and (mod is None or mod.match(module)) and (ln == 0 or lineno == ln):
            return str(action)
    return str(getattr(warnings, "defaultaction", "default"))


def _listen(det: UnclosedResourceDetector, *, force: bool) -> None:
    global _previous_show
    with _wlock:
        _listeners.append((weakref.ref(det, _gone), force))
        if force or _filtered:
            _settle()
            return
        current = getattr(warnings, "_showwarnmsg", None)
        if current is _show_warning:
            return  # the hook is in place, and no filter changes
        if len(_listeners) == 1 and current is not None:
            # the first listener, and no filter of loopwatch's to add or remove: only the
            # hook goes in (what _settle would do, without its walks; a loop per test joins)
            _previous_show = current
            warnings._showwarnmsg = _show_warning  # type: ignore[attr-defined]
            return
        _settle()


def _unlisten(det: UnclosedResourceDetector) -> None:
    global _previous_show
    with _wlock:
        for i, (ref, _) in enumerate(_listeners):
            if ref() is det:
                del _listeners[i]
                break
        if not _listeners and not _filtered and _previous_show is not None and \
                getattr(warnings, "_showwarnmsg", None) is _show_warning:
            # the last listener left, and loopwatch never added a filter: only the hook
            # goes (what _settle would do, without its walks; a loop per test leaves)
            warnings._showwarnmsg = _previous_show  # type: ignore[attr-defined]
            _previous_show = None
            return
        _settle()


def _gone(ref: Any) -> None:  # a detector was collected without being uninstalled
    with _wlock:
        _listeners[:] = [(r, force) for r, force in _listeners if r is not ref]
        _settle()


def _settle() -> None:
    """Put loopwatch's warning hook and filter in place, or take them away, to match
    the listeners alive now."""
    global _previous_show
    live = [(ref, force) for ref, force in _listeners if ref() is not None]
    _listeners[:] = live
    force = False
    for _, wants in live:  # (not any() over a generator: this runs twice a test)
        if wants:
            force = True
            break
    global _filtered
    # The filters are read only once loopwatch has ever added its own (the common case,
    # a loop per test in library mode, never does).
    ours = [f for f in warnings.filters if getattr(f[1], "pattern", None) == _FILTER_MARK] \
        if force or _filtered else []
    if force and not ours:
        _filtered = True
        warnings.filterwarnings("always", message=_FILTER_MARK, category=ResourceWarning)
    elif ours and not force:
        kept = [f for f in warnings.filters if getattr(f[1], "pattern", None) != _FILTER_MARK]
        warnings.filters[:] = kept  # type: ignore[index]
        mutated = getattr(warnings, "_filters_mutated", None)
        if mutated is not None:
            mutated()
    current = getattr(warnings, "_showwarnmsg", None)
    if live and current is not None and current is not _show_warning:
        _previous_show = current
        warnings._showwarnmsg = _show_warning  # type: ignore[attr-defined]
    elif not live and current is _show_warning and _previous_show is not None:
        warnings._showwarnmsg = _previous_show  # type: ignore[attr-defined]
        _previous_show = None
    # else: somebody wrapped ours; it stays in their chain and passes straight through


def _class_site(cls: type) -> Frame | None:
    try:
        file = inspect.getsourcefile(cls)
        _, line = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    if not file:
        return None
    return Frame(os.path.abspath(file), line, cls.__qualname__)


def _tracemalloc_stack(obj: Any) -> list[Frame]:
    if not tracemalloc.is_tracing():
        return []
    try:
        tb = tracemalloc.get_object_traceback(obj)
    except Exception:
        return []
    if tb is None:
        return []
    return [Frame(os.path.abspath(f.filename), f.lineno, "?") for f in tb]


def _open_and_note(det: UnclosedResourceDetector, method: str, original: Callable[..., Any],
                   *args: Any, **kwargs: Any) -> Any:
    """``loop.<method>`` while ``det`` watches: the opening line is noted."""
    return open_and_note(det, method, original, sys._getframe(1), args, kwargs)


def open_and_note(det: UnclosedResourceDetector, method: str, original: Callable[..., Any],
                  frame: FrameType, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``original(*args, **kwargs)``, the loop's ``<method>`` called from ``frame``: the
    coroutine that opens and notes the opening line."""
    if not det.enabled:
        return original(*args, **kwargs)
    try:
        raw = raw_from(frame, max(det.watcher.options.stack_depth, 1))
        coro: Any = det._opening(method, original, args, kwargs, raw)
        # A coroutine dropped without await must still be named after the method.
        coro.__name__ = getattr(original, "__name__", method)
        coro.__qualname__ = getattr(original, "__qualname__", method)
    except Exception as exc:
        det.failed(exc)
        return original(*args, **kwargs)
    return coro


class UnclosedResourceDetector(EventDetector):
    name = "unclosed_resource"
    kinds = ("unclosed_resource",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        #: transports and servers opened through the wrapped methods: id -> weak ref
        self._opened: dict[int, _ResRef] = {}
        #: sites of those whose weak reference was just cleared
        self._gone: dict[int | str, tuple[RawStack, str, float]] = {}
        self._patches: LoopPatches | None = None
        self._listening = False
        self._force = False
        #: ids and repr addresses of what was reported at close (a later warning about
        #: the same object is not a second finding)
        self._reported_ids: set[int] = set()
        self._reported_addrs: set[str] = set()
        #: handle (``fd=7``, ``0x55...``) -> (when, rank, finding key) of recent warnings
        self._recent: dict[str, tuple[float, int, Any]] = {}
        self._serial = 0
        self._notes: list[str] = []

    def install(self) -> None:
        loop = self.watcher.loop
        # (a shared class hooks the openers its loop class has)
        if hooks(loop, type(loop).__dict__.get("_lw_openers", _OPENERS)):
            self.watcher.hook_openers = self  # the loop's class calls this detector
        else:
            self._patches = LoopPatches(loop)
            self._patches.wrap_each(_OPENERS, self._opener)
        mode = self.watcher.options.resource_warnings
        if mode is not False:
            self._force = bool(mode)
            _listen(self, force=self._force)
            self._listening = True
        if getattr(loop, "_transports", None) is None:
            self._notes.append(
                f"unclosed_resource: {self.watcher.base} does not show its transports; "
                "connections opened with create_connection/create_server are checked at "
                "close, connections accepted by a server only through ResourceWarnings"
                + ("" if self._force else " (shown when the program enables them, or under "
                   "`loopwatch run`)"))

    def uninstall(self) -> None:
        if self.watcher.hook_openers is self:
            self.watcher.hook_openers = None
        if self._patches is not None:
            self._patches.undo()
            self._patches = None
        if self._listening:
            self._listening = False
            _unlisten(self)

    def notes(self) -> list[str]:
        return list(self._notes)

    def _opener(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        # A partial of one function, not a closure with a __wrapped__: two objects for
        # the collector rather than seven (a loop per test gets four of these).
        return functools.partial(_open_and_note, self, method, original)

    async def _opening(self, method: str, original: Callable[..., Coroutine[Any, Any, Any]],
                       args: tuple[Any, ...], kwargs: dict[str, Any], raw: RawStack) -> Any:
        result = await original(*args, **kwargs)
        try:
            obj = result if method.endswith("server") else result[0]
            ref = _ResRef(obj, self._drop)
            ref.key = id(obj)
            ref.raw = raw
            ref.method = method
            ref.handles = tuple(_HEX.findall(short_repr(obj, 120)))
            self._opened[ref.key] = ref
        except Exception as exc:
            self.failed(exc)
        return result

    def _drop(self, ref: _ResRef) -> None:
        if self._opened.get(ref.key) is ref:
            self._opened.pop(ref.key, None)
        # The collector clears weak references before finalizers run: keep the site for
        # the ResourceWarning that the transport's finalizer may issue next.
        # An address or id is reused once the object is freed: an entry is good only
        # for the warning that follows at once, in the same collection.
        gone = self._gone
        now = time.monotonic()
        gone[ref.key] = (ref.raw, ref.method, now)
        for handle in ref.handles:
            gone[handle] = (ref.raw, ref.method, now)
        while len(gone) > 512:
            gone.pop(next(iter(gone)), None)

    def _just_gone(self, key: int | str) -> tuple[RawStack, str] | None:
        entry = self._gone.pop(key, None)
        if entry is None or time.monotonic() - entry[2] > 1.0:
            return None
        return entry[0], entry[1]

    def _opened_stack(self, obj: Any) -> tuple[list[Frame], str]:
        ref = self._opened.get(id(obj))
        if ref is not None and ref() is obj:
            return format_raw(ref.raw), ref.method
        entry = self._just_gone(id(obj)) if obj is not None and ref is None else None
        if entry is not None:
            return format_raw(entry[0]), entry[1]
        return [], ""

    # -- at close ----------------------------------------------------------------------

    def before_close(self) -> None:
        _closing.detector = self
        loop = self.watcher.loop
        found: dict[int, tuple[str, Any]] = {}
        transports = getattr(loop, "_transports", None)
        # (a WeakValueDictionary: its ``data`` says at once that it is empty, where
        # walking its values costs several Python calls even then)
        if transports is not None and getattr(transports, "data", True):
            for tr in list(transports.values()):
                if _is_open_transport(tr):
                    found[id(tr)] = ("transport", tr)
        for srv in _asyncio_servers(loop):
            found.setdefault(id(srv), ("server", srv))
        for ref in list(self._opened.values()):
            obj = ref()
            if obj is None or id(obj) in found:
                continue
            if ref.method.endswith("server"):
                if _is_serving(obj):
                    found[id(obj)] = ("server", obj)
            elif _is_open_transport(obj):
                found[id(obj)] = ("transport", obj)
        for kind, obj in found.values():
            self._reported_ids.add(id(obj))
            text = short_repr(obj, 120)
            self._reported_addrs.update(_HEX.findall(text))
            self._reported_addrs.update(f"fd={n}" for n in re.findall(r"\bfd=(\d+)", text))
            self.watcher.add_finding(self._finding(kind, obj, when="when the loop closed"))

    def after_close(self) -> None:
        if getattr(_closing, "detector", None) is self:
            _closing.detector = None

    def _finding(self, kind: str, obj: Any, *, when: str, warned: str = "",
                 stack: list[Frame] | None = None, seen: str = "loop close") -> Finding:
        opened, method = self._opened_stack(obj) if obj is not None else ([], "")
        if obj is None:  # named only by a warning: by its address, if it was opened here
            for handle in _HEX.findall(warned):
                entry = self._just_gone(handle)
                if entry is not None:
                    opened, method = format_raw(entry[0]), entry[1]
                    break
        stacks: dict[str, list[Frame]] = {}
        site: Frame | None = None
        how = ""
        if opened:
            stacks["opened"] = opened
            site = pick_site(opened)
            how = f"opened with loop.{method}()"
        elif obj is not None and (allocated := _tracemalloc_stack(obj)):
            stacks["allocated"] = allocated
            site = pick_site(allocated)
            how = "allocated"
        elif obj is not None:
            site, how = _protocol_site(obj)
        if site is None and stack:
            site = pick_site(stack)
            stacks["warned"] = stack
        if kind == "server":
            what = f"server listening on {_server_addresses(obj)}"
        elif obj is not None:
            what = f"transport {short_repr(obj, 120)}"
            peer = _extra(obj, "peername")
            if peer:
                what += f" to {peer}"
        else:
            what = warned
        where = f" ({how} at {site.file}:{site.line})" if site is not None and how else ""
        message = f"{what} was still open {when}{where}"
        protocol = _protocol_name(obj) if obj is not None else ""
        return Finding(
            kind="unclosed_resource",
            message=message,
            site=site,
            stacks=stacks,
            hint=UNCLOSED_HINT,
            details={"resource": kind, "repr": short_repr(obj, 120) if obj is not None else warned,
                     "protocol": protocol, "opened_with": method,
                     "seen": seen},
            key=("unclosed_resource", id(obj)) if obj is not None else None,
        )

    # -- from ResourceWarnings -----------------------------------------------------------

    def from_warning(self, text: str, source: Any, msg: Any) -> None:
        """A ResourceWarning about a transport, server or socket of this loop.

        One leaked connection can warn up to three times in one collection (its socket,
        its transport, its StreamWriter, in any order): warnings that name the same file
        descriptor (or uvloop handle address) within a second are one finding, told by
        the most informative of them.
        """
        obj, kind = source, "transport"
        if source is None:  # a StreamWriter, or uvloop: find the transport it names
            obj = self._transport_named(text)
        elif _is_socket(source):
            obj = self._transport_of_socket(source)
            if obj is None:
                obj, kind = source, "socket"
        if obj is not None and id(obj) in self._reported_ids:
            return  # reported already (at close, or by the warning about its socket)
        handles = set(_HEX.findall(text)) | {f"fd={n}" for n in re.findall(r"\bfd=(\d+)", text)}
        if obj is None and handles & self._reported_addrs:
            return  # uvloop warns at close about what was reported just before
        rank = 0 if kind == "socket" else (2 if obj is not None else 1)
        now = time.monotonic()
        key: Any = None
        for handle in handles:
            seen = self._recent.get(handle)
            if seen is not None and now - seen[0] < 1.0:
                if seen[1] >= rank:
                    return
                key = seen[2]
        stack = []
        filename = getattr(msg, "filename", None)
        if filename and not is_loopwatch_file(str(filename)):
            stack = [Frame(os.path.abspath(str(filename)), int(msg.lineno or 0), "?")]
        when = ("when the loop closed (ResourceWarning)"
                if getattr(_closing, "detector", None) is self
                else "when it was garbage-collected (ResourceWarning)")
        if text.startswith("unclosed <StreamWriter"):
            when = "when its StreamWriter was garbage-collected (ResourceWarning)"
        if obj is not None:
            finding = self._finding(kind, obj, when=when, stack=stack, seen="ResourceWarning")
            if kind == "socket":
                finding.message = (f"socket {short_repr(obj, 120)} was never closed "
                                   "(ResourceWarning)")
            self._reported_ids.add(id(obj))
        else:
            what = text[len("unclosed "):]
            if what.startswith("resource "):
                what = what[len("resource "):]
            inner = re.search(r"transport=(<[^<>]*>)", what)
            if inner is not None:  # a StreamWriter: name its transport
                what = inner.group(1)
            kind = "server" if re.match(r"<\w*Server", what) else "transport"
            finding = self._finding(kind, None, when=when, warned=f"{kind} {what}", stack=stack,
                                    seen="ResourceWarning")
        self._serial += 1
        finding.key = key or ("unclosed_resource", "warning", self._serial)
        for handle in handles:
            self._recent[handle] = (now, rank, finding.key)
        if len(self._recent) > 1024:
            self._recent.clear()
        self.watcher.add_finding(finding)

    def _transport_named(self, text: str) -> Any:
        """The transport a warning's text names: by file descriptor on asyncio (still
        registered while it closes), by address on uvloop."""
        fd = re.search(r"\bfd=(\d+)", text)
        transports = getattr(self.watcher.loop, "_transports", None)
        if fd is not None and transports is not None:
            found = transports.get(int(fd.group(1)))
            if found is not None:
                return found
        addrs = set(_HEX.findall(text))
        if addrs:
            for ref in list(self._opened.values()):
                obj = ref()
                if obj is not None and addrs & set(_HEX.findall(short_repr(obj, 120))):
                    return obj
        return None

    def _transport_of_socket(self, sock: Any) -> Any:
        transports = getattr(self.watcher.loop, "_transports", None)
        candidates = list(transports.values()) if transports is not None else []
        candidates += [r() for r in list(self._opened.values())]
        for tr in candidates:
            if tr is not None and getattr(tr, "_sock", None) is sock:
                return tr
        return None


def _is_open_transport(tr: Any) -> bool:
    try:
        return not tr.is_closing()
    except Exception:
        return False


def _is_serving(srv: Any) -> bool:
    try:
        return bool(srv.is_serving()) or bool(srv.sockets)
    except Exception:
        return False


def _is_socket(obj: Any) -> bool:
    import socket

    return isinstance(obj, socket.socket)


def _asyncio_servers(loop: Any) -> list[Any]:
    """Servers asyncio's selector loop still accepts connections for."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return []
    out = []
    try:
        # The selectors module's own table when it is there (the mapping view walks it
        # in Python, key by key); else the public view.
        table = getattr(selector, "_fd_to_key", None)
        keys = list(table.values()) if isinstance(table, dict) else \
            list(selector.get_map().values())
    except Exception:
        return []
    for key in keys:
        reader = key.data[0] if isinstance(key.data, tuple) and key.data else None
        callback = getattr(reader, "_callback", None)
        if getattr(callback, "__name__", "") != "_accept_connection":
            continue
        args: tuple[Any, ...] = tuple(getattr(reader, "_args", ()) or ())
        server = args[3] if len(args) > 3 else None
        if server is not None and server not in out:
            out.append(server)
    return out


def _server_addresses(srv: Any) -> str:
    try:
        socks = list(srv.sockets or ())
    except Exception:
        socks = []
    names = []
    for sock in socks:
        try:
            name = sock.getsockname()
        except Exception:
            continue
        if isinstance(name, tuple):
            names.append(f"{name[0]}:{name[1]}")
        else:
            names.append(str(name))
    return ", ".join(names) or "?"


def _extra(tr: Any, name: str) -> str:
    try:
        value = tr.get_extra_info(name)
    except Exception:
        return ""
    if isinstance(value, tuple) and len(value) >= 2:
        return f"{value[0]}:{value[1]}"
    return str(value) if value else ""


def _protocol_of(obj: Any) -> Any:
    try:
        return obj.get_protocol()
    except Exception:
        return getattr(obj, "_protocol", None)


def _protocol_name(obj: Any) -> str:
    protocol = _protocol_of(obj)
    if protocol is None:
        return ""
    cls = type(protocol)
    return f"{cls.__module__}.{cls.__qualname__}"


def _protocol_site(obj: Any) -> tuple[Frame | None, str]:
    """Where the code that handles a resource is defined: a stream server's client
    callback, or the protocol class."""
    protocol = _protocol_of(obj)
    if protocol is None:
        return None, ""
    callback = getattr(protocol, "_client_connected_cb", None)
    if callback is not None:
        site = callable_site(callback)
        if site is not None:
            return site, f"its client callback {callable_name(callback)} is defined"
    cls = type(protocol)
    site = _class_site(cls)
    if site is not None and not _library_site(site):
        return site, f"its protocol {cls.__qualname__} is defined"
    return None, ""


def _library_site(site: Frame) -> bool:
    return is_library(site.file)


