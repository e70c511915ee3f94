"""Timeouts toward the upstream and the client, and responses framed by connection close."""

from __future__ import annotations

import hashlib
import socket
import time

from harness import (
    DEADLINE,
    client_context,
    https_request,
    pattern_sha256,
)


def _alice(gateway, pki, path):
    alice = pki.alice()
    return https_request(gateway.port, client_context(pki.ca, alice.cert, alice.key), path=path)


def test_upstream_response_head_timeout_is_504(start_gateway, pki):
    gateway = start_gateway({"gateway": {"upstream_response_timeout": "0.5"}})
    started = time.monotonic()
    status, _, body = _alice(gateway, pki, "/slow/5")
    assert (status, body) == (504, b"504 Gateway Timeout: upstream-timeout\n")
    assert time.monotonic() - started < 4


def test_upstream_connect_timeout_is_502(start_gateway, pki):
    # A listening socket whose accept queue is full: the upstream's SYNs go unanswered.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            gateway = start_gateway({"gateway": {"upstream": f"http://127.0.0.1:{port}",
                                                 "upstream_connect_timeout": "0.5"}})
            started = time.monotonic()
            status, _, body = _alice(gateway, pki, "/connect")
            assert (status, body) == (502, b"502 Bad Gateway: upstream-unreachable\n")
            assert time.monotonic() - started < 4
        finally:
            for filler in fillers:
                filler.close()


def test_response_without_length_is_streamed_chunked_and_complete(start_gateway, pki):
    gateway = start_gateway()
    alice = pki.alice()
    context = client_context(pki.ca, alice.cert, alice.key)
    size = 3 * 1024 * 1024 + 5
    status, headers, body = https_request(gateway.port, context, path=f"/nolength/{size}")
    assert status == 200
    names = {k.lower(): v for k, v in headers}
    assert names.get("transfer-encoding") == "chunked"
    assert "content-length" not in names
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)


def test_idle_keep_alive_connection_is_closed(start_gateway, pki):
    gateway = start_gateway({"gateway": {"idle_timeout": "0.5"}})
    alice = pki.alice()
    context = client_context(pki.ca, alice.cert, alice.key)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while tls.recv(65536):  # drain, then the gateway closes the idle connection
            pass
        assert time.monotonic() - started < 5


