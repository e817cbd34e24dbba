"""The console over real sockets, against real programs started as subprocesses.

Each test writes a small program that runs on a watched loop with a console, waits
for its "ready" line, and talks to the console as nc, telnet or a script would.
Text answers have no terminator, so a text request is followed by a JSON ``help``
whose answer marks the end (one connection answers its lines in order).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch.console import commands as C
from loopwatch.console.client import ConsoleClient
from loopwatch.console.server import MAX_CLIENTS, MAX_LINE, parse_address

from .conftest import BASE_LOOP

HEADER = """\
import asyncio, os, sys, time
import loopwatch

ADDRESS = sys.argv[1]
FLAG = sys.argv[2]
LOOP = os.environ.get("LW_BASE_LOOP", "asyncio")


def ready():
    print("ready", flush=True)


async def forever(event):
    await event.wait()


def block_until_flag():
    print("blocking", flush=True)
    while not os.path.exists(FLAG):
        time.sleep(0.005)  # blocks the loop
"""

#: a program with a parked task, a sleeper and a child; blocks on demand (flag file)
BASIC = HEADER + """
async def child(event):
    await event.wait()


async def parent(event):
    inner = asyncio.create_task(child(event), name="child")
    await inner


async def main():
    event = asyncio.Event()
    stuck = asyncio.create_task(forever(event), name="stuck")
    keep = [asyncio.create_task(parent(event), name="parent"),
            asyncio.create_task(asyncio.sleep(3600), name="sleeper")]
    for _ in range(3):  # every task has taken its first step (child is made by parent's)
        await asyncio.sleep(0)
    ready()
    try:
        await stuck
    except asyncio.CancelledError:
        print("stuck cancelled", flush=True)
    await asyncio.sleep(3600)


loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False, parked_after=0.2)
"""

TIMEOUT = 20.0


def short_dir() -> str:
    """A folder with a short path (a Unix socket path takes at most 107 bytes)."""
    return tempfile.mkdtemp(prefix="lw-", dir="/tmp" if os.path.isdir("/tmp") else None)


class Program:
    """A watched program in a subprocess, with its console at ``address``."""

    def __init__(self, source: str, *, address: str | None = None,
                 env: dict[str, str] | None = None, ready: bool = True) -> None:
        self.dir = short_dir()
        self.script = Path(self.dir) / "app.py"
        self.script.write_text(textwrap.dedent(source))
        self.flag = os.path.join(self.dir, "flag")
        self.path = os.path.join(self.dir, "c.sock")
        self.address = address or f"unix:{self.path}"
        full_env = {**os.environ, "LW_BASE_LOOP": BASE_LOOP, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), self.address, self.flag],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
            cwd=self.dir)
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if ready:
            self.wait_for("ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        """The next stdout line that contains ``text`` (fails when the program ends)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} from the program within {timeout} s") \
                    from None
            if line is None:
                self.proc.wait(TIMEOUT)
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the program ended before {text!r}: {err}")
            self.lines.append(line)
            if text in line:
                return line

    def release(self) -> None:
        """End a block started with ``block_until_flag``."""
        Path(self.flag).touch()

    def stop(self) -> str:
        """Kill the program if it still runs; its stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.reader.join(TIMEOUT)  # it ends at the end of stdout
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return err


def programs() -> Iterator[Callable[..., Program]]:
    """Start programs; all are stopped at the end (the body of the fixtures)."""
    started: list[Program] = []

    def start(source: str = BASIC, **kwargs: Any) -> Program:
        prog = Program(source, **kwargs)
        started.append(prog)
        return prog

    yield start
    for prog in started:
        prog.stop()


@pytest.fixture
def program() -> Iterator[Callable[..., Program]]:
    yield from programs()


class Conn:
    """One console connection, as a script would use it."""

    def __init__(self, address: str, timeout: float = TIMEOUT) -> None:
        addr = parse_address(address)
        if addr.kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(addr.path)
        else:
            self.sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
        self.buf = b""
        self.ids = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line (b"" at the end of the stream)."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def request(self, cmd: str, args: Any = None, **extra: Any) -> dict[str, Any]:
        self.ids += 1
        req = {"id": self.ids, "cmd": cmd, **extra}
        if args is not None:
            req["args"] = args
        self.send(json.dumps(req).encode() + b"\n")
        return self.json_line()

    def json_line(self) -> dict[str, Any]:
        line = self.line()
        assert line.startswith(b"{"), line
        answer: dict[str, Any] = json.loads(line)
        return answer

    def text(self, line: str | bytes, end: bytes = b"\n") -> str:
        """The text answer to ``line``: everything up to the answer of a JSON marker."""
        data = line.encode() if isinstance(line, str) else line
        self.send(data + end + b'{"id": "end-of-answer", "cmd": "quit-marker"}\n')
        out = []
        while True:
            got = self.line()
            assert got, f"the console closed the connection; got {b''.join(out)!r}"
            if got.startswith(b'{"id":"end-of-answer"'):
                return b"".join(out).decode()
            out.append(got)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def until(probe: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """Poll ``probe`` until it returns something true (a thread must act first)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        time.sleep(0.02)


def task_id_of(conn: Conn, name: str) -> str:
    rows = conn.request("ps", {"filter": name})["result"]["tasks"]
    (row,) = [r for r in rows if r["name"] == name]
    return str(row["id"])


# -- basics ----------------------------------------------------------------------


def test_ps_text_and_json(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        text = conn.text("ps")
        for name in ("stuck", "parent", "child", "sleeper"):
            assert name in text
        assert "Event.wait" in text and "app.py" in text
        assert re.search(r"\d+ of \d+ tasks shown", text)
        answer = conn.request("ps")
        assert answer["ok"] is True and answer["id"] == 1
        rows = answer["result"]["tasks"]
        names = {r["name"] for r in rows}
        assert {"stuck", "parent", "child", "sleeper"} <= names
        stuck = next(r for r in rows if r["name"] == "stuck")
        assert stuck["coro"] == "__main__.forever"
        assert stuck["site"]["file"] == str(prog.script)
        assert stuck["state"] == "pending" and "awaiting" not in stuck
        child = next(r for r in rows if r["name"] == "child")
        parent = next(r for r in rows if r["name"] == "parent")
        assert child["parent"] == parent["id"]
        assert parent["waits_on"] == [child["id"]]
        assert answer["result"]["pid"] == prog.proc.pid
        assert answer["result"]["loop"] == BASE_LOOP


def test_ps_options(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        def ps(**args: Any) -> dict[str, Any]:
            answer = conn.request("ps", args)
            assert answer["ok"], answer
            return answer["result"]  # type: ignore[no-any-return]

        assert [r["name"] for r in ps(filter="STUCK")["tasks"]] == ["stuck"]
        assert ps(filter="forever")["matched"] == 1
        by_name = [r["name"] for r in ps(sort="name")["tasks"]]
        assert by_name == sorted(by_name, key=str.lower)
        limited = ps(limit=2)
        assert limited["shown"] == 2 and limited["more"] == limited["matched"] - 2
        ids = [int(r["id"][1:]) for r in ps()["tasks"]]
        assert ids == sorted(ids)
        # parked: waiting longer than parked_after (0.2 s) on a future; never a sleeper,
        # never a task that only waits on another task
        parked = until(lambda: {r["name"] for r in ps(parked=True)["tasks"]} >= {"stuck", "child"}
                       and ps(parked=True), what="parked tasks")
        names = {r["name"] for r in parked["tasks"]}
        assert "sleeper" not in names and "parent" not in names
        assert all(r["awaiting"]["what"] == "Event.wait" for r in parked["tasks"])
        top = ps(sort="parked", limit=1, awaiting=True)["tasks"][0]
        assert top["parked_for"] is not None and top["awaiting"]["at"]["file"] == str(prog.script)
        text = conn.text("ps --limit 1")
        assert "1 of" in text and "more (use --limit N, 0 for all)" in text


def test_where_tree_parked_stack(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        child = task_id_of(conn, "child")
        parent = task_id_of(conn, "parent")
        where = conn.request("where", {"task": "child"})["result"]
        assert where["id"] == child
        assert where["awaiting"]["what"] == "Event.wait"
        assert where["awaiting"]["at"]["function"].endswith("child")
        assert where["awaited_by"] == [parent] and where["parent"] == parent
        assert where["stack"][-1]["function"].endswith("parent")
        text = conn.text(f"where {child[1:]}")  # "7" names T7 too
        assert text.startswith(f"{child} 'child' __main__.child")
        assert "await chain (most recent call last):" in text
        assert "created at (most recent call last):" in text
        assert "inner = asyncio.create_task(child(event), name=\"child\")" in text
        assert f"awaited by {parent}" in text
        tree = conn.text("tree")
        assert re.search(rf"{parent} parent .*\n[\s│]+└── {child} child", tree), tree
        def both_parked() -> list[dict[str, Any]]:
            tasks = conn.request("parked", {"over": 0.1})["result"]["tasks"]
            return tasks if {r["name"] for r in tasks} >= {"stuck", "child"} else []

        parked = until(both_parked, what="parked tasks")
        assert all(r["awaiting"]["at"] for r in parked)
        assert "parked over 100 ms" in conn.text("parked --over 0.1")
        stack = conn.request("stack")["result"]
        assert stack["thread"] == "MainThread" and stack["running"] is True
        assert any(f["function"] == "<module>" and f["file"] == str(prog.script)
                   for f in stack["frames"])


def test_unknown_task_lists_live_ids(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        answer = conn.request("where", {"task": "T999999"})
        assert answer["ok"] is False
        assert "no live task 'T999999'; live tasks: T" in answer["error"]
        assert conn.text("where nosuch").startswith("error: no live task 'nosuch'")


def test_blocked_loop_answers_with_the_blocked_line_first(
        program: Callable[..., Program]) -> None:
    source = HEADER + """
async def main():
    stuck = asyncio.create_task(forever(asyncio.Event()), name="stuck")
    await asyncio.sleep(0)
    ready()
    await asyncio.sleep(0.05)
    block_until_flag()
    print("unblocked", flush=True)
    await asyncio.sleep(3600)

loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False)
"""
    prog = program(source)
    prog.wait_for("blocking")
    line = prog.script.read_text().splitlines().index(
        "        time.sleep(0.005)  # blocks the loop") + 1
    with Conn(prog.address) as conn:
        text = until(lambda: (t := conn.text("ps")).startswith("loop blocked for") and t,
                     what="the blocked line")
        first, _, rest = text.partition("\n")
        # the watchdog samples the blocking loop on its sleep line or its while line
        assert re.fullmatch(rf"loop blocked for \d+\.\d s at .*app\.py:({line}|{line - 1})",
                            first), first
        assert "stuck" in rest
        answer = conn.request("ps")
        assert answer["ok"] and answer["blocked"]["seconds"] > 0.1
        assert answer["blocked"]["site"]["line"] in (line, line - 1)
        stack = conn.request("stack")["result"]
        assert stack["frames"][-1]["line"] in (line, line - 1)
        assert conn.text("lag").startswith("loop blocked for")
    prog.release()
    prog.wait_for("unblocked")
    with Conn(prog.address) as conn:
        until(lambda: "blocked" not in conn.request("ps"), what="the loop to be free")
        stalls = until(lambda: [f for f in conn.request("stalls")["result"]["stalls"]
                                if not f["details"]["ongoing"]], what="an ended stall")
        # The block is the longest stall; a loaded machine may add short ones of its own
        # (the process did not get the CPU), and may keep the watchdog away throughout.
        longest = max(stalls, key=lambda f: f["details"]["duration"])
        site = longest["site"]
        assert site is None or site["line"] in (line, line - 1), longest
        assert "the loop was blocked for" in conn.text("stalls")


def test_cancel_a_parked_task(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        stuck = task_id_of(conn, "stuck")
        answer = conn.request("cancel", {"tasks": [stuck]})
        assert answer["ok"], answer
        assert answer["result"]["cancelled"] == [stuck] and answer["result"]["queued"] is False
        prog.wait_for("stuck cancelled")
        assert "stuck" not in {r["name"] for r in conn.request("ps")["result"]["tasks"]}
        gone = conn.request("cancel", {"tasks": [stuck]})
        assert gone["ok"] is False and f"no live task {stuck!r}" in gone["error"]


def test_cancel_by_text_filter_and_parked_over(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        text = conn.text("cancel --filter stuck")
        assert re.fullmatch(r"cancelled T\d+\n", text), text
        prog.wait_for("stuck cancelled")
        child = task_id_of(conn, "child")
        until(lambda: child in {r["id"] for r in conn.request("parked", {"over": 0.1})
                                ["result"]["tasks"]}, what="child parked")
        answer = conn.request("cancel", {"parked_over": 0.1})["result"]
        assert child in answer["cancelled"]
        assert not {task_id_of(conn, "sleeper")} & set(answer["cancelled"])
        errors = [conn.request("cancel")["error"], conn.text("cancel"),
                  conn.request("cancel", {"tasks": ["T1"], "filter": "x"})["error"],
                  conn.text("cancel --filter ''")]
        assert "name the tasks: cancel TASK..." in errors[0] and "name the tasks" in errors[1]
        assert "one of them" in errors[2]
        assert "--filter needs some text" in errors[3]


def test_cancel_while_blocked_is_queued(program: Callable[..., Program]) -> None:
    source = HEADER + """
async def main():
    stuck = asyncio.create_task(forever(asyncio.Event()), name="stuck")
    await asyncio.sleep(0)
    ready()
    await asyncio.sleep(0.05)
    block_until_flag()
    try:
        await stuck
    except asyncio.CancelledError:
        print("stuck cancelled", flush=True)
    await asyncio.sleep(3600)

loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False)
"""
    prog = program(source)
    prog.wait_for("blocking")
    with Conn(prog.address) as conn:
        until(lambda: "blocked" in conn.request("ps"), what="the blocked state")
        text = conn.text("cancel stuck")
        assert text.startswith("loop blocked for"), text
        assert re.search(r"queued: cancel of T\d+; the loop is blocked \(loop blocked for "
                         r"\d+\.\d s at .*app\.py:\d+\); it runs when the loop gets control "
                         r"back", text), text
        prog.release()
        prog.wait_for("stuck cancelled")


AWAIT_CYCLE = HEADER + """
async def main():
    tasks = {}
    go = asyncio.Event()

    async def a():
        await go.wait()
        await tasks["b"]

    async def b():
        await go.wait()
        await tasks["a"]

    async def waiter():
        await go.wait()
        await tasks["a"]

    async def free():
        await asyncio.Event().wait()

    tasks["a"] = asyncio.create_task(a(), name="cycle-a")
    tasks["b"] = asyncio.create_task(b(), name="cycle-b")
    tasks["on"] = asyncio.create_task(waiter(), name="on-cycle")
    tasks["free"] = asyncio.create_task(free(), name="free")
    go.set()
    await asyncio.sleep(0.05)
    ready()
    await asyncio.sleep(3600)

loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False)
"""


def test_cancel_refuses_tasks_in_an_await_cycle(program: Callable[..., Program]) -> None:
    prog = program(AWAIT_CYCLE)
    with Conn(prog.address) as conn:
        a, b = task_id_of(conn, "cycle-a"), task_id_of(conn, "cycle-b")
        on, free = task_id_of(conn, "on-cycle"), task_id_of(conn, "free")
        low, high = sorted((a, b), key=lambda t: int(t[1:]))
        answer = conn.request("cancel", {"tasks": ["cycle-a"]})
        assert answer["ok"] is False
        assert f"refusing to cancel {a} is in an await cycle {low} -> {high} -> {low}" \
            in answer["error"]
        assert "RecursionError" in answer["error"]
        text = conn.text(f"cancel {on}")
        assert text.startswith(f"error: refusing to cancel {on} waits on an await cycle")
        # a filter that takes cycle tasks along cancels the rest and lists the refused
        result = conn.request("cancel", {"filter": "<locals>"})["result"]
        assert result["cancelled"] == [free]
        assert {r["id"] for r in result["refused"]} == {a, b, on}
        # the program is still alive and answering
        assert conn.request("ps")["ok"]


def test_text_and_json_answers_agree_for_every_command(
        program: Callable[..., Program], monkeypatch: pytest.MonkeyPatch) -> None:
    prog = program()
    monkeypatch.chdir(prog.dir)  # paths are shown relative to the current folder
    lines = ["ps", "ps --parked", "ps --filter stuck --sort name", "ps --sort parked",
             "tree", "tree --limit 2", "where stuck", "parked --over 0", "stalls", "lag",
             "audit", "findings", "findings --summary", "findings --kind parked --stacks",
             "growth --baseline", "growth", "stack", "dump", "help", "help cancel",
             "eval 1+1", "cancel T999999", "where", "ps --sort size", "quit"]
    with Conn(prog.address) as conn:
        until(lambda: conn.request("ps", {"parked": True})["result"]["matched"] >= 2,
              what="parked tasks")
        covered = set()
        for line in lines:
            name = line.split()[0]
            covered.add(name)
            try:
                command, args = C._parse_line(line)
            except C.UsageError as exc:
                command, args, parse_error = C.find_command(name), None, str(exc)
            else:
                parse_error = ""
            assert command is not None
            for attempt in range(3):  # the program moves on between two answers
                if name == "quit":
                    with Conn(prog.address) as other:
                        other.send(b"quit\n")
                        text = other.line().decode()
                    with Conn(prog.address) as other:
                        answer = other.request("quit")
                else:
                    answer = conn.request(name, C.text_args(name, args) if args is not None
                                          else line.split()[1:])
                    text = conn.text(line)
                if parse_error or not answer["ok"]:
                    error = parse_error or answer["error"]
                    assert text == f"error: {error}\n", line
                    break
                rendered = C.render_text_answer(name, answer["result"],
                                                C.text_args(name, args or {}))
                if normalize(rendered) == normalize(text) or attempt == 2:
                    assert normalize(rendered) == normalize(text), line
                    break
        assert covered >= set(C.COMMANDS)


def normalize(text: str) -> str:
    """Times change between two answers: compare the shape, not the figures."""
    text = re.sub(r"\d+(\.\d+)? (ms|s|min|h)\b", "<t>", text)
    text = re.sub(r"\d+\.\d+", "<n>", text)
    text = re.sub(r"\(\d+ samples", "(<n> samples", text)
    return "\n".join(re.sub(r"[ ─]+", " ", line).strip() for line in text.splitlines())


def test_help_and_eval_refusal(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        text = conn.text("help")
        for name in C.COMMANDS:
            assert f"\n{name}" in "\n" + text
        assert "cancel TASK... | --parked-over SECONDS | --filter TEXT" in text
        assert conn.text("ps --help").startswith("usage: ps [--filter TEXT]")
        refused = conn.request("eval", {"expr": "1+1"})
        assert refused["ok"] is False and refused["error"] == C.EVAL_REFUSED
        assert conn.text("eval __import__('os').getpid()") == f"error: {C.EVAL_REFUSED}\n"


def test_eval_when_the_program_allows_it(program: Callable[..., Program]) -> None:
    source = BASIC.replace("parked_after=0.2)", "parked_after=0.2, allow_eval=True)")
    prog = program(source)
    with Conn(prog.address) as conn:
        assert conn.text("eval 6 * 7") == "42\n"
        assert conn.text("eval os.getpid()").startswith("error: eval raised NameError")
        assert conn.text("eval import os") == "\n"
        assert conn.text("eval os.getpid()") == f"{prog.proc.pid}\n"
        assert conn.request("eval", {"expr": "asyncio.sleep(0, result='on the loop')"}) \
            ["result"]["repr"] == "'on the loop'"
        assert conn.text("eval len(asyncio.all_tasks(loop)) > 3") == "True\n"
        assert conn.text("eval 1/0").startswith("error: eval raised ZeroDivisionError")


def test_growth_shows_the_site_that_grew(program: Callable[..., Program]) -> None:
    source = HEADER + """
async def main():
    ready()
    kept = []
    while True:
        await asyncio.sleep(0.01)
        if os.path.exists(FLAG):
            kept.append(asyncio.create_task(forever(asyncio.Event()), name="leak"))

loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False)
"""
    prog = program(source)
    leak_line = prog.script.read_text().splitlines().index(
        '            kept.append(asyncio.create_task(forever(asyncio.Event()), name="leak"))') + 1
    with Conn(prog.address) as conn:
        first = conn.request("growth")["result"]
        assert first["baseline"] is True
        assert conn.text("growth --baseline").startswith("baseline taken (")
        prog.release()
        grown = until(lambda: [r for r in conn.request("growth")["result"]["sites"]
                               if r["count_diff"] >= 3], what="growth")
        assert grown[0]["site"]["line"] == leak_line
        assert grown[0]["coro"] == "__main__.forever"
        assert re.search(rf"\+\d+ +\d+ +app\.py:{leak_line} in main", conn.text("growth"))


# -- protocol and bad input ------------------------------------------------------


def test_bad_text_lines_get_error_lines(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        cases = {
            "pss": "error: unknown command 'pss'; did you mean 'ps'? commands: ps, tree",
            "ps --limt 3": "error: ps: unknown option --limt; did you mean --limit? ps takes",
            "ps --limit": "error: ps: --limit needs a value: --limit N",
            "ps --limit many": "error: ps: --limit needs a whole number, got 'many'",
            "ps --limit -1": "error: ps: --limit must be at least 0, got -1",
            "ps --sort size": "error: ps: --sort must be one of age, parked, name; got 'size'",
            "ps extra": "error: ps: unexpected argument 'extra'; ps takes no arguments",
            "ps --parked=yes": "error: ps: --parked takes no value",
            "ps --filter 'open": "error: ps: cannot split the line into words",
            "where": "error: where: needs TASK (a task id (T7 or 7) or a unique task name)",
            "parked --over nan": "error: parked: --over needs a finite number, got 'nan'",
            "parked --over x": "error: parked: --over needs a number of seconds, got 'x'",
            "findings --kind leak": "error: findings: --kind must be one of await_cycle",
            "lag now": "error: lag: unexpected argument 'now'; lag takes no arguments",
        }
        for line, expected in cases.items():
            answer = conn.text(line)
            assert answer.startswith(expected), (line, answer)
            assert answer.count("\n") == 1, answer
        assert conn.text("") == ""  # an empty line gets nothing, like a shell
        assert "stuck" in conn.text("ps")  # still serving


def test_bad_json_requests_get_one_error_line(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        def raw(line: bytes) -> dict[str, Any]:
            conn.send(line + b"\n")
            return conn.json_line()

        bad = raw(b'{"id": 1, "cmd": "ps"')
        assert bad == {"id": None, "ok": False, "error": bad["error"]}
        assert bad["error"].startswith("bad JSON request (")
        assert raw(b'{"id": 2}')["error"].startswith('a JSON request needs "cmd"')
        assert raw(b'{"id": 3, "cmd": "ps", "when": 1}')["error"].startswith(
            "unknown request field 'when'")
        assert raw(b'{"id": 4, "cmd": "ps", "args": 5}')["error"].startswith(
            "ps: args must be an object")
        assert raw(b'{"id": 5, "cmd": "ps", "args": {"limit": "x"}}') == {
            "id": 5, "ok": False, "error": "ps: --limit needs a whole number, got 'x'"}
        assert raw(b'{"id": 6, "cmd": "ps", "args": {"colour": 1}}')["error"].startswith(
            "ps: unknown argument 'colour'; known arguments: filter, parked, sort")
        assert raw(b'{"id": 7, "cmd": "ps", "args": {"parked": "yes"}}')["error"] == \
            "ps: --parked is a flag: true or false, got 'yes'"
        assert raw(b'{"id": [1], "cmd": "lag"}')["id"] is None
        listed = raw(b'{"id": 8, "cmd": "ps", "args": ["--filter", "stuck"]}')
        assert [r["name"] for r in listed["result"]["tasks"]] == ["stuck"]
        assert raw(b'{"id": "x", "cmd": "lag"}')["id"] == "x"


def test_long_lines_binary_garbage_and_telnet(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        long = conn.text(b"x" * 100_000)
        assert long == f"error: line longer than {MAX_LINE} bytes; it was dropped " \
                       "(commands are short: \"help\" lists them)\n"
        # the same line in small pieces: one error, then the connection works on
        for _ in range(5):
            conn.send(b"y" * 1500)
        assert conn.text(b"").startswith("error: line longer than")
        conn.send(b'{"id": 1, "cmd": "' + b"p" * 5000 + b'"}\n')
        assert conn.json_line()["error"] == f"request line longer than {MAX_LINE} bytes; " \
                                            "it was dropped"
        garbage = bytes(range(256)).replace(b"\n", b"") * 4
        answer = conn.text(garbage)
        assert answer.startswith("error: unknown command") and answer.count("\n") == 1
        # telnet: option negotiation (IAC DO/WILL ...), a subnegotiation, CR LF, NUL
        telnet = (b"\xff\xfd\x18\xff\xfb\x1f\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0"
                  b"p\xff\xf1s\x00")
        assert "stuck" in conn.text(telnet, end=b"\r\n")
        assert "stuck" in conn.text(b"ps", end=b"\r\n")


def test_half_closed_connection_gets_its_answers(program: Callable[..., Program]) -> None:
    prog = program()
    with Conn(prog.address) as conn:
        conn.send(b'lag\n{"id": 1, "cmd": "ps"}')  # the last line has no line end
        conn.sock.shutdown(socket.SHUT_WR)
        first = conn.line()
        assert first.startswith((b"loop lag", b"loop blocked"))
        answer = json.loads(conn.line())
        assert answer["ok"] and answer["id"] == 1
        assert conn.line() == b""


def test_idle_clients_are_closed(program: Callable[..., Program]) -> None:
    source = BASIC.replace("parked_after=0.2)", "parked_after=0.2, console_idle_timeout=0.3)")
    prog = program(source)
    with Conn(prog.address) as conn:
        assert conn.request("lag")["ok"]
        assert conn.line() == b"closing: no request for 0.3 s (console_idle_timeout)\n"
        assert conn.line() == b""


def test_ninth_client_is_refused_and_a_slot_frees(program: Callable[..., Program]) -> None:
    prog = program()
    conns = [Conn(prog.address) for _ in range(MAX_CLIENTS)]
    try:
        for conn in conns:
            assert conn.request("lag")["ok"]
        with Conn(prog.address) as ninth:
            assert ninth.line() == (f"error: the loopwatch console serves {MAX_CLIENTS} "
                                    "clients already; try again when one quits\n").encode()
            assert ninth.line() == b""
        conns[0].send(b"quit\n")
        assert conns[0].line() == b"bye\n"
        assert conns[0].line() == b""
        conns[0].close()

        def accepted() -> bool:
            with Conn(prog.address) as again:
                again.send(b'{"id": 1, "cmd": "lag"}\n')
                return again.line().startswith(b'{"id":1,"ok":true')
        until(accepted, what="a free slot")
    finally:
        for conn in conns:
            conn.close()


def test_connection_storm_leaves_the_program_running(program: Callable[..., Program]) -> None:
    source = HEADER + """
async def ticker():
    n = 0
    while True:
        await asyncio.sleep(0.01)
        n += 1
        if n % 20 == 0:
            print(f"tick {n}", flush=True)

async def main():
    keep = asyncio.create_task(ticker(), name="ticker")
    ready()
    await asyncio.sleep(3600)

loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False)
"""
    prog = program(source)
    deadline = time.monotonic() + 3.0
    made = 0
    while time.monotonic() < deadline and made < 300:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(prog.path)
            if made % 3 == 0:
                s.sendall(b"ps\n\xff\xfe garbage")
            elif made % 3 == 1:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # refused past 8 clients, closed under us: all fine
            pass
        finally:
            s.close()
        made += 1
    prog.wait_for("tick")  # the loop kept running through it
    with Conn(prog.address) as conn:
        assert "ticker" in conn.text("ps")
    assert prog.proc.poll() is None


# -- addresses -------------------------------------------------------------------


def test_unix_socket_is_private_and_removed_at_exit(program: Callable[..., Program]) -> None:
    source = HEADER + """
async def main():
    ready()
    while not os.path.exists(FLAG):
        await asyncio.sleep(0.01)

loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False)
"""
    prog = program(source)
    mode = os.stat(prog.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    prog.release()
    assert prog.proc.wait(TIMEOUT) == 0
    assert not os.path.exists(prog.path)


def test_default_address_is_found_by_pid(program: Callable[..., Program]) -> None:
    runtime = short_dir()
    try:
        prog = program(address="auto", env={"XDG_RUNTIME_DIR": runtime})
        path = os.path.join(runtime, f"loopwatch-{prog.proc.pid}.sock")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        result = subprocess.run([sys.executable, "-m", "loopwatch", "ps", str(prog.proc.pid)],
                                capture_output=True, text=True, timeout=TIMEOUT,
                                env={**os.environ, "XDG_RUNTIME_DIR": runtime})
        assert result.returncode == 0, result.stderr
        assert "stuck" in result.stdout and "tasks shown" in result.stdout
        prog.proc.terminate()
        prog.proc.wait(TIMEOUT)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_tcp_console_and_telnet_style_use(program: Callable[..., Program]) -> None:
    # the port is chosen by the system: the program says where it listens
    source = BASIC.replace('loopwatch.run(main(), loop=LOOP, console=ADDRESS, log=False, '
                           'parked_after=0.2)', """
async def announce():
    print("at", loopwatch.watcher().console.address, flush=True)
    await main()

loopwatch.run(announce(), loop=LOOP, console=ADDRESS, log=False)
""")
    prog = program(source, address="tcp:127.0.0.1:0", ready=False)
    line = prog.wait_for("at tcp:")
    address = line.split()[1]
    assert int(address.rsplit(":", 1)[1]) > 0
    prog.wait_for("ready")
    with Conn(address) as conn:
        assert "stuck" in conn.text(b"ps", end=b"\r\n")
        assert conn.request("lag")["ok"]


def test_start_console_errors_are_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                           ) -> None:
    folder = short_dir()
    path = os.path.join(folder, "c.sock")
    not_socket = os.path.join(folder, "file")
    Path(not_socket).write_text("x")
    stale = os.path.join(folder, "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)  # a socket file nobody listens on: a dead console's
    dead.close()
    outcomes: dict[str, Any] = {}

    async def main() -> None:
        w = loopwatch.watcher()
        first = loopwatch.console.start_console(w, f"unix:{path}")
        try:
            for name, address in [("live", f"unix:{path}"),
                                  ("not_socket", f"unix:{not_socket}"),
                                  ("no_folder", "unix:/nonexistent/dir/c.sock"),
                                  ("too_long", "unix:/tmp/" + "x" * 120),
                                  ("bad", "ftp://x"), ("bad_port", "tcp:127.0.0.1:99999")]:
                with pytest.raises(loopwatch.ConsoleError) as info:
                    loopwatch.console.start_console(w, address)
                outcomes[name] = str(info.value)
            tcp = loopwatch.console.start_console(w, "tcp:127.0.0.1:0")
            with pytest.raises(loopwatch.ConsoleError) as info:
                loopwatch.console.start_console(w, tcp.address)
            outcomes["busy_port"] = str(info.value)
            tcp.stop()
            replaced = loopwatch.console.start_console(w, f"unix:{stale}")
            outcomes["stale"] = replaced.address
            replaced.stop()
            wide = loopwatch.console.start_console(w, "tcp:0.0.0.0:0")
            wide.stop()
        finally:
            first.stop()

    try:
        loopwatch.run(main(), loop=BASE_LOOP, log=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert outcomes["live"] == (f"cannot start the console at unix:{path}: a live console "
                                "already listens there (another process, or another loop "
                                "of this one)")
    assert outcomes["not_socket"].endswith("the path exists and is not a socket")
    assert outcomes["no_folder"].endswith("the folder /nonexistent/dir does not exist")
    assert "a Unix socket path takes at most 107" in outcomes["too_long"]
    assert outcomes["bad"] == ("console address 'ftp://x' is not one of unix:PATH, "
                               "tcp:HOST:PORT, HOST:PORT or auto")
    assert outcomes["bad_port"] == ("console address 'tcp:127.0.0.1:99999': the port must be "
                                    "0 to 65535")
    assert outcomes["busy_port"].startswith("cannot start the console at tcp:127.0.0.1:")
    assert "Address already in use" in outcomes["busy_port"]
    assert outcomes["stale"] == f"unix:{stale}"
    assert all("\n" not in text for text in outcomes.values())
    assert any("the console listens on tcp:0.0.0.0:0, which other machines may reach" in r.message
               for r in caplog.records)
    assert not os.path.exists(path)


def test_a_busy_console_address_does_not_stop_the_program(
        program: Callable[..., Program]) -> None:
    first = program()
    source = HEADER + """
async def main():
    print("notes:", loopwatch.watcher().notes, flush=True)
    ready()

loopwatch.run(main(), loop=LOOP, console=ADDRESS)
"""
    second = program(source, address=first.address, ready=False)
    line = second.wait_for("notes:")
    assert "the console did not start: cannot start the console at unix:" in line
    second.wait_for("ready")
    assert second.proc.wait(TIMEOUT) == 0
    err = second.proc.stderr.read() if second.proc.stderr else ""
    assert "loopwatch: the console did not start" in err
    with Conn(first.address) as conn:  # the first one is untouched
        assert "stuck" in conn.text("ps")


def test_console_on_an_attached_loop(program: Callable[..., Program]) -> None:
    source = HEADER + """
async def main():
    before = asyncio.create_task(forever(asyncio.Event()), name="before-attach")
    await asyncio.sleep(0)
    loopwatch.attach(log=False).start_console(ADDRESS)
    after = asyncio.create_task(forever(asyncio.Event()), name="after-attach")
    ready()
    await asyncio.sleep(3600)

if LOOP == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""
    prog = program(source)
    with Conn(prog.address) as conn:
        rows = {r["name"]: r for r in conn.request("ps")["result"]["tasks"]}
        assert rows["before-attach"]["site"] is None and rows["before-attach"]["age"] is None
        assert rows["after-attach"]["site"]["file"] == str(prog.script)
        where = conn.text("where before-attach")
        assert "no creation stack (the task existed before loopwatch attached)" in where


def test_console_thread_stops_with_the_loop() -> None:
    folder = short_dir()
    path = os.path.join(folder, "c.sock")
    seen: list[Any] = []

    async def main() -> None:
        seen.append(loopwatch.watcher().console)

    loopwatch.run(main(), loop=BASE_LOOP, console=f"unix:{path}", log=False)
    server = seen[0]
    assert server is not None and server.path == path
    assert not os.path.exists(path)
    assert server._thread is not None and not server._thread.is_alive()
    shutil.rmtree(folder, ignore_errors=True)


def test_many_tasks_are_listed_in_full() -> None:
    """ps --json returns every task (the 100,000-task figure is a benchmark)."""
    folder = short_dir()
    path = os.path.join(folder, "c.sock")
    seen: dict[str, Any] = {}

    async def main() -> None:
        import asyncio

        event = asyncio.Event()
        tasks = [asyncio.create_task(event.wait(), name=f"w{i}") for i in range(5000)]
        await asyncio.sleep(0)
        with ConsoleClient(f"unix:{path}") as client:
            reply = await asyncio.to_thread(client.request, "ps")
            seen["rows"] = reply.result["tasks"]
            seen["total"] = reply.result["total"]
        event.set()
        await asyncio.gather(*tasks)

    try:
        loopwatch.run(main(), loop=BASE_LOOP, console=f"unix:{path}", log=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert seen["total"] == 5001 and len(seen["rows"]) == 5001
    assert {r["name"] for r in seen["rows"]} >= {"w0", "w4999"}


def test_a_failure_inside_loopwatch_is_an_error_line(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("boom")

    lag = C.COMMANDS["lag"]
    monkeypatch.setitem(C.COMMANDS, "lag", dataclasses.replace(lag, render=boom))
    monkeypatch.setitem(C.COMMANDS, "stalls", dataclasses.replace(C.COMMANDS["stalls"],
                                                                   run=boom))
    folder = short_dir()
    address = f"unix:{os.path.join(folder, 'c.sock')}"
    answers: list[Any] = []

    async def main() -> None:
        import asyncio

        def talk() -> None:
            with Conn(address) as conn:
                answers.append(conn.text("lag"))
                answers.append(conn.request("stalls"))
                answers.append(conn.request("lag"))  # JSON needs no renderer
                answers.append(conn.text("help quit"))

        await asyncio.to_thread(talk)

    try:
        loopwatch.run(main(), loop=BASE_LOOP, console=address, log=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert answers[0] == "error: the console failed inside loopwatch: RuntimeError: boom\n"
    assert answers[1]["ok"] is False
    assert answers[1]["error"] == ("stalls failed inside loopwatch: RuntimeError: boom; the "
                                   "console keeps running")
    assert answers[2]["ok"] is True
    assert answers[3].startswith("usage: quit")
    assert any("the console failed to answer a request" in r.message for r in caplog.records)


def test_ps_gives_each_task_made_through_plumbing_its_own_site() -> None:
    """Tasks started through anyio's start_soon share their innermost creation frame
    (anyio's own); each one's site is still the program's line that started it, the
    same as ``where`` says."""
    import anyio

    folder = short_dir()
    path = os.path.join(folder, "c.sock")
    seen: dict[str, Any] = {}

    async def main() -> None:
        import asyncio

        async def sleeper() -> None:
            await anyio.sleep_forever()

        def start_a(tg: anyio.abc.TaskGroup) -> None:
            tg.start_soon(sleeper, name="from-a")  # line a

        def start_b(tg: anyio.abc.TaskGroup) -> None:
            tg.start_soon(sleeper, name="from-b")  # line b

        async with anyio.create_task_group() as tg:
            start_a(tg)
            start_b(tg)
            with ConsoleClient(f"unix:{path}") as client:
                rows = (await asyncio.to_thread(client.request, "ps")).result["tasks"]
                seen["ps"] = {r["name"]: r["site"] for r in rows}
                for name in ("from-a", "from-b"):
                    where = await asyncio.to_thread(client.request, "where", {"task": name})
                    seen[name] = where.result["site"]
            tg.cancel_scope.cancel()

    try:
        loopwatch.run(main(), loop=BASE_LOOP, console=f"unix:{path}", log=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    source = Path(__file__).read_text().splitlines()
    for name, mark in (("from-a", "# line a"), ("from-b", "# line b")):
        site = seen["ps"][name]
        assert site == seen[name]
        assert site["file"] == __file__ and mark in source[site["line"] - 1]


def test_a_json_line_is_sent_in_pieces_that_make_the_whole_line() -> None:
    rows = C.Rows([json.dumps({"id": f"T{i}", "name": f"w{i}"}) for i in range(10_000)])
    few = C.Rows(['{"id":"T1"}'])
    response = {"id": 7, "ok": True, "result": {"tasks": rows, "more": few, "n": 1.5}}
    pieces = list(C.json_line(response))
    assert len(pieces) == -(-10_000 // C.PIECE_ROWS) + 1  # the rows' pieces, the rest
    line = b"".join(pieces)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line[:-1].decode() == C.to_json(response)
    decoded = json.loads(line)
    assert [r["id"] for r in decoded["result"]["tasks"]] == [f"T{i}" for i in range(10_000)]
    assert decoded["result"]["more"] == [{"id": "T1"}] and decoded["result"]["n"] == 1.5
    assert list(decoded) == ["id", "ok", "result"]
    assert list(C.json_line({"id": 1, "ok": False, "error": "x"})) == \
        [b'{"id":1,"ok":false,"error":"x"}\n']
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError):  # before any piece is made
        C.json_line({"id": 1, "ok": True, "rows": rows, "result": cycle})


def next_task_number() -> int:
    """N of the ``Task-N`` name asyncio gives the next task made without a name (the
    count is one for the whole process); makes one such task to find out."""
    import asyncio

    async def name() -> str:
        task = asyncio.current_task()
        assert task is not None
        return task.get_name()

    loop = asyncio.new_event_loop()
    try:
        return int(loop.run_until_complete(name()).removeprefix("Task-")) + 1
    finally:
        loop.close()


def test_the_console_takes_none_of_the_programs_task_names() -> None:
    """asyncio numbers unnamed tasks once for the whole process: the console's own
    tasks (its runner's main task, the shutdown steps) must not take a number, or the
    program's main task is ``Task-2``. The same program, with and without a console
    that answers a request, numbers its tasks alike and uses as many numbers."""
    folder = short_dir()
    path = os.path.join(folder, "c.sock")

    def run(console: bool) -> tuple[list[int], int]:
        numbers: list[int] = []

        async def main() -> None:
            import asyncio

            task = asyncio.current_task()
            assert task is not None
            numbers.append(int(task.get_name().removeprefix("Task-")))
            if console:
                with ConsoleClient(f"unix:{path}") as client:
                    await asyncio.to_thread(client.request, "ps")
            numbers.append(int(asyncio.create_task(asyncio.sleep(0)).get_name()[5:]))

        first = next_task_number()
        loopwatch.run(main(), loop=BASE_LOOP, console=f"unix:{path}" if console else None,
                      log=False)
        return [n - first for n in numbers], next_task_number() - first

    try:
        with_console = run(console=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert with_console == run(console=False)
    assert with_console[0] == [0, 1]
