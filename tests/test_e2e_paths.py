"""Path normalisation and denials against the real process: routing, authorization and the
upstream see the same normalised path; escaped_slashes; normalize_path = no; problem+json by
Accept; deny_status = 404 answered exactly as a real no-route 404."""

from __future__ import annotations

import json
import re
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from harness import (
    client_context,
    curl,
    free_port,
    https_request,
    parse_responses,
    raw_exchange,
    raw_exchange_closed,
    wait_for,
)

from gateway.logfmt import clean
from gateway.pki import name


@pytest.fixture(scope="module")
def carol(pki):  # type: ignore[no-untyped-def]
    return pki.leaf("policy-carol", x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
        x509.NameAttribute(NameOID.COMMON_NAME, "carol")]))


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"strict": free_port(), "loose": free_port()}


@pytest.fixture(scope="module")
def gateway(start_gateway, upstream, ports):  # type: ignore[no-untyped-def]
    url = upstream.url
    return start_gateway({
        "authorizer:team": {"type": "cn", "allow": "alice, carol"},
        "authorizer:admins": {"type": "expr", "rule": "all(path(/admin/), subject(OU=ops))"},
        "route:admin": {"prefix": "/admin/", "upstream": url, "authorizers": "admins"},
        "route:api": {"prefix": "/api/", "upstream": url},
        "route:raw": {"prefix": "/raw/", "upstream": url, "normalize_path": "no"},
        "listener:strict": {"listen": f"tcp:{ports['strict']}:interface=127.0.0.1",
                            "escaped_slashes": "reject"},
        "route:strict": {"listener": "strict", "upstream": url},
        "listener:loose": {"listen": f"tcp:{ports['loose']}:interface=127.0.0.1",
                           "escaped_slashes": "unescape"},
        "route:loose": {"listener": "loose", "upstream": url},
    })


def context(pki, files):  # type: ignore[no-untyped-def]
    return client_context(pki.ca, files.cert, files.key)


def access_line(gateway, path: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    marker = f'path="{clean(path)}"'  # as the log writes it: "%" is "%25"
    line = wait_for(lambda: next((x for x in gateway.log().splitlines() if marker in x), None),
                    f"the access line of {path}")
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))


@pytest.mark.parametrize("target", ["/api/../admin/x", "/%61dmin/x", "//admin/x"])
def test_a_path_is_routed_authorized_and_forwarded_normalised(gateway, pki, upstream, carol,  # type: ignore[no-untyped-def]
                                                              target: str) -> None:
    upstream.clear()
    assert https_request(gateway.port, context(pki, carol), path=target)[0] == 200
    assert upstream.last()["path"] == "/admin/x"
    assert access_line(gateway, target)["route"] == "admin"
    # alice passes /api/'s authorizers, but the request is authorized as /admin/x, by admins.
    upstream.clear()
    status, _, body = https_request(gateway.port, context(pki, pki.alice()), path=target)
    assert (status, body) == (403, b"403 Forbidden: subject-not-matched\n")
    assert upstream.requests == []


def test_the_query_is_forwarded_as_sent(gateway, pki, upstream) -> None:  # type: ignore[no-untyped-def]
    upstream.clear()
    target = "/api/./v1/../x?next=/../%61&a=%2F"
    assert https_request(gateway.port, context(pki, pki.alice()), path=target)[0] == 200
    assert upstream.last()["path"] == "/api/x?next=/../%61&a=%2F"


def test_an_encoded_slash_stays_inside_its_segment_by_default(gateway, pki, upstream) -> None:  # type: ignore[no-untyped-def]
    upstream.clear()
    target = "/admin%2F../x"
    assert https_request(gateway.port, context(pki, pki.alice()), path=target)[0] == 200
    assert upstream.last()["path"] == "/admin%2F../x"  # one segment "admin%2F..": not /admin/
    assert access_line(gateway, target)["route"] == "default"


@pytest.mark.parametrize("target", ["/admin%2F../x", "/admin%5c../x", "/admin\\../x"])
def test_escaped_slashes_reject_is_a_400(gateway, pki, upstream, ports, target: str) -> None:  # type: ignore[no-untyped-def]
    upstream.clear()
    status, _, body = https_request(ports["strict"], context(pki, pki.alice()), path=target)
    assert (status, body) == (400, b"400 Bad Request: escaped-slash-in-path\n")
    assert upstream.requests == []


def test_escaped_slashes_unescape_resolves_them(gateway, pki, upstream, ports) -> None:  # type: ignore[no-untyped-def]
    upstream.clear()
    assert https_request(ports["loose"], context(pki, pki.alice()), path="/admin%2F../x")[0] == 200
    assert upstream.last()["path"] == "/x"


def test_a_route_with_normalize_path_no_forwards_the_target_as_sent(gateway, pki,  # type: ignore[no-untyped-def]
                                                                     upstream) -> None:
    upstream.clear()
    target = "/raw/a/../b/%7e//c?q=%61"
    assert https_request(gateway.port, context(pki, pki.alice()), path=target)[0] == 200
    assert upstream.last()["path"] == target
    assert access_line(gateway, target)["route"] == "raw"
    # Selected on the normalised path: /api/../raw/x takes the raw route, and goes up as sent.
    upstream.clear()
    assert https_request(gateway.port, context(pki, pki.alice()), path="/api/../raw/x")[0] == 200
    assert upstream.last()["path"] == "/api/../raw/x"


# -- denials -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hiding(start_gateway, upstream):  # type: ignore[no-untyped-def]
    """No default route: /hidden/ answers a denial as no-route; /open/ with a plain 403."""
    return start_gateway({
        "gateway": {"max_body_size": "10"},
        "route:hidden": {"prefix": "/hidden/", "upstream": upstream.url, "deny_status": "404"},
        "route:open": {"prefix": "/open/", "upstream": upstream.url},
    }, drop=("gateway",))


def raw(gateway, pki, files, request: bytes) -> bytes:  # type: ignore[no-untyped-def]
    return raw_exchange(gateway.port, context(pki, files), request, 5.0)


def test_deny_status_404_is_indistinguishable_from_no_route(hiding, pki, upstream) -> None:  # type: ignore[no-untyped-def]
    upstream.clear()
    requests = [
        b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        b"Connection: close\r\n\r\n",
        b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n"
        b"Connection: close\r\n\r\n" + b"x" * 100,  # over max_body_size: still the same 404
        b"HEAD %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ]
    for request in requests:
        hidden = raw(hiding, pki, pki.bob(), request % b"/hidden/x")
        missing = raw(hiding, pki, pki.bob(), request % b"/nowhere/x")
        # Every response the gateway writes has its own random X-Request-Id: compare the rest.
        hidden, missing = (re.sub(rb"X-Request-Id: [0-9a-f]{32}\r\n", b"", r)
                           for r in (hidden, missing))
        assert hidden == missing, (hidden, missing)
        assert hidden.startswith(b"HTTP/1.1 404 Not Found\r\n")
    (response,), _ = parse_responses(raw(hiding, pki, pki.bob(), requests[0] % b"/hidden/y"))
    assert response.body == b"404 Not Found: no-route\n"
    assert upstream.requests == []
    assert access_line(hiding, "/hidden/y")["reason"] == "no-route"
    assert access_line(hiding, "/nowhere/x")["reason"] == "no-route"
    # Allowed clients are served as usual.
    assert https_request(hiding.port, context(pki, pki.alice()), path="/hidden/z")[0] == 200


@pytest.mark.parametrize(("accept", "json_body"), [
    ("application/json", True),
    ("application/problem+json", True),
    ("text/html, application/json;q=0.9", True),
    ("application/json;q=0", False),
    ("*/*", False),
    (None, False),
])
def test_a_denial_is_problem_json_only_when_json_is_asked_for(hiding, pki, accept: str | None,  # type: ignore[no-untyped-def]
                                                              json_body: bool) -> None:
    headers = [("Accept", accept)] if accept else []
    status, response_headers, body = https_request(
        hiding.port, context(pki, pki.bob()), path="/open/x", headers=headers)
    assert status == 403
    content_type = dict((k.lower(), v) for k, v in response_headers)["content-type"]
    if not json_body:
        assert (content_type, body) == ("text/plain; charset=utf-8",
                                        b"403 Forbidden: cn-not-allowed\n")
        return
    assert content_type == "application/problem+json"
    document = json.loads(body)
    assert {k: document[k] for k in ("type", "title", "status", "reason")} == {
        "type": "about:blank", "title": "Forbidden", "status": 403, "reason": "cn-not-allowed"}
    assert document["detail"].startswith("denied by the gateway: cn-not-allowed")
    if "request_id" in document:  # when the engine assigns request ids
        assert document["request_id"] in document["detail"]
    assert b"bob" not in body  # no certificate field is echoed


def test_no_certificate_field_is_echoed_in_a_denial(hiding, pki) -> None:  # type: ignore[no-untyped-def]
    evil = pki.leaf("policy-evil", name("<script>x</script>", organization_name="Evil"))
    for accept in ("application/json", "text/plain"):
        _, _, body = https_request(hiding.port, context(pki, evil), path="/open/x",
                                   headers=[("Accept", accept)])
        assert b"script" not in body and b"Evil" not in body


def test_http2_requests_are_normalised_and_escaped_slashes_reloads(start_gateway, pki,  # type: ignore[no-untyped-def]
                                                                   upstream, carol) -> None:
    gateway = start_gateway({
        "tls": {"http2": "yes"},
        "authorizer:team": {"type": "cn", "allow": "alice, carol"},
        "authorizer:admins": {"type": "expr", "rule": "all(path(/admin/), subject(OU=ops))"},
        "route:admin": {"prefix": "/admin/", "upstream": upstream.url, "authorizers": "admins"},
    })

    def h2(files, path: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        result = curl("--cacert", str(pki.ca), "--cert", str(files.cert), "--key",
                      str(files.key), "--http2", "--path-as-is", "-o", "/dev/null",
                      "-w", "%{http_code} %{http_version}", f"{gateway.url}{path}")
        code, version = result.stdout.split()
        return int(code), version

    upstream.clear()
    assert h2(carol, "/api/../admin/x") == (200, "2")
    assert upstream.last()["path"] == "/admin/x"
    assert h2(pki.alice(), "/api/../admin/x") == (403, "2")
    # escaped_slashes follows a reload (the listener stays as it is).
    assert h2(pki.alice(), "/a%2Fb") == (200, "2")
    gateway.config.write_text(gateway.config.read_text().replace(
        "[gateway]\n", "[gateway]\nescaped_slashes = reject\n", 1))
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reloaded configuration")
    wait_for(lambda: h2(pki.alice(), "/a%2Fb") == (400, "2"), "the reload to reject %2F")
    assert "reload refused" not in gateway.log()


class _Refusing(BaseHTTPRequestHandler):
    """An authorization service that refuses every check (403, no reason)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_hidden_route_keeps_the_connection_as_a_real_no_route_does(start_gateway, pki,  # type: ignore[no-untyped-def]
                                                                     upstream) -> None:
    # A denial decided later (an http authorizer) and one decided at once (cn), both behind
    # deny_status = 404, answer pipelined keep-alive requests byte for byte as a path no
    # route takes: both requests answered, the connection kept open (no early close that
    # gives the route away, and no request dropped without "Connection: close").
    service = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        gateway = start_gateway({
            "authorizer:central": {"type": "http", "timeout": "2",
                                   "url": f"http://127.0.0.1:{service.server_port}/check"},
            "route:remote": {"prefix": "/remote/", "upstream": upstream.url,
                             "authorizers": "central", "deny_status": "404"},
            "route:hidden": {"prefix": "/hidden/", "upstream": upstream.url,
                             "deny_status": "404"},
        }, drop=("gateway",))
        pipelined = b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2

        def exchange(path: bytes) -> tuple[bytes, bool]:
            data, closed = raw_exchange_closed(
                gateway.port, context(pki, pki.bob()), pipelined.replace(b"%s", path), 1.5)
            # Every response has its own random X-Request-Id: compare the rest.
            return re.sub(rb"X-Request-Id: [0-9a-f]{32}\r\n", b"", data), closed

        missing, missing_closed = exchange(b"/nowhere/x")
        assert missing.count(b"HTTP/1.1 404 Not Found\r\n") == 2, missing
        assert not missing_closed
        for path in (b"/remote/x", b"/hidden/x"):
            assert exchange(path) == (missing, missing_closed), path
        assert upstream.requests == [] or all(
            not r["path"].startswith(("/remote/", "/hidden/")) for r in upstream.requests)
    finally:
        service.shutdown()
        service.server_close()
