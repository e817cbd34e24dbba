"""The stall watchdog and loop lag, on real loops that really block."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch._detectors import Detector
from loopwatch._detectors import stall as stall_module
from loopwatch._detectors.stall import LagHistogram, StallDetector

from .conftest import BASE_LOOP

ROOT = Path(__file__).resolve().parent.parent


def stalls(w: loopwatch.Watcher) -> list[loopwatch.Finding]:
    return [f for f in w.findings() if f.kind == "stall"]


def detector(w: loopwatch.Watcher) -> StallDetector:
    d = w.detector("stall")
    assert isinstance(d, StallDetector)
    return d


def wait_until(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.005)


def block(seconds: float) -> None:
    time.sleep(seconds)  # BLOCKS


BLOCK_LINE = block.__code__.co_firstlineno + 1


def test_a_02s_block_is_caught_with_its_line_20_times_out_of_20() -> None:
    """SPEC section 8: 20 blocks of 0.2 s, in tasks and in plain callbacks, from the
    very first moment of the loop on: each one its own finding, at the blocking line."""
    seen: list[loopwatch.Watcher] = []

    async def blocking_task() -> None:
        block(0.2)

    async def main() -> None:
        seen.append(loopwatch.watcher())
        loop = asyncio.get_running_loop()
        for i in range(20):
            if i % 2:
                done = loop.create_future()
                loop.call_soon(lambda fut=done: (block(0.2), fut.set_result(None)))
                await done
            else:
                await asyncio.create_task(blocking_task(), name=f"blocker-{i}")
            await asyncio.sleep(0.03)  # the loop gets control back: the stall ends

    loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.1, log=False)
    found = stalls(seen[0])
    assert len(found) == 20
    assert len({f.key for f in found}) == 20
    for f in found:
        assert f.site is not None and (f.site.file, f.site.line) == (__file__, BLOCK_LINE)
        assert f.details["ongoing"] is False
        assert f.details["duration"] > 0.1
        assert f.stacks["blocked"][-1] == f.site
        assert "time.sleep" in f.hint
    in_tasks = [f for f in found if f.task is not None]
    assert sorted(f.task.name for f in in_tasks if f.task) == sorted(
        f"blocker-{i}" for i in range(0, 20, 2))
    assert all(f.details["running_task"] == f.task.id for f in in_tasks if f.task)
    assert len(found) - len(in_tasks) == 10  # plain callbacks run in no task


def test_a_block_shorter_than_stall_after_is_never_reported() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        for _ in range(20):
            block(0.05)
            await asyncio.sleep(0.005)

    loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.1, log=False)
    assert stalls(seen[0]) == []
    lag = seen[0].lag()
    assert lag["max"] > 0.025  # the blocks were there, and measured as lag
    assert lag["samples"] >= 20


def test_an_idle_loop_is_not_stalled() -> None:
    """Idle in select() for longer than stall_after: the heartbeat wakes it."""
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        await asyncio.sleep(0.5)

    loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.05, log=False)
    # Idle time is never a stall: were it counted, there would be one of about 0.5 s.
    # (A busy machine may still starve the process for longer than 50 ms now and then:
    # that is a real, short stall, so only long ones are ruled out here.)
    assert [f for f in stalls(seen[0]) if f.details["duration"] > 0.3] == []
    assert seen[0].lag()["samples"] >= 10


def test_the_stall_is_seen_while_the_loop_is_still_blocked() -> None:
    """Another thread sees the blocked state and an ongoing finding during the block,
    then the finding gets the total duration when the loop runs again."""
    release = threading.Event()
    during: dict[str, Any] = {}

    def observer(w: loopwatch.Watcher) -> None:
        d = detector(w)
        during["state"] = wait_until(d.blocked_state)
        during["finding"] = wait_until(lambda: stalls(w))
        during["console_view"] = d.stalls()
        release.set()

    def blocker() -> None:
        release.wait(10)  # BLOCKED HERE

    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        thread = threading.Thread(target=observer, args=(w,))
        thread.start()
        blocker()
        thread.join()
        await asyncio.sleep(0.05)
        return w

    w = loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.05, log=False)
    seconds, frame = during["state"]
    assert seconds > 0.05
    assert frame is not None and frame.function.endswith("blocker")
    assert frame.line == blocker.__code__.co_firstlineno + 1
    (ongoing,) = during["finding"]
    assert ongoing.details["ongoing"] is True
    assert "so far" in ongoing.message
    assert during["console_view"] and during["console_view"][0].kind == "stall"
    (final,) = stalls(w)
    assert final.key == ongoing.key
    assert final.details["ongoing"] is False
    assert final.details["duration"] >= ongoing.details["duration"]
    assert final.task is not None and final.task.coro.endswith("main")
    assert detector(w).blocked_state() is None


def test_watchdog_thread_lives_with_the_loop_and_heartbeat_never_outlives_it() -> None:
    loop = loopwatch.loop_factory(BASE_LOOP, log=False)()
    w = loopwatch.watcher(loop)
    d = detector(w)
    try:
        assert d.blocked_state() is None  # not running: never blocked

        async def probe() -> list[str]:
            await asyncio.sleep(0.05)
            return [t.name for t in threading.enumerate()]

        names = loop.run_until_complete(probe())
        assert "loopwatch-watchdog" in names
        assert d._handle is None  # the loop stopped: the heartbeat is not left pending
        thread = d._thread
        assert thread is not None and thread.is_alive()
    finally:
        loop.close()
    assert not thread.is_alive()
    assert not [f for f in w.findings() if f.kind == "dropped_callback"]


def test_lag_stats_and_the_report() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        await asyncio.sleep(0.1)
        block(0.03)
        await asyncio.sleep(0.05)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    lag = seen[0].lag()
    assert set(lag) == {"p50", "p99", "max", "samples"}
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert lag["max"] > 0.01
    assert seen[0].report().lag == lag
    assert seen[0].report().to_dict()["lag"]["samples"] == lag["samples"]


def test_lag_histogram_percentiles() -> None:
    h = LagHistogram()
    assert h.stats() == {}
    for i in range(1, 1001):
        h.record(i / 1000)  # 1 ms .. 1 s
    h.record(-0.001)  # early by the clock's resolution: counts as on time
    stats = h.stats()
    assert stats["samples"] == 1001
    assert stats["max"] == 1.0
    assert stats["p50"] == pytest.approx(0.5, rel=0.04)
    assert stats["p99"] == pytest.approx(0.99, rel=0.04)


def test_the_longest_stalls_are_kept_and_the_rest_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stall_module, "MAX_KEPT", 3)
    loop = loopwatch.loop_factory(BASE_LOOP, log=False)()
    w = loopwatch.watcher(loop)
    d = detector(w)
    try:
        # Late beats the watchdog did not see while they lasted, as the heartbeat logs them
        for i, seconds in enumerate([0.3, 0.2, 0.5, 0.15, 0.4]):
            d._late.append((1000.0 + i, seconds))
        d._settle()
        kept = sorted(f.details["duration"] for f in stalls(w))
        assert kept == [0.3, 0.4, 0.5]
        assert sorted(f.details["duration"] for f in d.stalls()) == kept
        assert len({f.key for f in stalls(w)}) == 3
        assert any("5 stalls in all; 2 shorter ones are not listed" in n for n in w.all_notes())
        unseen = stalls(w)[0]
        assert unseen.site is None and "could not read the loop thread" in unseen.message
    finally:
        loop.close()


def test_ticks_are_driven_for_every_detector() -> None:
    ticks: list[tuple[float, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ticked = asyncio.Event()

        class Recorder(Detector):
            name = "recorder"

            def tick(self, now: float) -> None:
                ticks.append((now, threading.current_thread().name))
                loop.call_soon_threadsafe(ticked.set)

        w = loopwatch.watcher()
        w.detectors.append(Recorder(w))
        await asyncio.wait_for(ticked.wait(), 5)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    assert ticks and ticks[0][1] == "loopwatch-watchdog"


def test_stall_disabled_keeps_lag_and_ticks() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        block(0.15)
        await asyncio.sleep(0.02)

    loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.05, disabled={"stall"}, log=False)
    assert stalls(seen[0]) == []
    assert seen[0].lag()["max"] > 0.1
    assert seen[0].detector("stall") is not None  # its thread still ticks the others


def test_watchdog_off_says_so() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        block(0.15)
        await asyncio.sleep(0.02)

    loopwatch.run(main(), loop=BASE_LOOP, stall_after=0.05, watchdog=False, log=False)
    w = seen[0]
    assert stalls(w) == [] and w.lag() == {}
    assert any("watchdog=False" in n for n in w.report().notes)


def test_blocking_service_example_under_python_and_loopwatch_run(tmp_path: Path) -> None:
    example = str(ROOT / "examples" / "blocking_service.py")
    direct = subprocess.run([sys.executable, example], capture_output=True, text=True,
                            timeout=60)
    assert direct.returncode == 0, direct.stderr
    assert "served 4 clients" in direct.stdout
    # logged the moment it is seen, while the loop is still blocked
    assert "stall: the loop has been blocked for" in direct.stderr
    assert "blocking_service.py:" in direct.stderr and "in password_ok" in direct.stderr
    report = tmp_path / "report.json"
    base = ["--uvloop"] if BASE_LOOP == "uvloop" else []
    run = subprocess.run([sys.executable, "-m", "loopwatch", "run", *base, "--console", "off",
                          "--report", str(report), example],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    data = loopwatch.Report.from_json(report.read_text())
    assert data.loop == BASE_LOOP
    found = data.of_kind("stall")
    assert {f.site.function for f in found if f.site} == {"password_ok", "fetch_profile"}
    # A stall with no site is a loaded machine's (the process did not get the CPU, or
    # the watchdog never ran while it lasted): true, and not the program's line.
    assert all(f.site is None or f.site.file == example for f in found), \
        [(f.site, f.details) for f in found]


def test_an_attached_loop_is_watched_and_its_pauses_are_not_stalls() -> None:
    if BASE_LOOP == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    seen: list[loopwatch.Watcher] = []

    async def first() -> None:
        seen.append(loopwatch.attach(stall_after=0.1, log=False))
        await asyncio.sleep(0.03)
        block(0.2)
        await asyncio.sleep(0.03)

    async def second() -> None:
        await asyncio.sleep(0.03)

    try:
        loop.run_until_complete(first())
        w = seen[0]
        # stopped with a beat pending: the watchdog sees it is not running, not blocked
        wait_until(lambda: detector(w)._paused_dues)
        time.sleep(0.6)
        loop.run_until_complete(second())
        thread = detector(w)._thread
    finally:
        loop.close()
    (f,) = stalls(seen[0])
    assert f.site is not None and f.site.line == BLOCK_LINE
    assert seen[0].lag()["max"] < 0.5  # the pause (0.6 s) is not loop lag either
    assert thread is not None and not thread.is_alive()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_watchdog_leaves_the_programs_signals_to_the_program() -> None:
    # The kernel gives a signal sent to the process to any thread that does not block
    # it; Python wakes the main thread from an idle loop's select only when the signal
    # landed there. A Ctrl-C taken by the watchdog would leave an idle program waiting.
    import signal

    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}

    def blocked(native_id: int) -> set[int]:
        status = Path(f"/proc/self/task/{native_id}/status").read_text()
        mask = next(int(line.split()[1], 16) for line in status.splitlines()
                    if line.startswith("SigBlk:"))
        return {sig for sig in watched if mask >> (sig - 1) & 1}

    loop = loopwatch.loop_factory(BASE_LOOP, log=False)()
    try:
        loop.run_until_complete(asyncio.sleep(0))  # (the watchdog lives with the loop)
        (watchdog,) = [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]
        assert watchdog.native_id is not None
        deadline = time.monotonic() + 10
        while blocked(watchdog.native_id) != watched and time.monotonic() < deadline:
            time.sleep(0.001)  # (its first step, which may not have run yet)
        assert blocked(watchdog.native_id) == watched
        assert blocked(threading.main_thread().native_id or 0) == set()
    finally:
        loop.close()
