"""``[status]``: the status listener (``/healthz``, ``/readyz``, ``/metrics``), readiness, and the
metrics wiring of one process (docs/operations.md#status-listener).

:class:`Operations` is what :class:`~gateway.service.GatewayService` and the ``workers``
supervisor call at their few hook points: listen, started, draining, reloaded, stopped. It exists
only with a ``[status]`` section (and in a worker whose supervisor has one), so without it the
request path pays one ``is None`` test.

The listener speaks plain HTTP/1.1 with the gateway's own request parser
(:class:`~gateway.http.h1.RequestParser`), one request per connection (``Connection: close``):
it is low-volume, never carries client traffic and never asks for a client certificate.
``GET``/``HEAD`` on ``/healthz`` (200 ``ok``), ``/readyz`` (200, or 503 with a one-line reason)
and ``/metrics`` (``prometheus_client``'s text exposition); any other path is 404, another method
on those paths 405.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import config
from gateway.http import h1
from gateway.http.stream import RequestHead
from gateway.metrics import SAMPLE_INTERVAL, GatewayMetrics
from gateway.routes import RouteTable

if TYPE_CHECKING:
    from gateway.service import GatewayService, Generation

log = Logger(namespace="mtlsgw.status")

METRICS_DIR_ENV = "MTLSGW_METRICS_DIR"  # where a worker writes its snapshots (workers = N)
REQUEST_TIMEOUT = 10.0  # seconds a status connection may take to send its request
MAX_CONNECTIONS = 64  # open status connections; a new one past it closes one (_eviction)
_TEXT = b"text/plain; charset=utf-8"


# -- readiness -----------------------------------------------------------------------------------


@attrs.define
class RouteCheck:
    """``ready_check = yes`` of one route: whether every connect probe of the last *window*
    seconds failed. Pure: fed results and times."""

    route: str
    upstream: str  # the upstream URL, for the reason line
    window: float  # seconds
    failing_since: float | None = None  # time of the first failure after the last success

    def record(self, ok: bool, now: float) -> None:
        """One probe's result at *now* (seconds)."""
        if ok:
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = now

    def failing(self, now: float) -> bool:
        """Every probe since ``window`` seconds before *now* failed."""
        return self.failing_since is not None and now - self.failing_since >= self.window


@attrs.define
class Readiness:
    """What ``/readyz`` answers. Pure: :meth:`report` is given the time."""

    state: str = "starting"  # starting | ready | draining
    reload_error: str | None = None  # the last reload's refusal, while no reload succeeded
    checks: list[RouteCheck] = attrs.field(factory=list)
    # The workers supervisor: why its workers are not all up, or None.
    workers: Callable[[], str | None] | None = None

    def report(self, now: float) -> tuple[bool, str]:
        """``(ready, one line)``: not ready while starting, draining, while a worker is not up,
        or while a checked route's upstream refused every connection for its window; ready
        otherwise, the line saying when the last reload was refused."""
        if self.state != "ready":
            return False, self.state
        waiting = self.workers() if self.workers is not None else None
        if waiting is not None:
            return False, waiting
        for check in self.checks:
            if check.failing(now):
                return False, (f"route {check.route}: upstream {check.upstream} refused "
                               f"connections for the last {check.window:g} s")
        if self.reload_error is not None:
            return True, f"ready; last reload failed: {self.reload_error}"
        return True, "ready"


class _Probe(Protocol):
    transport: Any

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.loseConnection()


class _ProbeFactory(Factory):
    noisy = False
    protocol = _Probe


class UpstreamProbe:
    """Connects to a route's upstream (TCP, no request) every :func:`probe_interval` seconds and
    records the outcome in its :class:`RouteCheck`."""

    def __init__(self, reactor: Any, upstream: config.UpstreamSettings, check: RouteCheck) -> None:
        self._reactor = reactor
        self._endpoint = HostnameEndpoint(reactor, upstream.host.encode("idna"), upstream.port,
                                          timeout=upstream.connect_timeout)
        self.check = check
        self._busy = False
        self._loop = LoopingCall(self._probe)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(probe_interval(self.check.window), now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _probe(self) -> None:
        if self._busy:
            return
        self._busy = True
        connecting = self._endpoint.connect(_ProbeFactory())
        connecting.addCallbacks(lambda _: self._done(True), lambda _: self._done(False))

    def _done(self, ok: bool) -> None:
        self._busy = False
        self.check.record(ok, self._reactor.seconds())


def probe_interval(window: float) -> float:
    """Seconds between two probes: a fifth of the window, between 0.1 and 2 s."""
    return min(2.0, max(0.1, window / 5))


# -- the status listener ------------------------------------------------------------------------


class StatusProtocol(Protocol):
    """One connection to the status listener: one request, one response, close."""

    transport: Any
    factory: Any  # the StatusFactory

    def connectionMade(self) -> None:  # noqa: N802
        factory = self.factory
        self._source = getattr(self.transport.getPeer(), "host", "unix")
        if len(factory.open) >= MAX_CONNECTIONS:
            victim = _eviction(factory.open)
            del factory.open[victim]
            victim.transport.abortConnection()
        factory.open[self] = None
        self._parser = h1.RequestParser(self, 8192, 100)
        self._head: RequestHead | None = None
        self._answered = False
        self._timer = factory.operations.reactor.callLater(REQUEST_TIMEOUT,
                                                           self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._answered:
            return
        try:
            self._parser.feed(data)
        except h1.RequestError as error:
            if self._answered:  # bytes after the answered request: ignored, as later ones are
                return
            self._answer(error.status, b"%d %s\n" % (error.status, h1.reason_phrase(error.status)))
        except Exception:  # a bug, never the client's doing
            log.failure("status request failed")
            if not self._answered:
                self._answer(500, b"500 Internal Server Error\n")

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.factory.open.pop(self, None)
        timer = getattr(self, "_timer", None)
        if timer is not None and timer.active():
            timer.cancel()

    # h1.Receiver
    def request_head(self, head: RequestHead) -> None:
        self._head = head
        if head.expect_continue:
            # Nothing here takes a body, so the final answer needs none: it goes at once, in
            # place of 100 Continue, and the client sends no body (RFC 9110, section 10.1.1).
            self._respond(head)

    def request_body(self, data: bytes) -> None:
        pass  # nothing here takes a body

    def request_end(self) -> None:
        if self._head is not None and not self._answered:
            self._respond(self._head)

    def _respond(self, head: RequestHead) -> None:
        path = head.target.split(b"?", 1)[0]
        scheme, absolute, rest = path.partition(b"://")
        if absolute and scheme.lower() in (b"http", b"https"):
            path = b"/" + rest.partition(b"/")[2]  # absolute-form: its path (RFC 9112 §3.2.2)
        handler = self.factory.operations.pages.get(path)
        if handler is None:
            self._answer(404, b"404 Not Found\n")
        elif head.method not in (b"GET", b"HEAD"):
            self._answer(405, b"405 Method Not Allowed\n", [(b"Allow", b"GET, HEAD")])
        else:
            status, content_type, body = handler()
            self._answer(status, body, content_type=content_type,
                         send_body=head.method != b"HEAD")

    def _answer(self, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = (),
                content_type: bytes = _TEXT, send_body: bool = True) -> None:
        self._answered = True
        self.transport.write(h1.response_head(b"HTTP/1.1", status, [
            (b"Content-Type", content_type), (b"Content-Length", b"%d" % len(body)),
            (b"Cache-Control", b"no-store"), *headers, (b"Connection", b"close")])
            + (body if send_body else b""))
        self.transport.loseConnection()


def _eviction(open_: dict[StatusProtocol, None]) -> StatusProtocol:
    """The connection a newcomer closes when :data:`MAX_CONNECTIONS` are open: the oldest one
    still waiting for its request from the source address that holds the most waiting ones.
    Something holding connections open (or opening them as fast as it can) then closes its own,
    and a probe from another address (the kubelet's, Prometheus') is still answered."""
    waiting = [p for p in open_ if not p._answered]  # in the order they connected
    if not waiting:
        return next(iter(open_))
    counts = Counter(p._source for p in waiting)
    source = max(counts, key=counts.__getitem__)
    return next(p for p in waiting if p._source == source)


class StatusFactory(Factory):
    noisy = False

    def __init__(self, operations: Operations) -> None:
        self.operations = operations
        self.open: dict[StatusProtocol, None] = {}  # in the order they connected

    def buildProtocol(self, addr: Any) -> StatusProtocol:  # noqa: N802
        protocol = StatusProtocol()
        protocol.factory = self
        return protocol


# -- one process's operations -------------------------------------------------------------------


def connection_sample(factories: dict[str, Any]) -> list[tuple[tuple[str, ...], float]]:
    """``((listener, protocol), count)`` of the open client connections (0 for a protocol with
    none)."""
    counts: dict[tuple[str, ...], float] = {}
    for name, factory in factories.items():
        for protocol in ("h1", "h2", "websocket"):
            counts[(name, protocol)] = 0
        for connection in factory.connections:
            protocol = connection.protocol
            if protocol is not None:
                counts[(name, protocol)] += 1
    return list(counts.items())


def pool_sample(generation: Generation) -> list[tuple[tuple[str, ...], float]]:
    """``((route, state), count)`` of the upstream connections of the generation in force."""
    found: list[tuple[tuple[str, ...], float]] = []
    for table in generation.tables.values():
        for route in table:
            idle, active = route.upstream.connection_counts
            found += [((route.name, "idle"), idle), ((route.name, "active"), active)]
    return found


class Operations:
    """``[status]`` in one process (see the module docstring). *role*: ``single``, ``worker``
    (metrics only, for the supervisor to read) or ``supervisor``."""

    def __init__(self, settings: config.GatewaySettings, reactor: Any, role: str) -> None:
        self.reactor = reactor
        self.role = role
        self.serving = role != "worker"  # serves the status listener, counts reloads
        self.status = settings.status
        self.metrics = GatewayMetrics(role)
        self.readiness = Readiness()
        self.pages: dict[bytes, Callable[[], tuple[int, bytes, bytes]]] = {
            b"/healthz": lambda: (200, _TEXT, b"ok\n"),
            b"/readyz": self._readyz,
            b"/metrics": self._metrics,
        }
        self._port: Any = None
        self._probes: list[UpstreamProbe] = []
        self._sampler: LoopingCall | None = None

    @classmethod
    def for_service(cls, settings: config.GatewaySettings, reactor: Any,
                    worker: bool) -> Operations | None:
        """The operations of a :class:`~gateway.service.GatewayService`, or ``None`` (no
        ``[status]``; in a worker: its supervisor set no ``MTLSGW_METRICS_DIR``)."""
        if worker:
            return cls(settings, reactor, "worker") if os.environ.get(METRICS_DIR_ENV) else None
        return cls(settings, reactor, "single") if settings.status is not None else None

    def _readyz(self) -> tuple[int, bytes, bytes]:
        ready, line = self.readiness.report(self.reactor.seconds())
        return (200 if ready else 503), _TEXT, line.encode("utf-8", "replace") + b"\n"

    def _metrics(self) -> tuple[int, bytes, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return 200, CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(self.metrics.registry)

    # -- GatewayService --------------------------------------------------------------------------

    def instrument(self, generation: Generation) -> Generation:
        """*generation* with the authorizers its routes list timed (``mtlsgw_authorizer_*``).
        An ``expr`` rule is left as it is: the policy evaluates it itself, leaves included."""
        from gateway.authz.rule import ExprAuthorizer

        def timed(named: Any) -> Any:
            if isinstance(named.authorizer, ExprAuthorizer):
                return named
            return attrs.evolve(named, authorizer=self.metrics.authorizer(named.name,
                                                                         named.authorizer))

        tables = {}
        for name, table in generation.tables.items():
            tables[name] = RouteTable([attrs.evolve(route, policy=attrs.evolve(
                route.policy, authorizers=tuple(map(timed, route.policy.authorizers))))
                for route in table], table.escaped_slashes)
        return attrs.evolve(generation, tables=tables)

    def attach(self, service: GatewayService) -> None:
        """Give *service*'s listeners their metrics; sample its connections and pools."""
        for name, factory in service.factories.items():
            factory.metrics = self.metrics.listener(name)
        self.metrics.sample_from(lambda: connection_sample(service.factories),
                                 lambda: pool_sample(service.generation))

    # -- every role ------------------------------------------------------------------------------

    def listen(self) -> None:
        """Open the status listener (not in a worker); a port that cannot be opened stops the
        start with one line."""
        if not self.serving or self.status is None:
            return
        results: list[Any] = []
        serverFromString(self.reactor, self.status.listen).listen(
            StatusFactory(self)).addBoth(results.append)
        if results and isinstance(results[0], Failure):
            error = results[0].value
            problem = getattr(error, "socketError", None) or error
            (sys.__stderr__ or sys.stderr).write(  # the process's, not twistd's log
                f"mtlsgw: {self.status.location.path}: [status] listen = "
                f"{self.status.listen!r}: cannot listen ({problem})\n")
            raise SystemExit(1)
        self._port = results[0] if results else None

    def started(self, settings: config.GatewaySettings) -> None:
        """Every listener is bound and *settings* are in force."""
        if self.role == "worker":
            self._sampler = LoopingCall(self._snapshot)
            self._sampler.clock = self.reactor
            self._sampler.start(SAMPLE_INTERVAL, now=True)
            return
        self.metrics.configured(settings, None)
        self._check_routes(settings)
        self.readiness.state = "ready"

    def draining(self) -> None:
        """SIGTERM: ``/readyz`` answers 503 from now on."""
        self.readiness.state = "draining"

    def reloaded(self, settings: config.GatewaySettings | None, error: str | None) -> None:
        """A reload put *settings* in force, or was refused for *error* (one line)."""
        if not self.serving:
            return
        if settings is not None and settings.status != self.status:
            log.warn("reload: [status] changed; that takes effect on restart")
        if settings is None:
            self.readiness.reload_error = error
            self.metrics.configured(None, False)
            return
        self.readiness.reload_error = None
        self.metrics.configured(settings, True)
        self._check_routes(settings)

    def stop(self) -> None:
        """The process is about to exit: close the status listener, stop probing."""
        for probe in self._probes:
            probe.stop()
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
            self._snapshot()  # the last counts, for the supervisor to keep
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()

    def _snapshot(self) -> None:
        try:
            self.metrics.write_snapshot(os.environ[METRICS_DIR_ENV])
        except OSError as exc:
            log.warn("cannot write the metrics snapshot: {error}", error=str(exc))

    def _check_routes(self, settings: config.GatewaySettings) -> None:
        for probe in self._probes:
            probe.stop()
        self._probes = [UpstreamProbe(self.reactor, route.upstream, RouteCheck(
            route.name, route.upstream.url, route.upstream.ready_check_window))
            for route in settings.routes if route.upstream.ready_check]
        self.readiness.checks = [probe.check for probe in self._probes]
        for probe in self._probes:
            probe.start()
