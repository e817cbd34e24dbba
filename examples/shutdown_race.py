"""A service with a metrics thread, and the "Event loop is closed" mystery at shutdown.

Run it under loopwatch:

    loopwatch run examples/shutdown_race.py

It runs for about half a second and exits 0. Its log ends with a warning that
nobody can place: "could not deliver the last batch: Event loop is closed". The
metrics thread flushes its last batch into the loop after ``asyncio.run`` has
closed it (it is told to stop only once ``asyncio.run`` returns), and a delayed
cache flush scheduled with ``call_later`` is silently dropped when the loop
closes. loopwatch names both lines: the ``call_soon_threadsafe`` in the metrics
thread (``post_close_call``, with the thread's name) and the ``call_later`` that
scheduled the flush (``dropped_callback``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

log = logging.getLogger("shop")


class Metrics:
    """Collects samples in a thread and hands them to the loop in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: list[list[float]]) -> None:
        self.loop = loop
        self.sink = sink
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="metrics-flusher")

    def run(self) -> None:
        batch: list[float] = []
        while not self.stopping.wait(0.02):
            batch.append(time.monotonic())
            if len(batch) >= 5:
                self.deliver(batch)
                batch = []
        self.deliver(batch)  # the last batch, on the way out

    def deliver(self, batch: list[float]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.sink.append, batch)
        except RuntimeError as exc:
            log.warning("could not deliver the last batch: %s", exc)


class Cache:
    def __init__(self) -> None:
        self.dirty: set[str] = set()

    def touch(self, key: str) -> None:
        if not self.dirty:
            # write the dirty keys out a little later, in one go
            asyncio.get_running_loop().call_later(2.0, self.flush)
        self.dirty.add(key)

    def flush(self) -> None:
        log.info("flushing %d keys", len(self.dirty))
        self.dirty.clear()


async def serve(metrics_sink: list[list[float]]) -> Metrics:
    metrics = Metrics(asyncio.get_running_loop(), metrics_sink)
    metrics.thread.start()
    cache = Cache()
    for request in range(20):
        cache.touch(f"user:{request % 7}")
        await asyncio.sleep(0.02)
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    batches: list[list[float]] = []
    metrics = asyncio.run(serve(batches))
    metrics.stopping.set()  # too late: the loop is already closed
    metrics.thread.join()
    log.info("served; %d metric batches delivered", len(batches))


if __name__ == "__main__":
    main()
