"""The pure parts of gateway.websocket: recognising an upgrade, the request head written upstream,
the upstream's response head and where a refused upgrade's body ends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.http.websocket import (
    MAX_RESPONSE_HEAD,
    ChunkedEnd,
    ResponseHead,
    UpgradeError,
    body_framing,
    is_websocket_upgrade,
    parse_response_head,
    request_head,
)
from gateway.http.websocket import _UpgradeRelay as UpgradeRelay

UPGRADE = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]


@pytest.mark.parametrize(("method", "headers", "expected"), [
    (b"GET", UPGRADE, True),
    (b"GET", [(b"connection", b"upgrade"), (b"upgrade", b"WebSocket")], True),
    (b"GET", [(b"CONNECTION", b"keep-alive, Upgrade"), (b"UPGRADE", b"websocket")], True),
    (b"GET", [(b"Connection", b"keep-alive,upgrade"), (b"Upgrade", b"h2c, websocket")], True),
    # the tokens may be spread over several copies of the header
    (b"GET", [(b"Connection", b"keep-alive"), (b"Connection", b" upgrade "),
              (b"Upgrade", b"foo"), (b"Upgrade", b"websocket")], True),
    (b"GET", [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], True),
    # method: GET only, case-sensitive (RFC 9110 §9.1)
    (b"get", UPGRADE, False),
    (b"POST", UPGRADE, False),
    (b"HEAD", UPGRADE, False),
    # Connection must name upgrade as a token
    (b"GET", [(b"Upgrade", b"websocket")], False),
    (b"GET", [(b"Connection", b"keep-alive"), (b"Upgrade", b"websocket")], False),
    (b"GET", [(b"Connection", b"upgrades"), (b"Upgrade", b"websocket")], False),
    (b"GET", [(b"Connection", b"Upgrade websocket"), (b"Upgrade", b"websocket")], False),
    (b"GET", [(b"X-Connection", b"Upgrade"), (b"Upgrade", b"websocket")], False),
    # Upgrade must offer websocket as a token
    (b"GET", [(b"Connection", b"Upgrade")], False),
    (b"GET", [(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")], False),
    (b"GET", [(b"Connection", b"Upgrade"), (b"Upgrade", b"websockets")], False),
    (b"GET", [(b"Connection", b"Upgrade"), (b"Upgrade", b"")], False),
    (b"GET", [(b"Connection", b"Upgrade"), (b"Sec-WebSocket-Version", b"13")], False),
    (b"GET", [], False),
])
def test_is_websocket_upgrade(method, headers, expected):
    assert is_websocket_upgrade(method, headers) is expected


def test_request_head_adds_connection_and_upgrade_and_keeps_order():
    head = request_head(b"GET", b"/base/chat?room=1", [
        (b"Host", b"example.test"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"Sec-WebSocket-Version", b"13"),
        (b"X-Client-CN", b"alice"),
    ], b"upstream:8080")
    assert head == (
        b"GET /base/chat?room=1 HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"X-Client-CN: alice\r\n"
        b"Connection: Upgrade\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n")


def test_request_head_drops_hop_by_hop_and_adds_a_missing_host():
    head = request_head(b"GET", b"/", [
        (b"connection", b"keep-alive"), (b"Upgrade", b"h2c"), (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"), (b"X-Other", b"1"),
    ], b"upstream:8080")
    assert head == (b"GET / HTTP/1.1\r\nHost: upstream:8080\r\nX-Other: 1\r\n"
                    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")


@pytest.mark.parametrize(("target", "headers"), [
    (b"http://elsewhere/", []),
    (b"/a b", []),
    (b"/a\r\nX: y", []),
    (b"/", [(b"X-Bad", b"a\r\nInjected: 1")]),
    (b"/", [(b"X-Bad", b"a\x00")]),
    (b"/", [(b"Bad Name", b"a")]),
    (b"/", [(b"", b"a")]),
])
def test_request_head_refuses_what_cannot_be_written(target, headers):
    with pytest.raises(UpgradeError):
        request_head(b"GET", target, headers, b"h")


def test_parse_response_head():
    raw = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo= \r\n\r\n")
    head = parse_response_head(raw)
    assert head.status == 101
    assert head.raw == raw
    assert head.values(b"sec-websocket-accept") == [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert parse_response_head(b"HTTP/1.0 400\r\n\r\n").status == 400
    assert parse_response_head(b"HTTP/1.1 404 \r\n\r\n").status == 404


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 101 Switching Protocols\r\n",  # no end
    b"HTTP/2 101\r\n\r\n",
    b"HTTP/1.1 99 Too small\r\n\r\n",
    b"HTTP/1.1 1010 x\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 101 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n folded\r\n\r\n",  # obs-fold
    b"HTTP/1.1 101 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 101 OK\r\nX: a\x00b\r\n\r\n",
    b"HTTP/1.1 101 OK\r\nX: a\rb\r\n\r\n",
])
def test_parse_response_head_refuses_malformed_heads(raw):
    with pytest.raises(UpgradeError):
        parse_response_head(raw)


def _head(status: int, *headers: tuple[bytes, bytes]) -> ResponseHead:
    return ResponseHead(status, list(headers), b"")


@pytest.mark.parametrize(("head", "framing"), [
    (_head(400, (b"Content-Length", b"12")), ("length", 12)),
    (_head(400, (b"Content-Length", b"12, 12")), ("length", 12)),
    (_head(400, (b"Content-Length", b"0")), ("length", 0)),
    (_head(426, (b"Transfer-Encoding", b"chunked")), ("chunked", 0)),
    (_head(426, (b"Transfer-Encoding", b"gzip, chunked"), (b"Content-Length", b"3")),
     ("chunked", 0)),
    (_head(426, (b"Transfer-Encoding", b"gzip")), ("close", 0)),
    (_head(500), ("close", 0)),
    (_head(204, (b"Content-Length", b"5")), ("none", 0)),
    (_head(304), ("none", 0)),
])
def test_body_framing(head, framing):
    assert body_framing(head) == framing


@pytest.mark.parametrize("values", [[b"12", b"13"], [b"1, 2"], [b"-1"], [b"x"], [b""]])
def test_body_framing_refuses_bad_content_length(values):
    with pytest.raises(UpgradeError):
        body_framing(_head(400, *[(b"Content-Length", v) for v in values]))


CHUNKED = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"


def test_chunked_end_in_one_piece_and_byte_by_byte():
    assert ChunkedEnd().feed(CHUNKED + b"NEXT") == len(CHUNKED)
    finder = ChunkedEnd()
    ends = [finder.feed(CHUNKED[i:i + 1]) for i in range(len(CHUNKED))]
    assert ends[:-1] == [None] * (len(CHUNKED) - 1)
    assert ends[-1] == 1
    assert ChunkedEnd().feed(b"0\r\n\r\n") == 5
    assert ChunkedEnd().feed(b"0\r\n") is None


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloX\r\n", b"1" * 5000])
def test_chunked_end_refuses_malformed_bodies(body):
    with pytest.raises(UpgradeError):
        ChunkedEnd().feed(body)


# -- the relay's state machine, on in-memory transports ----------------------------------------

HEAD = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class Transport(StringTransport):
    """Like Twisted's real transports: unregistering without a producer is not an error."""

    def __init__(self) -> None:
        super().__init__(lenient=True)

    def unregisterProducer(self) -> None:
        self.producer = None


class FakeChannel:
    """What relay uses of the client connection (gateway.http.server.ServerProtocol): its
    transport, whose producer it is, and take_over(); connection loss reaches the relay through
    the exchange (client_gone) before a takeover and through take_over's on_lost after it."""

    def __init__(self, buffered: list[bytes]) -> None:
        self.transport = Transport()
        self.transport.registerProducer(self, True)  # as ServerProtocol.connectionMade does
        self._buffered = b"".join(buffered)
        self.taken_over = False
        self.lost: list[Failure] = []
        self.received: list[bytes] = []
        self.before_takeover: Callable[[], None] = lambda: None
        self._reader: Callable[[bytes], None] = self.received.append
        self._on_lost: Callable[[], None] | None = None

    def take_over(self, reader: Callable[[bytes], None], on_lost: Callable[[], None]) -> bytes:
        self.taken_over = True
        self._reader, self._on_lost = reader, on_lost
        self.transport.unregisterProducer()
        pending, self._buffered = self._buffered, b""
        return pending

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        if self._on_lost is not None:
            self._on_lost()
        else:
            self.before_takeover()

    def dataReceived(self, data: bytes) -> None:
        self._reader(data)

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


class FakeEndpoint:
    def __init__(self) -> None:
        self.connecting: Deferred[object] = Deferred(lambda d: self.cancelled.append(True))
        self.cancelled: list[bool] = []
        self.factory = None

    def connect(self, factory):
        self.factory = factory
        return self.connecting

    def complete(self) -> tuple[UpgradeRelay, Transport]:
        protocol = self.factory.buildProtocol(None)
        transport = Transport()
        protocol.makeConnection(transport)
        self.connecting.callback(protocol)
        return protocol, transport


class Setup:
    """A relay under test: the fake channel, the clock, the endpoint, the Deferred's results;
    after :meth:`connect`, the relay protocol and the upstream transport."""

    def __init__(self, buffered: tuple[bytes, ...] = (), timeout: float = 60.0) -> None:
        self.channel = FakeChannel(list(buffered))
        self.client = self.channel.transport
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        relay = UpgradeRelay(self.channel, HEAD, self.clock, timeout)
        self.channel.before_takeover = relay.client_gone  # what the exchange does
        self.results: list[object] = []
        relay.start(self.endpoint).addBoth(self.results.append)

    def connect(self) -> Setup:
        self.protocol, self.upstream = self.endpoint.complete()
        return self


def test_relay_splices_after_101_with_backpressure_both_ways():
    t = Setup((b"early", b" frames")).connect()
    assert t.upstream.value() == HEAD
    t.protocol.dataReceived(SWITCH[:20])
    assert t.results == []
    t.protocol.dataReceived(SWITCH[20:] + b"\x81\x02hi")  # a frame right behind the 101
    assert t.results == [101]
    assert t.client.value() == SWITCH + b"\x81\x02hi"
    assert t.upstream.value() == HEAD + b"early frames"  # what the client sent behind its head
    assert t.channel.taken_over
    # Each side's transport is the other's producer.
    t.client.producer.pauseProducing()
    assert t.upstream.producerState == "paused"
    t.client.producer.resumeProducing()
    assert t.upstream.producerState == "producing"
    t.upstream.producer.pauseProducing()
    assert t.client.producerState == "paused"
    t.upstream.producer.resumeProducing()
    assert t.client.producerState == "producing"
    # Bytes both ways, as they are.
    t.channel.dataReceived(b"\x81\x85....x")
    t.protocol.dataReceived(b"\x81\x01y")
    assert t.upstream.value().endswith(b"\x81\x85....x")
    assert t.client.value().endswith(b"\x81\x01y")
    assert t.clock.getDelayedCalls() == []  # the head timer is gone
    # The client leaves: the upstream side is closed, the channel's own bookkeeping runs.
    reason = Failure(ConnectionDone())
    t.channel.connectionLost(reason)
    assert t.upstream.disconnecting and not t.upstream.disconnected
    assert t.upstream.producer is None
    assert t.channel.lost == [reason]
    t.protocol.connectionLost(Failure(ConnectionDone()))
    assert t.clock.getDelayedCalls() == []


def test_relay_closes_the_client_when_the_upstream_closes():
    t = Setup().connect()
    t.protocol.dataReceived(SWITCH)
    t.protocol.connectionLost(Failure(ConnectionDone()))
    assert t.client.disconnecting and not t.client.disconnected
    assert t.client.producer is None
    t.clock.advance(60)  # a client that does not go away in time is aborted
    assert t.client.disconnected
    t.channel.connectionLost(Failure(ConnectionLost()))
    assert len(t.channel.lost) == 1


def test_relay_passes_a_refusal_on_and_closes_after_its_body():
    t = Setup((b"ignored",)).connect()
    refusal = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\n"
    t.protocol.dataReceived(refusal + b"he")
    assert t.results == [400]
    assert not t.client.disconnecting
    t.channel.dataReceived(b"more from the client")  # dropped: never sent upstream
    t.protocol.dataReceived(b"llo" + b"EXTRA")
    assert t.client.value() == refusal + b"hello"
    assert t.upstream.value() == HEAD
    assert t.client.disconnecting and not t.client.disconnected
    assert t.upstream.disconnecting


def test_relay_passes_a_chunked_refusal_on():
    t = Setup().connect()
    refusal = b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n"
    t.protocol.dataReceived(refusal + b"3\r\nabc\r\n0\r\n\r\nEXTRA")
    assert t.results == [426]
    assert t.client.value() == refusal + b"3\r\nabc\r\n0\r\n\r\n"
    assert t.client.disconnecting and not t.client.disconnected


def test_relay_aborts_the_client_when_a_refusal_is_truncated():
    t = Setup().connect()
    t.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nhe")
    t.protocol.connectionLost(Failure(ConnectionLost()))
    assert t.client.disconnected  # aborted, not closed as if the body were complete


def test_relay_passes_interim_responses_on():
    t = Setup().connect()
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    t.protocol.dataReceived(hints + SWITCH)
    assert t.results == [101]
    assert t.client.value() == hints + SWITCH


@pytest.mark.parametrize(("answer", "why"), [
    (b"HTTP/1.1 101 OK\r\n" + b"X: " + b"a" * MAX_RESPONSE_HEAD, "over 65536 bytes"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 400 Bad\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
])
def test_relay_fails_on_an_unusable_head_before_writing_anything(answer, why):
    t = Setup().connect()
    t.protocol.dataReceived(answer)
    [failure] = t.results
    assert isinstance(failure, Failure) and failure.check(UpgradeError)
    assert why in str(failure.value)
    assert t.client.value() == b""
    assert t.upstream.disconnected
    assert not t.channel.taken_over  # the connection still speaks HTTP
    assert t.client.producer is t.channel


def test_relay_fails_when_the_upstream_closes_before_the_head():
    t = Setup().connect()
    t.protocol.connectionLost(Failure(ConnectionDone()))
    assert "before the response head" in str(t.results[0].value)


def test_relay_fails_when_the_head_is_too_slow():
    t = Setup(timeout=5.0).connect()
    t.clock.advance(5)
    assert "no response head within 5 s" in str(t.results[0].value)
    assert t.upstream.disconnected
    assert t.client.value() == b""

    still_connecting = Setup(timeout=5.0)
    still_connecting.clock.advance(5)
    assert still_connecting.endpoint.cancelled == [True]
    assert still_connecting.results[0].check(UpgradeError)


def test_relay_gives_up_when_the_client_leaves_first():
    t = Setup().connect()
    reason = Failure(ConnectionLost())
    t.channel.connectionLost(reason)
    assert t.channel.lost == [reason]  # the exchange learns first ...
    assert t.results[0].check(UpgradeError)  # ... then the Deferred fails
    assert t.upstream.disconnected
    assert t.clock.getDelayedCalls() == []
