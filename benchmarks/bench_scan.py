"""scan: reading 100,000 live tasks: a parked scan, ``Watcher.tasks()``, ``ps --json``.

100,000 tasks are left parked on one ``asyncio.Event`` on a watched loop at default
options, plus an idle console on a Unix socket. Then, timed:
- one parked scan: the parked detector's ``scan`` (what the watchdog thread runs
  about once a second), or ``Watcher.observe`` over every task before that detector
  landed; five scans, from the loop thread while the loop is paused in a coroutine,
  by the wall clock and by the loop thread's CPU time;
- the same scan when every task has waited past ``parked_after`` (a loop made with
  ``parked_after=0.05``): the scan then also reads await chains and makes findings;
- ``Watcher.tasks()``: every task as a ``TaskInfo``;
- ``ps`` as a JSON request over the console (``{"cmd": "ps"}``, what ``loopwatch ps
  PID --json`` sends) by a client in a process of its own, as a user's client is, from
  connecting until the whole reply is read and decoded with ``json.loads``, while the
  loop runs; three requests (two when they take over 3 s), with a pause after each for
  the console's cool-down. (A client thread inside the watched process would pay for
  what no user's client does: its decoding shares the GIL with the watchdog's scans
  and every garbage collection walks the 100,000 tasks);
  also the CPU seconds that costs: the watched process's while the client runs, and the
  client's for its request (wall times on a busy machine include waiting for a CPU);
- the whole ``loopwatch ps TARGET --json`` command into a pipe, from starting the
  process (the interpreter's start and imports included) until it exits;
- for scale, ``asyncio.all_tasks()`` on the bare loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _harness import (
    Config,
    Figure,
    bare_loop,
    close_loop,
    median,
    module_missing,
    not_available,
    parked_scan,
    quiet_loopwatch,
    watched_loop,
)

NAME = "scan"
TITLE = "reading 100,000 live tasks"

SCAN_TARGET = ("<", 0.2)
PS_TARGET = ("<", 1.0)


async def parked(event: asyncio.Event) -> None:
    await event.wait()


async def park(n: int) -> tuple[asyncio.Event, list[asyncio.Task[None]]]:
    event = asyncio.Event()
    create_task = asyncio.create_task
    tasks = [create_task(parked(event)) for _ in range(n)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return event, tasks


async def release(event: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    event.set()
    await asyncio.gather(*tasks)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ps_json(path: str, timeout: float = 60.0) -> tuple[float, int]:
    """One ``ps`` JSON request over the console at ``path``: seconds, tasks listed."""
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b'{"id": 1, "cmd": "ps", "args": {}}\n')
        with sock.makefile("rb") as f:
            while True:
                raw = f.readline()
                if not raw:
                    raise RuntimeError("the console closed the connection without answering")
                if raw.startswith(b"{"):
                    reply = json.loads(raw)
                    if reply.get("id") == 1:
                        break
    elapsed = time.perf_counter() - start
    if not reply.get("ok"):
        raise RuntimeError(f"ps failed: {reply.get('error')}")
    result = reply["result"]
    rows = result.get("tasks", result) if isinstance(result, dict) else result
    return elapsed, len(rows) if isinstance(rows, list) else -1


#: runs ps_json in a fresh interpreter: prints the seconds, the tasks listed, and the
#: CPU seconds the client spent on them
_CLIENT = ("import sys, time; sys.path.insert(0, sys.argv[1]); from bench_scan import ps_json; "
           "c = time.process_time(); took, n = ps_json(sys.argv[2]); "
           "print(took, n, time.process_time() - c)")
_HERE = os.path.dirname(os.path.abspath(__file__))

#: CPU seconds of each ps_json_in_child: the watched process (console, and whatever
#: else ran in it meanwhile) and the client, together
ps_cpu: list[float] = []


def ps_json_in_child(path: str) -> tuple[float, int]:
    """``ps_json`` run by a client process of its own (its start is not timed)."""
    cpu = time.process_time()
    done = subprocess.run([sys.executable, "-c", _CLIENT, _HERE, path], capture_output=True,
                          text=True, timeout=120)
    cpu = time.process_time() - cpu
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"the client failed: {lines[-1]}")
    took, count, client_cpu = done.stdout.split()
    ps_cpu.append(cpu + float(client_cpu))
    return float(took), int(count)


def ps_command(path: str) -> tuple[float, int]:
    """``loopwatch ps unix:PATH --json`` into a pipe, from start to exit: seconds, tasks
    listed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "loopwatch", "ps", f"unix:{path}", "--json"],
                          capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"loopwatch ps failed: {done.stderr.decode(errors='replace')}")
    return elapsed, len(json.loads(done.stdout)["tasks"])


async def scan_times(scan: Callable[[], Any], rounds: int) -> tuple[list[float], list[float]]:
    """Wall seconds of each scan, and the loop thread's CPU seconds of each."""
    wall, cpu = [], []
    for _ in range(rounds):
        c0 = time.thread_time()
        wall.append(timed(scan))
        cpu.append(time.thread_time() - c0)
        await asyncio.sleep(0.01)
    return wall, cpu


async def ps_times(loop: asyncio.AbstractEventLoop, path: str, rounds: int,
                   ask: Callable[[str], tuple[float, int]] = ps_json_in_child,
                   ) -> tuple[list[float], list[int], str]:
    """``ps`` requests made by ``ask`` while the loop runs: seconds, tasks listed, and
    the error that stopped them (or "")."""
    took_all: list[float] = []
    listed: list[int] = []
    for i in range(rounds):
        if i == 2 and min(took_all) > 3.0:
            break  # slow enough that a third one says nothing new
        try:
            took, count = await loop.run_in_executor(None, ask, path)
        except Exception as exc:
            return took_all, listed, f"{type(exc).__name__}: {exc}"
        took_all.append(took)
        listed.append(count)
        await asyncio.sleep(max(0.2, took))  # the console's cool-down
    return took_all, listed, ""


def scan_figures(base: str, name: str, what: str, wall: list[float], cpu: list[float],
                 **details: Any) -> list[Figure]:
    """A scan's median wall time and median CPU time (of the loop thread: the scan's own
    work, without the waits for the CPU or the GIL that a busy machine adds)."""
    return [
        Figure(NAME, base, f"{name}, wall (median)", median(wall), "s", SCAN_TARGET,
               samples=wall, note=what, details={"scan": what, "worst": max(wall), **details}),
        Figure(NAME, base, f"{name}, CPU (median)", median(cpu), "s", SCAN_TARGET,
               samples=cpu, details={"worst": max(cpu)}),
    ]


def console_loop(base: str, path: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A watched loop with a console at ``path``, or without one and the reason."""
    missing = module_missing("loopwatch.console")
    if missing:
        return watched_loop(base), f"the console has not landed ({missing})"
    try:
        return watched_loop(base, console=f"unix:{path}"), ""
    except Exception as exc:
        return watched_loop(base), (f"a loop with a console cannot be made: "
                                    f"{type(exc).__name__}: {exc}")


def ps_figure(base: str, name: str, n: int, took: list[float], listed: list[int],
              error: str, target: tuple[str, float] | None) -> Figure:
    if error:
        return not_available(NAME, base, name, "s", error, target)
    short = [c for c in listed if c < n]  # n parked tasks and the main one
    note = f"listed {short[0]:,} tasks, not {n:,}" if short else ""
    return Figure(NAME, base, name, median(took), "s", target, samples=took, note=note,
                  details={"listed": listed, "worst": max(took)})


def run(base: str, cfg: Config) -> list[Figure]:
    import loopwatch

    n = cfg.n(100_000, minimum=10)
    ps_cpu.clear()
    rounds = cfg.pick_rounds(5, 3)
    figures: list[Figure] = []
    tmp = tempfile.mkdtemp(prefix="lw-bench-")
    path = os.path.join(tmp, "console.sock")

    with quiet_loopwatch():
        # Default options, with an idle console: scans, then tasks(), then ps.
        loop, console_note = console_loop(base, path)
        try:
            watcher = loopwatch.watcher(loop)
            what, scan = parked_scan(watcher)

            Asked = tuple[list[float], list[int], str]

            async def main() -> tuple[tuple[list[float], list[float]], float, Asked, Asked]:
                event, tasks = await park(n)
                scanned = await scan_times(scan, rounds)
                tasks_time = timed(watcher.tasks)
                ps: Asked = ([], [], console_note)
                command: Asked = ([], [], console_note)
                if not console_note:
                    ps = await ps_times(loop, path, cfg.pick_rounds(3, 1))
                    command = await ps_times(loop, path, cfg.pick_rounds(3, 1), ps_command)
                await release(event, tasks)
                return scanned, tasks_time, ps, command

            (times, cpu), tasks_time, (ps_took, listed, ps_error), command = \
                loop.run_until_complete(main())
        finally:
            close_loop(loop)
            try:
                os.unlink(path)
            except OSError:
                pass
            os.rmdir(tmp)
        figures += scan_figures(base, f"parked scan of {n:,} tasks", what, times, cpu)

        # Every task past parked_after: the scan reads await chains and makes findings.
        loop = watched_loop(base, parked_after=0.05)
        try:
            watcher = loopwatch.watcher(loop)
            what, scan = parked_scan(watcher)

            async def parked_long() -> tuple[list[float], list[float]]:
                event, tasks = await park(n)
                await asyncio.sleep(0.1)
                scanned = await scan_times(scan, rounds)
                await release(event, tasks)
                return scanned

            times, cpu = loop.run_until_complete(parked_long())
            found = len(watcher.findings())
        finally:
            close_loop(loop)
        figures += scan_figures(base, f"parked scan, all {n:,} past parked_after", what, times,
                                cpu, findings=found)

    figures.append(Figure(NAME, base, f"Watcher.tasks() over {n:,} tasks", tasks_time, "s"))
    figures.append(ps_figure(base, f"ps --json over the console, {n:,} tasks (median)", n,
                             ps_took, listed, ps_error, PS_TARGET))
    if ps_cpu and not ps_error:
        figures.append(Figure(NAME, base, f"ps --json over the console, {n:,} tasks, CPU of "
                              "both processes (median)", median(ps_cpu), "s",
                              samples=list(ps_cpu), note="what the request costs, however "
                              "busy the machine (the watched process's CPU time while the "
                              "client ran, and the client's for its request)"))
    figures.append(ps_figure(base, f"loopwatch ps TARGET --json, whole command, {n:,} tasks "
                             "(median)", n, *command, None))

    # For scale: the least any reader of every task has to do.
    loop = bare_loop(base)
    try:
        async def bare() -> float:
            event, tasks = await park(n)
            took = median([timed(asyncio.all_tasks) for _ in range(3)])
            await release(event, tasks)
            return took

        figures.append(Figure(NAME, base, f"asyncio.all_tasks() over {n:,} tasks, bare loop",
                              loop.run_until_complete(bare()), "s"))
    finally:
        close_loop(loop)
    return figures


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
