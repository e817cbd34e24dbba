"""``loopwatch top``: its picture (pure rendering) and its life in a real terminal (tmux)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console

from loopwatch.console.top import TopState, top_renderable

from .test_console import TIMEOUT, Program, programs, until


@pytest.fixture
def program() -> Iterator[Callable[..., Program]]:
    yield from programs()


def state(**changes: Any) -> TopState:
    site = {"file": "/srv/app/worker.py", "line": 42, "function": "Worker.run"}
    row = {"id": "T7", "name": "worker-1", "coro": "app.worker.Worker.run", "state": "pending",
           "age": 75.0, "parked_for": 61.5, "parent": "T1",
           "site": {"file": "/srv/app/main.py", "line": 12, "function": "main"},
           "waits_on": [],
           "awaiting": {"what": "Queue.get", "detail": "", "timeout": None, "waits_on": [],
                        "chain": [], "at": site, "sleeping": False, "on_tasks": False}}
    sleeper = dict(row, id="T9", name="ticker", coro="app.tick", parked_for=0.25,
                   awaiting=dict(row["awaiting"], what="sleep", detail="0.7 s left",
                                 at={"file": "/srv/app/main.py", "line": 30,
                                     "function": "tick"}))
    values: dict[str, Any] = dict(
        address="unix:/run/user/1000/loopwatch-4242.sock",
        ps={"pid": 4242, "loop": "uvloop", "argv": ["/srv/app/main.py", "--port", "8000"],
            "total": 130, "matched": 130, "shown": 2, "more": 128, "tasks": [row, sleeper]},
        parked=1, lag={"measured": True, "p50": 0.0004, "p99": 0.012, "max": 0.31},
        stalls={"count": 2, "blocked": None,
                "stalls": [{"details": {"duration": 0.31},
                            "site": {"file": "/srv/app/db.py", "line": 88, "function": "q"}}]},
        findings={"summary": {"stall": 2, "parked": 1}},
        blocked={"seconds": 2.5, "site": {"file": "/srv/app/db.py", "line": 88,
                                          "function": "q"}},
        at=1_700_000_000.0)
    values.update(changes)
    return TopState(**values)


def render(top: TopState) -> str:
    buf = io.StringIO()
    Console(file=buf, width=100).print(top_renderable(top))
    return buf.getvalue()


def test_top_picture() -> None:
    clock = time.strftime("%H:%M:%S", time.localtime(1_700_000_000.0))
    expected = f"""\
loopwatch top  pid 4242 · uvloop loop · main.py --port 8000 ·
unix:/run/user/1000/loopwatch-4242.sock · {clock}
tasks 130 · parked 1 · lag p50 0 ms p99 12 ms max 310 ms · stalls 2 (last 310 ms at db.py:88) ·
findings 1 parked, 2 stall
loop blocked for 2.5 s at db.py:88
id  name      coro               state       age  parked  waiting on        awaits at     created at
T7  worker-1  app.worker.Worker  pending  75.0 s  61.5 s  Queue.get         worker.py:42  main.py:12
              .run
T9  ticker    app.tick           pending  75.0 s  250 ms  sleep 0.7 s left  main.py:30    main.py:12
128 more tasks · sorted by time parked · refresh 1.0 s · q quits
"""
    assert [line.rstrip() for line in render(state()).splitlines()] == expected.splitlines()


def test_top_picture_of_a_quiet_program() -> None:
    quiet = state(ps={"pid": 1, "loop": "asyncio", "argv": [], "total": 0, "matched": 0,
                      "shown": 0, "more": 0, "tasks": []},
                  parked=0, lag={"measured": False}, stalls={"count": 0, "stalls": [],
                                                             "blocked": None},
                  findings={"summary": {}}, blocked=None)
    lines = render(quiet).splitlines()
    assert lines[1] == "tasks 0 · parked 0 · lag not measured · stalls 0 · no findings"
    assert lines[2:] == ["no live tasks", "sorted by time parked · refresh 1.0 s · q quits"]


TMUX = shutil.which("tmux")


class Tmux:
    """A private tmux server with one session running ``command`` in a 120x30 terminal."""

    def __init__(self, command: str) -> None:
        self.server = f"lwtest{os.getpid()}"
        # A test runner may export COLUMNS and LINES, which rich prefers to the terminal.
        self.run("new-session", "-d", "-s", "top", "-x", "120", "-y", "30",
                 f"env -u COLUMNS -u LINES {command}; echo EXIT=$?; sleep 60")

    def run(self, *args: str) -> str:
        assert TMUX is not None
        return subprocess.run([TMUX, "-L", self.server, *args], capture_output=True,
                              text=True, timeout=TIMEOUT, check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "top", *keys)

    def close(self) -> None:
        assert TMUX is not None
        subprocess.run([TMUX, "-L", self.server, "kill-server"], capture_output=True,
                       timeout=TIMEOUT)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux): "
                                         "top's real-terminal test needs it")
@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_in_a_real_terminal(program: Callable[..., Program], key: str) -> None:
    prog = program()
    term = Tmux(f"{sys.executable} -m loopwatch top {prog.address}")
    try:
        screen = until(lambda: "stuck" in (s := term.screen()) and "child" in s and s,
                       what="top's first picture")
        lines = screen.splitlines()
        assert lines[0].startswith(f"loopwatch top  pid {prog.proc.pid} ·")
        assert any(line.startswith("tasks 5 · parked ") for line in lines), screen
        assert any(line.startswith("id ") and "awaits at" in line for line in lines)
        stuck = next(line for line in lines if " stuck " in line).split()
        assert stuck[2:4] == ["__main__.forever", "pending"]
        assert stuck[-3:] == ["Event.wait", "app.py:14", "app.py:33"]
        assert "q quits" in screen
        # it refreshes: the clock moves
        def clock() -> str:
            return next(line for line in term.screen().splitlines()
                        if "c.sock · " in line).rsplit(" ", 1)[-1]

        first = clock()
        until(lambda: clock() != first, what="a refresh")
        term.keys(key)
        after = until(lambda: "EXIT=" in (s := term.screen()) and s, what="top to quit")
        assert "EXIT=0" in after
        assert "Traceback" not in after
        assert "stuck" not in after  # the alternate screen is gone: the shell is back
    finally:
        term.close()


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux): "
                                         "top's real-terminal test needs it")
def test_top_ends_when_the_target_goes_away(program: Callable[..., Program]) -> None:
    prog = program()
    term = Tmux(f"{sys.executable} -m loopwatch top {prog.address} --interval 0.2")
    try:
        until(lambda: "stuck" in term.screen(), what="top's first picture")
        prog.proc.send_signal(signal.SIGKILL)
        prog.proc.wait(TIMEOUT)
        after = until(lambda: "EXIT=" in (s := term.screen()) and s, what="top to end")
        assert "EXIT=1" in after and "Traceback" not in after
        assert "loopwatch top: the target went away: the console at unix:" in after
    finally:
        term.close()
