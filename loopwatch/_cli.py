"""The ``loopwatch`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("loopwatch: the command line is being built\n")
    return 2
