"""``[status]``: ``/healthz``, ``/readyz`` and ``/metrics`` of the real ``twistd mtlsgw`` process,
scraped as Prometheus does and parsed with ``prometheus_client``'s own parser, after known
sequences of requests and handshakes by real TLS clients."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness import (
    DEADLINE,
    Refused,
    client_context,
    free_port,
    https_request,
    raw_exchange,
    tls_connect,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families


def status_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, headers, body = status_get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def status_section(port: int) -> dict[str, str]:
    return {"listen": f"tcp:{port}:interface=127.0.0.1"}


def get(gateway, pki, who, path="/", **kwargs):
    files = getattr(pki, who)()
    return https_request(gateway.port, client_context(pki.ca, files.cert, files.key),
                         path=path, **kwargs)


def refused(gateway, pki, who: str | None) -> None:
    if who is None:
        context = client_context(pki.ca)
    else:
        files = getattr(pki, who)()
        context = client_context(pki.ca, files.cert, files.key)
    with pytest.raises(Refused):
        https_request(gateway.port, context)


def test_counters_after_a_known_sequence(start_gateway, pki):
    status_port = free_port()
    dead = free_port()  # nothing listens there
    gateway = start_gateway({
        "status": status_section(status_port),
        "route:dead": {"prefix": "/dead/", "upstream": f"http://127.0.0.1:{dead}"},
        "tls": {"handshake_timeout": "1"},
    })
    received = 0
    for _ in range(3):
        status, _, body = get(gateway, pki, "alice")
        assert status == 200
        received += len(body)
    status, _, body = get(gateway, pki, "alice", method="POST", body=b"x" * 1000)
    assert status == 200
    received += len(body)
    for _ in range(2):
        status, _, body = get(gateway, pki, "bob")
        assert status == 403
        received += len(body)
    status, _, _ = get(gateway, pki, "alice", path="/dead/x")
    assert status == 502
    for who in ("expired", "not_yet_valid", "untrusted", "server_eku_only", None):
        refused(gateway, pki, who)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # not TLS
        with contextlib.suppress(ConnectionResetError):
            plain.recv(1024)
    silent = socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE)
    with silent, contextlib.suppress(ConnectionResetError):  # aborted after handshake_timeout
        assert silent.recv(1024) == b""
    with socket.create_connection(("127.0.0.1", gateway.port)):
        pass  # a TCP health check: no handshake at all

    def settled() -> Samples | None:
        # A refused handshake is counted when its connection is gone on the gateway's side.
        samples = scrape(status_port)
        failures = value(samples, "mtlsgw_handshakes_total", listener="main", result="failure")
        return samples if failures == 7 else None

    samples = wait_for(settled, "seven refused handshakes counted")
    main = {"listener": "main"}
    assert value(samples, "mtlsgw_requests_total", **main, route="default", code="200",
                 decision="allow") == 4
    assert value(samples, "mtlsgw_requests_total", **main, route="default", code="403",
                 decision="deny") == 2
    assert value(samples, "mtlsgw_requests_total", **main, route="dead", code="502",
                 decision="allow") == 1
    assert sum(named(samples, "mtlsgw_requests_total").values()) == 7
    assert named(samples, "mtlsgw_denials_total") == {
        frozenset({"route": "default", "reason": "cn-not-allowed"}.items()): 2}
    assert named(samples, "mtlsgw_upstream_failures_total") == {
        frozenset({"route": "dead", "kind": "upstream-unreachable"}.items()): 1}
    assert value(samples, "mtlsgw_request_bytes_total", route="default") == 1000
    assert value(samples, "mtlsgw_response_bytes_total", route="default") == received
    assert value(samples, "mtlsgw_request_duration_seconds_count", route="default") == 6
    assert value(samples, "mtlsgw_request_duration_seconds_count", route="dead") == 1
    assert value(samples, "mtlsgw_upstream_response_seconds_count", route="default") == 4
    assert value(samples, "mtlsgw_upstream_response_seconds_count", route="dead") == 0
    assert value(samples, "mtlsgw_authorizer_seconds_count", authorizer="team") == 7
    assert named(samples, "mtlsgw_authorizer_errors_total") == {
        frozenset({"authorizer": "team", "kind": kind}.items()): 0.0
        for kind in ("error", "timeout")}
    assert value(samples, "mtlsgw_handshakes_total", **main, result="success") == 7
    assert value(samples, "mtlsgw_handshake_seconds_count", **main) == 7
    failures = {dict(labels)["reason"]: v for labels, v in
                named(samples, "mtlsgw_handshake_failures_total").items() if v}
    assert failures == {"expired": 1, "not-yet-valid": 1, "unknown-ca": 1, "eku": 1,
                        "no-certificate": 1, "protocol": 1, "handshake-timeout": 1}
    assert value(samples, "mtlsgw_config_generation") == 1
    assert value(samples, "mtlsgw_reloads_total", result="success") == 0
    assert value(samples, "mtlsgw_config_last_reload_successful") == 1
    assert time.time() - 60 < value(
        samples, "mtlsgw_config_last_reload_success_timestamp_seconds") <= time.time()
    assert value(samples, "process_cpu_seconds_total") > 0
    # Nothing that identifies a client or a request is a label value.
    alice = pki.alice().issued.certificate
    text = status_get(status_port, "/metrics")[2].decode()
    for secret in ("alice", "bob", "127.0.0.1", "/dead/x", alice.serial_number.__str__()):
        assert f'"{secret}"' not in text


def test_http11_requests_refused_while_their_head_is_read_are_counted(start_gateway, pki):
    # 400, 431 and 408 before any exchange: route and decision "-", as HTTP/2 counts them
    status_port = free_port()
    gateway = start_gateway({"status": status_section(status_port),
                             "gateway": {"header_timeout": "1", "max_header_count": "5"}})
    files = pki.alice()
    context = client_context(pki.ca, files.cert, files.key)
    many = b"".join(b"X-H-%d: v\r\n" % i for i in range(6))
    for request in (b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n",
                    b"GET / HTTP/1.1\r\nHost: local"):  # and then nothing: 408
        assert raw_exchange(gateway.port, context, request, DEADLINE).startswith(b"HTTP/1.1 4")

    def counted() -> Samples | None:
        samples = scrape(status_port)
        return samples if sum(named(samples, "mtlsgw_requests_total").values()) == 3 else None

    samples = wait_for(counted, "three refused requests counted")
    for code in ("400", "431", "408"):
        assert value(samples, "mtlsgw_requests_total", listener="main", route="-", code=code,
                     decision="-") == 1, code


def test_expiry_gauges_equal_the_certificates_not_after(start_gateway, pki):
    status_port = free_port()
    gateway = start_gateway({"status": status_section(status_port),
                             "tls": {"client_ca": str(pki.both)}})
    samples = scrape(status_port)
    expiry = {(dict(k)["role"], dict(k)["file"], dict(k)["index"]): v
              for k, v in named(samples, "mtlsgw_certificate_not_after_timestamp_seconds").items()}
    assert expiry == {
        ("server", str(pki.server.cert), "0"):
            pki.server.issued.certificate.not_valid_after_utc.timestamp(),
        ("client-ca", str(pki.both), "0"): pki.root.certificate.not_valid_after_utc.timestamp(),
        ("client-ca", str(pki.both), "1"):
            pki.intermediate.certificate.not_valid_after_utc.timestamp(),
    }
    assert gateway.process.poll() is None


def test_healthz_readyz_and_404(start_gateway):
    status_port = free_port()
    start_gateway({"status": status_section(status_port)})
    assert status_get(status_port, "/healthz")[::2] == (200, b"ok\n")
    assert status_get(status_port, "/readyz")[::2] == (200, b"ready\n")
    assert status_get(status_port, "/healthz", "HEAD")[::2] == (200, b"")
    for path in ("/", "/metrics/x", "/status", "/healthz/"):
        assert status_get(status_port, path)[0] == 404, path
    status, headers, _ = status_get(status_port, "/metrics", "POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    # absolute-form, which a server must accept (RFC 9112 §3.2.2)
    assert status_get(status_port, f"http://127.0.0.1:{status_port}/healthz?x")[::2] == (
        200, b"ok\n")
    assert status_get(status_port, "HTTP://localhost/readyz")[::2] == (200, b"ready\n")
    assert status_get(status_port, "http://localhost")[0] == 404
    # Plain HTTP only: a TLS client hello gets no handshake (no certificate is ever asked for).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        tls_connect(status_port, context).close()


@pytest.mark.parametrize(("head", "answer"), [
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n", b"HTTP/1.1 405 "),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n", b"HTTP/1.1 200 "),
    (b"PUT /nothing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", b"HTTP/1.1 404 "),
])
def test_expect_100_continue_gets_its_final_answer_without_the_body(start_gateway, head, answer):
    # curl sends Expect: 100-continue before a body of over 1 KiB and waits for an answer;
    # nothing on the status listener takes a body, so the final answer comes in place of 100.
    status_port = free_port()
    start_gateway({"status": status_section(status_port)})
    with socket.create_connection(("127.0.0.1", status_port), timeout=DEADLINE) as client:
        client.sendall(head + b"Expect: 100-continue\r\n\r\n")  # and never the body
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    assert received.startswith(answer), received
    assert b" 100 " not in received.split(b"\r\n", 1)[0]
    assert b"Connection: close\r\n" in received


def test_connections_held_open_without_a_request_do_not_keep_healthz_from_its_answer(
        start_gateway):
    status_port = free_port()
    start_gateway({"status": status_section(status_port)})
    silent = [socket.create_connection(("127.0.0.1", status_port), timeout=DEADLINE)
              for _ in range(64)]
    try:
        assert status_get(status_port, "/healthz")[::2] == (200, b"ok\n")
        # the 65th connection (the probe) closed the oldest silent one, not itself
        with contextlib.suppress(ConnectionResetError):  # closed by a reset
            assert silent[0].recv(1) == b""
        silent[-1].sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert silent[-1].recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for connection in silent:
            connection.close()


def test_a_flood_from_one_address_closes_its_own_connections_not_a_probe_from_another(
        start_gateway):
    status_port = free_port()
    start_gateway({"status": status_section(status_port)})
    probe = socket.create_connection(("127.0.0.1", status_port), timeout=DEADLINE)
    # the probe is the oldest waiting connection; the flood comes from 127.0.0.2 (loopback too)
    flood = [socket.create_connection(("127.0.0.1", status_port), timeout=DEADLINE,
                                      source_address=("127.0.0.2", 0)) for _ in range(100)]
    try:
        wait_for(lambda: status_get(status_port, "/healthz")[0] == 200, "the status listener")
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert probe.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for connection in [probe, *flood]:
            connection.close()


def test_a_failed_reload_keeps_200_and_shows_in_readyz_and_metrics(start_gateway, pki):
    status_port = free_port()
    gateway = start_gateway({"status": status_section(status_port)})
    good = gateway.config.read_text()
    gateway.config.write_text(good.replace("type = cn", "type = no-such-type"))
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reload refused")
    status, _, body = status_get(status_port, "/readyz")
    assert status == 200
    assert body.startswith(b"ready; last reload failed: ")
    assert b"no-such-type" in body and body.count(b"\n") == 1
    samples = scrape(status_port)
    assert value(samples, "mtlsgw_reloads_total", result="failure") == 1
    assert value(samples, "mtlsgw_config_last_reload_successful") == 0
    assert value(samples, "mtlsgw_config_generation") == 1
    assert get(gateway, pki, "alice")[0] == 200  # the old configuration serves

    gateway.config.write_text(good)
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: value(scrape(status_port), "mtlsgw_config_generation") == 2,
             "the good reload counted")
    samples = scrape(status_port)
    assert value(samples, "mtlsgw_reloads_total", result="success") == 1
    assert value(samples, "mtlsgw_config_last_reload_successful") == 1
    assert status_get(status_port, "/readyz")[::2] == (200, b"ready\n")


def test_connections_and_pool_gauges(start_gateway, pki):
    status_port = free_port()
    gateway = start_gateway({"status": status_section(status_port), "tls": {"http2": "yes"}})
    alice = pki.alice()
    h2 = client_context(pki.ca, alice.cert, alice.key)
    h2.set_alpn_protocols(["h2"])
    with tls_connect(gateway.port, client_context(pki.ca, alice.cert, alice.key)) as tls, \
            tls_connect(gateway.port, h2) as tls2:
        assert tls2.selected_alpn_protocol() == "h2"
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        samples = wait_for(lambda: (s := scrape(status_port)) and value(
            s, "mtlsgw_connections_open", listener="main", protocol="h1") == 1 and s,
            "one open h1 connection")
        assert value(samples, "mtlsgw_connections_open", listener="main", protocol="h2") == 1
        assert value(samples, "mtlsgw_connections_open", listener="main",
                     protocol="websocket") == 0
        assert value(samples, "mtlsgw_upstream_pool_connections", route="default",
                     state="idle") == 1
        assert value(samples, "mtlsgw_upstream_pool_connections", route="default",
                     state="active") == 0
    wait_for(lambda: value(scrape(status_port), "mtlsgw_connections_open", listener="main",
                           protocol="h1") == 0, "the connection counted as closed")


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    arrived = threading.Event()
    release = threading.Event()  # set by the test: the request stays in flight until then

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        type(self).arrived.set()
        type(self).release.wait(DEADLINE)  # a slow application
        body = b"done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_readyz_is_503_while_draining_and_the_request_in_flight_completes(start_gateway, pki):
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        status_port = free_port()
        gateway = start_gateway({
            "status": status_section(status_port),
            "gateway": {"upstream": f"http://127.0.0.1:{slow.server_address[1]}",
                        "drain_timeout": "10"},
        })
        assert status_get(status_port, "/readyz")[0] == 200
        result: list[tuple[int, bytes]] = []
        client = threading.Thread(target=lambda: result.append(
            get(gateway, pki, "alice", path="/slow")[::2]))
        client.start()
        assert _SlowHandler.arrived.wait(DEADLINE)
        gateway.process.send_signal(signal.SIGTERM)
        _, _, body = wait_for(
            lambda: (r := status_get(status_port, "/readyz"))[0] == 503 and r,
            "/readyz to turn 503")
        assert body == b"draining\n"
        assert gateway.process.poll() is None  # still draining the request in flight
        assert status_get(status_port, "/healthz")[0] == 200
        _SlowHandler.release.set()
        client.join(DEADLINE)
        assert result == [(200, b"done")]
        assert gateway.process.wait(DEADLINE) == 0
    finally:
        _SlowHandler.release.set()
        slow.shutdown()
        slow.server_close()


def test_ready_check_fails_while_the_upstream_refuses_and_recovers(start_gateway):
    status_port = free_port()
    dead = free_port()
    start_gateway({
        "status": status_section(status_port),
        "route:dead": {"prefix": "/dead/", "upstream": f"http://127.0.0.1:{dead}",
                       "ready_check": "yes", "ready_check_window": "1"},
    })
    _, _, body = wait_for(lambda: (r := status_get(status_port, "/readyz"))[0] == 503
                          and r, "/readyz to fail the dead route")
    assert body == (f"route dead: upstream http://127.0.0.1:{dead} refused connections for "
                    "the last 1 s\n").encode()
    with socket.socket() as server:  # the upstream comes back
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", dead))
        server.listen(16)
        wait_for(lambda: status_get(status_port, "/readyz")[0] == 200, "/readyz to recover")


ACCESS = re.compile(r"\[mtlsgw\.access#info\] worker=(\d+) request .* status=200 ")


def test_workers_metrics_add_up_in_one_scrape(start_gateway, pki):
    status_port = free_port()
    gateway = start_gateway({"status": status_section(status_port),
                             "gateway": {"workers": "2", "upstream_idle_timeout": "60"}})
    wait_for(lambda: status_get(status_port, "/readyz")[::2] == (200, b"ready\n"),
             "/readyz to see both workers up")
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        assert get(gateway, pki, "alice")[0] == 200  # a new connection each time
        sent += 1
        return {m[1] for m in ACCESS.finditer(gateway.log())} == {"1", "2"}

    wait_for(both_served, "both workers to answer")
    # Each worker writes its counts for the supervisor every second.
    samples = wait_for(lambda: (s := scrape(status_port)) and value(
        s, "mtlsgw_requests_total", listener="main", route="default", code="200",
        decision="allow") == sent and s, f"{sent} requests counted over both workers")
    assert value(samples, "mtlsgw_handshakes_total", listener="main", result="success") == sent
    assert value(samples, "mtlsgw_request_duration_seconds_count", route="default") == sent
    assert value(samples, "mtlsgw_authorizer_seconds_count", authorizer="team") == sent
    # The supervisor's own: configuration and certificates, once.
    assert value(samples, "mtlsgw_config_generation") == 1
    assert value(samples, "mtlsgw_certificate_not_after_timestamp_seconds", role="server",
                 file=str(pki.server.cert), index="0") == \
        pki.server.issued.certificate.not_valid_after_utc.timestamp()
    # Live gauges, sampled by each worker, summed over the live ones.
    wait_for(lambda: value(scrape(status_port), "mtlsgw_upstream_pool_connections",
                           route="default", state="idle") == 2, "one idle pooled connection "
             "per worker")
    gateway.config.write_text(gateway.config.read_text().replace("type = cn", "type = nope"))
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: value(scrape(status_port), "mtlsgw_reloads_total", result="failure") == 1,
             "the refused reload counted once")
    assert status_get(status_port, "/readyz")[2].startswith(b"ready; last reload failed: ")
    # The workers' metrics directory is the supervisor's, for this run only.
    workers = metrics_dirs(gateway.process.pid)
    assert len(workers) == 2 and len(set(workers.values())) == 1
    directory = next(iter(workers.values()))
    assert {p.name for p in directory.glob("worker-*.json")} == {
        f"worker-{pid}.json" for pid in workers}
    # A worker that exits (and is restarted) leaves its counts in the sum.
    stopped = min(workers)
    os.kill(stopped, signal.SIGTERM)
    gateway.wait_log(f"pid={stopped} exited")
    wait_for(lambda: len(metrics_dirs(gateway.process.pid)) == 2, "the worker restarted")
    assert not (directory / f"worker-{stopped}.json").exists()
    assert value(scrape(status_port), "mtlsgw_requests_total", listener="main",
                 route="default", code="200", decision="allow") == sent
    gateway.stop()
    assert not directory.exists()


def metrics_dirs(supervisor: int) -> dict[int, Path]:
    """``{pid: MTLSGW_METRICS_DIR}`` of the live children of *supervisor*."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == supervisor and fields[0] != "Z":
                for item in (entry / "environ").read_bytes().split(b"\0"):
                    if item.startswith(b"MTLSGW_METRICS_DIR="):
                        found[int(entry.name)] = Path(item.split(b"=", 1)[1].decode())
    return found


def test_an_upgraded_connection_counts_as_websocket(start_gateway, pki):
    from test_e2e_websocket import EchoServer, open_websocket

    echo = EchoServer()
    try:
        status_port = free_port()
        gateway = start_gateway({"status": status_section(status_port),
                                 "gateway": {"upstream": echo.url}})
        tls, head, _ = open_websocket(gateway, pki.alice(), pki, "/chat")
        with tls:
            assert head.startswith(b"HTTP/1.1 101")
            samples = wait_for(lambda: (s := scrape(status_port)) and value(
                s, "mtlsgw_connections_open", listener="main", protocol="websocket") == 1 and s,
                "one open websocket connection")
            assert value(samples, "mtlsgw_connections_open", listener="main", protocol="h1") == 0
            assert value(samples, "mtlsgw_requests_total", listener="main", route="default",
                         code="101", decision="allow") == 1
    finally:
        echo.close()


def test_readyz_is_503_during_drain_delay_while_the_listener_still_serves(start_gateway, pki):
    status_port = free_port()
    gateway = start_gateway({"status": status_section(status_port),
                             "gateway": {"drain_delay": "5"}})
    assert status_get(status_port, "/readyz")[0] == 200
    gateway.process.send_signal(signal.SIGTERM)
    wait_for(lambda: status_get(status_port, "/readyz")[::2] == (503, b"draining\n"),
             "/readyz to turn 503")
    gateway.wait_log("drain_delay: accepting for")
    assert get(gateway, pki, "alice")[0] == 200  # a new connection, still served
    assert gateway.process.poll() is None
    assert gateway.process.wait(DEADLINE) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_status_port_in_use_stops_the_start_with_one_line(tmp_path, pki, upstream, workers):
    from conftest import base_sections
    from harness import render_ini, run_twistd

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sections = base_sections(pki, upstream.url)
        sections["gateway"].update({"listen": f"tcp:{free_port()}:interface=127.0.0.1",
                                    "workers": workers})
        sections["status"] = status_section(port)
        path = tmp_path / "gw.ini"
        path.write_text(render_ini(sections))
        process = run_twistd(path, None)
        out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1
    assert (f"mtlsgw: {path}: [status] listen = 'tcp:{port}:interface=127.0.0.1': cannot "
            "listen (") in out + err
    assert "Traceback" not in out + err


def test_expr_rules_and_shadow_rules_work_with_metrics_on(start_gateway, pki):
    status_port = free_port()
    gateway = start_gateway({
        "status": status_section(status_port),
        "authorize": {"authorizers": "rule, team, watch"},
        "authorizer:rule": {"type": "expr", "rule": "all(team, method(GET))"},
        "authorizer:watch": {"type": "expr", "rule": "method(POST)", "shadow": "yes"},
    })
    assert get(gateway, pki, "alice")[0] == 200
    assert get(gateway, pki, "bob")[0] == 403
    gateway.wait_log("shadow rule watch would")
    samples = scrape(status_port)
    assert value(samples, "mtlsgw_requests_total", listener="main", route="default",
                 code="200", decision="allow") == 1
    # team is listed directly: timed; the rules are the policy's own.
    assert value(samples, "mtlsgw_authorizer_seconds_count", authorizer="team") == 1
    assert ("mtlsgw_authorizer_seconds_count", frozenset({"authorizer": "rule"}.items())) \
        not in samples
