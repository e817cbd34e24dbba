"""The load generator of the echo benchmark: a separate process, loopback only.

Reads one JSON command a line on stdin and answers each with one JSON line on stdout:

    {"port": 45000, "connections": 50, "requests": 400, "size": 64, "deadline": 30}
    -> {"done": 20000, "errors": 0, "elapsed": 0.93}

It opens ``connections`` connections to 127.0.0.1:port at once; each sends
``requests`` messages of ``size`` bytes, one at a time, reading each echo back in full
before the next. The clock runs from the first connect to the last echo. The whole
round is bounded by ``deadline`` seconds: whatever is done by then is reported. EOF on
stdin ends the process. It runs on uvloop when it can, so that the server, not the
load generator, is the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def client(port: int, requests: int, payload: bytes, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        size = len(payload)
        for _ in range(requests):
            writer.write(payload)
            await reader.readexactly(size)
            counts[0] += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def one_round(cmd: dict[str, Any]) -> dict[str, Any]:
    port = int(cmd["port"])
    payload = b"x" * int(cmd.get("size", 64))
    counts = [0]
    start = time.perf_counter()
    jobs = [asyncio.ensure_future(client(port, int(cmd["requests"]), payload, counts))
            for _ in range(int(cmd["connections"]))]
    done, pending = await asyncio.wait(jobs, timeout=float(cmd.get("deadline", 30)))
    elapsed = time.perf_counter() - start
    for job in pending:
        job.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    errors = [repr(j.exception()) for j in done if not j.cancelled() and j.exception()]
    return {"done": counts[0], "errors": len(errors), "first_error": errors[:1],
            "timed_out": bool(pending), "elapsed": elapsed}


def main() -> None:
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            result = loop.run_until_complete(one_round(json.loads(line)))
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        loop.close()


if __name__ == "__main__":
    main()
