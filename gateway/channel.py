"""One client connection: the TLS handshake outcome and the identity it established.

:class:`GatewayChannel` is Twisted's HTTP/1.1 server protocol plus what a mutual-TLS front door
needs per connection: it captures the verified client identity once, when the handshake completes
(a request never re-reads it from the transport), enforces the handshake and request-head
limits, and writes an audit line for every handshake that fails, with OpenSSL's verify error and
depth.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from zope.interface import implementer

from gateway.config import Limits
from gateway.identity import ClientIdentity, UnsafeNameError, identity_from_der
from gateway.logfmt import clean
from gateway.tls import handshake_state

log = Logger(namespace="mtlsgw.tls")


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else "unix"


def _ssl_reason(reason: Failure) -> str:
    error = reason.value
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = [entry[-1] for entry in error.args[0] if entry and entry[-1]]
        if parts:
            return "; ".join(str(p) for p in parts)
    return reason.getErrorMessage() or type(error).__name__


# RFC 9110 §15 names where Twisted's table lacks the code or has the RFC 2616 name.
_PHRASES = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    504: b"Gateway Timeout",
}


def reason_phrase(code: int) -> bytes:
    """The RFC 9110 reason phrase for *code*."""
    return _PHRASES.get(code) or http.RESPONSES.get(code, b"Error")


@implementer(IHandshakeListener)
class GatewayChannel(http.HTTPChannel):
    """HTTP/1.1 (or, when ALPN chose ``h2``, HTTP/2 through Twisted's H2Connection) over a TLS
    connection whose client identity is known once the handshake is done.

    ``identity`` is the :class:`ClientIdentity` of the verified leaf, or ``None`` when the client
    sent no certificate (only possible with ``client_auth = optional``). ``server_name`` is the SNI
    the client sent (``str``) or ``None``.

    On top of Twisted's parser it refuses, with the connection closed afterwards: obs-fold and
    leading whitespace (400, RFC 9112 §5.2), a request head over ``max_head_size`` bytes or a
    line over it (431), a head not complete within ``header_timeout`` seconds of its first byte
    (408). Every refusal, including Twisted's own 400s, is logged.
    """

    identity: ClientIdentity | None = None
    server_name: str | None = None
    handshake_done = False
    _handshake_timer: Any = None
    _head_timer: Any = None
    _rejected = False
    factory: GatewayHTTPFactory

    def __init__(self) -> None:
        super().__init__()
        self._on_lost: list[Deferred[None]] = []
        self._h2: Any = None  # the H2Connection, once ALPN chose h2
        self._protocol_chosen = False

    @property
    def tls(self) -> Any:
        """The transport: TLS (``TLSMemoryBIOProtocol``, ``getHandle()`` is the SSL.Connection)
        on a TLS listener, TCP or UNIX on a plain one."""
        return self.transport

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        factory = self.factory
        self.totalHeadersSize = factory.limits.max_head_size
        self.MAX_LENGTH = factory.limits.max_head_size
        factory.channels.add(self)
        if len(factory.channels) > factory.limits.max_connections:
            log.warn("closing connection peer={peer}: max_connections ({limit}) reached",
                     peer=_peer(self.transport), limit=factory.limits.max_connections)
            self.handshake_done = True  # logged here
            self.tls.abortConnection()
            return
        if not factory.tls:
            self.handshake_done = True  # a plain (egress) listener: no handshake, no identity
            return
        self._handshake_timer = factory.reactor.callLater(
            factory.handshake_timeout, self._handshake_too_slow)

    def _handshake_too_slow(self) -> None:
        self._handshake_timer = None
        log.info("tls handshake timed out peer={peer}", peer=_peer(self.transport))
        self.handshake_done = True  # logged here; not again as a failure in connectionLost
        self.tls.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802
        """Twisted's ``IHandshakeListener``: capture the client identity, fail closed."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.handshake_done = True
        connection: SSL.Connection = self.tls.getHandle()
        name = connection.get_servername()
        self.server_name = name.decode("ascii", "replace") if name else None
        if connection.get_peer_certificate() is None:
            return  # client_auth = optional and no certificate sent
        chain = connection.get_verified_chain()
        try:
            if not chain:  # a certificate OpenSSL did not verify: cannot happen; fail closed
                raise ValueError("peer certificate present but not verified")
            self.identity = identity_from_der(
                crypto.dump_certificate(crypto.FILETYPE_ASN1, chain[0]))
        except (ValueError, UnsafeNameError) as exc:
            log.warn("closing connection peer={peer}: {error}", peer=_peer(self.transport),
                     error=clean(str(exc)))
            self.tls.abortConnection()

    # -- request heads ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._h2 is not None:
            self._h2.dataReceived(data)
            return
        if not self._protocol_chosen:
            self._protocol_chosen = True
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._switch_to_h2()
                self.dataReceived(data)
                return
        # The head timer runs from the first byte of a request head, however slowly it trickles.
        if self.line_mode and self._head_timer is None and not self._rejected:
            self._head_timer = self.callLater(
                self.factory.limits.header_timeout, self._head_too_slow)
        super().dataReceived(data)

    def _switch_to_h2(self) -> None:
        # ALPN chose h2 ([tls] http2 = yes): Twisted's H2Connection speaks HTTP/2 on this
        # connection from now on, as twisted.web.http._GenericHTTPChannelProtocol does it; this
        # object stays the connection's owner (identity, limits, drain, audit).
        from twisted.web._http2 import H2Connection

        network: Any = self._networkProducer
        network.unregisterProducer()
        idle_timeout = self.setTimeout(None)  # the H2Connection keeps its own idle timeout
        h2: Any = H2Connection(self.factory.reactor)
        h2.requestFactory = self.requestFactory
        h2.site = None
        h2.factory = self.factory
        h2.timeOut = idle_timeout
        h2.callLater = self.callLater
        h2.gateway_channel = self
        h2.makeConnection(self.transport)
        network.registerProducer(h2, True)
        self._h2 = h2

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if line[:1] in (b" ", b"\t"):
            self.reject(400, "obs-fold-or-leading-whitespace")
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.reject(431, "request-head-too-large")
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:  # noqa: N802
        # RFC 9112 §6.1: chunked is the only transfer coding a proxy must understand, and a
        # Transfer-Encoding in an HTTP/1.0 request is faulty framing. Twisted would ignore
        # "identity", letting the body be read as the next request.
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding" and (
                value.strip().lower() != b"chunked" or self._version != b"HTTP/1.1"):
            self.reject(400, "unsupported-transfer-encoding")
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        self.reject(431, "request-head-too-large")

    def allHeadersReceived(self) -> None:  # noqa: N802
        self._cancel_head_timer()
        super().allHeadersReceived()

    def allContentReceived(self) -> None:  # noqa: N802
        # A request answered early (403, 413, …) is finished and gone while Twisted's body decoder
        # may still reach the end of its body in the same read: nothing is left to hand it to.
        if self.requests:
            super().allContentReceived()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self.reject(408, "request-head-timeout")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802
        # Twisted's own framing checks (CL+TE, bad Content-Length or chunk size, NUL, CR or LF in
        # a header value, bad header name, …) end here.
        self.reject(400, "malformed-request")

    def reject(self, code: int, reason: str) -> None:
        """Answer *code* with a short body naming *reason*, log it, and close the connection.

        Used for requests refused before a request object exists or can be trusted: nothing of
        them reaches the upstream.
        """
        if self._rejected:
            return
        self._rejected = True
        self._cancel_head_timer()
        phrase = reason_phrase(code)
        body = b"%d %s: %s\n" % (code, phrase, reason.encode("ascii"))
        self.tls.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, phrase, len(body), body))
        log.info("request rejected peer={peer} status={status} reason={reason}",
                 peer=_peer(self.transport), status=code, reason=reason)
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.persistent = False
        self.loseConnection()

    def drain(self) -> Deferred[None]:
        """Shutting down: close now if idle, else after the response in flight. The Deferred
        fires when the connection is gone."""
        gone: Deferred[None] = Deferred()
        self._on_lost.append(gone)
        self.persistent = False
        if self._h2 is not None:
            self._drain_h2()
        elif not self.requests:
            self.loseConnection()
        return gone

    def _drain_h2(self) -> None:
        assert self._h2 is not None
        if self._h2.streams:
            self.callLater(0.05, self._drain_h2)  # poll: H2Connection has no "idle" event
        else:
            # The H2Connection is the transport's producer; a close waits for it to let go.
            self.tls.unregisterProducer()
            self.tls.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self._h2 is not None:
            self._h2.connectionLost(reason)
        self.factory.channels.discard(self)
        for waiting in self._on_lost:
            waiting.callback(None)
        self._on_lost = []
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._cancel_head_timer()
        if not self.handshake_done:
            self._log_failed_handshake(reason)
        super().connectionLost(reason)

    def _log_failed_handshake(self, reason: Failure) -> None:
        try:
            state = handshake_state(self.tls.getHandle())
        except (AttributeError, TypeError):
            return
        error = state.first_error
        log.info(
            "tls handshake failed peer={peer} verify_error={verify} depth={depth} reason={reason}",
            peer=_peer(self.transport),
            verify=clean(error.reason) if error else "-",
            depth=error.depth if error else "-",
            reason=clean(_ssl_reason(reason)),
        )


class GatewayHTTPFactory(http.HTTPFactory):
    """Builds :class:`GatewayChannel` connections whose requests use ``request_factory``.

    One per listener. ``tls`` says whether the listener is wrapped in TLS (``False``: a plain
    egress listener). ``limits`` (:class:`~gateway.config.Limits`) bounds connections and request
    heads; ``handshake_timeout`` (seconds) aborts a connection whose TLS handshake has not
    completed in time. Twisted's combined-format access log is off: the gateway writes its own
    line per request.
    """

    protocol = GatewayChannel  # type: ignore[assignment]  # HTTP/1.1 only, see buildProtocol
    routes: Any  # gateway.routes.RouteTable of gateway.proxy.Route; replaced on reload

    def __init__(
        self, request_factory: Any, limits: Limits, handshake_timeout: float, tls: bool = True,
        reactor: Any = None,
    ) -> None:
        super().__init__(timeout=limits.idle_timeout, reactor=reactor)
        self.tls = tls
        self.request_factory = request_factory
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self.channels: set[GatewayChannel] = set()  # open connections

    def buildProtocol(self, addr: Any) -> GatewayChannel:  # type: ignore[override]  # noqa: N802
        channel = GatewayChannel()
        channel.factory = self
        channel.requestFactory = self.request_factory
        channel.timeOut = self.timeOut  # type: ignore[assignment]  # seconds, float
        channel.callLater = self.reactor.callLater  # type: ignore[method-assign,assignment]
        return channel

    def log(self, request: Any) -> None:
        """Twisted's access log, replaced by the gateway's own (see :mod:`gateway.proxy`)."""
