"""Raw stacks and how they become ``file:line function`` frames.

Stacks are captured raw, as a flat tuple ``(code, lasti, code, lasti, ...)``:
no line numbers are computed and no frame object is kept (a frame would keep
its locals alive). Line numbers are worked out only when a stack is shown.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
from collections.abc import Sequence
from types import CodeType, FrameType
from typing import Any

__all__ = [
    "Frame",
    "RawStack",
    "capture",
    "format_raw",
    "frame_of",
    "is_library",
    "pick_site",
    "raw_site",
]

#: (code, lasti, code, lasti, ...), innermost first
RawStack = tuple[Any, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a stack as people read it."""

    file: str
    line: int
    function: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Frame:
        return cls(str(data["file"]), int(data["line"]), str(data["function"]))

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


_getframe = sys._getframe


def capture(depth: int, skip: int = 1) -> RawStack:
    """The raw stack of the caller, ``skip`` frames up, at most ``depth`` frames."""
    if depth <= 0:
        return ()
    try:
        f: FrameType | None = _getframe(skip + 1)
    except ValueError:
        return ()
    out: list[Any] = []
    append = out.append
    while f is not None and depth:
        append(f.f_code)
        append(f.f_lasti)
        f = f.f_back
        depth -= 1
    return tuple(out)


# (id(code), lasti) -> (code, line). The code object is kept in the value so that an
# id reused by a new code object is noticed; hashing code objects themselves is slow.
_lines: dict[tuple[int, int], tuple[CodeType, int]] = {}


def line_of(code: CodeType, lasti: int) -> int:
    """The source line of instruction offset ``lasti`` in ``code``."""
    key = (id(code), lasti)
    hit = _lines.get(key)
    if hit is not None and hit[0] is code:
        return hit[1]
    line = None
    if lasti >= 0:
        for start, end, lineno in code.co_lines():
            if start <= lasti < end:
                line = lineno
                break
    result = line if line is not None else code.co_firstlineno
    if len(_lines) > 50_000:
        _lines.clear()
    _lines[key] = (code, result)
    return result


def _qualname(code: CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)


# (id(code), lasti) -> (code, Frame): tasks made at one place share their frames.
_frame_cache: dict[tuple[int, int], tuple[CodeType, Frame]] = {}


def _frame(code: CodeType, lasti: int) -> Frame:
    key = (id(code), lasti)
    hit = _frame_cache.get(key)
    if hit is not None and hit[0] is code:
        return hit[1]
    frame = Frame(_abspath(code.co_filename), line_of(code, lasti), _qualname(code))
    if len(_frame_cache) > 50_000:
        _frame_cache.clear()
    _frame_cache[key] = (code, frame)
    return frame


def format_raw(raw: RawStack) -> list[Frame]:
    """Turn a raw stack (innermost first) into frames, outermost first, like a traceback."""
    frames = [_frame(raw[i], raw[i + 1]) for i in range(0, len(raw) - 1, 2)]
    frames.reverse()
    return frames


def frame_of(frame: FrameType) -> Frame:
    """A live frame as a :class:`Frame`."""
    code = frame.f_code
    return Frame(_abspath(code.co_filename), frame.f_lineno or code.co_firstlineno, _qualname(code))


_abs_cache: dict[str, str] = {}


def _abspath(filename: str) -> str:
    try:
        return _abs_cache[filename]
    except KeyError:
        pass
    if filename.startswith("<"):
        result = filename
    else:
        result = os.path.abspath(filename)
    if len(_abs_cache) < 10_000:
        _abs_cache[filename] = result
    return result


def _library_roots() -> tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(os.path.abspath(path) + os.sep)
    here = os.path.dirname(os.path.abspath(__file__))
    roots.add(here + os.sep)
    # Packages whose frames are plumbing between the user's code and the loop.
    for name in ("anyio", "sniffio", "uvloop", "_pytest", "pytest", "pytest_asyncio", "pluggy",
                 "aiomonitor", "exceptiongroup"):
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if file:
            roots.add(os.path.dirname(os.path.abspath(file)) + os.sep)
    # site-packages live under the stdlib folder on some layouts: user code installed
    # there is not library code, so only the plumbing packages above count.
    return tuple(sorted(roots))


_roots_cache: tuple[int, tuple[str, ...]] | None = None


_library_cache: dict[str, bool] = {}


def is_library(file: str) -> bool:
    """Whether ``file`` belongs to asyncio, anyio, pytest or loopwatch plumbing.

    Such frames are shown in stacks but never chosen as the site of a finding.
    """
    global _roots_cache
    n = len(sys.modules)
    if _roots_cache is None or _roots_cache[0] != n:
        _roots_cache = (n, _library_roots())
        _library_cache.clear()
    try:
        return _library_cache[file]
    except KeyError:
        pass
    result = _is_library(file, _roots_cache[1])
    if len(_library_cache) < 10_000:
        _library_cache[file] = result
    return result


def _is_library(file: str, roots: tuple[str, ...]) -> bool:
    if file.startswith("<frozen"):
        return True
    if "site-packages" in file or "dist-packages" in file:
        return any(file.startswith(r) for r in roots
                   if "site-packages" in r or "dist-packages" in r)
    return any(file.startswith(r) for r in roots)


def raw_site(raw: RawStack) -> Frame | None:
    """``pick_site`` of a raw stack, formatting only the frames it has to look at."""
    first = None
    for i in range(0, len(raw) - 1, 2):
        frame = _frame(raw[i], raw[i + 1])
        if not is_library(frame.file):
            return frame
        if first is None:
            first = frame
    return first


def pick_site(frames: Sequence[Frame]) -> Frame | None:
    """The frame that points at the user's own code: the innermost one that is not
    asyncio, anyio, pytest or loopwatch plumbing. ``frames`` are outermost first."""
    for frame in reversed(frames):
        if not is_library(frame.file):
            return frame
    return frames[-1] if frames else None
