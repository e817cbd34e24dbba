"""One subclass of a loop's class, shared by every loop of that class loopwatch attaches to.

Attaching to a loop that loopwatch did not make (the pytest plugin attaches to the loop
of every test) used to put a dozen wrappers on the loop as instance attributes, one by
one, and take them off again when the loop was released. Now the loop's ``__class__``
is switched to a subclass made once for its class, whose methods do the same work for
the loop's watcher (``loop._lw_watcher``) and the detectors that watcher registered
(``Watcher.hook_timers`` and the like). Attaching and releasing are then an assignment
each.

- The **open** class has ``close`` and ``call_exception_handler`` (the watcher's close
  and exception hooks), the timer methods (dropped_callback), the async generator hooks
  (asyncgen_unfinalized) and the openers of connections and servers (unclosed_resource).
- The **closed** class, a subclass of the open one, is what post_close_call switches
  the loop to once it closed: ``_check_closed`` and ``create_future`` on asyncio's own
  loop (every other call-in checks first), every call-in on another loop.

Every method passes straight through for a loop without a watcher, or whose detector is
switched off or not registered. A detector whose methods the loop's own attributes hide
(somebody wrapped the loop's ``call_at`` before us) falls back to wrappers on the loop
(``LoopPatches``), and both kinds stack as the wrappers always did.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from types import CodeType, MethodType
from typing import Any

from .closed import (
    CALL_INS,
    _check_closed_codes,
    note_call_in,
    note_check,
    note_timer,
    pass_through,
)
from .resources import _ASYNCGEN_HOOKS, _OPENERS, note_finalizing, note_first, open_and_note

__all__ = ["shared_class"]

_HEAPTYPE = 1 << 9

#: loop class -> its shared open class (None: the class cannot have one)
_open: dict[type, type | None] = {}


def shared_class(cls: type) -> type | None:
    """The shared open class for loops of class ``cls``, or None when it cannot have
    one (a class without instance dicts, a loopwatch loop class, one that refuses to
    be subclassed)."""
    try:
        return _open[cls]
    except KeyError:
        pass
    made: type | None = None
    if (cls.__flags__ & _HEAPTYPE and cls.__dictoffset__ and "_lw_base" not in cls.__dict__
            and not any(c.__dict__.get("_lw_own_class") for c in cls.__mro__)
            and callable(getattr(cls, "close", None))
            and callable(getattr(cls, "call_exception_handler", None))):
        try:
            made = _make_open(cls)
        except Exception:  # (a metaclass or __init_subclass__ that says no)
            made = None
        if made is not None:
            # the class post_close_call switches the loop to when it closes
            try:
                closed: type | None = _make_closed(made)
            except Exception:
                closed = None
            made._lw_closed = closed  # type: ignore[attr-defined]
    if len(_open) < 64:
        _open[cls] = made
    return made


def _subclass(base: type, parent: type, methods: dict[str, Any]) -> type:
    """A subclass of ``parent`` that looks like ``base`` (its name, module, doc) and
    keeps its instance layout, so that a loop's ``__class__`` can be switched."""
    hooked = frozenset(methods) | parent.__dict__.get("_lw_hooked", frozenset())
    for name, method in methods.items():
        method.__name__ = name
        method.__qualname__ = f"{base.__qualname__}.{name}"
    namespace = {
        **methods,
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_lw_base": base,
        "_lw_hooked": hooked,
        "_lw_methods": frozenset(methods),
        "_lw_watcher": None,
    }
    return type(base.__name__, (parent,), namespace)


def _make_open(base: type) -> type:
    methods: dict[str, Any] = {
        "close": _close(base),
        "call_exception_handler": _exception_handler(base),
    }
    # asyncio's call_later calls self.call_at: call_at alone sees both
    timers = ("call_at",) if getattr(base, "call_later", None) is \
        asyncio.BaseEventLoop.call_later else ("call_later", "call_at")
    for name in timers:
        if callable(getattr(base, name, None)):
            methods[name] = _timer(base, name)
    if all(callable(getattr(base, name, None)) for name in _ASYNCGEN_HOOKS):
        methods[_ASYNCGEN_HOOKS[0]] = _firstiter_hook(base)
        methods[_ASYNCGEN_HOOKS[1]] = _finalizer_hook(base)
    for name in _OPENERS:
        if callable(getattr(base, name, None)):
            methods[name] = _opener(base, name)
    cls = _subclass(base, base, methods)
    cls._lw_openers = tuple(name for name in _OPENERS if name in methods)  # type: ignore[attr-defined]
    return cls


def _make_closed(cls: type) -> type:
    base: type = cls.__dict__["_lw_base"]
    codes = _check_closed_codes(base)
    methods: dict[str, Any] = {}
    if codes is not None:
        # asyncio's own loop: every call-in but create_future starts with
        # self._check_closed(), so two methods see them all
        methods["_check_closed"] = _check(cls, codes)
        methods["create_future"] = _call_in(cls, "create_future")
    else:
        for name in CALL_INS:
            if callable(getattr(cls, name, None)):
                methods[name] = _call_in(cls, name)
    return _subclass(base, cls, methods)


# The methods. Each is made for one class, and calls the method of the same name of
# that class's parent (looked up at each call, so that a method patched on the loop's
# class later is still the one called); it reads the watcher from the loop: a loop that
# has none passes straight through.


def _close(parent: type) -> Callable[[Any], None]:
    def close(self: Any) -> None:
        w = self._lw_watcher
        if w is not None and not w.closed and not self.is_closed() and not self.is_running():
            w._before_close()
            try:
                parent.close(self)  # type: ignore[attr-defined]
            finally:
                w._after_close()
        else:
            parent.close(self)  # type: ignore[attr-defined]

    return close


def _exception_handler(parent: type) -> Callable[..., None]:
    def call_exception_handler(self: Any, context: dict[str, Any]) -> None:
        w = self._lw_watcher
        if w is not None:
            try:
                w._exception_context(context)
            except Exception:  # the watcher guards its detectors; this is the last layer
                pass
        parent.call_exception_handler(self, context)  # type: ignore[attr-defined]

    return call_exception_handler


def _timer(parent: type, method: str) -> Callable[..., Any]:
    def timer(self: Any, when: Any, callback: Any, *args: Any, context: Any = None) -> Any:
        handle = getattr(parent, method)(self, when, callback, *args, context=context)
        w = self._lw_watcher
        if w is not None and w.hook_timers is not None:
            try:
                frame = sys._getframe(1)
            except ValueError:  # called from C with no Python frame above
                return handle
            note_timer(w.hook_timers, method, handle, frame)
        return handle

    return timer


def _firstiter_hook(parent: type) -> Callable[[Any, Any], Any]:
    def firstiter(self: Any, agen: Any) -> Any:
        w = self._lw_watcher
        if w is not None and w.hook_asyncgens is not None:
            note_first(w.hook_asyncgens, agen, sys._getframe(1))
        return parent._asyncgen_firstiter_hook(self, agen)  # type: ignore[attr-defined]

    return firstiter


def _finalizer_hook(parent: type) -> Callable[[Any, Any], Any]:
    def finalizer(self: Any, agen: Any) -> Any:
        w = self._lw_watcher
        if w is not None and w.hook_asyncgens is not None:
            note_finalizing(w.hook_asyncgens, agen)
        return parent._asyncgen_finalizer_hook(self, agen)  # type: ignore[attr-defined]

    return finalizer


def _opener(parent: type, method: str) -> Callable[..., Any]:
    def opener(self: Any, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(parent, method)
        w = self._lw_watcher
        if w is None or w.hook_openers is None:
            return inner(self, *args, **kwargs)
        return open_and_note(w.hook_openers, method, MethodType(inner, self),
                             sys._getframe(1), args, kwargs)

    return opener


def _check(parent: type, codes: dict[CodeType, str | None]) -> Callable[[Any], Any]:
    def check_closed(self: Any) -> Any:
        w = self._lw_watcher
        if w is not None and w.hook_post_close is not None:
            note_check(w.hook_post_close, sys._getframe(1), codes)
        return parent._check_closed(self)  # type: ignore[attr-defined]

    return check_closed


def _call_in(parent: type, method: str) -> Callable[..., Any]:
    def call_in(self: Any, *args: Any, **kwargs: Any) -> Any:
        w = self._lw_watcher
        if w is not None and w.hook_post_close is not None:
            note_call_in(w.hook_post_close, method, sys._getframe(1), args)
        return getattr(parent, method)(self, *args, **kwargs)

    return call_in


# (they always call the method they wrap: post_close_call's walk up from _check_closed
# goes through them)
pass_through(_timer(asyncio.BaseEventLoop, "call_at").__code__)
pass_through(_call_in(asyncio.BaseEventLoop, "call_at").__code__)
pass_through(_opener(asyncio.BaseEventLoop, "create_connection").__code__)
