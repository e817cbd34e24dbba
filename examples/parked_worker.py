"""A thumbnail pipeline whose uploader waits for a connection nobody opens.

    python examples/parked_worker.py
    loopwatch run --parked-after 0.5 examples/parked_worker.py

Two resizers take images from a queue and hand thumbnails to an uploader. The
uploader first waits for its storage connection to be ready, but the code that
opened it and set ``storage_ready`` was lost in a refactoring: the uploader
waits forever. The main task waits for the uploads with a timeout, gives up
after 1.5 s, and exits. loopwatch reports the uploader as ``parked`` on
``Event.wait``, at its await line, with main listed as awaiting it (main itself
only waits for a task, so it is not reported: the leaf is what matters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import loopwatch

IMAGES = [f"IMG_{n:04}.jpg" for n in range(8)]


async def resizer(images: asyncio.Queue[str], thumbnails: asyncio.Queue[str | None]) -> None:
    while True:
        name = await images.get()
        await asyncio.sleep(0.02)  # resizing
        await thumbnails.put(name.replace(".jpg", ".thumb.jpg"))
        images.task_done()


async def uploader(thumbnails: asyncio.Queue[str | None], storage_ready: asyncio.Event) -> int:
    await storage_ready.wait()  # bug: nothing sets it any more
    uploaded = 0
    while (name := await thumbnails.get()) is not None:
        await asyncio.sleep(0.01)  # uploading name
        print(f"uploaded {name}")
        uploaded += 1
    return uploaded


async def main() -> None:
    images: asyncio.Queue[str] = asyncio.Queue()
    thumbnails: asyncio.Queue[str | None] = asyncio.Queue()
    storage_ready = asyncio.Event()
    resizers = [asyncio.create_task(resizer(images, thumbnails), name=f"resizer-{i}")
                for i in range(2)]
    upload = asyncio.create_task(uploader(thumbnails, storage_ready), name="uploader")
    for name in IMAGES:
        images.put_nowait(name)
    await images.join()
    for task in resizers:
        task.cancel()
    await asyncio.gather(*resizers, return_exceptions=True)
    thumbnails.put_nowait(None)  # no more thumbnails
    try:
        uploaded = await asyncio.wait_for(upload, timeout=1.5)
    except asyncio.TimeoutError:
        print(f"gave up: {thumbnails.qsize() - 1} thumbnails were never uploaded")
    else:
        print(f"uploaded {uploaded} thumbnails")


def start(coro: Coroutine[Any, Any, None], **options: Any) -> None:
    """Run on a watched loop: the one `loopwatch run` provides, or our own."""
    if isinstance(asyncio.get_event_loop_policy(), loopwatch.WatchedEventLoopPolicy):
        asyncio.run(coro)
    else:
        loopwatch.run(coro, **options)


if __name__ == "__main__":
    start(main(), parked_after=0.5)
