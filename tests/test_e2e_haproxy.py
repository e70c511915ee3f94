"""Several gateways behind a real HAProxy that speaks the PROXY protocol (``listen = haproxy:``).

HAProxy (Debian's ``haproxy``) runs in TCP mode with ``send-proxy-v2`` in front of two
``twistd mtlsgw`` processes on loopback, with the configuration of etc/examples/haproxy.cfg
(addresses replaced). The client connects from 127.0.0.2, HAProxy from 127.0.0.1, so the
client's address and the balancer's differ. Checked: connections spread over both gateways;
``X-Forwarded-For`` and the access log name the client; mTLS ends at the gateway; a SIGTERMed
gateway loses no request (``retries``/``option redispatch``, then drain); a peer outside
``trusted_proxies`` and a connection without a PROXY header are refused; PROXY v1 works too.

Skipped when ``haproxy`` is not installed, except under ``CI=true`` (``.ci/run`` installs it),
where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import conftest
import pytest
from conftest import base_sections
from harness import (
    DEADLINE,
    Gateway,
    Upstream,
    client_context,
    curl,
    free_port,
    headers_of,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "etc" / "examples" / "haproxy.cfg"
CLIENT = "127.0.0.2"  # the client's source address; HAProxy connects from 127.0.0.1


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed (.ci/run installs Debian's haproxy package)")
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI runs this test")
    return found


def render(front: int, backends: list[int]) -> str:
    """etc/examples/haproxy.cfg with loopback addresses and these ports."""
    text = EXAMPLE.read_text()
    text, count = re.subn(r"(?m)^(\s*bind) \S+", rf"\1 127.0.0.1:{front}", text)
    assert count == 1
    servers = iter(backends)
    text, count = re.subn(r"(?m)^(\s*server \S+) \S+",
                          lambda m: f"{m.group(1)} 127.0.0.1:{next(servers)}", text)
    assert count == len(backends)
    return text


class HAProxy:
    def __init__(self, directory: Path, backends: list[int]) -> None:
        self.port = free_port()
        self.config = directory / "haproxy.cfg"
        self.config.write_text(render(self.port, backends))
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        self.process = subprocess.Popen([binary, "-db", "-f", str(self.config)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        wait_for(self._ready, "haproxy to listen")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.process.communicate()[0]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.process.communicate()


def sections(pki: conftest.TestPKI, upstream: Upstream, port: int) -> dict[str, dict[str, str]]:
    config = base_sections(pki, upstream.url)
    config["gateway"].update({"listen": f"haproxy:tcp:{port}:interface=127.0.0.1",
                              "trusted_proxies": "127.0.0.1", "drain_timeout": "10"})
    return config


def count_requests(gateway: Gateway) -> int:
    return gateway.log().count("[mtlsgw.access#info] request peer=")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture()
def cluster(tmp_path: Path, pki: conftest.TestPKI, upstream: Upstream) -> Iterator[
        tuple[HAProxy, list[Gateway]]]:
    haproxy_binary()
    gateways: list[Gateway] = []
    balancer = None
    try:
        for index in range(2):
            port = free_port()
            gateways.append(Gateway(tmp_path / f"gw{index}", sections(pki, upstream, port)))
        balancer = HAProxy(tmp_path, [gw.port for gw in gateways])
        yield balancer, gateways
    finally:
        if balancer is not None:
            balancer.stop()
        for gateway in gateways:
            gateway.stop()


def get(port: int, context: ssl.SSLContext, path: str = "/", source: str = CLIENT,
        proxy_header: bytes = b"") -> bytes:
    """One GET on a new connection from *source*; returns the whole response (raises on a
    refused handshake or a closed connection)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE,
                                   source_address=(source, 0))
    with raw:
        if proxy_header:
            raw.sendall(proxy_header)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                        .encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    response = b"".join(chunks)
    if not response:
        raise ConnectionError("closed without a response")
    return response


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_connections_spread_and_the_upstream_sees_the_client(
    cluster: tuple[HAProxy, list[Gateway]], pki: conftest.TestPKI, upstream: Upstream,
) -> None:
    balancer, gateways = cluster
    alice = client_context(pki.ca, pki.alice().cert, pki.alice().key)
    upstream.clear()
    for _ in range(10):
        assert status(get(balancer.port, alice, "/spread")) == 200
    wait_for(lambda: sum(count_requests(g) for g in gateways) == 10, "10 access lines")
    assert all(count_requests(g) >= 3 for g in gateways), [count_requests(g) for g in gateways]
    records = [r for r in upstream.requests if r["path"] == "/spread"]
    assert len(records) == 10
    for record in records:
        assert headers_of(record, "X-Forwarded-For") == [CLIENT]
        # mTLS ended at the gateway: it verified alice's certificate, not HAProxy.
        assert headers_of(record, "X-Client-CN") == ["alice"]
    for gateway in gateways:
        assert f"request peer={CLIENT} " in gateway.log()
        assert "request peer=127.0.0.1 " not in gateway.log()


def test_curl_through_haproxy(cluster: tuple[HAProxy, list[Gateway]], pki: conftest.TestPKI,
                              upstream: Upstream) -> None:
    balancer, gateways = cluster
    url = f"https://localhost:{balancer.port}/curl"
    common = ["--interface", CLIENT, "--cacert", str(pki.ca), "-o", "/dev/null",
              "-w", "%{http_code}", url]

    allowed = curl("--cert", str(pki.alice().cert), "--key", str(pki.alice().key), *common)
    assert allowed.stdout == "200", allowed.stderr
    assert headers_of(upstream.last(), "X-Forwarded-For") == [CLIENT]
    # No certificate: the gateway refuses the handshake, and logs the client's address.
    refused = curl(*common)
    assert refused.returncode != 0 and refused.stdout == "000"
    wait_for(lambda: any(f"tls handshake failed peer={CLIENT}:" in g.log() for g in gateways),
             "the refused handshake in a gateway's log")


def test_a_stopped_instance_loses_no_request(
    cluster: tuple[HAProxy, list[Gateway]], pki: conftest.TestPKI,
) -> None:
    balancer, gateways = cluster
    alice = client_context(pki.ca, pki.alice().cert, pki.alice().key)
    results: list[int | str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                results.append(status(get(balancer.port, alice, "/during-stop")))
            except (OSError, ssl.SSLError) as exc:
                results.append(repr(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(results) >= 20, "20 requests before the stop")
    # Four clients, so that connections are in every state when SIGTERM comes: queued, in the
    # handshake, just after it, with a request in flight.
    gateways[0].process.send_signal(15)  # SIGTERM: stop accepting, drain, exit 0
    assert gateways[0].process.wait(DEADLINE) == 0
    before = len(results)
    wait_for(lambda: len(results) >= before + 40, "40 requests after the stop")
    stop.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert [r for r in results if r != 200] == []
    served_after = count_requests(gateways[1])
    assert served_after >= 40


def test_peer_outside_trusted_proxies_is_refused(tmp_path: Path, pki: conftest.TestPKI,
                                                 upstream: Upstream) -> None:
    gateway = Gateway(tmp_path / "gw", sections(pki, upstream, free_port()))
    try:
        alice = client_context(pki.ca, pki.alice().cert, pki.alice().key)
        header = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n"
        # PROXY v1 from a trusted peer: the header's source is the client.
        upstream.clear()
        assert status(get(gateway.port, alice, "/v1", "127.0.0.1", header)) == 200
        assert headers_of(upstream.last(), "X-Forwarded-For") == ["198.51.100.7"]
        gateway.wait_log("request peer=198.51.100.7 ")
        # The same from a peer that is not a trusted proxy: closed before a byte is read.
        with pytest.raises((OSError, ssl.SSLError)):
            get(gateway.port, alice, "/untrusted", "127.0.0.3", header)
        gateway.wait_log("refusing connection peer=127.0.0.3: not in trusted_proxies")
        # A trusted peer without a PROXY header (TLS straight away): closed.
        with pytest.raises((OSError, ssl.SSLError)):
            get(gateway.port, alice, "/no-header", "127.0.0.1")
        gateway.wait_log("tls handshake failed peer=127.0.0.1:")
        # A malformed header: closed.
        with pytest.raises((OSError, ssl.SSLError)):
            get(gateway.port, alice, "/bad", "127.0.0.1", b"PROXY TCP4 nonsense\r\n")
        # Addresses that are not IP addresses never reach a header or a log line: a line feed
        # in one was an X-Client-Role header of the client's choosing at the upstream.
        for forged in (b"PROXY TCP4 9.9.9.9\nX-Client-Role:admin 5.6.7.8 1 2\r\n",
                       b"PROXY TCP4 1.2.3.4,6.6.6.6 127.0.0.1 1 443\r\n",
                       b"PROXY TCP4 \xff 127.0.0.1 1 443\r\n"):
            with pytest.raises((OSError, ssl.SSLError)):
                get(gateway.port, alice, "/forged", "127.0.0.1", forged)
        log = gateway.wait_log("refusing connection peer=127.0.0.1: malformed PROXY protocol")
        assert "X-Client-Role" not in log and "Traceback" not in log and "Unhandled" not in log
        assert [r["path"] for r in upstream.requests] == ["/v1"]
        # A header sent in two segments, the first of 3 bytes, is read whole (tests/
        # test_proxied.py splits it at every byte; the kernel may merge these two).
        upstream.clear()
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE)
        with raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.sendall(header[:3])
            raw.sendall(header[3:])
            with alice.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /split HTTP/1.1\r\nHost: localhost\r\n"
                            b"Connection: close\r\n\r\n")
                assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert headers_of(upstream.last(), "X-Forwarded-For") == ["198.51.100.7"]
    finally:
        gateway.stop()


def test_workers_share_a_proxy_protocol_listener(tmp_path: Path, pki: conftest.TestPKI,
                                                 upstream: Upstream) -> None:
    # workers = 2: the supervisor binds the tcp: socket, each worker reads the PROXY header.
    config = sections(pki, upstream, free_port())
    config["gateway"]["workers"] = "2"
    gateway = Gateway(tmp_path / "gw", config)
    try:
        alice = client_context(pki.ca, pki.alice().cert, pki.alice().key)
        workers: set[str] = set()

        def both_workers_answered() -> bool:
            header = b"PROXY TCP4 198.51.100.8 127.0.0.1 40000 443\r\n"
            assert status(get(gateway.port, alice, "/workers", "127.0.0.1", header)) == 200
            assert headers_of(upstream.last(), "X-Forwarded-For") == ["198.51.100.8"]
            workers.update(re.findall(r"\[mtlsgw\.access#info\] worker=(\d+) request "
                                      r"peer=198\.51\.100\.8 ", gateway.log()))
            return len(workers) == 2

        wait_for(both_workers_answered, "both workers to answer through the PROXY protocol")
        with pytest.raises((OSError, ssl.SSLError)):
            get(gateway.port, alice, "/untrusted", "127.0.0.3",
                b"PROXY TCP4 198.51.100.8 127.0.0.1 40000 443\r\n")
    finally:
        gateway.stop()
