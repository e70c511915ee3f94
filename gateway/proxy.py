"""The request path: authorize, then stream the request to the upstream and the response back.

A :class:`ProxyRequest` starts working as soon as the request head is parsed (Twisted's
``gotLength`` hook), not after the body has been buffered: the authorization decision is taken
first, then the upstream request starts with a body producer fed by the client's bytes as they
arrive. Both directions apply backpressure: a slow upstream pauses reading from the client, a
slow client pauses reading from the upstream, so memory stays flat whatever the body size.

Status codes the gateway writes itself: 400 (request target not in origin-form), 403 (no
authorizer allowed; body names the reason id), 502 (upstream refused, unreachable or broke before
the response head), 504 (no response head within ``upstream_response_timeout``). An upstream that
breaks after the response head has been sent aborts the client connection, so the client can never
take a truncated body for a complete one.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from gateway.authz.interfaces import Decision, RequestInfo
from gateway.authz.policy import Policy
from gateway.channel import GatewayChannel, reason_phrase
from gateway.config import HeaderSettings
from gateway.headers import upstream_request_headers, without_hop_by_hop
from gateway.logfmt import clean
from gateway.routes import RouteTable, upstream_target
from gateway.target import check_request, host_name
from gateway.upstream import Upstream
from gateway.websocket import is_websocket_upgrade, relay

access_log = Logger(namespace="mtlsgw.access")
_H2_INTERNAL_ERROR = 2  # RFC 9113 §7

# Bytes of request body held while the upstream connection is being set up; past it the
# client is paused.
_BODY_BUFFER_LIMIT = 64 * 1024


@attrs.frozen
class Route:
    """What one request needs from the configuration: who may pass, where to, which headers.

    Immutable; a reload builds new ones and new requests pick them up. ``prefix``/``host`` select
    the route (:class:`~gateway.routes.RouteTable`); ``strip_prefix`` removes the prefix from the
    path sent upstream.
    """

    name: str
    prefix: str
    host: str | None
    strip_prefix: bool
    policy: Policy
    headers: HeaderSettings
    upstream: Upstream


@implementer(IBodyProducer)
class StreamingBody:
    """The client's request body, handed to Twisted's HTTP client as it arrives.

    ``length`` is the client's ``Content-Length`` (bytes) or ``UNKNOWN_LENGTH`` for a chunked
    body (the client library then sends it chunked). Until the upstream connection asks for the
    body, up to 64 KiB is held; past that, and whenever the upstream's socket is full, reading from
    the client is paused.
    """

    def __init__(self, length: int | None, client: Any) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self._client: Any = client  # the client's transport: an IPushProducer of request bytes
        self._consumer: Any = None
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._complete = False
        self._stopped = False
        self._client_paused = False
        self._done: Deferred[None] = Deferred()

    def received(self, data: bytes) -> None:
        """Called with each chunk of the client's (de-chunked) body."""
        if self._stopped:
            return
        if self._consumer is not None:
            self._consumer.write(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > _BODY_BUFFER_LIMIT:
            self.pauseProducing()

    def complete(self) -> None:
        """Called once the client's body has been received completely."""
        self._complete = True
        if self._consumer is not None and not self._done.called:
            self._done.callback(None)

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        self._consumer = consumer
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            consumer.write(data)
        self.resumeProducing()
        if self._complete:
            return succeed(None)
        return self._done

    def pauseProducing(self) -> None:  # noqa: N802
        if not self._client_paused:
            self._client_paused = True
            self._client.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self._client_paused and not self._stopped:
            self._client_paused = False
            self._client.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        """The upstream request is over (failed or cancelled): drop the rest of the body."""
        self._stopped = True
        if self._client_paused:
            self._client_paused = False
            self._client.resumeProducing()


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """Receives the upstream response body and writes it to the client request.

    Registered as the request's producer: when the client's socket is full the upstream
    connection is paused.
    """

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._exchange.relay_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._exchange.relay_done(reason)

    # The transport deliverBody gives us is Twisted's TransportProxyProducer (an IPushProducer).
    def pauseProducing(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class Exchange:
    """One client request and its upstream counterpart, from request head to access-log line."""

    def __init__(self, request: ProxyRequest, connection: GatewayChannel, stream: Any,
                 length: int | None) -> None:
        self.request = request
        self.routes: RouteTable[Route] = connection.factory.routes
        self.route: Route | None = None
        # The client connection (identity, limits) and what carries this request on it: the TLS
        # transport for HTTP/1.1, the H2Stream for HTTP/2 (pause, resume and abort apply to it).
        self.channel = connection
        self.stream = stream
        self.http2 = stream is not connection.tls
        self.started = time.monotonic()
        self.body = StreamingBody(length, stream) if length != 0 else None
        self.body_complete = length == 0
        self.length = length
        self.received_bytes = 0
        self.decision: Decision | None = None
        self.local_reason: str | None = None  # why the gateway answered by itself
        self.client_host: bytes | None = None  # the request's Host, read once in start()
        self.upstream_status: int | str = "-"
        self.finished = False
        self.client_gone = False
        self._upstream: Deferred[IResponse] | None = None
        self._relay: ResponseRelay | None = None
        self._timer: Any = None
        self._timed_out = False
        self._response_complete = False
        # Twisted's channel is still parsing the head while start() runs; a request without a
        # body is "received" right after. Finishing before that would confuse the channel.
        self.received = False
        self._finish_pending = False
        request.notifyFinish().addErrback(self._client_lost)

    # -- request side ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.client_gone:
            return
        request = self.request
        if self.http2:
            # Twisted adds :authority as a Host header: one equal Host is no conflict (RFC 9113).
            hosts = request.requestHeaders.getRawHeaders(b"host") or []
            if len(set(hosts)) == 1:
                request.requestHeaders.setRawHeaders(b"host", hosts[:1])
            # max_head_size, as the HTTP/1.1 parser applies it (HPACK-decoded size, per stream).
            size = len(request.method) + len(request.uri) + sum(
                len(n) + len(v) + 4 for n, v in _raw_pairs(request.requestHeaders))
            if size > self.channel.factory.limits.max_head_size:
                self.respond_locally(431, "request-head-too-large")
                return
        problem = check_request(request.uri, request.clientproto,
                                request.requestHeaders.getRawHeaders(b"host"),
                                self.channel.server_name, request.method)
        if problem is not None:
            self.respond_locally(*problem)
            return
        if request.method == b"CONNECT":  # a reverse proxy, not a tunnel (nor RFC 8441)
            self.respond_locally(405, "connect-not-supported")
            return
        host = self.client_host = request.getHeader(b"host")
        self.route = self.routes.match(host_name(host) if host else None,
                                       request.path.decode("latin-1"))
        if self.route is None:
            self.respond_locally(404, "no-route")
            return
        if self.too_large(self.length):
            return
        info = RequestInfo(
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            host=host.decode("latin-1") if host is not None else None,
            server_name=self.channel.server_name,
            client_address=_client_ip(request),
        )
        self.route.policy.decide(self.channel.identity, info).addCallback(self._decided)

    @property
    def _route(self) -> Route:
        assert self.route is not None  # set by start() before anything reaches the upstream
        return self.route

    def too_large(self, size: int | None) -> bool:
        """Refuse with 413 when *size* bytes of body exceed ``max_body_size``."""
        limit = self.channel.factory.limits.max_body_size
        if not limit or size is None or size <= limit or self.finished:
            return False
        if self.request.startedWriting:  # the upstream already answered: cannot send a 413
            self._abort_client("request body over max_body_size after the response started")
        else:
            self.respond_locally(413, "request-body-too-large")
        return True

    def body_received(self, data: bytes) -> None:
        if self.finished:
            return
        self.received_bytes += len(data)
        if self.too_large(self.received_bytes):
            if self._upstream is not None:
                self._upstream.cancel()  # the upstream must not take a truncated body
            return
        if self.body is not None:
            self.body.received(data)

    def body_done(self) -> None:
        self.received = True
        self.body_complete = True
        if self.body is not None:
            self.body.complete()
        if self._finish_pending or self._response_complete:
            self._finish()
        elif self._upstream is not None:
            self._start_response_timer()

    def _decided(self, decision: Decision) -> None:
        self.decision = decision
        if self.client_gone or self.finished:
            return
        if not decision.allowed:
            self.respond_locally(403, decision.reason)
            return
        if self.request.expects_continue and not self.body_complete:
            # RFC 9110 §10.1.1: only now, allowed, may the client send its body.
            if self.http2:
                self.stream._send100Continue()
            else:
                self.channel.tls.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request = self.request
        route = self._route
        upstream = route.upstream
        client_host = self.client_host
        upstream_host = upstream.host_header(client_host)
        client_headers = _raw_pairs(request.requestHeaders)
        headers = upstream_request_headers(
            client_headers,
            self.channel.identity,
            route.headers,
            _client_ip(request),
            client_host,
            tls=self.channel.factory.tls,
            upstream_host=upstream_host if upstream_host != client_host else None,
        )
        outgoing = Headers()
        for name, value in headers:
            outgoing.addRawHeader(name, value)
        target = upstream_target(request.uri, route.prefix, route.strip_prefix)
        if is_websocket_upgrade(request.method, client_headers):
            # Agent cannot upgrade: gateway.websocket relays it over a connection of its own.
            relay(self.channel, request.method, target, headers, upstream,
                  self.channel.factory.reactor).addCallbacks(self._upgraded, self._upgrade_failed)
            return
        try:
            self._upstream = upstream.request(request.method, target, outgoing, self.body)
        except Exception:  # e.g. a target Agent refuses: never leave the client hanging
            self._upstream_failed(Failure())
            return
        self._upstream.addCallbacks(self._got_response, self._upstream_failed)
        if self.body_complete:
            self._start_response_timer()

    def _upgraded(self, status: int) -> None:
        # The upstream's head (101, or another status) has been written to the client by relay.
        if self.client_gone or self.finished:
            return
        self.upstream_status = status
        self.request.code = status
        self.request.startedWriting = 1  # for the access line only; relay owns the connection
        self._log_access()
        self.finished = True

    def _upgrade_failed(self, failure: Failure) -> None:
        if self.client_gone or self.finished:
            return
        self.upstream_status = "upstream-unreachable"
        access_log.warn("upstream request failed: {error}", error=clean(_failure_text(failure)))
        self.respond_locally(502, "upstream-unreachable")

    def _start_response_timer(self) -> None:
        timeout = self._route.upstream.settings.response_timeout
        if timeout and self._timer is None and self._relay is None:
            self._timer = self.channel.callLater(timeout, self._response_too_slow)

    def _response_too_slow(self) -> None:
        self._timer = None
        self._timed_out = True
        if self._upstream is not None:
            self._upstream.cancel()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- response side --------------------------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._cancel_timer()
        self.upstream_status = response.code
        request = self.request
        if self.client_gone:
            response.deliverBody(_Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        for name, value in without_hop_by_hop(list(_raw_pairs(response.headers))):
            request.responseHeaders.addRawHeader(name, value)
        if request.method == b"HEAD":
            # No body follows; Content-Length, if the upstream sent one, describes the resource
            # (RFC 9110 §8.6). Twisted's client leaves it in the headers for HEAD.
            length = response.headers.getRawHeaders(b"content-length")
            if length:
                request.responseHeaders.setRawHeaders(b"content-length", length[:1])
        elif response.length is not UNKNOWN_LENGTH and response.code not in (204, 304):
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % response.length])
        self._relay = ResponseRelay(self)
        request.registerProducer(self._relay, True)
        response.deliverBody(self._relay)

    def relay_data(self, data: bytes) -> None:
        if not self.client_gone:
            self.request.write(data)

    def relay_done(self, reason: Failure) -> None:
        if self.client_gone:
            return
        self.request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._response_complete = True
            if self.body_complete:
                self._finish()
            else:
                # The upstream answered before the client finished sending: close after this.
                self._stop_reading_client()
                self._finish()
            return
        self._abort_client(f"upstream broke mid-response: {_failure_text(reason)}")

    def _abort_client(self, why: str) -> None:
        """Abort the client connection: the response cannot be completed truthfully."""
        access_log.warn("aborting client connection peer={peer}: {why}",
                        peer=_client_ip(self.request), why=clean(why))
        self.upstream_status = f"{self.upstream_status}-aborted"
        self._log_access()
        self.finished = True
        if self.http2:
            # Only this stream, with an error code: a NO_ERROR reset (Twisted's abortConnection)
            # lets clients take the truncated body for a complete one (RFC 9113 §8.1).
            connection = self.stream._conn
            connection.conn.reset_stream(self.stream.streamID, error_code=_H2_INTERNAL_ERROR)
            if connection._tryToWriteControlData():
                connection._requestDone(self.stream.streamID)
        else:
            self.channel.tls.abortConnection()

    def _upstream_failed(self, failure: Failure) -> None:
        self._cancel_timer()
        if self.client_gone or self.finished:
            return
        if self._timed_out:
            self.upstream_status = "timeout"
            self.respond_locally(504, "upstream-timeout")
            return
        failure.trap(Exception)
        reason = "upstream-unreachable" if _is_connect_error(failure) else "upstream-error"
        self.upstream_status = reason
        access_log.warn("upstream request failed: {error}", error=clean(_failure_text(failure)))
        self.respond_locally(502, reason)

    # -- endings --------------------------------------------------------------------------------

    def respond_locally(self, code: int, reason: str) -> None:
        """Answer the client from the gateway itself: status *code*, a short text body naming
        *reason*. If the request body is still arriving, the connection closes after this."""
        if self.finished:
            return
        self.local_reason = reason
        request = self.request
        phrase = reason_phrase(code)
        body = b"%d %s: %s\n" % (code, phrase, clean(reason).encode("ascii"))
        request.setResponseCode(code, phrase)
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        if not self.body_complete or code == 400:
            self._stop_reading_client()  # a malformed request: nothing after it is trusted
        request.write(body)
        self._finish()

    def _stop_reading_client(self) -> None:
        # Ignore whatever else the client sends for this request, and close after the response.
        # (HTTP/2: ending the stream is enough; the connection and its other streams go on.)
        if self.body is not None:
            self.body.stopProducing()
        if self.http2:
            return
        channel = self.channel
        channel.persistent = False
        self.request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        channel.dataReceived = lambda data: None  # type: ignore[method-assign]
        channel.tls.resumeProducing()

    def _finish(self) -> None:
        if self.finished:
            return
        if not self.received and self.body_complete:
            self._finish_pending = True  # body_done() is about to run; finish there
            return
        self.finished = True
        self.request.finish()
        self._log_access()  # after finish(): a bodiless response's status is written only then

    def _client_lost(self, failure: Failure) -> None:
        if self.finished:
            return
        self.client_gone = True
        self._cancel_timer()
        if self._relay is not None:
            self._relay.stopProducing()
        elif self._upstream is not None:
            self._upstream.cancel()
        self.upstream_status = ("client-gone" if self.upstream_status == "-"
                                else f"{self.upstream_status}-client-gone")
        self._log_access()
        self.finished = True

    def _log_access(self) -> None:
        # Formatted here in one f-string: Twisted's per-field formatting of a 12-field event was
        # the largest single cost of a small keep-alive request (docs/performance.md).
        request = self.request
        identity = self.channel.identity
        decision = self.decision
        code: int | None = request.code if request.startedWriting else None
        if (self.channel.factory.limits.access_log == "problems" and decision is not None
                and decision.allowed and code is not None and code < 400
                and isinstance(self.upstream_status, int)):
            return  # access_log = problems: a request that went well is not logged
        status = "-" if code is None else code
        if decision is None:  # refused before authorization (400, 404, 413, 421, …)
            verdict = authorizer = "-"
            reason = clean(self.local_reason or "-")
        else:
            verdict = "allow" if decision.allowed else "deny"
            reason, authorizer = clean(decision.reason), clean(decision.authorizer or "-")
        subject = _clean_subject(identity.subject) if identity else "-"
        line = (
            f'request peer={_client_ip(request)} method="{clean(request.method)}" '
            f'path="{clean(request.uri)}" subject="{subject}" '
            f"fingerprint={identity.fingerprint_sha256 if identity else '-'} "
            f"route={self.route.name if self.route else '-'} decision={verdict} "
            f"reason={reason} authorizer={authorizer} "
            f"status={status} "
            f"upstream_status={self.upstream_status} "
            f"duration_ms={(time.monotonic() - self.started) * 1000:.1f}"
        )
        access_log.info("{access}", access=line)


@functools.lru_cache(maxsize=4096)
def _clean_subject(subject: str) -> str:
    return clean(subject)


class ProxyRequest(http.Request):
    """A request that streams: proxying starts when the head is parsed.

    Hooks into Twisted's ``HTTPChannel``: ``gotLength`` (head parsed), ``handleContentChunk`` (body
    bytes), ``process`` (body complete). The routes come from the channel's factory
    (``factory.routes``), read once per request, so a reload never changes a request midway.
    """

    defaultContentType = None  # noqa: N815  (Twisted) never invent a Content-Type the upstream did not send
    exchange: Exchange | None = None

    def __init__(self, channel: Any, queued: object = None) -> None:
        super().__init__(channel)
        self.requestHeaders = _RequestHeaders()

    @property
    def expects_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` (HTTP/1.1 or HTTP/2)."""
        headers = self.requestHeaders
        assert isinstance(headers, _RequestHeaders)
        return self.clientproto in (b"HTTP/1.1", b"HTTP/2") and any(
            value.strip().lower() == b"100-continue" for value in headers.expect)

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        self.content = io.BytesIO()  # Twisted's requestReceived expects a file; never filled
        channel: Any = self.channel
        # The head has been parsed, but Twisted only sets method/uri in requestReceived, after the
        # body. The channel (HTTP/1.1) or the stream (HTTP/2) holds them meanwhile.
        if isinstance(channel, GatewayChannel):
            connection, stream = channel, channel.tls
            self.method, self.uri, self.clientproto = (
                channel._command, channel._path, channel._version)
        else:  # twisted.web._http2.H2Stream, on a connection a GatewayChannel switched to h2
            connection, stream = channel._conn.gateway_channel, channel
            # A CONNECT stream has no :path; check_request refuses the empty target.
            self.method, self.uri, self.clientproto = (
                channel.command or b"", channel.path or b"", b"HTTP/2")
        self.path = self.uri.split(b"?", 1)[0]

        self.exchange = Exchange(self, connection, stream, length)
        if stream is channel:
            # HTTP/2 calls gotLength on reaching a content-length header, before the headers
            # after it: start once they are all in (body bytes wait in the StreamingBody).
            connection.callLater(0, self.exchange.start)
        else:
            self.exchange.start()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        # An HTTP/2 CONNECT stream has no :path (None); it was refused in start() already.
        super().requestReceived(command or b"", path or b"", version)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self.exchange is not None:
            self.exchange.body_received(data)

    def process(self) -> None:
        if self.exchange is not None:
            self.exchange.body_done()


class _RequestHeaders(Headers):
    """Request headers that keep ``Expect`` aside as they arrive.

    The gateway answers ``Expect: 100-continue`` itself, after authorization; Twisted (HTTP/1.1
    and HTTP/2 alike) would answer it as soon as the head is parsed, before any decision.
    ``Expect`` is hop-by-hop for a proxy anyway (never forwarded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.expect: list[bytes] = []

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:  # noqa: N802
        if _is_expect(name):
            self.expect.append(value.encode("latin-1") if isinstance(value, str) else value)
            return
        super().addRawHeader(name, value)

    def setRawHeaders(  # noqa: N802  (Twisted's HTTP/2 layer adds headers with this)
        self, name: str | bytes, values: Sequence[str | bytes]
    ) -> None:
        if _is_expect(name):
            self.expect = [v.encode("latin-1") if isinstance(v, str) else v for v in values]
            return
        super().setRawHeaders(name, values)


def _is_expect(name: str | bytes) -> bool:
    return (name.encode("latin-1") if isinstance(name, str) else name).lower() == b"expect"


class _Discard(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.transport.stopProducing()  # type: ignore[union-attr]


def _raw_pairs(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, values in headers.getAllRawHeaders() for value in values]


def _client_ip(request: http.Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "unix"))


def _is_connect_error(failure: Failure) -> bool:
    return failure.check(neterror.ConnectError, neterror.DNSLookupError) is not None


def _failure_text(failure: Failure) -> str:
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(_failure_text(r) for r in reasons)
    return f"{type(value).__name__}: {value}"
