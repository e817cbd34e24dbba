"""parked and await_cycle: tasks stuck on one future, and tasks that wait on each other."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch._detectors import parked as parked_module
from loopwatch._detectors.parked import ParkedDetector

from .conftest import BASE_LOOP

ROOT = Path(__file__).resolve().parent.parent
FUTURE = 3600.0  # "an hour later", for scans that ask what would be parked by then


def of_kind(w: loopwatch.Watcher, kind: str) -> list[loopwatch.Finding]:
    return [f for f in w.findings() if f.kind == kind]


def detector(w: loopwatch.Watcher) -> ParkedDetector:
    d = w.detector("parked")
    assert isinstance(d, ParkedDetector)
    return d


def quiet(d: ParkedDetector) -> ParkedDetector:
    """No scan from the watchdog thread: the test drives the scans and their clock."""
    d.poll = lambda now: None  # type: ignore[method-assign]
    d.tick = lambda now: None  # type: ignore[method-assign]
    return d


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll (the watchdog thread acts on its own clock) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.01)
    return value


def line_of(func: Callable[..., Any], marker: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(func)
    for i, text in enumerate(lines):
        if marker in text:
            return start + i
    raise LookupError(marker)


async def on_event(ev: asyncio.Event) -> None:
    await ev.wait()  # PARKED EVENT


async def on_queue(q: asyncio.Queue[int]) -> int:
    return await q.get()  # PARKED QUEUE


async def on_lock(lock: asyncio.Lock) -> None:
    async with lock:  # PARKED LOCK
        pass


async def holds(lock: asyncio.Lock, ev: asyncio.Event) -> None:
    async with lock:
        await ev.wait()


def test_parked_on_event_queue_and_lock_at_the_await_line() -> None:
    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        ev, q, lock = asyncio.Event(), asyncio.Queue[int](), asyncio.Lock()
        holder_ev = asyncio.Event()
        holder = asyncio.create_task(holds(lock, holder_ev), name="holder")
        tasks = [asyncio.create_task(on_event(ev), name="on-event"),  # CREATED
                 asyncio.create_task(on_queue(q), name="on-queue"),
                 asyncio.create_task(on_lock(lock), name="on-lock")]
        await until(lambda: {f.task.name for f in of_kind(w, "parked") if f.task}
                    >= {"on-event", "on-queue", "on-lock"})
        ev.set()
        q.put_nowait(1)
        holder_ev.set()
        await asyncio.gather(holder, *tasks)
        return w

    w = loopwatch.run(main(), loop=BASE_LOOP, parked_after=0.2, log=False)
    found = {f.task.name: f for f in of_kind(w, "parked") if f.task}
    expect = {"on-event": (on_event, "PARKED EVENT", "Event.wait"),
              "on-queue": (on_queue, "PARKED QUEUE", "Queue.get"),
              "on-lock": (on_lock, "PARKED LOCK", "Lock.acquire")}
    for name, (func, marker, what) in expect.items():
        f = found[name]
        assert f.site is not None and f.site.file == __file__
        assert f.site.line == line_of(func, marker), name
        assert f.details["awaiting"] == what
        assert f.details["parked_for"] >= 0.2
        assert f.details["resumed"] is True  # it resumed, and kept its finding
        assert f.stacks["await"][0].function.endswith(func.__name__)
        created = f.stacks["created"][-1]
        assert created.file == __file__ and created.function.endswith("main")
        assert f.hint
    assert found["on-event"].stacks["created"][-1].line == line_of(
        test_parked_on_event_queue_and_lock_at_the_await_line, "# CREATED")
    assert "async with lock" in found["on-lock"].hint
    assert "holder" in found  # it holds the lock while waiting on an Event


def test_sleep_is_not_parked_and_waiting_for_a_task_names_the_leaf() -> None:
    async def leaf(ev: asyncio.Event) -> None:
        await ev.wait()

    async def middle(ev: asyncio.Event) -> None:
        await asyncio.create_task(leaf(ev), name="leaf")

    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        ev = asyncio.Event()
        sleeper = asyncio.create_task(asyncio.sleep(FUTURE), name="sleeper")
        mid = asyncio.create_task(middle(ev), name="middle")
        top = asyncio.create_task(asyncio.wait_for(asyncio.gather(mid), FUTURE), name="top")
        await asyncio.sleep(0.02)
        d = quiet(detector(w))
        d.scan(time.monotonic())
        d.scan(time.monotonic() + FUTURE)  # an hour later, as the scan sees it
        parked = of_kind(w, "parked")
        assert [f.task.name for f in parked if f.task] == ["leaf"]
        (leaf_finding,) = parked
        by = leaf_finding.details["awaited_by"]
        names = {i.name: i.id for i in w.tasks()}
        assert by[0] == names["middle"]
        assert names["top"] in by
        assert "awaited by" in leaf_finding.message and "'middle'" in leaf_finding.message
        ev.set()
        sleeper.cancel()
        await top
        with contextlib.suppress(asyncio.CancelledError):
            await sleeper
        return w

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_the_scan_reads_await_chains_only_over_the_threshold(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    calls: list[object] = []
    real = parked_module.describe

    def counting(task: Any, loop: Any = None) -> Any:
        calls.append(task)
        return real(task, loop)

    monkeypatch.setattr(parked_module, "describe", counting)

    async def main() -> None:
        w = loopwatch.watcher()
        d = quiet(detector(w))
        ev = asyncio.Event()
        tasks = [asyncio.create_task(on_event(ev)) for _ in range(200)]
        await asyncio.sleep(0)
        now = time.monotonic()
        d.scan(now)
        d.scan(now + 1)
        assert calls == []  # 200 tasks waiting, none long enough: no chain read
        d.scan(now + FUTURE)
        assert len(calls) == 200
        d.scan(now + FUTURE + 1)
        assert len(calls) == 200  # a wait's chain is read once
        assert len(of_kind(w, "parked")) == 200
        ev.set()
        await asyncio.gather(*tasks)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_parked_findings_stop_at_a_cap_and_the_rest_are_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parked_module, "MAX_FINDINGS", 3)

    async def main() -> None:
        w = loopwatch.watcher()
        d = quiet(detector(w))
        ev = asyncio.Event()
        tasks = [asyncio.create_task(on_event(ev)) for _ in range(5)]
        await asyncio.sleep(0)
        now = time.monotonic()
        d.scan(now)
        d.scan(now + FUTURE)
        d.scan(now + FUTURE + 1)
        assert len(of_kind(w, "parked")) == 3
        assert any("up to 2 more tasks were parked at once" in n for n in w.all_notes())
        ev.set()
        await asyncio.gather(*tasks)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_the_scan_keeps_no_awaited_task_alive() -> None:
    """The scan notes what each task waits on by weak reference: a task that awaited
    another does not keep it alive once both have moved on."""
    import gc
    import weakref

    async def main() -> None:
        d = quiet(detector(loopwatch.watcher()))
        ev = asyncio.Event()
        awaited = asyncio.create_task(on_event(ev))

        async def scanner() -> None:
            await asyncio.sleep(0)  # main is awaiting `awaited` now
            d.scan(time.monotonic())
            ev.set()

        helper = asyncio.create_task(scanner())
        await awaited
        await helper
        ref = weakref.ref(awaited)
        del awaited
        await asyncio.sleep(0)
        gc.collect()
        assert ref() is None

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_the_scan_scales_linearly() -> None:
    """100,000 live tasks must scan fast (SPEC section 8, measured by the benchmarks);
    here only the shape is checked: 16 times the tasks take about 16 times as long (up to
    twice that as the tasks outgrow the CPU caches), where a quadratic scan takes 256."""

    async def main() -> tuple[float, float]:
        w = loopwatch.watcher()
        d = quiet(detector(w))
        ev = asyncio.Event()
        small = [asyncio.create_task(on_event(ev)) for _ in range(1_000)]
        await asyncio.sleep(0)
        t_small = best_scan(d)
        large = [asyncio.create_task(on_event(ev)) for _ in range(15_000)]
        await asyncio.sleep(0)
        t_large = best_scan(d)
        ev.set()
        await asyncio.gather(*small, *large)
        return t_small, t_large

    def best_scan(d: ParkedDetector) -> float:
        times = []
        for _ in range(5):  # CPU time of this thread: other processes do not count
            started = time.thread_time()
            d.scan(time.monotonic())
            times.append(time.thread_time() - started)
        return max(min(times), 1e-6)

    t_small, t_large = loopwatch.run(main(), loop=BASE_LOOP, log=False)
    print(f"scan: 1,000 tasks {t_small * 1e3:.2f} ms, 16,000 tasks {t_large * 1e3:.2f} ms")
    assert t_large < t_small * 16 * 5


def test_a_resumed_task_keeps_its_finding_with_the_final_duration() -> None:
    async def main() -> loopwatch.Watcher:
        w = loopwatch.watcher()
        ev = asyncio.Event()
        t = asyncio.create_task(on_event(ev), name="waits")
        first = (await until(lambda: of_kind(w, "parked")))[0]
        assert first.details["resumed"] is False
        assert "has been parked" in first.message
        ev.set()
        await t
        final = (await until(lambda: [f for f in of_kind(w, "parked")
                                      if f.details["resumed"]]))[0]
        assert final.key == first.key and len(of_kind(w, "parked")) == 1
        assert final.details["parked_for"] >= first.details["parked_for"] >= 0.1
        assert "was parked" in final.message and "then it finished" in final.message
        return w

    loopwatch.run(main(), loop=BASE_LOOP, parked_after=0.1, log=False)


def test_timeout_is_shown_and_by_design_waits_are_not_parked() -> None:
    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        async with server:
            await server.serve_forever()

    async def main() -> None:
        w = loopwatch.watcher()
        ev = asyncio.Event()
        bounded = asyncio.create_task(asyncio.wait_for(on_event(ev), FUTURE), name="bounded")
        server = asyncio.create_task(serve(), name="server")
        await asyncio.sleep(0.05)
        d = quiet(detector(w))
        d.scan(time.monotonic())
        d.scan(time.monotonic() + FUTURE / 2)
        found = of_kind(w, "parked")
        assert len(found) == 1, [f.message for f in found]  # not the server
        (f,) = found
        assert f.details["awaiting"] == "Event.wait"
        assert f.site is not None and f.site.line == line_of(on_event, "PARKED EVENT")
        if sys.version_info >= (3, 12):  # wait_for runs the coroutine in its own task
            assert f.task is not None and f.task.name == "bounded"
            assert f.details["timeout"] == FUTURE
            assert f"(timeout {FUTURE:g} s)" in f.message
        else:  # 3.10, 3.11: wait_for wraps it in a task of its own, which is the leaf
            assert f.details["awaited_by"] == [
                i.id for i in w.tasks() if i.name == "bounded"]
        ev.set()
        server.cancel()
        await bounded
        with contextlib.suppress(asyncio.CancelledError):
            await server

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_parked_tasks_are_reported_by_audit() -> None:
    async def main() -> None:
        w = loopwatch.watcher()
        quiet(detector(w))
        ev = asyncio.Event()
        t = asyncio.create_task(on_event(ev), name="forgotten")
        await asyncio.sleep(0)
        assert not w.audit().of_kind("parked")  # observed now, parked later
        await asyncio.sleep(0.25)  # the time it takes to be parked
        report = w.audit()
        (f,) = report.of_kind("parked")
        assert f.task is not None and f.task.name == "forgotten"
        assert of_kind(w, "parked") == []  # an audit only reads
        ev.set()
        await t

    loopwatch.run(main(), loop=BASE_LOOP, parked_after=0.2, log=False)


def test_audit_does_not_repeat_a_parked_finding() -> None:
    async def main() -> None:
        w = loopwatch.watcher()
        ev = asyncio.Event()
        t = asyncio.create_task(on_event(ev), name="waits")
        await until(lambda: of_kind(w, "parked"))
        assert len(w.audit().of_kind("parked")) == 1
        ev.set()
        await t

    loopwatch.run(main(), loop=BASE_LOOP, parked_after=0.1, log=False)


async def cycle_a(box: dict[str, asyncio.Task[None]]) -> None:
    await asyncio.sleep(0)
    await box["b"]  # CYCLE A


async def cycle_b(box: dict[str, asyncio.Task[None]]) -> None:
    await asyncio.sleep(0)
    await asyncio.gather(box["a"])  # CYCLE B


def test_a_cycle_is_reported_before_the_runner_cancels_into_recursion() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        box: dict[str, asyncio.Task[None]] = {}
        box["a"] = asyncio.create_task(cycle_a(box), name="a")
        box["b"] = asyncio.create_task(cycle_b(box), name="b")
        await asyncio.sleep(0.01)

    # parked_after and the scan interval are far away: only run_finished can see it
    with pytest.raises(RecursionError):  # CPython's Task.cancel() around the cycle
        loopwatch.run(main(), loop=BASE_LOOP, parked_after=FUTURE, log=False)
    (f,) = of_kind(seen[0], "await_cycle")
    assert [t["name"] for t in f.details["tasks"]] == ["a", "b"]
    assert f.details["tasks"][1]["awaiting"] == "gather"
    assert f.site is not None and f.site.line == line_of(cycle_a, "CYCLE A")
    assert f.details["tasks"][1]["site"]["line"] == line_of(cycle_b, "CYCLE B")
    assert f.task is not None and f.task.name == "a"
    assert set(f.stacks) == {f"await {t['id']}" for t in f.details["tasks"]}
    assert "RecursionError" in f.hint
    assert of_kind(seen[0], "parked") == []  # tasks waiting for tasks are never parked


def test_a_cycle_through_asyncio_wait_is_found_while_running() -> None:
    async def waits_for_b(box: dict[str, asyncio.Task[Any]], stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait(), name="stopper")
        await asyncio.wait({box["b"], stopper}, return_when=asyncio.FIRST_COMPLETED)  # CYCLE
        stopper.cancel()

    async def waits_for_a(box: dict[str, asyncio.Task[Any]]) -> None:
        await box["a"]

    async def main() -> None:
        w = loopwatch.watcher()
        stop = asyncio.Event()
        box: dict[str, asyncio.Task[Any]] = {}
        box["a"] = asyncio.create_task(waits_for_b(box, stop), name="a")
        box["b"] = asyncio.create_task(waits_for_a(box), name="b")
        (f,) = await until(lambda: of_kind(w, "await_cycle"))
        assert [t["name"] for t in f.details["tasks"]] == ["a", "b"]
        assert f.details["tasks"][0]["awaiting"] == "asyncio.wait"
        assert f.site is not None and f.site.line == line_of(waits_for_b, "# CYCLE")
        stop.set()  # the one safe way out: the waiter stops waiting (no cancel)
        await asyncio.gather(box["a"], box["b"])

    loopwatch.run(main(), loop=BASE_LOOP, parked_after=0.4, log=False)


def test_clean_programs_give_no_finding() -> None:
    seen: list[loopwatch.Watcher] = []

    async def worker(q: asyncio.Queue[int | None], out: list[int]) -> None:
        while (item := await q.get()) is not None:
            await asyncio.sleep(0.002)
            out.append(item)
            q.task_done()
        q.task_done()

    async def main() -> None:
        seen.append(loopwatch.watcher())
        q: asyncio.Queue[int | None] = asyncio.Queue()
        out: list[int] = []
        workers = [asyncio.create_task(worker(q, out)) for _ in range(3)]
        for i in range(30):
            await q.put(i)
            await asyncio.sleep(0.003)
        await q.join()
        for _ in workers:
            q.put_nowait(None)
        await asyncio.gather(*workers)
        # cancel, then await
        t = asyncio.create_task(asyncio.sleep(FUTURE))
        await asyncio.sleep(0)
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
        # a wait that times out
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 0.05)
        assert sorted(out) == list(range(30))

    loopwatch.run(main(), loop=BASE_LOOP, parked_after=0.2, stall_after=1.0, log=False)
    w = seen[0]
    assert w.findings() == [], [f.message for f in w.findings()]
    assert w.report().findings == []


def _run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args, str(ROOT / "examples" / name)],
                          capture_output=True, text=True, timeout=60)


def test_parked_worker_example(tmp_path: Path) -> None:
    direct = _run_example("parked_worker.py")
    assert direct.returncode == 0, direct.stderr
    assert "gave up" in direct.stdout
    assert "parked: task" in direct.stderr and "'uploader'" in direct.stderr
    report = tmp_path / "report.json"
    base = ["--uvloop"] if BASE_LOOP == "uvloop" else []
    run = _run_example("parked_worker.py", "-m", "loopwatch", "run", *base, "--console", "off",
                       "--parked-after", "0.5", "--report", str(report))
    assert run.returncode == 0, run.stderr
    data = loopwatch.Report.from_json(report.read_text())
    (f,) = data.of_kind("parked")
    assert f.task is not None and f.task.name == "uploader"
    assert f.details["awaiting"] == "Event.wait" and f.details["awaited_by"]
    assert f.site is not None and f.site.function == "uploader"
    assert "storage_ready.wait()" in (ROOT / "examples" / "parked_worker.py").read_text(
    ).splitlines()[f.site.line - 1]


def test_deadlock_example(tmp_path: Path) -> None:
    direct = _run_example("deadlock.py")
    assert direct.returncode == 0, direct.stderr
    assert "startup failed" in direct.stdout
    assert "await_cycle: 2 tasks wait on each other in a cycle and none can finish until a " \
        "timeout ends a wait" in direct.stderr
    assert "(through asyncio.wait, timeout 2.5 s)" in direct.stderr
    report = tmp_path / "report.json"
    base = ["--uvloop"] if BASE_LOOP == "uvloop" else []
    run = _run_example("deadlock.py", "-m", "loopwatch", "run", *base, "--console", "off",
                       "--report", str(report))
    assert run.returncode == 0, run.stderr
    data = loopwatch.Report.from_json(report.read_text())
    (f,) = data.of_kind("await_cycle")
    assert [t["name"] for t in f.details["tasks"]] == ["start-database", "start-cache"]
