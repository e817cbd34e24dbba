"""``loopwatch CMD TARGET`` and ``loopwatch console TARGET``, run as users run them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loopwatch.console import commands as C
from loopwatch.console.cli import _Completer, _request_of
from loopwatch.console.client import ConsoleClient, TargetError, resolve_target

from .conftest import BASE_LOOP
from .test_console import TIMEOUT, Program, programs, short_dir


@pytest.fixture
def program() -> Iterator[Callable[..., Program]]:
    yield from programs()

LOOPWATCH = [sys.executable, "-m", "loopwatch"]


def lw(*args: str, stdin: str | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOPWATCH, *args], capture_output=True, text=True, input=stdin,
                          timeout=TIMEOUT * 2, env={**os.environ, **(env or {})})


def test_every_command_one_shot_as_json(program: Callable[..., Program]) -> None:
    prog = program()
    target = prog.address
    expected: dict[str, Callable[[Any], bool]] = {
        "ps": lambda r: {"stuck", "child"} <= {t["name"] for t in r["tasks"]},
        "tree": lambda r: r["total"] >= 5,
        "parked": lambda r: "over" in r,
        "stalls": lambda r: "stalls" in r,
        "lag": lambda r: "measured" in r,
        "audit": lambda r: r["schema"] == 1,
        "findings": lambda r: "summary" in r,
        "growth": lambda r: r["baseline"] is True,
        "stack": lambda r: r["thread"] == "MainThread",
        "dump": lambda r: len(r["tasks"]) >= 5,
    }
    for name, check in expected.items():
        result = lw(name, target, "--json")
        assert result.returncode == 0, (name, result.stderr)
        assert check(json.loads(result.stdout)), name
    where = lw("where", target, "stuck", "--json")
    assert json.loads(where.stdout)["name"] == "stuck"
    cancel = lw("cancel", target, "stuck", "--json")
    assert cancel.returncode == 0 and json.loads(cancel.stdout)["cancelled"]
    prog.wait_for("stuck cancelled")
    assert set(expected) | {"where", "cancel"} == set(C.REMOTE_COMMANDS)


def test_one_shot_text_output(program: Callable[..., Program]) -> None:
    prog = program()
    ps = lw("ps", prog.address, "--filter", "stuck")
    assert ps.returncode == 0, ps.stderr
    lines = ps.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "coro", "state", "age", "parked", "waiting",
                                "on", "awaits", "at", "created", "at"]
    assert "stuck" in lines[1] and "Event.wait" in lines[1]
    assert lines[-1] == "1 of 1 tasks shown (5 live)"
    assert "\x1b[" not in ps.stdout  # plain when piped
    where = lw("where", prog.address, "child")
    assert where.returncode == 0 and "await chain (most recent call last):" in where.stdout
    tree = lw("tree", prog.address)
    assert tree.stdout.startswith(f"pid {prog.proc.pid} ({BASE_LOOP} loop)\n")


def test_refused_commands_exit_1_and_bad_options_exit_2(
        program: Callable[..., Program]) -> None:
    prog = program()
    missing = lw("where", prog.address, "nosuch")
    assert missing.returncode == 1
    assert missing.stderr.startswith("loopwatch where: error: no live task 'nosuch'; live tasks: T")
    assert missing.stderr.count("\n") == 1
    bad = lw("ps", prog.address, "--limit", "x")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("argument --limit: needs a whole number, got 'x'")
    assert bad.stderr.count("\n") == 1
    choice = lw("ps", prog.address, "--sort", "size")
    assert choice.returncode == 2 and "invalid choice: 'size'" in choice.stderr


def test_bad_targets_are_one_line_and_exit_2() -> None:
    runtime = short_dir()
    folder = short_dir()
    try:
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True)
        gone = finished.stdout.strip()
        stale = os.path.join(folder, "stale.sock")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(stale)
        dead.close()
        free_port = socket.socket()
        free_port.bind(("127.0.0.1", 0))
        port = free_port.getsockname()[1]
        free_port.close()
        env = {"XDG_RUNTIME_DIR": runtime}
        cases = {
            gone: f"loopwatch ps: no such process: {gone}",
            str(os.getpid()): f"loopwatch ps: no console socket for PID {os.getpid()} "
                              f"(looked for {runtime}/loopwatch-{os.getpid()}.sock",
            f"unix:{stale}": f"loopwatch ps: connection refused at unix:{stale} (nothing "
                             "listens on that socket: the process may have exited)",
            f"unix:{folder}/none.sock": f"loopwatch ps: no console socket at {folder}/none.sock",
            f"127.0.0.1:{port}": f"loopwatch ps: connection refused at tcp:127.0.0.1:{port}",
            "nonsense": "loopwatch ps: bad target 'nonsense': use a PID, unix:PATH or HOST:PORT",
        }
        for target, message in cases.items():
            result = lw("ps", target, env=env)
            assert result.returncode == 2, (target, result.stderr)
            assert result.stderr.startswith(message), (target, result.stderr)
            assert result.stderr.count("\n") == 1 and result.stdout == ""
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_resolve_target_forms(program: Callable[..., Program]) -> None:
    prog = program()
    assert str(resolve_target(prog.address)) == prog.address
    assert str(resolve_target(prog.path)) == prog.address  # a bare socket path
    assert str(resolve_target("tcp:[::1]:7000")) == "tcp:[::1]:7000"
    assert str(resolve_target("localhost:7000")) == "tcp:localhost:7000"
    with pytest.raises(TargetError, match="name the target"):
        resolve_target("auto")
    with ConsoleClient(prog.address) as client:
        assert client.request("lag").result["heartbeat"] > 0


def test_interactive_console_with_piped_input(program: Callable[..., Program]) -> None:
    prog = program()
    session = "ps --filter stuck\nwhere child\npss\nps --limit x\n\nhelp cancel\nquit\n"
    result = lw("console", prog.address, stdin=session)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"connected to {prog.address}: pid {prog.proc.pid}")
    assert "1 of 1 tasks shown (5 live)" in out
    assert "await chain (most recent call last):" in out
    assert "error: unknown command 'pss'; did you mean 'ps'?" in out
    assert "error: ps: --limit needs a whole number, got 'x'" in out
    assert "usage: cancel TASK... | --parked-over SECONDS | --filter TEXT" in out
    eof = lw("console", prog.address, stdin="lag\n")  # Ctrl-D (end of input) leaves too
    assert eof.returncode == 0 and "loop lag" in eof.stdout


def test_console_parses_lines_like_the_server() -> None:
    assert _request_of("ps --parked --limit 3") == (
        "ps", {"filter": None, "parked": True, "sort": None, "limit": 3, "awaiting": True})
    assert _request_of("eval  1 + 1 ") == ("eval", {"expr": "1 + 1"})
    assert _request_of("where -h") == ("help", {"command": "where"})
    with pytest.raises(C.UsageError, match="unknown command 'wehre'; did you mean 'where'"):
        _request_of("wehre T1")


def test_tab_completion(program: Callable[..., Program]) -> None:
    prog = program()
    with ConsoleClient(prog.address) as client:
        completer = _Completer(client)
        assert completer.candidates("p", "p") == ["ps ", "parked "]
        assert completer.candidates("ps --", "--") == [
            "--filter ", "--parked", "--sort ", "--limit ", "--awaiting"]
        ids = completer.candidates("where ", "")
        assert "stuck " in ids and any(w.startswith("T") for w in ids)
        stuck = next(w for w in ids if w == "stuck ")
        assert completer.candidates("cancel st", "st") == [stuck]
        assert completer.candidates("help ca", "ca") == ["cancel "]
        assert completer.candidates("lag ", "") == []
        assert completer.complete("tr", 0) == "tree "
        assert completer.complete("tr", 1) is None


def canned_console(reply: bytes) -> tuple[str, Callable[[], None]]:
    """A socket that answers every request line with ``reply`` (which has ``"id":1``:
    the request's id goes there), as a console would: its address, and a function
    that stops it."""
    folder = short_dir()
    path = os.path.join(folder, "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as f:
                for request in f:
                    ident = json.loads(request)["id"]
                    conn.sendall(reply.replace(b'{"id":1,', b'{"id":%d,' % ident, 1))

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)

    return f"unix:{path}", stop


BLOCKED = {"seconds": 2.5, "site": {"file": "/app/x.py", "line": 7, "function": "f"}}
RESULT = {"tasks": [{"id": "T1", "name": 'a "result": name,"result":{'}], "total": 1}


@pytest.mark.parametrize("layout", ["result last", "blocked last", "not blocked"])
def test_json_one_shot_passes_the_result_on_as_sent(layout: str) -> None:
    """``loopwatch ps TARGET --json`` into a pipe writes the console's result text as
    it came, unparsed; a line laid out otherwise (an older console that put "blocked"
    after the result) is parsed and written whole."""
    if layout == "result last":
        response = {"id": 1, "ok": True, "blocked": BLOCKED, "result": RESULT}
    elif layout == "blocked last":
        response = {"id": 1, "ok": True, "result": RESULT, "blocked": BLOCKED}
    else:
        response = {"id": 1, "ok": True, "result": RESULT}
    line = json.dumps(response, separators=(",", ":")).encode() + b"\n"
    target, stop = canned_console(line)
    try:
        with ConsoleClient(target) as client:
            reply = client.request("ps", raw=True)
            parsed = client.request("ps")
        result = lw("ps", target, "--json")
    finally:
        stop()
    assert parsed.result == RESULT
    if layout == "blocked last":
        assert reply.raw is None and reply.result == RESULT
    else:
        assert reply.raw == json.dumps(RESULT, separators=(",", ":")).encode()
    assert reply.blocked == parsed.blocked == (None if layout == "not blocked" else BLOCKED)
    assert result.returncode == 0 and json.loads(result.stdout) == RESULT
    assert result.stdout.count("\n") == 1
    assert ("loop blocked for 2.5 s" in result.stderr) == (layout != "not blocked")


def test_a_refusal_is_never_passed_on_as_a_result() -> None:
    line = b'{"id":1,"ok":false,"error":"no live task \'T9\'; \\"result\\":1"}\n'
    target, stop = canned_console(line)
    try:
        result = lw("where", target, "T9", "--json")
    finally:
        stop()
    assert result.returncode == 1 and result.stdout == ""
    assert "no live task 'T9'" in result.stderr
