"""Who gets through the TLS handshake: the verify callback and OpenSSL's verification."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess

import pytest
from harness import Refused, client_context, curl, https_request


@pytest.fixture(scope="module")
def gateway(start_gateway, upstream):
    return start_gateway({"authorizer:team": {"type": "any"}}, drop=("authorizer:team",))


def _get(gateway, pki, files):
    context = client_context(pki.ca, files.cert, files.key) if files else client_context(pki.ca)
    return https_request(gateway.port, context, path="/handshake")


def test_trusted_client_certificate_is_accepted(gateway, pki):
    status, _, _ = _get(gateway, pki, pki.alice())
    assert status == 200


@pytest.mark.parametrize(
    ("label", "make", "verify_error"),
    [
        ("untrusted CA", lambda p: p.untrusted(), "unable to get local issuer certificate"),
        ("expired", lambda p: p.expired(), "certificate has expired"),
        ("not yet valid", lambda p: p.not_yet_valid(), "certificate is not yet valid"),
        ("EKU serverAuth only", lambda p: p.server_eku_only(), "unsuitable certificate purpose"),
        ("leaf only, intermediate missing", lambda p: p.via_intermediate(send_chain=False),
         "unable to get local issuer certificate"),
    ],
)
def test_failing_certificate_ends_the_handshake_and_is_logged(
    gateway, pki, upstream, label, make, verify_error
):
    upstream.clear()
    files = make(pki)
    with pytest.raises(Refused):
        _get(gateway, pki, files)
    log = gateway.wait_log(f"verify_error={verify_error}")
    line = [ln for ln in log.splitlines() if f"verify_error={verify_error}" in ln][-1]
    assert "tls handshake failed" in line
    assert "depth=0" in line
    assert not [r for r in upstream.requests if r.get("path") == "/handshake"]


def test_no_certificate_ends_the_handshake_with_require(gateway, pki, upstream):
    upstream.clear()
    with pytest.raises(Refused):
        _get(gateway, pki, None)
    result = curl("--cacert", str(pki.ca), f"{gateway.url}/handshake")
    assert result.returncode != 0, result.stdout
    assert "certificate required" in result.stderr or "alert" in result.stderr
    assert upstream.requests == []


def test_intermediate_sent_by_client_with_root_in_bundle_is_accepted(gateway, pki):
    status, _, _ = _get(gateway, pki, pki.via_intermediate(send_chain=True))
    assert status == 200


def test_curl_with_client_certificate_passes(gateway, pki):
    alice = pki.alice()
    result = curl("--cacert", str(pki.ca), "--cert", str(alice.cert), "--key", str(alice.key),
                  "-o", "/dev/null", "-w", "%{http_code}", f"{gateway.url}/curl")
    assert result.stdout == "200", result.stderr


def test_session_resumption_is_off(gateway, pki):
    # A resumed session would skip verification; every connection must do a full handshake.
    alice = pki.alice()
    context = client_context(pki.ca, alice.cert, alice.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    session = None
    for attempt in range(2):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(64).startswith(b"HTTP/1.1 200")
            assert not tls.session_reused, f"attempt {attempt} resumed a session"
            session = tls.session


def test_renegotiation_is_refused(gateway, pki):
    alice = pki.alice()
    # "R" on its own line asks s_client to renegotiate (TLS 1.2).
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.port}", "-servername",
         "localhost", "-CAfile", str(pki.ca), "-cert", str(alice.cert), "-key", str(alice.key),
         "-tls1_2"],
        input=b"R\n", capture_output=True, timeout=20, check=False)
    assert b"RENEGOTIATING" in result.stderr + result.stdout
    assert b"no renegotiation" in (result.stderr + result.stdout).lower() or \
        result.returncode != 0


def test_a_client_that_never_finishes_the_handshake_is_dropped(start_gateway):
    gateway = start_gateway({"tls": {"handshake_timeout": "0.5"}})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then silence
        # Aborted by the gateway (reset or close), well before our 10 s timeout.
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(1024) == b""
    gateway.wait_log("tls handshake timed out")
