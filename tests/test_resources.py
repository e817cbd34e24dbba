"""executor_thread, asyncgen_unfinalized, unclosed_resource; and clean programs give nothing."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import loopwatch

from ._sites import marked_line, new_loop, of_kind, site_checker
from .conftest import BASE_LOOP


def line_of(marker: str) -> int:
    return marked_line(__file__, marker)


assert_site = site_checker(__file__)

MINE = ("post_close_call", "dropped_callback", "never_awaited", "unretrieved_exception",
        "destroyed_pending", "executor_thread", "asyncgen_unfinalized", "unclosed_resource",
        "task_growth")










async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5.0
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


# -- executor_thread -------------------------------------------------------------------


def test_executor_job_still_running_at_close() -> None:
    started = threading.Event()
    release = threading.Event()
    threads: list[threading.Thread] = []

    def blocking_io() -> None:
        threads.append(threading.current_thread())
        started.set()
        release.wait(10)

    async def main() -> None:
        asyncio.get_running_loop().run_in_executor(None, blocking_io)  # L:submit
        await until(started.is_set)

    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(main())
    loop.close()  # by hand, without shutdown_default_executor
    release.set()
    threads[0].join(5)
    (finding,) = of_kind(w, "executor_thread")
    assert_site(finding.site, "main", "submit")
    assert finding.details["thread"] == threads[0].name
    assert finding.details["func"].endswith("blocking_io")
    assert f"thread {threads[0].name!r} was still running" in finding.message


def test_to_thread_points_at_the_await() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)

    async def worker() -> None:
        await asyncio.to_thread(slow)  # L:to-thread

    async def main() -> None:
        asyncio.create_task(worker())
        await until(started.is_set)

    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(main())
    loop.close()
    release.set()
    (finding,) = of_kind(w, "executor_thread")
    assert_site(finding.site, "worker", "to-thread")


def test_finished_executor_jobs_are_not_findings() -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> int:
        seen.append(loopwatch.watcher())
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(None, sum, [1, 2])
        b = await asyncio.to_thread(len, "abc")
        return a + b

    assert loopwatch.run(main(), loop=BASE_LOOP, log=False) == 6
    assert of_kind(seen[0], "executor_thread") == []


# -- asyncgen_unfinalized ---------------------------------------------------------------


cleaned: list[str] = []


async def rows(name: str) -> AsyncIterator[int]:
    try:
        for n in range(100):
            yield n
            await asyncio.sleep(0)
    finally:
        cleaned.append(name)


def test_async_generator_kept_alive_and_never_finalized() -> None:
    kept: list[Any] = []

    async def main() -> None:
        async for row in (gen := rows("kept")):  # L:kept
            if row == 2:
                kept.append(gen)
                break

    cleaned.clear()
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(main())
    loop.close()  # by hand, without shutdown_asyncgens
    (finding,) = of_kind(w, "asyncgen_unfinalized")
    assert_site(finding.site, "main", "kept")
    assert finding.details["generator"] == f"{__name__}.rows"
    assert cleaned == []
    kept.clear()


@pytest.mark.filterwarnings("ignore:coroutine method 'aclose' of:RuntimeWarning")  # 3.13+
def test_async_generator_dropped_at_the_end_and_its_aclose_never_ran() -> None:
    async def main() -> int:
        async for row in rows("dropped"):  # L:dropped
            if row == 1:
                return row  # the generator is finalized here; its aclose() is queued
        return -1

    cleaned.clear()
    loop = new_loop()
    w = loopwatch.watcher(loop)
    assert loop.run_until_complete(main()) == 1
    loop.close()
    found = of_kind(w, "asyncgen_unfinalized")
    if BASE_LOOP == "uvloop":  # uvloop runs the queued aclose() before it stops
        assert cleaned == ["dropped"] and found == []
        return
    (finding,) = found  # asyncio stops first: the aclose() task never ran
    assert_site(finding.site, "main", "dropped")
    assert cleaned == []
    # The discarded aclose() must go under this test's filter (the watcher's history
    # holds the coroutine of the aclose task that was destroyed pending).
    del loop, w, finding, found
    gc.collect()


def test_async_generators_finalized_by_the_runner_are_not_findings() -> None:
    seen: list[loopwatch.Watcher] = []
    kept: list[Any] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        async for row in rows("runner-dropped"):
            if row == 1:
                break
        gen = rows("runner-kept")
        kept.append(gen)
        await gen.__anext__()
        async for _ in rows("exhausted"):
            pass

    cleaned.clear()
    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    assert of_kind(seen[0], "asyncgen_unfinalized") == []
    assert sorted(cleaned) == ["exhausted", "runner-dropped", "runner-kept"]
    kept.clear()


# -- unclosed_resource -------------------------------------------------------------------


async def ignore_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_server_and_connection_left_open_at_close() -> None:
    kept: list[Any] = []

    async def main() -> None:
        server = await asyncio.start_server(ignore_client, "127.0.0.1", 0)  # L:server
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # L:client
        kept.extend([server, writer])
        await asyncio.sleep(0.01)

    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(main())
    loop.close()
    found = of_kind(w, "unclosed_resource")
    servers = [f for f in found if f.details["resource"] == "server"]
    clients = [f for f in found if f.details["opened_with"] == "create_connection"]
    assert len(servers) == 1 and len(clients) == 1, [f.message for f in found]
    assert_site(servers[0].site, "main", "server")
    assert "server listening on 127.0.0.1:" in servers[0].message
    assert_site(clients[0].site, "main", "client")
    if BASE_LOOP == "asyncio":  # the connection the server accepted, seen in _transports
        (accepted,) = [f for f in found if f not in servers + clients]
        assert accepted.site is not None and accepted.site.function == "ignore_client"
    kept.clear()
    gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_resource_warnings_on_for_loopwatch_only() -> None:
    """resource_warnings=True (loopwatch run): connections garbage-collected while open are
    found; the program, whose filters ignore ResourceWarning, sees nothing."""
    shown: list[Any] = []
    original = warnings.showwarning

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        shown.append(message)

    warnings.showwarning = show
    try:
        async def main() -> None:
            server = await asyncio.start_server(ignore_client, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # L:dropped-conn
            writer.transport.pause_reading()
            del reader, writer
            await asyncio.sleep(0.01)
            gc.collect()
            server.close()
            await server.wait_closed()

        loop = new_loop(resource_warnings=True)
        w = loopwatch.watcher(loop)
        loop.run_until_complete(main())
        loop.close()
        gc.collect()
        found = of_kind(w, "unclosed_resource")
        assert found, w.all_notes()
        assert all("ResourceWarning" in f.message or f.details["seen"] == "loop close"
                   for f in found)
        (dropped,) = [f for f in found if f.details["seen"] == "ResourceWarning"
                      and f.details["opened_with"] == "create_connection"]
        assert_site(dropped.site, "main", "dropped-conn")
        assert "garbage-collected" in dropped.message
        # the server's side of it: one finding, however many warnings it gave
        assert len(found) == 2, [f.message for f in found]
        assert shown == []
        w.close()
        assert not any(getattr(f[1], "pattern", "") == "(?#loopwatch)" for f in warnings.filters)
    finally:
        warnings.showwarning = original


def test_resource_warnings_the_program_enabled_are_seen_and_still_shown() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", ResourceWarning)

        async def main() -> None:
            server = await asyncio.start_server(ignore_client, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # L:enabled
            writer.transport.pause_reading()
            del reader, writer
            await asyncio.sleep(0.01)
            gc.collect()
            server.close()
            await server.wait_closed()

        loop = new_loop()
        w = loopwatch.watcher(loop)
        loop.run_until_complete(main())
        loop.close()
        gc.collect()
    assert any(str(r.message).startswith("unclosed") for r in record)
    dropped = [f for f in of_kind(w, "unclosed_resource") if f.details["seen"] == "ResourceWarning"]
    assert dropped and any(f.site is not None and f.site.line == line_of("enabled")
                           for f in dropped)


# -- clean programs ----------------------------------------------------------------------


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(100)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def tcp_server_shut_down_properly() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.read(100) == b"ping"
        writer.close()
        await writer.wait_closed()


async def cancel_then_await() -> None:
    task = asyncio.create_task(asyncio.sleep(30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def wait_for_timeouts() -> None:
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 0.001)
    if sys.version_info >= (3, 11):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.001):
                await asyncio.sleep(1)


async def generators_and_executor() -> None:
    async for row in rows("clean"):
        if row == 1:
            break
    await asyncio.to_thread(sum, [1])


CLEAN: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "tcp": tcp_server_shut_down_properly,
    "cancel": cancel_then_await,
    "wait_for": wait_for_timeouts,
    "generators": generators_and_executor,
}


@pytest.mark.parametrize("program", sorted(CLEAN))
def test_clean_programs_give_no_findings(program: str) -> None:
    seen: list[loopwatch.Watcher] = []

    async def main() -> None:
        seen.append(loopwatch.watcher())
        await CLEAN[program]()

    loopwatch.run(main(), loop=BASE_LOOP, log=False)
    gc.collect()
    assert [f.message for f in seen[0].findings() if f.kind in MINE] == []


def test_anyio_task_groups_give_no_findings() -> None:
    seen: list[loopwatch.Watcher] = []

    async def child(n: int) -> None:
        await anyio.sleep(0.001 * n)

    async def main() -> None:
        seen.append(loopwatch.watcher())
        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(child, n)
        with anyio.move_on_after(0.001):
            await anyio.sleep(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 30)
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

    anyio.run(main, backend_options={"loop_factory": loopwatch.loop_factory(BASE_LOOP, log=False)})
    gc.collect()
    assert [f.message for f in seen[0].findings() if f.kind in MINE] == []
