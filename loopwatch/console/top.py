"""``loopwatch top TARGET``: a live view of a watched program, refreshed every second.

It speaks only the console's JSON interface: every refresh asks for the tasks sorted
by time parked (with what each awaits), the parked count, loop lag, stalls and the
finding counts, and redraws. ``q`` quits; so does Ctrl-C, and the view ends cleanly
when the target goes away. Building the picture (:func:`top_renderable`) is a pure
function of the data, so it is tested without a terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from .._render import format_seconds
from .._report import KINDS
from .client import ConsoleClient, RemoteError, TargetError
from .commands import blocked_line, tasks_table

__all__ = ["TopState", "fetch", "run_top", "top_renderable"]

#: rows of the screen that are not task rows (header, footer, table header)
CHROME = 8


@dataclasses.dataclass
class TopState:
    """Everything one refresh shows."""

    address: str
    ps: dict[str, Any]
    parked: int
    lag: dict[str, Any]
    stalls: dict[str, Any]
    findings: dict[str, Any]
    blocked: dict[str, Any] | None = None
    at: float = dataclasses.field(default_factory=time.time)


def fetch(client: ConsoleClient, rows: int) -> TopState:
    """One refresh's data, over the JSON interface."""
    ps = client.request("ps", {"sort": "parked", "limit": max(1, rows), "awaiting": True})
    parked = client.request("ps", {"parked": True, "limit": 1}).result["matched"]
    lag = client.request("lag").result
    stalls = client.request("stalls").result
    findings = client.request("findings", {"summary": True}).result
    return TopState(address=str(client.address), ps=ps.result, parked=parked, lag=lag,
                    stalls=stalls, findings=findings, blocked=ps.blocked or stalls["blocked"])


def _site(site: dict[str, Any] | None) -> str:
    """A site as ``file.py:42``: a live view has no room for folders."""
    if not site:
        return "-"
    return f"{os.path.basename(site['file'])}:{site['line']}"


def _program(argv: list[str]) -> str:
    if not argv:
        return ""
    first = os.path.basename(argv[0]) if argv[0] else "python"
    return " ".join([first, *argv[1:]])[:60]


def top_renderable(state: TopState, *, interval: float = 1.0) -> RenderableType:
    ps = state.ps
    head = Text()
    head.append("loopwatch top", style="bold")
    head.append(f"  pid {ps['pid']} · {ps['loop']} loop · {_program(ps.get('argv', []))}"
                f" · {state.address} · {time.strftime('%H:%M:%S', time.localtime(state.at))}")
    facts = Text()
    facts.append(f"tasks {ps['total']}", style="bold")
    facts.append(f" · parked {state.parked}", style="bold yellow" if state.parked else "")
    lag = state.lag
    if lag.get("measured"):
        facts.append(f" · lag p50 {format_seconds(lag.get('p50'))} "
                     f"p99 {format_seconds(lag.get('p99'))} max {format_seconds(lag.get('max'))}")
    else:
        facts.append(" · lag not measured")
    stalls = state.stalls
    facts.append(f" · stalls {stalls['count']}", style="bold red" if stalls["count"] else "")
    if stalls["stalls"]:
        last = stalls["stalls"][-1]
        duration = (last.get("details") or {}).get("duration")
        site = last.get("site")
        where = f" at {_site(site)}" if site else ""
        facts.append(f" (last {format_seconds(duration)}{where})")
    counts = state.findings.get("summary", {})
    if counts:
        facts.append(" · findings " + ", ".join(f"{counts[k]} {k}" for k in KINDS if k in counts))
    else:
        facts.append(" · no findings")
    parts: list[RenderableType] = [head, facts]
    if state.blocked:
        parts.append(Text(blocked_line({**state.blocked, "site": None}) + (
            f" at {_site(state.blocked['site'])}" if state.blocked.get("site") else ""),
            style="bold red"))
    rows = ps["tasks"]
    if rows:
        parts.append(tasks_table(rows, awaiting=True, where=_site))
    else:
        parts.append(Text("no live tasks", style="dim"))
    more = f"{ps['more']} more tasks · " if ps["more"] else ""
    parts.append(Text(f"{more}sorted by time parked · refresh {format_seconds(interval)} · "
                      "q quits", style="dim"))
    return Group(*parts)


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[int | None]:
    """Single keys from ``stream`` when it is a terminal: yields its fd (or None)."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    try:
        import termios
        import tty
    except ImportError:  # no termios (Windows): no keys, Ctrl-C still quits
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(fd: int | None, timeout: float) -> str:
    """A key pressed within ``timeout`` seconds, or ``""``."""
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return ""
    data = os.read(fd, 32)
    return data.decode("utf-8", "replace")


def run_top(target: str, *, interval: float = 1.0, console: Console | None = None,
            stdin: TextIO | None = None) -> int:
    """Show the live view until ``q``, Ctrl-C or the target going away; the exit status."""
    out = console or Console()
    err = Console(stderr=True, highlight=False)
    try:
        client = ConsoleClient(target)
    except TargetError as exc:
        err.print(f"loopwatch top: {exc}", markup=False)
        return 2
    gone: str | None = None
    try:
        with client, _cbreak(stdin or sys.stdin) as fd, \
                Live(console=out, screen=out.is_terminal, auto_refresh=False,
                     transient=False) as live:
            while True:
                rows = max(3, out.size.height - CHROME)
                try:
                    state = fetch(client, rows)
                except (TargetError, RemoteError) as exc:
                    gone = str(exc)
                    break
                live.update(top_renderable(state, interval=interval), refresh=True)
                deadline = time.monotonic() + interval
                quit_now = False
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    key = _wait_key(fd, left)
                    if "q" in key.lower():
                        quit_now = True
                        break
                if quit_now:
                    break
    except KeyboardInterrupt:
        return 0
    if gone is not None:
        err.print(f"loopwatch top: the target went away: {gone}", markup=False)
        return 1
    return 0
