"""What ``--loopwatch`` costs a test, in machine instructions (valgrind must be installed).

    python benchmarks/profile_pytest.py [--loop asyncio|uvloop] [--tests N] [--small M]
                                        [-o NAME=VALUE ...]

The pytest benchmark's suite (see ``bench_pytest.py``) is generated with N tests and
with M, and each runs with and without ``--loopwatch`` in a process of its own under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``. The difference between the two
sizes, divided by N - M, is what one test costs: interpreter start, imports, plugin
set-up and collection's fixed part cancel out. No other process can change these
counts, which makes them the figure to compare changes by on a busy machine; the
time ratios of ``make bench`` stay above the instruction ratios (what loopwatch does
for a test is more allocation and pointer chasing per instruction than pytest's own
work). ``-o`` options go to the ``--loopwatch`` runs (``-o loopwatch_gc=off`` to see
what the per-test collection costs, say). Each run takes 15-30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from _harness import callgrind_instructions
from bench_pytest import make_suite, suite_command, suite_env


def instructions(root: str, loopwatch: bool, extra: list[str]) -> int:
    env = suite_env(root, os.path.join(root, "probe.txt"))
    env["PYTHONHASHSEED"] = "0"
    cmd = suite_command(root, loopwatch) + (extra if loopwatch else [])
    return callgrind_instructions(cmd, cwd=root, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("-o", dest="options", action="append", default=[],
                        metavar="NAME=VALUE", help="an ini option for the --loopwatch runs")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("profile_pytest.py needs valgrind on PATH", file=sys.stderr)
        return 2
    if args.small >= args.tests:
        parser.error("--small must be less than --tests")
    extra = [x for opt in args.options for x in ("-o", opt)]
    counts: dict[tuple[bool, int], int] = {}
    for size in (args.small, args.tests):
        root = tempfile.mkdtemp(prefix="lw-profile-suite-")
        try:
            make_suite(root, size, args.loop)
            for loopwatch in (False, True):
                counts[loopwatch, size] = instructions(root, loopwatch, extra)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    span = args.tests - args.small
    plain = (counts[False, args.tests] - counts[False, args.small]) / span
    watched = (counts[True, args.tests] - counts[True, args.small]) / span
    print(f"Python {sys.version.split()[0]}, {args.loop}, instructions per test "
          f"({args.tests} tests minus {args.small}):")
    print(f"  plain        {plain / 1e6:6.2f}M")
    print(f"  --loopwatch  {watched / 1e6:6.2f}M  ({watched / plain:.2f}x, "
          f"+{(watched - plain) / 1e6:.2f}M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
