"""echo: a TCP echo server on loopback under load from a second process.

The server (asyncio streams: a task per connection) runs in this process; the load
generator (``echo_load.py``) is a separate process that opens 50 connections and
makes 600 request/response round trips of 64 bytes on each, bounded in count and in
time. Throughput is round trips per second, clocked by the load generator; the server's
CPU time per round trip (this process, every thread: loopwatch's watchdog and console
threads count) is measured too: on a busy machine the wall clock swings with other
processes, the CPU time much less. Server variants, in turns:
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
    Times,
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


async def serve(load: LoadGenerator, cmd: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """One round: the load generator's result, and this process's CPU seconds."""
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        start = Times.now()
        result = await loop.run_in_executor(None, load.round, {**cmd, "port": port})
        return result, start.since().cpu
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


def throughput(make: Callable[[], asyncio.AbstractEventLoop], load: LoadGenerator,
               cmd: dict[str, Any]) -> tuple[float, float]:
    """Round trips a second, and the server's CPU seconds per round trip."""
    loop = make()
    try:
        result, cpu = loop.run_until_complete(serve(load, cmd))
    finally:
        close_loop(loop)
    if result["errors"] or result["timed_out"] or not result["done"]:
        raise RuntimeError(f"echo round failed: {result}")
    return float(result["done"]) / float(result["elapsed"]), cpu / result["done"]


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
    cmd = {"connections": min(50, cfg.n(50)), "requests": cfg.n(600), "size": 64,
           "deadline": 60}
    total = cmd["connections"] * cmd["requests"]
    rounds = cfg.pick_rounds(9, 3)  # 3 variants: each is first, second and third alike
    tmp = tempfile.mkdtemp(prefix="lw-bench-")
    address = f"unix:{os.path.join(tmp, 'console.sock')}"
    load = LoadGenerator()
    try:
        with quiet_loopwatch():
            throughput(lambda: bare_loop(base), load, cmd)  # warm up, untimed
            variants: dict[str, Callable[[], tuple[float, float]]] = {
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
    rate = {k: [t for t, _ in v] for k, v in samples.items()}
    # The server's CPU per round trip, inverted: the throughput it would reach where it
    # had a CPU to itself. Steadier than the wall clock on a busy machine.
    cpu = {k: [1.0 / c for _, c in v] for k, v in samples.items()}
    details = {"round_trips": total, "rounds": rounds, **cmd,
               "req_per_s": {k: spread(v) for k, v in rate.items()},
               "cpu_us_per_round_trip": {k: spread([1e6 / x for x in v]) for k, v in cpu.items()}}
    figures = []
    for variant, label in (("watched", "watched"), ("console", "watched + idle console")):
        for clock, by in (("throughput", rate), ("server CPU per round trip, inverted", cpu)):
            name = f"{label} / bare {clock}"
            if variant not in by:
                figures.append(not_available(NAME, base, name, "x", console_note or "", TARGET))
                continue
            r = ratios(by, variant, "bare")
            figures.append(Figure(NAME, base, name, median(r), "x", TARGET, samples=r,
                                  details=details if variant == "watched" else {}))
    figures.append(Figure(NAME, base, f"bare loop throughput, {total:,} round trips",
                          median(rate["bare"]), "req/s"))
    figures.append(Figure(NAME, base, "bare loop server CPU per round trip",
                          1e6 / median(cpu["bare"]), "µs"))
    return figures


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
