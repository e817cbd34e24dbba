"""``post_close_call`` and ``dropped_callback``: work that met a closed loop.

Both are learned from thin wrappers installed as instance attributes of the loop
(a watched loop class, or any loop that takes attributes; uvloop's ``Loop``
subclasses do):

- ``post_close_call``: the wrappers are installed by :meth:`after_close`, so an
  open loop pays nothing. Each records the caller (stack, thread) and then calls
  the original, which raises ``RuntimeError: Event loop is closed`` as before: the
  call is recorded even when the caller catches that error. They stay in place
  after the loop closed, so calls made by non-daemon threads during interpreter
  shutdown (those threads are joined before ``atexit``) are still recorded.
- ``dropped_callback``: ``call_later`` and ``call_at`` are wrapped from the start
  (a ``TimerHandle`` has no record of where it was made outside debug mode). A
  wrapper notes only the caller's code object and instruction offset, next to the
  handle's id (or the handle itself on uvloop); timers made by asyncio, anyio or loopwatch on
  behalf of an ``await`` are not noted (the task that awaits is what gets
  reported). When the loop closes, the timers still scheduled, and on asyncio's
  loop the ``call_soon`` callbacks still queued, are the findings.

The helpers shared by the event detectors (instance-attribute patches that undo in
reverse order, the "is this user code" cache, callback names) live here too.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable
from types import CodeType, FrameType, FunctionType, MethodType
from typing import Any

from .._frames import Frame, RawStack, format_raw, is_library, pick_site
from .._records import coro_name
from .._report import Finding
from . import Detector

__all__ = [
    "DroppedCallbackDetector",
    "EventDetector",
    "LoopPatches",
    "PostCloseDetector",
    "callable_name",
    "callable_site",
    "code_site",
    "is_loopwatch_callable",
    "is_loopwatch_file",
    "is_plumbing_callback",
    "is_user_code",
    "pass_through",
    "raw_from",
    "times",
]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


# -- shared helpers -------------------------------------------------------------------


class EventDetector(Detector):
    """A detector whose wrappers run outside the watcher's guarded hooks.

    A wrapper that catches an internal error calls :meth:`failed`, which goes through
    the watcher's guard: the error is reported once and this detector is switched off.
    """

    def failed(self, exc: BaseException) -> None:
        if self.enabled:
            self.watcher.call(self, "_reraise", exc)

    def _reraise(self, exc: BaseException) -> None:
        raise exc


def own_class(loop: Any) -> type | None:
    """A watched loop's class of its own (which holds what loopwatch puts on the loop),
    or None."""
    cls = type(loop)
    return cls if cls.__dict__.get("_lw_own_class") else None


def base_class(loop: Any) -> type:
    """The loop's class, past a watched loop's class of its own or an attached loop's
    shared class (see ``shared.py``)."""
    cls = type(loop)
    base: type | None = cls.__dict__.get("_lw_base")
    if base is not None:
        return base
    return cls.__mro__[1] if cls.__dict__.get("_lw_own_class") else cls


def hooks(loop: Any, names: Iterable[str]) -> bool:
    """Whether the loop's class is a shared class (see ``shared.py``) whose methods
    call the detectors for every one of ``names``, and the loop's own attributes hide
    none of them."""
    cls = type(loop)
    hooked: frozenset[str] | None = cls.__dict__.get("_lw_hooked")
    if hooked is None:
        return False
    # Whether the loop's own attributes hide a method is asked by looking it up, not in
    # ``loop.__dict__``: before 3.13, reading that moves the instance's attributes out
    # of the fast storage the interpreter's specialized instructions read, for good,
    # and every later call on a loop born of its shared class would pay. (No helper
    # and no all() over a generator: a loop per test asks about nine names.)
    for name in names:
        if name not in hooked or \
                getattr(getattr(loop, name, None), "__func__", None) is not getattr(cls, name):
            return False
    return True


def own_attrs(loop: Any) -> dict[str, Any]:
    """What was put on this one loop: its instance attributes and, on a watched loop,
    the wrappers on its own class (raises TypeError for a loop that has neither)."""
    cls = own_class(loop)
    if cls is None:
        instance: dict[str, Any] = vars(loop)
        return instance
    attrs = {name: value.__func__ for name, value in cls.__dict__.items()
             if isinstance(value, staticmethod) and not name.startswith("_lw_")}
    attrs.update(vars(loop))
    return attrs


class LoopPatches:
    """Wrappers of one loop's methods, undone in reverse order.

    On a watched loop they go on the loop's own class (as static methods: they are
    called as the loop's attributes would be); on another loop they are instance
    attributes. A wrapper that somebody else wrapped again after us is left in place
    on undo (removing it would remove theirs too); every wrapper passes straight
    through once its detector is switched off, so a wrapper left behind is inert.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._done: list[tuple[str, Any, Any, Any]] = []

    def _holder(self, name: str) -> tuple[Any, dict[str, Any]] | None:
        """Where ``name`` goes, and that holder's own attributes (None: nowhere)."""
        loop = self.loop
        cls = own_class(loop)
        if cls is not None:
            # (Not vars(loop): before 3.13 that moves the instance's attributes out of
            # their shared-key storage for good, which is what the class is there for.)
            return cls, dict(cls.__dict__)
        try:
            return loop, vars(loop)
        except TypeError:
            return None

    def wrap(self, name: str, make: Callable[[Any], Any]) -> bool:
        """Replace ``loop.<name>`` by ``make(current)``; False when the loop takes no
        attributes or has no such method."""
        if getattr(self.loop, name, None) is None:
            return False
        return not self.wrap_each((name,), lambda _name, current: make(current))

    def wrap_each(self, names: tuple[str, ...],
                  make: Callable[[str, Any], Any]) -> list[str]:
        """Replace ``loop.<name>`` by ``make(name, current)`` for each of ``names`` the
        loop has, in one pass (a loop made for each test pays for this); returns the
        names the loop has but would not let be replaced (it takes no attributes)."""
        loop = self.loop
        failed: list[str] = []
        done = self._done
        where: Any = _NOTHING
        for name in names:
            current = getattr(loop, name, None)
            if current is None:
                continue
            if where is _NOTHING:  # (the same for every name: asked once)
                where = self._holder(name)
            if where is None:
                failed.append(name)
                continue
            holder, own = where
            previous = own.get(name, _MISSING)
            wrapper = make(name, current)
            stored = wrapper if holder is loop else staticmethod(wrapper)
            try:
                setattr(holder, name, stored)
            except (AttributeError, TypeError):
                failed.append(name)
                continue
            done.append((name, holder, stored, previous))
            if holder is not loop and getattr(loop, name, None) is not wrapper:
                # an instance attribute of that name hides the class's: wrap it instead
                self.undo_last()
                previous = vars(loop).get(name, _MISSING)
                try:
                    setattr(loop, name, wrapper)
                except (AttributeError, TypeError):
                    failed.append(name)
                    continue
                done.append((name, loop, wrapper, previous))
        return failed

    def undo(self) -> None:
        done = self._done
        while done:
            self.undo_last()

    def undo_last(self) -> None:
        """Undo the last wrapper."""
        if self._done:
            name, holder, stored, previous = self._done.pop()
            if holder is self.loop:
                # The loop's own dict, changed in place (no attribute protocol: a loop
                # per test has nine wrappers taken off it).
                try:
                    own = vars(holder)
                    if own.get(name) is stored:
                        if previous is _MISSING:
                            del own[name]
                        else:
                            own[name] = previous
                except (TypeError, KeyError):
                    pass
                return
            if holder.__dict__.get(name) is not stored:
                return
            try:
                if previous is _MISSING:
                    delattr(holder, name)
                else:
                    setattr(holder, name, previous)
            except (AttributeError, TypeError):
                pass


_MISSING: Any = object()
_NOTHING: Any = object()
#: the module of the executor_thread detector's ``_Job`` (matched by name: a test run
#: that imports the module again makes a second class)
_RESOURCES = __name__.rsplit(".", 1)[0] + ".resources"

#: id(code) -> is it user code; keyed by id because hashing a code object hashes its
#: whole content (slow on a hot path). The code object is kept in ``_user_code_refs`` so
#: that its id cannot be reused while the entry exists.
_user_codes: dict[int, bool] = {}
_user_code_refs: list[CodeType] = []


def is_user_code(code: CodeType) -> bool:
    """Whether ``code`` is the program's own (not asyncio, anyio, pytest or loopwatch
    plumbing). Cached per code object: this runs on hot paths."""
    result = _user_codes.get(id(code))
    if result is not None:
        return result
    filename = code.co_filename
    result = not is_library(filename if filename.startswith("<") else os.path.abspath(filename))
    if len(_user_code_refs) > 50_000:
        _user_codes.clear()
        _user_code_refs.clear()
    _user_code_refs.append(code)
    _user_codes[id(code)] = result
    return result


def is_loopwatch_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


#: the loop's own frame above every callback: a stack is cut there (what lies beyond is
#: the loop's plumbing, the same for every callback)
_CALLBACK_RUN = asyncio.events.Handle._run.__code__


def raw_from(frame: FrameType | None, depth: int) -> RawStack:
    """The raw stack (``code, lasti, ...``, innermost first) from ``frame`` outwards,
    up to the loop's callback runner."""
    out: list[Any] = []
    while frame is not None and depth > 0:
        if frame.f_code is _CALLBACK_RUN:
            break
        out.append(frame.f_code)
        out.append(frame.f_lasti)
        frame = frame.f_back
        depth -= 1
    return tuple(out)


def times(message: str, count: int) -> str:
    """``message`` ending in `` (N times)`` for a finding seen again."""
    base = message.rsplit(" (", 1)[0] if message.endswith(" times)") else message
    return f"{base} ({count} times)"


def code_site(code: CodeType, lasti: int) -> Frame:
    """One raw frame as a :class:`Frame`."""
    (frame,) = format_raw((code, lasti))
    return frame


def _unwrap(cb: Any) -> Any:
    for _ in range(10):
        if isinstance(cb, functools.partial):
            cb = cb.func
        else:
            break
    return cb


def callable_name(cb: Any) -> str:
    """A callback as people name it: ``Worker.on_tick``, ``print``, ``T4.cancel``."""
    cb = _unwrap(cb)
    if asyncio.iscoroutine(cb):
        return coro_name(cb)
    name = getattr(cb, "__qualname__", None) or getattr(cb, "__name__", None)
    if isinstance(name, str):
        return name
    text = repr(cb)
    return text if len(text) <= 80 else text[:77] + "..."


def _code_of(cb: Any) -> CodeType | None:
    cb = _unwrap(cb)
    cb = getattr(cb, "__func__", cb)
    code = getattr(cb, "__code__", None)
    if isinstance(code, CodeType):
        return code
    call = type(cb).__dict__.get("__call__")
    code = getattr(call, "__code__", None)
    return code if isinstance(code, CodeType) else None


def callable_site(cb: Any) -> Frame | None:
    """Where a callback is defined (its ``def`` line), when it is Python code."""
    code = _code_of(cb)
    if code is None:
        return None
    return code_site(code, -1)


def is_loopwatch_callable(cb: Any) -> bool:
    code = _code_of(cb)
    return code is not None and is_loopwatch_file(code.co_filename)


def is_plumbing_callback(cb: Any) -> bool:
    """A callback that belongs to asyncio's, anyio's or loopwatch's machinery, or to a
    future or task (reported through that task, not as a lost callback)."""
    cb = _unwrap(cb)
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Future) or isinstance(owner, asyncio.AbstractEventLoop):
        return True
    if type(cb).__name__ == "TaskStepMethWrapper":
        return True
    code = _code_of(cb)
    if code is not None:
        return not is_user_code(code)
    module = getattr(cb, "__module__", None) or ""
    return isinstance(module, str) and module.split(".")[0] in ("asyncio", "_asyncio", "loopwatch",
                                                                "anyio", "uvloop")


# -- post_close_call ------------------------------------------------------------------

#: loop methods that schedule work or run the loop; on a closed loop each raises
#: ``RuntimeError: Event loop is closed`` (``create_future`` does not, but nothing
#: can ever complete what it makes)
CALL_INS = (
    "call_soon",
    "call_soon_threadsafe",
    "call_later",
    "call_at",
    "create_task",
    "create_future",
    "run_in_executor",
    "run_until_complete",
    "run_forever",
    "add_reader",
    "add_writer",
    "add_signal_handler",
)

#: position of the scheduled callable among the positional arguments of each method
_TARGET_ARG = {"call_soon": 0, "call_soon_threadsafe": 0, "call_later": 1, "call_at": 1,
               "create_task": 0, "run_in_executor": 1, "run_until_complete": 0,
               "add_reader": 1, "add_writer": 1, "add_signal_handler": 1}

#: helpers through which asyncio's call-ins reach ``_check_closed``
_CHECK_HELPERS = ("call_at", "_add_reader", "_add_writer", "_run_forever_setup")

#: per loop class: its call-ins' code objects (and their helpers'), code -> method name
#: (None for a helper), when every call-in but ``create_future`` is asyncio's own and
#: checks ``_check_closed`` first; None for a class where that is not known
_closed_checks: dict[type, dict[CodeType, str | None] | None] = {}


def _check_closed_codes(cls: type) -> dict[CodeType, str | None] | None:
    try:
        return _closed_checks[cls]
    except KeyError:
        pass
    codes: dict[CodeType, str | None] = {}

    def code_of(name: str) -> CodeType | None:
        fn = getattr(cls, name, None)
        if not isinstance(fn, FunctionType) or not fn.__module__.startswith("asyncio."):
            return None
        return fn.__code__

    def checks(code: CodeType, depth: int) -> bool:
        if "_check_closed" in code.co_names:
            return True
        for helper in _CHECK_HELPERS:
            inner = code_of(helper) if helper in code.co_names and depth < 3 else None
            if inner is not None and checks(inner, depth + 1):
                codes.setdefault(inner, None)
                return True
        return False

    result: dict[CodeType, str | None] | None = codes
    if code_of("_check_closed") is None:
        result = None
    else:
        for name in CALL_INS:
            if name == "create_future":
                continue
            code = code_of(name)
            if code is None or not checks(code, 0):
                result = None
                break
            codes[code] = name
    if len(_closed_checks) < 64:
        _closed_checks[cls] = result
    return result


#: code of loopwatch's own wrappers of call-ins that always call the method they wrap
#: (the dropped_callback timer wrapper, the executor job wrapper)
#: (by id: hashing a code object hashes its whole content, several microseconds, and
#: this is asked for every loop closed and every wrapper made)
PASS_THROUGH: dict[int, CodeType] = {}


def pass_through(code: CodeType) -> None:
    """Note ``code`` as that of a wrapper that always calls the method it wraps."""
    PASS_THROUGH[id(code)] = code


def wrapper_of(func: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """A loop method's wrapper: ``func`` with ``args`` in front, the last of which is the
    method it wraps (its ``__wrapped__``). A partial of a module-level function, not a
    closure: a loop per test gets several, and each test's collection walks two
    objects for each rather than a function, its cells and their tuple."""
    wrapper = functools.partial(func, *args)
    wrapper.__wrapped__ = args[-1]  # type: ignore[attr-defined]
    return wrapper


def _passes_through(loop: Any, name: str, value: Any) -> bool:
    """Whether ``loop.<name>`` (an instance attribute) is loopwatch's wrappers around the
    class's own method, and nothing else."""
    method = getattr(base_class(loop), name, None)
    for _ in range(8):
        if type(value) is MethodType:  # (no getattr that misses: it costs an exception)
            return value.__self__ is loop and value.__func__ is method
        func = value.func if type(value) is functools.partial else value  # (wrapper_of)
        if type(func) is not FunctionType or id(func.__code__) not in PASS_THROUGH:
            return False
        value = getattr(value, "__wrapped__", None)
    return False


def _call_ins_pass_through(loop: Any, own: dict[str, Any]) -> bool:
    """Whether every call-in among the loop's own attributes ``own`` is loopwatch's
    wrappers and nothing else: a call-in that something else wrapped would stop the walk
    up from ``_check_closed`` at that wrapper, which would be taken for the caller."""
    for name in CALL_INS:
        if name in own and not _passes_through(loop, name, own[name]):
            return False
    return True


POST_CLOSE_HINT = (
    "something outlived the loop (a thread, a timer, a callback, a finalizer): stop it "
    "before the loop closes (signal the thread and join it, cancel the timer, await the "
    "work); checking loop.is_closed() before the call only narrows the race"
)


class PostCloseDetector(EventDetector):
    name = "post_close_call"
    kinds = ("post_close_call",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        self._lock = threading.Lock()
        self._by_stack: dict[RawStack, Finding] = {}
        self._by_site: dict[Any, Finding] = {}
        self._patches: LoopPatches | None = None
        self._note = ""

    def after_close(self) -> None:
        loop = self.watcher.loop
        if self._switch_class(loop):
            return
        codes = _check_closed_codes(base_class(loop))
        try:
            own = own_attrs(loop)
        except TypeError:
            own = None
        checked = codes is not None and own is not None and "_check_closed" not in own and \
            _call_ins_pass_through(loop, own)
        patches = LoopPatches(loop)
        self._patches = patches
        if checked:
            assert codes is not None
            # asyncio's own loop: every call-in but create_future starts with
            # self._check_closed(), so two wrappers see them all (not twelve: a loop is
            # closed at the end of every test).
            def make(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
                if name == "_check_closed":
                    return self._check_wrapper(codes, name, original)
                return self._wrapper(name, original)

            if getattr(loop, "_check_closed", None) is not None and \
                    getattr(loop, "create_future", None) is not None and \
                    not patches.wrap_each(("_check_closed", "create_future"), make):
                return
            patches.undo()
        missing = patches.wrap_each(CALL_INS, self._wrapper)
        if missing:
            self._note = (f"post_close_call: calls to {', '.join(missing)} on the closed "
                          f"{type(self.watcher.loop).__name__} cannot be observed (the loop "
                          "takes no attributes)")

    def _switch_class(self, loop: Any) -> bool:
        """Switch a loop of a shared open class to the closed class that follows it,
        whose methods call this detector (see ``shared.py``); False when it has none."""
        closed: type | None = type(loop).__dict__.get("_lw_closed")
        if closed is None:
            return False  # not a shared open class
        own = loop.__dict__
        for name in closed.__dict__["_lw_methods"]:  # (isdisjoint(own) walks all of own)
            if name in own:
                return False
        if not _call_ins_pass_through(loop, own):
            return False
        self.watcher.hook_post_close = self
        try:
            loop.__class__ = closed
        except TypeError:
            self.watcher.hook_post_close = None
            return False
        return True

    def uninstall(self) -> None:
        # (a loop switched to the closed class keeps it, its methods then pass through:
        # releasing the loop gives it back its own class)
        if self.watcher.hook_post_close is self:
            self.watcher.hook_post_close = None
        if self._patches is not None:
            self._patches.undo()
            self._patches = None

    def notes(self) -> list[str]:
        return [self._note] if self._note else []

    def _wrapper(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        return wrapper_of(_call_into_closed_loop, self, method, original)

    def _check_wrapper(self, codes: dict[CodeType, str | None], name: str,
                       original: Callable[[], Any]) -> Callable[[], Any]:
        return wrapper_of(_check_closed, self, codes, original)

    def _checked(self, frame: FrameType | None, codes: dict[CodeType, str | None]) -> None:
        """``_check_closed()`` ran in ``frame``: the call-in it belongs to (the outermost
        of a chain: ``call_later`` calls ``call_at``) is recorded, with its caller."""
        method: str | None = None
        called: FrameType | None = None
        caller: FrameType | None = None
        depth = 0
        while frame is not None and depth < 8:
            code = frame.f_code
            name = codes.get(code, _NOTHING)
            if name is _NOTHING:
                if id(code) not in PASS_THROUGH:
                    break
            elif name is not None:
                method, called = name, frame
            caller = frame = frame.f_back
            depth += 1
        if method is None or called is None or caller is None:
            return  # asyncio's own plumbing (sock_recv, ...), as the wrappers would see it
        args: tuple[Any, ...] = ()
        pos = _TARGET_ARG.get(method)
        code = called.f_code
        if pos is not None and pos + 1 < code.co_argcount:
            value = called.f_locals.get(code.co_varnames[pos + 1], _NOTHING)
            if value is not _NOTHING:
                kind = type(value)
                if kind.__name__ == "_Job" and kind.__module__ == _RESOURCES:
                    value = value.func  # the executor_thread wrapper's job, around it
                args = (None,) * pos + (value,)
        self.record(method, caller, args)

    def record(self, method: str, frame: FrameType, args: tuple[Any, ...]) -> None:
        """One call into the closed loop, made from ``frame``."""
        if is_loopwatch_file(frame.f_code.co_filename):
            return  # loopwatch's own threads are stopped before close; never report them
        thread = threading.current_thread().name
        raw = raw_from(frame, max(self.watcher.options.stack_depth, 1))
        with self._lock:
            seen = self._by_stack.get(raw)
            if seen is not None:
                self._count(seen, thread)
                return
        frames = format_raw(raw)
        site = pick_site(frames)
        target = ""
        pos = _TARGET_ARG.get(method)
        if pos is not None and len(args) > pos:
            target = callable_name(args[pos])
        key = ("post_close_call", method, site.file if site else "", site.line if site else 0)
        with self._lock:
            seen = self._by_site.get(key)
            if seen is not None:
                if len(self._by_stack) < 1000:
                    self._by_stack[raw] = seen
                self._count(seen, thread)
                return
            call = f"loop.{method}({target})" if target else f"loop.{method}()"
            raises = method != "create_future"
            message = (f"{call} was called on the closed loop from thread {thread!r}"
                       + ("; it raised RuntimeError('Event loop is closed')" if raises else
                          "; what it makes can never complete"))
            finding = Finding(
                kind="post_close_call",
                message=message,
                site=site,
                stacks={"call": frames},
                hint=POST_CLOSE_HINT,
                details={"method": method, "callback": target, "thread": thread,
                         "threads": [thread], "count": 1, "raises": raises},
                key=key,
            )
            self._by_site[key] = finding
            if len(self._by_stack) < 1000:
                self._by_stack[raw] = finding
        self.watcher.add_finding(finding)

    @staticmethod
    def _count(finding: Finding, thread: str) -> None:
        details = finding.details
        details["count"] += 1
        threads = details["threads"]
        if thread not in threads and len(threads) < 8:
            threads.append(thread)
        finding.message = times(finding.message, details["count"])


def note_call_in(det: PostCloseDetector, method: str, frame: FrameType,
                 args: tuple[Any, ...]) -> None:
    """``loop.<method>(*args)`` was called on the closed loop from ``frame``."""
    if det.enabled:
        try:
            det.record(method, frame, args)
        except Exception as exc:
            det.failed(exc)


def note_check(det: PostCloseDetector, frame: FrameType | None,
               codes: dict[CodeType, str | None]) -> None:
    """``loop._check_closed()`` of the closed asyncio loop was called from ``frame``."""
    if det.enabled:
        try:
            det._checked(frame, codes)
        except Exception as exc:
            det.failed(exc)


def _call_into_closed_loop(det: PostCloseDetector, method: str, original: Callable[..., Any],
                           *args: Any, **kwargs: Any) -> Any:
    """``loop.<method>`` of a closed loop: the call is recorded, then made."""
    note_call_in(det, method, sys._getframe(1), args)
    return original(*args, **kwargs)


def _check_closed(det: PostCloseDetector, codes: dict[CodeType, str | None],
                  original: Callable[[], Any]) -> Any:
    """``loop._check_closed()`` of a closed asyncio loop: the call-in that asked is
    recorded, then the check is made (it raises)."""
    note_check(det, sys._getframe(1), codes)
    return original()


# -- dropped_callback ------------------------------------------------------------------

DROPPED_HINT = (
    "cancel timers that are no longer wanted before the loop closes (keep the handle and "
    "call .cancel()), or turn the delayed work into a task that shutdown awaits or "
    "cancels; closing the loop discards whatever is still scheduled, silently"
)


#: where a timer was made: (code, instruction offset, method)
_Site = tuple[CodeType, int, str]
_CALL_LATER = asyncio.BaseEventLoop.call_later.__code__


def _schedule_timer(det: DroppedCallbackDetector, method: str, original: Callable[..., Any],
                    when: Any, callback: Any, *args: Any, context: Any = None) -> Any:
    """The ``call_at`` (or ``call_later``) of a loop whose timers are tracked: the timer
    is scheduled, and where the program scheduled it is noted."""
    handle = original(when, callback, *args, context=context)
    try:
        frame = sys._getframe(1)
    except ValueError:  # called from C with no Python frame above
        return handle
    note_timer(det, method, handle, frame)
    return handle


def note_timer(det: DroppedCallbackDetector, method: str, handle: Any, frame: FrameType) -> None:
    """``handle`` was made by ``loop.<method>`` (``call_at`` or ``call_later``), called
    from ``frame``: where, if that is the program's own code."""
    code = frame.f_code
    how = method
    if code is _CALL_LATER and frame.f_back is not None:
        frame = frame.f_back
        code = frame.f_code
        how = "call_later"
    user = _user_codes.get(id(code))
    if user is False:  # (asyncio's, anyio's or loopwatch's own timers: most of them)
        return
    try:
        if user is None and not is_user_code(code):
            return
        if not det.enabled:
            return
        if det._asyncio_like:
            sites = det._sites
            sites[id(handle)] = ((code, frame.f_lasti, how), handle.when())
            if len(sites) >= det._prune_at:
                det._prune()
        elif hasattr(handle, "when"):  # uvloop: call_later(0) is a call_soon
            handles = det._handles
            handles.append((handle, (code, frame.f_lasti, how)))
            if len(handles) >= det._prune_at:
                det._prune()
    except Exception as exc:
        det.failed(exc)


pass_through(_schedule_timer.__code__)


class DroppedCallbackDetector(EventDetector):
    """Timers are noted where they are made, as cheaply as possible (this runs for every
    ``call_later`` of the program):

    - on asyncio's loop, which shows its queues, by ``id(handle)`` with the timer's due
      time (checked at close, so a reused id cannot be mistaken for another timer);
      the map is pruned against the loop's queues as it grows;
    - on a loop that hides them (uvloop), the handle itself is kept, and pruned of the
      timers that ran or were cancelled as the list grows (uvloop clears a handle's
      callback once it ran or was cancelled, so a kept handle holds nothing else).
    """

    name = "dropped_callback"
    kinds = ("dropped_callback",)

    def __init__(self, watcher: Any) -> None:
        super().__init__(watcher)
        #: asyncio: id(handle) -> (site, due time)
        self._sites: dict[int, tuple[_Site, float]] = {}
        #: uvloop: (handle, site)
        self._handles: list[tuple[Any, _Site]] = []
        self._prune_at = 1024
        self._asyncio_like = True
        self._patches: LoopPatches | None = None
        self._notes: list[str] = []

    def install(self) -> None:
        loop = self.watcher.loop
        self._asyncio_like = isinstance(getattr(loop, "_scheduled", None), list) and \
            getattr(loop, "_ready", None) is not None  # what _asyncio_queues reads
        # asyncio's call_later calls self.call_at: wrapping call_at alone sees both (one
        # wrapper less on the path of every asyncio.sleep and timeout).
        names = ("call_at",) if self._asyncio_like and getattr(type(loop), "call_later", None) \
            is asyncio.BaseEventLoop.call_later else ("call_later", "call_at")
        if hooks(loop, names):  # the loop's class calls this detector
            self.watcher.hook_timers = self
            ok = True
        else:
            self._patches = LoopPatches(loop)
            ok = not self._patches.wrap_each(names, self._wrapper)
        if not ok:
            self._notes.append(
                f"dropped_callback: {type(loop).__name__} takes no attributes, so timers are "
                "not tracked where they are made" + ("" if self._asyncio_like else
                                                     " and dropped timers are not observable"))
        if not self._asyncio_like:
            self._notes.append(
                f"dropped_callback: callbacks queued with call_soon() that had not run when the "
                f"loop closed are not observable on {self.watcher.base} (its ready queue is "
                "hidden); timers are tracked where they are made")
            if self.watcher.attached:
                self._notes.append("dropped_callback: timers scheduled before loopwatch "
                                   "attached are not observable on this loop")

    def uninstall(self) -> None:
        if self.watcher.hook_timers is self:
            self.watcher.hook_timers = None
        if self._patches is not None:
            self._patches.undo()
            self._patches = None
        self._sites.clear()
        self._handles.clear()

    def notes(self) -> list[str]:
        return list(self._notes)

    def _wrapper(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        return wrapper_of(_schedule_timer, self, method, original)

    def _prune(self) -> None:
        """Forget the timers that ran or were cancelled (loop thread)."""
        loop = self.watcher.loop
        if self._asyncio_like:
            queues = _asyncio_queues(loop)
            if queues is None:
                return
            live = {id(h) for h in queues[0]} | {id(h) for h in queues[1]}
            kept = {k: v for k, v in self._sites.items() if k in live}
            self._sites.clear()
            self._sites.update(kept)
            size = len(kept)
        else:
            now = loop.time()
            still = [(h, site) for h, site in self._handles
                     if _foreign_pending_name(h, now, loop) is not None]
            self._handles[:] = still
            size = len(still)
        self._prune_at = max(1024, 2 * size)

    def _site_of(self, handle: Any) -> _Site | None:
        entry = self._sites.get(id(handle))
        if entry is None or entry[1] != _when(handle):
            return None
        return entry[0]

    def before_close(self) -> None:
        loop = self.watcher.loop
        now = loop.time()
        groups: dict[Any, dict[str, Any]] = {}
        queues = _asyncio_queues(loop)
        if queues is not None:
            scheduled, ready = queues
            for handle in scheduled + ready:
                self._consider_asyncio(handle, now, groups)
        else:
            for handle, (code, lasti, method) in list(self._handles):
                name = _foreign_pending_name(handle, now, loop)
                if name is None:
                    continue
                self._add(groups, site=code_site(code, lasti), method=method,
                          callback=name, due=_when(handle) - now, stack=None)
            self._handles.clear()
        for group in groups.values():
            self.watcher.add_finding(_dropped_finding(group))

    def _consider_asyncio(self, handle: Any, now: float, groups: dict[Any, dict[str, Any]]) -> None:
        if getattr(handle, "_cancelled", False):
            return
        callback = getattr(handle, "_callback", None)
        if callback is None:
            return
        timer = isinstance(handle, asyncio.TimerHandle)
        made = self._site_of(handle) if timer else None
        if made is not None:
            if is_loopwatch_callable(callback):
                return
            self._add(groups, site=code_site(made[0], made[1]), method=made[2],
                      callback=callable_name(callback), due=_when(handle) - now, stack=None)
            return
        if is_plumbing_callback(callback):
            return
        stack: list[Frame] | None = None
        source = getattr(handle, "_source_traceback", None)
        if source:  # debug mode: the stack where it was scheduled
            stack = [Frame(os.path.abspath(f.filename), f.lineno or 0, f.name) for f in source]
            site = pick_site(stack)
        else:
            site = callable_site(callback)
        self._add(groups, site=site, method="call_at" if timer else "call_soon",
                  callback=callable_name(callback), due=(_when(handle) - now) if timer else None,
                  stack=stack, known_site=bool(source))

    @staticmethod
    def _add(groups: dict[Any, dict[str, Any]], *, site: Frame | None, method: str,
             callback: str, due: float | None, stack: list[Frame] | None,
             known_site: bool = True) -> None:
        key = ("dropped_callback", method, callback, site.file if site else "",
               site.line if site else 0)
        group = groups.get(key)
        if group is None:
            groups[key] = {"key": key, "site": site, "method": method, "callback": callback,
                           "due": [] if due is None else [due], "count": 1, "stack": stack,
                           "known_site": known_site}
        else:
            group["count"] += 1
            if due is not None:
                group["due"].append(due)


def _asyncio_queues(loop: Any) -> tuple[list[Any], list[Any]] | None:
    """asyncio's timer heap and ready queue, or None on a loop that hides them."""
    scheduled = getattr(loop, "_scheduled", None)
    ready = getattr(loop, "_ready", None)
    if isinstance(scheduled, list) and ready is not None:
        try:
            return list(scheduled), list(ready)
        except RuntimeError:
            return None
    return None


def _when(handle: Any) -> float:
    try:
        return float(handle.when())
    except Exception:
        return 0.0


def _foreign_pending_name(handle: Any, now: float, loop: Any) -> str | None:
    """For a timer handle of a loop that hides its queues (uvloop): the callback's name
    when the handle is still scheduled, else None.

    uvloop's ``TimerHandle`` shows its callback's name in its repr until it has run
    (the callback is cleared then), and ``cancelled()`` once cancelled or closed.
    """
    try:
        if handle.cancelled():
            return None
    except Exception:
        return None
    callback = getattr(handle, "_callback", None)
    if callback is not None:
        return callable_name(callback)
    text = repr(handle)
    inner = text.strip("<>").split(None, 1)
    name = inner[1].strip() if len(inner) > 1 else ""
    if name.startswith("cancelled"):
        return None
    if name:
        return name.split(" created at ")[0]
    if _when(handle) > now:
        return "?"
    return None


def _dropped_finding(group: dict[str, Any]) -> Finding:
    site: Frame | None = group["site"]
    method = group["method"]
    callback = group["callback"]
    n = group["count"]
    dues = group["due"]
    if method == "call_soon":
        what = f"callback {callback}()" if n == 1 else f"{n} callbacks {callback}()"
        message = (f"{what} queued with loop.call_soon() had not run when the loop closed; "
                   f"{'it was' if n == 1 else 'they were'} discarded")
    else:
        what = f"timer {callback}()" if n == 1 else f"{n} timers {callback}()"
        due = ""
        if dues:
            soonest = min(dues)
            due = (f" (due in {soonest:.3g} s)" if soonest > 0 else " (already due)")
        message = (f"{what} scheduled with loop.{method}() {'was' if n == 1 else 'were'} "
                   f"still pending when the loop closed{due}; "
                   f"{'it' if n == 1 else 'they'} never ran")
    stacks: dict[str, list[Frame]] = {}
    if group["stack"]:
        stacks["scheduled"] = list(group["stack"])
    if not group["known_site"]:
        message += " (where it was scheduled is unknown: this is where the callback is defined)"
    return Finding(
        kind="dropped_callback",
        message=message,
        site=site,
        stacks=stacks,
        hint=DROPPED_HINT,
        details={"method": method, "callback": callback, "count": n,
                 "due_in": [round(d, 6) for d in dues[:20]]},
        key=group["key"],
    )
