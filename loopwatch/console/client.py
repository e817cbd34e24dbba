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

    def request(self, cmd: str, args: dict[str, Any] | list[str] | None = None) -> Reply:
        """Send one command and wait for its answer."""
        ident = self._next_id
        self._next_id += 1
        line = json.dumps({"id": ident, "cmd": cmd, "args": args if args is not None else {}})
        try:
            self.sock.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise TargetError(f"the console at {self.address} went away ({exc.strerror or exc})") \
                from None
        said = ""
        while True:
            try:
                raw = self._readline()
            except TimeoutError:
                raise TargetError(f"no answer from {self.address} within the timeout") from None
            except OSError as exc:
                raise TargetError(f"the console at {self.address} went away "
                                  f"({exc.strerror or exc})") from None
            if not raw:
                reason = f": {said}" if said else ""
                raise TargetError(f"the console at {self.address} closed the connection{reason}")
            if not raw.lstrip()[:1] == b"{":
                text = raw.decode("utf-8", "replace").strip()
                said = text.removeprefix("error: ") if text else said
                continue
            try:
                response = _loads(raw)
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
