"""Dumps: every task of every watched loop as plain text, from anywhere, even while blocked."""

from __future__ import annotations

import asyncio
import io
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch._dump import format_dump

from .conftest import BASE_LOOP


def wait_until(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.005)
    return value


async def waits(ev: asyncio.Event) -> None:
    await ev.wait()  # WAITS HERE


def blocker(release: threading.Event) -> None:
    release.wait(10)  # BLOCKS HERE


def test_dump_from_another_thread_while_the_loop_is_blocked() -> None:
    release = threading.Event()
    text: list[str] = []

    def dumper(w: loopwatch.Watcher) -> None:
        detector: Any = w.detector("stall")
        wait_until(detector.blocked_state)
        buf = io.StringIO()
        loopwatch.dump(buf)
        text.append(buf.getvalue())
        release.set()

    async def main() -> None:
        w = loopwatch.watcher()
        ev = asyncio.Event()
        task = asyncio.create_task(waits(ev), name="waiter")  # CREATED HERE
        await asyncio.sleep(0)
        thread = threading.Thread(target=dumper, args=(w,))
        thread.start()
        blocker(release)
        thread.join()
        ev.set()
        await task

    loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.05, log=False)
    (out,) = text
    assert f"({BASE_LOOP}), running in thread 'MainThread'" in out
    blocked = next(line for line in out.splitlines() if line.startswith("loop blocked for "))
    assert blocked.endswith(f"{__file__}:{blocker.__code__.co_firstlineno + 1} in blocker")
    assert "release.wait(10)  # BLOCKS HERE" in out  # the loop thread's stack, with source
    assert "'waiter' tests.test_dump.waits" in out
    assert "waiting on Event.wait for" in out
    assert "await ev.wait()  # WAITS HERE" in out
    assert 'task = asyncio.create_task(waits(ev), name="waiter")  # CREATED HERE' in out
    assert "running now" in out  # main, which is blocked


def test_dump_from_the_loop_thread_shows_the_caller() -> None:
    async def main() -> str:
        buf = io.StringIO()
        loopwatch.dump(file=buf)  # DUMP CALL
        return buf.getvalue()

    out = loopwatch.run(main(), loop=BASE_LOOP, log=False)
    stack = out.split("loop thread stack (most recent call last):\n")[1]
    assert "loopwatch.dump(file=buf)  # DUMP CALL" in stack
    assert "loopwatch/_dump.py" not in stack.split("\n\n")[0]


def test_dump_without_a_watched_loop_says_so() -> None:
    text = format_dump([])
    assert "no watched loop is open" in text


def test_dump_limits_the_tasks_it_writes(tmp_path: Path) -> None:
    async def main() -> None:
        ev = asyncio.Event()
        tasks = [asyncio.create_task(waits(ev)) for _ in range(5)]
        await asyncio.sleep(0)
        buf = io.StringIO()
        loopwatch.dump(buf, limit=2)
        (tmp_path / "dump.txt").write_text(buf.getvalue())
        ev.set()
        await asyncio.gather(*tasks)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    out = (tmp_path / "dump.txt").read_text()
    assert "... 4 more tasks not shown (limit=2)" in out


def test_dump_to_a_file_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "fd.txt"

    async def main() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            loopwatch.dump(fd)
        finally:
            os.close(fd)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    assert "loop thread stack" in path.read_text()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_dump_on_signal_while_the_loop_is_blocked(tmp_path: Path) -> None:
    path = tmp_path / "signal.txt"

    async def main() -> None:
        ev = asyncio.Event()
        task = asyncio.create_task(waits(ev), name="waiter")
        await asyncio.sleep(0)
        killer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
        killer.start()
        time.sleep(0.3)  # noqa: ASYNC251  # SLEEPING WHEN SIGNALLED: handler runs, sleep goes on
        killer.join()
        ev.set()
        await task

    with open(path, "w") as f:
        previous = loopwatch.dump_on_signal(signal.SIGUSR1, f)
        try:
            loopwatch.run(main(), loop=BASE_LOOP, log=False)
        finally:
            signal.signal(signal.SIGUSR1, previous)
    out = path.read_text()
    assert "'waiter' tests.test_dump.waits" in out
    stack = out.split("loop thread stack (most recent call last):\n")[1].split("\n\n")[0]
    assert "SLEEPING WHEN SIGNALLED" in stack.splitlines()[-1]
    assert "loopwatch/_dump.py" not in stack


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_dump_on_signal_default_is_sigusr1_and_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0)  # the handler runs at the next bytecode of the main thread

    previous = loopwatch.dump_on_signal()
    try:
        loopwatch.run(main(), loop=BASE_LOOP, log=False)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert "loopwatch dump, pid" in capfd.readouterr().err


def test_dump_later_once_and_repeated() -> None:
    class Sink(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.dumps = 0

        def write(self, s: str) -> int:
            self.dumps += s.count("loopwatch dump, pid")
            return super().write(s)

    async def main() -> tuple[int, int]:
        once, again = Sink(), Sink()
        loopwatch.dump_later(0.01, file=once)
        await asyncio.to_thread(wait_until, lambda: once.dumps)
        loopwatch.dump_later(0.01, repeat=True, file=again)
        await asyncio.to_thread(wait_until, lambda: again.dumps >= 3)
        loopwatch.cancel_dump_later()
        assert not [t for t in threading.enumerate() if t.name == "loopwatch-dump-later"]
        stopped = again.dumps
        loopwatch.cancel_dump_later()  # nothing pending: nothing happens
        return once.dumps, stopped - again.dumps

    once, after_cancel = loopwatch.run(main(), loop=BASE_LOOP, log=False)
    assert once == 1 and after_cancel == 0


def test_dump_later_replaces_the_pending_one() -> None:
    first = io.StringIO()
    loopwatch.dump_later(3600, file=first)
    second = io.StringIO()
    loopwatch.dump_later(0.01, file=second)
    wait_until(second.getvalue)
    loopwatch.cancel_dump_later()
    assert first.getvalue() == ""


def test_arguments_are_checked_with_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"loopwatch.dump\(\) file must be a text file"):
        loopwatch.dump(file=3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"limit must be a whole number >= 0, got -1"):
        loopwatch.dump(limit=-1)
    with pytest.raises(ValueError, match=r"seconds must be a finite number > 0, got 0"):
        loopwatch.dump_later(0)
    with pytest.raises(ValueError, match="finite"):
        loopwatch.dump_later(math.nan)
    with pytest.raises(TypeError, match=r"seconds must be a number, got '1'"):
        loopwatch.dump_later("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="write"):
        loopwatch.dump_later(1, file=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sig must be a signal number"):
        loopwatch.dump_on_signal("USR1")  # type: ignore[arg-type]
    if hasattr(signal, "SIGKILL"):
        with pytest.raises(ValueError, match="SIGKILL cannot be caught"):
            loopwatch.dump_on_signal(signal.SIGKILL)
    with pytest.raises(ValueError, match="not a valid signal"):
        loopwatch.dump_on_signal(100_000)
    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            loopwatch.dump_on_signal(signal.SIGTERM)
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])


def test_dump_never_raises_into_a_signal_handler(tmp_path: Path) -> None:
    if not hasattr(signal, "SIGUSR2"):
        pytest.skip("no SIGUSR2 on this platform")
    path = tmp_path / "closed.txt"
    f = open(path, "w")  # noqa: SIM115
    previous = loopwatch.dump_on_signal(signal.SIGUSR2, f)
    f.close()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)  # the file is closed: the dump fails quietly
        time.sleep(0)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert sys.exc_info() == (None, None, None)
