"""A small account service over TCP whose handlers block the event loop.

    python examples/blocking_service.py
    loopwatch run examples/blocking_service.py

The service answers two commands, one line each: ``LOGIN user password`` checks the
password with PBKDF2 (600,000 rounds, as OWASP recommends) and ``PROFILE user``
reads the profile through the legacy store's synchronous client. Both run on the
loop thread, so while one client logs in, every other client waits. Four clients
connect at once; the service serves them all and exits. loopwatch reports each
time the loop was blocked (``stall``), with the line that blocked it and the task
that was running, read while the loop was still blocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Coroutine
from typing import Any

import loopwatch

SALT = b"per-user-salt"
USERS = {"ada": hashlib.pbkdf2_hmac("sha256", b"lovelace", SALT, 600_000)}


def password_ok(user: str, password: str) -> bool:
    stored = USERS.get(user, b"")
    # bug: 0.2 s or more of CPU on the loop thread
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, 600_000) == stored


def fetch_profile(user: str) -> str:
    """The legacy store's client: a synchronous network call."""
    time.sleep(0.15)  # bug: blocks the event loop
    return f"{user}: analytical engine programmer"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        command, *args = line.decode().split()
        if command == "LOGIN":
            reply = "OK" if password_ok(*args) else "DENIED"
        elif command == "PROFILE":
            reply = fetch_profile(args[0])
        else:
            reply = f"ERROR unknown command {command}"
        writer.write(reply.encode() + b"\n")
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port: int, password: str) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for request in (f"LOGIN ada {password}", "PROFILE ada"):
        writer.write(request.encode() + b"\n")
        await writer.drain()
        replies.append((await reader.readline()).decode().strip())
    writer.close()
    await writer.wait_closed()
    return replies


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        started = time.monotonic()
        replies = await asyncio.gather(*(client(port, pw) for pw in
                                         ("lovelace", "babbage", "lovelace", "hunter2")))
        took = time.monotonic() - started
    print(f"served {len(replies)} clients in {took:.1f} s: {[r[0] for r in replies]}")


def start(coro: Coroutine[Any, Any, None], **options: Any) -> None:
    """Run on a watched loop: the one `loopwatch run` provides, or our own."""
    if isinstance(asyncio.get_event_loop_policy(), loopwatch.WatchedEventLoopPolicy):
        asyncio.run(coro)
    else:
        loopwatch.run(coro, **options)


if __name__ == "__main__":
    start(main())
