"""WebSocket upgrades: relayed to the upstream after authorization, then spliced both ways.

An upgraded connection is never reused for another request, so an authorized ``GET`` carrying
``Connection: upgrade`` and ``Upgrade: websocket`` (the opening handshake of RFC 6455 §4.1) does
not go through the upstream's pool (:mod:`gateway.http.pool`). :func:`relay`
opens a connection of its own to the upstream (TLS and certificate checks as for any request),
writes the request head re-serialised as HTTP/1.1 with the identity headers the caller computed
plus ``Connection: Upgrade`` / ``Upgrade: websocket``, and reads the upstream's response head:

* ``101 Switching Protocols``: the head goes to the client unchanged (``Sec-WebSocket-Accept``
  included: the client's ``Sec-WebSocket-Key`` was passed through), then both connections are
  spliced: bytes are copied as they are, both ways, with backpressure, until either side closes,
  which closes the other. The gateway neither parses nor logs frames.
* any other final status: the upstream's response (head and body, framed by its
  ``Content-Length``, chunked coding, or the upstream closing) is copied to the client as it is,
  then the client connection is closed. Interim ``1xx`` responses are passed on.

Nothing is sent to the client before a usable response head has arrived, so a failure up to that
point (connect, TLS, a head that is malformed or over ``upstream_max_head_size``, no head within
``upstream_response_timeout``) fails the :class:`Deferred` and the caller answers 502.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.headers import HOP_BY_HOP
from gateway.http.client import failure_text
from gateway.http.pool import Upstream
from gateway.logfmt import clean, peer_address

log = Logger(namespace="mtlsgw.websocket")

Header = tuple[bytes, bytes]

MAX_RESPONSE_HEAD = 64 * 1024  # bytes of one upstream response head (upstream_max_head_size)
CLOSE_GRACE = 15.0  # seconds a closing side may take to flush before it is aborted
_MAX_CHUNK_LINE = 4096  # bytes of a chunk-size or trailer line in a non-101 chunked body

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # in a value: never relayed (RFC 9110 §5.5)


class UpgradeError(Exception):
    """The upgrade could not be relayed: the upstream's answer was unusable (malformed or too
    large head, closed before the head, no head in time) or the request head could not be
    written. ``kind`` is the ``upstream_status`` it gives."""

    kind = "upstream-unreachable"


class HeadTooLargeError(UpgradeError):
    """The upstream's response head is over ``upstream_max_head_size``."""

    kind = "upstream-head-too-large"


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


def is_websocket_upgrade(method: bytes, headers: Sequence[Header]) -> bool:
    """True if a request is a WebSocket opening handshake (RFC 6455 §4.1).

    *method* is the request method (case-sensitive, must be ``GET``); *headers* the request's
    ``(name, value)`` pairs. Some ``Connection`` header must carry the token ``upgrade`` and some
    ``Upgrade`` header the token ``websocket`` (comma-separated lists, any case, across all
    copies of the header). Nothing else is checked here: the upstream judges the rest
    (``Sec-WebSocket-Key``, ``Sec-WebSocket-Version``) and answers accordingly.
    """
    if method != b"GET":
        return False
    connection: set[bytes] = set()
    upgrade: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        if lower == b"connection":
            connection.update(_tokens(value))
        elif lower == b"upgrade":
            upgrade.update(_tokens(value))
    return b"upgrade" in connection and b"websocket" in upgrade


def request_head(method: bytes, target: bytes, headers: Sequence[Header],
                 default_host: bytes) -> bytes:
    """The HTTP/1.1 request head sent to the upstream for an upgrade, final CRLF CRLF included.

    ``METHOD target HTTP/1.1``, then *headers* in order (hop-by-hop and framing names left out:
    the caller has already removed them, this is a safety net), ``Host: default_host`` first if
    *headers* have no ``Host``, and last ``Connection: Upgrade`` and ``Upgrade: websocket``.
    Raises :class:`UpgradeError` if a name is not a token, a value holds CR, LF or NUL, or the
    target is not origin-form.
    """
    if not target.startswith(b"/") or any(c in target for c in b" \r\n\x00\t"):
        raise UpgradeError(f"request target {target[:80]!r} is not origin-form")
    if not _TOKEN.fullmatch(method):
        raise UpgradeError(f"method {method[:40]!r} is not a token")
    fields: list[Header] = []
    for name, value in headers:
        if name.lower() in HOP_BY_HOP:
            continue
        if not _TOKEN.fullmatch(name) or any(c in value for c in b"\r\n\x00"):
            raise UpgradeError(f"header {name[:80]!r} cannot be written")
        fields.append((name, value))
    if not any(name.lower() == b"host" for name, _ in fields):
        fields.insert(0, (b"Host", default_host))
    fields += [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    lines += [name + b": " + value for name, value in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ResponseHead:
    """One parsed upstream response head: ``status`` (int), ``headers`` (``(name, value)`` pairs
    in order, values without surrounding whitespace) and ``raw`` (the bytes as received)."""

    def __init__(self, status: int, headers: list[Header], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    def values(self, name: bytes) -> list[bytes]:
        """All values of header *name* (give it in lower case), in order."""
        return [v for n, v in self.headers if n.lower() == name]


def parse_response_head(raw: bytes) -> ResponseHead:
    """Parse *raw*, a response head ending in CRLF CRLF (RFC 9112 §4, §5).

    Raises :class:`UpgradeError` for anything but ``HTTP/1.0`` or ``HTTP/1.1`` with a three-digit
    status, or for a header line that is not ``token ":" value`` (obs-fold included), or a value
    holding CR, LF or NUL.
    """
    if not raw.endswith(b"\r\n\r\n"):
        raise UpgradeError("response head does not end in CRLF CRLF")
    lines = raw[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise UpgradeError(f"malformed status line {lines[0][:80]!r}")
    headers: list[Header] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise UpgradeError(f"malformed response header line {line[:80]!r}")
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            raise UpgradeError(f"malformed value in response header {name[:80]!r}")
        headers.append((name, value))
    return ResponseHead(int(match.group(1)), headers, raw)


def body_framing(head: ResponseHead) -> tuple[str, int]:
    """How the body after a final non-101 response *head* ends (RFC 9112 §6.3), as
    ``(kind, length)``: ``("none", 0)`` for 204 and 304, ``("chunked", 0)`` when the last
    transfer coding is chunked, ``("close", 0)`` for another transfer coding or no length,
    ``("length", n)`` for ``Content-Length: n``. Raises :class:`UpgradeError` for an invalid or
    conflicting ``Content-Length``."""
    if head.status in (204, 304):
        return "none", 0
    codings = [t for value in head.values(b"transfer-encoding") for t in _tokens(value)]
    if codings:
        return ("chunked", 0) if codings[-1] == b"chunked" else ("close", 0)
    lengths = {t.strip() for value in head.values(b"content-length") for t in value.split(b",")}
    if not lengths:
        return "close", 0
    if len(lengths) > 1 or not all(v.isdigit() and len(v) <= 18 for v in lengths):
        raise UpgradeError(f"invalid Content-Length {sorted(lengths)!r}")
    return "length", int(lengths.pop())


class ChunkedEnd:
    """Finds where a chunked body (RFC 9112 §7.1) ends, without decoding it.

    Feed the body's bytes in order to :meth:`feed`. Raises :class:`UpgradeError` for a malformed
    chunk size line, a missing CRLF after chunk data, or a line over 4 KiB.
    """

    def __init__(self) -> None:
        self._state = "size"  # "size" | "data" | "data-crlf" | "trailer" | "done"
        self._line = b""
        self._left = 0

    def feed(self, data: bytes) -> int | None:
        """Consume *data*; return how many of its bytes belong to the body once the body's end
        is among them (the rest follows the body), or ``None`` when more is needed."""
        if self._state == "done":
            return 0
        pos = 0
        while pos < len(data):
            if self._state == "data":
                take = min(self._left, len(data) - pos)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = "data-crlf"
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise UpgradeError("chunked body: line too long")
                return None
            line = (self._line + data[pos:end]).removesuffix(b"\r")
            self._line = b""
            pos = end + 1
            if len(line) > _MAX_CHUNK_LINE:
                raise UpgradeError("chunked body: line too long")
            if self._state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size):
                    raise UpgradeError(f"chunked body: bad chunk size {size[:40]!r}")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
            elif self._state == "data-crlf":
                if line:
                    raise UpgradeError("chunked body: no CRLF after chunk data")
                self._state = "size"
            elif not line:  # the empty line that ends the trailer section
                self._state = "done"
                return pos
        return None


@implementer(IPushProducer)
class _Pauser:
    """One side's transport as the producer registered with the other side's transport.

    Pausing and resuming pass through (backpressure); ``stopProducing`` (the consumer's
    connection is gone) calls *on_stop* instead of dropping the producer's connection abruptly,
    so the relay can close it cleanly (TLS close_notify after pending data)."""

    def __init__(self, transport: Any, on_stop: Callable[[], None],
                 on_pause: Callable[[bool], None] | None = None) -> None:
        self._transport = transport
        self._on_stop = on_stop
        self._on_pause = on_pause  # told True on pause, False on resume

    def pauseProducing(self) -> None:  # noqa: N802
        self._transport.pauseProducing()
        if self._on_pause is not None:
            self._on_pause(True)

    def resumeProducing(self) -> None:  # noqa: N802
        self._transport.resumeProducing()
        if self._on_pause is not None:
            self._on_pause(False)

    def stopProducing(self) -> None:  # noqa: N802
        self._on_stop()


class _UpgradeRelay(Protocol):
    """The upstream connection of one upgrade, and the client connection once taken over.

    States: ``head`` (waiting for the upstream's response head), ``splice`` (101: raw bytes both
    ways), ``body`` (another status: copying the response to the client), ``closed``.
    """

    transport: Any  # the upstream connection: TCP, or TLS over TCP; None until connected

    def __init__(self, channel: Any, head: bytes, reactor: Any, response_timeout: float,
                 max_head: int = MAX_RESPONSE_HEAD, read_timeout: float = 0.0) -> None:
        # *channel*: the client connection, with ``transport`` and ``take_over(reader, on_lost)``
        # (gateway.http.server.ServerProtocol).
        self.channel = channel
        self.client: Any = channel.transport
        self._max_head = max_head
        self.result: Deferred[int] = Deferred()
        self._head = head
        self._reactor = reactor
        self._state = "head"
        self._buffer = b""
        self._framing = ("close", 0)
        self._chunked: ChunkedEnd | None = None
        self._connecting: Deferred[Any] | None = None
        self._timer: Any = None
        # A response other than 101 is cut after read_timeout s without a byte of it (0: never).
        self._read_timeout = read_timeout
        self._stall: Any = None
        # Per side: "closing" once the relay asked it to close, "gone" once it is closed.
        self._client_closing = False
        self._client_gone = False
        self._upstream_closing = False
        self._upstream_gone = False
        self._client_abort: Any = None  # aborts a closing side that does not go in time
        self._upstream_abort: Any = None
        self._closed_by = ""  # "client" | "upstream": which side closed first
        self._took_over = False
        self._logged = False
        self._from_client = 0
        self._from_upstream = 0
        self._spliced_at = 0.0
        self._peer = peer_address(self.client)
        if response_timeout:
            self._timer = reactor.callLater(response_timeout, self._too_slow, response_timeout)

    def start(self, endpoint: Any) -> Deferred[int]:
        self._connecting = endpoint.connect(_OneConnection(self))
        self._connecting.addCallbacks(self._connected, self._connect_failed)
        return self.result

    # -- before the response head ---------------------------------------------------------------

    def _connected(self, protocol: Any) -> None:
        self._connecting = None

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._fail(failure)

    def _too_slow(self, seconds: float) -> None:
        self._timer = None
        self._fail(Failure(UpgradeError(f"no response head within {seconds:g} s")))

    def client_gone(self) -> None:
        """The client connection went away before the takeover (the exchange learnt first)."""
        if self._took_over:
            return
        self._client_gone = True
        self._fail(Failure(UpgradeError("the client closed the connection")))

    def _fail(self, failure: Failure) -> None:
        """Give up before anything of the response reached the client (caller answers 502)."""
        if self._state != "head":
            return
        self._state = "closed"
        self._cancel_timer()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.transport is not None and not self._upstream_gone:
            self._upstream_closing = True
            self.transport.abortConnection()
        self.result.errback(failure)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        if self._state != "head":  # given up meanwhile (client gone, timeout)
            self._upstream_closing = True
            self.transport.abortConnection()
            return
        self.transport.write(self._head)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._state == "splice":
            self._from_upstream += len(data)
            self.client.write(data)
        elif self._state == "body":
            if self._stall is not None:
                self._stall.reset(self._read_timeout)
            self._body(data)
        elif self._state == "head":
            self._buffer += data
            self._heads()

    def _heads(self) -> None:
        while self._state == "head":
            end = self._buffer.find(b"\r\n\r\n", 0, self._max_head)
            if end < 0:
                if len(self._buffer) >= self._max_head:
                    self._fail(Failure(HeadTooLargeError(
                        f"response head over {self._max_head} bytes")))
                return
            raw, self._buffer = self._buffer[: end + 4], self._buffer[end + 4:]
            try:
                head = parse_response_head(raw)
                if head.status != 101 and head.status >= 200:
                    self._framing = body_framing(head)
            except UpgradeError as exc:
                self._fail(Failure(exc))
                return
            if head.status == 101:
                self._splice(raw)
            elif head.status < 200:
                self.client.write(raw)  # interim response (103 Early Hints, …): pass it on
            else:
                self._pass_through(head)

    # -- taking over the client connection ------------------------------------------------------

    def _take_over(self, forward: bool) -> bytes:
        """Make the client connection ours, the way Twisted's ``HTTPChannel``
        ``_protocolUpgradeForWebsockets`` does; return the bytes the client sent after its
        request head (for the upstream after a 101)."""
        self._cancel_timer()
        self._took_over = True
        # The client connection stops speaking HTTP (no timeouts from now on); what the client
        # sent after its request head is the start of the upgraded stream and must not be lost.
        # The connection unregisters itself as its transport's producer and resumes reading; the
        # upstream transport takes its place.
        pending: bytes = self.channel.take_over(self._client_data if forward else _ignore,
                                         self._client_lost)
        assert self.transport is not None
        self.client.registerProducer(
            _Pauser(self.transport, self._close_upstream, self._upstream_paused), True)
        if forward:
            self.transport.registerProducer(_Pauser(self.client, self._close_client), True)
        return pending

    def _splice(self, raw: bytes) -> None:
        self._state = "splice"
        self._spliced_at = time.monotonic()
        pending = self._take_over(forward=True)
        self.client.write(raw)
        early, self._buffer = self._buffer, b""
        if early:  # frames the upstream sent right after its 101
            self._from_upstream += len(early)
            self.client.write(early)
        if pending:
            self._client_data(pending)
        self.result.callback(101)

    def _client_data(self, data: bytes) -> None:
        if not (self._upstream_closing or self._upstream_gone):
            self._from_client += len(data)
            self.transport.write(data)

    def _pass_through(self, head: ResponseHead) -> None:
        self._state = "body"
        self._take_over(forward=False)
        self._upstream_paused(False)
        self.client.write(head.raw)
        kind, _ = self._framing
        if kind == "chunked":
            self._chunked = ChunkedEnd()
        self.result.callback(head.status)
        rest, self._buffer = self._buffer, b""
        if kind == "none" or self._framing == ("length", 0):
            self._body_done(truncated=False)
        elif rest:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        kind, left = self._framing
        if kind == "length":
            data = data[:left]
            self._framing = (kind, left - len(data))
            self.client.write(data)
            if self._framing[1] == 0:
                self._body_done(truncated=False)
        elif self._chunked is not None:
            try:
                end = self._chunked.feed(data)
            except UpgradeError as exc:
                log.warn("upstream response to an upgrade broke peer={peer}: {error}",
                         peer=self._peer, error=clean(str(exc)))
                self._body_done(truncated=True)
                return
            self.client.write(data if end is None else data[:end])
            if end is not None:
                self._body_done(truncated=False)
        else:
            self.client.write(data)

    def _upstream_paused(self, paused: bool) -> None:
        """The response body's read timeout runs while the upstream is read (not while the
        client is too slow to take more)."""
        _cancel(self._stall)
        self._stall = None
        if self._state == "body" and self._read_timeout and not paused:
            self._stall = self._reactor.callLater(self._read_timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall = None
        log.warn("upstream response to an upgrade stalled peer={peer}: no bytes within "
                 "upstream_read_timeout ({seconds:g} s)", peer=self._peer,
                 seconds=self._read_timeout)
        self._body_done(truncated=True)

    def _body_done(self, truncated: bool) -> None:
        if self._state != "body":
            return
        self._state = "closed"
        _cancel(self._stall)
        if truncated:
            # Like the proxy path: never let a truncated body pass for a complete one.
            self._unregister()
            self._client_closing = True
            self.client.abortConnection()
        else:
            self._close_client()
        self._close_upstream()

    # -- endings --------------------------------------------------------------------------------

    def _unregister(self) -> None:
        self.client.unregisterProducer()
        if self.transport is not None:
            self.transport.unregisterProducer()

    def _close_client(self) -> None:
        if self._client_closing or self._client_gone or not self._took_over:
            return
        self._client_closing = True
        self._closed_by = self._closed_by or "upstream"
        self._unregister()
        self.client.loseConnection()
        self._client_abort = self._reactor.callLater(CLOSE_GRACE, self.client.abortConnection)

    def _close_upstream(self) -> None:
        if self._upstream_closing or self._upstream_gone or self.transport is None:
            return
        self._upstream_closing = True
        self._closed_by = self._closed_by or "client"
        self._unregister()
        self.transport.loseConnection()
        self._upstream_abort = self._reactor.callLater(CLOSE_GRACE,
                                                       self.transport.abortConnection)

    def _client_lost(self) -> None:
        """The client connection is gone (after the takeover)."""
        self._client_gone = True
        _cancel(self._client_abort)
        self._closed_by = self._closed_by or "client"
        if self._state == "body":
            self._state = "closed"
            _cancel(self._stall)
        self._close_upstream()
        self._log_end()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """The upstream connection is gone."""
        self._upstream_gone = True
        _cancel(self._upstream_abort)
        if self._state == "head":
            if reason.check(ConnectionDone) is not None:
                reason = Failure(UpgradeError(
                    "the upstream closed the connection before the response head"))
            self._fail(reason)
            return
        if not self._took_over:
            return  # given up before the response head: the caller answers the client
        self._closed_by = self._closed_by or "upstream"
        if self._state == "body":
            self._body_done(truncated=self._framing[0] != "close")
        self._close_client()
        self._log_end()

    def _log_end(self) -> None:
        if self._client_gone and self._upstream_gone and self._spliced_at and not self._logged:
            self._logged = True
            log.info("websocket closed peer={peer} closed_by={side} bytes_from_client={up} "
                     "bytes_from_upstream={down} duration_s={duration:.1f}",
                     peer=self._peer, side=self._closed_by, up=self._from_client,
                     down=self._from_upstream, duration=time.monotonic() - self._spliced_at)


def _cancel(call: Any) -> None:
    if call is not None and call.active():
        call.cancel()


class _OneConnection(Factory):
    """The factory for one upstream connection: always the same protocol; no log lines."""

    noisy = False

    def __init__(self, protocol: _UpgradeRelay) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> _UpgradeRelay:  # noqa: N802
        return self._protocol


def _ignore(data: bytes) -> None:
    """Client bytes after an upgrade the upstream refused: the connection is closing."""


def relay(exchange: Any, method: bytes, target: bytes, headers: Sequence[Header],
          upstream: Upstream, reactor: Any) -> _UpgradeRelay:
    """Relay one authorized WebSocket upgrade request to *upstream* over a new connection.

    *exchange* is the request's :class:`~gateway.http.exchange.Exchange` on an HTTP/1.1
    connection; *method* and *target* (origin-form, ``/path?query``, the upstream URL's path and
    any ``strip_prefix`` applied) form the request line; *headers* are the ``(name, value)``
    pairs to send (end-to-end client headers including ``Host`` and ``Sec-WebSocket-*``, identity
    and ``X-Forwarded-*`` headers), to which ``Connection: Upgrade`` and ``Upgrade: websocket``
    are added. *reactor* provides ``IReactorTime``.

    Calls ``exchange.upgraded(status)`` once the upstream's final head has reached the client:
    ``101`` (the connections are then spliced until one closes) or another status (its response
    is copied to the client, which is closed after it); or ``exchange.upgrade_failed(detail,
    kind)`` with nothing sent to the client (connect or TLS error, unusable head, no head within
    ``upstream_response_timeout``). Returns the relay (``client_gone()`` tells it the client left).
    """
    settings = upstream.settings
    try:
        head = request_head(method, target, headers, upstream.authority.encode("idna"))
    except UpgradeError as exc:  # a header that cannot be written
        reactor.callLater(0, exchange.upgrade_failed, str(exc))
        head = b""
    connection = exchange.stream.connection
    upgrade = _UpgradeRelay(connection, head, reactor, settings.response_timeout,
                            settings.max_head_size, settings.read_timeout)
    if not head:
        return upgrade
    def failed(failure: Failure) -> None:
        kind = getattr(failure.value, "kind", "upstream-unreachable")
        exchange.upgrade_failed(failure_text(failure), kind)

    upgrade.start(upstream.endpoint).addCallbacks(exchange.upgraded, failed)
    return upgrade
