"""Helpers shared by the detector tests: marked lines, fresh watched loops, findings by kind.

A test marks the line a finding must point at with a trailing ``# L:<marker>``
comment, and checks the finding's site against it with :func:`site_checker`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import loopwatch

from .conftest import BASE_LOOP


def marked_line(path: str, marker: str) -> int:
    """The line of ``path`` that ends with ``# L:<marker>``."""
    with open(path) as f:
        for number, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# L:{marker}"):
                return number
    raise LookupError(marker)


Site = loopwatch.Frame | loopwatch.Finding | None


def site_checker(path: str) -> Callable[[Site, str, str], None]:
    """``assert_site(site_or_finding, function, marker)`` for the test file ``path``."""

    def assert_site(site: Site, function: str, marker: str) -> None:
        if isinstance(site, loopwatch.Finding):
            site = site.site
        assert site is not None
        assert site.file == path, site
        assert site.function.endswith(function), site
        assert site.line == marked_line(path, marker), site

    return assert_site


def new_loop(**options: Any) -> asyncio.AbstractEventLoop:
    """A new watched loop on the suite's base loop, with finding logs off."""
    options.setdefault("log", False)
    return loopwatch.loop_factory(BASE_LOOP, **options)()


def of_kind(w: loopwatch.Watcher, kind: str) -> list[loopwatch.Finding]:
    return [f for f in w.findings() if f.kind == kind]
