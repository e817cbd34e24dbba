"""An order-processing service with a background price refresher, and five quiet bugs.

Run it under loopwatch (``make demo`` does):

    loopwatch run --parked-after 0.5 examples/demo.py

It takes about two seconds and exits 0, as the service itself would: nothing
crashes, every order is charged. loopwatch finds what is wrong anyway: the loop
blocked by a synchronous call, a reservation parked forever on an event nobody
sets, an audit coroutine never awaited, a notification task whose exception
nobody retrieved, and tasks still running when the loop shut down.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from dataclasses import dataclass


@dataclass
class Order:
    id: int
    sku: str
    quantity: int
    region: str


ORDERS = [
    Order(1, "apple", 4, "eu"),
    Order(2, "pear", 12, "eu"),
    Order(3, "plum", 30, "eu"),
]


class PriceCache:
    """Prices, refreshed in the background."""

    def __init__(self) -> None:
        self.prices = {"apple": 1.25, "pear": 0.80, "plum": 2.10}

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.prices = {sku: round(p * random.uniform(0.98, 1.02), 2)
                           for sku, p in self.prices.items()}


@functools.lru_cache
def tax_rate(region: str) -> float:
    """The legacy tax service's client: a synchronous HTTP call, cached."""
    time.sleep(0.3)  # bug: blocks the event loop (stall)
    return {"eu": 0.20, "us": 0.07}.get(region, 0.0)


async def audit_log(order: Order, total: float) -> None:
    await asyncio.sleep(0)  # writes to the audit store


async def notify_fraud_team(order: Order) -> None:
    raise ConnectionError(f"fraud-alerts.internal refused the alert for order {order.id}")


class Warehouse:
    def __init__(self) -> None:
        self.acks: dict[int, asyncio.Event] = {}

    async def reserve(self, order: Order) -> None:
        ack = self.acks.setdefault(order.id, asyncio.Event())
        await ack.wait()  # bug: nothing ever acknowledges a reservation (parked)


async def process(order: Order, cache: PriceCache, warehouse: Warehouse) -> float:
    total = round(cache.prices[order.sku] * order.quantity * (1 + tax_rate(order.region)), 2)
    if order.id == 2:
        audit_log(order, total)  # bug: the coroutine is never awaited
    if total > 50:
        asyncio.create_task(notify_fraud_team(order))  # bug: its failure is never seen
    if order.quantity > 20:
        # bug: the reservation is never awaited or cancelled
        asyncio.create_task(warehouse.reserve(order), name=f"reserve-{order.id}")
    return total


async def worker(name: str, queue: asyncio.Queue[Order], cache: PriceCache,
                 warehouse: Warehouse) -> None:
    while True:
        order = await queue.get()
        try:
            total = await process(order, cache, warehouse)
            print(f"{name}: order {order.id} ({order.quantity} x {order.sku}) charged {total}")
        finally:
            queue.task_done()


async def main() -> None:
    cache = PriceCache()
    asyncio.create_task(cache.refresh_forever(), name="price-refresher")  # bug: never stopped
    warehouse = Warehouse()
    queue: asyncio.Queue[Order] = asyncio.Queue()
    workers = [asyncio.create_task(worker(f"worker-{i}", queue, cache, warehouse))
               for i in (1, 2)]
    for order in ORDERS:
        queue.put_nowait(order)
    await queue.join()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await asyncio.sleep(0.8)  # a grace period for in-flight notifications
    print("all orders processed")


if __name__ == "__main__":
    asyncio.run(main())
