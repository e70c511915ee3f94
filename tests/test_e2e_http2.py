"""HTTP/2 from clients ([tls] http2 = yes): same identity, HTTP/1.1 to the upstream."""

from __future__ import annotations

import hashlib
import json

import pytest
from harness import curl, headers_of, pattern_sha256


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway({"tls": {"http2": "yes"}})


def _curl(pki, files, *args):
    return curl("--cacert", str(pki.ca), "--cert", str(files.cert), "--key", str(files.key),
                *args)


def test_http2_request_carries_the_same_identity_headers_as_http11(gateway, pki, upstream):
    alice = pki.alice()
    seen = {}
    for flag in ("--http2", "--http1.1"):
        result = _curl(pki, alice, flag, "-w", "\n%{http_version}", f"{gateway.url}/h2?x=1",
                       "-H", "X-Client-CN: forged")
        assert result.returncode == 0, result.stderr
        body, version = result.stdout.rsplit("\n", 1)
        assert version == ("2" if flag == "--http2" else "1.1")
        assert json.loads(body)["path"] == "/h2?x=1"
        record = upstream.last()
        seen[flag] = {k.lower(): v for k, v in record["headers"]
                      if k.lower().startswith("x-client-")}
    assert seen["--http2"] == seen["--http1.1"]
    assert seen["--http2"]["x-client-cn"] == "alice"
    assert seen["--http2"]["x-client-verify"] == "SUCCESS"


def test_http2_upload_and_download_stream_with_checksums(gateway, pki, upstream, tmp_path):
    alice = pki.alice()
    body = tmp_path / "body"
    size = 5 * 1024 * 1024 + 7
    body.write_bytes(b"q" * size)
    result = _curl(pki, alice, "--http2", "--data-binary", f"@{body}", f"{gateway.url}/h2-up")
    assert result.returncode == 0, result.stderr
    seen = upstream.last()
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(b"q" * size).hexdigest()
    out = tmp_path / "out"
    result = _curl(pki, alice, "--http2", "-o", str(out), f"{gateway.url}/download/{size}")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(size)


def test_http2_denied_request_is_403_and_never_reaches_upstream(gateway, pki, upstream):
    upstream.clear()
    result = _curl(pki, pki.bob(), "--http2", "-w", "%{http_code}", "-o", "/dev/null",
                   f"{gateway.url}/h2-denied")
    assert result.stdout == "403"
    assert upstream.requests == []


def test_without_the_setting_only_http11_is_negotiated(start_gateway, pki, upstream):
    plain = start_gateway()
    result = _curl(pki, pki.alice(), "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                   f"{plain.url}/fallback")
    assert (result.returncode, result.stdout) == (0, "1.1")
    assert headers_of(upstream.last(), "X-Client-CN") == ["alice"]
