"""Config keys of the header formats: ``formats``, ``xfcc_mode``, ``xfcc_details``,
``trusted_proxy_sha256``; one-line errors for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_config import CLIENT_CA, changed, config_error, write_config

from gateway.config import load
from gateway.pki import make_leaf

FINGERPRINT = "AB:" * 31 + "AB"


def test_defaults_are_todays_nginx_headers(tmp_path: Path) -> None:
    headers = load(write_config(tmp_path, changed({}))).routes[0].headers
    assert headers.formats == ("nginx",)
    assert headers.xfcc_mode == "sanitize_set"
    assert headers.xfcc_details == ("Subject", "URI", "DNS")
    assert headers.trusted_proxy_sha256 == frozenset()


def test_formats_and_details_are_read_in_any_case_details_in_envoys_order(
        tmp_path: Path) -> None:
    path = write_config(tmp_path, changed({
        ("headers", "formats"): "XFCC, rfc9440, nginx, xfcc",
        ("headers", "xfcc_details"): "dns, Cert, subject"}))
    headers = load(path).routes[0].headers
    assert headers.formats == ("xfcc", "rfc9440", "nginx")
    assert headers.xfcc_details == ("Cert", "Subject", "DNS")


def test_a_route_overrides_formats_and_inherits_the_rest(tmp_path: Path) -> None:
    sections = changed({("headers", "formats"): "nginx, xfcc",
                        ("headers", "xfcc_details"): "URI"})
    sections["route:api"] = {"prefix": "/api/", "upstream": "http://127.0.0.1:8081",
                             "formats": "rfc9440, xfcc", "xfcc_mode": "sanitize"}
    routes = {r.name: r.headers for r in load(write_config(tmp_path, sections)).routes}
    assert routes["default"].formats == ("nginx", "xfcc")
    assert routes["api"].formats == ("rfc9440", "xfcc")
    assert routes["api"].xfcc_mode == "sanitize"
    assert routes["api"].xfcc_details == ("URI",)
    assert routes["default"].xfcc_mode == "sanitize_set"


def test_forwarding_mode_with_trusted_proxies(tmp_path: Path) -> None:
    path = write_config(tmp_path, changed({
        ("headers", "formats"): "xfcc", ("headers", "xfcc_mode"): "append_forward",
        ("gateway", "trusted_proxy_sha256"): f"{FINGERPRINT}, {'0' * 64}"}))
    headers = load(path).routes[0].headers
    assert headers.xfcc_mode == "append_forward"
    assert headers.trusted_proxy_sha256 == frozenset({"ab" * 32, "0" * 64})


def test_xfcc_by_is_the_uri_sans_of_the_gateways_certificate(tmp_path: Path) -> None:
    path = write_config(tmp_path, changed({("headers", "formats"): "xfcc"}))
    server = make_leaf(CLIENT_CA, "gw", sans=[x509.UniformResourceIdentifier("spiffe://a/gw"),
                                               x509.DNSName("gw.example")],
                       eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    server.write(tmp_path / "server.pem", tmp_path / "server.key")
    assert load(path).routes[0].headers.xfcc_by == ("spiffe://a/gw",)


BAD = [
    pytest.param({("headers", "formats"): "nginx, envoy"}, "headers", "formats",
                 "nginx, envoy", "list one or more of nginx, xfcc, rfc9440, traefik",
                 id="unknown-format"),
    pytest.param({("headers", "formats"): "xfcc", ("headers", "xfcc_mode"): "append"},
                 "headers", "xfcc_mode", "append", "must be one of sanitize, sanitize_set",
                 id="unknown-mode"),
    pytest.param({("headers", "formats"): "xfcc", ("headers", "xfcc_details"): "Subject, SAN"},
                 "headers", "xfcc_details", "Subject, SAN", "list any of Cert, Chain, Subject",
                 id="unknown-detail"),
    pytest.param({("headers", "formats"): "xfcc", ("headers", "xfcc_mode"): "forward_only"},
                 "headers", "xfcc_mode", "forward_only", "set trusted_proxy_sha256 in [gateway]",
                 id="forwarding-without-trusted-proxies"),
    pytest.param({("gateway", "trusted_proxy_sha256"): "abcd"}, "gateway",
                 "trusted_proxy_sha256", "abcd", "is not a SHA-256 fingerprint",
                 id="bad-fingerprint"),
]


@pytest.mark.parametrize(("changes", "section", "key", "value", "problem"), BAD)
def test_format_mistakes_are_one_line_errors(tmp_path: Path, changes, section: str, key: str,
                                             value: str, problem: str) -> None:
    path = write_config(tmp_path, changed(changes))
    message = config_error(load, path)
    assert message.startswith(f"{path}: [{section}] {key} = {value!r}: "), message
    assert problem in message


def test_forwarding_mode_in_a_route_names_the_route_section(tmp_path: Path) -> None:
    sections = changed({})
    sections["route:api"] = {"prefix": "/api/", "upstream": "http://127.0.0.1:8081",
                             "formats": "xfcc", "xfcc_mode": "always_forward_only"}
    path = write_config(tmp_path, sections)
    message = config_error(load, path)
    assert message.startswith(
        f"{path}: [route:api] xfcc_mode = 'always_forward_only': "), message
    assert "route 'api'" in message


def test_trusted_proxy_sha256_on_a_plain_listener_is_an_error(tmp_path: Path) -> None:
    sections = changed({})
    sections["listener:egress"] = {"listen": "tcp:8080:interface=127.0.0.1", "tls": "off",
                                   "trusted_proxy_sha256": "0" * 64}
    path = write_config(tmp_path, sections)
    message = config_error(load, path)
    assert "[listener:egress] trusted_proxy_sha256" in message
    assert "only meaningful on a TLS listener" in message


def test_xfcc_keys_in_a_route_without_xfcc_are_an_error(tmp_path: Path) -> None:
    sections = changed({("headers", "xfcc_mode"): "sanitize"})  # a default: fine in [headers]
    sections["route:api"] = {"prefix": "/api/", "upstream": "http://127.0.0.1:8081",
                             "xfcc_details": "Cert"}
    path = write_config(tmp_path, sections)
    message = config_error(load, path)
    assert message.startswith(f"{path}: [route:api] xfcc_details = 'Cert': "), message
    assert "only meaningful with xfcc in the route's formats" in message
