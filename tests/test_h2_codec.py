"""Unit tests for gateway.http.h2: the HTTP/2 session driven by a real h2 client, in memory.

No reactor: the client is ``h2``'s own client-side ``H2Connection``, the transport records
writes and closes, and the exchange factory records what the session tells each exchange.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h2.events
import hyperframe.frame as hf
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from twisted.logger import Logger, formatEvent

from gateway.config import Limits
from gateway.http import h2frames, h2headers
from gateway.http.h2 import HIGH_WATER, MAX_STREAMS, H2Session

LIMITS = Limits(idle_timeout=60, header_timeout=10, max_head_size=8192, max_body_size=0,
                max_connections=100, drain_timeout=10, access_log="all")


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.lost = self.unregistered = False

    def write(self, data: bytes) -> None:
        assert not self.lost, "write after loseConnection"
        self.writes.append(data)

    def loseConnection(self) -> None:
        assert self.unregistered, "TLS transports close only without a producer"
        self.lost = True

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def abortConnection(self) -> None:
        self.lost = True


class Connection:
    identity = None
    server_name = "localhost"
    tls = True
    peer_host = "192.0.2.1"
    listener = None


class Exchange:
    """Records calls; ``on_start`` (stream -> None) answers synchronously if set."""

    def __init__(self, stream: Any, head: Any, on_start: Any = None) -> None:
        self.stream, self.head, self.calls = stream, head, []
        self.body = b""
        self.on_start = on_start

    def start(self) -> None:
        self.calls.append("start")
        if self.on_start:
            self.on_start(self)

    def body_data(self, data: bytes) -> None:
        self.calls.append("body_data")
        self.body += data

    def body_end(self) -> None:
        self.calls.append("body_end")

    def client_lost(self) -> None:
        self.calls.append("client_lost")


class Producer:
    def __init__(self) -> None:
        self.paused = False
        self.changes = 0

    def pauseProducing(self) -> None:
        self.paused, self.changes = True, self.changes + 1

    def resumeProducing(self) -> None:
        self.paused, self.changes = False, self.changes + 1


class Peer:
    """A session and an h2 client wired together in memory."""

    def __init__(self, on_start: Any = None, window: int | None = None, **kwargs: Any) -> None:
        self.transport = Transport()
        self.exchanges: dict[int, Exchange] = {}
        self.log_events: list[dict[str, Any]] = []
        self.events: list[h2.events.Event] = []
        self.on_start = on_start

        def factory(stream: Any, head: Any) -> Exchange:
            exchange = Exchange(stream, head, self.on_start)
            self.exchanges[stream.stream_id] = exchange
            return exchange

        self.session = H2Session(Connection(), self.transport, factory, LIMITS,
                                 Logger(observer=self.log_events.append), **kwargs)
        self.client = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False))
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.pump()

    @property
    def log(self) -> list[str]:
        return [formatEvent(e) for e in self.log_events]

    def pump(self) -> None:
        """Deliver the client's pending bytes, then the session's answers, until quiet."""
        for _ in range(100):
            data = self.client.data_to_send()
            if data:
                self.session.data_received(data)
            if not self.deliver() and not data:
                return

    def deliver(self) -> bool:
        out = b"".join(self.transport.writes)
        self.transport.writes.clear()
        if out:
            self.events += self.client.receive_data(out)
        return bool(out)

    def raw(self, data: bytes) -> None:
        """Bytes straight to the session (frames the h2 client would not send)."""
        self.session.data_received(data)
        self.deliver()

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """DATA frames of at most 16 KiB (the session's SETTINGS_MAX_FRAME_SIZE)."""
        chunks = [data[i:i + 16384] for i in range(0, len(data), 16384)] or [b""]
        for index, chunk in enumerate(chunks):
            self.client.send_data(stream_id, chunk, end_stream=end and index == len(chunks) - 1)
            self.pump()

    def request(self, stream_id: int, path: str = "/", method: str = "GET",
                extra: list[tuple[str, str]] | None = None, end: bool = True) -> None:
        self.client.send_headers(stream_id, [
            (":method", method), (":scheme", "https"), (":authority", "gw.example"),
            (":path", path), *(extra or [])], end_stream=end)

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)
                and (stream_id is None or getattr(e, "stream_id", None) == stream_id)]

    def status(self, stream_id: int) -> bytes | None:
        for e in self.of(h2.events.ResponseReceived, stream_id):
            return dict(e.headers)[b":status"]
        return None

    def resets(self) -> dict[int, int]:
        return {e.stream_id: e.error_code for e in self.of(h2.events.StreamReset)}

    def goaway(self) -> int | None:
        ended = self.of(h2.events.ConnectionTerminated)
        return ended[-1].error_code if ended else None


def answer(status: int = 200, body: bytes = b"ok") -> Any:
    def on_start(exchange: Exchange) -> None:
        exchange.stream.send_head(status, [(b"Content-Type", b"text/plain")], len(body), True)
        exchange.stream.send_data(body)
        exchange.stream.send_end()
    return on_start


def frame(kind: type, stream_id: int, **fields: Any) -> bytes:
    f = kind(stream_id)
    for name, value in fields.items():
        setattr(f, name, value)
    return f.serialize()


# -- request heads ---------------------------------------------------------------------------

def test_request_head_comes_from_the_pseudo_headers_with_authority_as_host():
    peer = Peer()
    peer.request(1, "/a?b=1", extra=[("x-one", "1"), ("expect", "100-continue")], end=False)
    peer.pump()
    head = peer.exchanges[1].head
    assert (head.method, head.target, head.version) == (b"GET", b"/a?b=1", b"HTTP/2")
    assert head.headers == [(b"host", b"gw.example"), (b"x-one", b"1")]
    assert head.expect_continue is True
    assert head.content_length is None
    assert head.head_size == 3 + 6 + (4 + 10 + 4) + (5 + 1 + 4)
    assert peer.exchanges[1].calls == ["start"]


def test_headers_with_end_stream_have_content_length_zero_and_no_body_calls():
    peer = Peer()
    peer.request(1)
    peer.pump()
    assert peer.exchanges[1].head.content_length == 0
    assert peer.exchanges[1].calls == ["start"]


def test_authority_with_an_equal_host_is_one_host_and_with_another_host_two():
    peer = Peer()
    peer.request(1, extra=[("host", "gw.example")])
    peer.request(3, extra=[("host", "other.example")])
    peer.pump()
    assert [h for h in peer.exchanges[1].head.headers if h[0] == b"host"] == [
        (b"host", b"gw.example")]
    assert [h for h in peer.exchanges[3].head.headers if h[0] == b"host"] == [
        (b"host", b"gw.example"), (b"host", b"other.example")]


def test_connect_without_path_has_an_empty_target():
    peer = Peer()
    peer.client.send_headers(1, [(":method", "CONNECT"), (":authority", "gw.example:22")])
    peer.pump()
    assert (peer.exchanges[1].head.method, peer.exchanges[1].head.target) == (b"CONNECT", b"")


def test_content_length_is_passed_on_and_the_body_is_relayed():
    peer = Peer()
    peer.request(1, method="POST", extra=[("content-length", "5")], end=False)
    peer.client.send_data(1, b"hello", end_stream=True)
    peer.pump()
    exchange = peer.exchanges[1]
    assert exchange.head.content_length == 5
    assert (b"content-length", b"5") in exchange.head.headers
    assert (exchange.calls, exchange.body) == (["start", "body_data", "body_end"], b"hello")


# -- malformed requests: stream errors -------------------------------------------------------

@pytest.mark.parametrize("lengths", [["5", "5"], ["5", "6"], ["five"], ["9223372036854775808"],
                                     ["-1"]])
def test_repeated_identical_content_length_is_one_stream_error_and_no_exchange(lengths):
    # (and a repeated different, non-numeric or > 2**63-1 one)
    peer = Peer()
    peer.request(1, method="POST", extra=[("content-length", v) for v in lengths], end=False)
    peer.request(3)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.PROTOCOL_ERROR}
    assert 1 not in peer.exchanges
    assert peer.exchanges[3].calls == ["start"]
    assert peer.goaway() is None
    assert sum("content-length" in line for line in peer.log) == 1


def test_body_longer_or_shorter_than_content_length_is_a_stream_error():
    peer = Peer()
    peer.request(1, method="POST", extra=[("content-length", "3")], end=False)
    peer.request(3, method="POST", extra=[("content-length", "9")], end=False)
    peer.client.send_data(1, b"toolong")
    peer.client.send_data(3, b"short", end_stream=True)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.PROTOCOL_ERROR, 3: ErrorCodes.PROTOCOL_ERROR}
    assert peer.exchanges[1].calls == ["start", "client_lost"]
    assert peer.exchanges[3].calls == ["start", "body_data", "client_lost"]
    assert peer.goaway() is None


def test_uppercase_header_name_is_a_protocol_error_as_h2_decides():
    peer = Peer()
    peer.request(1, extra=[("X-Upper", "1")])
    peer.pump()
    assert peer.goaway() == ErrorCodes.PROTOCOL_ERROR
    assert peer.transport.lost
    assert len(peer.log) == 1


def goaways(data: bytes) -> list[int]:
    """The error codes of the GOAWAY frames in *data* (the session's raw writes)."""
    codes = []
    while len(data) >= 9:
        header, length = hf.Frame.parse_frame_header(memoryview(data[:9]))
        body, data = data[9:9 + length], data[9 + length:]
        if isinstance(header, hf.GoAwayFrame):
            header.parse_body(memoryview(body))
            codes.append(header.error_code)
    return codes


def test_a_connection_error_h2_found_sends_one_goaway():
    peer = Peer()
    peer.request(1, extra=[("X-Upper", "1")])
    peer.session.data_received(peer.client.data_to_send())
    assert goaways(b"".join(peer.transport.writes)) == [ErrorCodes.PROTOCOL_ERROR]
    assert peer.transport.lost


@pytest.mark.parametrize("block", [b"\x80", b"\xff\xff\xff\xff\x0f", b"\x40\x85abc"],
                         ids=["index-0", "index-out-of-range", "truncated-literal"])
def test_a_header_block_hpack_cannot_decode_is_compression_error(block):
    peer = Peer()
    peer.session.data_received(frame(hf.HeadersFrame, 1, data=block,
                                     flags={"END_HEADERS", "END_STREAM"}))
    assert goaways(b"".join(peer.transport.writes)) == [ErrorCodes.COMPRESSION_ERROR]
    assert peer.transport.lost
    assert peer.exchanges == {}
    assert [line for line in peer.log if "COMPRESSION_ERROR" in line]


@pytest.mark.parametrize(("name", "value"), [
    ("connection", "close"), ("keep-alive", "5"), ("proxy-connection", "keep-alive"),
    ("transfer-encoding", "chunked"), ("upgrade", "h2c"), ("te", "gzip"),
    ("te", "trailers, gzip")])
def test_a_connection_specific_field_is_a_stream_error_and_the_connection_serves_on(name, value):
    # RFC 9113 §8.2.2: malformed (§8.1.1), so a stream error; h2 alone would end the connection
    peer = Peer(answer())
    peer.request(1, extra=[(name, value)])
    peer.request(3)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.PROTOCOL_ERROR}
    assert 1 not in peer.exchanges
    assert peer.status(3) == b"200"
    assert peer.goaway() is None and not peer.transport.lost
    assert sum("connection-specific" in line for line in peer.log) == 1


def test_a_request_without_authority_or_host_is_a_stream_error_and_the_connection_serves_on():
    # RFC 9113 §8.1.1 (h2 alone would end the connection); with a host alone it is served
    peer = Peer(answer())
    peer.client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/")],
                             end_stream=True)
    peer.client.send_headers(3, [(":method", "GET"), (":scheme", "https"), (":path", "/"),
                                 ("host", "gw.example")], end_stream=True)
    peer.request(5)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.PROTOCOL_ERROR}
    assert 1 not in peer.exchanges
    assert (peer.status(3), peer.status(5)) == (b"200", b"200")
    assert ("host", "gw.example") in [(n.decode(), v.decode())
                                      for n, v in peer.exchanges[3].head.headers]
    assert peer.goaway() is None and not peer.transport.lost
    assert sum("no :authority and no host" in line for line in peer.log) == 1


@pytest.mark.parametrize(("name", "value"), [
    ("authorization", "Bearer TOPSECRET\r\n"),  # a control character in a value
    (":path", "/x?token=TOPSECRET\x00"),
    ("x-token", " TOPSECRET"),  # whitespace around a value
])
def test_a_protocol_error_about_a_header_value_never_logs_the_value(name, value):
    # The connection ends (h2's own check), and the log line says why without the value: a
    # token, or a query string, which the access log leaves out unless [log] query = yes.
    peer = Peer()
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", "gw.example"),
               (":path", "/")]
    headers = [(n, v) for n, v in headers if n != name] + [(name, value)]
    if name.startswith(":"):
        headers.insert(0, headers.pop())
    peer.client.send_headers(1, headers, end_stream=True)
    peer.pump()
    assert peer.goaway() == ErrorCodes.PROTOCOL_ERROR
    lines = [line for line in peer.log if "GOAWAY(PROTOCOL_ERROR)" in line]
    assert len(lines) == 1 and "bytes>" in lines[0], peer.log
    assert not [line for line in peer.log if "TOPSECRET" in line], peer.log


@pytest.mark.parametrize(("message", "logged"), [
    ("Illegal character '\r' in header value: b'Bearer t\\r\\n'",
     "Illegal character '\r' in header value: <10 bytes>"),
    ("Invalid value for TE header: b\"it's\"", "Invalid value for TE header: <4 bytes>"),
    ("Request header block has mismatched :authority and Host headers: b'a' / b'bc'",
     "Request header block has mismatched :authority and Host headers: <1 bytes> / <2 bytes>"),
    ("Received uppercase header name b'X-Foo'.", "Received uppercase header name b'X-Foo'."),
    ("Received custom pseudo-header field b':" + "x" * 100 + "'",
     "Received custom pseudo-header field b':" + "x" * 61 + "..."),
])
def test_protocol_error_text_keeps_names_and_drops_values(message, logged):
    assert h2headers.protocol_error_text(message) == logged


def test_a_connection_specific_trailer_field_resets_the_stream_and_tells_its_exchange():
    peer = Peer()
    peer.request(1, method="POST", end=False)
    peer.send(1, b"hello")
    peer.client.send_headers(1, [(b"te", b"gzip")], end_stream=True)
    peer.request(3)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.PROTOCOL_ERROR}
    assert peer.exchanges[1].calls == ["start", "body_data", "client_lost"]
    assert peer.exchanges[3].calls == ["start"] and peer.goaway() is None
    assert sum("connection-specific trailer field" in line for line in peer.log) == 1


def test_malformed_streams_count_toward_the_reset_bound():
    peer = Peer()
    for index in range(h2frames.BOUNDS["reset"] + 1):
        peer.request(1 + 2 * index, extra=[("connection", "close")])
        peer.pump()
    assert peer.goaway() == ErrorCodes.ENHANCE_YOUR_CALM
    assert peer.exchanges == {}


def test_te_trailers_is_allowed_and_reaches_the_exchange():
    peer = Peer()
    peer.request(1, extra=[("te", "Trailers")])
    peer.pump()
    assert (b"te", b"Trailers") in peer.exchanges[1].head.headers
    assert peer.resets() == {}


def test_odd_header_names_h2_allows_reach_the_exchange():
    peer = Peer()
    peer.request(1, extra=[("x_y", "1"), ("x.y", "2")])
    peer.pump()
    assert (b"x_y", b"1") in peer.exchanges[1].head.headers
    assert (b"x.y", b"2") in peer.exchanges[1].head.headers


# -- responses -------------------------------------------------------------------------------

def test_response_head_is_lower_cased_without_framing_headers_and_length_is_content_length():
    def on_start(exchange: Exchange) -> None:
        exchange.stream.send_head(200, [
            (b"Content-Type", b"text/plain"), (b"Content-Length", b"999"),
            (b"Transfer-Encoding", b"chunked"), (b"Connection", b"close"),
            (b"Keep-Alive", b"5"), (b"Upgrade", b"h2c"), (b"X-Multi", b"a"),
            (b"x-multi", b"b")], 2, True)
        exchange.stream.send_data(b"ok")
        exchange.stream.send_end()
    peer = Peer(on_start)
    peer.request(1)
    peer.pump()
    (response,) = peer.of(h2.events.ResponseReceived, 1)
    assert response.headers == [(b":status", b"200"), (b"content-type", b"text/plain"),
                                (b"x-multi", b"a"), (b"x-multi", b"b"),
                                (b"content-length", b"2")]
    assert b"".join(e.data for e in peer.of(h2.events.DataReceived, 1)) == b"ok"
    assert peer.of(h2.events.StreamEnded, 1)


@pytest.mark.parametrize("status", [304, 200])
def test_head_and_304_announce_content_length_without_a_body(status):
    def on_start(exchange: Exchange) -> None:
        exchange.stream.send_head(status, [], 1234, False)
    peer = Peer(on_start)
    peer.request(1, method="HEAD")
    peer.pump()
    (response,) = peer.of(h2.events.ResponseReceived, 1)
    assert (b"content-length", b"1234") in response.headers
    assert response.stream_ended is not None
    assert peer.session.idle()


def test_a_header_h2_would_refuse_is_dropped_and_logged_once():
    def on_start(exchange: Exchange) -> None:
        exchange.stream.send_head(200, [(b"x y", b"1"), (b"x-bad", b"a\r\nb"),
                                        (b"x-space", b" lead"), (b"x-good", b"1")], None, True)
        exchange.stream.send_end()
    peer = Peer(on_start)
    peer.request(1)
    peer.pump()
    (response,) = peer.of(h2.events.ResponseReceived, 1)
    assert response.headers == [(b":status", b"200"), (b"x-good", b"1")]
    assert len([line for line in peer.log if "dropped" in line]) == 1
    assert peer.goaway() is None


def test_informational_response_comes_before_the_final_head():
    def on_start(exchange: Exchange) -> None:
        exchange.stream.send_informational(100, [])
    peer = Peer(on_start)
    peer.request(1, method="POST", extra=[("expect", "100-continue")], end=False)
    peer.pump()
    assert [dict(e.headers)[b":status"] for e in
            peer.of(h2.events.InformationalResponseReceived, 1)] == [b"100"]
    peer.exchanges[1].stream.send_head(200, [], None, False)
    peer.deliver()
    assert peer.status(1) == b"200"


# -- flow control and backpressure -----------------------------------------------------------

def body_of(peer: Peer, stream_id: int) -> bytes:
    return b"".join(e.data for e in peer.of(h2.events.DataReceived, stream_id))


def test_response_data_waits_for_the_stream_window_and_goes_out_on_window_update():
    peer = Peer(window=1000)
    peer.request(1)
    peer.pump()
    stream = peer.exchanges[1].stream
    stream.send_head(200, [], 5000, True)
    stream.send_data(b"x" * 5000)
    stream.send_end()
    peer.deliver()
    assert len(body_of(peer, 1)) == 1000
    assert not peer.of(h2.events.StreamEnded, 1)
    peer.client.increment_flow_control_window(4000, stream_id=1)
    peer.pump()
    assert len(body_of(peer, 1)) == 5000
    assert peer.of(h2.events.StreamEnded, 1)


def test_response_data_waits_for_the_connection_window_too():
    peer = Peer()  # connection window 65535: two streams share it
    peer.request(1)
    peer.request(3)
    peer.pump()
    for stream_id in (1, 3):
        stream = peer.exchanges[stream_id].stream
        stream.send_head(200, [], None, True)
        stream.send_data(b"y" * 40000)
    peer.deliver()
    assert len(body_of(peer, 1)) + len(body_of(peer, 3)) == 65535
    peer.client.increment_flow_control_window(100000)
    peer.client.increment_flow_control_window(100000, stream_id=1)
    peer.client.increment_flow_control_window(100000, stream_id=3)
    peer.pump()
    assert len(body_of(peer, 1)) + len(body_of(peer, 3)) == 80000


def test_response_producer_is_paused_above_64_kib_and_resumed_when_drained():
    peer = Peer(window=0)
    peer.request(1)
    peer.pump()
    stream, producer = peer.exchanges[1].stream, Producer()
    stream.set_response_producer(producer)
    stream.send_head(200, [], None, True)
    stream.send_data(b"z" * HIGH_WATER)
    assert not producer.paused
    stream.send_data(b"z")
    assert producer.paused
    peer.client.increment_flow_control_window(HIGH_WATER, stream_id=1)
    peer.client.increment_flow_control_window(HIGH_WATER)
    peer.pump()
    assert not producer.paused
    assert len(body_of(peer, 1)) == HIGH_WATER


def test_a_paused_producer_is_resumed_when_the_response_ends_or_it_is_replaced():
    peer = Peer(window=0)
    peer.request(1)
    peer.request(3)
    peer.pump()
    first, second = Producer(), Producer()
    for stream_id, producer in ((1, first), (3, second)):
        stream = peer.exchanges[stream_id].stream
        stream.set_response_producer(producer)
        stream.send_head(200, [], None, True)
        stream.send_data(b"z" * (HIGH_WATER + 1))
    assert first.paused and second.paused
    peer.exchanges[1].stream.set_response_producer(None)
    peer.exchanges[3].stream.reset()
    assert not first.paused and not second.paused


def test_pause_writing_pauses_every_producer_and_holds_data_until_resume_writing():
    peer = Peer()
    peer.request(1)
    peer.request(3)
    peer.pump()
    producers = {}
    for stream_id in (1, 3):
        producers[stream_id] = Producer()
        peer.exchanges[stream_id].stream.set_response_producer(producers[stream_id])
        peer.exchanges[stream_id].stream.send_head(200, [], None, True)
    peer.session.pause_writing()
    assert all(p.paused for p in producers.values())
    peer.exchanges[1].stream.send_data(b"held")
    peer.deliver()
    assert body_of(peer, 1) == b""
    peer.session.resume_writing()
    peer.deliver()
    assert body_of(peer, 1) == b"held"
    assert not any(p.paused for p in producers.values())


def test_request_data_is_acknowledged_only_as_the_exchange_takes_it():
    peer = Peer()
    peer.request(1, method="POST", end=False)
    peer.pump()
    peer.exchanges[1].stream.pause_request_body()
    peer.send(1, b"a" * 60000)
    peer.pump()
    assert peer.client.local_flow_control_window(1) == 65535 - 60000  # nothing given back
    assert peer.client.outbound_flow_control_window > 65535 - 60000  # the connection's is
    peer.exchanges[1].stream.resume_request_body()
    peer.pump()
    assert peer.client.local_flow_control_window(1) == 65535
    assert peer.exchanges[1].body == b"a" * 60000


def test_paused_request_body_does_not_stall_the_neighbouring_stream():
    peer = Peer()
    peer.request(1, method="POST", end=False)
    peer.request(3, method="POST", end=False)
    peer.pump()
    peer.exchanges[1].stream.pause_request_body()
    peer.send(1, b"a" * 65535)
    for _ in range(4):
        peer.client.send_data(3, b"b" * 16384)
        peer.pump()
    assert len(peer.exchanges[3].body) == 4 * 16384



# -- streams: concurrency, early responses, resets -------------------------------------------

def test_settings_advertise_100_streams_and_no_extended_connect():
    peer = Peer()
    assert peer.client.remote_settings.max_concurrent_streams == MAX_STREAMS == 100
    assert peer.client.remote_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 0


def test_the_101st_stream_is_refused_alone_and_hpack_stays_in_sync():
    peer = Peer()
    # The client may not know our SETTINGS yet: let it open 101 streams anyway.
    peer.client.remote_settings = type(peer.client.remote_settings)(client=False)
    for index in range(101):  # each adds a new entry to the HPACK dynamic table
        peer.request(1 + 2 * index, extra=[("x-n", str(index))])
    peer.pump()
    assert len(peer.exchanges) == 100
    assert peer.resets() == {201: ErrorCodes.REFUSED_STREAM}
    assert peer.goaway() is None
    answer()(peer.exchanges[1])
    peer.request(203, extra=[("x-n", "100")])  # indexed from the dynamic table
    peer.pump()
    assert peer.status(1) == b"200"
    assert (b"x-n", b"100") in peer.exchanges[203].head.headers
    assert peer.exchanges[199].calls == ["start"]


def test_early_response_then_more_data_keeps_the_neighbouring_stream():
    peer = Peer(lambda e: answer(403, b"no")(e) if e.stream.stream_id == 1 else None)
    peer.request(1, method="POST", extra=[("content-length", "200000")], end=False)
    peer.request(3, method="POST", extra=[("content-length", "200000")], end=False)
    peer.send(1, b"a" * 16384)
    peer.pump()
    assert peer.status(1) == b"403"
    assert peer.of(h2.events.StreamEnded, 1)
    assert peer.resets() == {1: ErrorCodes.NO_ERROR}  # RFC 9113 §8.1, after END_STREAM
    # DATA the client had in flight for stream 1, then stream 3's body: all accepted.
    peer.raw(frame(hf.DataFrame, 1, data=b"b" * 16384))
    peer.raw(frame(hf.DataFrame, 1, data=b"b" * 16384))
    peer.send(3, b"c" * 200000, end=True)
    peer.pump()
    assert peer.goaway() is None
    assert peer.exchanges[1].calls == ["start"]  # the discarded body never reaches it
    assert peer.client.outbound_flow_control_window > 65535  # given back nonetheless
    assert len(peer.exchanges[3].body) == 200000
    assert peer.exchanges[3].calls[-1] == "body_end"


def test_client_reset_tells_the_exchange_client_lost():
    peer = Peer()
    peer.request(1)
    peer.pump()
    peer.client.reset_stream(1, ErrorCodes.CANCEL)
    peer.pump()
    assert peer.exchanges[1].calls == ["start", "client_lost"]
    assert peer.session.idle()
    peer.exchanges[1].stream.send_head(200, [], None, True)  # too late: ignored
    peer.exchanges[1].stream.send_data(b"late")
    peer.deliver()
    assert peer.status(1) is None


def test_exchange_reset_is_internal_error_and_the_exchange_is_told_nothing_more():
    peer = Peer()
    peer.request(1, method="POST", end=False)
    peer.pump()
    stream = peer.exchanges[1].stream
    stream.send_head(200, [], None, True)
    stream.send_data(b"partial")
    stream.reset()
    stream.reset()
    peer.send(1, b"more", end=True)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.INTERNAL_ERROR}
    assert peer.exchanges[1].calls == ["start"]
    assert peer.goaway() is None


def test_exchange_raising_resets_only_its_stream_and_logs_a_traceback():
    def on_start(exchange: Exchange) -> None:
        if exchange.stream.stream_id == 1:
            raise RuntimeError("boom")
        answer()(exchange)
    peer = Peer(on_start)
    peer.request(1)
    peer.request(3)
    peer.pump()
    assert peer.resets() == {1: ErrorCodes.INTERNAL_ERROR}
    assert peer.status(3) == b"200"
    failures = [e for e in peer.log_events if "log_failure" in e]
    assert len(failures) == 1
    assert "boom" in failures[0]["log_failure"].getTraceback()


def test_connection_lost_tells_every_open_exchange():
    peer = Peer()
    peer.request(1)
    peer.request(3)
    peer.pump()
    answer()(peer.exchanges[3])
    peer.session.connection_lost()
    assert peer.exchanges[1].calls == ["start", "client_lost"]
    assert peer.exchanges[3].calls == ["start"]  # its response was complete


def test_one_write_per_data_received():
    peer = Peer(answer())
    for index in range(10):
        peer.request(1 + 2 * index)
        peer.client.ping(b"12345678")
    peer.session.data_received(peer.client.data_to_send())
    assert len(peer.transport.writes) == 1
    peer.deliver()
    assert all(peer.status(1 + 2 * i) == b"200" for i in range(10))


# -- abuse bounds ----------------------------------------------------------------------------

def test_rapid_reset_flood_ends_the_connection_with_enhance_your_calm():
    peer = Peer()
    bound = h2frames.BOUNDS["reset"]
    for index in range(bound + 1):
        peer.request(1 + 2 * index)
        peer.client.reset_stream(1 + 2 * index, ErrorCodes.CANCEL)
    peer.pump()
    assert peer.goaway() == ErrorCodes.ENHANCE_YOUR_CALM
    assert peer.transport.lost
    assert len(peer.exchanges) == bound + 1  # the streams up to the bound were served
    assert [line for line in peer.log if "reset flood" in line]


def test_resets_below_the_bound_in_each_window_are_allowed():
    now = [0.0]
    peer = Peer(clock=lambda: now[0])
    bound, stream_id = h2frames.BOUNDS["reset"], 1
    for _ in range(3):
        for _ in range(bound):
            peer.request(stream_id)
            peer.client.reset_stream(stream_id, ErrorCodes.CANCEL)
            stream_id += 2
        peer.pump()
        now[0] += h2frames.WINDOW
    assert peer.goaway() is None


@pytest.mark.parametrize(("kind", "make"), [
    ("ping", lambda: frame(hf.PingFrame, 0, opaque_data=b"12345678")),
    ("settings", lambda: frame(hf.SettingsFrame, 0)),
    ("priority", lambda: frame(hf.PriorityFrame, 5, depends_on=0, stream_weight=1)),
    ("empty-data", lambda: frame(hf.DataFrame, 1)),
])
def test_control_frame_floods_end_the_connection_with_enhance_your_calm(kind, make):
    peer = Peer()
    peer.request(1, method="POST", end=False)
    peer.pump()
    peer.raw(make() * (h2frames.BOUNDS[kind] - 1))  # (the client's first SETTINGS counts)
    assert peer.goaway() is None
    peer.raw(make() * 2)
    assert peer.goaway() == ErrorCodes.ENHANCE_YOUR_CALM
    assert peer.exchanges[1].calls == ["start", "client_lost"]


def continuation_flood(peer: Peer, count: int, size: int) -> bytes:
    block = peer.client.encoder.encode([(":method", "GET"), (":scheme", "https"),
                                        (":authority", "gw.example"), (":path", "/")])
    frames = frame(hf.HeadersFrame, 1, data=block)
    return frames + frame(hf.ContinuationFrame, 1, data=b"\x00" * size) * count


@pytest.mark.parametrize(("count", "size"), [(100, 0), (10, 16384)])
def test_continuation_flood_ends_the_connection(count, size):
    peer = Peer()
    peer.raw(continuation_flood(peer, count, size))
    assert peer.goaway() in (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.ENHANCE_YOUR_CALM)
    assert peer.transport.lost
    assert peer.exchanges == {}


def test_a_header_list_over_settings_max_header_list_size_ends_the_connection():
    peer = Peer()
    peer.request(1, extra=[(f"x-{i}", "v" * 4000) for i in range(20)])
    peer.pump()
    assert peer.goaway() == ErrorCodes.ENHANCE_YOUR_CALM
    assert peer.exchanges == {}


# -- GOAWAY and closing ----------------------------------------------------------------------

def test_drain_sends_goaway_refuses_new_streams_and_closes_when_the_last_stream_ends():
    peer = Peer()
    peer.request(1)
    peer.request(3)
    peer.pump()
    peer.session.drain()
    peer.deliver()
    (goaway,) = peer.of(h2.events.ConnectionTerminated)
    assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 3)
    # h2's client would not open streams after GOAWAY: write the HEADERS ourselves.
    block = peer.client.encoder.encode([(":method", "GET"), (":scheme", "https"),
                                        (":authority", "gw.example"), (":path", "/")])
    peer.session.data_received(frame(hf.HeadersFrame, 5, data=block, flags={"END_HEADERS"}))
    assert b"".join(peer.transport.writes) == frame(
        hf.RstStreamFrame, 5, error_code=ErrorCodes.REFUSED_STREAM)
    peer.transport.writes.clear()
    assert 5 not in peer.exchanges
    answer()(peer.exchanges[1])
    assert not peer.transport.lost
    answer()(peer.exchanges[3])
    assert peer.transport.lost
    assert frame(hf.DataFrame, 3, flags={"END_STREAM"}) in b"".join(peer.transport.writes)


def test_drain_of_an_idle_connection_closes_at_once():
    peer = Peer()
    peer.session.drain()
    assert peer.transport.lost


def test_close_idle_sends_goaway_and_closes_at_once():
    peer = Peer(answer())
    peer.request(1)
    peer.pump()
    assert peer.session.idle()
    peer.session.close_idle()
    peer.deliver()
    assert peer.goaway() == ErrorCodes.NO_ERROR
    assert peer.transport.lost


def test_idle_is_false_while_a_stream_is_open():
    peer = Peer()
    peer.request(1)
    peer.pump()
    assert not peer.session.idle()
    answer()(peer.exchanges[1])
    assert peer.session.idle()


def test_client_goaway_lets_the_streams_finish_then_closes():
    peer = Peer()
    peer.request(1)
    peer.pump()
    peer.raw(frame(hf.GoAwayFrame, 0, last_stream_id=0, error_code=0))
    assert not peer.transport.lost
    answer()(peer.exchanges[1])
    peer.deliver()
    assert peer.status(1) == b"200"
    assert peer.transport.lost


def test_client_goaway_with_an_error_ends_the_connection_at_once():
    peer = Peer()
    peer.request(1)
    peer.pump()
    peer.raw(frame(hf.GoAwayFrame, 0, last_stream_id=0, error_code=ErrorCodes.PROTOCOL_ERROR))
    assert peer.transport.lost
    assert peer.exchanges[1].calls == ["start", "client_lost"]


# -- hostile input never raises --------------------------------------------------------------

def hostile_sequences(peer: Peer) -> list[bytes]:
    block = peer.client.encoder.encode([(":method", "GET"), (":scheme", "https"),
                                        (":authority", "gw.example"), (":path", "/")])
    odd = peer.client.encoder.encode([(":method", "GET"), (":scheme", "https"),
                                      (":authority", "gw.example"), (":path", "/"),
                                      ("x y", "1"), ("X-Upper", "2"), (":extra", "3")])
    headers = frame(hf.HeadersFrame, 1, data=block, flags={"END_HEADERS", "END_STREAM"})
    return [
        b"\x00" * 9 + b"garbage" * 100,
        bytes(range(256)) * 4,
        b"".join(frame(hf.PriorityFrame, 2 * i + 1, depends_on=0) for i in range(2000)),
        frame(hf.DataFrame, 1, data=b"x"),  # idle stream
        headers + frame(hf.DataFrame, 1, data=b"x") * 3,  # closed by END_STREAM
        headers + frame(hf.RstStreamFrame, 1) * 3 + frame(hf.WindowUpdateFrame, 1,
                                                          window_increment=1),
        frame(hf.HeadersFrame, 1, data=odd, flags={"END_HEADERS"}),
        frame(hf.ContinuationFrame, 1, data=b"\x00", flags={"END_HEADERS"}),
        frame(hf.WindowUpdateFrame, 0, window_increment=2**31 - 1) * 2,
        headers + frame(hf.WindowUpdateFrame, 1, window_increment=2**31 - 1) * 2,
        frame(hf.WindowUpdateFrame, 0, window_increment=0),
        frame(hf.HeadersFrame, 2, data=block, flags={"END_HEADERS"}),  # even stream id
        frame(hf.HeadersFrame, 1, data=b"\xff\xff\xff\xff", flags={"END_HEADERS"}),
        frame(hf.HeadersFrame, 1, data=block) + frame(hf.PingFrame, 0, opaque_data=b"1" * 8),
        frame(hf.HeadersFrame, 1, data=block) + frame(hf.GoAwayFrame, 0),
        frame(hf.GoAwayFrame, 0)[:9] + b"\x00",
        b"\x00\x00\x00\x07\x00\x00\x00\x00\x01" + b"\x00" * 0,  # GOAWAY on a stream, short
        frame(hf.SettingsFrame, 0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 2**31}),
        frame(hf.SettingsFrame, 0, settings={SettingCodes.ENABLE_PUSH: 1}),
        frame(hf.PushPromiseFrame, 1, promised_stream_id=2, data=block),
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x00" + b"\x00" * 4,  # RST_STREAM on stream 0
        b"\x00\x00\x08\x06\x00\x00\x00\x00\x03" + b"1" * 8,  # PING on a stream
        b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",  # 16 MiB frame
        headers + headers,  # HEADERS again on a closed stream
    ]


def test_no_frame_sequence_raises():
    for index in range(len(hostile_sequences(Peer()))):
        peer = Peer(answer())
        sequence = hostile_sequences(peer)[index]
        for part in (sequence[:7], sequence[7:]):
            peer.session.data_received(part)  # must not raise
        with contextlib.suppress(Exception):  # the h2 client may dislike what it gets back
            peer.deliver()
        errors = [e for e in peer.log_events if "log_failure" in e]
        assert errors == [], (index, errors[0]["log_failure"].getTraceback())
        if peer.goaway() is not None:
            assert peer.transport.lost, index


def test_priority_for_2000_idle_streams_leaves_the_connection_serving():
    peer = Peer(answer())
    peer.raw(b"".join(frame(hf.PriorityFrame, 2 * i + 101, depends_on=0) for i in range(2000)))
    peer.request(1)
    peer.pump()
    assert peer.status(1) == b"200"
    assert peer.goaway() is None


def test_frames_before_a_bad_frame_are_handled_before_the_connection_ends():
    peer = Peer()
    peer.request(1)
    peer.session.data_received(peer.client.data_to_send() + b"\x01\x00\x00" + b"\x00" * 6)
    assert peer.exchanges[1].calls == ["start", "client_lost"]
    peer.deliver()
    assert peer.goaway() == ErrorCodes.FRAME_SIZE_ERROR
    assert peer.transport.lost


def test_a_client_that_does_not_speak_http2_gets_goaway_protocol_error():
    transport = Transport()
    log: list[dict[str, Any]] = []
    session = H2Session(Connection(), transport, Exchange, LIMITS, Logger(observer=log.append))
    session.data_received(b"GET / HTTP/1.1\r\nHost: gw.example\r\n\r\n")
    assert transport.lost
    assert [formatEvent(e) for e in log] == [
        "HTTP/2 connection from 192.0.2.1: ProtocolError: Invalid HTTP/2 preamble.: "
        "GOAWAY(PROTOCOL_ERROR)"]
