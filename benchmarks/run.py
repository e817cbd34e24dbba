"""Run loopwatch's benchmarks (SPEC section 8) and print their figures as a table.

    python benchmarks/run.py [--quick] [--only NAME ...] [--loops asyncio uvloop]
                             [--json PATH] [--rounds N] [--scale F]

Every benchmark runs once per base loop, each time in a child process of its own
(``run.py --child NAME --loop BASE``), which prints its figures as one JSON line;
this process collects them, prints the table and writes ``--json``. The exit status
is 0 when every benchmark ran (whether its target was met or not: the table says),
1 when one failed to run, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from _harness import BASES, Config, Figure, uvloop_missing

#: the benchmarks, in the order they run: name -> module
BENCHMARKS = {
    "spawn": "bench_spawn",
    "memory": "bench_memory",
    "echo": "bench_echo",
    "stall": "bench_stall",
    "scan": "bench_scan",
    "pytest": "bench_pytest",
}

MARK = "@@figures "
SCHEMA = 1


def run_child(name: str, base: str, cfg: Config) -> int:
    """Child mode: run one benchmark on one base loop, print its figures."""
    module = importlib.import_module(BENCHMARKS[name])
    figures: list[Figure] = module.run(base, cfg)
    sys.stdout.flush()
    sys.stdout.write(MARK + json.dumps([f.to_dict() for f in figures]) + "\n")
    sys.stdout.flush()
    return 0


def spawn_child(name: str, base: str, args: argparse.Namespace) -> tuple[list[Figure], str]:
    """Run one benchmark in a child process; its figures, or one error figure."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--loop", base,
           "--scale", str(args.scale)]
    if args.quick:
        cmd.append("--quick")
    if args.rounds is not None:
        cmd += ["--rounds", str(args.rounds)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return [Figure(name, base, "(benchmark)", None, "", status="error",
                       note=f"timed out after {args.timeout:.0f} s")], err
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return [Figure.from_dict(d) for d in json.loads(line[len(MARK):])], proc.stderr
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return [Figure(name, base, "(benchmark)", None, "", status="error",
                   note=f"exit {proc.returncode}: {tail}")], proc.stderr


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        info["cpu"] = platform.processor()
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for dist in ("loopwatch", "uvloop", "aiomonitor", "pytest", "pytest-asyncio", "anyio"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "loopwatch"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        info["commit"] = commit
        info["uncommitted"] = sorted(line[3:] for line in dirty if line.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def table(figures: list[Figure]) -> str:
    """The figures as a plain-text table."""
    head = ("benchmark", "loop", "figure", "value", "target", "verdict")
    rows = [head]
    notes: list[str] = []
    for f in figures:
        verdict = f.verdict
        if f.note:
            notes.append(f"{f.bench}/{f.loop} {f.name}: {f.note}")
            verdict += f" [{len(notes)}]"
        rows.append((f.bench, f.loop, f.name, f.value_text(), f.target_text(), verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [""] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="loopwatch's benchmarks: overhead ratios against the bare loop "
                    "(SPEC section 8).")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a first look")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--loops", nargs="+", choices=BASES, default=list(BASES),
                        help="base loops (default: both)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--rounds", type=int, help="rounds for every benchmark (overrides)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every task and request count (default 1; the smoke "
                             "test uses 0.01)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one benchmark may take on one loop (default 600)")
    parser.add_argument("--child", choices=list(BENCHMARKS), help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=BASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale <= 0 or (args.rounds is not None and args.rounds < 1):
        parser.error("--scale must be > 0 and --rounds >= 1")
    cfg = Config(scale=args.scale, rounds=args.rounds, quick=args.quick)
    if args.child:
        return run_child(args.child, args.loop or "asyncio", cfg)

    names = args.only or list(BENCHMARKS)
    started = time.monotonic()
    info = machine()
    print(f"loopwatch benchmarks on Python {info['python']}, {info.get('cpu', '?')} "
          f"x{info['cpus']}, load {info.get('loadavg_at_start', '?')}", file=sys.stderr)
    figures: list[Figure] = []
    errors = 0
    for name in names:
        for base in args.loops:
            if base == "uvloop" and (why := uvloop_missing()):
                figures.append(Figure(name, base, "(benchmark)", None, "", status="n/a",
                                      note=why))
                continue
            t0 = time.monotonic()
            got, stderr = spawn_child(name, base, args)
            failed = any(f.status == "error" for f in got)
            errors += failed
            figures.extend(got)
            print(f"  {name:<7} {base:<8} {time.monotonic() - t0:6.1f} s"
                  f"{'  FAILED' if failed else ''}", file=sys.stderr)
            if failed and stderr.strip():
                print("    " + "\n    ".join(stderr.strip().splitlines()[-15:]),
                      file=sys.stderr)
    duration = time.monotonic() - started
    print(f"\nloopwatch benchmarks, Python {info['python']} ({duration:.0f} s)\n")
    print(table(figures))
    if args.json:
        doc = {
            "schema": SCHEMA,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "args": {"quick": args.quick, "scale": args.scale, "rounds": args.rounds,
                     "only": names, "loops": args.loops},
            "duration_s": round(duration, 1),
            "figures": [f.to_dict() for f in figures],
        }
        with open(args.json, "w") as out:
            json.dump(doc, out, indent=1)
            out.write("\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
