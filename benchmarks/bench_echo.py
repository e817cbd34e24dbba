"""echo: a TCP echo server on loopback under load from a second process.

The server (asyncio streams: a task per connection) runs in this process; the load
generator (``echo_load.py``) is a separate process that opens 50 connections and
makes 400 request/response round trips of 64 bytes on each, bounded in count and in
time. Throughput is round trips per second, clocked by the load generator. Server
variants, in turns:
- bare: the base loop;
- watched: ``loopwatch.loop_factory(base)()`` at default options, so with every
  detector that has landed (watchdog, parked scan, post-close hooks, exception
  handler...);
- watched + console: the same with the console server listening, idle, on a Unix
  socket (``console="unix:..."``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from _harness import (
    Config,
    Figure,
    alternate,
    bare_loop,
    close_loop,
    here,
    median,
    module_missing,
    not_available,
    quiet_loopwatch,
    ratios,
    spread,
    watched_loop,
)

NAME = "echo"
TITLE = "TCP echo server throughput under load"

TARGET = (">=", 0.97)


class LoadGenerator:
    """The load generator process, kept for every round."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, here("echo_load.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def round(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(load: LoadGenerator, cmd: dict[str, Any]) -> dict[str, Any]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, load.round, {**cmd, "port": port})
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


def throughput(make: Callable[[], asyncio.AbstractEventLoop], load: LoadGenerator,
               cmd: dict[str, Any]) -> float:
    loop = make()
    try:
        result = loop.run_until_complete(serve(load, cmd))
    finally:
        close_loop(loop)
    if result["errors"] or result["timed_out"]:
        raise RuntimeError(f"echo round failed: {result}")
    return float(result["done"]) / float(result["elapsed"])


def console_problem(base: str, address: str) -> str | None:
    """Why a watched loop with a console cannot be made here, or None."""
    missing = module_missing("loopwatch.console")
    if missing:
        return f"the console has not landed ({missing})"
    try:
        loop = watched_loop(base, console=address)
    except Exception as exc:
        return f"a loop with a console cannot be made: {type(exc).__name__}: {exc}"
    close_loop(loop)
    return None


def run(base: str, cfg: Config) -> list[Figure]:
    cmd = {"connections": min(50, cfg.n(50)), "requests": cfg.n(400), "size": 64,
           "deadline": 60}
    total = cmd["connections"] * cmd["requests"]
    rounds = cfg.pick_rounds(5, 2)
    tmp = tempfile.mkdtemp(prefix="lw-bench-")
    address = f"unix:{os.path.join(tmp, 'console.sock')}"
    load = LoadGenerator()
    try:
        with quiet_loopwatch():
            throughput(lambda: bare_loop(base), load, cmd)  # warm up, untimed
            variants: dict[str, Callable[[], float]] = {
                "bare": lambda: throughput(lambda: bare_loop(base), load, cmd),
                "watched": lambda: throughput(lambda: watched_loop(base), load, cmd),
            }
            console_note = console_problem(base, address)
            if console_note is None:
                variants["console"] = lambda: throughput(
                    lambda: watched_loop(base, console=address), load, cmd)
            samples = alternate(variants, rounds)
    finally:
        load.close()
        try:
            os.rmdir(tmp)
        except OSError:
            pass
    details = {"round_trips": total, "rounds": rounds, **cmd,
               "req_per_s": {k: spread(v) for k, v in samples.items()}}
    r = ratios(samples, "watched", "bare")
    figures = [
        Figure(NAME, base, f"watched / bare throughput, {total:,} round trips", median(r), "x",
               TARGET, samples=r, details=details),
    ]
    name = "watched + idle console / bare throughput"
    if "console" in samples:
        r = ratios(samples, "console", "bare")
        figures.append(Figure(NAME, base, name, median(r), "x", TARGET, samples=r))
    else:
        figures.append(not_available(NAME, base, name, "x", console_note or "", TARGET))
    figures.append(Figure(NAME, base, "bare loop throughput", median(samples["bare"]), "req/s"))
    return figures


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
