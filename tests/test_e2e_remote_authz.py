"""Authorizer type ``http`` against the real process and a real authorization service started by
the tests: what it is sent, allow/deny/reason, every failure mode (5xx, timeout, refused,
on_error = allow, max_in_flight), the decision cache, keep-alive, allowed_upstream_headers."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import (
    DEADLINE,
    client_context,
    free_port,
    headers_of,
    https_request,
    render_ini,
    wait_for,
)

Answer = tuple[int, list[tuple[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Service

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        peer = getattr(self.connection, "getpeercert", lambda: None)()
        record = {"path": self.path, "peer_port": self.client_address[1],
                  "client_certificate": peer and dict(x[0] for x in peer["subject"]),
                  "headers": [[k, v] for k, v in self.headers.raw_items()]}
        with self.server.lock:
            self.server.requests.append(record)
        status, headers = self.server.answer(record)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def finish(self) -> None:
        super().finish()
        with self.server.lock:
            self.server.closed.append(self.client_address[1])


class _Service(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = tls
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.closed: list[int] = []  # peer ports of the connections that ended
        self.answer: Callable[[dict[str, Any]], Answer] = lambda record: (200, [])

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is not None:  # handshake in the handler thread, on first read
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class AuthService:
    """A real HTTP/1.1 authorization service on loopback; ``answer`` decides each check."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = _Service(tls)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}/check"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    @property
    def closed(self) -> list[int]:
        return self._server.closed

    def answer(self, function: Callable[[dict[str, Any]], Answer]) -> None:
        self._server.answer = function

    def reset(self) -> None:
        self._server.requests.clear()
        self._server.answer = lambda record: (200, [])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def service() -> Iterator[AuthService]:
    running = AuthService()
    yield running
    running.close()


@pytest.fixture()
def remote(start_gateway, service, upstream):  # type: ignore[no-untyped-def]
    """``remote(**options)``: a gateway whose only authorizer is ``[authorizer:remote]``."""
    service.reset()
    upstream.clear()

    def start(extra: dict[str, dict[str, str]] | None = None, **options: str):  # type: ignore[no-untyped-def]
        sections = {"authorize": {"authorizers": "remote"},
                    "authorizer:remote": {"type": "http", "url": service.url, **options}}
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        return start_gateway(sections, drop=("authorizer:team",))
    return start


def _get(gateway, pki, path: str = "/app", headers=None, who=None):  # type: ignore[no-untyped-def]
    files = who or pki.alice()
    context = client_context(pki.ca, files.cert, files.key)
    return https_request(gateway.port, context, path=path, headers=headers)


def test_allows_on_2xx_and_sends_the_request_and_identity(remote, service, pki, upstream):
    # (X-Request-Id, the example before request ids, is now a header the gateway owns.)
    gateway = remote(forward_headers="Authorization, Traceparent")
    status, _, _ = _get(gateway, pki, "/app/x?q=1", headers=[
        ("Authorization", "Bearer t"), ("Traceparent", "r1"), ("X-Other", "no"),
        ("X-Client-CN", "mallory")])
    assert status == 200
    (check,) = service.requests
    assert check["path"] == "/check"
    seen = dict((k.lower(), v) for k, v in check["headers"])
    assert seen["x-forwarded-method"] == "GET"
    assert seen["x-forwarded-uri"] == "/app/x"
    assert seen["x-forwarded-host"] == f"localhost:{gateway.port}"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["host"] == service.url.split("/")[2]
    assert seen["authorization"] == "Bearer t"
    assert seen["traceparent"] == "r1"
    assert "x-other" not in seen
    assert [v for k, v in check["headers"] if k.lower() == "x-client-cn"] == ["alice"]
    assert seen["x-client-verify"] == "SUCCESS"
    assert seen["x-client-subject"] == "CN=alice,C=DE,O=Example\\, Inc."
    assert len(seen["x-client-fingerprint-sha256"]) == 64
    assert "x-client-cert" not in seen
    line = gateway.wait_log("reason=remote-allowed")
    assert "decision=allow reason=remote-allowed authorizer=remote" in line
    # the request's own id, as the access line (and the upstream) have it
    assert f"request_id={seen['x-request-id']}\n" in line
    assert len(seen["x-request-id"]) == 32


@pytest.mark.parametrize(("status", "headers", "reason"), [
    (403, [("X-Authz-Reason", "not-on-team")], "not-on-team"),
    (401, [], "remote-denied"),
    (403, [("X-Authz-Reason", "Has Spaces")], "remote-denied"),
    (403, [("X-Authz-Reason", "x" * 65)], "remote-denied"),
])
def test_denies_on_401_and_403_with_the_services_reason(remote, service, pki, upstream,
                                                        status, headers, reason):
    gateway = remote()
    service.answer(lambda record: (status, headers))
    code, _, body = _get(gateway, pki)
    assert (code, body) == (403, f"403 Forbidden: {reason}\n".encode())
    assert upstream.requests == []


def test_reason_header_is_configurable(remote, service, pki):
    gateway = remote(reason_header="X-Why")
    service.answer(lambda record: (403, [("X-Authz-Reason", "ignored"), ("X-Why", "blocked")]))
    assert _get(gateway, pki)[2] == b"403 Forbidden: blocked\n"


@pytest.mark.parametrize("status", [500, 503, 302, 404])
def test_any_other_status_is_unavailable(remote, service, pki, upstream, status):
    gateway = remote()
    service.answer(lambda record: (status, [("Location", "/x")]))
    assert _get(gateway, pki)[2] == b"403 Forbidden: authorizer-unavailable\n"
    assert upstream.requests == []
    assert f"the authorization service answered {status}; denying" in gateway.wait_log("denying")


def test_on_error_allow_allows_when_the_service_fails(remote, service, pki):
    gateway = remote(on_error="allow")
    service.answer(lambda record: (500, []))
    assert _get(gateway, pki)[0] == 200
    assert "decision=allow reason=authorizer-unavailable" in gateway.wait_log(
        "reason=authorizer-unavailable")
    service.answer(lambda record: (403, []))  # a real denial still denies
    assert _get(gateway, pki)[0] == 403


def test_timeout_denies_before_the_authorize_timeout(remote, service, pki):
    gateway = remote(timeout="0.3", extra={"authorize": {"timeout": "5"}})

    release = threading.Event()  # the service answers only after the gateway gave up

    def slow(record: dict[str, Any]) -> Answer:
        release.wait(DEADLINE)
        return 200, []
    service.answer(slow)
    try:
        started = time.monotonic()
        assert _get(gateway, pki)[2] == b"403 Forbidden: authorizer-unavailable\n"
        assert time.monotonic() - started < 1.5
        assert "no answer within 0.3 s" in gateway.wait_log("no answer within")
    finally:
        release.set()


def test_connection_refused_is_unavailable(start_gateway, pki, upstream):
    gateway = start_gateway({
        "authorize": {"authorizers": "remote"},
        "authorizer:remote": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/check"}},
        drop=("authorizer:team",))
    assert _get(gateway, pki)[2] == b"403 Forbidden: authorizer-unavailable\n"
    assert "upstream-unreachable" in gateway.wait_log("upstream-unreachable")


def test_max_in_flight_denies_the_excess_at_once(remote, service, pki):
    gateway = remote(max_in_flight="1", timeout="4")
    release = threading.Event()
    service.answer(lambda record: (release.wait(DEADLINE), (200, []))[1])
    first: list[Any] = []
    thread = threading.Thread(target=lambda: first.append(_get(gateway, pki)))
    thread.start()
    try:
        wait_for(lambda: service.requests, "the first check to arrive")
        started = time.monotonic()
        assert _get(gateway, pki)[2] == b"403 Forbidden: authorizer-busy\n"
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        thread.join(DEADLINE)
    assert first[0][0] == 200
    assert len(service.requests) == 1


def test_keep_alive_reuses_the_connection(remote, service, pki):
    gateway = remote()
    for _ in range(3):
        assert _get(gateway, pki)[0] == 200
    assert len({r["peer_port"] for r in service.requests}) == 1


def test_cache_keys_on_fingerprint_and_everything_sent(remote, service, pki):
    gateway = remote(cache_ttl="30", forward_headers="X-Tenant")
    service.answer(lambda record: (200, []))
    assert _get(gateway, pki, "/a")[0] == 200
    assert _get(gateway, pki, "/a")[0] == 200  # hit
    assert len(service.requests) == 1
    assert _get(gateway, pki, "/b")[0] == 200  # another path: miss
    assert _get(gateway, pki, "/a", headers=[("X-Tenant", "t2")])[0] == 200  # another header
    assert len(service.requests) == 3
    service.answer(lambda record: (403, [("X-Authz-Reason", "bob-out")]))
    assert _get(gateway, pki, "/a", who=pki.bob())[2] == b"403 Forbidden: bob-out\n"
    assert _get(gateway, pki, "/a", who=pki.bob())[2] == b"403 Forbidden: bob-out\n"  # hit
    assert len(service.requests) == 4
    assert _get(gateway, pki, "/a")[0] == 200  # alice's allow is still cached
    assert len(service.requests) == 4


def test_errors_are_not_cached(remote, service, pki):
    gateway = remote(cache_ttl="30")
    service.answer(lambda record: (500, []))
    assert _get(gateway, pki)[0] == 403
    service.answer(lambda record: (200, []))
    assert _get(gateway, pki)[0] == 200
    assert len(service.requests) == 2


def test_allowed_upstream_headers_reach_the_upstream_and_replace_the_clients(
        remote, service, pki, upstream):
    gateway = remote(allowed_upstream_headers="X-User-Team, X-Id-Role",
                     extra={"headers": {"prefix": "X-Id-"}})
    service.answer(lambda record: (200, [("X-User-Team", "payments"), ("X-User-Team", "ops"),
                                         ("X-Id-Role", "admin"), ("X-Not-Listed", "x")]))
    status, _, _ = _get(gateway, pki, headers=[("X-User-Team", "forged"),
                                               ("X_User_Team", "forged2")])
    assert status == 200
    seen = upstream.last()
    assert headers_of(seen, "X-User-Team") == ["payments", "ops"]
    assert headers_of(seen, "X_User_Team") == []
    assert headers_of(seen, "X-Not-Listed") == []
    # Under [headers] prefix = X-Id- the gateway owns X-Id-*: the service cannot set one.
    assert headers_of(seen, "X-Id-Role") == []
    assert headers_of(seen, "X-Id-CN") == ["alice"]


@pytest.mark.parametrize("authorize", [
    {"policy": "all", "authorizers": "remote, team"},
    {"policy": "any", "authorizers": "both"},  # rule = all(remote, team)
])
def test_under_all_the_services_headers_apply_when_another_authorizer_allows_after_it(
        remote, service, pki, upstream, authorize):
    gateway = remote(allowed_upstream_headers="X-User-Team", extra={
        "authorize": authorize,
        "authorizer:team": {"type": "cn", "allow": "alice"},
        "authorizer:both": {"type": "expr", "rule": "all(remote, team)"}})
    service.answer(lambda record: (200, [("X-User-Team", "ops")]))
    status, _, _ = _get(gateway, pki, headers=[("X-User-Team", "admins-forged")])
    assert status == 200
    assert headers_of(upstream.last(), "X-User-Team") == ["ops"]


def test_a_clients_copy_of_an_allowed_upstream_header_never_passes(remote, service, pki,
                                                                     upstream):
    # The service allows without sending X-User-Team: the application must not see the
    # client's forged copies (in any spelling) as if the service had set them.
    gateway = remote(allowed_upstream_headers="X-User-Team")
    service.answer(lambda record: (200, []))
    status, _, _ = _get(gateway, pki, headers=[("X-User-Team", "forged"),
                                               ("x.user.team", "forged2"), ("X-Other", "kept")])
    assert status == 200
    seen = upstream.last()
    assert headers_of(seen, "X-User-Team") == []
    assert headers_of(seen, "x.user.team") == []
    assert headers_of(seen, "X-Other") == ["kept"]


def test_allowed_upstream_header_with_a_control_character_fails_closed(
        remote, service, pki, upstream):
    gateway = remote(allowed_upstream_headers="X-User")
    service.answer(lambda record: (200, [("X-User", "caf\u00e9")]))
    assert _get(gateway, pki)[2] == b"403 Forbidden: authorizer-unavailable\n"
    assert upstream.requests == []


def _check_config(tmp_path, pki, upstream, **options: str) -> subprocess.CompletedProcess[str]:
    sections = {
        "gateway": {"upstream": upstream.url, "listen": "tcp:0"},
        "tls": {"certificate": str(pki.server.cert), "private_key": str(pki.server.key),
                "client_ca": str(pki.ca)},
        "authorize": {"authorizers": "remote", "timeout": "2"},
        "authorizer:remote": {"type": "http", **options},
    }
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=DEADLINE)


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "http://127.0.0.1:9191/check", "timeout": "2"},
     "[authorizer:remote] timeout = '2': must be below [authorize] timeout (2 s)"),
    ({"url": "ftp://x/check"}, "[authorizer:remote] url = 'ftp://x/check': must be an http://"),
    ({"url": "http://x/", "forward_headers": "X-Client-CN"},
     "forward_headers = 'X-Client-CN': 'X-Client-CN' is a header the gateway writes itself"),
    ({"url": "http://x/", "allowed_upstream_headers": "X_Forwarded_For"},
     "'X_Forwarded_For' is a header the gateway writes itself"),
    ({"url": "http://x/", "allowed_upstream_headers": "Host"}, "gateway writes itself"),
    ({"url": "http://x/", "on_error": "maybe"}, "on_error = 'maybe': must be deny or allow"),
    ({"url": "http://x/", "max_in_flight": "0"}, "max_in_flight = '0': must be an integer"),
    ({"url": "http://x/", "ca": "ca.pem"}, "ca = 'ca.pem': only meaningful for an https:// url"),
])
def test_config_mistakes_are_one_line(tmp_path, pki, upstream, options, message):
    check = _check_config(tmp_path, pki, upstream, **options)
    assert check.returncode == 1
    assert message in check.stderr
    assert check.stderr.count("\n") == 1


def test_https_service_with_the_gateways_client_certificate(start_gateway, pki):
    server = pki.leaf("authz-service", "authz.internal", sans=["dns:authz.internal"],
                      eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(server.cert), str(server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(pki.ca))
    service = AuthService(context)
    client = pki.alice()
    try:
        options = {"type": "http", "url": service.url, "ca": str(pki.ca),
                   "server_name": "authz.internal", "certificate": str(client.cert),
                   "private_key": str(client.key)}
        gateway = start_gateway({"authorize": {"authorizers": "remote"},
                                 "authorizer:remote": options}, drop=("authorizer:team",))
        assert _get(gateway, pki)[0] == 200
        assert service.requests[0]["client_certificate"]["commonName"] == "alice"
        # The name checked is server_name: another name fails closed.
        wrong = start_gateway({"authorize": {"authorizers": "remote"},
                               "authorizer:remote": {**options, "server_name": "other"}},
                              drop=("authorizer:team",))
        assert _get(wrong, pki)[2] == b"403 Forbidden: authorizer-unavailable\n"
        assert len(service.requests) == 1
    finally:
        service.close()


def test_a_section_used_by_two_routes_is_one_authorizer(tmp_path, pki, upstream):
    from gateway.service import validate

    sections = {
        "gateway": {"upstream": upstream.url, "listen": "tcp:0"},
        "tls": {"certificate": str(pki.server.cert), "private_key": str(pki.server.key),
                "client_ca": str(pki.ca)},
        "authorize": {"authorizers": "remote"},
        "authorizer:remote": {"type": "http", "url": "http://127.0.0.1:9/check"},
        "route:api": {"prefix": "/api/", "upstream": upstream.url, "authorizers": "remote"},
    }
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    policies = validate(path).policies
    (default,), (api,) = policies["default"].authorizers, policies["api"].authorizers
    assert default.authorizer is api.authorizer  # one pool, one cache, one max_in_flight


def test_reload_closes_the_old_pool(remote, service, pki):
    gateway = remote()
    assert _get(gateway, pki)[0] == 200
    first = service.requests[0]["peer_port"]
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reloaded configuration")
    # At once, not after the 4 s idle timeout of a pool left behind.
    wait_for(lambda: first in service.closed, "the old pool's connection to close", timeout=2.5)
    assert _get(gateway, pki)[0] == 200
    assert service.requests[1]["peer_port"] != first
