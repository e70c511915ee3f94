"""``twistd --reactor=mtlsgw``: Twisted's epoll reactor, with writes sent at the end of each loop
iteration instead of one poll later.

Twisted's reactor sends nothing when a protocol writes: the transport asks to be told when its
socket is writable (an ``epoll_ctl`` call), the next ``epoll_wait`` says so, the data goes out, and
the transport stops asking (another ``epoll_ctl``). For a proxy, which writes a little to two
sockets per request, that is two system calls and one loop iteration per write for nothing: the
socket nearly always has room. :class:`GatewayReactor` keeps the transports that asked during an
iteration and calls their ``doWrite`` once the iteration's events are handled; only a transport
whose socket was full (data left after ``doWrite``) is registered with epoll as Twisted would.
Events are dispatched without Twisted's per-event legacy logging context (``callWithLogger``),
which only sets the ``system`` field of legacy ``log.msg`` lines written from inside a callback;
the gateway's own lines use ``twisted.logger`` namespaces.

This relies on internals of Twisted's ``EPollReactor`` (``_poller``, ``_selectables``,
``_writes``, ``_doReadOrWrite``): ``setup.cfg`` pins Twisted to the version it was written
against, and ``tests/test_reactor.py`` fails when they change. It is offered through Twisted's own
extension point, a reactor plugin, and is used only when selected (``--reactor=mtlsgw``, as the
shipped systemd unit does); the default reactor works the same, slower.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.epollreactor import EPollReactor

_FLUSH_ROUNDS = 4  # writes that cause writes, within one iteration, before epoll takes over


class GatewayReactor(EPollReactor):
    """See the module docstring."""

    def __init__(self) -> None:
        self._pending: dict[Any, None] = {}  # writers waiting for the end of the iteration
        self._flushing: Any = None
        self._flushed = False
        super().__init__()

    def addWriter(self, writer: Any) -> None:  # noqa: N802
        if writer.fileno() in self._writes:
            return  # already waiting for epoll: its socket was full
        self._pending[writer] = None

    def removeWriter(self, writer: Any) -> None:  # noqa: N802
        if writer is self._flushing:
            self._flushed = True  # everything was sent
        if self._pending.pop(writer, True) is None:
            return  # it was only pending
        super().removeWriter(writer)

    def getWriters(self) -> list[Any]:  # noqa: N802
        return [*super().getWriters(), *self._pending]

    def removeAll(self) -> list[Any]:  # noqa: N802
        pending = [w for w in self._pending if w.fileno() not in self._reads]
        self._pending.clear()
        return [*super().removeAll(), *pending]

    def _flush_writes(self) -> None:
        for _ in range(_FLUSH_ROUNDS):
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            for writer in pending:
                fd = writer.fileno()
                if fd == -1:
                    continue
                self._flushing, self._flushed = writer, False
                self._doReadOrWrite(writer, fd, self._POLL_OUT)
                self._flushing = None
                if not self._flushed and writer.fileno() != -1:
                    EPollReactor.addWriter(self, writer)  # data left: wait for room
        for writer in self._pending:  # still writing after several rounds: let epoll pace it
            if writer.fileno() != -1:
                EPollReactor.addWriter(self, writer)
        self._pending.clear()

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802
        """Send what the timed calls wrote, poll, handle the events, send what they wrote."""
        self._flush_writes()
        try:
            events = self._poller.poll(-1 if timeout is None else timeout,
                                       len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)
        self._flush_writes()

    doIteration = doPoll  # noqa: N815  (Twisted's name)


def install() -> None:
    """Install :class:`GatewayReactor` as the reactor (Twisted's ``IReactorInstaller``)."""
    from twisted.internet.main import installReactor

    installReactor(GatewayReactor())
