"""A client of the console's JSON interface, for the CLI, ``loopwatch top`` and scripts.

A target is a PID (its default console socket), ``unix:PATH``, ``tcp:HOST:PORT`` or
``HOST:PORT``. Every problem reaching it is a :class:`TargetError` with one line
that says what to do; a command the console refused is a :class:`RemoteError`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import socket
import stat
from typing import Any

from .._exceptions import ConsoleError, LoopwatchError
from .server import Address, parse_address, socket_candidates

__all__ = ["ConsoleClient", "RemoteError", "Reply", "TargetError", "resolve_target"]

#: seconds to connect, and to wait for one answer
TIMEOUT = 30.0


class TargetError(LoopwatchError, OSError):
    """The target cannot be reached: no such process, no console socket, refused."""


class RemoteError(LoopwatchError):
    """The console answered with an error (a bad argument, no such task, a refusal)."""


@dataclasses.dataclass
class Reply:
    """One answer: the command's data, and the loop's blocked state when it was made."""

    result: Any
    blocked: dict[str, Any] | None = None
    #: with ``request(..., raw=True)``: the result's JSON text as the console sent it
    #: (``result`` is then None), or None when it had to be parsed after all
    raw: bytes | None = None


def _loads(text: bytes) -> Any:
    """``json.loads``; a big answer (100,000 tasks) is read with the garbage collector
    paused: it would otherwise walk the growing result again and again."""
    if len(text) < 1_000_000 or not gc.isenabled():
        return json.loads(text)
    gc.disable()
    try:
        return json.loads(text)
    finally:
        gc.enable()


_RESULT = b',"result":'
#: the end of a line from a console that puts "blocked" after the result
_BLOCKED_LAST = b',"blocked":{"seconds":'


def _split_result(line: bytes) -> tuple[dict[str, Any], bytes] | None:
    """A successful response line cut in two, without parsing the result: its envelope
    (``id``, ``ok``, ``blocked``) and the result's JSON text. The console sends the
    result last; None when the line is laid out any other way (parse it whole then)."""
    end = len(line)
    while end and line[end - 1] in b"\r\n":
        end -= 1
    if line[end - 1:end] != b"}":
        return None
    # No "result" key can be inside a string before it (a quote in a string is escaped),
    # and the envelope holds no other object with such a key.
    at = line.find(_RESULT)
    if at < 0 or line.find(_BLOCKED_LAST, max(at, end - 4096), end) >= 0:
        return None
    try:
        head = json.loads(line[:at] + b"}")
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("ok") is not True:
        return None
    return head, line[at + len(_RESULT):end - 1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    except OSError:
        return False
    return True


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def resolve_target(target: str) -> Address:
    """Where the console of ``target`` listens; :class:`TargetError` when there is none."""
    text = target.strip()
    if text.isdigit():
        pid = int(text)
        if pid <= 0 or not _pid_alive(pid):
            raise TargetError(f"no such process: {pid}")
        paths = socket_candidates(pid)
        for path in paths:
            if _is_socket(path):
                return Address("unix", path=path)
        raise TargetError(f"no console socket for PID {pid} (looked for {', '.join(paths)}); "
                          "start the program with `loopwatch run` or "
                          "loopwatch.run(..., console='auto')")
    if not text.startswith(("unix:", "tcp:")) and ("/" in text or text.endswith(".sock")):
        if _is_socket(text):
            return Address("unix", path=os.path.abspath(text))
        raise TargetError(f"no console socket at {text}")
    try:
        address = parse_address(text)
    except ConsoleError:
        raise TargetError(f"bad target {target!r}: use a PID, unix:PATH or HOST:PORT") from None
    if text in ("", "auto"):
        raise TargetError("name the target: a PID, unix:PATH or HOST:PORT")
    return address


class ConsoleClient:
    """A connection to one console, speaking its JSON lines."""

    def __init__(self, target: str | Address, *, timeout: float = TIMEOUT) -> None:
        self.address = target if isinstance(target, Address) else resolve_target(target)
        self._next_id = 1
        self.sock = self._connect(timeout)
        self._pending = b""

    def _connect(self, timeout: float) -> socket.socket:
        addr = self.address
        where = str(addr)
        try:
            if addr.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(addr.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
        except ConnectionRefusedError:
            extra = (" (nothing listens on that socket: the process may have exited)"
                     if addr.kind == "unix" else "")
            raise TargetError(f"connection refused at {where}{extra}") from None
        except FileNotFoundError:
            raise TargetError(f"no console socket at {addr.path}") from None
        except PermissionError:
            raise TargetError(f"permission denied at {where}: the console belongs to another "
                              "user (its socket is private to the user that runs the "
                              "program)") from None
        except TimeoutError:
            raise TargetError(f"timed out connecting to {where}") from None
        except OSError as exc:
            raise TargetError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        return sock

    def request(self, cmd: str, args: dict[str, Any] | list[str] | None = None, *,
                raw: bool = False) -> Reply:
        """Send one command and wait for its answer. ``raw=True`` leaves the result as
        the JSON text the console sent (``Reply.raw``), for a caller that only passes
        it on: 100,000 tasks are 20 MB of JSON, and parsing them takes longer than
        the console takes to list them."""
        ident = self._next_id
        self._next_id += 1
        ask = json.dumps({"id": ident, "cmd": cmd, "args": args if args is not None else {}})
        try:
            self.sock.sendall(ask.encode() + b"\n")
        except OSError as exc:
            raise TargetError(f"the console at {self.address} went away ({exc.strerror or exc})") \
                from None
        said = ""
        while True:
            try:
                line = self._readline()
            except TimeoutError:
                raise TargetError(f"no answer from {self.address} within the timeout") from None
            except OSError as exc:
                raise TargetError(f"the console at {self.address} went away "
                                  f"({exc.strerror or exc})") from None
            if not line:
                reason = f": {said}" if said else ""
                raise TargetError(f"the console at {self.address} closed the connection{reason}")
            if not line.lstrip()[:1] == b"{":
                text = line.decode("utf-8", "replace").strip()
                said = text.removeprefix("error: ") if text else said
                continue
            if raw:
                split = _split_result(line)
                if split is not None and split[0].get("id") in (ident, None):
                    head, result = split
                    blocked = head.get("blocked")
                    return Reply(None, blocked if isinstance(blocked, dict) else None, result)
            try:
                response = _loads(line)
            except ValueError:
                continue
            if not isinstance(response, dict) or response.get("id") not in (ident, None):
                continue
            blocked = response.get("blocked")
            if not response.get("ok"):
                raise RemoteError(str(response.get("error", "the console gave no reason")))
            return Reply(response.get("result"), blocked if isinstance(blocked, dict) else None)

    def _readline(self) -> bytes:
        """One line from the console (b"" at the end): read in big chunks, since an
        answer about 100,000 tasks is a single line of 20 MB."""
        chunks = [self._pending]
        if b"\n" not in self._pending:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self._pending = b""
                    return b"".join(chunks)
                chunks.append(chunk)
                if b"\n" in chunk:
                    break
        data = b"".join(chunks)
        line, _, self._pending = data.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
