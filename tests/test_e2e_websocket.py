"""WebSocket upgrades end to end: the real gateway between a raw TLS client and a real RFC 6455
echo server, which records the upgrade requests it receives and how their connections ended."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import (
    DEADLINE,
    client_context,
    free_port,
    headers_of,
    parse_responses,
    read_until_closed,
    tls_connect,
    wait_for,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def xor_mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, bit | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + xor_mask(payload, key)


class Reader:
    """Exact-length reads from a socket, with what was already read kept."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buffer = buffered

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError(f"closed with {len(self.buffer)} of {n} bytes")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frame(self) -> tuple[int, bytes, bool]:
        """(opcode, payload unmasked, was masked)."""
        b0, b1 = self.exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.exact(8))[0]
        key = self.exact(4) if b1 & 0x80 else None
        payload = self.exact(n)
        return b0 & 0x0F, xor_mask(payload, key) if key else payload, key is not None


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of an HTTP head; return (head, bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed before the end of the head: {data!r}")
        data += chunk
        assert len(data) < 1 << 20
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


class EchoServer:
    """A threaded WebSocket server on loopback (optionally TLS).

    A request without ``Upgrade`` gets a plain 200 (body ``plain``) and the connection closes.
    Paths: ``/reject…`` answers 400 with a Content-Length body and keeps the connection open;
    ``/stall…`` answers 200 with a body that stops after 7 bytes, and waits;
    ``/chunked-reject…`` answers 426 with a chunked body and keeps it open; ``/greet…`` sends a
    text frame in the same write as its 101; anything else upgrades. Upgraded connections echo
    every data frame back unmasked, answer pings, and answer a close frame with one and close.
    ``events`` records ``(path, what)``: ``upgrade`` (with the request in ``requests``),
    ``peer-closed`` (EOF from the gateway), ``close-frame``, ``unmasked-frame``.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._tls = tls
        self.requests: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _record(self, path: str, what: str) -> None:
        with self._lock:
            self.events.append((path, what))

    def seen(self, path: str) -> list[str]:
        with self._lock:
            return [what for p, what in self.events if p == path]

    def request(self, path: str) -> dict[str, Any]:
        return wait_for(lambda: next((r for r in self.requests if r["path"] == path), None),
                        f"the upstream to receive {path}")

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(DEADLINE)
        path = "?"
        try:
            sock: Any = self._tls.wrap_socket(conn, server_side=True) if self._tls else conn
            head, rest = read_head(sock)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
            with self._lock:
                self.requests.append({"request_line": lines[0], "path": path,
                                      "headers": [list(h) for h in headers]})
            self._record(path, "upgrade")
            if path.startswith("/reject"):
                body = b"no websocket here\n"
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                self._wait_for_peer(sock, path)
                return
            if path.startswith("/stall"):  # a refusal whose body stops half way
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
                self._wait_for_peer(sock, path)
                return
            if path.startswith("/chunked-reject"):
                sock.sendall(b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\n5\r\nhello\r\n7\r\n world\n\r\n0\r\n\r\n")
                self._wait_for_peer(sock, path)
                return
            fields = {k.lower(): v for k, v in headers}
            if "upgrade" not in fields:  # not an upgrade: a plain answer
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n"
                             b"\r\nplain\n")
                return
            key = fields["sec-websocket-key"].encode()
            response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                        % accept_for(key))
            if path.startswith("/greet"):
                response += frame(TEXT, b"hello from upstream", mask=False)
            sock.sendall(response)
            self._echo(sock, Reader(sock, rest), path)
        except (OSError, EOFError, ValueError, KeyError) as exc:
            self._record(path, f"error {exc!r}")
        finally:
            conn.close()

    def _wait_for_peer(self, sock: Any, path: str) -> None:
        try:
            if sock.recv(1) == b"":
                self._record(path, "peer-closed")
        except (ConnectionResetError, ssl.SSLError):
            self._record(path, "peer-closed")

    def _echo(self, sock: Any, reader: Reader, path: str) -> None:
        while True:
            try:
                opcode, payload, masked = reader.frame()
            except (EOFError, ConnectionResetError, ssl.SSLError):
                self._record(path, "peer-closed")
                return
            if not masked:
                self._record(path, "unmasked-frame")
            if opcode == CLOSE:
                self._record(path, "close-frame")
                sock.sendall(frame(CLOSE, payload, mask=False))
                return  # closes the connection
            if opcode == PING:
                sock.sendall(frame(PONG, payload, mask=False))
            elif opcode in (TEXT, BINARY):
                sock.sendall(frame(opcode, payload, mask=False))

    def close(self) -> None:
        self._listener.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


KEY = base64.b64encode(b"0123456789abcdef")


def upgrade_request(path: str, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Connection: Upgrade",
             "Upgrade: websocket", f"Sec-WebSocket-Key: {KEY.decode()}",
             "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def open_websocket(gateway: Any, files: Any, pki: Any, path: str,
                   extra: Sequence[tuple[str, str]] = (), early: bytes = b"",
                   ) -> tuple[ssl.SSLSocket, bytes, Reader]:
    """Connect, send the upgrade (plus *early* bytes in the same write); return the socket,
    the response head and a reader holding whatever followed the head."""
    tls = tls_connect(gateway.port, client_context(pki.ca, files.cert, files.key),
                      timeout=DEADLINE)
    tls.sendall(upgrade_request(path, extra) + early)
    head, rest = read_head(tls)
    return tls, head, Reader(tls, rest)


@pytest.fixture(scope="module")
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(start_gateway, echo):
    return start_gateway({"gateway": {"upstream": echo.url}})


def test_upgrade_is_relayed_both_ways_with_identity_headers(gateway, echo, pki):
    early = frame(TEXT, b"sent with the upgrade request", mask=True)
    tls, head, reader = open_websocket(gateway, pki.alice(), pki, "/chat?room=1", extra=[
        ("X-Client-CN", "mallory"), ("X-Client-Verify", "NONE"), ("X_Client_CN", "mallory"),
        ("x.client.subject", "CN=mallory"), ("X-Forwarded-For", "10.6.6.6"),
        ("Sec-WebSocket-Protocol", "chat"), ("Origin", "https://localhost"),
    ], early=early)
    with tls:
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 101 ")
        assert f"Sec-WebSocket-Accept: {accept_for(KEY).decode()}" in header_lines
        # The frame pipelined behind the request head reached the upstream and came back.
        assert reader.frame() == (TEXT, b"sent with the upgrade request", False)
        for opcode, payload in [(TEXT, b"hello"), (TEXT, b""), (BINARY, bytes(range(256)) * 2),
                                (TEXT, "π ≈ 3.14159".encode()), (PING, b"are you there")]:
            tls.sendall(frame(opcode, payload, mask=True))
            assert reader.frame() == ((PONG if opcode == PING else opcode), payload, False)
        big = os.urandom(200 * 1024)
        tls.sendall(frame(BINARY, big, mask=True))
        assert reader.frame() == (BINARY, big, False)
        # Closing handshake: the upstream answers and closes; the gateway closes the client.
        tls.sendall(frame(CLOSE, struct.pack("!H", 1000), mask=True))
        assert reader.frame() == (CLOSE, struct.pack("!H", 1000), False)
        rest, closed = read_until_closed(tls, DEADLINE)
        assert (reader.buffer + rest, closed) == (b"", True)

    seen = echo.request("/chat?room=1")
    assert seen["request_line"] == "GET /chat?room=1 HTTP/1.1"
    assert headers_of(seen, "X-Client-CN") == ["alice"]
    assert headers_of(seen, "X-Client-Verify") == ["SUCCESS"]
    assert headers_of(seen, "X_Client_CN") == []
    assert headers_of(seen, "x.client.subject") == []
    [subject] = headers_of(seen, "X-Client-Subject")
    assert "CN=alice" in subject
    assert headers_of(seen, "X-Forwarded-For") == ["127.0.0.1"]
    assert not [v for _, v in seen["headers"] if "mallory" in v or "10.6.6.6" in v]
    assert headers_of(seen, "Connection") == ["Upgrade"]
    assert headers_of(seen, "Upgrade") == ["websocket"]
    assert headers_of(seen, "Sec-WebSocket-Key") == [KEY.decode()]
    assert headers_of(seen, "Sec-WebSocket-Version") == ["13"]
    assert headers_of(seen, "Sec-WebSocket-Protocol") == ["chat"]
    assert headers_of(seen, "Origin") == ["https://localhost"]
    assert headers_of(seen, "Host") == ["localhost"]
    assert "unmasked-frame" not in echo.seen("/chat?room=1")
    assert "close-frame" in echo.seen("/chat?room=1")
    log = gateway.wait_log("websocket closed")
    assert 'path="/chat?room=1"' in log
    assert "status=101 upstream_status=101" in log
    assert "closed_by=upstream" in log


def test_frames_the_upstream_sends_with_its_101_reach_the_client(gateway, pki):
    tls, head, reader = open_websocket(gateway, pki.alice(), pki, "/greet")
    with tls:
        assert head.startswith(b"HTTP/1.1 101 ")
        assert reader.frame() == (TEXT, b"hello from upstream", False)
        tls.sendall(frame(TEXT, b"and back", mask=True))
        assert reader.frame() == (TEXT, b"and back", False)


def test_client_closing_closes_the_upstream_side(gateway, echo, pki):
    tls, head, reader = open_websocket(gateway, pki.alice(), pki, "/client-leaves")
    assert head.startswith(b"HTTP/1.1 101 ")
    tls.sendall(frame(TEXT, b"bye", mask=True))
    assert reader.frame() == (TEXT, b"bye", False)
    tls.close()  # no closing handshake: the TCP connection just goes away
    wait_for(lambda: "peer-closed" in echo.seen("/client-leaves"),
             "the upstream side to be closed")
    gateway.wait_log("closed_by=client")


def test_denied_client_gets_403_and_the_upstream_sees_no_upgrade(gateway, echo, pki):
    tls, head, reader = open_websocket(gateway, pki.bob(), pki, "/bob-tries")
    with tls:
        rest, _ = read_until_closed(tls, 2.0, until=lambda got: b"\n" in reader.buffer + got)
        responses, _ = parse_responses(head + reader.buffer + rest)
    assert responses[0].status == 403
    assert responses[0].body.startswith(b"403 Forbidden: ")
    assert echo.seen("/bob-tries") == []
    assert "decision=deny" in gateway.wait_log('path="/bob-tries"')


@pytest.mark.parametrize(("path", "status", "body"), [
    ("/reject", 400, b"no websocket here\n"),
    ("/chunked-reject", 426, b"hello world\n"),
])
def test_upstream_refusing_the_upgrade_is_passed_on_then_closed(gateway, echo, pki, path,
                                                                status, body):
    tls, head, reader = open_websocket(gateway, pki.alice(), pki, path)
    with tls:
        # The upstream keeps its connection open: the gateway ends the response by its framing.
        rest, closed = read_until_closed(tls, DEADLINE)
    assert closed
    responses, junk = parse_responses(head + reader.buffer + rest)
    assert [(r.status, r.body) for r in responses] == [(status, body)]
    assert junk == b""
    wait_for(lambda: "peer-closed" in echo.seen(path), "the upstream connection to be closed")
    log = gateway.wait_log(f'path="{path}"')
    assert f"status={status} upstream_status={status}" in log


def test_a_refusal_whose_body_stalls_is_cut_after_upstream_read_timeout(start_gateway, echo,
                                                                         pki):
    # The client connection no longer speaks HTTP once taken over, so no other timeout ends it
    gateway = start_gateway({"gateway": {"upstream": echo.url, "upstream_read_timeout": "1"}})
    tls, head, reader = open_websocket(gateway, pki.alice(), pki, "/stall")
    with tls:
        rest, closed = read_until_closed(tls, DEADLINE)
    assert closed
    assert (head + reader.buffer + rest).startswith(b"HTTP/1.1 200 ")
    assert (head + reader.buffer + rest).endswith(b"partial")  # cut: nothing passes for an end
    wait_for(lambda: "peer-closed" in echo.seen("/stall"), "the upstream connection to close")
    gateway.wait_log("upstream response to an upgrade stalled peer=127.0.0.1")


def test_request_without_upgrade_token_is_proxied_as_plain_http(gateway, echo, pki):
    # Upgrade alone (no Connection: upgrade) is not an upgrade: the normal path takes it, and
    # the echo server, which only speaks WebSocket, sees it without Upgrade/Connection.
    tls = tls_connect(gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key))
    with tls:
        tls.sendall(b"GET /not-an-upgrade HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                    b"Sec-WebSocket-Key: " + KEY + b"\r\nConnection: close\r\n\r\n")
        received, _ = read_until_closed(tls, DEADLINE)
    responses, _ = parse_responses(received)
    assert [(r.status, r.body) for r in responses] == [(200, b"plain\n")]
    seen = echo.request("/not-an-upgrade")
    assert headers_of(seen, "Upgrade") == []
    assert headers_of(seen, "Connection") in ([], ["close"])


def test_unreachable_upstream_is_502(start_gateway, pki):
    gateway = start_gateway({"gateway": {"upstream": f"http://127.0.0.1:{free_port()}"}})
    tls, head, reader = open_websocket(gateway, pki.alice(), pki, "/nobody-home")
    with tls:
        rest, _ = read_until_closed(tls, 2.0, until=lambda got: b"\n" in reader.buffer + got)
    responses, _ = parse_responses(head + reader.buffer + rest)
    assert (responses[0].status, responses[0].body) == (
        502, b"502 Bad Gateway: upstream-unreachable\n")
    log = gateway.wait_log("upstream request failed")
    assert "upstream_status=upstream-unreachable" in log


def test_tls_upstream_is_verified_and_relayed(start_gateway, pki):
    files = pki.leaf("ws-upstream-tls", "upstream.internal", sans=["dns:upstream.internal"],
                     eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.cert), str(files.key))
    secure = EchoServer(tls=context)
    try:
        gateway = start_gateway({"gateway": {
            "upstream": secure.url, "upstream_ca": str(pki.ca),
            "upstream_server_name": "upstream.internal"}})
        tls, head, reader = open_websocket(gateway, pki.alice(), pki, "/secure")
        with tls:
            assert head.startswith(b"HTTP/1.1 101 ")
            big = os.urandom(100_000)
            tls.sendall(frame(BINARY, big, mask=True))
            assert reader.frame() == (BINARY, big, False)
        assert headers_of(secure.request("/secure"), "X-Client-CN") == ["alice"]
        wait_for(lambda: "peer-closed" in secure.seen("/secure"),
                 "the upstream side to be closed")

        wrong_name = start_gateway({"gateway": {
            "upstream": secure.url, "upstream_ca": str(pki.ca),
            "upstream_server_name": "wrong.internal"}})
        tls, head, _ = open_websocket(wrong_name, pki.alice(), pki, "/wrong-name")
        with tls:
            assert head.startswith(b"HTTP/1.1 502 ")
        assert secure.seen("/wrong-name") == []
    finally:
        secure.close()
