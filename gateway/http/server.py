"""One client connection: the TLS handshake outcome, then HTTP/1.1 or HTTP/2 on it.

:class:`Listener` is the protocol factory of one configured listener (routes, limits, open
connections). :class:`ServerProtocol` is one connection: it captures the verified client identity
once, when the handshake completes (a request never re-reads it), writes an audit line for every
handshake that fails (OpenSSL's verify error and depth), applies ``handshake_timeout``,
``header_timeout`` and ``idle_timeout`` through one periodic sweep per listener, and then speaks
HTTP/1.1 itself (:class:`~gateway.http.h1.RequestParser`, one request at a time, pipelined requests
answered in order) or hands the connection to :class:`~gateway.http.h2.H2Session` when ALPN chose
``h2``.
"""

from __future__ import annotations

import fcntl
import sys
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import Limits, LogSettings
from gateway.handshake_failure import failure_reason
from gateway.http import h1
from gateway.http.exchange import Exchange
from gateway.http.stream import Header, RequestHead
from gateway.identity import ClientIdentity
from gateway.jsonlog import handshake_record
from gateway.logfmt import clean, peer_address
from gateway.requestid import REQUEST_ID, new_request_id
from gateway.tls import handshake_state

log = Logger(namespace="mtlsgw.tls")

# On SIGTERM, a connection accepted just before the port closed gets this many seconds to send
# its first request (it is then answered, with Connection: close).
FIRST_REQUEST_GRACE = 1.0
# Seconds a connection the gateway closed (TLS close_notify sent) may wait for the client to close
# its side before it is dropped, so that a client that never does cannot hold a connection slot.
# While the client is still reading what was sent before the close, the wait starts again.
CLOSE_GRACE = 5.0


class Sweep:
    """One periodic timer for many deadlines: every *interval* seconds, each registered item whose
    ``deadline`` (``reactor.seconds()`` time, or ``None``) has passed gets ``expire()``.

    Replaces a ``callLater`` per connection and request: setting a deadline is an attribute
    store. A deadline fires up to *interval* seconds late.
    """

    def __init__(self, reactor: Any, interval: float) -> None:
        self._reactor = reactor
        self.interval = interval
        self.items: set[Any] = set()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def now(self) -> float:
        """The reactor's clock, in seconds."""
        return float(self._reactor.seconds())

    def _tick(self) -> None:
        now = self.now()
        for item in [i for i in self.items if i.deadline is not None and i.deadline <= now]:
            if item.deadline is not None and item.deadline <= now:
                item.expire()


class Listener(Factory):
    """The protocol factory of one listener.

    ``routes`` (a :class:`~gateway.routes.RouteTable` of :class:`~gateway.http.exchange.Route`) is
    replaced on reload; a request reads it once. ``limits`` bound connections and requests;
    ``handshake_timeout`` (seconds) aborts a connection whose TLS handshake is not done in time;
    ``tls`` is false for a plain (egress) listener. ``connections`` holds the open ones.
    """

    noisy = False
    metrics: Any = None  # a gateway.metrics.ListenerMetrics, with [status]
    log_settings = LogSettings()  # [log], set by the service (as started: restart to change)
    trust_request_id = False  # the listener's trust_request_id

    def __init__(self, name: str, routes: Any, limits: Limits, handshake_timeout: float,
                 tls: bool, reactor: Any, sweep: Sweep) -> None:
        self.name = name
        self.routes = routes
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self.tls = tls
        self.reactor = reactor
        self.sweep = sweep
        self.connections: set[ServerProtocol] = set()

    def buildProtocol(self, addr: Any) -> ServerProtocol:  # noqa: N802
        return ServerProtocol(self)


def _ssl_reason(reason: Failure) -> str:
    error = reason.value
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = [entry[-1] for entry in error.args[0] if entry and entry[-1]]
        if parts:
            return "; ".join(str(p) for p in parts)
    return reason.getErrorMessage() or type(error).__name__


def _unsent(transport: Any) -> int:
    """Bytes still queued in the kernel for the client (Linux ``TIOCOUTQ``), 0 if unknown."""
    lower = getattr(transport, "transport", transport)  # below TLS: the TCP transport
    try:
        handle = lower.getHandle()
        queued = fcntl.ioctl(handle.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 0
    return int.from_bytes(queued, sys.byteorder)


def sent_after_leaf(connection: SSL.Connection) -> tuple[bytes, ...]:
    """The DER of the certificates the client sent after its leaf, in the order sent (the
    intermediates of RFC 9440 ``Client-Cert-Chain``). OpenSSL's server-side peer chain leaves the
    leaf out; it is dropped here too should it appear."""
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    leaf = connection.get_peer_certificate(as_cryptography=True)
    ders = [cert.public_bytes(Encoding.DER) for cert in chain]
    leaf_der = leaf.public_bytes(Encoding.DER) if leaf is not None else None
    return tuple(der for der in ders if der != leaf_der)


def refusal(status: int, reason: str) -> bytes:
    """The body of a response the gateway writes itself: ``<code> <phrase>: <reason>\\n``."""
    return b"%d %s: %s\n" % (status, h1.reason_phrase(status), clean(reason).encode("ascii"))


@implementer(IHandshakeListener, IPushProducer)
class ServerProtocol(Protocol):
    """One client connection (see the module docstring).

    Provides :class:`~gateway.http.stream.ClientConnection`: ``identity``, ``server_name``,
    ``tls``, ``peer_host``, ``listener``. It is its transport's producer, so it learns when the
    client stops taking response bytes and pauses the response's producer meanwhile.
    """

    transport: Any
    log_parts: Any = None  # the JSON log's per-connection parts (gateway/jsonlog.py)

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.tls = listener.tls
        self.identity: ClientIdentity | None = None
        self._peer_chain: tuple[bytes, ...] | None = None  # read when a format needs it
        self.server_name: str | None = None
        self.peer_host = "unix"
        self.deadline: float | None = None  # for the listener's Sweep
        self._expire: Callable[[], None] = self._idle
        self._handshake_done = False
        self._serve_one = False  # drain() came before the first request: answer it, then close
        self._fresh = True  # no request head yet on this connection
        self._h2: Any = None
        self._parser: h1.RequestParser | None = None
        self._current: H1Stream | None = None  # the request being answered
        self._waiting: deque[H1Stream] = deque()  # pipelined requests behind it
        self._refused: tuple[int, str] | None = None  # a framing error behind them
        self._closing = False  # no request after the current one, nothing more is read
        self._draining = False  # SIGTERM: no request after the current one
        self._gone = False
        self._stopped = False  # closing: nothing more is read or answered
        self.lost_as = "client-gone"
        self._closed = False  # close() was called
        self._before_stall: tuple[float | None, Callable[[], None]] = (None, self._idle)
        self._h2_busy_timer = False  # the HTTP/2 timer was set with streams open
        self._unsent = 0  # bytes still in the socket's send queue at the last grace check
        self._write_paused = False
        self._read_paused = False
        self._takeover: Callable[[bytes], None] | None = None  # an upgraded connection's reader
        self._takeover_lost: Callable[[], None] | None = None
        self._on_lost: list[Deferred[None]] = []

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The DER of the certificates the client sent after its leaf (none without a client
        certificate); read from the TLS connection once, when a header format first needs it."""
        if self._peer_chain is None:
            self._peer_chain = (sent_after_leaf(self.transport.getHandle())
                                if self.identity is not None else ())
        return self._peer_chain

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        listener = self.listener
        self.peer_host = str(getattr(self.transport.getPeer(), "host", "unix"))
        listener.connections.add(self)
        listener.sweep.items.add(self)
        self.transport.registerProducer(self, True)
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:  # TCP (TLS passes it through); not on a Unix socket
            # Each response goes out as soon as it is written, as nginx's tcp_nodelay: Nagle's
            # algorithm would hold the last segment of a response (or the TLS close_notify
            # after it) until the client's delayed ACK, about 40 ms.
            nodelay(True)
        if len(listener.connections) > listener.limits.max_connections:
            log.warn("closing connection peer={peer}: max_connections ({limit}) reached",
                     peer=peer_address(self.transport), limit=listener.limits.max_connections)
            self._handshake_done = True  # logged here
            self.transport.abortConnection()
            return
        if not listener.tls:
            self._handshake_done = True  # a plain (egress) listener: no handshake, no identity
            self._start_http1()
            return
        self._accepted = time.monotonic()
        self._set_deadline(listener.handshake_timeout, self._handshake_too_slow)

    def _set_deadline(self, seconds: float, expire: Callable[[], None]) -> None:
        self.deadline = self.listener.sweep.now() + seconds
        self._expire = expire

    def expire(self) -> None:
        """Called by the listener's :class:`Sweep` once ``deadline`` has passed."""
        self.deadline = None
        self._expire()

    def _handshake_too_slow(self) -> None:
        log.info("tls handshake timed out peer={peer}", peer=peer_address(self.transport),
                 mtlsgw_record=self._handshake_record(None, "handshake timed out"))
        self._handshake_done = True  # logged here; not again as a failure in connectionLost
        if self.listener.metrics is not None:
            self.listener.metrics.handshake_failed("handshake-timeout")
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802
        """Twisted's ``IHandshakeListener``: capture the client identity, fail closed."""
        self.deadline = None
        # Again: behind a PROXY protocol wrapper (haproxy:), getPeer() names the client only
        # once the header has been read, after connectionMade.
        self.peer_host = str(getattr(self.transport.getPeer(), "host", "unix"))
        self._handshake_done = True
        connection: SSL.Connection = self.transport.getHandle()
        name = connection.get_servername()
        self.server_name = name.decode("ascii", "replace") if name else None
        if connection.get_peer_certificate() is not None:
            # Read by the verify callback, which fails the handshake when it cannot be read.
            self.identity = handshake_state(connection).identity
            chain = connection.get_verified_chain()
            if self.identity is None or not chain:
                # A certificate OpenSSL did not verify: cannot happen; fail closed.
                self.identity = None
                log.warn("closing connection peer={peer}: certificate not verified",
                         peer=peer_address(self.transport))
                self.transport.abortConnection()
                return
            # The issuing CA as verified (issuer_sha256 matchers): the leaf's parent in the chain.
            self.identity = self.identity.with_issuer(
                crypto.dump_certificate(crypto.FILETYPE_ASN1, chain[min(1, len(chain) - 1)]))
        if self.listener.metrics is not None:
            self.listener.metrics.handshake_completed(time.monotonic() - self._accepted)
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            from gateway.http.h2 import H2Session

            self._h2 = H2Session(self, self.transport, Exchange, self.listener.limits,
                                 Logger(namespace="mtlsgw.http2"), close=self.close)
            self._set_deadline(self.listener.limits.idle_timeout, self._h2_idle)
        else:
            self._start_http1()
        if self._serve_one:  # drain() came during the handshake
            self._set_deadline(FIRST_REQUEST_GRACE,
                               self._idle if self._h2 is None else self._h2_idle)

    def _start_http1(self) -> None:
        limits = self.listener.limits
        self._parser = h1.RequestParser(self, limits.max_head_size, limits.max_header_count)
        self._set_deadline(limits.idle_timeout, self._idle)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._takeover is not None:
            self._takeover(data)
        elif self._closed:
            return  # closing: what the client still sends is not read
        elif self._h2 is not None:
            self._h2.data_received(data)
            if self._serve_one and not self._h2.idle():
                self._serve_one = False
                self._h2.drain()  # GOAWAY after the first stream: it is answered, then close
            if not self._closed and not self._serve_one and not self._write_paused:
                # Idle: GOAWAY after idle_timeout of silence. Streams open: a check every
                # idle_timeout that their bodies keep coming and their responses keep going.
                if self._h2.idle():
                    self._h2_busy_timer = False
                    self._set_deadline(self.listener.limits.idle_timeout, self._h2_idle)
                elif not self._h2_busy_timer or self._expire != self._h2_idle:
                    self._h2_busy_timer = True
                    self._set_deadline(self.listener.limits.idle_timeout, self._h2_idle)
        elif (self._current is not None and self._current.head.upgrade and self._parser
              is not None and self._parser.finished):
            # Early frames behind a WebSocket handshake, before the upstream's 101: kept for
            # the relay (reading pauses past 64 KiB until the takeover resumes it).
            self._current.after_head += data
            if len(self._current.after_head) > 65536:
                self._pause_reading()
        elif self._parser is not None and not self._closing and not self._stopped:
            if self._expire == self._body_too_slow:
                self.deadline = self.listener.sweep.now() + self.listener.limits.idle_timeout
            self._feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._gone = True
        self.deadline = None
        self.listener.connections.discard(self)
        self.listener.sweep.items.discard(self)
        if not self._handshake_done:
            self._log_failed_handshake(reason)
        if self._h2 is not None:
            self._h2.connection_lost()
        streams = [self._current, *self._waiting] if self._current else list(self._waiting)
        self._current = None
        self._waiting.clear()
        for stream in streams:
            if stream is not None and stream.exchange is not None:
                stream.exchange.client_lost()
        waiting, self._on_lost = self._on_lost, []
        for gone in waiting:
            gone.callback(None)
        if self._takeover_lost is not None:
            self._takeover_lost()

    def _log_failed_handshake(self, reason: Failure) -> None:
        try:
            state = handshake_state(self.transport.getHandle())
        except (AttributeError, TypeError):
            return
        error = state.first_error
        log.info(
            "tls handshake failed peer={peer} verify_error={verify} depth={depth} reason={reason}",
            peer=peer_address(self.transport),
            verify=clean(error.reason) if error else "-",
            depth=error.depth if error else "-",
            reason=clean(_ssl_reason(reason)),
            mtlsgw_record=self._handshake_record(error, _ssl_reason(reason)),
        )
        ssl_error = reason.check(SSL.Error) is not None
        # A connection closed without a TLS error before a ClientHello arrived (a TCP health
        # check, a port scan) is no handshake for the metrics.
        if self.listener.metrics is not None and (
                ssl_error or self.transport.getHandle().client_random() is not None):
            self.listener.metrics.handshake_failed(failure_reason(
                error.code if error else None, error.reason if error else None,
                _ssl_reason(reason), ssl_error))

    def _handshake_record(self, error: Any, reason: str) -> dict[str, Any] | None:
        """The JSON log's ``handshake-refused`` record, built only for ``[log] format = json``."""
        if self.listener.log_settings.format != "json":
            return None
        return handshake_record(self.listener.name, self.transport, error, reason)

    def close(self) -> None:
        """Close after what has been written (TLS close_notify); drop the connection
        :data:`CLOSE_GRACE` seconds later if the client has not closed its side by then."""
        self._stopped = True
        if not self._gone and not self._closed:
            self._closed = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            self._set_deadline(CLOSE_GRACE, self._close_expired)

    def _close_expired(self) -> None:
        unsent = _unsent(self.transport)
        if unsent and unsent != self._unsent:  # the client still reads the response: wait
            self._unsent = unsent
            self._set_deadline(CLOSE_GRACE, self._close_expired)
        else:
            self.abort()

    @property
    def protocol(self) -> str | None:
        """``h1``, ``h2`` or ``websocket`` (an upgraded connection); ``None`` during the TLS
        handshake (for ``mtlsgw_connections_open``)."""
        if not self._handshake_done or self._gone:
            return None
        if self._takeover is not None:
            return "websocket"
        return "h2" if self._h2 is not None else "h1"

    @property
    def busy(self) -> bool:
        """A request is in flight (HTTP/2: a stream is open; or the connection was upgraded)."""
        if self._h2 is not None:
            return not self._h2.idle()
        return self._takeover is not None or (self._current is not None and not self._closed)

    def abort(self, lost_as: str | None = None) -> None:
        """Drop the connection at once (TCP reset); *lost_as*: what its requests in flight are
        logged as, in place of ``client-gone``."""
        if lost_as is not None:
            self.lost_as = lost_as
        self._stopped = True
        if not self._gone:
            self.transport.abortConnection()

    def drain(self) -> Deferred[None]:
        """Shutting down: close now if idle, else after the response in flight (HTTP/2: GOAWAY,
        then close once the open streams are done). Fires when the connection is gone."""
        gone: Deferred[None] = Deferred()
        if self._gone:
            gone.callback(None)
            return gone
        self._on_lost.append(gone)
        if not self._handshake_done or (
                self._fresh and self._h2 is None and self._parser is not None
                and not self._parser.in_head):
            # Accepted before the port closed, in its handshake or just after it: the client's
            # first request is on its way, and the client could not retry it elsewhere. Answer
            # it, then close; a client that sends nothing within FIRST_REQUEST_GRACE is closed.
            self._serve_one = True
            if self._handshake_done:
                self._set_deadline(FIRST_REQUEST_GRACE, self._idle)
        elif self._h2 is not None:
            self._h2.drain()
        elif self._takeover is None:
            # The request in flight finishes (its body keeps being read), then the connection
            # closes; nothing after it is answered.
            self._draining = True
            if self._current is None:
                self.close()
        return gone

    # -- IPushProducer: the client's write side -----------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self._write_paused = True
        if self._h2 is not None:
            self._h2.pause_writing()
        elif self._current is not None and self._current.producer is not None:
            self._current.producer.pauseProducing()
        if not self._closed and self._expire != self._send_stalled:
            # The client takes no more: it must take some within idle_timeout (nginx's
            # send_timeout), or the connection is dropped and its upstream requests cancelled.
            self._before_stall = (self.deadline, self._expire)
            self._set_deadline(self.listener.limits.idle_timeout, self._send_stalled)

    def resumeProducing(self) -> None:  # noqa: N802
        self._write_paused = False
        if self._expire == self._send_stalled:
            self.deadline, self._expire = self._before_stall
        if self._h2 is not None:
            self._h2.resume_writing()
        elif self._current is not None and self._current.producer is not None:
            self._current.producer.resumeProducing()

    def _send_stalled(self) -> None:
        log.info("closing connection peer={peer}: the client took no response bytes within "
                 "idle_timeout", peer=peer_address(self.transport))
        self.abort()

    def stopProducing(self) -> None:  # noqa: N802
        """The transport is going away; connectionLost follows."""

    # -- timeouts ------------------------------------------------------------------------------

    def _idle(self) -> None:
        if self._current is None and not self._gone:
            self.close()

    def _h2_idle(self) -> None:
        if self._h2 is None:
            return
        timeout = self.listener.limits.idle_timeout
        if self._h2.idle():
            if self._h2_busy_timer:  # set while streams were open: now wait a full timeout
                self._h2_busy_timer = False
                self._set_deadline(timeout, self._h2_idle)
            else:
                self._h2.close_idle()
            return
        self._h2.reset_stalled(timeout)
        if not self._closed:
            self._h2_busy_timer = True
            self._set_deadline(timeout, self._h2_idle)

    def _body_too_slow(self) -> None:
        current = self._current
        if current is not None and not current.ended and not self._read_paused:
            log.info("closing connection peer={peer}: no request body bytes within "
                     "idle_timeout", peer=peer_address(self.transport))
            self.abort()

    def _head_too_slow(self) -> None:
        if self._current is None:
            self._refuse(408, "request-head-timeout")
        else:
            self._refused = self._refused or (408, "request-head-timeout")
            self._closing = True

    # -- HTTP/1.1 ------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        try:
            rest = parser.feed(data)
        except Exception as unexpected:
            if not isinstance(unexpected, h1.RequestError):
                # A bug, never the client's doing: log it, answer as for a bad request.
                log.failure("request handling failed peer={peer}",
                            peer=peer_address(self.transport))
                unexpected = h1.RequestError(400, "malformed-request")
            error = unexpected
            self._closing = True
            last = self._waiting[-1] if self._waiting else self._current
            if last is not None and not last.ended:
                # The framing broke inside this request's body: it cannot go on (the upstream
                # must never take the truncated body for a complete one).
                self._waiting.clear()
                self._current = None
                last.broken(error.status, error.reason)
            elif self._current is None:
                self._refuse(error.status, error.reason)
            else:
                self._refused = (error.status, error.reason)
            return
        if rest is not None:  # an upgrade or CONNECT head, or a request ending the connection
            self._closing = True
            last = self._waiting[-1] if self._waiting else self._current
            if last is not None and last.head.upgrade:
                last.after_head = rest
        if (parser.in_head and self._current is None and self.deadline is None) or (
                parser.in_head and self._expire == self._idle):
            self._set_deadline(self.listener.limits.header_timeout, self._head_too_slow)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request refused while its head was read, log it, and close."""
        body = refusal(status, reason)
        request_id = new_request_id()
        self.transport.write(h1.response_head(b"HTTP/1.1", status, [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(body)),
            (REQUEST_ID, request_id.encode("ascii")),
            (b"Connection", b"close")]) + body)
        log.info("request rejected peer={peer} status={status} reason={reason} "
                 "request_id={request_id}", peer=peer_address(self.transport), status=status,
                 reason=reason, request_id=request_id)
        if self.listener.metrics is not None:
            self.listener.metrics.refused(status)
        self._closing = True
        self.close()

    # h1.Receiver: the parser's events, in order.

    def request_head(self, head: RequestHead) -> None:
        if self._stopped:
            return
        if not self.tls:  # a plain listener has no handshake to wait for (see handshakeCompleted)
            self.peer_host = str(getattr(self.transport.getPeer(), "host", "unix"))
        self._fresh = False
        stream = H1Stream(self, head)
        if self._serve_one:
            stream.closing = True  # see drain(): this response closes the connection
        if self._current is None:
            self.deadline = None
            if head.content_length != 0:  # the body must keep coming (idle_timeout)
                self._set_deadline(self.listener.limits.idle_timeout, self._body_too_slow)
            self._current = stream
            stream.begin()
        else:
            self._waiting.append(stream)
            self._pause_reading()  # one read's worth of pipelined requests is enough

    def request_body(self, data: bytes) -> None:
        if self._stopped:
            return
        stream = self._waiting[-1] if self._waiting else self._current
        if stream is not None:
            stream.body(data)

    def request_end(self) -> None:
        if self._stopped:
            return
        stream = self._waiting[-1] if self._waiting else self._current
        if stream is not None:
            stream.end()

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self.transport.resumeProducing()

    def response_done(self, stream: H1Stream) -> None:
        """*stream*'s response is complete: go on with the next request, or close."""
        if stream is not self._current:
            return
        self._current = None
        if not stream.ended and stream.head.content_length != 0:
            stream.closing = True
        if (stream.closing or self._draining) and self._refused is None:
            self._waiting.clear()  # nothing after this response is answered
            self.close()
            return
        if self._closing and not self._waiting:
            if self._refused is not None and not self._gone:
                self._refuse(*self._refused)
            else:
                self.close()
            return
        if self._waiting:
            self._current = self._waiting.popleft()
            if not self._waiting:
                self._resume_reading()
            self._current.begin()
            return
        self._resume_reading()
        if self._parser is not None and self._parser.in_head:
            self._set_deadline(self.listener.limits.header_timeout, self._head_too_slow)
        else:
            self._set_deadline(self.listener.limits.idle_timeout, self._idle)

    def take_over(self, reader: Callable[[bytes], None], on_lost: Callable[[], None]) -> bytes:
        """Stop speaking HTTP on this connection (an upgrade was accepted): from now on
        *reader* gets the client's bytes and *on_lost* the connection's end. Returns the bytes
        the client sent after the upgrade request's head. No timeout applies any more."""
        stream = self._current
        self._takeover = reader
        self.deadline = None
        self._current = None
        self._waiting.clear()
        self._on_lost.clear()
        self._takeover_lost = on_lost
        self._resume_reading()
        self.transport.unregisterProducer()
        return stream.after_head if stream is not None else b""


class H1Stream:
    """One HTTP/1.1 request on a :class:`ServerProtocol`: the
    :class:`~gateway.http.stream.ClientStream` its exchange answers through.

    Body events that arrive while an earlier request is still being answered (pipelining) are
    kept until this request's turn (:meth:`begin`); reading is paused meanwhile.
    """

    def __init__(self, connection: ServerProtocol, head: RequestHead) -> None:
        self.connection = connection
        self.head = head
        self.version = head.version
        self.exchange: Exchange | None = None
        self.producer: Any = None
        self.ended = False  # the request body is complete
        # Close the connection after the response: known at the head when the client asked, so
        # a response sent before the parser's end of the request says so too.
        self.closing = not head.keep_alive
        self.after_head = b""  # what followed an upgrade request's head
        self._held: list[bytes] = []
        self._chunked = False
        self._head_sent = False
        self._done = False
        self._discard = False  # the response is complete; the rest of the body is ignored
        self._bodiless = False

    def begin(self) -> None:
        self.exchange = exchange = Exchange(self, self.head)
        exchange.start()
        held, self._held = self._held, []
        for data in held:
            if self.exchange is not None and not self._discard:
                self.exchange.body_data(data)
        if self.ended and self.exchange is not None and not self._discard:
            self.exchange.body_end()

    def broken(self, status: int, reason: str) -> None:
        """The request's body was malformed: answer *status* if nothing was sent yet, else
        abort; close either way."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_lost()
        if self._head_sent:
            self.connection.abort()
        else:
            self.connection._refuse(status, reason)

    def body(self, data: bytes) -> None:
        if self._discard:
            return
        if self.exchange is None:
            self._held.append(data)
        else:
            self.exchange.body_data(data)

    def end(self) -> None:
        self.ended = True
        connection = self.connection
        if connection._current is self and connection._expire == connection._body_too_slow:
            connection.deadline = None
        if self._discard:
            self.connection.response_done(self)
        elif self.exchange is not None:
            self.exchange.body_end()

    # -- ClientStream ----------------------------------------------------------------------------

    def send_informational(self, status: int, headers: list[Header]) -> None:
        if not self._head_sent and self.version == b"HTTP/1.1" and not self.connection._gone:
            self.connection.transport.write(h1.response_head(b"HTTP/1.1", status, headers))

    def send_head(self, status: int, headers: list[Header], length: int | None,
                  body: bool) -> None:
        if self._head_sent or self.connection._gone:
            return
        self._head_sent = True
        out = list(headers)
        if status == 101:
            pass  # the upstream's upgrade head, relayed as it is
        elif not body:
            self._bodiless = True
            if length is not None and status != 204:
                out.append((b"Content-Length", b"%d" % length))
        elif length is not None:
            out.append((b"Content-Length", b"%d" % length))
        elif self.version == b"HTTP/1.1":
            out.append((b"Transfer-Encoding", b"chunked"))
            self._chunked = True
        else:
            self.closing = True  # HTTP/1.0: the end of the body is the end of the connection
        connection = self.connection
        if self.closing or connection._draining or (
                connection._closing and not connection._waiting
                and connection._refused is None):
            self.closing = True
            out.append((b"Connection", b"close"))
        elif self.version == b"HTTP/1.0":
            out.append((b"Connection", b"keep-alive"))
        connection.transport.write(h1.response_head(b"HTTP/1.1", status, out))

    def send_data(self, data: bytes) -> None:
        if self._done or self._bodiless or not data or self.connection._gone:
            return
        self.connection.transport.write(h1.chunk(data) if self._chunked else data)

    def send_end(self) -> None:
        if self._done:
            return
        self._done = True
        self.producer = None
        if self._chunked and not self.connection._gone:
            self.connection.transport.write(h1.LAST_CHUNK)
        if not self.ended and self.head.content_length != 0:
            # An early response: the rest of the body is not read; the connection closes. (A
            # request without a body is complete at its head: answered at once, as a no-route
            # 404 is, it keeps the connection, as one answered after the parser's end does.)
            self.closing = True
            self._discard = True
        self.exchange = None
        self.connection.response_done(self)

    def reset(self) -> None:
        self._done = True
        self.exchange = None
        self.connection.abort()

    def close_after_response(self) -> None:
        self.closing = True
        self.connection._closing = True

    def pause_request_body(self) -> None:
        if self.connection._current is self:
            self.connection._pause_reading()

    def resume_request_body(self) -> None:
        if self.connection._current is self and not self.connection._waiting:
            self.connection._resume_reading()

    def set_response_producer(self, producer: Any) -> None:
        self.producer = producer
        if producer is not None and self.connection._write_paused:
            producer.pauseProducing()
