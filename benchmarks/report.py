"""Merge the JSON of several ``run.py --json`` runs (one per Python) into Markdown tables.

    python benchmarks/report.py results/py3.11.json results/py3.12.json ... > table.md

One table per benchmark: a row per figure and base loop, a column per Python. A
figure that meets its target is marked ✓, one that misses it ✗ and in bold; a ratio
measured in 3 rounds or more is followed by the lowest and highest round's; notes
(why a cell is "n/a", a worst case, ...) are numbered under the table.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import Figure
from run import BENCHMARKS


def cell(f: Figure, notes: dict[str, int]) -> str:
    def ref(text: str) -> str:
        number = notes.setdefault(text, len(notes) + 1)
        return f" [{number}]"

    if f.status != "ok":
        return f.status + ref(f.note)
    text = f.value_text()
    if f.unit == "x" and len(f.samples) >= 3:  # how far apart the rounds were
        text += f" ({min(f.samples):.2f}-{max(f.samples):.2f})"
    extra = ref(f.note) if f.note else ""
    if f.met is True:
        return f"{text} ✓{extra}"
    if f.met is False:
        return f"**{text} ✗**{extra}"
    return text + extra


def tables(docs: list[dict[str, Any]]) -> str:
    docs = sorted(docs, key=lambda d: tuple(int(x) for x in d["machine"]["python"].split(".")))
    pythons = [d["machine"]["python"] for d in docs]
    out: list[str] = []
    for bench in BENCHMARKS:
        rows: dict[tuple[str, str], dict[str, Figure]] = {}
        for doc, py in zip(docs, pythons, strict=True):
            for raw in doc["figures"]:
                f = Figure.from_dict(raw)
                if f.bench == bench:
                    rows.setdefault((f.name, f.loop), {})[py] = f
        if not rows:
            continue
        notes: dict[str, int] = {}
        out.append(f"### {bench}\n")
        out.append("| figure | loop | target | " + " | ".join(pythons) + " |")
        out.append("|---|---|---|" + "---|" * len(pythons))
        for (name, loop), by_py in rows.items():
            first = next(iter(by_py.values()))
            cells = [cell(by_py[py], notes) if py in by_py else "" for py in pythons]
            out.append(f"| {name} | {loop} | {first.target_text()} | " + " | ".join(cells) + " |")
        if notes:
            out.append("")
            out.extend(f"{i}. {n}" for n, i in notes.items())
        out.append("")
    return "\n".join(out)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    docs = []
    for path in paths:
        with open(path) as f:
            docs.append(json.load(f))
    print(tables(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
