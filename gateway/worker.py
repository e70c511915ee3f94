"""One worker process of ``[gateway] workers = N`` (see :mod:`gateway.workers`).

    python -m gateway.worker --config FILE --number N --listeners JSON [--reactor NAME]

The supervisor starts it with the listening sockets it bound as descriptors 3, 4, ... and
``--listeners`` naming them: ``{"main": {"fd": 3, "listen": "tcp:8443", "tls": true}, ...}``.
The worker runs the normal :class:`~gateway.service.GatewayService` from the file, with each
listener adopting its descriptor (:class:`InheritedEndpoint`) instead of binding. It writes its log
events to stdout, one a line (:class:`PipeLogObserver`), for the supervisor to relay; a
configuration error is one line on stderr and exit status 1. Its stdin is a pipe from the
supervisor: when that reaches end of file (the supervisor is gone) the worker stops as on
``SIGTERM``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import ILogObserver, LogEvent, eventAsJSON
from zope.interface import implementer

MAX_BUFFERED = 512  # log lines held before they are written anyway
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


@implementer(ILogObserver)
class PipeLogObserver:
    """A worker's log, for its supervisor (:func:`gateway.workers.worker_event` reads it): one
    line per event on *out* (binary). An access line (namespace ``mtlsgw.access``, format
    ``{access}``) is written as ``A <time> <level> <line>``, cheaply (with a JSON log record:
    ``R <JSON [time, level, line, record members]>``); any other event as Twisted's
    JSON (``eventAsJSON``). Lines are buffered until the end of the reactor iteration that
    produced them (one write for many requests), as :mod:`gateway.accesslog` does; once *clock*
    is set. Until then, and when :data:`MAX_BUFFERED` lines wait, they are written at once."""

    clock: Any = None

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lines: list[str] = []
        self._scheduled = False

    def __call__(self, event: LogEvent) -> None:
        access = event.get("access")
        if access is not None and not isinstance(access, str):  # a JSON-mode line, made lazily
            access = str(access)
        level = event.get("log_level")
        if (event.get("log_namespace") == "mtlsgw.access" and event.get("log_format") == "{access}"
                and isinstance(access, str) and level is not None):
            members = event.get("mtlsgw_request")
            when = event.get("log_time", 0.0)
            if members is not None:  # [log] format = json: the record too (ASCII, one line)
                line = "R " + _encode([when, level.name, access, members])
            else:
                line = f"A {when!r} {level.name} {access.replace(chr(10), ' ')}"
        else:
            line = eventAsJSON(event)
        self._lines.append(line + "\n")
        if self.clock is None or len(self._lines) >= MAX_BUFFERED:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write the buffered lines."""
        self._scheduled = False
        if self._lines:
            text, self._lines = "".join(self._lines), []
            try:
                self._out.write(text.encode("utf-8", "replace"))
                self._out.flush()
            except BrokenPipeError:
                pass  # the supervisor is gone; the worker is stopping (ParentWatch)


@implementer(IListeningPort)
class _SharedUNIXPort:
    """A Unix listening socket this process shares with others. Stopping only stops accepting on
    it: closing the port would remove its socket file, which the supervisor owns; the descriptor
    goes when the process exits."""

    def __init__(self, reactor: Any, port: Any) -> None:
        self._reactor = reactor
        self._port = port

    def startListening(self) -> None:  # noqa: N802
        pass

    def stopListening(self) -> None:  # noqa: N802
        self._reactor.removeReader(self._port)

    def getHost(self) -> Any:  # noqa: N802
        return self._port.getHost()


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """Accept connections on *fd*, a listening stream socket (TCP or Unix) this process
    inherited, with ``reactor.adoptStreamPort``. ``listen`` closes *fd* (the port keeps its own
    duplicate) and fails with ``CannotListenError`` if *fd* is not a usable socket. Stopping the
    port closes this process's descriptor, but never shuts the shared socket down (Twisted does
    not for an adopted port), so the other workers keep accepting."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listen(self, factory: Any) -> Deferred[Any]:
        try:
            with socket.socket(fileno=os.dup(self._fd)) as probe:
                family = probe.family
            port = self._reactor.adoptStreamPort(self._fd, family, factory)
        except OSError as exc:
            return fail(CannotListenError(None, f"inherited descriptor {self._fd}", exc))
        finally:
            os.close(self._fd)
        if family == socket.AF_UNIX:
            port = _SharedUNIXPort(self._reactor, port)
        return succeed(port)


@implementer(IReadDescriptor)
class ParentWatch:
    """Calls *gone* when descriptor *fd* (a pipe from the supervisor) reaches end of file or
    breaks (the reactor reports a hang-up as a lost connection), and when the reactor shuts
    down."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802
        return "mtlsgw-worker"

    def doRead(self) -> Any:  # noqa: N802 (an exception instance ends it, as in Twisted)
        try:
            data = os.read(self._fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self._gone()


def main(argv: list[str] | None = None) -> int:
    """Run one worker until ``SIGTERM`` or until the supervisor goes away; the exit status."""
    pending_reload: list[int] = []  # a SIGHUP before the service installs its own handler
    signal.signal(signal.SIGHUP, lambda *_: pending_reload.append(1))
    # The supervisor writes the log (and rotates it on SIGUSR1); ``systemctl kill -s USR1``
    # signals every process of the service, and must not end the workers.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m gateway.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--listeners", required=True, help="JSON: name -> {fd, listen, tls}")
    parser.add_argument("--reactor", help="a twistd --reactor name (the supervisor's)")
    args = parser.parse_args(argv)
    inherited: dict[str, dict[str, Any]] = json.loads(args.listeners)
    if args.reactor:
        from twisted.application.reactors import installReactor

        installReactor(args.reactor)

    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner

    from gateway import config
    from gateway.service import build

    observer = PipeLogObserver(sys.stdout.buffer)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log = Logger(namespace="mtlsgw.workers")
    try:
        settings = config.load(args.config)
        started = {name: (spec["listen"], spec["tls"]) for name, spec in inherited.items()}
        if {x.name: (x.listen, x.tls) for x in settings.listeners} != started:
            raise config.ConfigError(f"{settings.path}: listeners changed since the supervisor "
                                     "started (listen, tls); restart to apply")
        service = build(args.config, reactor,
                        inherited={name: spec["fd"] for name, spec in inherited.items()})
    except config.ConfigError as exc:
        sys.stderr.write(f"mtlsgw: {exc}\n")
        return 1

    stopping: list[int] = []
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, 1)

    def supervisor_gone() -> None:
        if reactor.running and not stopping:  # not the reactor's own shutdown
            log.warn("the supervisor is gone; stopping")
            reactor.stop()

    reactor.addReader(ParentWatch(0, supervisor_gone))
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
    reactor.callWhenRunning(setattr, observer, "clock", reactor)
    if pending_reload:
        reactor.callWhenRunning(service.reload)
    log.info("serving pid={pid}", pid=os.getpid())
    reactor.run()
    observer.flush()  # the reactor's own last lines
    return 0


if __name__ == "__main__":
    sys.exit(main())
