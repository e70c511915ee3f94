"""An upstream: its endpoint (TLS included), a keep-alive pool, and one request's life on it.

:meth:`Upstream.request` sends one request on an idle pooled connection (the most recently used
first) or a new one, and reports to its sink (the :class:`~gateway.http.exchange.Exchange`).

* **Pool.** At most ``upstream_pool_size`` idle connections are kept; each is closed after
  ``upstream_idle_timeout`` seconds unused (default 4 s: below the keep-alive timeout of Node,
  gunicorn and uvicorn, so the gateway closes first). A connection returns to the pool only when
  its response was complete, the whole request was written and both sides keep it alive.
* **Safe retry.** A request is sent again, once, on a new connection when a reused pooled
  connection fails before any byte of the response arrived and the request may be repeated:
  an idempotent method (RFC 9110 §9.2.2: ``GET``, ``HEAD``, ``PUT``, ``DELETE``, ``OPTIONS``,
  ``TRACE``) whose body is still in hand (at most 64 KiB, kept for that). Any other request
  (``POST``, ``PATCH``, ``CONNECT``, an extension method), with a body or without, is never
  repeated once its head was written (502): whether the upstream acted on it cannot be known.
* **Failures** reach the sink as one kind: ``upstream-unreachable`` (connect refused, timed out,
  DNS), ``upstream-error`` (TLS, closed before the head, malformed head), ``timeout`` (no head
  within ``upstream_response_timeout``), ``upstream-head-too-large``; after the head, as a break.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from gateway.config import UpstreamSettings
from gateway.http.client import UpstreamConnection, failure_text
from gateway.http.stream import Header
from gateway.upstream_tls import UpstreamTLS

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
RETRY_BODY_LIMIT = 64 * 1024  # bytes of request body kept for a retry; past it, none


class ResponseSink(Protocol):
    """What an upstream request reports to (the exchange)."""

    def upstream_informational(self, status: int, headers: list[Header]) -> None: ...
    def upstream_head(self, status: int, headers: list[Header], length: int | None) -> None: ...
    def upstream_data(self, data: bytes) -> None: ...
    def upstream_end(self) -> None: ...
    def upstream_failed(self, kind: str, detail: str) -> None: ...
    def upstream_broke(self, detail: str) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...


class _Factory(Factory):
    noisy = False

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def buildProtocol(self, addr: Any) -> UpstreamConnection:  # noqa: N802
        return UpstreamConnection(self.upstream)


class Upstream:
    """One configured upstream (see the module docstring). *sweep* is the
    :class:`~gateway.http.server.Sweep` that applies the connections' timeouts; *tls* the policy
    ``validate()`` built for an ``https://`` upstream."""

    def __init__(self, settings: UpstreamSettings, reactor: Any, sweep: Any,
                 tls: UpstreamTLS | None = None) -> None:
        self.settings = settings
        self.sweep = sweep
        self.closed = False
        endpoint: Any = HostnameEndpoint(reactor, settings.host.encode("idna"), settings.port,
                                         timeout=settings.connect_timeout)
        if settings.scheme == "https":
            creator = (tls or UpstreamTLS(settings)).creator()
            endpoint = wrapClientTLS(creator, endpoint)
        self.endpoint = endpoint  # IStreamClientEndpoint to the upstream, TLS included
        self._factory = _Factory(self)
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        default_port = 443 if settings.scheme == "https" else 80
        self.authority = host if settings.port == default_port else f"{host}:{settings.port}"
        self.base_path = settings.base_path.encode("ascii")

    @property
    def connection_counts(self) -> tuple[int, int]:
        """``(idle, active)``: connections kept in the pool, and those carrying a request."""
        return len(self._idle), len(self._busy)

    def host_header(self, client_host: bytes | None) -> bytes | None:
        """The ``Host`` to send: the client's (``host_header = client``), the upstream's own
        authority (``upstream``) or the configured literal."""
        mode = self.settings.host_header
        if mode == "client":
            return client_host
        if mode == "upstream":
            return self.authority.encode("idna")
        return mode.encode("ascii")

    def request(self, method: bytes, head: bytes, length: int | None,
                sink: ResponseSink) -> UpstreamRequest:
        """Send a request: *head* is its serialised head (request line with the upstream's path,
        headers including the framing header for *length*, final CRLF CRLF); *length* the body's
        size in bytes, or ``None`` for a chunked body. Body bytes follow through the returned
        :class:`UpstreamRequest`."""
        request = UpstreamRequest(self, method, head, length, sink)
        self.dispatch(request)
        return request

    def dispatch(self, request: UpstreamRequest) -> None:
        while self._idle:
            connection = self._idle.pop()
            if connection.lost:
                continue
            self._busy.add(connection)
            request.attach(connection)
            return
        connecting = self.endpoint.connect(self._factory)
        request.connecting = connecting
        connecting.addCallbacks(request.connected, request.connect_failed)

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        """*connection*'s exchange is over: keep it for the next request, or close it."""
        self._busy.discard(connection)
        if reusable and not self.closed and len(self._idle) < self.settings.pool_size:
            connection.idle()
            self._idle.append(connection)
        else:
            connection.request = None
            connection.deadline = None
            connection.transport.loseConnection()

    def forget(self, connection: UpstreamConnection) -> None:
        self._busy.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def connection_lost(self, connection: UpstreamConnection) -> None:
        self.forget(connection)

    def close(self) -> Deferred[None]:
        """Close the idle connections; those in use close when their request ends (on shutdown
        or when a reload replaced this upstream)."""
        self.closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.transport.loseConnection()
        done: Deferred[None] = Deferred()
        done.callback(None)
        return done


class UpstreamRequest:
    """One request to the upstream, from the exchange's side: feed it the body with
    :meth:`body_data` / :meth:`body_end`, pause and resume the response with
    :meth:`pauseProducing` / :meth:`resumeProducing` (an ``IPushProducer`` for the client's
    stream), :meth:`cancel` it when the client is gone."""

    def __init__(self, upstream: Upstream, method: bytes, head: bytes, length: int | None,
                 sink: ResponseSink) -> None:
        self.upstream = upstream
        self.method = method
        self.head = head
        self.length = length
        self.sink = sink
        self.connection: UpstreamConnection | None = None
        self.connecting: Deferred[Any] | None = None
        self.body_complete = length == 0
        self._held: list[bytes] = []  # body bytes not yet written (or kept for a retry)
        self._held_bytes = 0
        self._retryable = method in IDEMPOTENT
        self._retried = False
        self._cancelled = False
        self._got_head = False
        self._paused = False
        self._body_paused = False
        # time.monotonic() seconds: created, attached to a connection (request written), head in.
        self.created_at = time.monotonic()
        self.attached_at: float | None = None
        self.head_at: float | None = None

    # -- connection ----------------------------------------------------------------------------

    def connected(self, connection: UpstreamConnection) -> None:
        self.connecting = None
        if self._cancelled:
            connection.abort()
            return
        self.upstream._busy.add(connection)
        self.attach(connection)

    def connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if self._cancelled:
            return
        kind = ("upstream-unreachable"
                if failure.check(neterror.ConnectError, neterror.DNSLookupError)
                else "upstream-error")
        self.sink.upstream_failed(kind, failure_text(failure))

    def attach(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.attached_at = time.monotonic()
        held = b"".join(self._held)
        if not self._retryable or self._held_bytes > RETRY_BODY_LIMIT:
            self._held, self._held_bytes = [], 0
        first = self.head + (self._encode(held) if held else b"")
        if self.body_complete and self.length is None:
            first += b"0\r\n\r\n"
        connection.send(self, first)
        if self._paused:
            connection.pause_reading()
        if self._body_paused:
            self._body_paused = False
            self.sink.resume_request_body()

    def _encode(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.length is None else data

    def connection_failed(self, connection: UpstreamConnection, reason: Failure,
                          got_bytes: bool) -> None:
        """*connection* closed before the response head."""
        self.upstream.forget(connection)
        self.connection = None
        if self._cancelled:
            return
        repeatable = (not got_bytes and connection.reused and not self._retried
                      and self._retryable and self._held_bytes <= RETRY_BODY_LIMIT)
        if repeatable:
            self._retried = True
            self.upstream.dispatch(self)
            return
        if reason.check(neterror.ConnectionDone, neterror.ConnectionLost):
            detail = "the upstream closed the connection before the response head"
        else:
            detail = failure_text(reason)
        self.sink.upstream_failed("upstream-error", detail)

    # -- body, from the exchange ---------------------------------------------------------------

    def body_data(self, data: bytes) -> None:
        if self._cancelled or not data:
            return
        connection = self.connection
        keep = self._retryable and self._held_bytes <= RETRY_BODY_LIMIT
        if connection is None or keep:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > RETRY_BODY_LIMIT:
                if connection is None:  # held until the connection is there; stop reading
                    if not self._body_paused:
                        self._body_paused = True
                        self.sink.pause_request_body()
                else:  # already written, and too much to keep for a retry
                    self._held, self._held_bytes = [], RETRY_BODY_LIMIT + 1
        if connection is not None:
            connection.write_body(data)

    def body_end(self) -> None:
        if self._cancelled:
            return
        self.body_complete = True
        if self.connection is not None:
            self.connection.end_body()

    def cancel(self) -> None:
        """Stop: the client is gone, or the request must not complete (body over the limit)."""
        if self._cancelled:
            return
        self._cancelled = True
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.abort()

    # -- IPushProducer for the client side -----------------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True
        if self.connection is not None:
            self.connection.pause_reading()

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        if self.connection is not None:
            self.connection.resume_reading()

    def stopProducing(self) -> None:  # noqa: N802
        self.cancel()

    # -- response, from the connection ---------------------------------------------------------

    def response_head(self, status: int, headers: list[Header], length: int | None) -> None:
        self.head_at = time.monotonic()
        self._got_head = True
        self._held, self._held_bytes = [], 0
        self.sink.upstream_head(status, headers, length)

    def response_end(self) -> None:
        self.connection = None
        self.sink.upstream_end()

    def failed(self, kind: str, detail: str) -> None:
        self.connection = None
        if not self._cancelled:
            self.sink.upstream_failed(kind, detail)

    def broke(self, detail: str) -> None:
        self.connection = None
        if not self._cancelled:
            self.sink.upstream_broke(detail)
