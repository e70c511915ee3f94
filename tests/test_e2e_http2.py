"""HTTP/2 from clients ([tls] http2 = yes): same identity, HTTP/1.1 to the upstream."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import pytest
from harness import curl, headers_of, pattern_sha256

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@contextlib.contextmanager
def h2_socket(gateway, pki, files=None):
    """A TLS socket to *gateway* with ALPN h2 and a client certificate (alice by default)."""
    files = files or pki.alice()
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        yield tls


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


def test_http2_upstream_dying_mid_body_resets_the_stream_with_an_error(gateway, pki):
    result = _curl(pki, pki.alice(), "--http2", "-o", "/dev/null", f"{gateway.url}/die/200000")
    assert result.returncode != 0, "a truncated HTTP/2 response must not look complete"
    assert "stream" in result.stderr.lower() or "INTERNAL_ERROR" in result.stderr


def test_http2_idle_connection_is_closed(start_gateway, pki):
    gateway = start_gateway({"tls": {"http2": "yes"}, "gateway": {"idle_timeout": "0.5"}})
    with h2_socket(gateway, pki) as tls:
        tls.sendall(PREFACE)
        # Read frames (RFC 9113 §4.1) until the gateway's GOAWAY (type 7) ends the idle connection.
        data, types = b"", []
        while 7 not in types:
            chunk = tls.recv(65536)
            assert chunk, "closed without GOAWAY"
            data += chunk
            while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                types.append(data[3])
                data = data[9 + int.from_bytes(data[:3], "big"):]


def test_connect_method_is_refused(gateway, pki, upstream):
    upstream.clear()
    result = _curl(pki, pki.alice(), "--http1.1", "-X", "CONNECT", "-w", "%{http_code}",
                   "-o", "/dev/null", f"{gateway.url}/x")
    assert result.stdout in ("405", "400")
    assert upstream.requests == []


def test_sigterm_closes_an_idle_http2_connection_without_waiting_for_drain_timeout(
    start_gateway, pki
):
    gateway = start_gateway({"tls": {"http2": "yes"}, "gateway": {"drain_timeout": "30"}})
    with h2_socket(gateway, pki) as tls:
        tls.sendall(PREFACE)
        tls.recv(65536)
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(OSError):
            while tls.recv(65536):  # GOAWAY / close_notify, as a client would read them
                pass
    assert gateway.process.wait(20) == 0
    assert time.monotonic() - started < 10


def _h2_exchange(gateway, pki, streams):
    """Send *streams* (lists of header pairs) on one HTTP/2 connection with the h2 library;
    return the statuses (or 'reset') in stream order once every stream has ended."""
    results: dict[int, object] = {}
    with h2_socket(gateway, pki) as tls:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                      normalize_outbound_headers=False))
        conn.initiate_connection()
        ids = []
        for index, headers in enumerate(streams):
            stream_id = 1 + 2 * index  # client streams are odd (RFC 9113 §5.1.1)
            conn.send_headers(stream_id, headers, end_stream=True)
            ids.append(stream_id)
        tls.sendall(conn.data_to_send())
        while len(results) < len(ids):
            data = tls.recv(65536)
            assert data, f"connection closed with streams pending: {results}"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    results[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.StreamReset):
                    results[event.stream_id] = "reset"
            tls.sendall(conn.data_to_send())
    return [results[i] for i in ids]


def test_http2_bad_method_and_pathless_connect_are_refused_per_stream(gateway, pki, upstream):
    upstream.clear()
    good = [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{gateway.port}"),
            (":path", "/after-bad")]
    bad_method = [(":method", "GET /admin HTTP/1.1"), *good[1:]]
    connect = [(":method", "CONNECT"), (":authority", "localhost:22")]
    assert _h2_exchange(gateway, pki, [bad_method, connect, good]) == [b"400", b"400", b"200"]
    assert [r["path"] for r in upstream.requests] == ["/after-bad"]
    log = gateway.wait_log("reason=invalid-method")
    assert 'method="GET /admin HTTP/1.1" path=' in log  # quoted: no field can be forged


def test_http2_request_head_over_max_head_size_is_431_on_its_stream(start_gateway, pki, upstream):
    gateway = start_gateway({"tls": {"http2": "yes"}, "gateway": {"max_head_size": "4096"}})
    upstream.clear()
    base = [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{gateway.port}")]
    big = [*base, (":path", "/big"), ("x-big", "a" * 6000)]
    small = [*base, (":path", "/small")]
    assert _h2_exchange(gateway, pki, [big, small]) == [b"431", b"200"]
    assert [r["path"] for r in upstream.requests] == ["/small"]
    # A 60 KB :path is refused as well, and its access line shows its first 4 KiB only.
    long_path = [*base, (":path", "/long-" + "p" * 60_000)]
    assert _h2_exchange(gateway, pki, [long_path]) == [b"431"]
    line = next(ln for ln in gateway.wait_log("/long-").splitlines() if "/long-" in ln)
    assert f'path="/long-{"p" * 4090}..." ' in line and len(line) < 5000, len(line)


def test_http2_100_continue_only_after_authorization(gateway, pki, upstream):
    def exchange(files, path):
        events = []
        with h2_socket(gateway, pki, files) as tls:
            conn = h2.connection.H2Connection()
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "POST"), (":scheme", "https"),
                                  (":authority", f"localhost:{gateway.port}"), (":path", path),
                                  ("content-length", "5"), ("expect", "100-continue")])
            tls.sendall(conn.data_to_send())
            while not any(isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
                          for e in events):
                data = tls.recv(65536)
                assert data
                for event in conn.receive_data(data):
                    events.append(event)
                    if isinstance(event, h2.events.InformationalResponseReceived):
                        conn.send_data(1, b"hello", end_stream=True)
                tls.sendall(conn.data_to_send())
        return [(type(e).__name__, dict(e.headers).get(b":status")) for e in events
                if isinstance(e, h2.events.InformationalResponseReceived
                              | h2.events.ResponseReceived)]

    upstream.clear()
    assert exchange(pki.bob(), "/h2-expect-denied") == [("ResponseReceived", b"403")]
    assert upstream.requests == []
    assert exchange(pki.alice(), "/h2-expect") == [
        ("InformationalResponseReceived", b"100"), ("ResponseReceived", b"200")]
    assert upstream.last()["body_length"] == 5
