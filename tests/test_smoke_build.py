"""The package as installed: it imports, and it tells type checkers it is typed."""

from __future__ import annotations

import importlib.resources


def test_package_imports() -> None:
    import loopwatch

    assert loopwatch.__name__ == "loopwatch"


def test_package_ships_py_typed_marker() -> None:
    marker = importlib.resources.files("loopwatch") / "py.typed"
    assert marker.is_file()
