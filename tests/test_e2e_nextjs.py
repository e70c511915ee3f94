"""A real Next.js app (examples/nextjs) behind ``twistd mtlsgw``, both directions.

Ingress: ``next start`` on loopback behind the gateway's mTLS listener; the page and a route
handler read the identity headers, and ``proxy.ts`` answers 401 without them. Egress: the app's
``/api/orders`` does a plain ``fetch`` to the gateway's plain loopback listener, and the gateway
calls a test mTLS API with its own client certificate; ``/api/orders-direct`` is the alternative
where the app holds a key itself (``https.Agent``).

``npm ci`` runs only when ``node_modules`` does not match ``package-lock.json`` (a stamp file
holds the lockfile's SHA-256), so after the first run the test needs no network. ``next build``
runs once per session. Skipped when ``node``/``npm`` are missing, except under ``CI=true``
(``.ci/run`` provides Node >= 20.9 with npm), where that is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
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
    https_request,
    wait_for,
)

from gateway.pki import DevPKI, write_dev_pki

APP = Path(__file__).resolve().parents[1] / "examples" / "nextjs"
NODE_MIN = (20, 9)
STAMP = APP / "node_modules" / ".mtlsgw-lockfile-sha256"


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (.ci/run provides Node >= 20.9 with npm)")
    pytest.skip(f"{why}: install Node.js >= 20.9 with npm to run the Next.js test (CI runs it)")


def node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node or npm is not on PATH")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.strip()
    found = tuple(int(part) for part in version.lstrip("v").split(".")[:2])
    if found < NODE_MIN:
        _missing(f"node {version} is older than 20.9, which Next.js 16 needs")
    return node, npm


def _env() -> dict[str, str]:
    return {**os.environ, "NEXT_TELEMETRY_DISABLED": "1", "NODE_ENV": "production"}


@pytest.fixture(scope="session")
def built_app() -> Path:
    """examples/nextjs with its dependencies installed and ``next build`` done."""
    _node, npm = node_tools()
    lock = hashlib.sha256((APP / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != lock:
        # NODE_ENV unset: npm ci installs the devDependencies (TypeScript) next build needs.
        env = {k: v for k, v in _env().items() if k != "NODE_ENV"}
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=APP, env=env,
                                capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        STAMP.write_text(lock + "\n")
    result = subprocess.run([str(APP / "node_modules" / ".bin" / "next"), "build"], cwd=APP,
                            env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Proxy" in result.stdout, result.stdout  # proxy.ts was picked up
    return APP


def api_context(pki: DevPKI) -> ssl.SSLContext:
    """The partner API's TLS: its own CA; a client certificate from that CA is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.load_verify_locations(str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class Setup:
    def __init__(self, gateway: Gateway, api: Upstream, next_port: int, egress_port: int,
                 partner: DevPKI, app_key: DevPKI) -> None:
        self.gateway = gateway
        self.api = api
        self.next_port = next_port
        self.egress_port = egress_port
        self.partner = partner
        self.app_key = app_key


@pytest.fixture(scope="module")
def setup(built_app: Path, tmp_path_factory: pytest.TempPathFactory,
          pki: conftest.TestPKI) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("nextjs")
    partner = write_dev_pki(base / "partner", client_cn="mtlsgw-gateway")
    # A second client certificate, for the app's own https.Agent (orders-direct), from a CA
    # the partner API trusts too.
    app_key = write_dev_pki(base / "partner-app", client_cn="nextjs-app",
                            ca_name="partner's second CA")
    tls = api_context(partner)
    tls.load_verify_locations(str(app_key.ca))
    api = Upstream(tls=tls)
    next_port, egress_port = free_port(), free_port()
    sections = base_sections(pki, f"http://127.0.0.1:{next_port}")
    sections["listener:egress"] = {"listen": f"tcp:{egress_port}:interface=127.0.0.1",
                                   "tls": "off"}
    sections["route:partner"] = {
        "listener": "egress", "upstream": f"https://localhost:{api.port}",
        "upstream_ca": str(partner.ca), "upstream_certificate": str(partner.client_cert),
        "upstream_private_key": str(partner.client_key), "host_header": "upstream"}
    gateway = Gateway(base / "gw", sections)
    app = subprocess.Popen(
        [str(built_app / "node_modules" / ".bin" / "next"), "start", "-H", "127.0.0.1", "-p",
         str(next_port)], cwd=built_app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
        env={**_env(), "MTLSGW_EGRESS_URL": f"http://127.0.0.1:{egress_port}",
             "ORDERS_URL": f"https://localhost:{api.port}",
             "ORDERS_KEY_FILE": str(app_key.client_key),
             "ORDERS_CERT_FILE": str(app_key.client_cert), "ORDERS_CA_FILE": str(partner.ca)})

    def listening() -> bool:
        if app.poll() is not None:
            raise AssertionError(f"next start exited: {app.communicate()[0]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", next_port)) == 0

    try:
        wait_for(listening, "next start to listen", timeout=60)
        yield Setup(gateway, api, next_port, egress_port, partner, app_key)
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            app.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
        gateway.stop()
        api.close()


def curl_gateway(setup: Setup, pki: conftest.TestPKI, path: str, *extra: str,
                 cert: bool = True) -> subprocess.CompletedProcess[str]:
    identity = ["--cert", str(pki.alice().cert), "--key", str(pki.alice().key)] if cert else []
    return curl("--cacert", str(pki.ca), *identity, *extra,
                f"https://localhost:{setup.gateway.port}{path}")


def test_allowed_certificate_the_page_shows_the_cn(setup: Setup, pki: conftest.TestPKI) -> None:
    result = curl_gateway(setup, pki, "/", "-w", "\n%{http_code}")
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "200", result.stdout + result.stderr
    assert re.search(r'<strong id="cn">alice</strong>', body), body
    assert '<code id="subject">CN=alice,' in body, body


def test_no_certificate_the_handshake_is_refused(setup: Setup, pki: conftest.TestPKI) -> None:
    result = curl_gateway(setup, pki, "/", cert=False)
    assert result.returncode != 0 and result.stdout == ""
    assert "alert" in result.stderr or "SSL" in result.stderr, result.stderr


def test_a_forged_cn_is_replaced_by_the_gateways_value(setup: Setup,
                                                      pki: conftest.TestPKI) -> None:
    result = curl_gateway(setup, pki, "/api/whoami", "-H", "X-Client-CN: mallory",
                          "-H", "x-client-verify: SUCCESS", "-H", "X-Forwarded-For: 203.0.113.9")
    assert result.returncode == 0, result.stderr
    who = json.loads(result.stdout)
    assert who["cn"] == "alice"
    assert who["forwardedFor"] == "127.0.0.1"
    # And with Python's client: the same.
    status, _headers, body = https_request(
        setup.gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key),
        path="/api/whoami", headers=[("X-Client-CN", "mallory")])
    assert status == 200 and json.loads(body)["cn"] == "alice"


def test_the_app_refuses_requests_without_identity(setup: Setup) -> None:
    # Straight to the app, not through the gateway: proxy.ts answers 401. (Anyone who can reach
    # the app's port directly could also forge the headers: it must listen only for the gateway.)
    result = curl("-o", "/dev/null", "-w", "%{http_code}",
                  f"http://127.0.0.1:{setup.next_port}/api/whoami")
    assert result.stdout == "401"
    result = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{setup.next_port}/")
    assert result.stdout == "401"


def test_egress_reaches_the_mtls_api_with_the_gateways_certificate(
        setup: Setup, pki: conftest.TestPKI) -> None:
    setup.api.clear()
    status, _headers, body = https_request(
        setup.gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key),
        path="/api/orders")
    assert status == 200, body
    seen = json.loads(body)  # what the API received, as it reports it
    assert seen["path"] == "/orders"
    assert seen["client_certificate_subject"] == {"commonName": "mtlsgw-gateway"}
    assert setup.api.last()["client_certificate_subject"] == {"commonName": "mtlsgw-gateway"}
    # The app sent no identity headers of its own upstream: the egress listener adds none.
    assert not [k for k, _ in seen["headers"] if k.lower().startswith("x-client-")]


def test_the_alternative_app_holds_the_key(setup: Setup, pki: conftest.TestPKI) -> None:
    status, _headers, body = https_request(
        setup.gateway.port, client_context(pki.ca, pki.alice().cert, pki.alice().key),
        path="/api/orders-direct")
    assert status == 200, body
    assert json.loads(body)["client_certificate_subject"] == {"commonName": "nextjs-app"}
