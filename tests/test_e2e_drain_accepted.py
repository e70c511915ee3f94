"""SIGTERM and connections the gateway has accepted but that have not sent a request yet.

Behind a load balancer such a connection was handed on before the port closed, and the balancer
cannot retry it elsewhere: the gateway answers its first request (``Connection: close``) if it
comes within the grace period, whether SIGTERM came during the TLS handshake or just after it.
A connection that sends nothing is closed after the grace, not after ``drain_timeout``.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import ssl
import time

from harness import DEADLINE, client_context, parse_responses

REQUEST = b"GET /accepted HTTP/1.1\r\nHost: localhost\r\n\r\n"


class MemoryTLS:
    """A TLS client over a plain socket, driven step by step (to stop inside the handshake)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def start(self) -> None:
        """Send the ClientHello, and nothing more."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.flush()

    def wait_server_flight(self) -> None:
        """Wait until the gateway's answer to the ClientHello has arrived (it has accepted the
        connection and is inside the handshake), leaving it unread."""
        readable, _, _ = select.select([self.sock], [], [], DEADLINE)
        assert readable, "no ServerHello within the deadline"

    def finish(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.incoming.write(data)

    def request(self, data: bytes) -> bytes:
        """Send *data* (if any), read until the gateway closes (answering its close_notify);
        the plaintext received."""
        if data:
            self.tls.write(data)
            self.flush()
        received = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return received
            self.incoming.write(chunk)
            while True:
                try:
                    plain = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return self._answer_close(received)
                if not plain:  # close_notify
                    return self._answer_close(received)
                received += plain

    def _answer_close(self, received: bytes) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
            self.tls.unwrap()
        self.flush()
        return received

    def close(self) -> None:
        self.sock.close()


def stopping(start_gateway):  # type: ignore[no-untyped-def]
    return start_gateway({"gateway": {"drain_timeout": "30"}})


def test_sigterm_during_the_handshake_answers_the_first_request(start_gateway, pki) -> None:
    gateway = stopping(start_gateway)
    client = MemoryTLS(gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key))
    try:
        client.start()
        # accepted and in the handshake, not still in the listen queue, when SIGTERM comes
        client.wait_server_flight()
        gateway.process.send_signal(signal.SIGTERM)
        gateway.wait_log("draining 1 connection(s)")
        client.finish()
        responses, _rest = parse_responses(client.request(REQUEST))
    finally:
        client.close()
    assert [r.status for r in responses] == [200]
    assert responses[0].header("Connection") == ["close"]
    assert gateway.process.wait(DEADLINE) == 0


def test_sigterm_just_after_the_handshake_answers_the_first_request(start_gateway, pki) -> None:
    gateway = stopping(start_gateway)
    client = MemoryTLS(gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key))
    try:
        client.start()
        client.finish()
        gateway.process.send_signal(signal.SIGTERM)
        gateway.wait_log("draining 1 connection(s)")
        responses, _rest = parse_responses(client.request(REQUEST))
    finally:
        client.close()
    assert [r.status for r in responses] == [200]
    assert responses[0].header("Connection") == ["close"]
    assert gateway.process.wait(DEADLINE) == 0


def test_a_silent_new_connection_is_closed_after_the_grace(start_gateway, pki) -> None:
    gateway = stopping(start_gateway)
    client = MemoryTLS(gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key))
    try:
        client.start()
        client.finish()
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert client.request(b"") == b""  # closed by the gateway, nothing answered
        elapsed = time.monotonic() - started
        assert gateway.process.wait(DEADLINE) == 0
    finally:
        client.close()
    assert elapsed < 5, elapsed  # the 1 s grace (and a sweep), not the 30 s drain_timeout
