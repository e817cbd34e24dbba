"""The console's commands: one table for the text interface and the JSON interface.

Every command is a :class:`Command` with its parameters, a function that reads the
watcher and returns plain data (JSON-able), and a renderer that turns that same data
into a rich renderable. A text line and a JSON request end in the same function; the
text answer is the data rendered, so the two can never disagree. The CLI and ``top``
render the JSON data they receive with the same renderers.

Commands run on the console's thread (never the watched loop's), so the read-only
ones answer while the watched loop is blocked. ``cancel`` is the one command that
acts on the loop: it is queued with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import json
import linecache
import math
import os
import shlex
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .._awaits import describe, find_cycles, waits_on
from .._detectors.parked import task_refs
from .._frames import Frame, RawStack, frame_of, is_library, pick_site, raw_site
from .._records import coro_name, coro_of, task_id
from .._render import (
    format_seconds,
    render_text,
    report_renderable,
    short_path,
    stack_renderable,
)
from .._report import KINDS, Finding, Report

if TYPE_CHECKING:
    from .._watcher import Watcher

__all__ = [
    "COMMANDS",
    "REMOTE_COMMANDS",
    "Command",
    "CommandError",
    "Context",
    "Param",
    "SessionState",
    "UsageError",
    "blocked_line",
    "blocked_state",
    "check_args",
    "find_command",
    "json_line",
    "parse_argv",
    "render",
    "render_text_answer",
    "run_json",
    "run_text",
    "text_args",
]

#: rows a text ``ps`` shows when no ``--limit`` is given
TEXT_PS_LIMIT = 50
#: nodes a text ``tree`` shows when no ``--limit`` is given
TEXT_TREE_LIMIT = 200
#: width of text answers sent over the socket
TEXT_WIDTH = 140
#: characters of an ``eval`` result sent back
EVAL_REPR_LIMIT = 10_000
#: waits that are the point of the task, never parked (as the parked detector sees it)
BY_DESIGN = frozenset({"sleep", "sleep_forever", "Server.serve_forever"})
#: seconds a ``cancel`` waits for the loop to run it before saying it is queued
CANCEL_WAIT = 1.0
CANCEL_MESSAGE = "cancelled from the loopwatch console"


class UsageError(Exception):
    """A request the console could not understand: says what was wrong and what works.

    ``problem`` is the message without the command and option it is about.
    """

    def __init__(self, message: str, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message


def _bad(label: str, problem: str) -> UsageError:
    return UsageError(f"{label} {problem}", problem)


class CommandError(Exception):
    """A request understood but refused or impossible (no such task, a cycle, ...)."""


# -- parameters ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a command, shared by the text parser, JSON args and the CLI."""

    #: the key in JSON ``args`` and in the parsed dict (``parked_over``)
    name: str
    #: ``flag``, ``int``, ``float``, ``str`` or ``choice``
    kind: str
    help: str
    metavar: str = ""
    choices: tuple[str, ...] = ()
    positional: bool = False
    #: a positional that takes every remaining word (``TASK...``)
    many: bool = False
    required: bool = False
    minimum: float | None = None
    #: a positional that takes the rest of the text line as it is (``eval EXPR``)
    rest: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def shown(self) -> str:
        """How the parameter appears in a usage line."""
        meta = self.metavar or self.name.upper()
        if self.positional:
            return f"{meta}..." if self.many else meta
        if self.kind == "flag":
            return self.option
        if self.kind == "choice" and not self.metavar:
            return f"{self.option} {'|'.join(self.choices)}"
        return f"{self.option} {meta}"


Runner = Callable[["Context", dict[str, Any]], Any]
Renderer = Callable[[Any, dict[str, Any]], RenderableType]


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    summary: str
    params: tuple[Param, ...]
    run: Runner
    render: Renderer
    #: also a one-shot CLI subcommand (``loopwatch CMD TARGET``)
    remote: bool = True
    #: a usage line that says more than the parameters do
    usage_text: str = ""

    @property
    def usage(self) -> str:
        if self.usage_text:
            return self.usage_text
        parts = [self.name]
        for p in self.params:
            parts.append(p.shown if (p.positional and p.required) else f"[{p.shown}]")
        return " ".join(parts)


@dataclasses.dataclass
class SessionState:
    """What the console keeps between requests, for every client (the growth baseline)."""

    baseline: Any = None
    baseline_at: float = 0.0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


@dataclasses.dataclass
class Context:
    """One request: the watcher it reads, how the answer is shown, the client's state."""

    watcher: Watcher
    #: the answer will be rendered as text (text limits apply)
    text: bool = True
    state: SessionState = dataclasses.field(default_factory=SessionState)
    #: the ``eval`` namespace of this client
    namespace: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the loop's blocked state when the request arrived (see :func:`blocked_state`)
    blocked: dict[str, Any] | None = None
    #: set by ``quit``: the server closes the connection after the answer
    close: bool = False


# -- parsing -------------------------------------------------------------------------


def find_command(name: str) -> Command:
    command = COMMANDS.get(name)
    if command is not None:
        return command
    shown = _printable(name)
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"unknown command {shown!r}; {hint}commands: {', '.join(COMMANDS)} "
                     "(\"help COMMAND\" explains one)")


def _printable(text: str, limit: int = 40) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 3] + "..."


def _takes(command: Command) -> str:
    options = [p.shown for p in command.params if not p.positional]
    if not options:
        return f"{command.name} takes no options"
    return f"{command.name} takes {', '.join(options)}"


def _convert(command: Command, param: Param, raw: Any) -> Any:
    label = f"{command.name}: {param.shown if param.positional else param.option}"
    if param.kind == "flag":
        if isinstance(raw, bool):
            return raw
        raise _bad(label, f"is a flag: true or false, got {_short_value(raw)}")
    if param.kind == "int":
        try:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError
            value: Any = int(raw)
        except (TypeError, ValueError):
            raise _bad(label, f"needs a whole number, got {_short_value(raw)}") from None
        if param.minimum is not None and value < param.minimum:
            raise _bad(label, f"must be at least {param.minimum:g}, got {value}")
        return value
    if param.kind == "float":
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        except (TypeError, ValueError):
            raise _bad(label, f"needs a number of seconds, got {_short_value(raw)}") \
                from None
        if math.isnan(value) or math.isinf(value):
            raise _bad(label, f"needs a finite number, got {_short_value(raw)}")
        if param.minimum is not None and value < param.minimum:
            raise _bad(label, f"must be at least {param.minimum:g}, got {value:g}")
        return value
    if param.kind == "choice":
        if raw not in param.choices:
            raise _bad(label, f"must be one of {', '.join(param.choices)}; "
                              f"got {_short_value(raw)}")
        return raw
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        return str(raw)
    raise _bad(label, f"needs text, got {_short_value(raw)}")


def _short_value(raw: Any) -> str:
    text = repr(raw) if not isinstance(raw, str) else repr(_printable(raw))
    return text if len(text) <= 60 else text[:57] + "..."


def _option_param(command: Command, word: str) -> Param:
    options = {p.option: p for p in command.params if not p.positional}
    param = options.get(word)
    if param is not None:
        return param
    prefixed = [p for name, p in options.items() if name.startswith(word) and len(word) > 2]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(word, list(options), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"{command.name}: unknown option {_printable(word)}; {hint}{_takes(command)}")


def parse_argv(command: Command, argv: Sequence[str]) -> dict[str, Any]:
    """Parse shell-like words into the command's arguments (the text interface)."""
    values: dict[str, Any] = {}
    loose: list[str] = []
    only_positional = False
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not only_positional and word == "--":
            only_positional = True
            continue
        if not only_positional and word.startswith("--"):
            name, eq, value = word.partition("=")
            param = _option_param(command, name)
            if param.kind == "flag":
                if eq:
                    raise UsageError(f"{command.name}: {param.option} takes no value")
                values[param.name] = True
                continue
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"{command.name}: {param.option} needs a value: "
                                     f"{param.shown}")
                value = argv[i]
                i += 1
            values[param.name] = _convert(command, param, value)
            continue
        loose.append(word)
    for param in (p for p in command.params if p.positional):
        if param.many:
            values[param.name] = [_convert(command, param, w) for w in loose]
            loose = []
        elif loose:
            values[param.name] = _convert(command, param, loose.pop(0))
    if loose:
        extra = " ".join(_printable(w) for w in loose)
        takes = [p.shown for p in command.params if p.positional]
        what = f"takes {' '.join(takes)}" if takes else "takes no arguments"
        raise UsageError(f"{command.name}: unexpected argument {extra!r}; {command.name} "
                         f"{what} (usage: {command.usage})")
    return _finish(command, values)


def check_args(command: Command, args: Any) -> dict[str, Any]:
    """Validate the ``args`` of a JSON request: an object of parameters by name, or a
    list of words parsed like a text line."""
    if args is None:
        return _finish(command, {})
    if isinstance(args, list):
        if not all(isinstance(a, str) for a in args):
            raise UsageError(f"{command.name}: args as a list must hold strings (words of "
                             "a text line)")
        if command.params and command.params[0].rest:
            return _finish(command, {command.params[0].name: " ".join(args)} if args else {})
        return parse_argv(command, args)
    if not isinstance(args, dict):
        raise UsageError(f"{command.name}: args must be an object such as "
                         f"{{\"limit\": 10}} or a list of words, got {_short_value(args)}")
    by_name = {p.name: p for p in command.params}
    values: dict[str, Any] = {}
    for key, raw in args.items():
        param = by_name.get(str(key).replace("-", "_").lstrip("_"))
        if param is None:
            known = ", ".join(by_name) or "none"
            raise UsageError(f"{command.name}: unknown argument {_printable(str(key))!r}; "
                             f"known arguments: {known}")
        if raw is None:
            continue
        if param.many:
            items = raw if isinstance(raw, list) else [raw]
            values[param.name] = [_convert(command, param, item) for item in items]
        else:
            values[param.name] = _convert(command, param, raw)
    return _finish(command, values)


def _finish(command: Command, values: dict[str, Any]) -> dict[str, Any]:
    for param in command.params:
        if param.name in values:
            continue
        if param.required:
            raise UsageError(f"{command.name}: needs {param.shown} ({param.help}); "
                             f"usage: {command.usage}")
        values[param.name] = False if param.kind == "flag" else ([] if param.many else None)
    return values


# -- running a request ---------------------------------------------------------------


def blocked_state(watcher: Watcher) -> dict[str, Any] | None:
    """``{"seconds", "site"}`` when the watched loop is blocked now (from the stall
    detector), else None."""
    detector = watcher.detector("stall")
    probe = getattr(detector, "blocked_state", None)
    if probe is None or not getattr(detector, "enabled", True):
        return None
    try:
        state = probe()
    except Exception:
        return None
    if not state:
        return None
    seconds, frame = state
    return {"seconds": float(seconds), "site": frame.to_dict() if frame is not None else None}


def blocked_line(blocked: dict[str, Any]) -> str:
    """``loop blocked for 12.3 s at app.py:42``"""
    line = f"loop blocked for {blocked['seconds']:.1f} s"
    site = blocked.get("site")
    if site:
        line += f" at {short_path(site['file'])}:{site['line']}"
    return line


def _invoke(ctx: Context, command: Command, args: dict[str, Any]) -> Any:
    try:
        return command.run(ctx, args)
    except (UsageError, CommandError):
        raise
    except Exception as exc:  # a bug of ours: the console carries on
        import logging

        logging.getLogger("loopwatch").warning(
            "loopwatch: console command %r failed", command.name, exc_info=exc)
        raise CommandError(f"{command.name} failed inside loopwatch: {type(exc).__name__}: "
                           f"{exc}; the console keeps running") from exc


def run_text(ctx: Context, line: str) -> str:
    """Answer one text line (already stripped of line ends): the text to send back."""
    ctx.text = True
    ctx.blocked = blocked_state(ctx.watcher)
    head = blocked_line(ctx.blocked) + "\n" if ctx.blocked else ""
    try:
        command, args = _parse_line(line)
        if command is None:
            return head
        args = text_args(command.name, args)
        data = _invoke(ctx, command, args)
        body = render_text_answer(command.name, data, args)
    except (UsageError, CommandError) as exc:
        body = f"error: {exc}\n"
    return head + body


def _parse_line(line: str) -> tuple[Command | None, dict[str, Any]]:
    text = line.strip()
    if not text:
        return None, {}
    name, _, rest = text.partition(" ")
    command = find_command(name)
    if command.params and command.params[0].rest:
        rest = rest.strip()
        if rest in ("-h", "--help"):
            return COMMANDS["help"], {"command": command.name}
        return command, _finish(command, {command.params[0].name: rest} if rest else {})
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise UsageError(f"{command.name}: cannot split the line into words ({exc}); "
                         "quote with ' or \" and close the quote") from None
    if "-h" in words or "--help" in words:
        return COMMANDS["help"], {"command": command.name}
    return command, parse_argv(command, words)


def run_json(ctx: Context, request: Any) -> dict[str, Any]:
    """Answer one JSON request ``{"id", "cmd", "args"}``: the response object.

    Its keys come in the order ``id``, ``ok``, ``blocked`` (when the loop is blocked),
    then ``result`` or ``error``: last, so that a client that only passes the result on
    (``loopwatch ps --json``) can cut it out of the line without parsing it.
    """
    ctx.text = False
    ctx.blocked = None
    ident = request.get("id") if isinstance(request, dict) else None
    if not isinstance(ident, (str, int, float, type(None))) or isinstance(ident, bool):
        ident = None
    try:
        if not isinstance(request, dict):
            raise UsageError('a JSON request must be an object: {"id": 1, "cmd": "ps", '
                             '"args": {}}')
        name = request.get("cmd")
        if not isinstance(name, str) or not name:
            raise UsageError('a JSON request needs "cmd", a command name such as "ps"; '
                             f"commands: {', '.join(COMMANDS)}")
        unknown = sorted(set(request) - {"id", "cmd", "args"})
        if unknown:
            raise UsageError(f"unknown request field {_printable(unknown[0])!r}; a request has "
                             '"id", "cmd" and "args"')
        command = find_command(name)
        args = check_args(command, request.get("args"))
        ctx.blocked = blocked_state(ctx.watcher)
        data = _invoke(ctx, command, args)
    except (UsageError, CommandError) as exc:
        response: dict[str, Any] = {"id": ident, "ok": False}
        if ctx.blocked:
            response["blocked"] = ctx.blocked
        response["error"] = str(exc)
        return response
    response = {"id": ident, "ok": True}
    if ctx.blocked:
        response["blocked"] = ctx.blocked
    response["result"] = data
    return response


#: what a text answer adds to the arguments it was given: text is for people, so a long
#: list is cut (and says so) and every listed task says what it awaits
TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "ps": {"limit": TEXT_PS_LIMIT, "awaiting": True},
    "tree": {"limit": TEXT_TREE_LIMIT},
}


def text_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the defaults of a text answer (see :data:`TEXT_DEFAULTS`)."""
    out = dict(args)
    for key, value in TEXT_DEFAULTS.get(name, {}).items():
        if out.get(key) is None or out.get(key) is False:
            out[key] = value
    return out


def render(name: str, data: Any, args: dict[str, Any] | None = None) -> RenderableType:
    """The renderable for the result ``data`` of command ``name`` (text and CLI alike)."""
    command = find_command(name)
    return command.render(data, _finish(command, dict(args or {})))


def render_text_answer(name: str, data: Any, args: dict[str, Any] | None = None) -> str:
    """The plain text a text line gets for the result ``data`` of command ``name``."""
    return render_text(render(name, data, args), width=TEXT_WIDTH)


# -- reading tasks -------------------------------------------------------------------


def _frame_dict(frame: Frame | None) -> dict[str, Any] | None:
    return frame.to_dict() if frame is not None else None


def _awaiting_dict(task: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    awaiting = describe(task, loop)
    data = awaiting.to_dict()
    data["at"] = _frame_dict(pick_site(awaiting.frames)) if awaiting.frames else None
    data["sleeping"] = awaiting.sleeping
    data["on_tasks"] = awaiting.on_tasks
    return data


_Task = asyncio.Task
_Future = asyncio.Future
_Gathering: Any = asyncio.tasks._GatheringFuture  # type: ignore[attr-defined]
_quote = json.encoder.encode_basestring_ascii
_Ref = weakref.ReferenceType
_NO_WAITS: tuple[int, ...] = ()


class Rows:
    """Task rows already encoded as JSON text, as ``ps`` and ``tree`` send them.

    100,000 rows built as dicts cost the interpreter far more (each one a container
    for the garbage collector to track) than the same rows written as text once. The
    console's encoder (:func:`to_json`) splices the text in; iterating gives dicts,
    for the renderers.
    """

    __slots__ = ("encoded",)

    def __init__(self, encoded: list[str]) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row: dict[str, Any] = json.loads(self.encoded[index])
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for text in self.encoded:
            yield json.loads(text)

    def __bool__(self) -> bool:
        return bool(self.encoded)

    def __repr__(self) -> str:
        return f"<Rows of {len(self.encoded)} tasks>"


def _dumps(obj: Any) -> tuple[list[str], list[Rows]]:
    """Compact JSON text of ``obj`` cut where its :class:`Rows` go, and those rows:
    ``parts[k]`` starts with ``k-1"`` where ``spliced[k-1]`` goes (``k >= 1``)."""
    spliced: list[Rows] = []
    token = f"\x00lwrows{os.getpid()}x{id(spliced)}\x00"

    def hook(value: Any) -> Any:
        if isinstance(value, Rows):
            spliced.append(value)
            return f"{token}{len(spliced) - 1}"
        return str(value)

    text = json.dumps(obj, separators=(",", ":"), default=hook)
    if not spliced:
        return [text], spliced
    return text.split(json.dumps(token)[:-1]), spliced


def to_json(obj: Any) -> str:
    """JSON text of a command's data (or a whole response), with :class:`Rows` spliced
    in as arrays. One line: no newline is ever in it."""
    parts, spliced = _dumps(obj)
    out = [parts[0]]
    for part in parts[1:]:
        index, _, rest = part.partition('"')
        out.append("[" + ",".join(spliced[int(index)].encoded) + "]")
        out.append(rest)
    return "".join(out)


#: rows encoded into one piece of a JSON line (about 1 MB of ``ps`` rows)
PIECE_ROWS = 4096


def json_line(obj: Any) -> Iterator[bytes]:
    """The JSON line of ``obj`` (a whole response), newline included, in pieces to send
    one after the other: the rows of a big answer (100,000 ``ps`` rows are 20 MB) are
    encoded a few thousand at a time, never copied into one string. Everything but the
    rows is encoded before this returns, so an object JSON cannot encode (NaN, a
    cycle) raises ``ValueError`` here, not halfway through the line."""
    parts, spliced = _dumps(obj)
    return _pieces(parts, spliced)


def _pieces(parts: list[str], spliced: list[Rows]) -> Iterator[bytes]:
    head = parts[0]
    for part in parts[1:]:
        index, _, rest = part.partition('"')
        rows = spliced[int(index)].encoded
        if len(rows) <= PIECE_ROWS:
            head += "[" + ",".join(rows) + "]"
        else:
            yield (head + "[" + ",".join(rows[:PIECE_ROWS])).encode()
            for start in range(PIECE_ROWS, len(rows), PIECE_ROWS):
                yield ("," + ",".join(rows[start:start + PIECE_ROWS])).encode()
            head = "]"
        head += rest
    yield (head + "\n").encode()


class _Scan:
    """One pass over every live task: what ``ps``, ``tree``, ``where``, ``parked`` and
    ``cancel`` need, in parallel lists (index ``i`` is one task), each row encoded once.

    Read straight from the task records, like ``Watcher.info(awaiting=False,
    stack=False)`` without building a ``TaskInfo``. What the creation site, the
    coroutine and the parent decide (the site's frame, the coroutine's name, and the
    row's JSON from ``"coro"`` on) is worked out once per distinct triple: 100,000
    tasks usually come from a few places. Per task: plain attribute reads (the
    interpreter specializes them for the task's class; ``getattr`` calls cost several
    times more), one dict lookup for the shared part, one f-string for the row, and
    nothing the garbage collector tracks (100,000 tuples would start a full collection,
    over every task in the process). Holds strong references, so the ids used as
    keys cannot be reused during the pass: it lives for one request only.
    """

    def __init__(self, ctx: Context) -> None:
        w = ctx.watcher
        loop = w.loop
        now = time.monotonic()
        observe = w.observe
        by_frame: dict[tuple[int, int, int, int], _Shared] = {}
        self.tasks: list[Any] = []
        self.numbers: list[int] = []
        self.parked: list[float | None] = []
        self.shared: list[_Shared] = []
        self.encoded: list[str] = []
        #: index -> the tasks that task waits on, for the few that wait on tasks
        self.waiting: dict[int, tuple[int, ...]] = {}
        add_task, add_number, add_parked, add_shared, add_row = (
            self.tasks.append, self.numbers.append, self.parked.append, self.shared.append,
            self.encoded.append)
        quote = _quote
        task: Any = None
        for ref in task_refs(w):
            task = ref()
            if task is None:
                continue
            try:
                if task._loop is not loop or task._state != "PENDING":
                    continue
                number = task._lw_id
                raw = task._lw_stack
                created = task._lw_created
                parent = task._lw_parent
                waiter = task._fut_waiter
                coro = task._coro
                code = coro.cr_code
            except AttributeError:  # no record, not a C/asyncio task, not a coroutine
                code = None
                if getattr(task, "_loop", None) is not loop or task.done():
                    continue
                number = task_id(task)
                raw = getattr(task, "_lw_stack", None) or ()
                created = getattr(task, "_lw_created", None)
                parent = getattr(task, "_lw_parent", 0) or 0
                waiter = getattr(task, "_fut_waiter", None)
                coro = coro_of(task)
                code = getattr(coro, "cr_code", None)
            key = (id(raw[0]), raw[1], id(code), parent) if raw else (0, 0, id(code), parent)
            shared = by_frame.get(key)
            if shared is None or code is None:
                shared = by_frame[key] = _Shared.of(raw, coro, parent, task)
            if shared.further:  # made through plumbing: the site is further out
                shared = shared.further(raw)
            parked = None
            parked_json = "null"
            waits_json = ""
            if waiter is not None:
                try:
                    noted = task._lw_waiter
                    since = task._lw_since
                except AttributeError:  # not looked at yet
                    noted = since = None
                if noted is not waiter and (type(noted) is not _Ref or noted() is not waiter):
                    observe(task, now)  # tasks and gathers are noted by weak reference
                    since = getattr(task, "_lw_since", 0.0)
                if since:
                    parked = now - since if now > since else 0.0
                    parked_json = f"{parked:.4f}"
                if type(waiter) is not _Future:
                    waits, waits_json = _waits(waiter)
                    if waits:
                        self.waiting[len(self.tasks)] = waits
            add_task(task)
            add_number(number)
            add_parked(parked)
            add_shared(shared)
            add_row(f'{{"id":"T{number}","name":{quote(task.get_name())},"age":'
                    f'{"null" if created is None else f"{now - created:.4f}"},'
                    f'"parked_for":{parked_json},"waits_on":[{waits_json}],{shared.tail}')
        del task

    def __len__(self) -> int:
        return len(self.tasks)

    @functools.cached_property
    def order(self) -> list[int]:
        return sorted(range(len(self.numbers)), key=self.numbers.__getitem__)

    def oldest_first(self) -> list[int]:
        return list(self.order)

    @functools.cached_property
    def names(self) -> list[str]:
        return [task.get_name() for task in self.tasks]

    @functools.cached_property
    def waits(self) -> list[tuple[int, ...]]:
        waiting = self.waiting
        return [waiting.get(i, _NO_WAITS) for i in range(len(self.tasks))]

    @functools.cached_property
    def coros(self) -> list[str]:
        return [s.coro for s in self.shared]

    @functools.cached_property
    def sites(self) -> list[dict[str, Any] | None]:
        return [s.site_dict for s in self.shared]

    @functools.cached_property
    def parents(self) -> list[int]:
        return [s.parent for s in self.shared]

    def matches(self, i: int, needle: str) -> bool:
        """Whether ``needle`` (lower case) is in the task's id, name, coroutine or site."""
        shared = self.shared[i]
        if (needle in f"t{self.numbers[i]}" or needle in self.names[i].lower()
                or needle in shared.coro.lower()):
            return True
        site = shared.site
        return site is not None and (needle in f"{site.file}:{site.line}".lower()
                                     or needle in site.function.lower())

    def index_of(self, number: int) -> int | None:
        try:
            return self.numbers.index(number)
        except ValueError:
            return None

    def awaited_by(self) -> dict[int, list[int]]:
        by: dict[int, list[int]] = {}
        for number, waits in zip(self.numbers, self.waits, strict=True):
            for waited in waits:
                by.setdefault(waited, []).append(number)
        return by

    def rows(self, order: Iterable[int],
             extra: dict[int, dict[str, Any]] | None = None) -> Rows:
        """The encoded rows of ``order``, with ``extra`` fields added to some."""
        encoded = self.encoded
        if not extra:
            return Rows(list(map(encoded.__getitem__, order)))
        out = []
        for i in order:
            text = encoded[i]
            more = extra.get(i)
            out.append(text[:-1] + "," + to_json(more)[1:] if more else text)
        return Rows(out)


def _waits(waiter: Any) -> tuple[tuple[int, ...], str]:
    """The tasks a task waits on through ``waiter`` (a task or a gather), and as JSON."""
    if type(waiter) is _Gathering:
        waits = tuple(task_id(c) for c in waiter._children
                      if isinstance(c, _Task) and not c.done())
    elif isinstance(waiter, _Task):
        waits = (task_id(waiter),)
    else:
        return _NO_WAITS, ""
    return waits, ",".join([f'"T{n}"' for n in waits])


class _Shared:
    """What a creation site, a coroutine and a parent decide: most of a task's row."""

    __slots__ = ("coro", "further", "parent", "site", "site_dict", "tail")

    site: Frame | None
    site_dict: dict[str, Any] | None
    coro: str
    parent: int
    #: the row's JSON from "coro" on
    tail: str
    #: None when the innermost creation frame decides the site (it is the program's
    #: own); else, for tasks made through plumbing (anyio's ``start_soon``, say), the
    #: function that finds each task's own site further out
    further: Callable[[RawStack], _Shared] | None

    @classmethod
    def of(cls, raw: RawStack, coro: Any, parent: int, task: Any) -> _Shared:
        """For the tasks whose innermost creation frame is ``raw``'s."""
        coro_text = coro_name(coro) if coro is not None else type(task).__name__
        if not raw:
            return cls(None, coro_text, parent)
        innermost = raw_site(raw[:2])
        if innermost is not None and not is_library(innermost.file):
            return cls(innermost, coro_text, parent)
        shared = cls(innermost, coro_text, parent)
        by_site: dict[int, _Shared] = {}

        def further(raw: RawStack) -> _Shared:
            site = raw_site(raw)
            hit = by_site.get(id(site))
            if hit is None:
                hit = by_site[id(site)] = cls(site, coro_text, parent)
            return hit

        shared.further = further
        return shared

    def __init__(self, site: Frame | None, coro: str, parent: int) -> None:
        self.site = site
        self.site_dict = site.to_dict() if site is not None else None
        self.coro = coro
        self.parent = parent
        self.further = None
        parent_json = f'"T{parent}"' if parent else "null"
        self.tail = (f'"coro":{_quote(coro)},"state":"pending","parent":{parent_json},'
                     f'"site":{json.dumps(self.site_dict, separators=(",", ":"))}}}')


def _is_parked(ctx: Context, task: asyncio.Future[Any], parked_for: float | None,
               over: float) -> dict[str, Any] | None:
    """The awaiting data of a parked task (waiting longer than ``over`` on something that
    is neither a sleep, a wait by design nor other tasks), else None."""
    if parked_for is None or parked_for < over:
        return None
    awaiting = _awaiting_dict(task, ctx.watcher.loop)
    if (awaiting["sleeping"] or awaiting["on_tasks"] or awaiting["what"] in BY_DESIGN
            or awaiting["what"] == "running"):
        return None
    return awaiting


# -- the commands --------------------------------------------------------------------


def _process(ctx: Context) -> dict[str, Any]:
    return {"pid": os.getpid(), "loop": ctx.watcher.base, "argv": list(sys.argv)}


def cmd_ps(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    scan = _Scan(ctx)
    total = len(scan)
    order = scan.oldest_first()
    needle = (args["filter"] or "").lower()
    if needle:
        order = [i for i in order if scan.matches(i, needle)]
    extra: dict[int, dict[str, Any]] = {}
    if args["parked"]:
        over = ctx.watcher.options.parked_after
        kept = []
        for i in order:
            awaiting = _is_parked(ctx, scan.tasks[i], scan.parked[i], over)
            if awaiting is not None:
                extra[i] = {"awaiting": awaiting}
                kept.append(i)
        order = kept
    sort = args["sort"] or "age"
    if sort == "parked":
        parked = scan.parked

        def longest(i: int) -> float:
            value = parked[i]
            return -value if value is not None else 1.0

        order.sort(key=longest)
    elif sort == "name":
        names = scan.names
        order.sort(key=lambda i: names[i].lower())
    matched = len(order)
    limit = args["limit"]
    if limit:
        order = order[:limit]
    if args["awaiting"]:
        loop = ctx.watcher.loop
        for i in order:
            if i not in extra:
                extra[i] = {"awaiting": _awaiting_dict(scan.tasks[i], loop)}
    return {**_process(ctx), "total": total, "matched": matched, "shown": len(order),
            "more": matched - len(order), "sort": sort,
            "parked_after": ctx.watcher.options.parked_after,
            "tasks": scan.rows(order, extra)}


def cmd_tree(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    scan = _Scan(ctx)
    order = scan.oldest_first()
    limit = args["limit"]
    if limit:
        order = order[:limit]
    return {**_process(ctx), "total": len(scan), "shown": len(order),
            "more": len(scan) - len(order), "tasks": scan.rows(order)}


def _find(ctx: Context, ident: str) -> asyncio.Future[Any]:
    try:
        return ctx.watcher.find_task(ident)
    except LookupError as exc:
        raise CommandError(str(exc)) from None


def cmd_where(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    w = ctx.watcher
    task = _find(ctx, args["task"])
    info = w.info(task)
    data = info.to_dict()
    if data["awaiting"] is not None and info.awaiting is not None:
        data["awaiting"]["at"] = _frame_dict(pick_site(info.awaiting.frames)) \
            if info.awaiting.frames else None
    scan = _Scan(ctx)
    number = info.number
    data["awaited_by"] = [f"T{n}" for n in scan.awaited_by().get(number, [])]
    data["children"] = [f"T{n}" for n in sorted(
        n for n, parent in zip(scan.numbers, scan.parents, strict=True) if parent == number)]
    data["parked_after"] = w.options.parked_after
    return data


def cmd_parked(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    over = args["over"]
    if over is None:
        over = ctx.watcher.options.parked_after
    scan = _Scan(ctx)
    by = scan.awaited_by()
    extra: dict[int, dict[str, Any]] = {}
    for i in scan.oldest_first():
        awaiting = _is_parked(ctx, scan.tasks[i], scan.parked[i], over)
        if awaiting is not None:
            extra[i] = {"awaiting": awaiting,
                        "awaited_by": [f"T{n}" for n in by.get(scan.numbers[i], [])]}
    order = sorted(extra, key=lambda i: -(scan.parked[i] or 0.0))
    return {"over": over, "total": len(scan), "tasks": scan.rows(order, extra)}


def cmd_stalls(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    stalls = [f.to_dict() for f in ctx.watcher.findings() if f.kind == "stall"]
    detector = ctx.watcher.detector("stall")
    return {"blocked": ctx.blocked if ctx.blocked is not None else blocked_state(ctx.watcher),
            "stall_after": ctx.watcher.options.stall_after,
            "watching": detector is not None and getattr(detector, "enabled", False),
            "count": len(stalls), "stalls": stalls}


def cmd_lag(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    stats = ctx.watcher.lag()
    return {"measured": bool(stats), "heartbeat": ctx.watcher.options.heartbeat,
            **{k: float(v) for k, v in stats.items()}}


def _cycles(tasks: Iterable[asyncio.Future[Any]]) -> tuple[
        list[list[int]], dict[int, list[int]]]:
    """The await cycles among live tasks, and for every task from which one is reached
    (it is in it or waits on it, directly or not), that cycle."""
    edges: dict[int, Iterable[int]] = {task_id(t): waits_on(t) for t in tasks}
    cycles = find_cycles(edges)
    reach: dict[int, list[int]] = {}
    if not cycles:
        return cycles, reach
    waiters: dict[int, list[int]] = {}
    for src, dsts in edges.items():
        for dst in dsts:
            waiters.setdefault(dst, []).append(src)
    for cycle in cycles:
        todo = list(cycle)
        while todo:
            n = todo.pop()
            if n in reach:
                continue
            reach[n] = cycle
            todo.extend(waiters.get(n, ()))
    return cycles, reach


def _cycle_text(cycle: Sequence[int]) -> str:
    return " -> ".join(f"T{n}" for n in [*cycle, cycle[0]])


def _refusal(n: int, cycle: Sequence[int]) -> str:
    where = "is in" if n in cycle else "waits on"
    return (f"T{n} {where} an await cycle {_cycle_text(cycle)}: Task.cancel() on tasks that "
            "await each other recurses until RecursionError in CPython; break the cycle in "
            "the code (see the await_cycle finding)")


def cmd_cancel(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    w = ctx.watcher
    named: list[str] = args["tasks"]
    over = args["parked_over"]
    needle = args["filter"]
    chosen = sum(1 for x in (named, over is not None, needle is not None) if x)
    if chosen == 0:
        raise UsageError("cancel: name the tasks: cancel TASK... (ids like T7 or 7, or names), "
                         "cancel --parked-over SECONDS, or cancel --filter TEXT")
    if chosen > 1:
        raise UsageError("cancel: give task ids, --parked-over or --filter, one of them")
    if needle is not None and not needle.strip():
        raise UsageError("cancel: --filter needs some text (it would match every task)")
    if w.loop.is_closed():
        raise CommandError("the loop is closed: there is nothing left to cancel")
    scan = _Scan(ctx)
    ids: list[int] = []
    if named:
        for ident in named:
            n = task_id(_find(ctx, ident))
            if n not in ids:
                ids.append(n)
    elif over is not None:
        for i in scan.oldest_first():
            if _is_parked(ctx, scan.tasks[i], scan.parked[i], over) is not None:
                ids.append(scan.numbers[i])
    else:
        ids = [scan.numbers[i] for i in scan.oldest_first()
               if scan.matches(i, needle.lower())]
    _, reach = _cycles(scan.tasks)
    refused = [{"id": f"T{n}", "reason": _refusal(n, reach[n])} for n in ids if n in reach]
    if refused and named:
        raise CommandError("refusing to cancel " + "; ".join(r["reason"] for r in refused))
    ids = [n for n in ids if n not in reach]
    outcome: dict[str, Any] = {"requested": [f"T{n}" for n in ids], "cancelled": [],
                               "gone": [], "refused": refused, "queued": False}
    if not ids:
        return outcome
    done = threading.Event()
    result: dict[str, list[Any]] = {"cancelled": [], "gone": [], "refused": []}

    def cancel_on_loop() -> None:
        # Runs on the watched loop: look again, the tasks may have moved on.
        try:
            live = {task_id(t): t for t in w.live_tasks()}
            _, now_reach = _cycles(live.values())
            for n in ids:
                task = live.get(n)
                if task is None or task.done():
                    result["gone"].append(f"T{n}")
                elif n in now_reach:
                    result["refused"].append({"id": f"T{n}", "reason": _refusal(n, now_reach[n])})
                else:
                    try:
                        task.cancel(CANCEL_MESSAGE)
                    except RecursionError:
                        result["refused"].append({"id": f"T{n}", "reason": "Task.cancel() "
                                                  "recursed (an await cycle)"})
                    else:
                        result["cancelled"].append(f"T{n}")
        finally:
            done.set()

    try:
        w.loop.call_soon_threadsafe(cancel_on_loop)
    except RuntimeError as exc:  # closed between the check and now
        raise CommandError(f"the loop cannot take the cancel: {exc}") from None
    if ctx.blocked is None and done.wait(CANCEL_WAIT):
        outcome["cancelled"] = result["cancelled"]
        outcome["gone"] = result["gone"]
        outcome["refused"] = refused + result["refused"]
        return outcome
    outcome["queued"] = True
    outcome["blocked"] = ctx.blocked or blocked_state(w)
    return outcome


def cmd_audit(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    return ctx.watcher.audit().to_dict()


def cmd_findings(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    found = ctx.watcher.findings()
    if args["kind"]:
        found = [f for f in found if f.kind == args["kind"]]
    summary: dict[str, int] = {}
    for f in found:
        summary[f.kind] = summary.get(f.kind, 0) + 1
    data: dict[str, Any] = {"count": len(found), "summary": summary}
    if not args["summary"]:
        data["findings"] = [f.to_dict() for f in found]
    return data


def cmd_growth(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    w = ctx.watcher
    snapshot = w.snapshot()
    now = time.time()
    state = ctx.state
    with state.lock:
        baseline, taken = state.baseline, state.baseline_at
        if args["baseline"] or baseline is None:
            state.baseline, state.baseline_at = snapshot, now
    total = snapshot.total
    if args["baseline"] or baseline is None:
        return {"baseline": True, "total": total, "taken": now, "since": None, "sites": []}
    rows = []
    for diff in snapshot.compare_to(baseline, key="site"):
        if not diff.count_diff:
            continue
        site = diff.key
        rows.append({"site": site.to_dict() if isinstance(site, Frame) else None,
                     "coro": snapshot.site_coros.get(site) or baseline.site_coros.get(site),
                     "count": diff.count, "count_diff": diff.count_diff})
    return {"baseline": False, "total": total, "was": baseline.total, "taken": taken,
            "since": now - taken, "sites": rows}


def _loop_stack(ctx: Context) -> dict[str, Any] | None:
    thread = ctx.watcher.loop_thread
    if thread is None or thread.ident is None:
        return None
    frame = sys._current_frames().get(thread.ident)
    frames: list[Frame] = []
    try:
        while frame is not None and len(frames) < 200:
            frames.append(frame_of(frame))
            frame = frame.f_back
    finally:
        del frame
    frames.reverse()
    return {"thread": thread.name, "ident": thread.ident, "alive": thread.is_alive(),
            "running": ctx.watcher.loop.is_running(),
            "frames": [f.to_dict() for f in frames]}


def cmd_stack(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    stack = _loop_stack(ctx)
    if stack is None:
        raise CommandError("the loop has not run yet: no thread runs it, so there is no stack")
    return stack


def cmd_dump(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    w = ctx.watcher
    now = time.monotonic()
    tasks = [w.info(t, now=now) for t in w.live_tasks()]
    tasks.sort(key=lambda i: i.number)
    rows = []
    for info in tasks:
        row = info.to_dict()
        if row["awaiting"] is not None and info.awaiting is not None:
            row["awaiting"]["at"] = _frame_dict(pick_site(info.awaiting.frames)) \
                if info.awaiting.frames else None
        rows.append(row)
    return {**_process(ctx), "tasks": rows, "stack": _loop_stack(ctx), "lag": w.lag(),
            "blocked": ctx.blocked, "summary": dict(Report(findings=w.findings()).kinds())}


def cmd_help(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    name = args["command"]
    if name:
        command = find_command(name)
        return {"commands": [_help_entry(command, options=True)]}
    return {"commands": [_help_entry(c) for c in COMMANDS.values()]}


def _help_entry(command: Command, *, options: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": command.name, "usage": command.usage,
                             "summary": command.summary}
    if options:
        entry["params"] = [{"name": p.name, "shown": p.shown, "help": p.help}
                           for p in command.params]
    return entry


def cmd_quit(ctx: Context, args: dict[str, Any]) -> str:
    ctx.close = True
    return "bye"


EVAL_REFUSED = ("eval is off: it runs code inside the program, so the program must allow it "
                "explicitly with allow_eval=True (loopwatch.run(..., allow_eval=True) or "
                "loopwatch.attach(allow_eval=True))")


def cmd_eval(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    w = ctx.watcher
    if not w.options.allow_eval:
        raise CommandError(EVAL_REFUSED)
    source = args["expr"]
    ns = ctx.namespace
    if not ns:
        ns.update({"__name__": "__loopwatch_console__", "asyncio": asyncio, "loop": w.loop,
                   "watcher": w})
    ns["task"] = lambda ident: w.find_task(ident)
    try:
        try:
            code = compile(source, "<loopwatch console>", "eval")
        except SyntaxError:
            code = compile(source, "<loopwatch console>", "exec")
            exec(code, ns)
            return {"repr": ""}
        value = eval(code, ns)
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            if ctx.blocked is not None:
                if asyncio.iscoroutine(value):
                    value.close()
                raise CommandError("the loop is blocked: an awaitable cannot run on it now")
            future = asyncio.run_coroutine_threadsafe(_await(value), w.loop)
            value = future.result(timeout=10)
    except CommandError:
        raise
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise CommandError(f"eval raised {type(exc).__name__}; not passed on") from None
        import traceback

        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise CommandError(f"eval raised {text}") from None
    ns["_"] = value
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<repr failed: {type(exc).__name__}: {exc}>"
    if len(text) > EVAL_REPR_LIMIT:
        text = text[:EVAL_REPR_LIMIT] + f"... ({len(text)} characters)"
    return {"repr": text}


async def _await(value: Any) -> Any:
    return await value


# -- rendering -----------------------------------------------------------------------


def _t(text: Any, style: str = "") -> Text:
    return Text("" if text is None else str(text), style=style)


def _where(site: dict[str, Any] | None) -> str:
    if not site:
        return "-"
    return f"{short_path(site['file'])}:{site['line']}"


def _frames(items: Iterable[dict[str, Any]] | None) -> list[Frame]:
    return [Frame.from_dict(f) for f in items or ()]


def _waiting(row: dict[str, Any]) -> str:
    """What a task waits on, short enough for a table column (``where`` says more)."""
    awaiting = row.get("awaiting")
    if awaiting:
        detail = awaiting.get("detail") or ""
        return str(awaiting["what"]) + (f" {detail}" if detail and len(detail) <= 24 else "")
    waits = row.get("waits_on") or []
    return ("task " + ", ".join(waits)) if waits else ""


def tasks_table(rows: Sequence[dict[str, Any]], *, awaiting: bool = False,
                title: str | None = None,
                where: Callable[[dict[str, Any] | None], str] | None = None) -> Table:
    """The task rows as a table; ``where`` formats a site (default: ``file:line`` with
    the path relative to the current folder)."""
    where = where or _where
    table = Table(title=title, show_lines=False, expand=False, box=None, pad_edge=False,
                  header_style="bold")
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("coro", overflow="fold")
    table.add_column("state")
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("parked", justify="right", no_wrap=True)
    table.add_column("waiting on", overflow="fold")
    # Sites keep their line whole; names and coroutines fold when room is short.
    if awaiting:
        table.add_column("awaits at", style="cyan", no_wrap=True)
    table.add_column("created at", style="cyan", no_wrap=True)
    for row in rows:
        cells = [_t(row["id"]), _t(row["name"]), _t(row["coro"]), _t(row["state"]),
                 _t(format_seconds(row["age"])), _t(format_seconds(row["parked_for"])),
                 _t(_waiting(row))]
        if awaiting:
            cells.append(_t(where((row.get("awaiting") or {}).get("at"))))
        cells.append(_t(where(row["site"])))
        table.add_row(*cells)
    return table


def render_ps(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    rows = data["tasks"]
    parts: list[RenderableType] = []
    if rows:
        parts.append(tasks_table(rows, awaiting=any("awaiting" in r for r in rows)))
    what = "parked tasks" if args.get("parked") else "tasks"
    line = f"{data['shown']} of {data['matched']} {what} shown"
    if data["matched"] != data["total"]:
        line += f" ({data['total']} live)"
    if data["more"]:
        line += f"; {data['more']} more (use --limit N, 0 for all)"
    if not rows and not data["matched"]:
        line = f"no {what}" + (f" ({data['total']} live)" if data["total"] else "")
    parts.append(_t(line, "dim"))
    return Group(*parts)


def render_tree(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    rows = data["tasks"]
    root = Tree(Text(f"pid {data['pid']} ({data['loop']} loop)", style="bold"))
    by_id = {r["id"]: r for r in rows}
    nodes: dict[str, Tree] = {}

    def label(row: dict[str, Any]) -> Text:
        text = Text()
        text.append(row["id"], style="bold")
        text.append(f" {row['name']} {row['coro']}")
        waiting = _waiting(row)
        if waiting:
            text.append(f" [{waiting}]", style="dim")
        if row["parked_for"] is not None:
            text.append(f" parked {format_seconds(row['parked_for'])}", style="yellow")
        return text

    def node_for(row: dict[str, Any]) -> Tree:
        chain: list[dict[str, Any]] = []
        current: dict[str, Any] | None = row
        while current is not None and current["id"] not in nodes and len(chain) < 1000:
            chain.append(current)
            parent = current.get("parent")
            current = by_id.get(parent) if parent else None
            if current is not None and current in chain:
                current = None
        host = nodes[current["id"]] if current is not None else root
        for item in reversed(chain):
            host = nodes[item["id"]] = host.add(label(item))
        return nodes[row["id"]]

    for row in rows:
        if row["id"] not in nodes:
            node_for(row)
    parts: list[RenderableType] = [root]
    if data["more"]:
        parts.append(_t(f"{data['shown']} of {data['total']} tasks shown; {data['more']} more "
                        "(use --limit N, 0 for all)", "dim"))
    return Group(*parts)


def _task_head(data: dict[str, Any]) -> Text:
    head = Text()
    head.append(data["id"], style="bold")
    head.append(f" {data['name']!r} {data['coro']}  ")
    head.append(data["state"], style="bold")
    facts = [f"age {format_seconds(data.get('age'))}"]
    if data.get("parked_for") is not None:
        facts.append(f"parked {format_seconds(data['parked_for'])}")
    head.append(", " + ", ".join(facts))
    return head


def render_where(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [_task_head(data)]
    awaiting = data.get("awaiting")
    if awaiting:
        what = awaiting["what"] + (f" ({awaiting['detail']})" if awaiting.get("detail") else "")
        line = Text(f"  waiting on {what}")
        if awaiting.get("timeout") is not None:
            line.append(f", timeout {format_seconds(awaiting['timeout'])}")
        if awaiting.get("at"):
            line.append(" at ")
            line.append(_where(awaiting["at"]), style="cyan")
        parts.append(line)
    family = []
    if data.get("parent"):
        family.append(f"parent {data['parent']}")
    if data.get("awaited_by"):
        family.append("awaited by " + ", ".join(data["awaited_by"]))
    if data.get("children"):
        family.append("children " + ", ".join(data["children"]))
    if family:
        parts.append(_t("  " + "; ".join(family)))
    if awaiting and awaiting.get("chain"):
        parts.append(stack_renderable("await chain", _frames(awaiting["chain"])))
    if data.get("stack"):
        parts.append(stack_renderable("created at", _frames(data["stack"])))
    elif data.get("state") == "pending":
        parts.append(_t("no creation stack (the task existed before loopwatch attached)",
                        "dim"))
    return Group(*parts)


def render_parked(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    rows = data["tasks"]
    if not rows:
        return _t(f"no task parked over {format_seconds(data['over'])} "
                  f"({data['total']} live tasks)")
    parts: list[RenderableType] = [
        _t(f"{len(rows)} task{'s' if len(rows) != 1 else ''} parked over "
           f"{format_seconds(data['over'])}:", "bold")]
    for row in rows:
        line = Text()
        line.append(row["id"], style="bold")
        line.append(f" {row['name']!r} {row['coro']}: parked {format_seconds(row['parked_for'])}"
                    f" on {_waiting(row)}")
        at = (row.get("awaiting") or {}).get("at")
        if at:
            line.append(" at ")
            line.append(_where(at), style="cyan")
            source = linecache.getline(at["file"], at["line"]).strip()
            if source:
                line.append(f"\n    {source}", style="dim")
        if row.get("awaited_by"):
            line.append(f"\n    awaited by {', '.join(row['awaited_by'])}")
        parts.append(line)
    return Group(*parts)


def render_stalls(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    if data.get("blocked"):
        parts.append(_t("now: " + blocked_line(data["blocked"]), "bold red"))
    if not data["watching"]:
        parts.append(_t("stalls are not watched on this loop (the stall watchdog is off)",
                        "yellow"))
    if not data["stalls"]:
        parts.append(_t(f"no stalls (none over {format_seconds(data['stall_after'])})"))
    for finding in data["stalls"]:
        f = Finding.from_dict(finding)
        line = Text()
        duration = f.details.get("duration")
        if isinstance(duration, (int, float)):
            line.append(f"{format_seconds(duration)} ", style="bold red")
        line.append(f.message)
        if f.site is not None:
            line.append("\n  at ")
            line.append(_where(f.site.to_dict()), style="cyan")
            line.append(f" in {f.site.function}")
            source = linecache.getline(f.site.file, f.site.line).strip()
            if source:
                line.append(f"\n    {source}", style="dim")
        parts.append(line)
    return Group(*parts)


def render_lag(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    if not data["measured"]:
        return _t("loop lag is not measured yet (the heartbeat has no samples: the watchdog "
                  "is off or the loop has not run)")
    text = (f"loop lag: p50 {format_seconds(data.get('p50'))}, "
            f"p99 {format_seconds(data.get('p99'))}, max {format_seconds(data.get('max'))}")
    if data.get("samples") is not None:
        text += f" ({int(data['samples'])} samples"
        text += f", heartbeat every {format_seconds(data['heartbeat'])})"
    return _t(text)


def render_cancel(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    lines = []
    if data["queued"]:
        why = ("the loop is blocked (" + blocked_line(data["blocked"]) + ")"
               if data.get("blocked") else "the loop has not run it yet")
        lines.append(f"queued: cancel of {', '.join(data['requested'])}; {why}; it runs when "
                     "the loop gets control back")
    if data["cancelled"]:
        lines.append(f"cancelled {', '.join(data['cancelled'])}")
    if data["gone"]:
        lines.append(f"already finished: {', '.join(data['gone'])}")
    for refused in data["refused"]:
        lines.append(f"refused {refused['id']}: {refused['reason']}")
    if not lines:
        lines.append("no task matched: nothing cancelled")
    return _t("\n".join(lines))


def _report_of(data: dict[str, Any]) -> Report:
    return Report(findings=[Finding.from_dict(f) for f in data.get("findings", [])])


def render_audit(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    return report_renderable(Report.from_dict(data), stacks=bool(args.get("stacks")))


def render_findings(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    if "findings" not in data:
        if not data["count"]:
            return _t("no findings")
        counts = ", ".join(f"{data['summary'][k]} {k}" for k in KINDS if k in data["summary"])
        return _t(f"{data['count']} finding{'s' if data['count'] != 1 else ''}: {counts}")
    return report_renderable(_report_of(data), stacks=bool(args.get("stacks")))


def render_growth(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    if data["baseline"]:
        return _t(f"baseline taken ({data['total']} live tasks); run growth again later to "
                  "see which creation sites grew")
    head = _t(f"since the baseline {format_seconds(data['since'])} ago: {data['was']} -> "
              f"{data['total']} live tasks", "bold")
    rows = data["sites"]
    if not rows:
        return Group(head, _t("no creation site changed"))
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("change", justify="right", no_wrap=True)
    table.add_column("tasks", justify="right", no_wrap=True)
    table.add_column("created at", style="cyan", overflow="fold")
    table.add_column("coro", overflow="fold")
    for row in rows:
        site = row["site"]
        where = f"{_where(site)} in {site['function']}" if site else "(before loopwatch attached)"
        table.add_row(_t(f"{row['count_diff']:+d}"), _t(row["count"]), _t(where),
                      _t(row.get("coro") or ""))
    return Group(head, table)


def render_stack(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    state = "running" if data["running"] else "not running"
    return stack_renderable(f"loop thread {data['thread']!r} ({state})", _frames(data["frames"]))


def render_dump(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [
        _t(f"loopwatch dump: pid {data['pid']}, {data['loop']} loop, "
           f"{len(data['tasks'])} live tasks", "bold")]
    if data.get("blocked"):
        parts.append(_t(blocked_line(data["blocked"]), "bold red"))
    for row in data["tasks"]:
        parts.append(_t(""))
        parts.append(render_where(row, {}))
    if data.get("stack"):
        parts.append(_t(""))
        parts.append(render_stack(data["stack"], {}))
    if data.get("lag"):
        parts.append(render_lag({"measured": True, "heartbeat": 0.0, **data["lag"]}, {}))
    if data.get("summary"):
        counts = ", ".join(f"{n} {k}" for k, n in data["summary"].items())
        parts.append(_t(f"findings so far: {counts}"))
    return Group(*parts)


def render_help(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    entries = data["commands"]
    if len(entries) == 1 and "params" in entries[0]:
        entry = entries[0]
        text = Text()
        text.append(f"usage: {entry['usage']}\n", style="bold")
        text.append(f"{entry['summary']}\n")
        for p in entry["params"]:
            text.append(f"  {p['shown']:<30} {p['help']}\n")
        return text
    text = Text()
    for entry in entries:
        text.append(entry["usage"], style="bold")
        text.append(f"\n    {entry['summary']}\n")
    text.append('tasks are named by id (T7 or 7) or by a unique name; "help COMMAND" explains '
                'one; a line that starts with { is a JSON request: {"id": 1, "cmd": "ps", '
                '"args": {}}', style="dim")
    return text


def render_plain(data: Any, args: dict[str, Any]) -> RenderableType:
    return _t(data)


def render_eval(data: dict[str, Any], args: dict[str, Any]) -> RenderableType:
    return _t(data["repr"])


# -- the table -----------------------------------------------------------------------

_TASK = Param("task", "str", "a task id (T7 or 7) or a unique task name", metavar="TASK",
              positional=True, required=True)
_STACKS = Param("stacks", "flag", "show the stacks behind each finding (text only)")

_ALL: tuple[Command, ...] = (
    Command("ps", "list live tasks: state, age, parked time, what they wait on, creation site",
            (Param("filter", "str", "only tasks whose id, name, coroutine or site contains TEXT",
                   metavar="TEXT"),
             Param("parked", "flag", "only parked tasks (waiting longer than parked_after)"),
             Param("sort", "choice", "order: age (oldest first), parked (longest first), name",
                   choices=("age", "parked", "name")),
             Param("limit", "int", f"show at most N tasks (text default {TEXT_PS_LIMIT}, "
                   "0 for all)", metavar="N", minimum=0),
             Param("awaiting", "flag", "add what each listed task awaits, and where")),
            cmd_ps, render_ps),
    Command("tree", "live tasks by parent (the task that created them)",
            (Param("limit", "int", f"show at most N tasks (text default {TEXT_TREE_LIMIT}, "
                   "0 for all)", metavar="N", minimum=0),),
            cmd_tree, render_tree),
    Command("where", "one task: its await chain, creation stack, parked time, who awaits it",
            (_TASK,), cmd_where, render_where),
    Command("parked", "tasks waiting on the same future for long (not sleeping, not on tasks)",
            (Param("over", "float", "waiting longer than SECONDS (default: parked_after)",
                   metavar="SECONDS", minimum=0),),
            cmd_parked, render_parked),
    Command("stalls", "times the loop did not get control back, and whether it is blocked now",
            (), cmd_stalls, render_stalls),
    Command("lag", "loop lag: how late the loop runs its callbacks (p50, p99, max)",
            (), cmd_lag, render_lag),
    Command("cancel", "cancel tasks on the watched loop (queued when the loop is blocked)",
            (Param("tasks", "str", "task ids or names", metavar="TASK", positional=True,
                   many=True),
             Param("parked_over", "float", "every task parked longer than SECONDS",
                   metavar="SECONDS", minimum=0),
             Param("filter", "str", "every task whose id, name, coroutine or site contains TEXT",
                   metavar="TEXT")),
            cmd_cancel, render_cancel,
            usage_text="cancel TASK... | --parked-over SECONDS | --filter TEXT"),
    Command("audit", "what would be left behind if the loop shut down now", (_STACKS,),
            cmd_audit, render_audit),
    Command("findings", "every finding so far",
            (Param("kind", "choice", "only findings of KIND", choices=KINDS, metavar="KIND"),
             Param("summary", "flag", "only the counts by kind"), _STACKS),
            cmd_findings, render_findings),
    Command("growth", "creation sites whose live tasks grew since the baseline",
            (Param("baseline", "flag", "take a new baseline now"),),
            cmd_growth, render_growth),
    Command("stack", "the loop thread's stack now (the blocking line when it is blocked)",
            (), cmd_stack, render_stack),
    Command("dump", "everything: every task with its await chain and creation site, the loop "
            "thread's stack", (), cmd_dump, render_dump),
    Command("help", "list the commands, or explain one",
            (Param("command", "str", "the command to explain", metavar="COMMAND",
                   positional=True),),
            cmd_help, render_help, remote=False),
    Command("quit", "close this connection", (), cmd_quit, render_plain, remote=False),
    Command("eval", "evaluate a Python expression in the program (only with allow_eval=True)",
            (Param("expr", "str", "a Python expression or statement", metavar="EXPR",
                   positional=True, required=True, rest=True),),
            cmd_eval, render_eval, remote=False),
)

#: every command by name, in help order
COMMANDS: dict[str, Command] = {c.name: c for c in _ALL}
#: the commands that are also ``loopwatch CMD TARGET`` one-shots
REMOTE_COMMANDS: tuple[str, ...] = tuple(c.name for c in _ALL if c.remote)
