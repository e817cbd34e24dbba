"""A signup handler that fires work and forgets it: three ways work gets lost.

Run it under loopwatch:

    loopwatch run examples/fire_and_forget.py

It handles three signups in about a tenth of a second and exits 0; everything
looks fine. But no welcome mail went out for bob (the task failed and nobody
looked at its exception), the audit log is empty (``audit()`` was called without
``await``, so its body never ran), and the task waiting for carol's e-mail
confirmation vanished (nothing kept a reference to it, so the garbage collector
took it in the middle of its ``await``). loopwatch reports each of them with the
line that started the work: ``unretrieved_exception``, ``never_awaited``,
``destroyed_pending``.
"""

from __future__ import annotations

import asyncio
import gc

AUDIT_LOG: list[str] = []


class MailError(Exception):
    pass


async def send_welcome(user: str) -> None:
    await asyncio.sleep(0.01)
    if user == "bob":
        raise MailError(f"mailbox of {user} is full")


async def audit(event: str) -> None:
    AUDIT_LOG.append(event)


async def wait_for_confirmation(user: str, confirmed: asyncio.Future[str]) -> None:
    token = await confirmed
    print(f"{user} confirmed with {token}")


async def signup(user: str) -> None:
    loop = asyncio.get_running_loop()
    asyncio.create_task(send_welcome(user))  # fire and forget
    audit(f"signup {user}")  # forgot the await
    confirmed: asyncio.Future[str] = loop.create_future()  # only the waiter holds it
    asyncio.create_task(wait_for_confirmation(user, confirmed))


async def main() -> None:
    for user in ("alice", "bob", "carol"):
        await signup(user)
    await asyncio.sleep(0.05)
    gc.collect()  # what the collector does on its own, sooner or later
    await asyncio.sleep(0.01)
    print(f"handled 3 signups; audit log: {AUDIT_LOG}")


if __name__ == "__main__":
    asyncio.run(main())
