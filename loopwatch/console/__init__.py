"""The console: inspect a running program over a socket, while its loop runs or is blocked.

``start_console(watcher, address)`` starts the server in its own thread; the
commands, the client, ``loopwatch top`` and the CLI subcommands live beside it.
"""

from .server import ConsoleServer as ConsoleServer
from .server import start_console as start_console

__all__ = ["ConsoleServer", "start_console"]
