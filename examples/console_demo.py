"""A small service to try the console on: workers, a stuck task, a loop that blocks.

Run it, then look inside from another terminal::

    python examples/console_demo.py                 # console at unix:/tmp/loopwatch-demo.sock
    loopwatch ps unix:/tmp/loopwatch-demo.sock
    loopwatch top unix:/tmp/loopwatch-demo.sock
    nc -U /tmp/loopwatch-demo.sock                  # then type: help

or give another address: ``python examples/console_demo.py tcp:127.0.0.1:7070``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import loopwatch


async def worker(n: int, jobs: asyncio.Queue[int]) -> None:
    while True:
        job = await jobs.get()
        await asyncio.sleep(0.05 * job)
        jobs.task_done()


async def wait_for_reply(reply: asyncio.Event) -> None:
    await reply.wait()  # nobody ever sets it: this task is parked


async def producer(jobs: asyncio.Queue[int]) -> None:
    n = 0
    while True:
        n += 1
        await jobs.put(n % 5)
        await asyncio.sleep(0.2)
        if n % 25 == 0:
            time.sleep(0.3)  # noqa: ASYNC251  (a blocking call on the loop: a stall)


async def main() -> None:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    tasks = [asyncio.create_task(worker(n, jobs), name=f"worker-{n}") for n in range(3)]
    tasks.append(asyncio.create_task(producer(jobs), name="producer"))
    tasks.append(asyncio.create_task(wait_for_reply(asyncio.Event()), name="reply-waiter"))
    print(f"console at {loopwatch.watcher().console.address}", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "unix:/tmp/loopwatch-demo.sock"
    loopwatch.run(main(), console=address, parked_after=2.0, log=False)
