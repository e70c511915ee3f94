"""A TCP server endpoint with ``SO_REUSEPORT``: several gateway processes on one port.

With ``reuse_port = yes`` each process opens its own listening socket on the same address and
the kernel spreads new connections over them (Linux ``SO_REUSEPORT``, socket(7)). That is how
mtlsgw uses more than one core: run N processes (for example the systemd template unit in
docs/systemd.md), each a complete gateway.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listen on *interface*:*port* (TCP) with ``SO_REUSEPORT`` and ``SO_REUSEADDR`` set.

    ``listen`` fails with ``CannotListenError`` as Twisted's TCP endpoint does.
    """

    def __init__(self, reactor: Any, port: int, interface: str, backlog: int) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory: Any) -> Deferred[Any]:
        family = socket.AF_INET6 if ":" in self._interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._interface, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            port = self._reactor.adoptStreamPort(sock.fileno(), family, factory)
        except OSError as exc:
            return fail(CannotListenError(self._interface, self._port, exc))
        finally:
            sock.close()  # adoptStreamPort keeps its own duplicate of the descriptor
        return succeed(port)
