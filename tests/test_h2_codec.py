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
from gateway.http import h2frames
from gateway.http.h2 import HIGH_WATER, MAX_STREAMS, H2Session
from gateway.http.h2frames import PREFACE

LIMITS = Limits(idle_timeout=60, header_timeout=10, max_head_size=8192, max_body_size=0,
                max_connections=100, drain_timeout=10, access_log="all")


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.lost = False

    def write(self, data: bytes) -> None:
        assert not self.lost, "write after loseConnection"
        self.writes.append(data)

    def loseConnection(self) -> None:
        self.lost = True

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


def test_odd_header_names_h2_allows_reach_the_exchange():
    peer = Peer()
    peer.request(1, extra=[("x_y", "1"), ("x.y", "2")])
    peer.pump()
    assert (b"x_y", b"1") in peer.exchanges[1].head.headers
    assert (b"x.y", b"2") in peer.exchanges[1].head.headers
