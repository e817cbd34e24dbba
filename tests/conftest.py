"""Suite-wide settings: which base loop the suite runs on.

`make test` runs the whole suite once per base loop, choosing it with the
environment variable LOOPWATCH_TEST_LOOP ("asyncio", the default, or "uvloop").
A run that asks for uvloop where uvloop cannot be imported is an error, not a
skip: a matrix cell that silently tests nothing would look green.
"""

from __future__ import annotations

import os

import pytest

BASE_LOOPS = ("asyncio", "uvloop")
BASE_LOOP = os.environ.get("LOOPWATCH_TEST_LOOP", "asyncio")


def pytest_configure(config: pytest.Config) -> None:
    if BASE_LOOP not in BASE_LOOPS:
        raise pytest.UsageError(
            f"LOOPWATCH_TEST_LOOP={BASE_LOOP!r} is not a base loop; use one of {', '.join(BASE_LOOPS)}"
        )
    if BASE_LOOP == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError as exc:
            raise pytest.UsageError(
                f"LOOPWATCH_TEST_LOOP=uvloop but uvloop cannot be imported ({exc}); "
                "install the 'uvloop' extra: pip install -e '.[dev,uvloop]'"
            ) from exc


def pytest_report_header(config: pytest.Config) -> str:
    return f"loopwatch base loop: {BASE_LOOP} (LOOPWATCH_TEST_LOOP)"


@pytest.fixture
def base_loop() -> str:
    """The base loop this run tests on: "asyncio" or "uvloop"."""
    return BASE_LOOP


if BASE_LOOP == "uvloop":

    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
        """The suite's own pytest-asyncio tests run on uvloop too."""
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def anyio_backend() -> object:
    """The suite's own anyio tests run on the base loop (anyio's use_uvloop on uvloop)."""
    return ("asyncio", {"use_uvloop": True}) if BASE_LOOP == "uvloop" else "asyncio"
