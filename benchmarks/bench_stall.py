"""stall: a blocked loop is caught, with the line that blocked; a short block is not.

On a watched loop at default options (``stall_after`` 0.1 s), a callback that calls
``time.sleep(0.2)`` is scheduled 20 times; each time the benchmark waits for the stall
finding and checks that its site is the ``time.sleep`` line. Then 20 blocks of 0.05 s,
under ``stall_after``: none may be reported. A stall's finding is updated while the
stall lasts; the one checked is the final one, read from ``Watcher.findings()``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from _harness import Config, Figure, detector_for, median, not_available, quiet_loopwatch
from _harness import watched_loop as make_watched

NAME = "stall"
TITLE = "stall detection"

LONG, SHORT = 0.2, 0.05


def block(seconds: float) -> None:
    time.sleep(seconds)  # the line every stall finding must point at


BLOCK_FILE = os.path.abspath(__file__)
BLOCK_LINE = block.__code__.co_firstlineno + 1


async def trial(watcher: Any, seconds: float, wait: float) -> list[Any]:
    """Block the loop once; the stall findings made for it, as they stand at the end."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.05)  # a few beats of a healthy loop first
    start = len(watcher.findings())  # a finding updated later keeps its place in the list
    loop.call_soon(block, seconds)
    await asyncio.sleep(0)  # the block runs before this task resumes
    deadline = time.monotonic() + wait
    while True:
        new = [f for f in watcher.findings()[start:] if f.kind == "stall"]
        if new and not any(f.details.get("ongoing", False) for f in new):
            return new
        if time.monotonic() >= deadline:
            return new
        await asyncio.sleep(0.01)


def at_block_line(finding: Any) -> bool:
    site = finding.site
    return site is not None and site.file == BLOCK_FILE and site.line == BLOCK_LINE


async def trials(watcher: Any, n: int) -> dict[str, Any]:
    long_runs = [await trial(watcher, LONG, wait=1.0) for _ in range(n)]
    short_runs = [await trial(watcher, SHORT, wait=0.3) for _ in range(n)]
    finals = [runs[-1] for runs in long_runs if runs]
    return {
        "caught": sum(1 for runs in long_runs if runs),
        "with_line": sum(1 for f in finals if at_block_line(f)),
        "ended": sum(1 for f in finals if not f.details.get("ongoing", False)),
        "durations": [f.details.get("duration") for f in finals],
        "sites": sorted({f"{f.site.file}:{f.site.line}" if f.site else "none" for f in finals}),
        "short_reported": sum(1 for runs in short_runs if runs),
        "short_sites": sorted({f"{runs[-1].site}" for runs in short_runs if runs}),
    }


def run(base: str, cfg: Config) -> list[Figure]:
    n = 20 if cfg.scale >= 1 else max(2, min(20, int(20 * cfg.scale * 10)))
    names = (f"{LONG:g} s blocks caught with the blocking line",
             f"{SHORT:g} s blocks reported (stall_after 0.1 s)")
    with quiet_loopwatch():
        loop = make_watched(base)
        try:
            import loopwatch

            watcher = loopwatch.watcher(loop)
            if detector_for(watcher, "stall") is None:
                why = "the stall detector has not landed (loopwatch/_detectors/stall.py)"
                return [not_available(NAME, base, names[0], f"of {n}", why, ("==", n)),
                        not_available(NAME, base, names[1], f"of {n}", why, ("==", 0))]
            result = loop.run_until_complete(trials(watcher, n))
        finally:
            loop.close()
    durations = [d for d in result["durations"] if isinstance(d, (int, float))]
    missed = n - result["with_line"]
    return [
        Figure(NAME, base, names[0], result["with_line"], f"of {n}", ("==", n),
               note=(f"{result['caught']}/{n} reported at all; sites seen: "
                     f"{', '.join(result['sites'])}") if missed else "",
               details=result),
        Figure(NAME, base, names[1], result["short_reported"], f"of {n}", ("==", 0),
               note=(f"reported at {', '.join(result['short_sites'])}"
                     if result["short_reported"] else "")),
        Figure(NAME, base, f"reported duration of the {LONG:g} s blocks (median)",
               median(durations) if durations else None, "s"),
    ]


if __name__ == "__main__":
    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "asyncio", Config(quick=True)):
        print(figure.to_dict())
