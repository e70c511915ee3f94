"""HTTP/2 through the real twistd process: the defects of Twisted's HTTP/2 layer stay fixed.

One upstream request per HTTP/2 request, whatever its headers; one stream's trouble (an early
403, a malformed request, the 101st stream) never ends its neighbours; hostile but allowed
frames do not break the connection; after GOAWAY the socket closes as soon as it may.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import hyperframe.frame as hf
import pytest
from h2.errors import ErrorCodes
from harness import DEADLINE
from test_e2e_http2 import h2_socket

from gateway.http import h2frames

CLOSED_PROMPTLY = 5.0  # seconds from the last response (or GOAWAY) to the socket's close


@pytest.fixture(scope="module")
def gateway(start_gateway, upstream):
    return start_gateway({
        "tls": {"http2": "yes"},
        "route:closed": {"prefix": "/closed/", "upstream": upstream.url, "authorizers": "nobody"},
        "authorizer:nobody": {"type": "cn", "allow": "nobody"},
    })


class Client:
    """An h2 client on a TLS socket; :meth:`until` reads until a condition holds."""

    def __init__(self, tls: Any, port: int) -> None:
        self.tls, self.port = tls, port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.eof = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.tls.sendall(data)

    def headers(self, path: str, method: str = "GET",
                extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        return [(":method", method), (":scheme", "https"),
                (":authority", f"localhost:{self.port}"), (":path", path), *(extra or [])]

    def request(self, stream_id: int, path: str, method: str = "GET",
                extra: list[tuple[str, str]] | None = None, end: bool = True) -> None:
        self.conn.send_headers(stream_id, self.headers(path, method, extra), end_stream=end)
        self.flush()

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            assert not self.eof, f"connection closed while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            data = self.tls.recv(65536)
            if not data:
                self.eof = True
                continue
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):  # give the window back
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            self.flush()
        return condition()

    def status(self, stream_id: int) -> bytes | None:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id:
                return dict(e.headers)[b":status"]
        return None

    def reset_code(self, stream_id: int) -> int | None:
        for e in self.events:
            if isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id:
                return e.error_code
        return None

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
                   and e.stream_id == stream_id for e in self.events)

    def terminated(self) -> bool:
        return any(isinstance(e, h2.events.ConnectionTerminated) for e in self.events)


@contextlib.contextmanager
def client(gateway, pki):
    with h2_socket(gateway, pki) as tls:
        yield Client(tls, gateway.port)


def read_frames(tls: Any, until: Callable[[list[tuple[int, int, int, bytes]]], bool]
                ) -> tuple[list[tuple[int, int, int, bytes]], bool]:
    """Raw frames (type, flags, stream, payload) until *until* holds or the peer closes;
    returns them and whether the socket reached EOF."""
    data, frames = b"", []
    deadline = time.monotonic() + DEADLINE
    while not until(frames):
        assert time.monotonic() < deadline, f"timed out; frames so far: {frames}"
        try:
            chunk = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return frames, True
        if not chunk:
            return frames, True
        data += chunk
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            length = int.from_bytes(data[:3], "big")
            frames.append((data[3], data[4], int.from_bytes(data[5:9], "big"),
                           data[9:9 + length]))
            data = data[9 + length:]
    return frames, False


def wait_closed(tls: Any) -> float:
    """Read until EOF; return when it came (time.monotonic())."""
    read_frames(tls, lambda frames: False)
    return time.monotonic()


def test_repeated_identical_content_length_resets_the_stream_and_nothing_goes_upstream(
        gateway, pki, upstream):
    upstream.clear()
    with client(gateway, pki) as c:
        c.request(1, "/twice", "POST", [("content-length", "5"), ("content-length", "5")],
                  end=False)
        c.conn.send_data(1, b"hello", end_stream=True)
        c.request(3, "/after-twice")
        c.until(lambda: c.ended(1) and c.ended(3), "both streams")
        assert c.reset_code(1) == ErrorCodes.PROTOCOL_ERROR
        assert c.status(3) == b"200"
    assert [r["path"] for r in upstream.requests] == ["/after-twice"]


def test_connection_specific_fields_reset_their_stream_alone_and_nothing_goes_upstream(
        gateway, pki, upstream):
    # RFC 9113 §8.2.2 / §8.1.1: malformed, a stream error; the connection serves on
    upstream.clear()
    with client(gateway, pki) as c:
        c.request(1, "/te-gzip", extra=[("te", "gzip")])
        c.request(3, "/connection-close", extra=[("connection", "close")])
        c.request(5, "/after")
        c.until(lambda: all(c.ended(i) for i in (1, 3, 5)), "three streams")
        assert (c.reset_code(1), c.reset_code(3)) == (ErrorCodes.PROTOCOL_ERROR,) * 2
        assert c.status(5) == b"200" and not c.terminated()
    assert [r["path"] for r in upstream.requests] == ["/after"]


@pytest.mark.parametrize(("name", "value"), [
    ("te", "gzip"), ("connection", "close"), ("transfer-encoding", "chunked")])
def test_connection_specific_fields_in_trailers_reset_their_stream_alone(gateway, pki, upstream,
                                                                         name, value):
    # RFC 9113 §8.2.2: a message with such a field is malformed, its trailers included (§8.1.1)
    upstream.clear()
    with client(gateway, pki) as c:
        c.request(1, "/trailer-field", "POST", end=False)
        c.conn.send_data(1, b"hello")
        c.conn.send_headers(1, [(name, value)], end_stream=True)
        c.request(3, "/after-trailer")
        c.until(lambda: c.ended(1) and c.ended(3), "both streams")
        assert c.reset_code(1) == ErrorCodes.PROTOCOL_ERROR
        assert c.status(3) == b"200" and not c.terminated()
    assert [r["path"] for r in upstream.requests] == ["/after-trailer"]


def test_malformed_streams_count_toward_the_reset_bound_as_refused_ones_do(gateway, pki):
    # Each costs an RST_STREAM and a log line without carrying a request, and is not bounded by
    # SETTINGS_MAX_CONCURRENT_STREAMS: as a refused stream, it counts (CVE-2023-44487).
    with client(gateway, pki) as c:
        for index in range(h2frames.BOUNDS["reset"] + 1):
            c.conn.send_headers(1 + 2 * index, c.headers(f"/m{index}", extra=[("te", "gzip")]),
                                end_stream=True)
        c.flush()
        c.until(c.terminated, "GOAWAY")
        [goaway] = [e for e in c.events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_an_early_403_on_one_stream_leaves_the_neighbouring_200_intact(gateway, pki, upstream):
    upstream.clear()
    with client(gateway, pki) as c:
        c.request(1, "/closed/x", "POST", [("content-length", "100000")], end=False)
        c.request(3, "/open", "POST", [("content-length", "5")], end=False)
        c.conn.send_data(3, b"hello", end_stream=True)
        c.flush()
        c.until(lambda: c.ended(1) and c.ended(3), "both streams")
        assert (c.status(1), c.status(3)) == (b"403", b"200")
    assert [(r["path"], r["body_length"]) for r in upstream.requests] == [("/open", 5)]


def test_data_after_an_early_response_does_not_drop_the_connection(gateway, pki, upstream):
    with client(gateway, pki) as c:
        c.request(1, "/closed/y", "POST", [("content-length", "100000")], end=False)
        c.until(lambda: c.ended(1), "the 403")
        assert c.status(1) == b"403"
        # The body the client still had in flight for stream 1, bypassing h2's client checks.
        c.tls.sendall(hf.DataFrame(1, data=b"x" * 16000).serialize() * 3)
        c.request(3, "/after-early")
        c.until(lambda: c.ended(3), "the next stream")
        assert c.status(3) == b"200"
        assert not c.terminated()


def test_the_101st_stream_is_refused_alone(gateway, pki, upstream):
    upstream.clear()
    with client(gateway, pki) as c:
        c.conn.remote_settings = type(c.conn.remote_settings)(client=False)  # ignore the limit
        for index in range(100):
            c.request(1 + 2 * index, f"/s{index}", "POST", end=False)  # bodies still to come
        c.request(201, "/s100")
        c.until(lambda: c.ended(201), "stream 201")
        assert c.reset_code(201) == ErrorCodes.REFUSED_STREAM
        for index in range(100):
            c.conn.send_data(1 + 2 * index, b"", end_stream=True)
        c.flush()
        c.until(lambda: all(c.ended(1 + 2 * i) for i in range(100)), "the 100 streams")
        assert {c.status(1 + 2 * i) for i in range(100)} == {b"200"}
        assert not c.terminated()
    assert sorted(r["path"] for r in upstream.requests) == sorted(f"/s{i}" for i in range(100))


def test_odd_header_names_h2_allows_do_not_raise(gateway, pki, upstream):
    with client(gateway, pki) as c:
        c.request(1, "/odd", extra=[("x_y", "1"), ("x.y", "2")])
        c.until(lambda: c.ended(1), "the response")
        assert c.status(1) == b"200"
        c.request(3, "/odd-after")
        c.until(lambda: c.ended(3), "the next response")
        assert c.status(3) == b"200"


def test_priority_frames_for_2000_idle_streams_do_not_raise_and_the_connection_serves(
        gateway, pki, upstream):
    with client(gateway, pki) as c:
        c.tls.sendall(b"".join(hf.PriorityFrame(2 * i + 101, depends_on=0).serialize()
                               for i in range(2000)))
        c.request(1, "/after-priority")
        c.until(lambda: c.ended(1), "the response")
        assert c.status(1) == b"200"
        assert not c.terminated()


def test_sigterm_goaway_refuses_new_streams_and_closes_promptly_after_the_last_stream(
        start_gateway, pki, upstream):
    gateway = start_gateway({"tls": {"http2": "yes"}, "gateway": {"drain_timeout": "30"}})
    with client(gateway, pki) as c:
        c.request(1, "/draining", "POST", end=False)
        c.until(lambda: c.conn.remote_settings.max_concurrent_streams == 100, "SETTINGS")
        gateway.process.send_signal(signal.SIGTERM)
        frames, eof = read_frames(c.tls, lambda fs: any(f[0] == 7 for f in fs))
        assert not eof, "closed with a stream in flight"
        goaway = next(f for f in frames if f[0] == 7)
        assert int.from_bytes(goaway[3][:4], "big") == 1  # last stream id
        # A new stream after GOAWAY is refused; the one in flight is served.
        block = c.conn.encoder.encode(c.headers("/too-late"))
        c.tls.sendall(hf.HeadersFrame(3, data=block, flags={"END_HEADERS", "END_STREAM"})
                      .serialize() + hf.DataFrame(1, flags={"END_STREAM"}).serialize())
        frames, eof = read_frames(c.tls, lambda fs: any(
            f[0] == 0 and f[2] == 1 and f[1] & 1 for f in fs))
        ended = time.monotonic()
        assert (3, 0, 3, ErrorCodes.REFUSED_STREAM.to_bytes(4, "big")) in frames
        assert any(f[0] == 1 and f[2] == 1 for f in frames), "no response on stream 1"
        closed = wait_closed(c.tls)
    assert closed - ended < CLOSED_PROMPTLY
    assert gateway.process.wait(DEADLINE) == 0


def test_idle_goaway_closes_the_socket_promptly(start_gateway, pki):
    gateway = start_gateway({"tls": {"http2": "yes"}, "gateway": {"idle_timeout": "0.5"}})
    with client(gateway, pki) as c:
        frames, eof = read_frames(c.tls, lambda fs: any(f[0] == 7 for f in fs))
        sent_goaway = time.monotonic()
        eof_at = sent_goaway if eof else wait_closed(c.tls)
    assert any(f[0] == 7 for f in frames)
    assert eof_at - sent_goaway < CLOSED_PROMPTLY


def test_connection_survives_many_requests_with_odd_but_valid_headers(gateway, pki, upstream):
    upstream.clear()
    with client(gateway, pki) as c:
        ids = [1 + 2 * i for i in range(20)]
        for stream_id in ids:
            c.request(stream_id, f"/many/{stream_id}", extra=[("x_y", str(stream_id))])
        c.until(lambda: all(c.ended(i) for i in ids), "all streams")
        assert {c.status(i) for i in ids} == {b"200"}
    assert len(upstream.requests) == len(ids)  # exactly one upstream request each


def test_authority_with_an_equal_host_is_served_and_with_another_host_is_400(
        gateway, pki, upstream):
    upstream.clear()
    with client(gateway, pki) as c:
        c.request(1, "/same-host", extra=[("host", f"localhost:{gateway.port}")])
        c.request(3, "/other-host", extra=[("host", "elsewhere.example")])
        c.until(lambda: c.ended(1) and c.ended(3), "both streams")
        assert (c.status(1), c.status(3)) == (b"200", b"400")
    assert [r["path"] for r in upstream.requests] == ["/same-host"]
    assert "multiple-host-headers" in gateway.wait_log("multiple-host-headers")
