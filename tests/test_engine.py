"""The engine: watched loops, task records, await chains and stragglers, on every way in."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import weakref

import anyio
import pytest

import loopwatch
from loopwatch import NotWatchedError, OptionsError

from .conftest import BASE_LOOP

IMPLEMENTATIONS = ("compiled", "python")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on the compiled per-task paths (loopwatch/_speedups.c) and on their
    Python versions, which are the fallback where the speedups were not built."""
    import loopwatch._loops as loops
    import loopwatch._records as records

    if request.param == "compiled":
        if records.speedups is None:
            pytest.skip("loopwatch._speedups is not built here (or LOOPWATCH_NO_SPEEDUPS is set)")
    else:
        monkeypatch.setattr(records, "speedups", None)
        monkeypatch.setattr(loops, "speedups", None)
    return str(request.param)


async def forever(event: asyncio.Event) -> None:
    await event.wait()


#: the stragglers, held the way a program holds its tasks: a pending task that nothing
#: holds can be garbage-collected at any moment, and is then (rightly) a
#: destroyed_pending finding besides the straggler
_held: set[asyncio.Task[None]] = set()


async def leave_straggler() -> int:
    task = asyncio.create_task(forever(asyncio.Event()), name="left-behind")
    _held.add(task)
    task.add_done_callback(_held.discard)
    await asyncio.sleep(0)
    return 42


def stragglers(w: loopwatch.Watcher) -> list[loopwatch.Finding]:
    return [f for f in w.findings() if f.kind == "straggler"]


def test_run_returns_result_and_reports_straggler() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> int:
        seen.append(loopwatch.watcher())
        return await leave_straggler()

    assert loopwatch.run(main(), loop=BASE_LOOP, log=False) == 42
    (finding,) = stragglers(seen[0])
    assert finding.task is not None and finding.task.name == "left-behind"
    assert finding.site is not None and finding.site.file == __file__
    assert finding.site.function.endswith("leave_straggler")
    assert finding.details["awaiting"] == "Event.wait"
    assert finding.details["parked_at"]["function"].endswith("forever")
    assert seen[0].base == BASE_LOOP


def test_run_propagates_exceptions_like_asyncio_run() -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        loopwatch.run(boom(), loop=BASE_LOOP, log=False)


def test_run_refuses_running_loop() -> None:
    async def outer() -> None:
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            loopwatch.run(coro, loop=BASE_LOOP)

    asyncio.run(outer())


def test_bad_options_are_clear() -> None:
    with pytest.raises(OptionsError, match="stack_depth"):
        loopwatch.loop_factory(stack_depth=-1)
    with pytest.raises(OptionsError, match="parked_after"):
        loopwatch.loop_factory(parked_after=float("nan"))
    with pytest.raises(OptionsError, match="unknown loopwatch option 'stak_depth'"):
        loopwatch.loop_factory(stak_depth=3)
    with pytest.raises(OptionsError, match="base loop"):
        loopwatch.loop_factory("trio")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
def test_asyncio_runner_with_loop_factory() -> None:
    factory = loopwatch.loop_factory(BASE_LOOP, log=False)
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(leave_straggler()) == 42
        w = loopwatch.watcher(runner.get_loop())
    assert [f.task.name for f in stragglers(w) if f.task] == ["left-behind"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> int:
        seen.append(loopwatch.watcher())
        return await leave_straggler()

    assert asyncio.run(main(), loop_factory=loopwatch.loop_factory(BASE_LOOP, log=False)) == 42
    assert len(stragglers(seen[0])) == 1


def test_anyio_run_with_loop_factory() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> int:
        seen.append(loopwatch.watcher())
        return await leave_straggler()

    factory = loopwatch.loop_factory(BASE_LOOP, log=False)
    assert anyio.run(main, backend="asyncio", backend_options={"loop_factory": factory}) == 42
    assert len(stragglers(seen[0])) == 1


def test_plain_loop_close_reports_stragglers(implementation: str) -> None:
    loop = loopwatch.loop_factory(BASE_LOOP, log=False)()
    loop.run_until_complete(leave_straggler())
    w = loopwatch.watcher(loop)
    assert not stragglers(w)
    loop.close()
    assert len(stragglers(w)) == 1
    assert w.closed


def test_policy_install_watches_new_loops() -> None:
    old = asyncio.get_event_loop_policy()
    try:
        loopwatch.install(BASE_LOOP, log=False)
        seen: list[loopwatch.Watcher] = []

        async def main() -> int:
            seen.append(loopwatch.watcher())
            return await leave_straggler()

        assert asyncio.run(main()) == 42
        assert len(stragglers(seen[0])) == 1
    finally:
        asyncio.set_event_loop_policy(old)


def test_attach_lists_existing_tasks_without_stacks(implementation: str) -> None:
    async def main() -> None:
        ev = asyncio.Event()
        before = asyncio.create_task(forever(ev), name="before")
        await asyncio.sleep(0)
        w = loopwatch.attach(log=False)
        assert loopwatch.attach() is w
        # (the task factory attach sets: the compiled fast path, or the Python one)
        factory = asyncio.get_running_loop().get_task_factory()
        assert getattr(factory, "__loopwatch__", False)
        assert (type(factory).__name__ == "FastCreateTask") == (implementation == "compiled")
        after = asyncio.create_task(forever(ev), name="after")
        await asyncio.sleep(0)
        infos = {i.name: i for i in w.tasks()}
        assert infos["before"].stack == ()
        assert infos["after"].site is not None and infos["after"].site.function.endswith("main")
        assert infos["after"].parent == infos["before"].id.replace(
            infos["before"].id, infos[asyncio.current_task().get_name()].id)  # type: ignore[union-attr]
        ev.set()
        await asyncio.gather(before, after)

    asyncio.run(main())


def test_watcher_of_unwatched_loop_is_an_error() -> None:
    async def main() -> None:
        with pytest.raises(NotWatchedError, match="not watched"):
            loopwatch.watcher()

    asyncio.run(main())
    with pytest.raises(NotWatchedError, match="needs a loop"):
        loopwatch.watcher()


def test_records_ids_parent_coro_and_get_coro(implementation: str) -> None:
    async def child() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        coro = child()
        task = asyncio.create_task(coro, name="kid")
        assert task.get_coro() is coro
        w = loopwatch.watcher()
        infos = {i.name: i for i in w.tasks()}
        me = infos[asyncio.current_task().get_name()]  # type: ignore[union-attr]
        kid = infos["kid"]
        assert kid.parent == me.id
        assert kid.coro.endswith("child")
        assert kid.id.startswith("T") and kid.number > me.number
        assert kid.site is not None and kid.site.function.endswith("main")
        assert kid.age is not None and kid.age >= 0
        await task

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_no_strong_reference_to_tasks(implementation: str) -> None:
    async def main() -> None:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        ref = weakref.ref(task)
        del task
        await asyncio.sleep(0)  # the handle that woke us holds the task until it returns
        gc.collect()
        assert ref() is None

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_task_dropped_by_a_returned_function_is_released(implementation: str) -> None:
    # create_task remembers the last creating frame to share its stack with the rest
    # of a batch; that must not keep the frame's locals (here the task) alive.
    def spawn() -> weakref.ref[asyncio.Task[None]]:
        task = asyncio.create_task(asyncio.sleep(0))
        return weakref.ref(task)

    async def main() -> None:
        ref = spawn()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
        assert ref() is None

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_a_frames_first_task_schedules_nothing_more(implementation: str) -> None:
    # The stack cache starts with a frame's second task: a loop that makes a task here
    # and there (a loop per test makes three) pays for no extra callback.
    async def main() -> None:
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        if ready is None:
            pytest.skip("the loop's ready queue is not visible (uvloop)")
        before = len(ready)
        first = asyncio.create_task(asyncio.sleep(0))
        assert len(ready) == before + 1  # the task's first step, nothing else
        second = asyncio.create_task(asyncio.sleep(0))
        assert len(ready) == before + 3  # its step, and letting go of the cached frame
        await asyncio.gather(first, second)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_batches_share_a_stack_and_callers_keep_their_own(implementation: str) -> None:
    async def work() -> None:
        await asyncio.sleep(0)

    def make(tag: str, n: int) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(work(), name=f"{tag}{i}") for i in range(n)]

    def from_a() -> list[asyncio.Task[None]]:
        return make("a", 3)

    def from_b() -> list[asyncio.Task[None]]:
        return make("b", 2)

    async def main() -> None:
        tasks = from_a() + from_b()
        infos = {i.name: i for i in loopwatch.watcher().tasks()}
        mine = [infos[t.get_name()] for t in tasks]
        callers = [[f.function.rsplit(".", 1)[-1] for f in i.stack] for i in mine]
        assert [c[c.index("make") - 1] for c in callers] == ["from_a"] * 3 + ["from_b"] * 2
        assert len({(i.site.file, i.site.line) for i in mine if i.site}) == 1
        assert all(i.site for i in mine)
        await asyncio.gather(*tasks)

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_history_keeps_outcomes(implementation: str) -> None:
    async def ok() -> int:
        return 1

    async def bad() -> None:
        raise ValueError("nope")

    async def main() -> None:
        await asyncio.create_task(ok(), name="ok")
        t = asyncio.create_task(bad(), name="bad")
        with pytest.raises(ValueError):
            await t
        del t
        await asyncio.sleep(0)
        gc.collect()
        w = loopwatch.watcher()
        done = {i.name: i for i in w.tasks(history=True) if i.state != "pending"}
        assert done["ok"].outcome == "result"
        assert done["bad"].outcome == "exception" and "ValueError: nope" in done["bad"].detail

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_existing_task_factory_is_chained_and_kwargs_forwarded() -> None:
    calls: list[dict[str, object]] = []

    def my_factory(loop, coro, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")

    async def read() -> str:
        return var.get()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(my_factory)
        assert loop.get_task_factory() is my_factory
        kwargs: dict[str, object] = {}
        if sys.version_info >= (3, 11):
            ctx = contextvars.copy_context()
            ctx.run(var.set, "inner")
            kwargs["context"] = ctx
        t = loop.create_task(read(), name="named", **kwargs)
        assert t.get_name() == "named"
        assert await t == ("inner" if kwargs else "outer")
        info = [i for i in loopwatch.watcher().tasks(history=False) if i.name == "named"]
        assert not info  # done
        assert calls
        t2 = loop.create_task(asyncio.Event().wait(), name="pending")
        await asyncio.sleep(0)
        (pinfo,) = [i for i in loopwatch.watcher().tasks() if i.name == "pending"]
        assert pinfo.site is not None and pinfo.site.function.endswith("main")
        t2.cancel()

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_eager_task_factory_stays_eager() -> None:
    order: list[str] = []

    async def child() -> None:
        order.append("child started")
        await asyncio.sleep(0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        t = asyncio.create_task(child())
        order.append("after create_task")
        assert order == ["child started", "after create_task"]
        await t
        del t  # the history holds tasks that finished and were released
        await asyncio.sleep(0)
        gc.collect()
        (info,) = [i for i in loopwatch.watcher().tasks(history=True) if i.coro.endswith("child")]
        assert info.site is not None and info.site.function.endswith("main")

    loopwatch.run(main(), loop=BASE_LOOP, log=False, history=10)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_tasks_finished_eagerly_are_recorded_and_reported(implementation: str) -> None:
    # CPython 3.12's Task.get_coro() crashes for a task that finished eagerly: the
    # history finalizer and findings must not call it.
    async def quick() -> int:
        return 1

    async def failing() -> None:
        raise ValueError("lost")

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        t = asyncio.create_task(quick(), name="quick")
        assert t.done()
        asyncio.create_task(failing(), name="failing")  # finished, its exception lost
        del t
        gc.collect()
        w = loopwatch.watcher()
        done = {i.name: i for i in w.tasks(history=True) if i.state != "pending"}
        assert done["quick"].outcome == "result"
        assert [f.kind for f in w.findings()] == ["unretrieved_exception"]

    loopwatch.run(main(), loop=BASE_LOOP, log=False, history=10)


def test_await_chain_follows_tasks_and_gather() -> None:
    async def leaf(ev: asyncio.Event) -> None:
        await ev.wait()

    async def middle(ev: asyncio.Event) -> None:
        await asyncio.create_task(leaf(ev), name="leaf")

    async def main() -> None:
        ev = asyncio.Event()
        mid = asyncio.create_task(middle(ev), name="middle")
        g = asyncio.gather(asyncio.create_task(asyncio.sleep(5), name="sleeper"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        w = loopwatch.watcher()
        infos = {i.name: i for i in w.tasks()}
        assert infos["middle"].awaiting is not None
        assert infos["middle"].awaiting.what == "task"
        assert infos["middle"].awaiting.waits_on == (infos["leaf"].number,)
        assert infos["leaf"].awaiting is not None and infos["leaf"].awaiting.what == "Event.wait"
        chain = [f.function for f in infos["leaf"].awaiting.frames]
        assert chain[0] == "main.<locals>.leaf" or chain[0].endswith("leaf")
        sleeper = infos["sleeper"].awaiting
        assert sleeper is not None and sleeper.what == "sleep" and sleeper.sleeping
        assert "s left" in sleeper.detail
        ev.set()
        await mid
        g.cancel()
        with pytest.raises(asyncio.CancelledError):
            await g

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_find_task_errors_name_the_live_ids() -> None:
    async def main() -> None:
        w = loopwatch.watcher()
        me = asyncio.current_task()
        assert w.find_task(f"T{me._lw_id}") is me  # type: ignore[union-attr]
        with pytest.raises(LookupError, match="no live task 'T999999'; live tasks: T"):
            w.find_task("T999999")

    loopwatch.run(main(), loop=BASE_LOOP, log=False)


def test_report_json_round_trip() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> int:
        seen.append(loopwatch.watcher())
        return await leave_straggler()

    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    report = seen[0].report()
    data = report.to_dict()
    assert data["schema"] == 1
    assert len(data["findings"]) == 1, [(x["kind"], x["message"]) for x in data["findings"]]
    (f,) = data["findings"]
    assert f["kind"] == "straggler"
    assert set(f) >= {"kind", "message", "task", "site", "stacks", "hint"}
    assert f["task"]["id"].startswith("T")
    for frame in f["stacks"]["created"] + f["stacks"]["await"]:
        assert set(frame) == {"file", "line", "function"}
        assert frame["file"].startswith("/")
    again = loopwatch.Report.from_json(report.to_json())
    assert again.to_dict() == data


def test_loop_factory_with_a_callable_base_attaches() -> None:
    if BASE_LOOP == "uvloop":
        import uvloop

        make = uvloop.new_event_loop
    else:
        make = asyncio.new_event_loop
    loop = loopwatch.loop_factory(make, log=False)()
    w = loopwatch.watcher(loop)
    assert w.attached
    loop.run_until_complete(leave_straggler())
    loop.close()
    assert [f.task.name for f in stragglers(w) if f.task] == ["left-behind"]


def test_a_released_watcher_lets_go_of_its_closed_loop() -> None:
    # The pytest plugin releases each test's watcher when the test ends: loop and
    # watcher must not hold each other then, so that the loop is freed by reference
    # counting alone, with no garbage collection (see _Garbage.settle).
    if BASE_LOOP == "uvloop":
        import uvloop

        make = uvloop.new_event_loop
    else:
        make = asyncio.new_event_loop

    async def leave_timer() -> None:
        asyncio.get_running_loop().call_later(60, print)
        await asyncio.sleep(0)

    gc.collect()
    gc.disable()
    try:
        loop = make()
        w = loopwatch.attach(loop, log=False)
        w.release()  # the loop is open: it is only stopped watching
        assert loopwatch.watcher(loop) is w
        loop.run_until_complete(leave_timer())
        loop.close()

        loop = make()
        plain = type(loop)
        w = loopwatch.attach(loop, log=False)
        loop.run_until_complete(leave_timer())
        loop.close()
        w.release()
        assert type(loop) is plain
        assert {"close", "call_exception_handler", "_lw_watcher"}.isdisjoint(vars(loop))
        assert loop.get_task_factory() is None
        report = w.report()
        assert [f.kind for f in report.findings] == ["dropped_callback"]
        assert report.loop == BASE_LOOP
        refs = [weakref.ref(loop), weakref.ref(w)]
        del loop, w
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


def test_tasks_survive_recording_failure(
        implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import loopwatch._loops as loops
    import loopwatch._records as records

    def broken(*args: object) -> object:
        raise RuntimeError("inside loopwatch")

    # (the Python path looks at frames through _getframe; both ask _current_task for
    # the parent)
    monkeypatch.setattr(loops, "_getframe", broken)
    monkeypatch.setattr(loops, "_current_task", broken)
    monkeypatch.setattr(records, "_current_task", broken)  # (the compiled path's)

    async def main() -> int:
        return await asyncio.create_task(asyncio.sleep(0, 7), name="seven")

    assert loopwatch.run(main(), loop=BASE_LOOP, log=False) == 7


def test_a_keyboard_interrupt_while_recording_reaches_the_program(
        implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A signal handler can run inside what the recording calls: its exception is the
    # program's, not one of loopwatch's own to swallow.
    import loopwatch._loops as loops
    import loopwatch._records as records

    def interrupted(*args: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(loops, "_current_task", interrupted)
    monkeypatch.setattr(records, "_current_task", interrupted)  # (the compiled path's)
    loop = loopwatch.loop_factory(BASE_LOOP, log=False)()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.create_task(asyncio.sleep(0))
        # The task was made and scheduled before the interrupt: it still runs.
        done = loop.create_future()
        loop.call_soon(loop.call_soon, done.set_result, None)
        loop.run_until_complete(done)
        assert not asyncio.all_tasks(loop)
    finally:
        loop.close()


def test_the_compiled_speedups_are_built_where_a_compiler_is() -> None:
    # The spawn figure (docs/benchmarks.md) depends on them; a build that quietly
    # fell back to Python would only show there.
    import os
    import shlex
    import shutil
    import sysconfig

    import loopwatch._records as records

    if os.environ.get("LOOPWATCH_NO_SPEEDUPS"):
        pytest.skip("LOOPWATCH_NO_SPEEDUPS is set")
    compiler = shlex.split(sysconfig.get_config_var("LDSHARED") or "")[:1]
    if not compiler or shutil.which(compiler[0]) is None:
        pytest.skip("no C compiler here: loopwatch runs on its Python paths")
    assert records.speedups is not None


_SAME_RECORDS = """
import asyncio, contextvars, gc, json, sys
import loopwatch

async def leaf(n):
    await asyncio.sleep(0)
    return n

async def boom():
    raise ValueError("boom")

async def hang():
    await asyncio.Event().wait()

def spawn_batch():
    return [asyncio.create_task(leaf(i)) for i in range(3)]

async def main():
    loop = asyncio.get_running_loop()
    t1 = asyncio.create_task(leaf(1), name="named")
    if sys.version_info >= (3, 11):
        t2 = loop.create_task(leaf(2), context=contextvars.copy_context())
    else:
        t2 = loop.create_task(leaf(2))
    t3 = asyncio.ensure_future(leaf(3))
    batch = spawn_batch()
    t4 = asyncio.create_task(boom())
    await asyncio.gather(t1, t2, t3, *batch, t4, return_exceptions=True)
    loop.call_soon(loop.create_task, leaf(5))
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leaf(6), name="in-group")
    await asyncio.sleep(0)
    c = asyncio.create_task(hang())
    await asyncio.sleep(0)
    c.cancel()
    await asyncio.sleep(0)
    asyncio.create_task(hang())  # dropped while pending: destroyed
    await asyncio.sleep(0)
    del t1, t2, t3, t4, batch, c
    gc.collect()
    await asyncio.sleep(0)
    gc.collect()
    w = loopwatch.watcher()
    out = []
    for i in w.tasks(history=True):
        out.append([i.number, i.name, i.coro, i.state, getattr(i, "outcome", None),
                    getattr(i, "detail", None), i.parent,
                    [(f.function, f.line) for f in i.stack]])
    print(json.dumps(out))

loopwatch.run(main(), loop=sys.argv[1], log=False)
"""


def test_compiled_and_python_paths_record_the_same(tmp_path: object) -> None:
    import json
    import os
    import pathlib
    import subprocess

    import loopwatch._records as records

    if records.speedups is None:
        pytest.skip("loopwatch._speedups is not built here (or LOOPWATCH_NO_SPEEDUPS is set)")
    script = pathlib.Path(str(tmp_path)) / "records.py"
    script.write_text(_SAME_RECORDS)
    runs = []
    for pure in ("", "1"):
        env = {**os.environ, "LOOPWATCH_NO_SPEEDUPS": pure, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, str(script), BASE_LOOP], capture_output=True,
                              text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.splitlines()[-1]))
    compiled, python = runs
    # (ids are numbers from one counter; the first task of each run is the same one)
    for rows in runs:
        first = rows[0][0]
        for row in rows:
            row[0] -= first
            if row[6] is not None:
                row[6] = int(row[6][1:]) - first
    assert compiled == python
    outcomes = {(row[2].rsplit(".", 1)[-1], row[4]) for row in compiled}
    assert {("leaf", "result"), ("boom", "exception"), ("hang", "cancelled"),
            ("hang", "destroyed")} <= outcomes
    named = [row for row in compiled if row[1] == "named"]
    assert named and named[0][7][-1][0].endswith("main")
