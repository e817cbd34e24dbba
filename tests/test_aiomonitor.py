"""loopwatch inside aiomonitor: commands and data in a real console over its real telnet port.

Each test runs a watched loop (asyncio or uvloop, from LOOPWATCH_TEST_LOOP) in a
thread, the way a program runs it, and talks to aiomonitor from the test thread:
through its telnet terminal UI (a socket that answers the telnet negotiation as a
terminal would) or its web UI's HTTP API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

# loopwatch.aiomonitor imports aiomonitor without its import-time DeprecationWarning
lwa = pytest.importorskip("loopwatch.aiomonitor")

import aiomonitor  # noqa: E402
import click  # noqa: E402
from aiomonitor.termui.commands import AliasGroupMixin, monitor_cli  # noqa: E402
from aiomonitor.types import FormattedLiveTaskInfo, FormattedTerminatedTaskInfo  # noqa: E402

import loopwatch  # noqa: E402

from .conftest import BASE_LOOP  # noqa: E402

HERE = __file__


# -- a watched loop in its own thread ------------------------------------------------


class LoopThread:
    """A loop running forever in a thread, like a program's main loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)
        return self.run(call())

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.loop.is_running():
            self.run(cancel_all())
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def base_loop() -> asyncio.AbstractEventLoop:
    if BASE_LOOP == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@pytest.fixture
def looper() -> Iterator[LoopThread]:
    # stall_after: a loaded test machine must not make stalls the tests did not ask for
    lt = LoopThread(loopwatch.loop_factory(BASE_LOOP, parked_after=0.05, stall_after=2.0)())
    yield lt
    lt.stop()


@pytest.fixture
def monitor(looper: LoopThread) -> Iterator[lwa.LoopwatchMonitor]:
    m = lwa.start_monitor(looper.loop, port=0, webui_port=0, console_port=0)
    yield m
    m.close()


# -- a telnet terminal ---------------------------------------------------------------

IAC, SB, SE, WILL = b"\xff", b"\xfa", b"\xf0", b"\xfb"
TTYPE, NAWS, IS = b"\x18", b"\x1f", b"\x00"
PROMPT = b"monitor >>> "
_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
_TELNET = re.compile(rb"\xff[\xfb-\xfe].|\xff\xfa.*?\xff\xf0", re.S)


class Terminal:
    """A telnet client as a terminal is one: it answers TTYPE and NAWS (aiomonitor's
    prompt_toolkit server waits for the terminal type before it says anything) and
    cursor-position requests."""

    def __init__(self, port: int, width: int = 160) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(IAC + WILL + TTYPE + IAC + SB + TTYPE + IS + b"vt100" + IAC + SE
                          + IAC + WILL + NAWS + IAC + SB + NAWS
                          + struct.pack("!HH", width, 60) + IAC + SE)
        self.buf = b""
        self.intro = self.read_until(PROMPT).decode("utf-8", "replace")

    def read_until(self, marker: bytes, timeout: float = 15) -> bytes:
        """Everything up to ``marker`` (telnet commands and terminal escapes removed)."""
        deadline = time.monotonic() + timeout
        while True:
            clean = _ESCAPES.sub(b"", _TELNET.sub(b"", self.buf))
            at = clean.find(marker)
            if at >= 0:
                self.buf = clean[at + len(marker):]
                return clean[:at]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} in {clean[-2000:]!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(clean[-2000:])
            if b"\x1b[6n" in data:  # where is the cursor? (prompt_toolkit asks)
                self.sock.sendall(b"\x1b[1;1R" * data.count(b"\x1b[6n"))
            self.buf += data

    def command(self, line: str) -> str:
        """Run one command; its output.

        prompt_toolkit redraws the input line as it arrives; the line ends with CR only
        once it is accepted. A `noop` typed ahead marks where the output ends:
        aiomonitor reads it only when the command is done.
        """
        self.sock.sendall(line.encode() + b"\rnoop\r")
        text = self.read_until(PROMPT + b"noop\r")
        self.read_until(PROMPT)  # the fresh prompt after noop
        accepted = PROMPT + line.encode() + b"\r"
        text = text[text.rfind(accepted) + len(accepted):]
        cut = text.find(PROMPT)
        text = text[:cut] if cut >= 0 else text
        return text.decode("utf-8", "replace").replace("\r", "")

    def close(self) -> None:
        """Leave with `exit`, as a person would, and wait for the server to hang up."""
        try:
            self.sock.sendall(b"exit\r")
            self.sock.settimeout(5)
            while data := self.sock.recv(65536):
                if b"\x1b[6n" in data:
                    self.sock.sendall(b"\x1b[1;1R" * data.count(b"\x1b[6n"))
        except OSError:
            pass
        finally:
            self.sock.close()


@pytest.fixture
def terminal(monitor: lwa.LoopwatchMonitor) -> Iterator[Terminal]:
    term = Terminal(monitor.port)
    yield term
    term.close()


async def wait_on(event: asyncio.Event) -> None:
    await event.wait()


def spawn_parked(looper: LoopThread, name: str) -> tuple[asyncio.Event, Any]:
    async def spawn() -> tuple[asyncio.Event, Any]:
        event = asyncio.Event()
        task = asyncio.get_running_loop().create_task(wait_on(event), name=name)  # CREATE-LINE
        await asyncio.sleep(0)
        return event, task
    return looper.run(spawn())


with open(HERE) as _source:
    _LINES = _source.read().splitlines()
CREATE_LINE = next(i for i, line in enumerate(_LINES, 1) if line.endswith("# CREATE-LINE"))
WAIT_LINE = next(i for i, line in enumerate(_LINES, 1) if line.strip() == "await event.wait()")


def wait_parked(looper: LoopThread, task: Any, seconds: float) -> None:
    """Until loopwatch has seen ``task`` wait for ``seconds`` (polled, with a deadline)."""
    w = loopwatch.watcher(looper.loop)
    deadline = time.monotonic() + 10
    while True:
        parked = w.parked_for(task)
        if parked is not None and parked >= seconds:
            return
        assert time.monotonic() < deadline, "the task never showed as parked"
        time.sleep(0.01)


# -- what the integration relies on ---------------------------------------------------


def test_aiomonitor_has_what_the_integration_relies_on() -> None:
    """The aiomonitor names loopwatch.aiomonitor uses, public and private, with the
    signatures it calls them with (aiomonitor >= 0.7.1)."""
    from aiomonitor import Monitor
    from aiomonitor.exceptions import MissingTask
    from aiomonitor.termui.commands import auto_command_done, custom_help_option  # noqa: F401
    from aiomonitor.types import FormatItemTypes, FormattedStackItem

    for name in ("MONITOR_HOST", "MONITOR_TERMUI_PORT", "MONITOR_WEBUI_PORT", "CONSOLE_PORT"):
        assert hasattr(aiomonitor, name)
    init = inspect.signature(Monitor.__init__).parameters
    for name in ("host", "termui_port", "webui_port", "console_port", "console_enabled",
                 "hook_task_factory", "max_termination_history", "locals"):
        assert name in init, name
    for method, params in {
        "format_running_task_list": ["self", "filter_", "persistent"],
        "format_terminated_task_list": ["self", "filter_", "persistent"],
        "format_running_task_stack": ["self", "task_id"],
        "format_terminated_task_stack": ["self", "trace_id"],
        "cancel_monitored_task": ["self", "task_id"],
        "_ui_main": ["self"],
        "_ui_main_async": ["self"],
    }.items():
        assert list(inspect.signature(getattr(Monitor, method)).parameters) == params, method
    assert inspect.iscoroutinefunction(Monitor.cancel_monitored_task)
    assert [f.name for f in dataclasses.fields(FormattedLiveTaskInfo)] == [
        "task_id", "state", "name", "coro", "created_location", "since"]
    assert [f.name for f in dataclasses.fields(FormattedTerminatedTaskInfo)] == [
        "task_id", "name", "coro", "started_since", "terminated_since"]
    assert FormattedStackItem._fields == ("type", "content")
    assert {FormatItemTypes.HEADER, FormatItemTypes.CONTENT} == set(FormatItemTypes)
    assert MissingTask("T1").task_id == "T1"
    assert isinstance(monitor_cli, AliasGroupMixin) and isinstance(monitor_cli._aliases, dict)
    # The instance attributes, on a monitor that is not started (no thread, no port).
    loop = asyncio.new_event_loop()
    try:
        m = Monitor(loop, termui_port=0, webui_port=0, console_port=0)
        for attr in ("_monitored_loop", "_host", "_termui_port", "_webui_port",
                     "_console_port", "_ui_started", "_started", "_closed",
                     "_hook_task_factory", "_event_loop_thread_id"):
            assert hasattr(m, attr), attr
        assert isinstance(m._ui_started, threading.Event)
        # start() records the factory that close() restores, under this name:
        assert "_original_task_factory" in inspect.getsource(Monitor.start)
        assert "_original_task_factory" in inspect.getsource(Monitor.close)
        assert "self._ui_started.wait()" in inspect.getsource(Monitor.start)
    finally:
        loop.close()


def test_importing_it_works_under_W_error() -> None:
    """aiomonitor 0.7.1 with click 8.2+ warns (DeprecationWarning) while it is being
    imported, so `python -W error` cannot import it; loopwatch.aiomonitor can."""
    code = "import loopwatch.aiomonitor; import aiomonitor; print(aiomonitor.__version__)"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_commands_registered_next_to_aiomonitors_own() -> None:
    before = {name: monitor_cli.commands[name] for name in monitor_cli.commands}
    names = lwa.register_commands()
    assert names == {n: n for n in ("parked", "stalls", "lag", "audit", "findings", "growth")}
    assert lwa.register_commands() == names  # once per process
    for name, command in before.items():
        assert monitor_cli.commands[name] is command  # aiomonitor's own are untouched
    assert not set(names.values()) & set(monitor_cli._aliases)


def test_a_taken_name_gets_the_lw_prefix() -> None:
    @click.group(cls=AliasGroupMixin)
    def group() -> None:
        pass

    @group.command(name="status", aliases=["lag"])
    def status(ctx: click.Context) -> None:
        pass

    @group.command(name="audit")
    def audit(ctx: click.Context) -> None:
        pass

    names = lwa._register_in(group)
    assert names["lag"] == "lw-lag" and names["audit"] == "lw-audit"
    assert names["parked"] == "parked"
    assert group.commands["audit"].callback is not None
    assert set(group.commands) == {"status", "audit", "lw-audit", "lw-lag", "parked", "stalls",
                                   "findings", "growth"}


# -- a real console session -----------------------------------------------------------


def test_console_session_shows_loopwatch_data(looper: LoopThread, monitor: lwa.LoopwatchMonitor,
                                              terminal: Terminal) -> None:
    event, task = spawn_parked(looper, "stuck-worker")
    tid = f"T{task._lw_id}"
    wait_parked(looper, task, 0.06)
    assert "Asyncio Monitor" in terminal.intro

    help_text = terminal.command("help")
    for name in ("parked", "stalls", "lag", "audit", "findings", "growth",  # loopwatch's
                 "ps", "where", "cancel", "stacktrace"):  # aiomonitor's
        assert re.search(rf"^  {re.escape(name)}\b", help_text, re.M), name
    assert "..." not in help_text.split("  parked", 1)[1].splitlines()[0]  # not cut short

    # aiomonitor's task list: loopwatch ids, creation site, age and time parked
    ps = terminal.command("ps")
    row = next(line for line in ps.splitlines() if "stuck-worker" in line)
    assert row.split()[1] == tid
    assert f"test_aiomonitor.py:{CREATE_LINE}" in row
    # (past a second on a loaded machine: "parked 1.0 s")
    assert re.search(r"PENDING parked (\d+ ms|\d+\.\d s)", row), row

    parked = terminal.command("parked")
    assert "parked for more than 50 ms" in parked
    assert tid in parked and "Event.wait" in parked and "stuck-worker" in parked
    assert f"{tid} waits at " in parked and f"test_aiomonitor.py:{WAIT_LINE} in wait_on" in parked
    assert "no task parked for more than 60.0 min" in terminal.command("parked --over 3600")

    where = terminal.command(f"where {tid}")
    assert f"Creation stack of {tid} 'stuck-worker'" in where
    assert f"line {CREATE_LINE}, in spawn" in where
    assert f"What {tid} waits on (loopwatch)" in where and "waits on Event.wait for" in where
    assert f"test_aiomonitor.py:{WAIT_LINE} in wait_on" in where
    # aiomonitor's own id still works
    assert f"Creation stack of {tid}" in terminal.command(f"where {id(task)}")
    assert "No task T999999" in terminal.command("where T999999")

    audit = terminal.command("audit")
    assert "straggler" in audit and tid in audit and f"test_aiomonitor.py:{CREATE_LINE}" in audit

    findings = terminal.command("findings")
    assert "loopwatch: 1 finding: 1 parked" in findings
    assert f"parked: task {tid} 'stuck-worker'" in findings and "on Event.wait" in findings
    assert "stall" not in terminal.command("findings --kind stall").split(":", 1)[1]
    assert re.search(r"loop lag: p50 \d+ ms, p99 \d+ ms, max \d+ ms \(\d+ samples\)",
                     terminal.command("lag"))
    assert "no stall over 2.0 s so far" in terminal.command("stalls")

    # aiomonitor's cancel waits for the task to finish (its "Cancelled task" line does
    # not reach the terminal in aiomonitor 0.7.1, so the task itself is checked)
    terminal.command(f"cancel {tid}")
    assert task.cancelled()


async def block_the_loop() -> None:
    time.sleep(0.15)  # noqa: ASYNC251  BLOCK-LINE


def test_stalls_and_lag_commands_show_a_blocked_loop() -> None:
    lt = LoopThread(loopwatch.loop_factory(BASE_LOOP, stall_after=0.05)())
    try:
        with lwa.start_monitor(lt.loop, port=0, webui_port=0, console_port=0) as m:
            lt.run(block_the_loop())
            detector: Any = m.watcher.detector("stall")
            deadline = time.monotonic() + 10
            while not detector.stalls():
                assert time.monotonic() < deadline, "the stall was not reported"
                time.sleep(0.01)
            term = Terminal(m.port)
            try:
                stalls = term.command("stalls")
                lag = term.command("lag")
            finally:
                term.close()
    finally:
        lt.stop()
    block_line = next(i for i, line in enumerate(_LINES, 1) if line.endswith("BLOCK-LINE"))
    assert "stall: " in stalls and f"test_aiomonitor.py:{block_line}" in stalls
    max_lag = re.search(r"max (\d+) ms", lag)
    assert max_lag is not None and int(max_lag.group(1)) >= 100, lag


def test_growth_command_lists_the_sites_that_grew(looper: LoopThread,
                                                  monitor: lwa.LoopwatchMonitor,
                                                  terminal: Terminal) -> None:
    first = terminal.command("growth --baseline")
    assert re.search(r"baseline taken: \d+ live tasks", first)
    events = [spawn_parked(looper, f"leak-{i}")[0] for i in range(3)]
    grown = terminal.command("growth")
    assert "+3 since the baseline" in grown
    row = next(line for line in grown.splitlines() if f"test_aiomonitor.py:{CREATE_LINE}" in line)
    assert "tests.test_aiomonitor.wait_on" in row and "+3" in row
    for event in events:
        looper.call(event.set)


def test_findings_after_shutdown_of_a_task(looper: LoopThread, monitor: lwa.LoopwatchMonitor,
                                           terminal: Terminal) -> None:
    """ps-terminated / where-terminated read loopwatch's history of finished tasks."""
    async def fail() -> None:
        raise KeyError("lost")

    async def run_one() -> int:
        t = asyncio.get_running_loop().create_task(fail(), name="doomed")
        await asyncio.gather(t, return_exceptions=True)
        return int(t._lw_id)

    number = looper.run(run_one())
    # The record reaches the history when the task object goes away.
    deadline = time.monotonic() + 10
    w = loopwatch.watcher(looper.loop)
    while not any(r[0] == number for r in list(w.history)):
        assert time.monotonic() < deadline
        looper.call(lambda: None)
        import gc
        gc.collect()
    listing = terminal.command("ps-terminated")
    row = next(line for line in listing.splitlines() if f"T{number} " in line)
    assert "doomed" in row and "fail" in row and "exception" in row
    where = terminal.command(f"where-terminated T{number}")
    assert "exception: KeyError: 'lost'" in where
    assert "run_one" in where


def test_cancel_refuses_a_task_in_an_await_cycle(looper: LoopThread,
                                                 monitor: lwa.LoopwatchMonitor,
                                                 terminal: Terminal) -> None:
    async def make_cycle() -> tuple[Any, Any, asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        escape: asyncio.Future[None] = loop.create_future()
        tasks: dict[str, Any] = {}

        async def first() -> None:
            await asyncio.sleep(0)
            try:
                await asyncio.gather(tasks["second"], escape)
            except LookupError:
                pass

        async def second() -> None:
            await tasks["first"]

        tasks["first"] = loop.create_task(first())
        tasks["second"] = loop.create_task(second())
        for _ in range(3):
            await asyncio.sleep(0)
        return tasks["first"], tasks["second"], escape

    first, second, escape = looper.run(make_cycle())
    a, b = f"T{first._lw_id}", f"T{second._lw_id}"
    # aiomonitor runs `cancel` in a task of its own and shows the next prompt before it
    # is done (0.7.1), so the reply comes after the prompt
    terminal.sock.sendall(f"cancel {b}\r".encode())
    reply = terminal.read_until(b"code\r\n").decode()
    assert f"not cancelled: {b} is in an await cycle" in reply
    assert f"({a} -> {b} -> {a})" in reply and "RecursionError" in reply
    assert not first.done() and not second.done()
    # break the cycle from the outside so the loop can finish cleanly
    looper.call(escape.set_exception, LookupError("escape"))
    looper.run(asyncio.wait_for(asyncio.shield(second), 5))


def test_commands_on_a_loop_that_is_not_watched(terminal: Terminal,
                                                monitor: lwa.LoopwatchMonitor) -> None:
    """loopwatch's commands are registered for every aiomonitor Monitor in the process;
    on a loop that is not watched they say so."""
    loop = base_loop()
    lt = LoopThread(loop)
    try:
        lwa._quiet_aiomonitor_warnings()  # else aiomonitor hangs at start under -W error
        plain = aiomonitor.Monitor(loop, termui_port=0, webui_port=0, console_port=0)
        plain._termui_port, plain._webui_port = lwa._free_ports("127.0.0.1", 2)
        plain.start()
        try:
            term = Terminal(plain._termui_port)
            try:
                assert "this loop is not watched" in term.command("parked")
            finally:
                term.close()
        finally:
            plain.close()
    finally:
        lt.stop()


# -- the web UI shows the same data ----------------------------------------------------


def test_web_ui_lists_tasks_with_loopwatch_data(looper: LoopThread,
                                                monitor: lwa.LoopwatchMonitor) -> None:
    event, task = spawn_parked(looper, "web-visible")
    body = urllib.parse.urlencode({"filter": "web-visible"}).encode()
    url = f"http://127.0.0.1:{monitor.webui_port}/api/live-tasks"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as reply:
        tasks = json.loads(reply.read())["tasks"]
    assert len(tasks) == 1
    assert tasks[0]["task_id"] == f"T{task._lw_id}"
    assert tasks[0]["created_location"].endswith(f"test_aiomonitor.py:{CREATE_LINE}")
    looper.call(event.set)


# -- known aiomonitor problems, kept away ---------------------------------------------


def busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("which", ["port", "webui_port"])
def test_a_busy_port_is_an_error_not_a_hang(looper: LoopThread, which: str) -> None:
    with busy_port() as sock:
        number = sock.getsockname()[1]
        ports = {"port": 0, "webui_port": 0, "console_port": 0, which: number}
        with pytest.raises(loopwatch.ConsoleError, match=rf"port 127\.0\.0\.1:{number} is busy"):
            lwa.start_monitor(looper.loop, **ports)
    assert looper.run(asyncio.sleep(0, "still running")) == "still running"


def test_a_port_taken_during_start_is_an_error_not_a_hang(
        looper: LoopThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiomonitor itself waits forever when its web UI cannot bind (it binds in its UI
    thread and start() waits for an event that is never set)."""
    lose_the_race(monkeypatch)
    with busy_port() as sock:
        number = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(loopwatch.ConsoleError, match="aiomonitor could not start") as info:
            lwa.start_monitor(looper.loop, port=0, webui_port=number, console_port=0)
        assert time.monotonic() - started < 10
        assert isinstance(info.value.__cause__, OSError)


def lose_the_race(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two port checks before start() pass; the port is taken when aiomonitor binds."""
    real = lwa._check_port
    passes = [None, None]

    def check(*args: Any) -> None:
        if passes:
            passes.pop()
            return
        real(*args)

    monkeypatch.setattr(lwa, "_check_port", check)


def test_port_zero_means_a_free_port(monitor: lwa.LoopwatchMonitor) -> None:
    ports = {monitor.port, monitor.webui_port, monitor.console_port}
    assert len(ports) == 3 and 0 not in ports
    with socket.create_connection(("127.0.0.1", monitor.port), timeout=5) as sock:
        data = b""
        while not data.endswith(IAC + SB + TTYPE + b"\x01" + IAC + SE):  # the last question
            data += sock.recv(4096)
        assert data.startswith(IAC + b"\xfd\x22")  # DO LINEMODE: the telnet UI is there


def test_hook_task_factory_is_refused(looper: LoopThread) -> None:
    with pytest.raises(loopwatch.OptionsError, match="second task factory"):
        lwa.start_monitor(looper.loop, port=0, webui_port=0, hook_task_factory=True)


def test_start_monitor_checks_monitor_cls(looper: LoopThread) -> None:
    with pytest.raises(TypeError, match="subclass of aiomonitor.Monitor"):
        lwa.start_monitor(looper.loop, monitor_cls=dict)

    class Custom(aiomonitor.Monitor):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.prompt = "custom >>> "

    m = lwa.start_monitor(looper.loop, port=0, webui_port=0, console_port=0, monitor_cls=Custom)
    try:
        assert isinstance(m, Custom) and isinstance(m, lwa.LoopwatchMonitor)
        assert m.prompt == "custom >>> "
    finally:
        m.close()


def test_closing_the_monitor_keeps_the_task_factory(looper: LoopThread) -> None:
    def user_factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        return asyncio.Task(coro, loop=loop, **kwargs)

    m = lwa.start_monitor(looper.loop, port=0, webui_port=0, console_port=0)
    looper.call(looper.loop.set_task_factory, user_factory)
    m.close()
    assert looper.loop.get_task_factory() is user_factory

    async def make() -> Any:
        return asyncio.get_running_loop().create_task(asyncio.sleep(0))

    task = looper.run(make())
    assert isinstance(task._lw_id, int) and task._lw_stack  # still recorded by loopwatch


def test_closing_the_monitor_on_an_attached_loop_keeps_loopwatch() -> None:
    """A loop attached by start_monitor keeps loopwatch's task factory after close."""
    lt = LoopThread(base_loop())
    try:
        m = lwa.start_monitor(lt.loop, port=0, webui_port=0, console_port=0)
        lt.call(lambda: None)  # one turn of the loop: the loop-started hook ran there
        assert m.watcher.loop_thread is lt.thread  # so the watchdog and heartbeat run
        factory = lt.loop.get_task_factory()
        assert getattr(factory, "__loopwatch__", False)
        m.close()
        assert lt.loop.get_task_factory() is factory
        assert loopwatch.watcher(lt.loop) is m.watcher
    finally:
        lt.stop()


def test_the_ui_loop_is_not_watched_under_loopwatchs_policy(looper: LoopThread) -> None:
    old = asyncio.get_event_loop_policy()
    loopwatch.install()
    try:
        m = lwa.start_monitor(looper.loop, port=0, webui_port=0, console_port=0)
        try:
            assert getattr(m._ui_loop, "_lw_watcher", None) is None
        finally:
            m.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_monitor_as_context_manager_and_thread_id(looper: LoopThread) -> None:
    with lwa.start_monitor(looper.loop, port=0, webui_port=0, console_port=0) as m:
        assert m._event_loop_thread_id == looper.thread.ident
    assert m.closed


needs_uvloop_313 = pytest.mark.skipif(
    BASE_LOOP != "uvloop" or sys.version_info < (3, 13),
    reason="uvloop passes eager_start to task factories on Python 3.13+",
)


@needs_uvloop_313
def test_aiomonitors_own_factory_hook_breaks_on_uvloop_313() -> None:
    """The fact behind keeping hook_task_factory off: on uvloop with 3.13, uvloop
    passes eager_start to the task factory, which aiomonitor's does not accept."""
    loop = base_loop()
    lwa._quiet_aiomonitor_warnings()  # else aiomonitor hangs at start under -W error
    try:
        termui_port, webui_port = lwa._free_ports("127.0.0.1", 2)
        m = aiomonitor.Monitor(loop, termui_port=termui_port, webui_port=webui_port,
                               console_port=0, hook_task_factory=True)
        m.start()
        try:
            coro = asyncio.sleep(0)
            with pytest.raises(TypeError, match="eager_start"):
                loop.create_task(coro)
            coro.close()
        finally:
            m.close()
    finally:
        loop.close()


def test_a_factory_with_aiomonitors_signature_works_behind_loopwatchs(
        looper: LoopThread, monitor: lwa.LoopwatchMonitor) -> None:
    """With the monitor on, every task goes through loopwatch's factory, which takes
    whatever keywords the loop passes (eager_start=None from uvloop on 3.13) and hands
    a chained factory only what it accepts: the failure above cannot happen, even for a
    factory with aiomonitor's narrow signature that the program sets itself."""
    names: list[str | None] = []

    def narrow_factory(loop: Any, coro: Any, *, name: str | None = None,
                       context: Any = None) -> Any:  # aiomonitor's _create_task signature
        names.append(name)
        if context is not None:
            return asyncio.Task(coro, loop=loop, name=name, context=context)
        return asyncio.Task(coro, loop=loop, name=name)

    async def child() -> str:
        return "done"

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(narrow_factory)
        try:
            first = asyncio.create_task(child(), name="via-asyncio")
            second = loop.create_task(child(), name="via-loop")
            results = [await first, await second]
            assert first._lw_id and first._lw_stack  # recorded by loopwatch too
            if sys.version_info >= (3, 12):  # an eager factory stays eager
                loop.set_task_factory(asyncio.eager_task_factory)
                eager = asyncio.create_task(child())
                assert eager.done() and eager._lw_id and eager._lw_stack
                results.append(eager.result())
        finally:
            loop.set_task_factory(None)
        return results

    assert looper.run(run()) == ["done"] * (3 if sys.version_info >= (3, 12) else 2)
    assert len(names) == 2  # both went through the narrow factory


def test_nc_without_ttype_gets_no_prompt(monitor: lwa.LoopwatchMonitor) -> None:
    """What remains (documented in docs/console.md's aiomonitor section): aiomonitor's
    telnet UI says nothing to a client that does not answer TTYPE, such as `nc`."""
    with socket.create_connection(("127.0.0.1", monitor.port), timeout=5) as sock:
        sock.settimeout(0.6)  # a terminal that answers gets its prompt after 0.3 s
        data = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    assert data.startswith(IAC)  # only the negotiation
    assert PROMPT not in data and b"Asyncio Monitor" not in data
