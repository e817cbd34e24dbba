"""A connection pool that leaks a task per request, and an export that leaves things behind.

Run it under loopwatch:

    loopwatch run examples/leaky_pool.py

It serves requests for about four seconds, then runs a small export on a loop it
manages by hand, and exits 0. Nothing fails, but memory would grow without end in
production: every ``acquire()`` starts a task that watches the connection and
never finishes. loopwatch compares snapshots of the live tasks once a second and
reports the ``create_task`` line whose tasks keep growing (``task_growth``; the
service starts its loop with ``loopwatch.run`` to ask for a short interval).

The export closes its loop by hand, and leaves three things behind: an async
generator it broke out of, whose ``finally`` (which gives the connection back)
never runs because nobody called ``shutdown_asyncgens()``
(``asyncgen_unfinalized``, at the line that started it; uvloop happens to run the
queued ``aclose()`` before it stops, so there it is finalized); a clean-up job
still running in the default executor (``executor_thread``: the interpreter waits
for it at exit); and a progress server it never closed (``unclosed_resource``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import loopwatch


class Connection:
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = asyncio.Event()

    async def query(self, sql: str) -> list[dict[str, int]]:
        await asyncio.sleep(0.001)
        return [{"id": n} for n in range(3)]


class Pool:
    def __init__(self, size: int) -> None:
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(Connection())

    async def acquire(self) -> Connection:
        conn = await self._free.get()
        # notice a connection the server drops while it is checked out
        asyncio.create_task(self._watch(conn))
        return conn

    async def _watch(self, conn: Connection) -> None:
        await conn.closed.wait()  # nobody ever sets it, and release() does not cancel us
        print(f"connection {conn.id} dropped by the server")

    def release(self, conn: Connection) -> None:
        self._free.put_nowait(conn)

    async def fetch_rows(self, sql: str) -> AsyncIterator[dict[str, int]]:
        conn = await self.acquire()
        try:
            for page in range(100):
                for row in await conn.query(f"{sql} OFFSET {page * 3}"):
                    yield row
        finally:
            self.release(conn)


async def handle_request(pool: Pool, n: int) -> int:
    conn = await pool.acquire()
    try:
        rows = await conn.query(f"SELECT * FROM orders WHERE user = {n}")
        return len(rows)
    finally:
        pool.release(conn)


async def serve(seconds: float) -> int:
    pool = Pool(size=5)
    served = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        served += sum(await asyncio.gather(*(handle_request(pool, n) for n in range(2))))
        await asyncio.sleep(0.1)
    return served


async def first_user(pool: Pool) -> dict[str, int]:
    async for row in pool.fetch_rows("SELECT * FROM users ORDER BY id"):
        return row  # leaves the generator (and its connection) behind
    raise LookupError("no users")


def prune_old_archives() -> None:
    time.sleep(0.3)  # deleting last week's archives from a slow disk


async def progress(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"export running\n")
    writer.close()


async def run_export(pool: Pool) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    await asyncio.start_server(progress, "127.0.0.1", 0)
    loop.run_in_executor(None, prune_old_archives)  # finishes on its own, some time
    return await first_user(pool)


def export() -> dict[str, int]:
    loop = asyncio.new_event_loop()
    try:
        pool = Pool(size=1)
        return loop.run_until_complete(run_export(pool))
    finally:
        loop.close()  # without shutdown_asyncgens() or shutdown_default_executor()


def main() -> None:
    rows = loopwatch.run(serve(4.2), growth_every=1.0, growth_min=20)
    print(f"served {rows} rows")
    print(f"exported from user {export()['id']}")


if __name__ == "__main__":
    main()
