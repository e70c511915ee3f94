"""The proxy path: identity headers, header hygiene, streaming and upstream failures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from harness import (
    DEADLINE,
    client_context,
    curl,
    free_port,
    headers_of,
    https_request,
    pattern_bytes,
    pattern_sha256,
    wait_for,
)

from gateway.pki import name


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway({"headers": {"forward_certificate": "yes"}})


def _alice_get(gateway, pki, path="/", headers=None, **kwargs):
    alice = pki.alice()
    return https_request(gateway.port, client_context(pki.ca, alice.cert, alice.key),
                         path=path, headers=headers, **kwargs)


def _openssl(cert, *args):
    return subprocess.run(["openssl", "x509", "-noout", "-in", str(cert), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_allowed_certificate_reaches_upstream_with_exact_identity_headers(gateway, pki, upstream):
    status, _, _ = _alice_get(gateway, pki, "/identity?x=1")
    assert status == 200
    seen = upstream.last()
    assert seen["path"] == "/identity?x=1"
    alice = pki.alice()
    # Expected values computed by OpenSSL itself, as nginx would print them.
    subject = _openssl(alice.cert, "-subject", "-nameopt", "RFC2253").removeprefix("subject=")
    issuer = _openssl(alice.cert, "-issuer", "-nameopt", "RFC2253").removeprefix("issuer=")
    serial = _openssl(alice.cert, "-serial").removeprefix("serial=")
    fingerprint = _openssl(alice.cert, "-fingerprint", "-sha256").split("=", 1)[1]
    certificate = alice.issued.certificate
    expected = {
        "X-Client-Verify": "SUCCESS",
        "X-Client-Subject": subject,
        "X-Client-Issuer": issuer,
        "X-Client-CN": "alice",
        "X-Client-Serial": serial,
        "X-Client-Fingerprint-SHA256": fingerprint.replace(":", "").lower(),
        "X-Client-Not-Before": certificate.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "X-Client-Not-After": certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "X-Client-Cert": urllib.parse.quote(alice.cert.read_text(), safe=""),
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Host": f"localhost:{gateway.port}",
        "Host": f"localhost:{gateway.port}",
    }
    for header, value in expected.items():
        assert headers_of(seen, header) == [value], header
    assert subject == "CN=alice,C=DE,O=Example\\, Inc."
    for absent in ("X-Client-SAN-DNS", "X-Client-SAN-URI", "X-Client-SAN-Email", "X-Client-SAN-IP"):
        assert headers_of(seen, absent) == []


FORGED = [
    "X-Client-CN", "x-client-cn", "X-CLIENT-CN", "X_Client_CN", "x_client_cn", "X.Client.CN",
    "X-Client-Verify", "X-Client_Verify", "X-Client-Subject", "X-Client-Fingerprint-SHA256",
    "X-Client-Whatever", "X-Forwarded-For", "X_Forwarded_For", "X-Forwarded-Host",
    "X-Forwarded-Proto", "Forwarded",
]


def test_forged_identity_headers_in_every_spelling_are_stripped(gateway, pki, upstream):
    headers = [(h, "forged") for h in FORGED] + [("X-Client-CN", "forged-again")]
    status, _, _ = _alice_get(gateway, pki, "/forged", headers=headers)
    assert status == 200
    seen = upstream.last()
    assert not [v for _, v in seen["headers"] if "forged" in v], seen["headers"]
    assert headers_of(seen, "X-Client-CN") == ["alice"]
    assert headers_of(seen, "X-Forwarded-For") == ["127.0.0.1"]


def test_curl_forged_headers_with_underscores_are_stripped(gateway, pki, upstream):
    alice = pki.alice()
    result = curl("--cacert", str(pki.ca), "--cert", str(alice.cert), "--key", str(alice.key),
                  "-H", "X_Client_Verify: SUCCESS", "-H", "x-client-subject: CN=root",
                  f"{gateway.url}/curl-forged")
    assert result.returncode == 0, result.stderr
    seen = upstream.last()
    assert headers_of(seen, "X-Client-Verify") == ["SUCCESS"]
    assert [k for k, _ in seen["headers"] if k.lower() == "x_client_verify"] == []
    assert headers_of(seen, "X-Client-Subject") != ["CN=root"]


def test_hop_by_hop_headers_are_not_forwarded_and_repeated_headers_keep_all_values(
    gateway, pki, upstream
):
    headers = [("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"),
               ("Keep-Alive", "timeout=5"), ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
               ("TE", "trailers"), ("X-Multi", "one"), ("X-Multi", "two")]
    status, response_headers, _ = _alice_get(gateway, pki, "/hop", headers=headers)
    assert status == 200
    seen = upstream.last()
    names = {k.lower() for k, _ in seen["headers"]}
    assert not names & {"x-secret-hop", "keep-alive", "proxy-authorization", "te"}
    assert headers_of(seen, "X-Multi") == ["one", "two"]
    # Repeated response headers keep all their values too.
    assert [v for k, v in response_headers if k.lower() == "x-upstream"] == ["one", "two"]


def test_header_injection_through_a_certificate_field_is_refused(gateway, pki, upstream):
    evil = pki.leaf("evil-cn", name("alice\r\nX-Client-Verify: SUCCESS"))
    upstream.clear()
    with pytest.raises(Exception):  # noqa: B017 - refused at the TLS layer, any error
        https_request(gateway.port, client_context(pki.ca, evil.cert, evil.key), path="/evil")
    gateway.wait_log("control character in certificate subject")
    assert upstream.requests == []


def test_hostile_but_printable_certificate_values_are_escaped(start_gateway, pki, upstream):
    gateway = start_gateway({"authorizer:team": {"type": "any"}}, drop=("authorizer:team",))
    odd = pki.leaf("odd", x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "Zoë, \"the\" <admin>; 100%"),
    ]), sans=["dns:a.example", "uri:spiffe://td/ns/a,b", "email:zoe+x@example.com"])
    https_request(gateway.port, client_context(pki.ca, odd.cert, odd.key), path="/odd")
    seen = upstream.last()
    for _, value in seen["headers"]:
        assert all(0x20 <= ord(ch) < 0x7F for ch in value), value
    assert headers_of(seen, "X-Client-Subject") == [
        _openssl(odd.cert, "-subject", "-nameopt", "RFC2253").removeprefix("subject=")]
    assert urllib.parse.unquote(headers_of(seen, "X-Client-CN")[0]) == "Zoë, \"the\" <admin>; 100%"
    assert headers_of(seen, "X-Client-SAN-URI") == ["spiffe://td/ns/a%2Cb"]


def test_streaming_upload_and_download_keep_their_checksums(gateway, pki, upstream):
    size = 48 * 1024 * 1024 + 123
    status, _, _ = _alice_get(gateway, pki, "/upload", method="PUT",
                              body=pattern_bytes(size))  # chunked from the client
    assert status == 200
    seen = upstream.last()
    assert seen["body_length"] == size
    assert seen["body_sha256"] == pattern_sha256(size)
    status, headers, body = _alice_get(gateway, pki, f"/download/{size}")
    assert status == 200
    assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(size)
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)


def test_upload_with_content_length_is_forwarded_with_the_same_length(gateway, pki, upstream):
    body = b"x" * 300_000
    status, _, _ = _alice_get(gateway, pki, "/upload-cl", method="POST", body=body)
    assert status == 200
    seen = upstream.last()
    assert headers_of(seen, "Content-Length") == [str(len(body))]
    assert headers_of(seen, "Transfer-Encoding") == []
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_upstream_dying_mid_body_aborts_the_client_connection(gateway, pki):
    alice = pki.alice()
    result = curl("--cacert", str(pki.ca), "--cert", str(alice.cert), "--key", str(alice.key),
                  "-o", "/dev/null", f"{gateway.url}/die/200000")
    # curl 18: "transfer closed with N bytes remaining", never a clean exit.
    assert result.returncode in (18, 56, 92), (result.returncode, result.stderr)
    gateway.wait_log("upstream broke mid-response")


@contextlib.contextmanager
def _held(gateway, pki, upstream) -> Iterator[None]:
    """A request to the upstream's ``/hold`` in flight (it has arrived) for the ``with`` body,
    its client connection closed after it."""
    upstream.clear()
    alice = pki.alice()
    context = client_context(pki.ca, alice.cert, alice.key)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        upstream.last()  # the upstream has the request, and holds it
        yield


def _gateway_hung_up(upstream) -> bool:
    ended = wait_for(lambda: [r for r in upstream.requests if "hold_ended_by_peer" in r],
                     "the upstream to see the gateway hang up")
    return bool(ended == [{"hold_ended_by_peer": True}])


def test_client_going_away_cancels_the_upstream_request(gateway, pki, upstream):
    with _held(gateway, pki, upstream):
        pass
    # The client is gone: the gateway must hang up on the upstream too.
    assert _gateway_hung_up(upstream)


def test_a_request_still_in_flight_at_drain_timeout_is_aborted_and_logged_as_such(
        start_gateway, pki, upstream):
    gateway = start_gateway({"gateway": {"drain_timeout": "1"}})
    with _held(gateway, pki, upstream):
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(DEADLINE) == 0
    log = gateway.log()
    assert "drain timeout: aborting connection with a request in flight" in log
    line = next(ln for ln in log.splitlines() if 'path="/hold"' in ln)
    # The gateway ended it, not the client: never "client-gone"
    assert " upstream_status=drain-timeout " in line and "client-gone" not in line, line
    assert _gateway_hung_up(upstream)


def test_dead_upstream_gives_502(start_gateway, pki):
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = start_gateway({"gateway": {"upstream": dead}})
    status, _, body = _alice_get(gateway, pki, "/dead")
    assert status == 502
    assert b"upstream-unreachable" in body


def test_denied_request_gets_403_with_reason_and_never_reaches_upstream(gateway, pki, upstream):
    upstream.clear()
    bob = pki.bob()
    status, _, body = https_request(gateway.port, client_context(pki.ca, bob.cert, bob.key),
                                    method="POST", path="/denied", body=b"secret" * 1000)
    assert status == 403
    assert body == b"403 Forbidden: cn-not-allowed\n"
    assert upstream.requests == []
    log = gateway.wait_log("reason=cn-not-allowed")
    assert "decision=deny" in log


def test_access_log_line_names_client_subject_decision_and_status(gateway, pki):
    _alice_get(gateway, pki, "/logged")
    line = [ln for ln in gateway.wait_log('path="/logged"').splitlines() if "/logged" in ln][-1]
    for part in ("peer=127.0.0.1", 'subject="CN=alice,C=DE,O=Example\\, Inc."', "decision=allow",
                 "reason=cn-allowed", "status=200", "upstream_status=200", "duration_ms="):
        assert part in line


def test_json_echo_from_upstream_is_relayed_unchanged(gateway, pki):
    status, headers, body = _alice_get(gateway, pki, "/json")
    assert status == 200
    assert json.loads(body)["path"] == "/json"
    assert ("Content-Type", "application/json") in headers


def test_upstream_reached_over_plain_http_keeps_connections_alive(gateway, pki, upstream):
    # The pool reuses upstream connections: two requests, one upstream TCP connection is fine,
    # but at least the second must not fail.
    for _ in range(2):
        assert _alice_get(gateway, pki, "/again")[0] == 200



def test_access_log_problems_only_skips_requests_that_went_well(start_gateway, pki):
    gateway = start_gateway({"gateway": {"access_log": "problems"}})
    assert _alice_get(gateway, pki, "/quiet")[0] == 200
    bob = pki.bob()
    https_request(gateway.port, client_context(pki.ca, bob.cert, bob.key), path="/loud")
    log = gateway.wait_log('path="/loud"')
    assert 'path="/quiet"' not in log
    assert "reason=cn-not-allowed" in log
