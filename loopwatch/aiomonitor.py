"""loopwatch inside aiomonitor's console (the ``loopwatch[aiomonitor]`` extra).

:func:`start_monitor` starts an aiomonitor ``Monitor`` on a watched loop in which

- loopwatch's commands are registered next to aiomonitor's own (``parked``,
  ``stalls``, ``lag``, ``audit``, ``findings``, ``growth``; a name aiomonitor
  already uses gets an ``lw-`` prefix instead, see :data:`COMMANDS`);
- aiomonitor's task lists show loopwatch's data: ``ps`` lists tasks by their
  loopwatch id (``T7``) with the creation site, the age and the time parked;
  ``where T7`` adds the creation stack and what the task waits on; ``cancel T7``
  refuses a task in an await cycle (``Task.cancel()`` would recurse until
  ``RecursionError``); ``ps-terminated`` / ``where-terminated`` read loopwatch's
  history of finished tasks;
- there is one task factory, loopwatch's: aiomonitor's ``hook_task_factory`` stays
  off (it also breaks on uvloop with Python 3.13, where ``eager_start`` reaches it),
  and closing the monitor leaves the loop's task factory as it found it then.

Known aiomonitor problems are kept away from the program: a busy port is a
:class:`~loopwatch.ConsoleError` at start instead of a hang (aiomonitor waits
forever when its web UI cannot bind, and silently runs without a terminal UI when
its telnet port is taken); port ``0`` means "a free port"; aiomonitor's UI thread
runs on a plain asyncio loop even when :func:`loopwatch.install` set the policy.

This module uses some of aiomonitor's private names (``Monitor._ui_main``,
``_ui_started``, ``_monitored_loop``, ``_original_task_factory``, ``_hook_task_factory``);
``tests/test_aiomonitor.py`` checks each of them on every supported version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.table import Table

try:
    with warnings.catch_warnings():
        # aiomonitor 0.7.1 imports click.parser.split_arg_string, which click 8.2+
        # deprecates: under -W error the import itself would fail.
        warnings.simplefilter("ignore", DeprecationWarning)
        import aiomonitor as _aiomonitor
        import click
        from aiohttp import web as _aiohttp_web
        from aiomonitor.exceptions import MissingTask
        from aiomonitor.termui.commands import auto_command_done, custom_help_option, monitor_cli
        from aiomonitor.types import (
            FormatItemTypes,
            FormattedLiveTaskInfo,
            FormattedStackItem,
            FormattedTerminatedTaskInfo,
        )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"loopwatch.aiomonitor needs aiomonitor: pip install 'loopwatch[aiomonitor]' ({exc})"
    ) from exc

from ._awaits import find_cycles, waits_on
from ._detectors.growth import TaskSnapshot
from ._exceptions import ConsoleError, NotWatchedError, OptionsError
from ._frames import Frame, pick_site
from ._loops import attach
from ._loops import watcher as _watcher_of
from ._records import task_id
from ._render import (
    finding_renderable,
    format_seconds,
    render_text,
    report_renderable,
    short_path,
    task_table,
)
from ._report import Report
from ._watcher import TaskInfo, Watcher

__all__ = ["COMMANDS", "LoopwatchMonitor", "register_commands", "start_monitor"]

log = logging.getLogger("loopwatch")

#: the name each loopwatch command has in aiomonitor's console (filled by
#: :func:`register_commands`): the command's own name, or ``lw-<name>`` when
#: aiomonitor already uses that name or alias
COMMANDS: dict[str, str] = {}
_register_lock = threading.Lock()

_TASK_ID = re.compile(r"^[Tt](\d+)$")
# The loop class aiomonitor's UI thread runs on: asyncio's own, whatever the policy says.
_PLAIN_LOOP: Callable[[], asyncio.AbstractEventLoop] = getattr(
    asyncio.DefaultEventLoopPolicy, "_loop_factory", asyncio.SelectorEventLoop
)


# -- the monitor --------------------------------------------------------------------


class LoopwatchMonitor(_aiomonitor.Monitor):  # type: ignore[misc]
    """An aiomonitor ``Monitor`` that shows loopwatch's data and commands.

    Takes ``Monitor``'s arguments. The loop is attached to loopwatch when it is not
    watched yet. A port of ``0`` (``termui_port``, ``webui_port``, ``console_port``)
    means a free port, readable afterwards from :attr:`port`, :attr:`webui_port` and
    :attr:`console_port`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if kwargs.get("hook_task_factory"):
            raise OptionsError(
                "hook_task_factory=True would give the loop a second task factory: loopwatch "
                "already records where each task was created, and aiomonitor's factory breaks "
                "on uvloop with Python 3.13 (eager_start); leave hook_task_factory off"
            )
        kwargs["hook_task_factory"] = False
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise NotWatchedError(
                    "LoopwatchMonitor() needs a loop: pass one or create it inside a running loop"
                ) from None
        host = str(kwargs.get("host", _aiomonitor.MONITOR_HOST))
        ports = {key: kwargs.get(key, default)
                 for key, default in (("termui_port", _aiomonitor.MONITOR_TERMUI_PORT),
                                      ("webui_port", _aiomonitor.MONITOR_WEBUI_PORT),
                                      ("console_port", _aiomonitor.CONSOLE_PORT))}
        zero = [key for key, port in ports.items() if port == 0]
        kwargs.update(ports)
        kwargs.update(zip(zero, _free_ports(host, len(zero)), strict=True))
        self._lw_watcher: Watcher = attach(loop)
        if loop.is_running() and self._lw_watcher.loop_thread is None:
            # Attached from another thread while the loop runs: the loop-started hook
            # (stall watchdog, heartbeat, periodic scans) must run on the loop's thread.
            loop.call_soon_threadsafe(self._lw_watcher._loop_started)
        self._lw_error: BaseException | None = None
        super().__init__(loop, **kwargs)
        register_commands()

    @property
    def watcher(self) -> Watcher:
        """The loopwatch watcher of the monitored loop."""
        return self._lw_watcher

    @property
    def webui_port(self) -> int:
        """The port of aiomonitor's web UI."""
        return int(self._webui_port)

    @property
    def console_port(self) -> int:
        """The port of aiomonitor's Python console (opened by its ``console`` command)."""
        return int(self._console_port)

    # -- start and close -----------------------------------------------------------

    def start(self) -> None:
        """Start aiomonitor's UI thread; a port that cannot be bound is a ``ConsoleError``.

        aiomonitor itself would wait forever for a web UI that failed to bind, and run
        without its terminal UI when the telnet port is taken.
        """
        _check_port(self._host, self._termui_port, "terminal UI", "port")
        _check_port(self._host, self._webui_port, "web UI", "webui_port")
        _quiet_aiomonitor_warnings()
        super().start()
        if self._lw_error is not None:
            error = self._lw_error
            self._closed = True  # the UI thread is gone: close() has nothing to stop
            raise ConsoleError(
                f"aiomonitor could not start on {self._host} (terminal UI port "
                f"{self._termui_port}, web UI port {self._webui_port}): "
                f"{type(error).__name__}: {error}"
            ) from error
        # aiomonitor's `stacktrace` shows the thread that called start(); the loop's
        # thread is the one people mean.
        thread = self._lw_watcher.loop_thread
        if thread is not None and thread.ident is not None:
            self._event_loop_thread_id = thread.ident

    def _ui_main(self) -> None:
        # Runs in aiomonitor's UI thread. aiomonitor calls asyncio.run() here: with
        # loopwatch's policy installed that would make the UI loop a watched loop too.
        # An error while starting would leave start() waiting forever: record it and
        # let start() raise it.
        try:
            _run_plain(self._ui_main_async)
        except BaseException as exc:  # reported to start(), or logged
            if self._ui_started.is_set():
                log.warning("loopwatch: aiomonitor's UI thread ended with %s: %s",
                            type(exc).__name__, exc)
            else:
                self._lw_error = exc
        finally:
            self._ui_started.set()

    def close(self) -> None:
        """Stop aiomonitor's UI thread. The loop keeps the task factory it has now."""
        if self._started and not self._closed:
            # aiomonitor puts back the factory it saw at start(); a factory set since
            # (loopwatch attaching, the program's own) must survive.
            with contextlib.suppress(Exception):
                self._original_task_factory = self._monitored_loop.get_task_factory()
        super().close()

    # -- aiomonitor's task lists, with loopwatch's data ----------------------------

    def _lw_find(self, ident: str | int) -> asyncio.Task[Any] | None:
        """The live task ``T7`` / ``7`` (loopwatch id) or ``id(task)`` (aiomonitor id)."""
        text = str(ident).strip()
        tasks = self._lw_watcher.live_tasks()
        match = _TASK_ID.match(text)
        if match is not None:
            number = int(match.group(1))
            for task in tasks:
                if getattr(task, "_lw_id", None) == number:
                    return task  # type: ignore[return-value]
            return None
        if text.isdigit():
            number = int(text)
            for task in tasks:
                if id(task) == number or getattr(task, "_lw_id", None) == number:
                    return task  # type: ignore[return-value]
        return None

    def format_running_task_list(self, filter_: str,
                                 persistent: bool) -> Sequence[FormattedLiveTaskInfo]:
        rows = super().format_running_task_list(filter_, persistent)
        try:
            return self._lw_rows(rows)
        except Exception:  # show aiomonitor's own table rather than none
            log.debug("loopwatch: could not add its data to aiomonitor's ps", exc_info=True)
            return rows  # type: ignore[no-any-return]

    def _lw_rows(self, rows: Sequence[FormattedLiveTaskInfo]) -> list[FormattedLiveTaskInfo]:
        w = self._lw_watcher
        by_id = {str(id(t)): t for t in w.live_tasks()}
        now = time.monotonic()
        out = []
        for row in rows:
            task = by_id.get(row.task_id)
            if task is None:
                out.append(row)
                continue
            info = w.info(task, now=now, awaiting=False)
            state = row.state
            if info.parked_for:
                state = f"{state} parked {format_seconds(info.parked_for)}"
            out.append(FormattedLiveTaskInfo(
                task_id=info.id,
                state=state,
                name=row.name,
                coro=row.coro,
                created_location=_where(info.site) if info.site else row.created_location,
                since=format_seconds(info.age) if info.age is not None else row.since,
            ))
        return out

    def format_running_task_stack(self, task_id: str | int) -> Sequence[FormattedStackItem]:
        task = self._lw_find(task_id)
        if task is None:
            raise MissingTask(task_id)
        items = list(super().format_running_task_stack(id(task)))
        try:
            return self._lw_stack_items(task, items)
        except Exception:
            log.debug("loopwatch: could not add its data to aiomonitor's where", exc_info=True)
            return items

    def _lw_stack_items(self, task: asyncio.Task[Any],
                        items: list[FormattedStackItem]) -> list[FormattedStackItem]:
        info = self._lw_watcher.info(task)
        header = FormatItemTypes.HEADER
        content = FormatItemTypes.CONTENT
        label = f"{info.id} {info.name!r} ({info.coro})"
        out = [FormattedStackItem(header, f"Creation stack of {label}, recorded by loopwatch "
                                          "(most recent call last)")]
        if info.stack:
            out.append(FormattedStackItem(content, _format_frames(info.stack)))
        else:
            out.append(FormattedStackItem(content, "Not recorded: the task existed before "
                                                   "loopwatch attached to the loop"))
        if info.parent:
            out.append(FormattedStackItem(header, f"Created by {info.parent}"))
        # Without aiomonitor's factory hook its creation chain is empty: keep only the
        # task's own stack (the last header and its content).
        out.extend(items[-2:] if len(items) >= 2 else items)
        waiting = info.awaiting
        if waiting is not None and waiting.what != "running":
            what = waiting.what + (f" ({waiting.detail})" if waiting.detail else "")
            text = f"waits on {what}"
            if info.parked_for is not None:
                text += f" for {format_seconds(info.parked_for)}"
            if waiting.timeout is not None:
                text += f", timeout {format_seconds(waiting.timeout)}"
            site = pick_site(waiting.frames) if waiting.frames else None
            if site is not None:
                text += f"\nat {_where(site)} in {site.function}"
            out.append(FormattedStackItem(header, f"What {info.id} waits on (loopwatch)"))
            out.append(FormattedStackItem(content, text))
        return out

    async def cancel_monitored_task(self, task_id: str | int) -> str:
        task = self._lw_find(task_id)
        if task is None:
            raise ValueError("Invalid or non-existent task ID", task_id)
        cycle = _cycle_through(self._lw_watcher, task)
        if cycle:
            path = " -> ".join(f"T{n}" for n in cycle + cycle[:1])
            message = (f"not cancelled: {task_id} is in an await cycle ({path}); "
                       "Task.cancel() would recurse until RecursionError. The cycle is a "
                       "deadlock to fix in the code")
            _tell_terminal(message)
            raise ValueError(message)
        return await super().cancel_monitored_task(id(task))  # type: ignore[no-any-return]

    def format_terminated_task_list(
        self, filter_: str, persistent: bool
    ) -> Sequence[FormattedTerminatedTaskInfo]:
        rows = list(super().format_terminated_task_list(filter_, persistent))
        if persistent:  # loopwatch keeps no "persistent" mark
            return rows
        for info in reversed(self._lw_finished()):
            if filter_ and filter_ not in info.coro and filter_ not in info.name:
                continue
            rows.append(FormattedTerminatedTaskInfo(
                task_id=info.id,
                name=info.name,
                coro=f"{info.coro} ({info.outcome})",
                started_since="-",  # loopwatch keeps no finishing time
                terminated_since="-",
            ))
        return rows

    def format_terminated_task_stack(self, trace_id: str) -> Sequence[FormattedStackItem]:
        text = str(trace_id).strip()
        if _TASK_ID.match(text) is None:
            return super().format_terminated_task_stack(trace_id)  # type: ignore[no-any-return]
        found = [i for i in self._lw_finished() if i.id.lower() == text.lower()]
        if not found:
            raise MissingTask(trace_id)
        info = found[-1]
        label = f"{info.id} {info.name!r} ({info.coro})"
        outcome = info.outcome + (f": {info.detail}" if info.detail else "")
        stack = (_format_frames(info.stack) if info.stack
                 else "Not recorded: the task existed before loopwatch attached to the loop")
        return [
            FormattedStackItem(FormatItemTypes.HEADER,
                               f"Creation stack of {label}, recorded by loopwatch "
                               "(most recent call last)"),
            FormattedStackItem(FormatItemTypes.CONTENT, stack),
            FormattedStackItem(FormatItemTypes.HEADER, "Outcome"),
            FormattedStackItem(FormatItemTypes.CONTENT, outcome),
        ]

    def _lw_finished(self) -> list[TaskInfo]:
        """loopwatch's history of finished tasks, oldest first."""
        return [i for i in self._lw_watcher.tasks(history=True) if i.outcome]


def start_monitor(
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    host: str = _aiomonitor.MONITOR_HOST,
    port: int = _aiomonitor.MONITOR_TERMUI_PORT,
    webui_port: int = _aiomonitor.MONITOR_WEBUI_PORT,
    console_port: int = _aiomonitor.CONSOLE_PORT,
    monitor_cls: type[Any] | None = None,
    **aiomonitor_kwargs: Any,
) -> LoopwatchMonitor:
    """Start an aiomonitor console on ``loop`` (default: the running loop) with
    loopwatch's commands and data in it; returns the started monitor.

    Takes the arguments of ``aiomonitor.start_monitor``: ``host``, ``port`` (the
    telnet terminal UI), ``webui_port``, ``console_port``, ``console_enabled``,
    ``locals``, ``max_termination_history``, ``monitor_cls``. A port of ``0`` picks a
    free one. A loop that is not watched yet is attached (see
    :func:`loopwatch.attach`). Close the monitor with ``monitor.close()`` or use it
    as a context manager. Raises :class:`~loopwatch.ConsoleError` when a port is
    busy, and :class:`~loopwatch.OptionsError` for ``hook_task_factory=True``.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NotWatchedError(
                "loopwatch.aiomonitor.start_monitor() needs a loop: pass one or call it "
                "inside a running loop"
            ) from None
    cls: type[Any] = LoopwatchMonitor
    if monitor_cls is not None and monitor_cls is not LoopwatchMonitor:
        if not (isinstance(monitor_cls, type) and issubclass(monitor_cls, _aiomonitor.Monitor)):
            raise TypeError(f"monitor_cls must be a subclass of aiomonitor.Monitor, "
                            f"got {monitor_cls!r}")
        cls = (monitor_cls if issubclass(monitor_cls, LoopwatchMonitor)
               else type(monitor_cls.__name__, (LoopwatchMonitor, monitor_cls), {}))
    if aiomonitor_kwargs.get("max_termination_history") is None:
        aiomonitor_kwargs.pop("max_termination_history", None)
    monitor: LoopwatchMonitor = cls(loop, host=host, termui_port=port, webui_port=webui_port,
                                    console_port=console_port, **aiomonitor_kwargs)
    monitor.start()
    return monitor


# -- loopwatch's commands in aiomonitor's console -----------------------------------


def register_commands() -> dict[str, str]:
    """Register loopwatch's commands in aiomonitor's console (``aiomonitor.monitor_cli``).

    Done once per process; :func:`start_monitor` calls it, and so may a program that
    starts aiomonitor's own ``Monitor`` on a watched loop. Returns :data:`COMMANDS`.
    """
    with _register_lock:
        if not COMMANDS:
            COMMANDS.update(_register_in(monitor_cli))
        return dict(COMMANDS)


def _register_in(group: Any) -> dict[str, str]:
    """Add loopwatch's commands to an aiomonitor command group; name -> registered name."""
    taken = set(group.commands) | set(getattr(group, "_aliases", {}))
    names = {}
    for name, summary, params, body in _DEFINITIONS:
        registered = name if name not in taken else f"lw-{name}"
        func = custom_help_option(auto_command_done(_command_function(name, body)))
        for param in reversed(params):
            func = param(func)
        group.command(name=registered, help=summary)(func)
        names[name] = registered
    return names


def _command_function(name: str, body: Callable[..., str]) -> Callable[..., None]:
    def command(ctx: click.Context, **kwargs: Any) -> None:
        monitor = ctx.obj
        try:
            watcher = _watcher_of(monitor._monitored_loop)
        except NotWatchedError:
            click.echo("loopwatch: this loop is not watched; start the monitor with "
                       "loopwatch.aiomonitor.start_monitor(loop)")
            return
        width = ctx.max_content_width or 100
        try:
            text = body(watcher, width, **kwargs)
        except Exception as exc:  # a console command never takes the console down
            log.debug("loopwatch: the %s command failed", name, exc_info=True)
            text = f"loopwatch: {name} failed: {type(exc).__name__}: {exc}\n"
        click.echo(text, nl=not text.endswith("\n"))

    command.__name__ = f"loopwatch_{name}"
    return command


def _parked(w: Watcher, width: int, over: float | None) -> str:
    threshold = w.options.parked_after if over is None else over
    rows = [i for i in w.tasks() if _is_parked(i, threshold)]
    rows.sort(key=lambda i: -(i.parked_for or 0.0))
    if not rows:
        return f"no task parked for more than {format_seconds(threshold)}\n"
    title = (f"{len(rows)} task{'s' if len(rows) != 1 else ''} parked for more than "
             f"{format_seconds(threshold)}")
    text = render_text(task_table(rows, title=title), width=width)
    lines = []
    for info in rows:
        site = (pick_site(info.awaiting.frames) if info.awaiting and info.awaiting.frames
                else None)
        if site is not None:
            lines.append(f"{info.id} waits at {_where(site)} in {site.function}")
    return text + ("\n".join(lines) + "\n" if lines else "")


#: waits that are the point of the task: never parked (as the parked check has it)
_BY_DESIGN = frozenset({"sleep", "sleep_forever", "Server.serve_forever", "running"})


def _is_parked(info: TaskInfo, threshold: float) -> bool:
    if info.parked_for is None or info.parked_for < threshold:
        return False
    # asleep (wakes at a known time) or only awaiting other tasks: not parked itself
    waiting = info.awaiting
    return waiting is None or not (waiting.what in _BY_DESIGN or waiting.on_tasks)


def _stalls(w: Watcher, width: int) -> str:
    detector: Any = w.detector("stall")
    out = []
    if detector is None or not w.options.watchdog:
        out.append("stall detection is off on this loop (watchdog=False)")
    else:
        blocked = detector.blocked_state() if hasattr(detector, "blocked_state") else None
        if blocked is not None:
            seconds, site = blocked
            where = f" at {_where(site)}" if site is not None else ""
            out.append(f"loop blocked for {format_seconds(seconds)}{where} (now)")
    if detector is not None and hasattr(detector, "stalls"):
        stalls = list(detector.stalls())
    else:
        stalls = [f for f in w.findings() if f.kind == "stall"]
    if not stalls:
        out.append(f"no stall over {format_seconds(w.options.stall_after)} so far")
        return "\n".join(out) + "\n"
    text = "\n".join(out) + ("\n" if out else "")
    for finding in stalls:
        text += render_text(finding_renderable(finding), width=width)
    return text


def _lag(w: Watcher, width: int) -> str:
    stats = w.lag()
    if not stats:
        reason = ("the watchdog is off (watchdog=False)" if not w.options.watchdog
                  else "no heartbeat measured yet")
        return f"no loop-lag figures: {reason}\n"
    samples = stats.get("samples")
    tail = f" ({int(samples)} samples)" if samples else ""
    return (f"loop lag: p50 {format_seconds(stats.get('p50'))}, "
            f"p99 {format_seconds(stats.get('p99'))}, "
            f"max {format_seconds(stats.get('max'))}{tail}\n")


def _audit(w: Watcher, width: int, stacks: bool) -> str:
    return render_text(report_renderable(w.audit(), stacks=stacks), width=width)


def _findings(w: Watcher, width: int, kind: str | None, stacks: bool) -> str:
    report = Report(findings=w.findings(), notes=w.all_notes(), scope="run", loop=w.base,
                    lag=w.lag())
    if kind:
        report = report.filter(k.strip() for k in kind.split(","))
    return render_text(report_renderable(report, stacks=stacks), width=width)


# growth baselines, by watcher serial: (snapshot, wall-clock time taken)
_baselines: dict[int, tuple[TaskSnapshot, float]] = {}


def _growth(w: Watcher, width: int, baseline: bool) -> str:
    now = w.snapshot()
    name = COMMANDS.get("growth", "growth")
    old = _baselines.get(w.serial)
    if baseline or old is None:
        _baselines[w.serial] = (now, time.time())
        return (f"baseline taken: {now.total} live tasks; `{name}` again shows which "
                "creation sites grew since\n")
    snapshot, taken = old
    grew = [d for d in now.compare_to(snapshot, key="site") if d.count_diff > 0]
    found = [f for f in w.findings() if f.kind == "task_growth"]
    head = (f"{now.total} live tasks, {now.total - snapshot.total:+d} since the baseline "
            f"{format_seconds(time.time() - taken)} ago")
    if not grew:
        text = f"{head}; no creation site grew\n"
    else:
        table = Table(title=head, expand=False)
        table.add_column("created at", style="cyan")
        table.add_column("coro")
        table.add_column("live", justify="right")
        table.add_column("change", justify="right")
        for d in grew[:_GROWTH_ROWS]:
            site = d.key if isinstance(d.key, Frame) else None
            where = f"{_where(site)} in {site.function}" if site else "<created before attach>"
            table.add_row(where, now.site_coros.get(site, ""), str(d.count), f"{d.count_diff:+d}")
        text = render_text(table, width=width)
    for finding in found:
        text += render_text(finding_renderable(finding, stacks=False), width=width)
    return text


#: rows shown by ``growth``
_GROWTH_ROWS = 20


_DEFINITIONS: tuple[tuple[str, str, list[Any], Callable[..., str]], ...] = (
    ("parked", "loopwatch: tasks stuck waiting on one thing", [
        click.option("--over", type=float, default=None, metavar="SECONDS",
                     help="only tasks parked longer than this (default: parked_after)"),
    ], _parked),
    ("stalls", "loopwatch: when the loop was blocked, and where", [], _stalls),
    ("lag", "loopwatch: loop lag (p50, p99, max)", [], _lag),
    ("audit", "loopwatch: what shutdown would leave behind", [
        click.option("--stacks", is_flag=True, help="show the stacks of each finding"),
    ], _audit),
    ("findings", "loopwatch: everything found so far", [
        click.option("--kind", default=None, metavar="KINDS", help="comma list of kinds"),
        click.option("--stacks", is_flag=True, help="show the stacks of each finding"),
    ], _findings),
    ("growth", "loopwatch: creation sites that keep growing", [
        click.option("--baseline", is_flag=True, help="take a new baseline snapshot"),
    ], _growth),
)


# -- helpers ------------------------------------------------------------------------


def _cycle_through(w: Watcher, task: asyncio.Future[Any]) -> list[int]:
    """The await cycle ``task`` is part of (loopwatch ids), or ``[]``."""
    edges: dict[int, Iterable[int]] = {task_id(t): waits_on(t) for t in w.live_tasks()}
    me = task_id(task)
    for cycle in find_cycles(edges):
        if me in cycle:
            return cycle
    return []


def _tell_terminal(text: str) -> None:
    """Write a line to the aiomonitor terminal session running this command, if any.

    aiomonitor prints the outcome of ``cancel`` from a task of its own, and in 0.7.1
    that line never reaches the terminal; a refusal must."""
    from aiomonitor.context import current_stdout

    stdout = current_stdout.get(None)
    if stdout is not None:
        with contextlib.suppress(Exception):
            stdout.write(text + "\n")
            stdout.flush()


def _where(frame: Frame) -> str:
    return f"{short_path(frame.file)}:{frame.line}"


def _format_frames(frames: Sequence[Frame]) -> str:
    summaries = [traceback.FrameSummary(f.file, f.line, f.function) for f in frames]
    return textwrap.dedent("".join(traceback.format_list(summaries)))


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` different free ports on ``host``. The sockets are held until all are
    bound: one at a time, the kernel may hand out the same port twice (seen in CI)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _check_port(host: str, port: int, what: str, argument: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConsoleError(
                f"aiomonitor's {what} port {host}:{port} is busy ({exc.strerror or exc}); "
                f"pass {argument}=0 for a free port, or another port"
            ) from exc


def _quiet_aiomonitor_warnings() -> None:
    """aiomonitor's web UI stores its state under a string key, which aiohttp 3.9+ warns
    about in aiomonitor's own code: under ``-W error`` (pytest's ``filterwarnings =
    error``) the web UI, and so the whole monitor, would fail to start. Ignore that one
    warning, from aiomonitor's modules only."""
    category = getattr(_aiohttp_web, "NotAppKeyWarning", None)
    if category is not None:
        warnings.filterwarnings("ignore", category=category, module=r"aiomonitor(\.|$)")


def _run_plain(main: Callable[[], Any]) -> None:
    """Run ``main()`` to completion on a new plain asyncio loop (not the policy's)."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=_PLAIN_LOOP) as runner:
            runner.run(main())
        return
    loop = _PLAIN_LOOP()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
