"""The ``loopwatch`` command: ``loopwatch run`` here, the console commands from
``loopwatch.console.cli``.

Bad input (an unknown option, a bad value, a program that does not exist) is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ._exceptions import LoopwatchError
from ._options import make_options
from ._report import KINDS

__all__ = ["main"]

PROG = "loopwatch"


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line (subcommand parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


# -- value parsers (argparse reports their errors as "argument --x: ...") --------------


def _seconds(text: str, *, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if math.isnan(value) or math.isinf(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds {bound}, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, positive=True)


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of frames, got {text!r}") from None
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 0 and 256 frames, got {text!r}")
    return value


def parse_kinds(text: str) -> frozenset[str]:
    """``--fail-on``: a comma list of finding kinds, ``any`` or ``none``."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError("expected finding kinds, 'any' or 'none', got nothing")
    if words == ["none"]:
        return frozenset()
    if words == ["any"]:
        return frozenset(KINDS)
    unknown = [w for w in words if w not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown finding kind {unknown[0]!r}; use 'any', 'none' or a comma list of: "
            f"{', '.join(KINDS)}")
    return frozenset(words)


def _signal(text: str) -> int:
    name = text.strip().upper()
    try:
        number = int(name)
    except ValueError:
        if not name.startswith("SIG"):
            name = "SIG" + name
        found = getattr(signal, name, None)
        if not isinstance(found, signal.Signals):
            raise argparse.ArgumentTypeError(f"no signal named {text!r} (try USR1)") from None
        number = int(found)
    try:
        sig = signal.Signals(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"no signal number {text!r}") from None
    if sig.name in ("SIGKILL", "SIGSTOP"):
        raise argparse.ArgumentTypeError(f"{sig.name} cannot be caught")
    if sig.name in ("SIGINT", "SIGTERM"):
        # A dump handler would keep the program from ending on it.
        raise argparse.ArgumentTypeError(
            f"{sig.name} ends the program; dump on another signal (USR1), and use --report "
            "for what was left at the end")
    return int(sig)


def _report_path(text: str) -> str:
    path = os.path.abspath(text)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file")
    return path


def _console(text: str) -> str | None:
    value = text.strip()
    if value.lower() in ("off", "none", "no"):
        return None
    if value.lower() == "auto":
        return "auto"
    try:
        from .console.server import parse_address
    except ImportError:  # a build without the console: check the form here
        pass
    else:
        try:
            parse_address(value)
        except LoopwatchError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    if value.startswith("unix:"):
        if len(value) == len("unix:"):
            raise argparse.ArgumentTypeError("unix: needs a path, as in unix:/tmp/app.sock")
        return value
    rest = value[4:] if value.startswith("tcp:") else value
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'off', unix:PATH, tcp:HOST:PORT or HOST:PORT, got {text!r}")
    return value


# -- the parser --------------------------------------------------------------------------

#: ``loopwatch run`` options that take a value (the rest are flags)
_RUN_VALUE_OPTIONS: set[str] = set()

RUN_USAGE = ("loopwatch run [options] script.py [args ...]\n"
             "       loopwatch run [options] -m module [args ...]")


def _add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    run: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a program with every event loop it makes watched",
        usage=RUN_USAGE,
        description=(
            "Run a program as `python script.py` or `python -m module` would, with every "
            "event loop it makes watched (asyncio.run, new_event_loop, Runner, anyio.run, "
            "uvloop). At exit, a short summary on stderr says what was found; --report "
            "writes all of it as JSON. Options go before the program; everything after it "
            "is the program's own."),
        epilog=(
            "Exit status: the program's own (as python would give it), 3 with --fail-on "
            "when findings of those kinds exist, 2 for bad input to loopwatch itself."),
        allow_abbrev=False,
    )

    def option(*names: str, **kwargs: Any) -> None:
        run.add_argument(*names, **kwargs)
        if kwargs.get("action") not in ("store_true", "store_false"):
            _RUN_VALUE_OPTIONS.update(names)

    option("-m", dest="module", metavar="MODULE",
           help="run a library module as a script, as `python -m` does")
    option("--uvloop", action="store_true",
           help="make uvloop the base loop of every loop the program makes")
    option("--console", metavar="ADDR", type=_console, default="auto",
           help="where the live console listens (`loopwatch ps PID` and friends): "
                "unix:PATH, tcp:HOST:PORT, 'auto' (the default: a Unix socket for this "
                "process) or 'off'")
    option("--parked-after", metavar="SECONDS", type=_seconds, dest="parked_after",
           help="report a task waiting on the same future longer than this (default 10)")
    option("--stall-after", metavar="SECONDS", type=_seconds, dest="stall_after",
           help="report the loop not getting control back for longer than this "
                "(default 0.1)")
    option("--depth", metavar="N", type=_depth,
           help="frames of each task's creation stack to record (default 8)")
    option("--report", metavar="PATH", type=_report_path,
           help="write the JSON report of the whole run to PATH when the program ends, "
                "however it ends")
    option("--fail-on", metavar="KINDS", type=parse_kinds, dest="fail_on",
           default=frozenset(),
           help="exit with status 3 when findings of these kinds exist: a comma list of "
                "kinds, 'any' or 'none' (the default)")
    option("--dump-on-signal", metavar="SIG", type=_signal, dest="dump_signal",
           help="dump every task, its await chain and the loop thread's stack to stderr "
                "on this signal (e.g. USR1)")
    option("--dump-after", metavar="SECONDS", type=_positive_seconds, dest="dump_after",
           help="dump once after this many seconds, like faulthandler.dump_traceback_later")
    option("--track-origins", action="store_true", dest="track_origins",
           help="record where every coroutine is created, for never_awaited findings "
                "(costs time at each coroutine creation)")
    option("--verbose", "-v", action="store_true",
           help="at exit, print every finding in full (stacks and hints), not one line each")
    run.add_argument("program", nargs="?", metavar="script.py",
                     help="the program, followed by its own arguments")
    run.add_argument("args", nargs="*", metavar="args", help=argparse.SUPPRESS)
    run.set_defaults(func=None)
    return run


def build_parser(*, console: bool = True) -> tuple[_Parser, argparse.ArgumentParser]:
    """The ``loopwatch`` parser and its ``run`` subparser (with the console's commands
    unless ``console`` is false: ``loopwatch run`` does not need them)."""
    from . import __version__
    from ._records import speedups

    parser = _Parser(
        prog=PROG,
        description="An inspector for asyncio programs: which tasks exist and who made "
                    "them, which are stuck and on what, what blocks the loop, and what was "
                    "left behind when it closed.",
        allow_abbrev=False,
    )
    # (whether the per-task paths are compiled matters for overhead: say which)
    build = "compiled speedups" if speedups is not None else "pure Python"
    parser.add_argument("--version", action="version", version=f"loopwatch {__version__} ({build})")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    run = _add_run_parser(subparsers)
    if console:
        _register_console_commands(subparsers)
    return parser, run


def _register_console_commands(subparsers: Any) -> None:
    """``ps tree where ... top``: the console's commands, one shot from the shell."""
    import importlib
    import importlib.util

    try:
        found = importlib.util.find_spec("loopwatch.console.cli")
    except ImportError:
        found = None
    if found is None:
        return  # a build without the console
    console_cli = importlib.import_module("loopwatch.console.cli")
    console_cli.register(subparsers)


# -- loopwatch run ------------------------------------------------------------------------


def _split_run_args(argv: Sequence[str]) -> tuple[list[str], str | None, str | None, list[str]]:
    """Split ``run``'s arguments as python splits its own: loopwatch's options, then
    the script (or ``-m module``), then the program's arguments, left untouched."""
    options: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            if i + 1 < len(argv):
                return options, argv[i + 1], None, list(argv[i + 2:])
            return options, None, None, []
        if arg == "-m":
            if i + 1 >= len(argv):
                raise UsageError("loopwatch run: error: argument -m: expected a module name")
            return options, None, argv[i + 1], list(argv[i + 2:])
        if arg.startswith("-m") and not arg.startswith("--"):
            return options, None, arg[2:], list(argv[i + 1:])
        if arg.startswith("-") and arg != "-":
            options.append(arg)
            if arg in _RUN_VALUE_OPTIONS and i + 1 < len(argv):
                options.append(argv[i + 1])
                i += 2
            else:
                i += 1
            continue
        return options, arg, None, list(argv[i + 1:])
    return options, None, None, []


def _run(run_parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from ._program import Settings, Target, dump_functions, run_program

    options, script, module, program_args = _split_run_args(argv)
    ns = run_parser.parse_args(options)
    if script is None and module is None:
        raise UsageError("loopwatch run: error: name the program to run: "
                         "loopwatch run app.py, or loopwatch run -m package.module")
    if script == "-":
        raise UsageError("loopwatch run: error: reading the program from stdin is not "
                         "supported; name a script or a module")
    loop_options: dict[str, Any] = {}
    if ns.parked_after is not None:
        loop_options["parked_after"] = ns.parked_after
    if ns.stall_after is not None:
        loop_options["stall_after"] = ns.stall_after
    if ns.depth is not None:
        loop_options["stack_depth"] = ns.depth
    if ns.track_origins:
        loop_options["track_origins"] = True
    try:
        make_options(**loop_options)
    except LoopwatchError as exc:
        raise UsageError(f"loopwatch run: error: {exc}") from None
    base = "asyncio"
    if ns.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise UsageError("loopwatch run: error: --uvloop needs uvloop: "
                             "pip install 'loopwatch[uvloop]'") from None
        base = "uvloop"
    if (ns.dump_signal is not None or ns.dump_after is not None) and dump_functions() is None:
        raise UsageError("loopwatch run: error: --dump-on-signal and --dump-after need "
                         "loopwatch's dump support, which this build lacks")
    settings = Settings(
        base=base,
        options=loop_options,
        console=ns.console,
        report=ns.report,
        fail_on=ns.fail_on,
        dump_signal=ns.dump_signal,
        dump_after=ns.dump_after,
        verbose=ns.verbose,
    )
    target = Target(script=script, module=module, args=tuple(program_args))
    return run_program(target, settings)


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The ``loopwatch`` command; returns the exit status."""
    from ._program import TargetError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "run":
            return _run(build_parser(console=False)[1], args[1:])
        parser, _ = build_parser()
        if not args:
            raise UsageError(f"{PROG}: error: name a command ({_commands(parser)}); "
                             f"see {PROG} --help")
        ns = parser.parse_args(args)
        func = getattr(ns, "func", None)
        if func is None:
            raise UsageError(f"{PROG}: error: name a command; see {PROG} --help")
        result = func(ns)
        return int(result or 0)
    except UsageError as exc:
        _error_line(str(exc))
        return 2
    except TargetError as exc:
        _error_line(f"{PROG} run: error: {exc}")
        return 2
    except SystemExit as exc:  # --help, --version, and commands that exit
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        _error_line(str(code))
        return 2
    except KeyboardInterrupt:
        return 130


def _commands(parser: argparse.ArgumentParser) -> str:
    for action in parser._actions:  # argparse keeps subcommands in a private list
        if isinstance(action, argparse._SubParsersAction):
            return ", ".join(action.choices)
    return "run"


def _error_line(line: str) -> None:
    try:
        sys.stderr.write(line.replace("\n", " ") + "\n")
        sys.stderr.flush()
    except Exception:
        pass
