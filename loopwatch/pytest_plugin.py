"""The pytest plugin: fail a test that leaves its loop unclean (``pytest --loopwatch``).

Registered through the ``pytest11`` entry point; off unless asked for.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopwatch", "loopwatch: fail tests that leave the loop unclean")
    group.addoption("--loopwatch", action="store_true", default=False,
                    help="check every async test for leftover tasks, timers and lost work")
