"""The header formats through the real process: xfcc, rfc9440, traefik and nginx per route, the
stripping of forged format headers in every spelling on every route, the XFCC modes (forwarding
only from a trusted proxy's certificate), RFC 9440's Vary rewrite, and no Client-Cert without a
client certificate."""

from __future__ import annotations

import base64
import hashlib
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_sf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import (
    DEADLINE,
    client_context,
    curl,
    free_port,
    headers_of,
    https_request,
    refused_start,
)
from test_formats import parse_xfcc

FORMAT_HEADERS = ["X-Forwarded-Client-Cert", "Client-Cert", "Client-Cert-Chain",
                  "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info"]


def spellings(name: str) -> list[str]:
    return [name, name.lower(), name.upper(), name.replace("-", "_"), name.replace("-", ".")]


FORGED = [(spelled, "forged") for name in FORMAT_HEADERS for spelled in spellings(name)]


class _VaryHandler(BaseHTTPRequestHandler):
    """Answers every request with the ``Vary`` values given as ``?vary=`` (repeatable)."""

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        body = b"ok"
        self.send_response(200)
        for value in query.get("vary", []):
            self.send_header("Vary", value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def vary_upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VaryHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(start_gateway, upstream, vary_upstream):
    plain_port = free_port()
    gateway = start_gateway({
        "headers": {"formats": "nginx, xfcc, rfc9440, traefik",
                    "xfcc_details": "Cert, Chain, Subject, URI, DNS"},
        "listener:plain": {"listen": f"tcp:{plain_port}:interface=127.0.0.1", "tls": "off"},
        "route:xfcc": {"prefix": "/xfcc/", "upstream": upstream.url, "formats": "xfcc",
                       "xfcc_details": "Subject, DNS"},
        "route:rfc": {"prefix": "/rfc/", "upstream": upstream.url, "formats": "rfc9440"},
        "route:traefik": {"prefix": "/traefik/", "upstream": upstream.url,
                          "formats": "traefik"},
        "route:nginx": {"prefix": "/nginx/", "upstream": upstream.url, "formats": "nginx"},
        "route:vary": {"prefix": "/vary", "upstream": vary_upstream, "formats": "rfc9440"},
        "route:vary-nginx": {"prefix": "/nginx-vary", "upstream": vary_upstream,
                             "formats": "nginx"},
        "route:plain": {"listener": "plain", "prefix": "/", "upstream": upstream.url},
    })
    gateway.plain_port = plain_port
    return gateway


def _get(gateway, files, path, headers=None):
    context = client_context(files.cert.parent / "ca.pem", files.cert, files.key)
    return https_request(gateway.port, context, path=path, headers=headers)


def _der(files) -> list[bytes]:
    return [c.public_bytes(Encoding.DER)
            for c in x509.load_pem_x509_certificates(files.cert.read_bytes())]


def test_every_format_on_the_default_route_for_a_client_that_sent_its_intermediate(
        gateway, pki, upstream):
    client = pki.via_intermediate(send_chain=True)
    leaf, intermediate = _der(client)
    upstream.clear()
    assert _get(gateway, client, "/all", FORGED)[0] == 200
    seen = upstream.last()
    # nginx, as before
    assert headers_of(seen, "X-Client-Verify") == ["SUCCESS"]
    assert headers_of(seen, "X-Client-CN") == ["alice"]
    # xfcc: one element, parsed back element by element
    [xfcc] = headers_of(seen, "X-Forwarded-Client-Cert")
    [pairs] = parse_xfcc(xfcc)
    values = dict(pairs)
    assert [k for k, _ in pairs] == ["Hash", "Cert", "Chain", "Subject", "URI"]
    assert values["Hash"] == hashlib.sha256(leaf).hexdigest()
    pem = x509.load_der_x509_certificate(leaf).public_bytes(Encoding.PEM).decode()
    pem_chain = pem + x509.load_der_x509_certificate(intermediate).public_bytes(
        Encoding.PEM).decode()
    assert urllib.parse.unquote(values["Cert"]) == pem
    assert urllib.parse.unquote(values["Chain"]) == pem_chain
    assert values["Subject"] == "CN=alice"
    assert values["URI"] == ""
    # rfc9440: the leaf, and the intermediate the client sent
    [cert] = headers_of(seen, "Client-Cert")
    assert http_sf.parse(cert.encode(), tltype="item") == (leaf, {})
    [chain] = headers_of(seen, "Client-Cert-Chain")
    assert http_sf.parse(chain.encode(), tltype="list") == [(intermediate, {})]
    # traefik: both certificates the client sent
    [tcert] = headers_of(seen, "X-Forwarded-Tls-Client-Cert")
    assert tcert.split(",") == [base64.b64encode(d).decode() for d in (leaf, intermediate)]
    [info] = headers_of(seen, "X-Forwarded-Tls-Client-Cert-Info")
    first, second = urllib.parse.unquote_plus(info).split(',Subject="')
    assert first.startswith('Subject="CN=alice";Issuer="CN=mtlsgw test intermediate";')
    assert second.startswith('CN=mtlsgw test intermediate";Issuer="O=mtlsgw tests,'
                             'CN=mtlsgw test root";')
    # nothing the client forged reached the upstream, in any spelling
    assert [v for _, v in seen["headers"] if v == "forged"] == []


def test_per_route_formats_write_only_their_headers(gateway, pki, upstream):
    alice = pki.alice()
    expected = {
        "/xfcc/x": {"X-Forwarded-Client-Cert"},
        # Python's ssl (OpenSSL) sends the root from its trust store after a lone leaf.
        "/rfc/x": {"Client-Cert", "Client-Cert-Chain"},
        "/traefik/x": {"X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info"},
        "/nginx/x": set(),
    }
    for path, present in expected.items():
        upstream.clear()
        assert _get(gateway, alice, path, FORGED)[0] == 200, path
        seen = upstream.last()
        names = {k.lower() for k, _ in seen["headers"]}
        assert {n.lower() for n in present} == names & {n.lower() for n in FORMAT_HEADERS}, path
        assert [v for _, v in seen["headers"] if v == "forged"] == [], path
        assert ("x-client-verify" in names) == (path == "/nginx/x"), path
    [chain] = headers_of(_last_for(gateway, pki, upstream, "/rfc/y"), "Client-Cert-Chain")
    root = pki.root.certificate.public_bytes(Encoding.DER)
    assert http_sf.parse(chain.encode(), tltype="list") == [(root, {})]
    [xfcc] = headers_of(_last_for(gateway, pki, upstream, "/xfcc/y"), "X-Forwarded-Client-Cert")
    fingerprint = hashlib.sha256(_der(alice)[0]).hexdigest()
    assert xfcc == f'Hash={fingerprint};Subject="CN=alice,C=DE,O=Example\\, Inc."'


def _last_for(gateway, pki, upstream, path):
    upstream.clear()
    assert _get(gateway, pki.alice(), path)[0] == 200
    return upstream.last()


def test_plain_listener_writes_no_format_header_and_strips_forged_ones(gateway, upstream):
    upstream.clear()
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.plain_port}/p")
    for name, value in FORGED:
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=DEADLINE) as response:
        assert response.status == 200
    seen = upstream.last()
    names = {k.lower() for k, _ in seen["headers"]}
    assert not names & {n.lower() for n in FORMAT_HEADERS}
    assert [v for _, v in seen["headers"] if v == "forged"] == []


@pytest.mark.parametrize(("vary", "expected"), [
    (["Accept, Client-Cert"], ["*"]),
    (["Accept-Encoding", "client-cert-chain"], ["*"]),
    (["Accept-Encoding"], ["Accept-Encoding"]),
])
def test_vary_naming_client_cert_is_rewritten_on_rfc9440_routes(gateway, pki, vary, expected):
    query = urllib.parse.urlencode([("vary", v) for v in vary])
    status, headers, _ = _get(gateway, pki.alice(), f"/vary?{query}")
    assert status == 200
    assert [v for k, v in headers if k.lower() == "vary"] == expected


def test_vary_is_untouched_on_a_route_without_rfc9440(gateway, pki):
    status, headers, _ = _get(gateway, pki.alice(), "/nginx-vary?vary=Client-Cert")
    assert status == 200
    assert [v for k, v in headers if k.lower() == "vary"] == ["Client-Cert"]


# -- XFCC forwarding from trusted proxies ---------------------------------------------------------


@pytest.fixture(scope="module")
def forwarding(start_gateway, pki, upstream):
    proxy = pki.bob()
    fingerprint = hashlib.sha256(_der(proxy)[0]).hexdigest()
    return start_gateway({
        "gateway": {"trusted_proxy_sha256": fingerprint},
        "authorizer:team": {"type": "cn", "allow": "alice, bob"},
        "headers": {"formats": "xfcc", "xfcc_mode": "append_forward",
                    "xfcc_details": "Subject"},
        "route:forward": {"prefix": "/forward/", "upstream": upstream.url,
                          "xfcc_mode": "forward_only"},
        "route:always": {"prefix": "/always/", "upstream": upstream.url,
                         "xfcc_mode": "always_forward_only"},
        "route:sanitize": {"prefix": "/sanitize/", "upstream": upstream.url,
                           "xfcc_mode": "sanitize"},
        "route:set": {"prefix": "/set/", "upstream": upstream.url, "xfcc_mode": "sanitize_set"},
    })


FROM_PROXY = [("X-Forwarded-Client-Cert", 'Hash=aa;Subject="CN=edge client"'),
              ("X_Forwarded_Client_Cert", "Hash=bb")]


def _xfcc_for(gateway, files, path, upstream):
    upstream.clear()
    assert _get(gateway, files, path, FROM_PROXY)[0] == 200
    seen = upstream.last()
    assert headers_of(seen, "X_Forwarded_Client_Cert") == []  # never kept in that spelling
    return headers_of(seen, "X-Forwarded-Client-Cert")


def test_append_forward_keeps_a_trusted_proxys_xfcc_and_appends_its_own(forwarding, pki,
                                                                        upstream):
    bob = hashlib.sha256(_der(pki.bob())[0]).hexdigest()
    [value] = _xfcc_for(forwarding, pki.bob(), "/x", upstream)
    assert value == f'Hash=aa;Subject="CN=edge client",Hash={bob};Subject="CN=bob"'
    assert [dict(e)["Subject"] for e in parse_xfcc(value)] == ["CN=edge client", "CN=bob"]


def test_append_forward_drops_an_untrusted_clients_xfcc(forwarding, pki, upstream):
    alice = hashlib.sha256(_der(pki.alice())[0]).hexdigest()
    assert _xfcc_for(forwarding, pki.alice(), "/x", upstream) == [
        f'Hash={alice};Subject="CN=alice,C=DE,O=Example\\, Inc."']


@pytest.mark.parametrize("path", ["/forward/x", "/always/x"])
def test_forward_only_modes_forward_only_a_trusted_proxys_xfcc(forwarding, pki, upstream, path):
    assert _xfcc_for(forwarding, pki.bob(), path, upstream) == [
        'Hash=aa;Subject="CN=edge client"']
    assert _xfcc_for(forwarding, pki.alice(), path, upstream) == []


def test_sanitize_and_sanitize_set_never_forward(forwarding, pki, upstream):
    assert _xfcc_for(forwarding, pki.bob(), "/sanitize/x", upstream) == []
    bob = hashlib.sha256(_der(pki.bob())[0]).hexdigest()
    assert _xfcc_for(forwarding, pki.bob(), "/set/x", upstream) == [
        f'Hash={bob};Subject="CN=bob"']


def test_forwarding_mode_without_trusted_proxies_stops_the_start(tmp_path, pki, upstream):
    from conftest import base_sections
    from harness import render_ini

    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = f"tcp:{free_port()}:interface=127.0.0.1"
    sections["headers"] = {"formats": "xfcc", "xfcc_mode": "append_forward"}
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    line = refused_start(path)
    assert line.startswith(f"mtlsgw: {path}: [headers] xfcc_mode = 'append_forward': ")
    assert "trusted_proxy_sha256" in line



# -- HTTP/2 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http2_gateway(start_gateway, upstream, vary_upstream):
    return start_gateway({
        "tls": {"http2": "yes"},
        "headers": {"formats": "nginx, xfcc, rfc9440, traefik", "xfcc_details": "Chain"},
        "route:vary": {"prefix": "/vary", "upstream": vary_upstream, "formats": "rfc9440"},
    })


def test_http2_writes_the_same_format_headers_as_http11(http2_gateway, pki, upstream):
    client = pki.via_intermediate(send_chain=True)
    seen = {}
    for flag in ("--http2", "--http1.1"):
        forged = [arg for name in FORMAT_HEADERS for arg in ("-H", f"{name.lower()}: forged")]
        result = curl("--cacert", str(pki.ca), "--cert", str(client.cert), "--key",
                      str(client.key), flag, "-w", "\n%{http_version}",
                      f"{http2_gateway.url}/h2", *forged)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rsplit("\n", 1)[1] == ("2" if flag == "--http2" else "1.1")
        record = upstream.last()
        seen[flag] = {k.lower(): v for k, v in record["headers"]
                      if k.lower() in {n.lower() for n in FORMAT_HEADERS}}
    assert seen["--http2"] == seen["--http1.1"]
    assert set(seen["--http2"]) == {n.lower() for n in FORMAT_HEADERS}
    assert "forged" not in seen["--http2"].values()
    intermediate = _der(client)[1]
    assert http_sf.parse(seen["--http2"]["client-cert-chain"].encode(), tltype="list") == [
        (intermediate, {})]
    result = curl("--cacert", str(pki.ca), "--cert", str(client.cert), "--key", str(client.key),
                  "--http2", "-D", "-", "-o", "/dev/null",
                  f"{http2_gateway.url}/vary?vary=Client-Cert")
    assert result.returncode == 0, result.stderr
    assert [line.split(":", 1)[1].strip() for line in result.stdout.splitlines()
            if line.lower().startswith("vary:")] == ["*"]
