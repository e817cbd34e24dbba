"""``loopwatch run``: a user's program, run as ``python`` would run it, with every loop watched.

The program runs in this process, in a fresh ``__main__`` module, with ``sys.argv``,
``sys.path[0]`` and ``__spec__`` set exactly as ``python script.py`` / ``python -m
module`` set them. Before it starts, every way it can make a loop is routed to a
watched loop: the event loop policy (``asyncio.run``, ``asyncio.new_event_loop``,
``asyncio.Runner``, ``anyio.run``) and uvloop's module-level factories (``uvloop.run``,
``uvloop.new_event_loop``, ``uvloop.install``, anyio's ``use_uvloop=True``), patched
the moment uvloop is imported. Every watcher of the run is kept to be reported at
exit, and the first live one gets the console (``loopwatch ps PID``).

When the program ends, however it ends, the steps Python itself takes at exit are
taken here in the same order (non-daemon threads are joined, then ``atexit``
handlers run), and only then is the report of the whole run written: what those
threads and handlers did to a closed loop is in it (SPEC section 9).
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import dataclasses
import gc
import importlib.machinery
import importlib.util
import os
import signal
import sys
import tempfile
import threading
import types
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

from ._exceptions import ConsoleError, LoopwatchError
from ._loops import WatchedEventLoopPolicy, _WatchedLoopMixin, attach, loop_factory
from ._options import Options, make_options
from ._report import Finding, Report
from ._watcher import Watcher, on_new_watcher

__all__ = ["Settings", "Target", "TargetError", "run_program"]


class TargetError(LoopwatchError):
    """The program to run cannot be found or read (bad input: exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """What to run: a script (a ``.py`` file, a folder or a zip with ``__main__.py``)
    or a module, and the program's own arguments."""

    script: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    """How ``loopwatch run`` watches the program (built from the command line)."""

    #: the base loop of every loop the program makes: ``"asyncio"`` or ``"uvloop"``
    base: str = "asyncio"
    #: loopwatch options for each watched loop (already validated)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: console address for each new loop (``"auto"``: the per-process socket), or None
    console: str | None = "auto"
    #: absolute path of the JSON report, or None
    report: str | None = None
    #: finding kinds that make the exit status 3
    fail_on: frozenset[str] = frozenset()
    dump_signal: int | None = None
    dump_after: float | None = None
    #: print every finding in full at exit (stacks, hints), not one line each
    verbose: bool = False


@dataclasses.dataclass
class _Ending:
    """How the program ended: its exit status, and whether Ctrl-C ended it."""

    status: int
    interrupted: bool = False


def run_program(target: Target, settings: Settings) -> int:
    """Run ``target`` under loopwatch and return the exit status (see SPEC section 5).

    Raises :class:`TargetError` when the program cannot be found; nothing of the
    program has run then.
    """
    if target.script is not None:
        _check_script(target.script)
    session = _Session(settings, program_argv=_program_argv(target))
    session.start()
    ending = _execute(target)
    _python_exit_steps()
    report = session.finish(collect=True)
    if session.pending_signal is not None:
        _redeliver(session.pending_signal)
    if settings.fail_on and report.of_kind(*settings.fail_on):
        return 3
    if ending.interrupted:
        # Like Python after an uncaught KeyboardInterrupt: die of SIGINT, so that the
        # parent (a shell, a supervisor) sees what really happened.
        _redeliver(signal.SIGINT)
    return ending.status


# -- the program as python would run it ------------------------------------------------


def _check_script(path: str) -> None:
    full = os.path.abspath(path)
    if os.path.isdir(full) or zipfile.is_zipfile(full):
        return
    try:
        with open(full, "rb"):
            pass
    except OSError as exc:
        raise TargetError(f"can't open file {full!r}: [Errno {exc.errno}] {exc.strerror}") from None


def _program_argv(target: Target) -> list[str]:
    first = target.script if target.script is not None else f"-m {target.module}"
    return [first, *target.args]


def _set_path0(entry: str) -> None:
    """``sys.path[0]`` as python sets it (unless ``-P`` / PYTHONSAFEPATH says not to)."""
    if getattr(sys.flags, "safe_path", False):
        return
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.insert(0, entry)


def _new_main(**attrs: Any) -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    if sys.version_info < (3, 14):
        module.__annotations__ = {}
    for name, value in attrs.items():
        setattr(module, name, value)
    return module


def _prepare(target: Target) -> tuple[types.CodeType, types.ModuleType]:
    """Set ``sys.argv`` / ``sys.path[0]`` and find the program's code and ``__main__``.

    Raises :class:`TargetError` for a program that does not exist; a syntax error
    or a failing parent package is the program's own error and propagates.
    """
    if target.module is not None:
        _set_path0(os.getcwd())
        spec, code = _module_code(target.module)
        sys.argv[:] = [spec.origin or target.module, *target.args]
        module = _new_main(__spec__=spec, __file__=spec.origin, __cached__=spec.cached,
                           __loader__=spec.loader, __package__=spec.parent)
        if not spec.has_location:
            del module.__file__
        return code, module
    assert target.script is not None
    path = target.script
    full = os.path.abspath(path)
    sys.argv[:] = [path, *target.args]
    if os.path.isdir(full) or zipfile.is_zipfile(full):
        # A folder or zip with __main__.py: python puts it first on sys.path and runs
        # its __main__ module.
        _set_path0(full)
        main_spec = importlib.machinery.PathFinder.find_spec("__main__", [full])
        if main_spec is None or main_spec.loader is None:
            raise TargetError(f"can't find '__main__' module in {path!r}")
        main_code = main_spec.loader.get_code("__main__")  # type: ignore[attr-defined]
        module = _new_main(__spec__=main_spec, __file__=main_spec.origin,
                           __cached__=main_spec.cached, __loader__=main_spec.loader,
                           __package__="")
        return main_code, module
    _set_path0(os.path.dirname(os.path.realpath(full)))
    try:
        with open(full, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise TargetError(f"can't open file {full!r}: [Errno {exc.errno}] {exc.strerror}") from None
    module = _new_main(__file__=full, __cached__=None,
                       __loader__=importlib.machinery.SourceFileLoader("__main__", full))
    # dont_inherit: loopwatch's own `from __future__` imports must not leak into the program
    return compile(source, full, "exec", dont_inherit=True), module


def _module_code(name: str) -> tuple[importlib.machinery.ModuleSpec, types.CodeType]:
    """The spec and code of module ``name`` as ``python -m name`` finds them."""
    if name.startswith("."):
        raise TargetError(f"relative module names are not supported: {name!r}")
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        # A missing parent package is bad input; a parent that fails to import because
        # of a missing dependency is the program's own error.
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise TargetError(f"no module named {exc.name!r}") from None
        raise
    except ValueError as exc:
        raise TargetError(f"cannot run module {name!r}: {exc}") from None
    if spec is None:
        raise TargetError(f"no module named {name!r}")
    if spec.submodule_search_locations is not None:
        if name == "__main__" or name.endswith(".__main__"):
            raise TargetError("cannot use package as __main__ module")
        try:
            return _module_code(name + ".__main__")
        except TargetError:
            raise TargetError(
                f"no module named '{name}.__main__'; {name!r} is a package and cannot be "
                "directly executed") from None
    loader = spec.loader
    if loader is None or not hasattr(loader, "get_code"):
        raise TargetError(f"no code object available for {name!r}")
    code = loader.get_code(name)
    if code is None:
        raise TargetError(f"no code object available for {name!r}")
    return spec, code


def _execute(target: Target) -> _Ending:
    """Run the program's code in a new ``__main__``; report how it ended, as python does."""
    try:
        code, module = _prepare(target)
        sys.modules["__main__"] = module
        exec(code, module.__dict__)
    except TargetError:
        raise
    except SystemExit as exc:
        return _Ending(_system_exit_status(exc))
    except KeyboardInterrupt as exc:
        _print_uncaught(exc)
        return _Ending(130, interrupted=True)
    except BaseException as exc:
        _print_uncaught(exc)
        return _Ending(1)
    return _Ending(0)


def _system_exit_status(exc: SystemExit) -> int:
    """The exit status of an uncaught ``SystemExit``, with python's printing of a
    non-integer code."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(f"{code}\n")
        sys.stderr.flush()
    except Exception:
        pass
    return 1


# Frames that exist only because the program runs under `loopwatch run`: this module,
# the CLI, and the watched loop's overrides that wrap the base loop's methods one to one.
_HERE = os.path.dirname(os.path.abspath(__file__))
_OUR_FILES = frozenset(os.path.join(_HERE, name)
                       for name in ("_program.py", "_cli.py", "__main__.py"))
_WRAPPER_CODES = frozenset(
    value.__code__ for value in vars(_WatchedLoopMixin).values()
    if isinstance(value, types.FunctionType)
)
#: the import machinery, shown at the head of a traceback when a parent package fails
#: to import (frozen on 3.11+, plain files on 3.10)
_IMPORT_HEAD = ("<frozen runpy>", "<frozen importlib",
                os.path.dirname(os.path.abspath(importlib.util.__file__ or "")) + os.sep)


def _passthrough(tb: types.TracebackType) -> bool:
    code = tb.tb_frame.f_code
    return code in _WRAPPER_CODES or code.co_filename in _OUR_FILES


def _trimmed(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without loopwatch's pass-through frames (and runpy/importlib at its head)."""
    kept: list[types.TracebackType] = []
    while tb is not None:
        if not _passthrough(tb):
            kept.append(tb)
        tb = tb.tb_next
    while kept and kept[0].tb_frame.f_code.co_filename.startswith(_IMPORT_HEAD):
        kept.pop(0)
    for i, entry in enumerate(kept):
        entry.tb_next = kept[i + 1] if i + 1 < len(kept) else None
    return kept[0] if kept else None


def _trim_all(exc: BaseException) -> None:
    """Trim the tracebacks of ``exc``, its causes and contexts, and group members."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        try:
            e.__traceback__ = _trimmed(e.__traceback__)
        except Exception:  # a traceback we cannot rewrite is shown as it is
            pass
        for other in (e.__cause__, e.__context__):
            if other is not None:
                todo.append(other)
        todo.extend(getattr(e, "exceptions", ()) or ())


def _print_uncaught(exc: BaseException) -> None:
    """Show an uncaught exception exactly as python would (``sys.excepthook``)."""
    _trim_all(exc)
    tb = exc.__traceback__
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException as hook_error:
        try:
            sys.stderr.write("Error in sys.excepthook:\n")
            sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
            sys.stderr.write("\nOriginal exception was:\n")
            sys.__excepthook__(type(exc), exc, tb)
        except BaseException:
            pass
    try:
        sys.stderr.flush()
    except Exception:
        pass


def _python_exit_steps() -> None:
    """What python does at exit before the interpreter goes away: join non-daemon
    threads (after running threading's own exit hooks), then run ``atexit`` handlers.

    Both are idempotent: python's own finalization finds nothing left to do.
    """
    shutdown: Callable[[], None] | None = getattr(threading, "_shutdown", None)
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        try:
            shutdown()
        except KeyboardInterrupt:  # python too ignores a Ctrl-C while joining threads
            pass
        except Exception:
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # handlers' errors are printed by atexit itself
        pass


def _redeliver(signum: int) -> None:
    """Die of ``signum`` with its default disposition, as the program would have."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


# -- the session: every loop the program makes is watched ----------------------------


class _Session:
    """The hooks that make every loop watched, the watchers kept to report at exit,
    and the report itself."""

    def __init__(self, settings: Settings, *, program_argv: list[str]) -> None:
        self.settings = settings
        self.program_argv = program_argv
        #: strong references: every watcher of the run is reported at exit
        self.watchers: list[Watcher] = []
        self.pending_signal: int | None = None
        self._lock = threading.Lock()
        self._finishing = False
        self._report: Report | None = None
        self._console_missing_said = False
        #: a child forked by the program carries this session: it never reports
        self.pid = os.getpid()

    # -- starting ------------------------------------------------------------------

    def start(self) -> None:
        on_new_watcher.append(self._adopt)
        self._install_policy(self.settings.base)
        if "uvloop" in sys.modules:
            self._patch_uvloop(sys.modules["uvloop"])
        else:
            sys.meta_path.insert(0, _ImportHook("uvloop", self._patch_uvloop))
        self._install_sigterm()
        self._start_dumps()
        if self.settings.options.get("track_origins"):
            # Coroutines the program makes outside any loop (at module level) too.
            depth = int(self.settings.options.get("stack_depth", 8)) or 1
            sys.set_coroutine_origin_tracking_depth(depth)

    def _adopt(self, watcher: Watcher) -> None:
        """Every new watcher of the run (``on_new_watcher``): kept, and given the
        console unless the program chose console options for that loop itself."""
        self.watchers.append(watcher)
        if watcher.options.console is None:
            self._give_console(watcher)

    def _install_policy(self, base: str) -> None:
        policy = WatchedEventLoopPolicy(base, **self.settings.options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(policy)

    def _give_console(self, watcher: Watcher) -> None:
        """Start the console for ``watcher``; a console that cannot start is one line on
        stderr, and the program runs on. (Called while the watcher is being set up: the
        server only keeps the watcher, and commands come later.)"""
        address = self.settings.console
        if address is None or watcher.console is not None:
            return
        if any(w.console is not None for w in self.watchers if w is not watcher):
            # One console per process at a time: it serves the first live loop, and the
            # next new loop gets it when that one closes (two could not share the address).
            return
        try:
            watcher.start_console(address)
        except ConsoleError as exc:
            _say(f"loopwatch: the console did not start: {exc}; the program runs on")
        except ImportError as exc:
            # A build without the console: the default console is quietly left out, one
            # the user asked for by address is not.
            if address != "auto" and not self._console_missing_said:
                self._console_missing_said = True
                _say(f"loopwatch: the console is not available: {exc}; the program runs on")
        except Exception as exc:
            _say(f"loopwatch: the console did not start: {type(exc).__name__}: {exc}; "
                 "the program runs on")

    def watched(self, factory: Callable[[], Any]) -> Callable[[], Any]:
        """A loop factory the program chose, made to return watched loops."""
        options = self.settings.options
        if (isinstance(factory, type) and issubclass(factory, asyncio.AbstractEventLoop)
                and not issubclass(factory, _WatchedLoopMixin)):
            # A loop class: a watched subclass of it sees everything a watched loop sees
            # (attaching to an instance cannot see what a runner leaves behind).
            try:
                return _watched_class(factory, make_options(**options))
            except Exception:
                pass  # attached below

        def new_event_loop() -> Any:
            loop = factory()
            if getattr(loop, "_lw_watcher", None) is None:
                try:
                    attach(loop, **options)
                except Exception as exc:
                    _say(f"loopwatch: cannot watch {loop!r}: {exc}")
            return loop

        return new_event_loop

    def _patch_uvloop(self, uvloop: types.ModuleType) -> None:
        """Route uvloop's module-level ways of making loops to watched uvloop loops."""
        try:
            make = loop_factory("uvloop", **self.settings.options)
        except LoopwatchError as exc:
            _say(f"loopwatch: uvloop loops cannot be watched: {exc}")
            return
        with warnings.catch_warnings():
            # Newer uvloop makes `install` and `EventLoopPolicy` on first access, and
            # overwrites `install` when it does: make them now, then patch.
            warnings.simplefilter("ignore")
            getattr(uvloop, "EventLoopPolicy", None)
            original_install = getattr(uvloop, "install", None)
        original_run = getattr(uvloop, "run", None)
        session = self

        def new_event_loop() -> Any:
            """Return a new event loop (a watched uvloop loop, under ``loopwatch run``)."""
            return make()

        uvloop.new_event_loop = new_event_loop  # type: ignore[attr-defined]

        if original_run is not None:
            def run(main: Any, *, loop_factory: Any = None, **kwargs: Any) -> Any:
                """uvloop.run, on a watched uvloop loop."""
                factory = new_event_loop if loop_factory is None else session.watched(
                    loop_factory)
                return original_run(main, loop_factory=factory, **kwargs)

            run.__wrapped__ = original_run  # type: ignore[attr-defined]
            uvloop.run = run  # type: ignore[attr-defined]

        if original_install is not None:
            def install() -> None:
                """uvloop.install, with a policy whose loops are watched uvloop loops."""
                if sys.version_info >= (3, 12):
                    warnings.warn("uvloop.install() is deprecated in favor of uvloop.run() "
                                  "starting with Python 3.12.", DeprecationWarning, stacklevel=2)
                session._install_policy("uvloop")

            install.__wrapped__ = original_install  # type: ignore[attr-defined]
            uvloop.install = install  # type: ignore[attr-defined]

    def _install_sigterm(self) -> None:
        # Only when the program would have died of SIGTERM's default action; a handler
        # the program installs later replaces this one, as it should.
        if not hasattr(signal, "SIGTERM"):
            return
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, self._on_sigterm)
        except (OSError, ValueError):
            pass

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked child (a pool worker being terminated)
            _redeliver(signum)
        if self._finishing:
            # The report is being written by the main flow, which this handler
            # interrupted: it re-delivers the signal when it is done.
            self.pending_signal = signum
            return
        # Written from a helper thread: the main thread may hold a lock that the
        # report needs, and loopwatch must never hang the program it watches.
        helper = threading.Thread(target=self.finish, name="loopwatch-report", daemon=True)
        helper.start()
        helper.join(10.0)
        _redeliver(signum)

    def _start_dumps(self) -> None:
        settings = self.settings
        if settings.dump_signal is None and settings.dump_after is None:
            return
        dump = dump_functions()
        if dump is None:
            return
        dump_on_signal, dump_later = dump
        try:
            if settings.dump_signal is not None:
                dump_on_signal(settings.dump_signal)
            if settings.dump_after is not None:
                dump_later(settings.dump_after)
        except Exception as exc:
            _say(f"loopwatch: dumps are not set up: {type(exc).__name__}: {exc}")

    # -- ending ----------------------------------------------------------------------

    def build_report(self, *, collect: bool = False) -> Report:
        """One report of the whole run: every watcher's findings, and a final audit of
        each loop that never closed.

        With ``collect``, the garbage collection python makes at exit is made between
        the audits and the report: a task or coroutine dropped in a reference cycle is
        finalized while its finding can still be reported, and a straggler of a loop
        that never closed is pictured before the collector takes it.
        """
        report = Report(scope="run", argv=list(self.program_argv))
        audits: list[tuple[Watcher, list[Finding]]] = []
        for watcher in sorted(self.watchers, key=lambda w: w.serial):
            extra: list[Finding] = []
            if not watcher.closed:
                try:
                    known = {id(f) for f in watcher.findings()}
                    extra = [f for f in watcher.audit().findings if id(f) not in known]
                except Exception as exc:
                    report.notes.append(f"the final audit of {watcher!r} failed: "
                                        f"{type(exc).__name__}: {exc}")
            audits.append((watcher, extra))
        if collect:
            gc.collect()
        bases: list[str] = []
        for watcher, extra in audits:
            try:
                report.findings.extend(watcher.findings())
                report.findings.extend(extra)
                notes = watcher.all_notes()
                lag = watcher.lag()
            except Exception as exc:
                report.notes.append(f"the report of {watcher!r} failed: "
                                    f"{type(exc).__name__}: {exc}")
                continue
            report.notes.extend(n for n in notes if n not in report.notes)
            if watcher.base and watcher.base not in bases:
                bases.append(watcher.base)
            if lag and lag.get("samples", 0) >= report.lag.get("samples", 0):
                report.lag = dict(lag)
        report.loop = ",".join(bases)
        return report

    def finish(self, *, collect: bool = False) -> Report:
        """Build the report, write it and tell the user (once; thread-safe)."""
        if os.getpid() != self.pid:
            # A child forked by the program: the report is the parent's to write.
            return Report(scope="run", argv=list(self.program_argv))
        with self._lock:
            if self._report is not None:
                return self._report
            self._finishing = True
            report = self.build_report(collect=collect)
            if self.settings.report is not None:
                _write_report(report, self.settings.report)
            if report.findings:
                _print_summary(report, verbose=self.settings.verbose,
                               path=self.settings.report)
            self._report = report
            return report


_watched_classes: dict[type[Any], type[Any]] = {}


def _watched_class(cls: type[Any], options: Options) -> type[Any]:
    """A watched subclass of the loop class ``cls``."""
    key = cls
    found = _watched_classes.get(key)
    if found is None:
        base = "uvloop" if any(c.__module__.startswith("uvloop") for c in cls.__mro__) else (
            "asyncio")

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            cls.__init__(self, *args, **kwargs)
            self._lw_setup(options, base)

        found = type(cls.__name__, (_WatchedLoopMixin, cls),
                     {"__init__": __init__, "__module__": cls.__module__,
                      "__qualname__": cls.__qualname__})
        _watched_classes[key] = found
    return found


class _ImportHook:
    """Runs ``callback(module)`` right after the first import of module ``name``.

    The module's own loader is used (wrapped only while it executes the module), so
    the module looks as it always does once imported.
    """

    def __init__(self, name: str, callback: Callable[[types.ModuleType], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, self)
        return spec

    def loaded(self, module: types.ModuleType) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            self.callback(module)
        except Exception as exc:
            _say(f"loopwatch: could not watch {self.name}'s loops: {type(exc).__name__}: {exc}")


class _PatchingLoader:
    def __init__(self, loader: Any, hook: _ImportHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        if spec is not None:
            spec.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        self._hook.loaded(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def dump_functions() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``dump_on_signal`` and ``dump_later`` from ``loopwatch._dump``, when it is there."""
    import importlib

    try:
        module = importlib.import_module("loopwatch._dump")
    except ModuleNotFoundError:
        return None
    on_signal = getattr(module, "dump_on_signal", None)
    later = getattr(module, "dump_later", None)
    if on_signal is None or later is None:
        return None
    return on_signal, later


# -- output ----------------------------------------------------------------------------


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _write_report(report: Report, path: str) -> None:
    """Write the JSON report atomically: a reader never sees half of it."""
    folder = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".loopwatch-report-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(report.to_json())
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except Exception as exc:
        _say(f"loopwatch: could not write the report to {path}: {exc}")


def _print_summary(report: Report, *, verbose: bool, path: str | None) -> None:
    """The few lines on stderr that say what was found (everything, with ``verbose``)."""
    try:
        from rich.console import Console

        from ._render import report_renderable, summary_renderable

        console = Console(stderr=True, highlight=False, soft_wrap=True)
        console.print(report_renderable(report) if verbose else summary_renderable(report))
        if path is not None:
            console.print(f"loopwatch: report written to {path}", style="dim")
    except Exception as exc:
        _say(report.summary())
        _say(f"loopwatch: (the summary could not be rendered: {type(exc).__name__}: {exc})")
