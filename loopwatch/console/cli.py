"""The console's commands from the shell: ``loopwatch ps TARGET``, ``console``, ``top``.

:func:`register` adds the subcommands to the ``loopwatch`` parser; their options
come from the console's one command table, so ``loopwatch ps PID --parked`` and the
console line ``ps --parked`` are the same request. Each one-shot command asks over
the JSON interface and renders the answer with rich (plain when piped), or prints
the JSON with ``--json``. A target that cannot be reached is one line on stderr and
exit status 2; a command the console refused, status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time
from typing import Any

from rich.console import Console

from .client import ConsoleClient, RemoteError, TargetError
from .commands import (
    COMMANDS,
    REMOTE_COMMANDS,
    Command,
    Param,
    UsageError,
    blocked_line,
    find_command,
    parse_argv,
    render,
    text_args,
)

__all__ = ["register", "run_command", "run_console", "run_top_command"]

TARGET_HELP = "the program: a PID (its default console socket), unix:PATH or HOST:PORT"


def _type(command: Command, param: Param) -> Any:
    from .commands import _convert

    def convert(text: str) -> Any:
        try:
            return _convert(command, param, text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    convert.__name__ = param.kind
    return convert


def _add_param(parser: argparse.ArgumentParser, command: Command, param: Param) -> None:
    if param.positional:
        nargs: Any = "*" if param.many else (None if param.required else "?")
        parser.add_argument(param.name, metavar=param.metavar or param.name.upper(),
                            nargs=nargs, help=param.help, type=_type(command, param))
        return
    if param.kind == "flag":
        parser.add_argument(param.option, dest=param.name, action="store_true", help=param.help)
        return
    kwargs: dict[str, Any] = {"dest": param.name, "help": param.help, "default": None}
    if param.kind == "choice":
        kwargs["choices"] = param.choices
        if param.metavar:
            kwargs["metavar"] = param.metavar
    else:
        kwargs["metavar"] = param.metavar or param.name.upper()
        kwargs["type"] = _type(command, param)
    parser.add_argument(param.option, **kwargs)


def register(subparsers: Any) -> None:
    """Add ``ps tree where parked stalls lag cancel audit findings growth stack dump
    console top`` to the ``loopwatch`` command's subparsers."""
    for name in REMOTE_COMMANDS:
        command = COMMANDS[name]
        parser = subparsers.add_parser(
            name, help=command.summary,
            description=f"{command.summary}. In the console: {command.usage}",
            allow_abbrev=False)
        parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
        for param in command.params:
            _add_param(parser, command, param)
        parser.add_argument("--json", action="store_true",
                            help="print the answer as JSON (the console's data, in full)")
        parser.set_defaults(func=functools.partial(run_command, name))
    console = subparsers.add_parser(
        "console", help="an interactive console on a running program",
        description="An interactive console on a running program: the console's commands "
                    "with history and tab completion of commands and task ids.",
        allow_abbrev=False)
    console.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    console.set_defaults(func=run_console)
    top = subparsers.add_parser(
        "top", help="a live view of tasks, parked time, loop lag, stalls and findings",
        description="A live view of a running program, refreshed every second: tasks sorted "
                    "by time parked, loop lag, stalls and findings. q quits.",
        allow_abbrev=False)
    top.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    top.add_argument("--interval", metavar="SECONDS", type=_interval, default=1.0,
                     help="seconds between refreshes (default 1)")
    top.set_defaults(func=run_top_command)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 seconds, got {text!r}")
    return value


def _err(line: str) -> None:
    sys.stderr.write(line.replace("\n", " ") + "\n")
    sys.stderr.flush()


def _out() -> Console:
    """rich on a terminal; plain text, wide enough for tables, when piped."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    width = int(os.environ.get("COLUMNS", "0") or 0) or 160
    return Console(highlight=False, no_color=True, color_system=None, width=width,
                   force_terminal=False)


def run_command(name: str, ns: argparse.Namespace) -> int:
    """One console command against ``ns.target``; the exit status."""
    command = COMMANDS[name]
    args: dict[str, Any] = {}
    for param in command.params:
        value = getattr(ns, param.name, None)
        if value is None or value is False or value == []:
            continue
        args[param.name] = value
    if not ns.json:
        args = text_args(name, args)
    prog = f"loopwatch {name}"
    # Indented for a person at a terminal; for a pipe, the console's own compact line,
    # passed on unparsed (parsing and re-encoding 100,000 tasks took longer than the
    # console took to list them).
    indent = 2 if ns.json and sys.stdout.isatty() else None
    try:
        with ConsoleClient(ns.target) as client:
            reply = client.request(name, args, raw=bool(ns.json) and indent is None)
    except TargetError as exc:
        _err(f"{prog}: {exc}")
        return 2
    except RemoteError as exc:
        _err(f"{prog}: error: {exc}")
        return 1
    if ns.json:
        if reply.blocked:
            _err(blocked_line(reply.blocked))
        if reply.raw is not None:
            sys.stdout.flush()
            sys.stdout.buffer.write(reply.raw)
            sys.stdout.buffer.write(b"\n")
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(json.dumps(reply.result, indent=indent) + "\n")
            sys.stdout.flush()
        return 0
    out = _out()
    if reply.blocked:
        out.print(blocked_line(reply.blocked), style="bold red", markup=False)
    out.print(render(name, reply.result, args))
    return 0


def run_top_command(ns: argparse.Namespace) -> int:
    from .top import run_top

    return run_top(ns.target, interval=ns.interval)


# -- the interactive console ---------------------------------------------------------


class _Completer:
    """Tab completion: commands first, then the command's options and task ids."""

    def __init__(self, client: ConsoleClient) -> None:
        self.client = client
        self.tasks: list[str] = []
        self.fetched = 0.0
        self.matches: list[str] = []

    def _task_words(self) -> list[str]:
        if time.monotonic() - self.fetched > 2.0:
            self.fetched = time.monotonic()
            try:
                rows = self.client.request("ps", {"limit": 500}).result["tasks"]
            except (TargetError, RemoteError):
                rows = []
            words = [r["id"] for r in rows]
            words += [r["name"] for r in rows if r["name"] and " " not in r["name"]]
            self.tasks = words
        return self.tasks

    def candidates(self, line: str, text: str) -> list[str]:
        words = line.split()
        if not words or (len(words) == 1 and not line.endswith(" ")):
            return [c + " " for c in COMMANDS if c.startswith(text)]
        command = COMMANDS.get(words[0])
        if command is None:
            return []
        if text.startswith("-"):
            return [p.option + ("" if p.kind == "flag" else " ") for p in command.params
                    if not p.positional and p.option.startswith(text)]
        if command.name in ("where", "cancel"):
            return [w + " " for w in self._task_words() if w.startswith(text)]
        if command.name == "help":
            return [c + " " for c in COMMANDS if c.startswith(text)]
        return []

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            try:
                import readline

                line = readline.get_line_buffer()[:readline.get_begidx()] + text
            except Exception:
                line = text
            self.matches = self.candidates(line, text)
        return self.matches[state] if state < len(self.matches) else None


def _history_file() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "loopwatch", "console_history")


def _setup_readline(completer: _Completer) -> str | None:
    try:
        import readline
    except ImportError:  # no readline: plain input() still works
        return None
    readline.set_completer(completer.complete)
    readline.set_completer_delims(" \t")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    path = _history_file()
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


def _save_history(path: str | None) -> None:
    if path is None:
        return
    try:
        import readline

        os.makedirs(os.path.dirname(path), exist_ok=True)
        readline.write_history_file(path)
    except OSError:
        pass


def _request_of(line: str) -> tuple[str, dict[str, Any]] | None:
    """The command and arguments of a typed line, parsed here so errors show at once."""
    name, _, rest = line.strip().partition(" ")
    command = find_command(name)
    if command.params and command.params[0].rest:
        rest = rest.strip()
        if not rest:
            raise UsageError(f"{command.name}: needs {command.params[0].shown}; "
                             f"usage: {command.usage}")
        return command.name, {command.params[0].name: rest}
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise UsageError(f"{command.name}: cannot split the line into words ({exc})") from None
    if "-h" in words or "--help" in words:
        return "help", {"command": command.name}
    return command.name, text_args(command.name, parse_argv(command, words))


def run_console(ns: argparse.Namespace) -> int:
    """The interactive console; the exit status."""
    out = Console(highlight=False)
    try:
        client = ConsoleClient(ns.target)
    except TargetError as exc:
        _err(f"loopwatch console: {exc}")
        return 2
    with client:
        try:
            first = client.request("ps", {"limit": 1})
        except (TargetError, RemoteError) as exc:
            _err(f"loopwatch console: {exc}")
            return 2
        info = first.result
        out.print(f"connected to {client.address}: pid {info['pid']}, {info['loop']} loop, "
                  f"{info['total']} tasks. \"help\" lists the commands; quit or Ctrl-D leaves.",
                  markup=False, style="bold")
        completer = _Completer(client)
        history = _setup_readline(completer)
        try:
            return _console_loop(client, out)
        finally:
            _save_history(history)


def _console_loop(client: ConsoleClient, out: Console) -> int:
    while True:
        try:
            line = input("loopwatch> ")
        except EOFError:
            out.print()
            return 0
        except KeyboardInterrupt:
            out.print()
            continue
        line = line.strip()
        if not line:
            continue
        if line in ("quit", "exit"):
            return 0
        try:
            parsed = _request_of(line)
        except UsageError as exc:
            out.print(f"error: {exc}", style="red", markup=False)
            continue
        if parsed is None:
            continue
        name, args = parsed
        try:
            reply = client.request(name, args)
        except RemoteError as exc:
            out.print(f"error: {exc}", style="red", markup=False)
            continue
        except TargetError as exc:
            _err(f"loopwatch console: {exc}")
            return 1
        except KeyboardInterrupt:
            out.print("interrupted; the answer is dropped", style="yellow")
            return 1
        if reply.blocked:
            out.print(blocked_line(reply.blocked), style="bold red", markup=False)
        out.print(render(name, reply.result, args))
