"""gateway.target: request-target form and ``Host`` checks (RFC 9112 §3.2, RFC 9110 §15.5.20)."""

from __future__ import annotations

import pytest

from gateway.target import check_request, host_name

V11 = b"HTTP/1.1"
V10 = b"HTTP/1.0"
TARGET = (400, "request-target-not-origin-form")
MISSING = (400, "missing-host")
MULTIPLE = (400, "multiple-host-headers")
INVALID = (400, "invalid-host")
MISDIRECTED = (421, "misdirected-request")


CASES = [
    # accepted
    pytest.param(b"/", V11, [b"localhost"], "localhost", None, id="same name"),
    pytest.param(b"/a/b?c=d", V11, [b"localhost"], "localhost", None, id="path and query"),
    pytest.param(b"/", V11, [b"LOCALHOST"], "localhost", None, id="case"),
    pytest.param(b"/", V11, [b"localhost"], "LocalHost", None, id="SNI case"),
    pytest.param(b"/", V11, [b"localhost.:1234"], "localhost", None, id="trailing dot and port"),
    pytest.param(b"/", V11, [b"LOCALHOST.:1234"], "localhost", None, id="all three"),
    pytest.param(b"/", V11, [b"localhost"], "localhost.", None, id="SNI trailing dot"),
    pytest.param(b"/", V11, [b"localhost:0"], "localhost", None, id="port 0"),
    pytest.param(b"/", V11, [b"localhost:65535"], "localhost", None, id="port 65535"),
    pytest.param(b"/", V11, [b"other.example"], None, None, id="no SNI: any valid Host"),
    pytest.param(b"/", V11, [b"[::1]:8443"], None, None, id="IPv6 literal, no SNI"),
    pytest.param(b"/", V11, [b"127.0.0.1"], None, None, id="IPv4, no SNI"),
    pytest.param(b"/", V11, [b"xn--bcher-kva.example"], "xn--bcher-kva.example", None,
                 id="A-label"),
    pytest.param(b"/", V11, [b"a_b.example"], "a_b.example", None, id="underscore"),
    pytest.param(b"/", V10, None, "localhost", None, id="HTTP/1.0 without Host"),
    pytest.param(b"/", V10, [], None, None, id="HTTP/1.0 with empty list"),
    pytest.param(b"/", V10, [b"localhost"], "localhost", None, id="HTTP/1.0 with Host"),
    # request-target form (RFC 9112 §3.2): only origin-form
    pytest.param(b"http://localhost/", V11, [b"localhost"], "localhost", TARGET,
                 id="absolute-form"),
    pytest.param(b"HTTP://localhost/", V11, [b"localhost"], "localhost", TARGET,
                 id="absolute-form upper case"),
    pytest.param(b"localhost:443", V11, [b"localhost"], "localhost", TARGET,
                 id="authority-form"),
    pytest.param(b"*", V11, [b"localhost"], "localhost", TARGET, id="asterisk-form"),
    pytest.param(b"", V11, [b"localhost"], "localhost", TARGET, id="empty target"),
    pytest.param(b"a/b", V11, [b"localhost"], "localhost", TARGET, id="relative path"),
    pytest.param(b"*", V11, None, None, TARGET, id="target checked before Host"),
    # how many Host headers
    pytest.param(b"/", V11, None, "localhost", MISSING, id="HTTP/1.1 without Host"),
    pytest.param(b"/", V11, [], "localhost", MISSING, id="HTTP/1.1 with empty list"),
    pytest.param(b"/", V11, [b"localhost", b"localhost"], "localhost", MULTIPLE,
                 id="two identical"),
    pytest.param(b"/", V11, [b"localhost", b"other"], "localhost", MULTIPLE,
                 id="two different"),
    pytest.param(b"/", V10, [b"a", b"b"], None, MULTIPLE, id="HTTP/1.0 with two"),
    # invalid values (RFC 3986 §3.2.2 uri-host [ ":" port ])
    pytest.param(b"/", V11, [b""], "localhost", INVALID, id="empty"),
    pytest.param(b"/", V11, [b"a b"], None, INVALID, id="space"),
    pytest.param(b"/", V11, [b"a/b"], None, INVALID, id="slash"),
    pytest.param(b"/", V11, [b"a\x01b"], None, INVALID, id="control char"),
    pytest.param(b"/", V11, [b"a\x7fb"], None, INVALID, id="DEL"),
    pytest.param(b"/", V11, [b"a\tb"], None, INVALID, id="tab"),
    pytest.param(b"/", V11, [b"\xc3\xa9.example"], None, INVALID, id="non-ASCII"),
    pytest.param(b"/", V11, [b"user@localhost"], "localhost", INVALID, id="userinfo"),
    pytest.param(b"/", V11, [b"localhost:port"], "localhost", INVALID, id="port not digits"),
    pytest.param(b"/", V11, [b"localhost:123456"], "localhost", INVALID, id="six-digit port"),
    pytest.param(b"/", V11, [b"localhost:65536"], "localhost", INVALID, id="port over 65535"),
    pytest.param(b"/", V11, [b"[::1]:99999"], None, INVALID, id="IPv6 port over 65535"),
    pytest.param(b"/", V11, [b"localhost:1:2"], "localhost", INVALID, id="two ports"),
    pytest.param(b"/", V11, [b"::1"], None, INVALID, id="IPv6 without brackets"),
    pytest.param(b"/", V11, [b"[::1"], None, INVALID, id="unclosed bracket"),
    pytest.param(b"/", V11, [b"[localhost]"], None, INVALID, id="name in brackets"),
    pytest.param(b"/", V11, [b"localhost/"], "localhost", INVALID, id="trailing slash"),
    pytest.param(b"/", V11, [b"localhost?"], "localhost", INVALID, id="question mark"),
    pytest.param(b"/", V11, [b"localhost#"], "localhost", INVALID, id="hash"),
    pytest.param(b"/", V11, [b"local\\host"], "localhost", INVALID, id="backslash"),
    pytest.param(b"/", V11, [b"localhost\r"], "localhost", INVALID, id="trailing CR"),
    pytest.param(b"/", V11, [b"localhost\n"], "localhost", INVALID, id="trailing LF"),
    pytest.param(b"/", V10, [b"a b"], None, INVALID, id="HTTP/1.0 invalid"),
    pytest.param(b"/", V11, [b"a b"], "localhost", INVALID, id="invalid before misdirected"),
    # misdirected (RFC 9110 §15.5.20): Host names another server than the SNI
    pytest.param(b"/", V11, [b"other.example"], "localhost", MISDIRECTED, id="other name"),
    pytest.param(b"/", V11, [b"localhost.evil"], "localhost", MISDIRECTED, id="suffix"),
    pytest.param(b"/", V11, [b"evil.localhost"], "localhost", MISDIRECTED, id="prefix"),
    pytest.param(b"/", V11, [b"127.0.0.1"], "localhost", MISDIRECTED, id="IP for a name"),
    pytest.param(b"/", V11, [b"[::1]:443"], "localhost", MISDIRECTED, id="IPv6 for a name"),
    pytest.param(b"/", V10, [b"other.example"], "localhost", MISDIRECTED, id="HTTP/1.0 other"),
]


@pytest.mark.parametrize(("target", "version", "hosts", "server_name", "expected"), CASES)
def test_check_request(target, version, hosts, server_name, expected):
    assert check_request(target, version, hosts, server_name) == expected


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"localhost", "localhost"),
        (b"LocalHost.:8443", "localhost"),
        (b"[::1]:8443", "::1"),
        (b"[FE80::1]", "fe80::1"),
        (b"127.0.0.1:80", "127.0.0.1"),
        (b"Example.COM.", "example.com"),
    ],
)
def test_host_name_is_lower_case_without_port_or_trailing_dot(host, name):
    assert host_name(host) == name


def test_a_fragment_in_the_target_is_refused():
    assert check_request(b"/admin#/x", b"HTTP/1.1", [b"localhost"], None) == (
        400, "invalid-request-target")


@pytest.mark.parametrize("method", [b"GET /admin HTTP/1.1", b"", b"G(T", b"GET\x00"])
def test_a_method_that_is_not_a_token_is_refused(method):
    assert check_request(b"/", b"HTTP/2", [b"localhost"], None, method) == (400, "invalid-method")
