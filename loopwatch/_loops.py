"""Watched loops: the loop classes, ``loop_factory``, the policy, ``attach`` and ``run``.

A watched loop is a subclass of the base loop (asyncio's default loop or uvloop's)
that tells its :class:`~loopwatch.Watcher` about the moments that matter: the loop
starts running, a runner's main coroutine returns, an exception reaches the
handler, the loop closes. Everything else is the base loop's own code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._detectors.closed import hooks
from ._exceptions import ConsoleError, NotWatchedError, OptionsError
from ._options import Options, make_options
from ._records import (
    _CREATE_TASK_FILES,
    _CREATE_TASK_MODULES,
    _STOP,
    _ids,
    compiled_create_task,
    make_task_factory,
    record_existing,
    speedups,
)
from ._watcher import Watcher, _tasks_may_exist

__all__ = [
    "WatchedEventLoopPolicy",
    "attach",
    "install",
    "loop_factory",
    "run",
    "watcher",
]

T = TypeVar("T")

_monotonic = time.monotonic
_current_task = asyncio.current_task
_getframe = sys._getframe

_modname: Callable[[int], str | None] | None = getattr(sys, "_getframemodulename", None)


_SHUTDOWN_STEPS = frozenset({"shutdown_asyncgens", "shutdown_default_executor"})
_RUNNER_FILES = ("asyncio/runners.py", "anyio/_backends/_asyncio.py", "uvloop/__init__.py")


def _called_by_runner() -> bool:
    """Whether ``run_until_complete`` was called by a runner's ``run`` (asyncio's
    ``Runner.run``, 3.10's ``asyncio.run``, anyio's 3.10 copy of ``Runner``, uvloop's
    3.10 copy of ``asyncio.run`` in ``uvloop.run``)."""
    try:
        frame = sys._getframe(2)
    except ValueError:
        return False
    code = frame.f_code
    if code.co_name != "run":
        return False
    filename = code.co_filename.replace("\\", "/")
    return filename.endswith(_RUNNER_FILES)


def _no_frame() -> None:
    pass


def _fast_path(loop: Any, task_class: Any, depth: int) -> tuple[Callable[..., Any],
                                                                Callable[[], None]]:
    """The watched loop's ``create_task`` for the common case, and the function that
    lets go of the frame it remembers.

    It records the task itself rather than through the task factory (one Python call
    less for every task), and keeps its state in closure cells rather than attributes
    of the loop, which Python cannot look up quickly on a subclass of a C loop class.
    It is a method of the loop's own class, taken away when the loop needs the base
    loop's own path (see ``_lw_choose_path``). Where ``loopwatch._speedups`` was built,
    it is the compiled version of the same function.
    """
    if speedups is not None:
        fast = compiled_create_task(loop, task_class, depth, _WatchedLoopMixin.create_task)
        return fast, fast.forget
    last_frame: Any = None
    last_lasti = -1
    last_stack: tuple[Any, ...] = ()
    hint = 0
    ids = _ids
    current_task = _current_task
    monotonic = _monotonic
    getframe = _getframe
    modname = _modname
    stop = _STOP
    plumbing_files = _CREATE_TASK_FILES
    plumbing_modules = _CREATE_TASK_MODULES

    def forget_frame() -> None:
        nonlocal last_frame
        last_frame = None

    def capture(f: Any, parent: Any) -> tuple[Any, ...]:
        nonlocal last_frame, last_lasti, last_stack, hint
        first = f
        # The creating task's own coroutine frame is the top of the stack: going past
        # it would only reach (and materialize) the loop's frames.
        top = getattr(parent._coro, "cr_frame", None) if parent is not None else None
        out: list[Any] = []
        n = depth
        while f is not None and n:
            code = f.f_code
            if code is stop:
                break
            out.append(code)
            out.append(f.f_lasti)
            if f is top:
                break
            f = f.f_back
            n -= 1
        stack = tuple(out)
        if last_frame is None:
            if id(first) != hint:
                # A frame's first task: nothing is kept, so nothing needs letting go
                # of (a loop per test would pay one more callback for each task).
                # (Only compared: a reused id just starts the cache early.)
                hint = id(first)
                return stack
            # The frame is let go at the next turn of the loop, so that what its locals
            # hold (a task the program dropped, say) is released as if loopwatch were
            # not there; within one callback, a batch of tasks shares one capture.
            loop.call_soon(forget_frame)
        last_frame, last_lasti, last_stack = first, first.f_lasti, stack
        return stack

    def create_task(_loop: Any, coro: Any, *, name: str | None = None, context: Any = None,
                    **kwargs: Any) -> asyncio.Task[Any]:
        if kwargs:  # eager_start and the like: the base loop's path
            return _WatchedLoopMixin.create_task(  # type: ignore[no-any-return]
                loop, coro, name=name, context=context, **kwargs)
        task: Any
        if context is None:
            task = task_class(coro, loop=loop, name=name)
        else:
            task = task_class(coro, loop=loop, name=name, context=context)
        task._lw_id = next(ids)
        task._lw_name = name
        parent: Any = None
        try:
            parent = current_task(loop)
            if depth:
                # Start below asyncio's own create_task plumbing (asyncio.create_task,
                # ensure_future, TaskGroup.create_task).
                f: Any
                if modname is not None:  # 3.12+: look without materializing frames
                    d = 1
                    while modname(d) in plumbing_modules:
                        d += 1
                    f = getframe(d)
                else:
                    f = getframe(1)
                    while f.f_code.co_filename in plumbing_files:
                        f = f.f_back
                # A frame still at the instruction of the last capture has the same
                # callers at the same lines: the same stack. (Tasks are mostly made in
                # loops and comprehensions: all but the first of a batch skip the walk.)
                if f is last_frame and f.f_lasti == last_lasti:
                    task._lw_stack = last_stack
                else:
                    task._lw_stack = capture(f, parent)
            else:
                task._lw_stack = ()
        except Exception:  # never let recording break create_task (SPEC 3)
            task._lw_stack = ()
        task._lw_created = monotonic()
        if parent is None:
            task._lw_parent = 0
        else:
            try:
                task._lw_parent = parent._lw_id
            except AttributeError:  # a task made as asyncio.Task(...): not recorded
                task._lw_parent = 0
        return task  # type: ignore[no-any-return]

    return create_task, forget_frame


class _WatchedLoopMixin:
    """The overrides shared by every watched loop class."""

    # (set on each loop's own class: see _lw_setup)
    _lw_watcher: Watcher
    _lw_user_factory: Callable[..., Any] | None
    _lw_forget_frame: Callable[[], None]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Each watched loop is made as the one instance of a class of its own, which
        # holds what loopwatch puts on the loop (its watcher, the fast create_task, the
        # detectors' wrappers). As instance attributes they would take a base loop past
        # the 30 attributes Python keeps in a shared-key dict, and every `self.method`
        # call in asyncio's own loop code would then miss the interpreter's caches.
        # (Made here, not by assigning __class__ later: that gives the instance a dict
        # of its own, with the same effect.)
        if "_lw_own_class" not in cls.__dict__:
            cls = type(cls.__name__, (cls,), {
                "__slots__": (), "__module__": cls.__module__,
                "__qualname__": cls.__qualname__, "_lw_own_class": True})
        return super().__new__(cls)

    def _lw_setup(self, options: Options, base: str) -> None:
        loop: Any = self
        own: Any = type(self)  # (see __new__)
        own._lw_watcher = Watcher(loop, options, base=base)
        own._lw_user_factory = None
        own._lw_forget_frame = staticmethod(_no_frame)
        # Tasks made through create_task are recorded by the fast path (_fast_path);
        # the factory records the others: those of the slow path, and those made by code
        # that calls the factory directly.
        super().set_task_factory(make_task_factory(self._lw_watcher))  # type: ignore[misc]
        self._lw_choose_path()
        self._lw_watcher.install_detectors()
        if options.console and options.console != "off":
            _start_console(self._lw_watcher, options.console)

    # The task factory is ours; a program that sets its own gets it chained.
    def set_task_factory(self, factory: Callable[..., Any] | None) -> None:
        if factory is not None and not callable(factory):
            raise TypeError(f"task factory must be a callable or None, got {factory!r}")
        # (a static method: a function on the class would be bound to the loop)
        type(self)._lw_user_factory = None if factory is None else staticmethod(factory)
        if factory is not None and factory is getattr(asyncio, "eager_task_factory", None):
            # Eager tasks of our own class: same eagerness, and the history keeps them.
            ours = make_task_factory(self._lw_watcher, eager=True)
        else:
            ours = make_task_factory(self._lw_watcher, chained=factory)
        super().set_task_factory(ours)  # type: ignore[misc]
        self._lw_choose_path()

    def get_task_factory(self) -> Callable[..., Any] | None:
        return self._lw_user_factory

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)  # type: ignore[misc]
        if hasattr(self, "_lw_watcher"):  # (the base loop's __init__ calls set_debug)
            self._lw_choose_path()

    def _lw_choose_path(self) -> None:
        """Record tasks in the fast path, unless something unusual needs the base
        loop's own create_task (debug mode, a program's task factory, a closed loop)."""
        own: Any = type(self)
        if "create_task" in own.__dict__:
            del own.create_task
        if (self._lw_user_factory is None and not self.get_debug()  # type: ignore[attr-defined]
                and not self.is_closed()):  # type: ignore[attr-defined]
            create_task, forget = _fast_path(
                self, self._lw_watcher.task_class, self._lw_watcher.options.stack_depth)
            own.create_task = create_task
            own._lw_forget_frame = staticmethod(forget)
        else:
            own._lw_forget_frame = staticmethod(_no_frame)

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None,
                    **kwargs: Any) -> asyncio.Task[Any]:
        # The slow path (the fast one is an attribute of the loop: see _fast_path): the
        # base loop's create_task, whose task factory is ours and records the task.
        if context is not None:
            kwargs["context"] = context
        return super().create_task(coro, name=name, **kwargs)  # type: ignore[misc, no-any-return]

    def run_forever(self) -> None:
        self._lw_watcher._loop_started()
        try:
            super().run_forever()  # type: ignore[misc]
        finally:
            self._lw_forget_frame()
            self._lw_watcher._loop_stopped()

    def run_until_complete(self, future: Any) -> Any:
        # (3.10's asyncio.run also shuts down from the same function: not a main run.)
        by_runner = _called_by_runner() and getattr(
            getattr(future, "cr_code", None), "co_name", "") not in _SHUTDOWN_STEPS
        if not by_runner:
            return super().run_until_complete(future)  # type: ignore[misc]
        # The main coroutine of asyncio.run / Runner.run: when it returns, whatever is
        # still pending is about to be cancelled by the runner. Picture it first.
        loop: Any = self
        fut = asyncio.ensure_future(future, loop=loop)
        try:
            return super().run_until_complete(fut)  # type: ignore[misc]
        finally:
            self._lw_watcher._run_finished(fut)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        try:
            self._lw_watcher._exception_context(context)
        except Exception:  # the watcher guards its detectors; this is the last layer
            pass
        super().call_exception_handler(context)  # type: ignore[misc]

    def close(self) -> None:
        watcher = self._lw_watcher
        if not watcher.closed and not self.is_closed():  # type: ignore[attr-defined]
            if self.is_running():  # type: ignore[attr-defined]
                super().close()  # type: ignore[misc]  # raises "Cannot close a running event loop"
            # Tasks made from now on take the slow path, which knows a closed loop.
            own: Any = type(self)
            if "create_task" in own.__dict__:
                del own.create_task
            self._lw_forget_frame()
            watcher._before_close()
            try:
                super().close()  # type: ignore[misc]
            finally:
                watcher._after_close()
        else:
            super().close()  # type: ignore[misc]


_default_base: type[asyncio.AbstractEventLoop] = getattr(
    asyncio.DefaultEventLoopPolicy, "_loop_factory", asyncio.SelectorEventLoop
)


class WatchedEventLoop(_WatchedLoopMixin, _default_base):  # type: ignore[misc, valid-type]
    """asyncio's default event loop, watched."""

    def __init__(self, *args: Any, options: Options | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lw_setup(options or Options(), "asyncio")


_uvloop_class: type[Any] | None = None


def _watched_uvloop_class() -> type[Any]:
    global _uvloop_class
    if _uvloop_class is None:
        try:
            import uvloop
        except ImportError as exc:
            raise OptionsError(
                "the uvloop base loop needs uvloop: pip install 'loopwatch[uvloop]'"
            ) from exc

        class WatchedUVLoop(_WatchedLoopMixin, uvloop.Loop):  # type: ignore[misc, name-defined]
            """uvloop's event loop, watched."""

            def __init__(self, *args: Any, options: Options | None = None,
                         **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._lw_setup(options or Options(), "uvloop")

        WatchedUVLoop.__module__ = __name__
        _uvloop_class = WatchedUVLoop
    return _uvloop_class


BaseSpec = str | Callable[[], asyncio.AbstractEventLoop] | None


def loop_factory(base: BaseSpec = None, **options: Any) -> Callable[[], asyncio.AbstractEventLoop]:
    """A callable that makes a new watched loop, for ``loop_factory=`` arguments.

    ``base`` is ``None`` or ``"asyncio"`` (asyncio's default loop), ``"uvloop"``, or a
    callable returning a loop (that loop is then attached to instead of subclassed)::

        asyncio.run(main(), loop_factory=loopwatch.loop_factory())          # 3.12+
        with asyncio.Runner(loop_factory=loopwatch.loop_factory("uvloop")) as r: ...
        anyio.run(main, backend_options={"loop_factory": loopwatch.loop_factory()})
    """
    opts = make_options(**options)
    if base is None or base == "asyncio":
        def new_asyncio_loop() -> asyncio.AbstractEventLoop:
            return WatchedEventLoop(options=opts)
        return new_asyncio_loop
    if base == "uvloop":
        cls = _watched_uvloop_class()

        def new_uvloop_loop() -> asyncio.AbstractEventLoop:
            loop: asyncio.AbstractEventLoop = cls(options=opts)
            return loop
        return new_uvloop_loop
    if isinstance(base, str):
        raise OptionsError(f"base loop must be 'asyncio', 'uvloop' or a callable, got {base!r}")
    if not callable(base):
        raise OptionsError(f"base loop must be 'asyncio', 'uvloop' or a callable, got {base!r}")
    make = base

    def new_attached_loop() -> asyncio.AbstractEventLoop:
        loop = make()
        _attach(loop, opts)
        return loop
    return new_attached_loop


class WatchedEventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc, name-defined]
    """An event loop policy whose new loops are watched (3.10 to 3.13).

    ``base`` picks the base loop as in :func:`loop_factory`.
    """

    def __init__(self, base: BaseSpec = None, **options: Any) -> None:
        super().__init__()
        self._lw_factory = loop_factory(base, **options)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._lw_factory()


def install(base: BaseSpec = None, **options: Any) -> WatchedEventLoopPolicy:
    """Make every loop created from now on a watched loop (sets the event loop policy).

    On Python 3.14 and later, where CPython deprecates policies, this warns and
    still installs; prefer ``loop_factory``.
    """
    if sys.version_info >= (3, 14):
        warnings.warn(
            "loopwatch.install() sets an event loop policy, which Python 3.14 deprecates; "
            "use asyncio.run(..., loop_factory=loopwatch.loop_factory()) instead",
            DeprecationWarning,
            stacklevel=2,
        )
    policy = WatchedEventLoopPolicy(base, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)
    return policy


def watcher(loop: asyncio.AbstractEventLoop | None = None) -> Watcher:
    """The watcher of ``loop`` (default: the running loop).

    Raises :class:`NotWatchedError` when the loop is not watched.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NotWatchedError(
                "loopwatch.watcher() needs a loop: call it inside a running loop or pass one"
            ) from None
    found = getattr(loop, "_lw_watcher", None)
    if found is None:
        raise NotWatchedError(
            f"{loop!r} is not watched; make it with loopwatch.loop_factory() or call "
            "loopwatch.attach(loop)"
        )
    assert isinstance(found, Watcher)
    return found


def attach(loop: asyncio.AbstractEventLoop | None = None, **options: Any) -> Watcher:
    """Watch a loop that already exists (default: the running loop).

    Tasks created before are listed without a creation stack. Attaching twice returns
    the same watcher.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NotWatchedError(
                "loopwatch.attach() needs a loop: call it inside a running loop or pass one"
            ) from None
    existing = getattr(loop, "_lw_watcher", None)
    if existing is not None:
        assert isinstance(existing, Watcher)
        return existing
    return _attach(loop, make_options(**options))


def _attach(loop: asyncio.AbstractEventLoop, options: Options) -> Watcher:
    """Instrument a loop we did not make, through its public hooks and instance attributes."""
    if loop.is_closed():
        raise NotWatchedError(f"cannot attach to a closed loop: {loop!r}")
    w = Watcher(loop, options, attached=True)
    target: Any = loop
    previous_factory = loop.get_task_factory()
    factory = make_task_factory(w, chained=previous_factory)
    loop.set_task_factory(factory)
    wrappers = () if _share_class(loop, w) else _wrap_loop(loop, w)
    w._detach = functools.partial(_detach, target, factory, previous_factory, w, wrappers)
    # (no exception raised and caught, no walk of asyncio's task registry when no task
    # exists at all: a loop per test is attached this way)
    running = asyncio._get_running_loop() is loop
    if _tasks_may_exist():
        for task in asyncio.all_tasks(loop):
            record_existing(task)
    w.install_detectors()
    if running:
        w._loop_started()
    if options.console and options.console != "off":
        _start_console(w, options.console)
    return w


_shared_class: Callable[[type], type | None] | None = None


def shared_class_of(cls: type) -> type | None:
    """The shared open class of loop class ``cls`` (``_detectors/shared.py``), or None.
    The module is imported at the first call, not with loopwatch, and then kept: a loop
    per test must not pay for an import."""
    global _shared_class
    if _shared_class is None:
        from ._detectors.shared import shared_class

        _shared_class = shared_class
    return _shared_class(cls)


def _share_class(loop: Any, w: Watcher) -> bool:
    """Switch the loop to its class's shared subclass (see ``_detectors/shared.py``),
    whose ``close`` and ``call_exception_handler`` tell ``w``; False when it has none.
    (Each detector checks its own methods when it is installed: one that the loop's own
    attributes hide gets wrappers on the loop instead.)"""
    cls = type(loop)
    if "_lw_closed" in cls.__dict__:
        # Born of the shared class (the pytest plugin has pytest-asyncio's runner make
        # its loop so): only the watcher to set. Neither that nor the check reads
        # ``loop.__dict__``: the loop keeps its attributes in the fast storage that
        # switching the class gives up (see ``hooks``).
        if not hooks(loop, ("close", "call_exception_handler")):
            return False
        loop._lw_watcher = w
        return True
    shared: Any = shared_class_of(cls)
    if shared is None:
        return False
    try:
        own = loop.__dict__
    except AttributeError:
        return False
    if "close" in own or "call_exception_handler" in own:
        return False
    own["_lw_watcher"] = w
    try:
        loop.__class__ = shared
    except TypeError:
        del own["_lw_watcher"]
        return False
    return True


def _wrap_loop(loop: Any, w: Watcher) -> tuple[Any, ...]:
    """Tell ``w`` about the loop's close and exceptions through wrappers that are the
    loop's own attributes; returns them."""
    target: Any = loop
    original_close = loop.close
    original_ceh = loop.call_exception_handler

    def close() -> None:
        if not w.closed and not loop.is_closed() and not loop.is_running():
            w._before_close()
            try:
                original_close()
            finally:
                w._after_close()
        else:
            original_close()

    def call_exception_handler(context: dict[str, Any]) -> None:
        try:
            w._exception_context(context)
        except Exception:
            pass
        original_ceh(context)

    try:
        target.close = close
        target.call_exception_handler = call_exception_handler
        target._lw_watcher = w
    except AttributeError:
        w.notes.append(f"{type(loop).__name__} takes no attributes: shutdown checks are "
                       "not observable on it")
    return close, call_exception_handler


def _detach(loop: Any, factory: Any, previous_factory: Any, w: Watcher,
            wrappers: tuple[Any, ...]) -> None:
    """Take off what ``_attach`` put on a loop (``Watcher.release``: the loop is closed).
    Loop and watcher then no longer hold each other, so the loop is freed with its last
    reference, not by a garbage collection."""
    own = getattr(loop, "__dict__", {})
    base = type(loop).__dict__.get("_lw_base")
    if base is not None and own.get("_lw_watcher") is w:
        loop.__class__ = base
        del own["_lw_watcher"]
    else:
        for name, value in (*zip(("close", "call_exception_handler"), wrappers, strict=False),
                            ("_lw_watcher", w)):
            if own.get(name) is value:
                delattr(loop, name)
    if loop.get_task_factory() is factory:
        loop.set_task_factory(previous_factory)


def _start_console(w: Watcher, address: str) -> None:
    """The console the options ask for; one that cannot start is a warning, not a crash
    (the program runs on without it)."""
    try:
        w.start_console(address)
    except ConsoleError as exc:
        logging.getLogger("loopwatch").warning("loopwatch: the console did not start: %s; "
                                               "the program runs on", exc)
        w.notes.append(f"the console did not start: {exc}")


def run(
    main: Coroutine[Any, Any, T],
    *,
    loop: BaseSpec = None,
    debug: bool | None = None,
    **options: Any,
) -> T:
    """Run ``main`` on a new watched loop and close it: a drop-in for ``asyncio.run``.

    ``loop`` is ``None``/``"asyncio"``, ``"uvloop"`` or a loop factory. Same result,
    same exceptions, same shutdown order as ``asyncio.run``; stragglers are reported
    before the runner cancels them. ``options`` are loopwatch's options.
    """
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    if asyncio._get_running_loop() is not None:
        main.close()
        raise RuntimeError("loopwatch.run() cannot be called from a running event loop")
    try:
        factory = loop_factory(loop, **options)
    except Exception:
        main.close()
        raise
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    return _run_310(main, factory, debug)


def _run_310(main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop],
             debug: bool | None) -> T:
    """asyncio.run of Python 3.10, with a loop factory."""
    if asyncio._get_running_loop() is not None:
        main.close()
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    new_loop = factory()
    try:
        asyncio.set_event_loop(new_loop)
        if debug is not None:
            new_loop.set_debug(debug)
        task = new_loop.create_task(main)
        try:
            return new_loop.run_until_complete(task)
        finally:
            w = getattr(new_loop, "_lw_watcher", None)
            if w is not None:
                w._run_finished(task)
    finally:
        try:
            _cancel_all_tasks(new_loop)
            new_loop.run_until_complete(new_loop.shutdown_asyncgens())
            new_loop.run_until_complete(new_loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            new_loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception during asyncio.run() shutdown",
                "exception": task.exception(),
                "task": task,
            })
