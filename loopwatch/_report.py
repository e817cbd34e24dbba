"""Findings and the report that holds them; the versioned JSON schema.

Detectors return :class:`Finding` objects (data only); renderers in ``_render``
turn a :class:`Report` into text. The JSON form is documented in
``docs/json-schema.md`` and carries ``"schema": 1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ._frames import Frame

__all__ = ["KINDS", "SCHEMA", "Finding", "Report", "TaskRef"]

SCHEMA = 1

#: every finding kind, in the order reports list them (SPEC section 4)
KINDS: tuple[str, ...] = (
    "await_cycle",
    "parked",
    "stall",
    "straggler",
    "dropped_callback",
    "post_close_call",
    "never_awaited",
    "unretrieved_exception",
    "destroyed_pending",
    "executor_thread",
    "asyncgen_unfinalized",
    "unclosed_resource",
    "task_growth",
)


@dataclasses.dataclass(frozen=True)
class TaskRef:
    """The task a finding is about, as it was when the finding was made."""

    id: str
    name: str
    coro: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "coro": self.coro}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRef:
        return cls(str(data["id"]), str(data.get("name", "")), str(data.get("coro", "")))


@dataclasses.dataclass
class Finding:
    """One problem loopwatch found, with the evidence for it."""

    kind: str
    message: str
    site: Frame | None = None
    task: TaskRef | None = None
    stacks: dict[str, list[Frame]] = dataclasses.field(default_factory=dict)
    hint: str = ""
    #: kind-specific figures (``parked_for``, ``duration``, ``count``, ...)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: wall-clock time the finding was made
    at: float = dataclasses.field(default_factory=time.time)
    #: identifies the same problem seen twice (not serialized)
    key: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; kinds are {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "task": self.task.to_dict() if self.task else None,
            "site": self.site.to_dict() if self.site else None,
            "stacks": {name: [f.to_dict() for f in frames] for name, frames in self.stacks.items()},
            "hint": self.hint,
            "details": _jsonable(self.details),
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            kind=data["kind"],
            message=data["message"],
            task=TaskRef.from_dict(data["task"]) if data.get("task") else None,
            site=Frame.from_dict(data["site"]) if data.get("site") else None,
            stacks={k: [Frame.from_dict(f) for f in v] for k, v in data.get("stacks", {}).items()},
            hint=data.get("hint", ""),
            details=dict(data.get("details", {})),
            at=float(data.get("at", 0.0)),
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


@dataclasses.dataclass
class Report:
    """The findings of a run or an audit, with what is needed to read them later."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    #: checks that could not be observed on this loop, and why
    notes: list[str] = dataclasses.field(default_factory=list)
    #: ``"run"`` (a whole run), ``"audit"`` (one audit), ``"test"`` (one test)
    scope: str = "audit"
    loop: str = ""
    #: loop-lag statistics in seconds (``p50``, ``p99``, ``max``, ``samples``)
    lag: dict[str, float] = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    pid: int = dataclasses.field(default_factory=os.getpid)
    python: str = dataclasses.field(default_factory=platform.python_version)
    argv: list[str] = dataclasses.field(default_factory=lambda: list(sys.argv))

    def __bool__(self) -> bool:
        return bool(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self) -> Any:
        return iter(self.findings)

    def kinds(self) -> Counter[str]:
        """How many findings of each kind."""
        return Counter(f.kind for f in self.findings)

    def of_kind(self, *kinds: str) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    def filter(self, kinds: Iterable[str] | None = None) -> Report:
        """A copy holding only findings of ``kinds`` (all when None)."""
        wanted = None if kinds is None else set(kinds)
        return dataclasses.replace(
            self, findings=[f for f in self.findings if wanted is None or f.kind in wanted],
            notes=list(self.notes),
        )

    def summary(self) -> str:
        """One line: how many findings of which kinds."""
        if not self.findings:
            return "loopwatch: no findings"
        counts = self.kinds()
        parts = [f"{counts[k]} {k}" for k in KINDS if counts.get(k)]
        n = len(self.findings)
        return f"loopwatch: {n} finding{'s' if n != 1 else ''}: {', '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "scope": self.scope,
            "loop": self.loop,
            "pid": self.pid,
            "python": self.python,
            "argv": self.argv,
            "created": self.created,
            "summary": dict(self.kinds()),
            "lag": self.lag,
            "notes": self.notes,
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported loopwatch report schema {data.get('schema')!r}; "
                             f"this loopwatch reads schema {SCHEMA}")
        return cls(
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            notes=list(data.get("notes", [])),
            scope=str(data.get("scope", "audit")),
            loop=str(data.get("loop", "")),
            lag={k: float(v) for k, v in data.get("lag", {}).items()},
            created=float(data.get("created", 0.0)),
            pid=int(data.get("pid", 0)),
            python=str(data.get("python", "")),
            argv=list(data.get("argv", [])),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))
