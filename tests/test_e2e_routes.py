"""Routes, HTTPS and mTLS upstreams, egress mode and graceful shutdown, end to end."""

from __future__ import annotations

import signal
import socket
import ssl

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import (
    DEADLINE,
    Upstream,
    client_context,
    headers_of,
    https_request,
)


def _get(gateway, pki, path, headers=None, files=None):
    files = files or pki.alice()
    return https_request(gateway.port, client_context(pki.ca, files.cert, files.key), path=path,
                         headers=headers)


@pytest.fixture(scope="module")
def second_upstream():
    server = Upstream()
    yield server
    server.close()


def _https_upstream(pki, label, require_client_cert=False):
    files = pki.leaf(label, "upstream.internal", sans=["dns:upstream.internal"],
                     eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.cert), str(files.key))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(pki.ca))
    return Upstream(tls=context)


def test_routes_pick_the_longest_prefix_and_can_strip_it(start_gateway, pki, upstream,
                                                          second_upstream):
    gateway = start_gateway({
        "route:api": {"prefix": "/api/", "upstream": second_upstream.url, "strip_prefix": "yes"},
        "route:api-v2": {"prefix": "/api/v2/", "upstream": upstream.url},
    })
    upstream.clear()
    second_upstream.clear()
    assert _get(gateway, pki, "/api/users?x=1")[0] == 200
    assert second_upstream.last()["path"] == "/users?x=1"
    assert _get(gateway, pki, "/api/v2/users")[0] == 200
    assert upstream.last()["path"] == "/api/v2/users"
    assert _get(gateway, pki, "/other")[0] == 200  # the default route ([gateway] upstream)
    assert upstream.last()["path"] == "/other"
    log = gateway.wait_log('path="/api/users?x=1"')
    assert "route=api " in log


def test_no_matching_route_is_404(start_gateway, pki, upstream):
    gateway = start_gateway({"route:only": {"prefix": "/only/", "upstream": upstream.url}},
                            drop=("gateway",))
    status, _, body = _get(gateway, pki, "/elsewhere")
    assert (status, body) == (404, b"404 Not Found: no-route\n")


def test_routes_can_select_on_host(start_gateway, pki, upstream, second_upstream):
    gateway = start_gateway({
        "route:other-host": {"host": "localhost", "prefix": "/", "upstream": second_upstream.url},
    })
    second_upstream.clear()
    assert _get(gateway, pki, "/by-host")[0] == 200
    assert second_upstream.last()["path"] == "/by-host"


def test_route_has_its_own_authorizers_and_header_prefix(start_gateway, pki, upstream,
                                                         second_upstream):
    gateway = start_gateway({
        "route:admin": {"prefix": "/admin/", "upstream": second_upstream.url,
                        "authorizers": "bobs", "header_prefix": "X-SSL-"},
        "authorizer:bobs": {"type": "cn", "allow": "bob"},
    })
    assert _get(gateway, pki, "/admin/x")[0] == 403  # alice: not on this route
    second_upstream.clear()
    assert _get(gateway, pki, "/admin/x", files=pki.bob())[0] == 200
    seen = second_upstream.last()
    assert headers_of(seen, "X-SSL-CN") == ["bob"]
    assert headers_of(seen, "X-Client-CN") == []


def test_https_upstream_verified_with_configured_ca_and_host_header(start_gateway, pki):
    secure = _https_upstream(pki, "upstream-tls")
    try:
        gateway = start_gateway({"gateway": {
            "upstream": secure.url, "upstream_ca": str(pki.ca),
            "upstream_server_name": "upstream.internal", "host_header": "upstream"}})
        assert _get(gateway, pki, "/tls-upstream")[0] == 200
        seen = secure.last()
        assert headers_of(seen, "Host") == [f"127.0.0.1:{secure.port}"]
        assert headers_of(seen, "X-Forwarded-Host") == [f"localhost:{gateway.port}"]
    finally:
        secure.close()


def test_https_upstream_with_a_bad_certificate_is_502(start_gateway, pki):
    secure = _https_upstream(pki, "upstream-tls-2")
    try:
        # Trusted CA, but the name checked does not match the certificate.
        gateway = start_gateway({"gateway": {
            "upstream": secure.url, "upstream_ca": str(pki.ca),
            "upstream_server_name": "wrong.internal"}})
        status, _, body = _get(gateway, pki, "/bad-upstream-cert")
        assert (status, body) == (502, b"502 Bad Gateway: upstream-error\n")
        assert secure.requests == []
        gateway.wait_log("upstream request failed")
    finally:
        secure.close()


def test_upstream_demanding_a_client_certificate_gets_the_gateways(start_gateway, pki):
    secure = _https_upstream(pki, "upstream-mtls", require_client_cert=True)
    gw_client = pki.leaf("gateway-client", "mtlsgw-gateway")
    try:
        with_cert = start_gateway({"gateway": {
            "upstream": secure.url, "upstream_ca": str(pki.ca),
            "upstream_server_name": "upstream.internal",
            "upstream_certificate": str(gw_client.cert),
            "upstream_private_key": str(gw_client.key)}})
        assert _get(with_cert, pki, "/mtls-upstream")[0] == 200
        assert secure.last()["client_certificate_subject"] == {"commonName": "mtlsgw-gateway"}
        without = start_gateway({"gateway": {
            "upstream": secure.url, "upstream_ca": str(pki.ca),
            "upstream_server_name": "upstream.internal"}})
        assert _get(without, pki, "/mtls-upstream")[0] == 502
    finally:
        secure.close()


def test_egress_listener_reaches_an_mtls_upstream_over_plain_local_http(start_gateway, pki):
    secure = _https_upstream(pki, "upstream-mtls-egress", require_client_cert=True)
    gw_client = pki.leaf("gateway-client", "mtlsgw-gateway")
    try:
        gateway = start_gateway({
            "gateway": {"tls": "off", "upstream": secure.url, "upstream_ca": str(pki.ca),
                        "upstream_server_name": "upstream.internal", "host_header": "upstream",
                        "upstream_certificate": str(gw_client.cert),
                        "upstream_private_key": str(gw_client.key)}},
            drop=("tls", "authorize", "authorizer:team"))
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE) as s:
            s.sendall(b"GET /egress HTTP/1.1\r\nHost: localhost\r\nX-Client-CN: forged\r\n"
                      b"Connection: close\r\n\r\n")
            response = b""
            while chunk := s.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        seen = secure.last()
        assert seen["client_certificate_subject"] == {"commonName": "mtlsgw-gateway"}
        assert headers_of(seen, "X-Client-CN") == []  # owned headers stripped, none added
        assert headers_of(seen, "X-Forwarded-Proto") == ["http"]
    finally:
        secure.close()


def test_egress_listener_must_be_loopback(tmp_path, pki, upstream):
    from harness import render_ini, run_twistd

    path = tmp_path / "gw.ini"
    path.write_text(render_ini({"gateway": {"listen": "tcp:0", "tls": "off",
                                            "upstream": upstream.url}}))
    process = run_twistd(path, None)
    _, err = process.communicate(timeout=DEADLINE)
    assert process.returncode != 0
    assert "[gateway] listen = 'tcp:0': a listener with tls = off must listen on loopback" in err


def test_sigterm_lets_the_request_in_flight_finish(start_gateway, pki, upstream):
    gateway = start_gateway({"gateway": {"drain_timeout": "10"}})
    alice = pki.alice()
    context = client_context(pki.ca, alice.cert, alice.key)
    # A slow reader: the response is in flight when SIGTERM arrives.
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"GET /download/20000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first = tls.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    gateway.process.send_signal(signal.SIGTERM)
    gateway.wait_log("draining 1 connection")
    received = len(first.split(b"\r\n\r\n", 1)[1])
    while chunk := tls.recv(1 << 20):
        received += len(chunk)
    tls.close()
    assert received == 20_000_000
    assert gateway.process.wait(DEADLINE) == 0
    # New connections are refused once draining began.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()
