"""Rendering for people, with rich: reports, findings, task tables and await chains.

Shared by the CLI, the console and the pytest plugin. Functions here build rich
renderables or plain text from data; they never read a loop.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ._frames import Frame
from ._report import Finding, Report
from ._watcher import TaskInfo

__all__ = [
    "finding_renderable",
    "format_seconds",
    "print_report",
    "render_text",
    "report_renderable",
    "short_path",
    "stack_renderable",
    "summary_renderable",
    "task_table",
    "task_tree",
]


def short_path(path: str) -> str:
    """A path relative to the current folder when that is shorter."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if len(rel) < len(path) and not rel.startswith("../..") else path


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _where(frame: Frame | None) -> str:
    if frame is None:
        return "-"
    return f"{short_path(frame.file)}:{frame.line}"


def stack_renderable(title: str, frames: Sequence[Frame]) -> RenderableType:
    """A stack, most recent call last, like a traceback."""
    text = Text()
    text.append(f"{title} (most recent call last):\n", style="bold")
    for frame in frames:
        text.append(f"  {short_path(frame.file)}:{frame.line}", style="cyan")
        text.append(f" in {frame.function}\n")
        line = _source_line(frame)
        if line:
            text.append(f"    {line}\n", style="dim")
    return text


def _source_line(frame: Frame) -> str:
    import linecache

    return linecache.getline(frame.file, frame.line).strip()


def finding_renderable(finding: Finding, *, stacks: bool = True) -> RenderableType:
    head = Text()
    head.append(f"{finding.kind}", style="bold red")
    head.append(f": {finding.message}")
    parts: list[RenderableType] = [head]
    if finding.site is not None:
        site = Text("  at ", style="dim")
        site.append(_where(finding.site), style="cyan")
        site.append(f" in {finding.site.function}")
        line = _source_line(finding.site)
        if line:
            site.append(f"\n    {line}", style="dim")
        parts.append(site)
    if stacks:
        for name, frames in finding.stacks.items():
            if frames:
                parts.append(stack_renderable(f"  {name}", frames))
    if finding.hint:
        parts.append(Text(f"  hint: {finding.hint}", style="green"))
    return Group(*parts)


def report_renderable(report: Report, *, stacks: bool = True) -> RenderableType:
    parts: list[RenderableType] = [Text(report.summary(), style="bold")]
    for finding in report.findings:
        parts.append(Text(""))
        parts.append(finding_renderable(finding, stacks=stacks))
    if report.lag:
        lag = report.lag
        parts.append(Text(
            f"\nloop lag: p50 {format_seconds(lag.get('p50'))}, "
            f"p99 {format_seconds(lag.get('p99'))}, max {format_seconds(lag.get('max'))}",
            style="dim"))
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    return Group(*parts)


def summary_renderable(report: Report) -> RenderableType:
    """The short form of a report: its summary line, then one line per finding (kind,
    message, site), without stacks. ``loopwatch run`` prints it at exit."""
    parts: list[RenderableType] = [Text(report.summary(), style="bold")]
    for finding in report.findings:
        line = Text("  ")
        line.append(finding.kind, style="bold red")
        line.append(f": {finding.message}")
        if finding.site is not None:
            line.append(" (")
            line.append(_where(finding.site), style="cyan")
            line.append(f" in {finding.site.function})")
        parts.append(line)
    return Group(*parts)


def task_table(infos: Iterable[TaskInfo], *, title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("id", style="bold")
    table.add_column("name")
    table.add_column("coro")
    table.add_column("state")
    table.add_column("age", justify="right")
    table.add_column("parked", justify="right")
    table.add_column("waiting on")
    table.add_column("created at", style="cyan")
    for info in infos:
        waiting = ""
        if info.awaiting is not None:
            waiting = info.awaiting.what + (f" {info.awaiting.detail}" if info.awaiting.detail
                                            else "")
        table.add_row(info.id, info.name, info.coro, info.state, format_seconds(info.age),
                      format_seconds(info.parked_for), waiting, _where(info.site))
    return table


def task_tree(infos: Sequence[TaskInfo]) -> Tree:
    """Tasks by parent; a task whose parent is gone hangs from the root."""
    root = Tree("tasks")
    by_id = {i.id: i for i in infos}
    nodes: dict[str, Tree] = {}

    def label(info: TaskInfo) -> str:
        what = f" [{info.awaiting.what}]" if info.awaiting else ""
        return f"{info.id} {info.name} {info.coro}{what}"

    def node_for(info: TaskInfo, depth: int = 0) -> Tree:
        if info.id in nodes:
            return nodes[info.id]
        parent = by_id.get(info.parent) if info.parent else None
        host = node_for(parent, depth + 1) if parent is not None and depth < 100 else root
        nodes[info.id] = host.add(label(info))
        return nodes[info.id]

    for info in infos:
        node_for(info)
    return root


def render_text(renderable: RenderableType, *, width: int = 100, color: bool = False) -> str:
    """Render to a string (plain unless ``color``)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="standard" if color else None,
                      force_terminal=color, no_color=not color, highlight=False)
    console.print(renderable)
    return buf.getvalue()


def print_report(report: Report, file: IO[str] | None = None, *, stacks: bool = True) -> None:
    """Print a report for people (to stderr by default)."""
    console = Console(file=file, stderr=file is None, highlight=False)
    console.print(report_renderable(report, stacks=stacks))
