"""The console server: its own thread, its own (plain, unwatched) event loop, run by anyio.

The server never runs on the watched loop, so it answers while that loop is
blocked. Each connection speaks plain text lines (nc, ``nc -U``, telnet) or JSON
lines; both end in the one command table of :mod:`loopwatch.console.commands`.

Limits keep the watched program safe from its console: at most
:data:`MAX_CLIENTS` connections, :data:`MAX_LINE` bytes a line, an idle timeout,
one command computed at a time, and a cool-down after an expensive command so the
console never takes more than about half of the interpreter.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._exceptions import ConsoleError
from .._threads import keep_out_of_signals
from .commands import Context, SessionState, json_line, run_json, run_text

if TYPE_CHECKING:
    from .._watcher import Watcher

__all__ = [
    "MAX_CLIENTS",
    "MAX_LINE",
    "Address",
    "ConsoleServer",
    "default_path",
    "parse_address",
    "socket_candidates",
    "start_console",
]

log = logging.getLogger("loopwatch")

#: connections served at once; the next one gets a one-line refusal
MAX_CLIENTS = 8
#: bytes in one request line (without its line end)
MAX_LINE = 4096
#: seconds a reply may take to be read by a slow client before it is dropped
SEND_TIMEOUT = 30.0
#: seconds ``start_console`` waits for the server thread to listen
START_TIMEOUT = 10.0
#: longest Unix socket path (``sun_path`` holds 108 bytes with the final NUL)
MAX_UNIX_PATH = 107


# -- addresses -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Address:
    """Where a console listens: a Unix socket path, or a TCP host and port."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR`` when it is a writable folder, else the temp dir."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return xdg
    return tempfile.gettempdir()


def default_path(pid: int | None = None) -> str:
    """The default console socket of process ``pid`` (this one by default)."""
    return os.path.join(runtime_dir(), f"loopwatch-{os.getpid() if pid is None else pid}.sock")


def socket_candidates(pid: int) -> list[str]:
    """Where the default console socket of process ``pid`` may be, most likely first
    (the process may have had another ``XDG_RUNTIME_DIR`` than the caller)."""
    dirs = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        dirs.append(xdg)
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        dirs.append(f"/run/user/{getuid()}")
    dirs.extend([tempfile.gettempdir(), "/tmp"])
    out: list[str] = []
    for d in dirs:
        path = os.path.join(d, f"loopwatch-{pid}.sock")
        if path not in out:
            out.append(path)
    return out


ADDRESS_FORMS = "unix:PATH, tcp:HOST:PORT, HOST:PORT or auto"


def parse_address(text: str | None) -> Address:
    """Parse a console address: ``unix:PATH``, ``tcp:HOST:PORT``, ``HOST:PORT``, or
    ``auto`` / ``None`` for the per-process Unix socket."""
    if text is None or text.strip() in ("", "auto"):
        return Address("unix", path=default_path())
    raw = text.strip()
    if raw.startswith("unix:"):
        path = os.path.expanduser(raw[5:])
        if not path:
            raise ConsoleError(f"console address {raw!r} has no path; use unix:/path/to.sock")
        return Address("unix", path=os.path.abspath(path))
    rest = raw[4:] if raw.startswith("tcp:") else raw
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit() or "/" in host:
        raise ConsoleError(f"console address {raw!r} is not one of {ADDRESS_FORMS}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "127.0.0.1"
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConsoleError(f"console address {raw!r}: the port must be 0 to 65535")
    return Address("tcp", host=host, port=port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_unix_path(path: str) -> None:
    """Refuse a path that cannot work; remove the socket file of a dead console."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConsoleError(f"cannot start the console at unix:{path}: the path is "
                           f"{len(os.fsencode(path))} bytes, a Unix socket path takes at most "
                           f"{MAX_UNIX_PATH}; choose a shorter one")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ConsoleError(f"cannot start the console at unix:{path}: the folder {folder} "
                           "does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConsoleError(f"cannot start the console at unix:{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConsoleError(f"cannot start the console at unix:{path}: the path exists and is "
                           "not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody listens: the socket file of a process that died without cleaning up.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConsoleError(f"cannot start the console at unix:{path}: a stale socket is "
                               f"there and cannot be removed ({exc.strerror})") from None
        return
    except OSError as exc:
        raise ConsoleError(f"cannot start the console at unix:{path}: {exc.strerror or exc}") \
            from None
    finally:
        probe.close()
    raise ConsoleError(f"cannot start the console at unix:{path}: a live console already "
                       "listens there (another process, or another loop of this one)")


# -- reading lines -------------------------------------------------------------------

_IAC, _SB, _SE = 255, 250, 240
_TOO_LONG = object()


class _LineReader:
    """Splits received bytes into request lines: strips telnet negotiation, ``\\r`` and
    NUL bytes, and turns a line longer than :data:`MAX_LINE` into one marker."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.discarding = False
        self.telnet = 0  # 0 data, 1 after IAC, 2 option byte next, 3 in SB, 4 IAC in SB
        self.sub = 0  # bytes of the subnegotiation so far

    def _strip_telnet(self, data: bytes) -> bytes:
        if self.telnet == 0 and _IAC not in data:
            return data
        out = bytearray()
        for b in data:
            state = self.telnet
            if b == 10 and state:
                # A line end always ends a line: binary garbage that looks like the start
                # of a negotiation must never swallow the requests after it.
                self.telnet = 0
                out.append(b)
            elif state == 0:
                if b == _IAC:
                    self.telnet = 1
                else:
                    out.append(b)
            elif state == 1:
                if b == _IAC:  # an escaped 255 byte
                    out.append(b)
                    self.telnet = 0
                elif 251 <= b <= 254:  # WILL WONT DO DONT take an option byte
                    self.telnet = 2
                elif b == _SB:
                    self.telnet = 3
                    self.sub = 0
                else:  # a two-byte command (IP, AO, AYT, NOP, ...)
                    self.telnet = 0
            elif state == 2:
                self.telnet = 0
            elif state == 3:
                self.sub += 1
                if b == _IAC:
                    self.telnet = 4
                elif self.sub > 256:  # no real subnegotiation is this long
                    self.telnet = 0
            else:
                self.telnet = 0 if b == _SE else 3
        return bytes(out)

    def feed(self, data: bytes) -> list[Any]:
        """The complete lines in ``data`` (bytes, or the too-long marker)."""
        self.buf += self._strip_telnet(data)
        out: list[Any] = []
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                if len(self.buf) > MAX_LINE:
                    if not self.discarding:
                        out.append((_TOO_LONG, bytes(self.buf[:16])))
                        self.discarding = True
                    self.buf.clear()
                return out
            line = bytes(self.buf[:i])
            del self.buf[:i + 1]
            if self.discarding:
                self.discarding = False
                continue
            if len(line) > MAX_LINE:
                out.append((_TOO_LONG, line[:16]))
                continue
            out.append(line)

    def rest(self) -> list[Any]:
        """The last line when the client closed without a line end."""
        line, self.buf = bytes(self.buf), bytearray()
        if self.discarding or not line.strip():
            return []
        return [line]


def _too_long(head: bytes) -> bytes:
    if head.lstrip()[:1] == b"{":
        return (json.dumps({"id": None, "ok": False,
                            "error": f"request line longer than {MAX_LINE} bytes; it was "
                                     "dropped"}) + "\n").encode()
    return (f"error: line longer than {MAX_LINE} bytes; it was dropped (commands are short: "
            "\"help\" lists them)\n").encode()


# -- the server ----------------------------------------------------------------------

_servers: weakref.WeakSet[ConsoleServer] = weakref.WeakSet()
_atexit_registered = False


def _stop_all() -> None:
    for server in list(_servers):
        try:
            server.stop(timeout=0.5)
        except Exception:
            pass


class _Client:
    def __init__(self, server: ConsoleServer) -> None:
        self.reader = _LineReader()
        self.ctx = Context(server.watcher, state=server.state)


class ConsoleServer:
    """A running console. ``address`` says where it listens; ``stop()`` ends it."""

    def __init__(self, watcher: Watcher, address: Address) -> None:
        self._watcher_ref = weakref.ref(watcher)
        self._requested = address
        self.address = str(address)
        self.state = SessionState()
        self.idle_timeout = watcher.options.console_idle_timeout
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._clients = 0
        self._socket_id: tuple[int, int] | None = None
        self._quiet_until = 0.0

    @property
    def watcher(self) -> Watcher:
        watcher = self._watcher_ref()
        if watcher is None:
            raise ConsoleError("the watched loop is gone")
        return watcher

    @property
    def path(self) -> str | None:
        """The Unix socket path, for a Unix socket console."""
        return self._requested.path if self._requested.kind == "unix" else None

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return self._clients

    # -- life --

    def start(self) -> None:
        global _atexit_registered
        if self._requested.kind == "unix":
            if not hasattr(socket, "AF_UNIX"):
                raise ConsoleError("Unix sockets are not available here; use tcp:HOST:PORT")
            _check_unix_path(self._requested.path)
        elif not _is_loopback(self._requested.host):
            log.warning("loopwatch: the console listens on %s, which other machines may reach; "
                        "whoever connects can list your tasks and cancel them",
                        self._requested)
        self._thread = threading.Thread(target=self._thread_main, name="loopwatch-console",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop(timeout=1.0)
            raise ConsoleError(f"the console at {self._requested} did not start within "
                               f"{START_TIMEOUT:g} s")
        if self._error is not None:
            self._thread.join(timeout=2.0)
            exc = self._error
            reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                      else f"{type(exc).__name__}: {exc}")
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                reason += " (another program or console listens there)"
            raise ConsoleError(f"cannot start the console at {self._requested}: {reason}")
        _servers.add(self)
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True
        log.info("loopwatch: console listening at %s", self.address)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, close every connection and remove the socket file."""
        if self._stopped:
            return
        self._stopped = True
        _servers.discard(self)
        aloop, scope = self._aloop, self._scope
        if aloop is not None and scope is not None:
            try:
                aloop.call_soon_threadsafe(scope.cancel)
            except RuntimeError:  # its loop already closed
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout)
        self._remove_socket()

    def _remove_socket(self) -> None:
        path = self.path
        if path is None or self._socket_id is None or os.getpid() != self._pid:
            return
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == self._socket_id:  # still ours, not a newer one
                os.unlink(path)
        except OSError:
            pass
        self._socket_id = None

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"{self._clients} clients"
        return f"<loopwatch ConsoleServer {self.address} {state}>"

    # -- the thread --

    def _thread_main(self) -> None:
        keep_out_of_signals()
        try:
            anyio.run(self._serve, backend="asyncio",
                      backend_options={"loop_factory": _plain_loop})
        except BaseException as exc:  # never let the console thread take anything down
            if not self._ready.is_set():
                self._error = exc
            else:
                log.warning("loopwatch: the console stopped after an error: %s: %s",
                            type(exc).__name__, exc, exc_info=exc)
        finally:
            self._ready.set()
            if not self._stopped:
                self._stopped = True
                _servers.discard(self)
                self._remove_socket()

    async def _listen(self) -> list[anyio.abc.SocketListener]:
        addr = self._requested
        if addr.kind == "unix":
            listener = await anyio.create_unix_listener(addr.path, mode=0o600)
            st = os.lstat(addr.path)
            self._socket_id = (st.st_dev, st.st_ino)
            return [listener]
        multi = await anyio.create_tcp_listener(local_host=addr.host, local_port=addr.port)
        listeners = [lst for lst in multi.listeners if isinstance(lst, anyio.abc.SocketListener)]
        sockname = listeners[0].extra(anyio.abc.SocketAttribute.local_address)
        self.address = str(Address("tcp", host=addr.host, port=int(sockname[1])))
        return listeners

    async def _serve(self) -> None:
        self._aloop = asyncio.get_running_loop()
        self._scope = anyio.CancelScope()
        if self._stopped:
            return
        try:
            listeners = await self._listen()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._busy = anyio.Lock()
        self._ready.set()
        with self._scope:
            async with anyio.create_task_group() as tg:
                for listener in listeners:
                    tg.start_soon(self._accept, listener, tg)

    async def _accept(self, listener: anyio.abc.SocketListener,
                      tg: anyio.abc.TaskGroup) -> None:
        complained = False
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, anyio.BrokenResourceError) as exc:
                    if not complained:  # out of file descriptors, say: wait, never die
                        log.warning("loopwatch: the console cannot accept a connection: %s",
                                    exc)
                        complained = True
                    await anyio.sleep(0.1)
                    continue
                if self._clients >= MAX_CLIENTS:
                    tg.start_soon(self._refuse, stream)
                else:
                    self._clients += 1
                    tg.start_soon(self._serve_client, stream)

    async def _refuse(self, stream: anyio.abc.SocketStream) -> None:
        with anyio.move_on_after(1.0):
            try:
                await stream.send(f"error: the loopwatch console serves {MAX_CLIENTS} clients "
                                  "already; try again when one quits\n".encode())
            except Exception:
                pass
        with anyio.CancelScope(shield=True):
            await _close(stream)

    async def _send(self, stream: anyio.abc.SocketStream, pieces: Iterable[bytes]) -> None:
        """Send one answer, piece by piece (a big JSON line is never one string)."""
        with anyio.fail_after(SEND_TIMEOUT):
            for piece in pieces:
                if piece:
                    await stream.send(piece)

    async def _serve_client(self, stream: anyio.abc.SocketStream) -> None:
        client = _Client(self)
        try:
            while True:
                chunk = b""
                with anyio.move_on_after(self.idle_timeout) as idle:
                    try:
                        chunk = await stream.receive(65536)
                    except anyio.EndOfStream:
                        chunk = b""
                if idle.cancelled_caught:
                    await self._send(stream, [f"closing: no request for "
                                              f"{self.idle_timeout:g} s "
                                              "(console_idle_timeout)\n".encode()])
                    return
                lines = client.reader.feed(chunk) if chunk else client.reader.rest()
                for line in lines:
                    reply, close = await self._answer(client, line)
                    await self._send(stream, reply)
                    if close:
                        return
                if not chunk:  # the client closed its side: answered, now done
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError):
            pass
        except Exception as exc:  # one client's trouble never takes the server down
            log.warning("loopwatch: a console connection failed", exc_info=exc)
        finally:
            self._clients -= 1
            with anyio.CancelScope(shield=True):
                await _close(stream)

    async def _answer(self, client: _Client, line: Any) -> tuple[Iterable[bytes], bool]:
        if isinstance(line, tuple):
            return [_too_long(line[1])], False
        async with self._busy:
            wait = self._quiet_until - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            started = time.monotonic()
            try:
                reply = await anyio.to_thread.run_sync(_compute, client.ctx, line,
                                                       abandon_on_cancel=True)
            finally:
                cost = time.monotonic() - started
                # Expensive answers (100k tasks) are followed by as long a pause, so the
                # console never takes more than about half of the interpreter.
                self._quiet_until = time.monotonic() + (min(cost, 2.0) if cost > 0.01 else 0.0)
        return reply, client.ctx.close


def _compute(ctx: Context, line: bytes) -> Iterable[bytes]:
    """The answer to one line, in pieces to send in turn; a failure of loopwatch's own
    is an error line, never a dead connection or server."""
    try:
        return _answer_line(ctx, line)
    except Exception as exc:
        log.warning("loopwatch: the console failed to answer a request", exc_info=exc)
        reason = f"the console failed inside loopwatch: {type(exc).__name__}: {exc}"
        if line.lstrip()[:1] == b"{":
            return [(json.dumps({"id": None, "ok": False, "error": reason}) + "\n").encode()]
        return [f"error: {reason}\n".encode()]


def _answer_line(ctx: Context, line: bytes) -> Iterable[bytes]:
    text = line.decode("utf-8", "replace").replace("\x00", "").strip()
    if not text:
        return []
    if text.startswith("{"):
        try:
            request = json.loads(text)
        except ValueError as exc:
            response: dict[str, Any] = {
                "id": None, "ok": False,
                "error": f"bad JSON request ({exc}); send one object per line, such as "
                         '{"id": 1, "cmd": "ps", "args": {"limit": 10}}'}
        else:
            response = run_json(ctx, request)
        try:
            return json_line(response)
        except ValueError as exc:  # NaN and friends, or a cycle: never a dead connection
            return [(json.dumps({"id": response.get("id"), "ok": False,
                                 "error": f"the answer could not be encoded as JSON: {exc}"})
                     + "\n").encode()]
    return [run_text(ctx, text).encode("utf-8", "replace")]


async def _close(stream: anyio.abc.SocketStream) -> None:
    with anyio.move_on_after(1.0):
        try:
            await stream.aclose()
        except Exception:
            pass


def _plain_loop() -> asyncio.AbstractEventLoop:
    """A plain asyncio loop, whatever policy the program installed: the console's own
    loop is never watched. Every task on it has a name of its own (see
    :func:`_named_task`)."""
    loop = asyncio.SelectorEventLoop()
    loop.set_task_factory(_named_task)
    return loop


def _named_task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """The console loop's task factory: a task made without a name (the runner's main
    task, its shutdown steps) is named ``loopwatch-console ...``. Unnamed, it would take
    the next of asyncio's ``Task-N`` names, counted once for the whole process, and the
    program's own first task would be ``Task-2``."""
    if kwargs.get("name") is None:
        kwargs["name"] = f"loopwatch-console {getattr(coro, '__qualname__', 'task')}"
    return asyncio.Task(coro, loop=loop, **kwargs)


def start_console(watcher: Watcher, address: str | None = "auto") -> ConsoleServer:
    """Start a console for ``watcher`` at ``address``; raises :class:`ConsoleError` with a
    one-line reason when it cannot listen there."""
    server = ConsoleServer(watcher, parse_address(address))
    server.start()
    return server
