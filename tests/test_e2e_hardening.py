"""Promises found by an adversarial trial of the request engine, through the real process:
closed connections never hold a slot, HTTP/2 bodies that stop are reset, control characters
never cross, upgrades the gateway does not make keep their bodies, refusals stay in order."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from h2.errors import ErrorCodes
from harness import (
    DEADLINE,
    client_context,
    parse_responses,
    raw_exchange,
    read_until_closed,
    tls_connect,
    wait_for,
)
from test_e2e_http2_engine import client

READ = 3.0


@pytest.fixture(scope="module")
def alice(pki) -> ssl.SSLContext:
    files = pki.alice()
    return client_context(pki.ca, files.cert, files.key)


def _served(port: int, context: ssl.SSLContext, path: str) -> bool:
    try:
        data = raw_exchange(port, context, b"GET %s HTTP/1.1\r\nHost: localhost\r\n"
                            b"Connection: close\r\n\r\n" % path.encode(), READ)
    except (OSError, ssl.SSLError):
        return False
    responses, _ = parse_responses(data)
    return bool(responses) and responses[0].status == 200


def test_a_connection_the_gateway_closed_never_holds_a_slot_when_the_client_stays(
        start_gateway, alice):
    gateway = start_gateway({"gateway": {"max_connections": "3", "idle_timeout": "0.5"}})
    held = []
    try:
        for index in range(3):  # clients that get their answer, then never close nor read
            tls = tls_connect(gateway.port, alice)
            tls.sendall(b"GET /held/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % index)
            read_until_closed(tls, READ, until=lambda d: bool(parse_responses(d)[0]))
            held.append(tls)
        # idle_timeout closes them (close_notify); the slots come back after the grace period
        # even though the clients never answer the close.
        wait_for(lambda: _served(gateway.port, alice, "/after-held"),
                 "a new connection to be served while the held ones stay open", timeout=15)
    finally:
        for tls in held:
            tls.close()


@pytest.fixture(scope="module")
def h2_gateway(start_gateway):
    return start_gateway({"tls": {"http2": "yes"}, "gateway": {"idle_timeout": "1"}})


def test_an_http2_stream_whose_body_stops_is_reset_after_idle_timeout(h2_gateway, pki):
    with client(h2_gateway, pki) as c:
        c.request(1, "/stopped-body", method="POST", extra=[("content-length", "10")],
                  end=False)
        c.conn.send_data(1, b"01234")
        c.flush()
        c.until(lambda: c.ended(1), "the stalled stream to be reset")
        assert c.reset_code(1) == ErrorCodes.CANCEL
        c.request(3, "/after-stall")  # the connection itself goes on
        c.until(lambda: c.status(3), "the next stream's response")
        assert c.status(3) == b"200"
    assert "no request body bytes within idle_timeout" in h2_gateway.log()


@pytest.mark.parametrize("value", ["a\x01b", "a\x7f", "\x1b[31mred"])
def test_control_characters_in_http2_header_values_are_refused_and_never_forwarded(
        value, h2_gateway, pki, upstream):
    upstream.clear()
    with client(h2_gateway, pki) as c:
        c.request(1, "/ctl", extra=[("x-v", value)])
        c.until(lambda: c.status(1), "the refusal")
        assert c.status(1) == b"400"
        c.request(3, "/ctl-barrier")
        c.until(lambda: c.status(3), "the barrier")
    assert [r["path"] for r in upstream.requests] == ["/ctl-barrier"]


class _OddUpstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/unasked-101":
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                             b"Connection: upgrade\r\n\r\n")
            return
        if self.path == "/204-with-length":
            self.wfile.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
            return
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def odd_gateway(start_gateway) -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddUpstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield start_gateway({"tls": {"http2": "yes"}, "gateway": {
            "upstream": f"http://127.0.0.1:{server.server_address[1]}"}})
    finally:
        server.shutdown()
        server.server_close()


def test_a_204_never_carries_content_length_over_http2(odd_gateway, pki):
    with client(odd_gateway, pki) as c:
        c.request(1, "/204-with-length")
        c.until(lambda: c.ended(1), "the 204")
        heads = [dict(e.headers) for e in c.events if getattr(e, "stream_id", None) == 1
                 and hasattr(e, "headers")]
        assert heads[0][b":status"] == b"204"
        assert b"content-length" not in heads[0]
        assert c.reset_code(1) is None


def test_a_bad_request_pipelined_after_a_good_one_gets_its_own_400(start_gateway, alice):
    gateway = start_gateway()
    data, closed = b"", False
    with tls_connect(gateway.port, alice) as tls:
        tls.sendall(b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    b"GET /p2 HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n"
                    b"GET /p3 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data, closed = read_until_closed(tls, READ)
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [200, 400], data
    assert json.loads(responses[0].body)["path"] == "/p1"
    assert "close" not in {v.lower() for v in responses[0].header("Connection")}
    assert closed and rest == b""


def test_an_upgrade_the_gateway_does_not_make_keeps_the_body_and_the_connection(
        start_gateway, alice, upstream):
    gateway = start_gateway()
    upstream.clear()
    data = raw_exchange(gateway.port, alice,
                        b"POST /h2c-post HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, "
                        b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk"
                        b"\r\nContent-Length: 5\r\n\r\nhello"
                        b"GET /after-h2c HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                        READ)
    responses, _ = parse_responses(data)
    assert [r.status for r in responses] == [200, 200], data
    seen = wait_for(lambda: len(upstream.requests) >= 2 and upstream.requests, "both requests")
    assert [(r["path"], r["body_length"]) for r in seen] == [("/h2c-post", 5), ("/after-h2c", 0)]
    assert not any(name.lower() == "upgrade" for name, _ in seen[0]["headers"])


def test_a_closed_socket_after_refusal_frees_the_descriptor(start_gateway, alice):
    # A 400 closes; a client that keeps its socket open is dropped after the grace period.
    gateway = start_gateway({"gateway": {"max_connections": "2"}})
    held = []
    try:
        for _ in range(2):
            tls = tls_connect(gateway.port, alice)
            tls.sendall(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n")
            read_until_closed(tls, READ, until=lambda d: bool(parse_responses(d)[0]))
            held.append(tls)
        wait_for(lambda: _served(gateway.port, alice, "/after-refusals"),
                 "a new connection to be served", timeout=15)
    finally:
        for tls in held:
            tls.close()




def test_a_slow_client_still_reading_a_closed_response_is_not_cut_off(start_gateway, alice):
    # Connection: close after a large response: the gateway has handed the last bytes to the
    # kernel long before a slow client has read them; the close grace waits while it reads.
    gateway = start_gateway()
    size = 12 * 1024 * 1024
    received = 0
    with tls_connect(gateway.port, alice) as tls:
        tls.sendall(b"GET /download/%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    % size)
        tls.settimeout(DEADLINE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(65536)
        received = len(head.partition(b"\r\n\r\n")[2])
        while True:
            try:
                chunk = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.03)  # about 2 MB/s: several grace periods' worth of reading
    assert received == size


def test_an_upload_in_flight_at_sigterm_is_read_to_its_end_and_answered(start_gateway, alice,
                                                                        upstream):
    gateway = start_gateway({"gateway": {"drain_timeout": "20"}})
    upstream.clear()
    with tls_connect(gateway.port, alice) as tls:
        tls.sendall(b"PUT /upload-at-drain HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Length: 300000\r\n\r\n" + b"a" * 100000)
        gateway.process.send_signal(signal.SIGTERM)
        gateway.wait_log("draining 1 connection")
        tls.sendall(b"a" * 200000)  # the body goes on after the drain began
        data, closed = read_until_closed(tls, DEADLINE)
    responses, _ = parse_responses(data)
    assert [r.status for r in responses] == [200], data
    assert "close" in {v.lower() for v in responses[0].header("Connection")}
    assert json.loads(responses[0].body)["body_length"] == 300000
    assert closed
    assert gateway.process.wait(timeout=DEADLINE) == 0


@pytest.mark.parametrize("method", [b"POST", b"PUT"])
def test_a_body_arriving_before_the_upstream_connection_is_forwarded_intact(
        method, start_gateway, alice, upstream):
    # More than the 64 KiB the gateway holds while it connects to the upstream arrives with the
    # head: reading pauses until the connection is up, and not one byte is lost.
    gateway = start_gateway()
    upstream.clear()
    first, rest = b"b" * 200000, b"c" * 100000
    with tls_connect(gateway.port, alice) as tls:
        tls.sendall(method + b" /early-body HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Length: 300000\r\nConnection: close\r\n\r\n" + first)
        tls.sendall(rest)
        data, _ = read_until_closed(tls, DEADLINE)
    responses, _ = parse_responses(data)
    assert [r.status for r in responses] == [200], data
    seen = json.loads(responses[0].body)
    assert seen["body_length"] == 300000
    assert seen["body_sha256"] == hashlib.sha256(first + rest).hexdigest()


def test_a_client_that_stops_reading_a_response_is_dropped_after_idle_timeout(start_gateway,
                                                                              alice):
    # As nginx's send_timeout: a response the client takes no bytes of for idle_timeout ends
    # the connection (and its upstream request), so clients that never read hold no slot.
    gateway = start_gateway({"gateway": {"max_connections": "2", "idle_timeout": "1"}})
    held = []
    try:
        for index in range(2):
            tls = tls_connect(gateway.port, alice)
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            tls.sendall(b"GET /download/%d HTTP/1.1\r\nHost: localhost\r\n\r\n"
                        % (50_000_000 + index))
            held.append(tls)
        wait_for(lambda: _served(gateway.port, alice, "/after-stalled-readers"),
                 "a new connection to be served while the stalled readers stay open",
                 timeout=15)
        assert "the client took no response bytes within idle_timeout" in gateway.log()
    finally:
        for tls in held:
            tls.close()


def test_an_http2_stream_whose_window_stays_shut_is_reset_after_idle_timeout(h2_gateway, pki):
    with client(h2_gateway, pki) as c:
        c.request(1, "/download/5000000")
        # Read frames but never give the window back: the stream's response cannot progress.
        deadline = time.monotonic() + DEADLINE
        while not c.ended(1) and time.monotonic() < deadline:
            data = c.tls.recv(65536)
            if not data:
                break
            c.events.extend(c.conn.receive_data(data))
        assert c.reset_code(1) == ErrorCodes.CANCEL
    assert "the client took no response bytes within idle_timeout" in h2_gateway.log()


def test_an_http2_request_with_a_scheme_other_than_https_or_http_is_refused(h2_gateway, pki,
                                                                            upstream):
    upstream.clear()
    with client(h2_gateway, pki) as c:
        c.conn.send_headers(1, [(":method", "GET"), (":scheme", "javascript"),
                                (":authority", "localhost"), (":path", "/scheme")],
                            end_stream=True)
        c.flush()
        c.until(lambda: c.ended(1), "the refusal")
        assert c.reset_code(1) == ErrorCodes.PROTOCOL_ERROR
    assert not [r for r in upstream.requests if r.get("path") == "/scheme"]


def test_an_upstream_101_to_a_plain_request_is_a_502_without_a_traceback(odd_gateway, pki):
    with client(odd_gateway, pki) as c:
        c.request(1, "/unasked-101")
        c.until(lambda: c.status(1), "the 502")
        assert c.status(1) == b"502"
    assert "Unhandled Error" not in odd_gateway.log()
    assert "Traceback" not in odd_gateway.log()
