"""Two services that wait for each other to start: a deadlock, ended by a timeout.

    python examples/deadlock.py
    loopwatch run examples/deadlock.py

At startup the database runs its migrations, which flush the cache, so it waits
for the cache service to be up; the cache warms itself from the database, so it
waits for the database. Neither can ever start. The database gives up after
its startup timeout, and the program exits with "startup failed". loopwatch
reports the cycle (``await_cycle``) while it lasts, with each task's await line.

(Without the timeout the program would hang; and cancelling tasks that wait
on each other makes CPython's Task.cancel() recurse until RecursionError, so a
real cycle also breaks asyncio.run's shutdown. loopwatch reports it before.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import loopwatch

STARTUP_TIMEOUT = 2.5


class App:
    def __init__(self) -> None:
        self.starting: dict[str, asyncio.Task[None]] = {}

    async def start_database(self) -> None:
        await asyncio.sleep(0.01)  # connect
        cache = self.starting["cache"]
        done, _ = await asyncio.wait({cache}, timeout=STARTUP_TIMEOUT)  # the migrations flush it
        if not done:
            raise TimeoutError(f"the cache did not start within {STARTUP_TIMEOUT} s")

    async def start_cache(self) -> None:
        await self.starting["database"]  # the cache warms itself from the database


async def main() -> None:
    app = App()
    app.starting["database"] = asyncio.create_task(app.start_database(), name="start-database")
    app.starting["cache"] = asyncio.create_task(app.start_cache(), name="start-cache")
    try:
        await asyncio.gather(*app.starting.values())
    except TimeoutError as exc:
        print(f"startup failed: {exc}")
    await asyncio.gather(*app.starting.values(), return_exceptions=True)


def start(coro: Coroutine[Any, Any, None], **options: Any) -> None:
    """Run on a watched loop: the one `loopwatch run` provides, or our own."""
    if isinstance(asyncio.get_event_loop_policy(), loopwatch.WatchedEventLoopPolicy):
        asyncio.run(coro)
    else:
        loopwatch.run(coro, **options)


if __name__ == "__main__":
    start(main())
