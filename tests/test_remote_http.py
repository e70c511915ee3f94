"""Unit tests for gateway.authz.remote_http (what the http authorizer sends and how it reads the
answer) and the http type's option checks; no reactor."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authz.interfaces import Decision, OptionError
from gateway.authz.registry import BuildContext
from gateway.authz.remote import parse_settings
from gateway.authz.remote_http import (
    cache_key,
    check_headers,
    header_name_problem,
    interpret,
    with_decision_headers,
)
from gateway.authz.testing import identity_from_pem, request_info
from gateway.config import HeaderSettings
from gateway.pki import make_ca, make_leaf, name

CA = make_ca(name("Remote CA"))
ALICE = identity_from_pem(make_leaf(CA, "alice").cert_pem())
BOB = identity_from_pem(make_leaf(CA, "bob").cert_pem())


def _request(**changes: object):  # type: ignore[no-untyped-def]
    import attrs

    base = attrs.evolve(request_info(path="/a", host="app.example"),
                        headers=[(b"X-Tenant", b"t1"), (b"x-tenant", b"t2"), (b"Other", b"o")])
    return attrs.evolve(base, **changes)


def test_check_headers_describe_the_request_and_identity() -> None:
    headers = check_headers(ALICE, _request(), (b"x-tenant",))
    assert headers[:5] == [(b"X-Forwarded-Method", b"GET"), (b"X-Forwarded-Uri", b"/a"),
                           (b"X-Forwarded-Host", b"app.example"),
                           (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-For", b"127.0.0.1")]
    assert (b"X-Client-CN", b"alice") in headers
    assert (b"X-Client-Fingerprint-SHA256", ALICE.fingerprint_sha256.encode()) in headers
    assert headers[-2:] == [(b"X-Tenant", b"t1"), (b"x-tenant", b"t2")]
    assert not any(n == b"X-Client-Cert" for n, _ in headers)
    assert any(n == b"X-Client-Cert" for n, _ in check_headers(ALICE, _request(), (), True))


def test_check_headers_without_certificate_or_host() -> None:
    headers = check_headers(None, _request(host=None), ())
    assert (b"X-Client-Verify", b"NONE") in headers
    assert not any(n == b"X-Forwarded-Host" for n, _ in headers)


def test_check_headers_name_the_scheme_of_a_plain_listener() -> None:
    # a request on a plain (tls = off) listener came over http, as its upstream is told
    headers = check_headers(None, _request(tls=False), ())
    assert (b"X-Forwarded-Proto", b"http") in headers
    assert (b"X-Forwarded-Proto", b"https") not in headers


def test_check_headers_refuse_a_control_byte() -> None:
    with pytest.raises(ValueError):
        check_headers(ALICE, _request(path="/a\r\nX: y"), ())


def test_cache_key_covers_everything_sent() -> None:
    forward = (b"x-tenant",)
    key = cache_key(ALICE, _request(), forward)
    assert key == cache_key(ALICE, _request(headers=[(b"x-TENANT", b"t1"), (b"X-Tenant", b"t2")]),
                            forward)
    others = [
        cache_key(BOB, _request(), forward),
        cache_key(None, _request(), forward),
        cache_key(ALICE, _request(method="POST"), forward),
        cache_key(ALICE, _request(path="/b"), forward),
        cache_key(ALICE, _request(host="other"), forward),
        cache_key(ALICE, _request(client_address="10.0.0.1"), forward),
        cache_key(ALICE, _request(tls=False), forward),
        cache_key(ALICE, _request(headers=[(b"X-Tenant", b"t1")]), forward),
    ]
    assert key not in others
    assert len(set(others)) == len(others)
    # Headers that are not sent are not part of the key.
    assert cache_key(ALICE, _request(headers=[]), ()) == cache_key(ALICE, _request(), ())


@pytest.mark.parametrize(("status", "headers", "expected"), [
    (200, [], Decision.allow("remote-allowed")),
    (204, [(b"X-Authz-Reason", b"ignored")], Decision.allow("remote-allowed")),
    (403, [(b"x-authz-reason", b" team-only ")], Decision.deny("team-only")),
    (401, [(b"X-Authz-Reason", b"Team Only")], Decision.deny("remote-denied")),
    (403, [], Decision.deny("remote-denied")),
    (500, [], "the authorization service answered 500"),
    (404, [], "the authorization service answered 404"),
    (301, [], "the authorization service answered 301"),
])
def test_interpret(status: int, headers: list[tuple[bytes, bytes]], expected: object) -> None:
    assert interpret(status, headers, b"x-authz-reason", frozenset()) == expected


def test_interpret_keeps_allowed_upstream_headers() -> None:
    decision = interpret(200, [(b"X-User", b"alice"), (b"x-user", b"a2"), (b"X-No", b"n")],
                         b"x-authz-reason", frozenset({b"x-user"}))
    assert isinstance(decision, Decision)
    assert decision.upstream_headers == ((b"X-User", b"alice"), (b"x-user", b"a2"))
    problem = interpret(200, [(b"X-User", b"a\tb")], b"x-authz-reason", frozenset({b"x-user"}))
    assert isinstance(problem, str) and "control or non-ASCII" in problem


def test_decision_headers_replace_the_clients_and_never_owned_ones() -> None:
    settings = HeaderSettings(prefix="X-Client-", forward_certificate=False)
    headers = [(b"Host", b"h"), (b"X_User", b"forged"), (b"x-user", b"forged"),
               (b"X-Client-CN", b"alice"), (b"Accept", b"*/*")]
    added = ((b"X-User", b"real"), (b"X-Client-CN", b"mallory"), (b"x.client.cn", b"m"),
             (b"X-Forwarded-For", b"1.2.3.4"), (b"Host", b"evil"))
    assert with_decision_headers(headers, added, settings) == [
        (b"Host", b"h"), (b"X-Client-CN", b"alice"), (b"Accept", b"*/*"), (b"X-User", b"real")]


def test_decision_headers_of_a_plugin_never_frame_or_break_the_upstream_request() -> None:
    # A plugin's Decision.upstream_headers are not checked by interpret(): framing and
    # hop-by-hop names, names that are not tokens and values with CR, LF or other controls
    # would smuggle a request or a header into the upstream connection.
    settings = HeaderSettings(prefix="X-Client-", forward_certificate=False)
    headers = [(b"Host", b"h"), (b"Content-Length", b"5")]
    added = ((b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked"),
             (b"transfer_encoding", b"chunked"), (b"Connection", b"close"),
             (b"X-A", b"ok\r\nX-Injected: 1"), (b"X-B", b"nul\x00"), (b"X-C", b"caf\xc3\xa9"),
             (b"Bad Name", b"v"), (b"X-D:", b"v"), (b"X-E\r\nX-F", b"v"), (b"X-Good", b"yes"))
    assert with_decision_headers(headers, added, settings) == [
        (b"Host", b"h"), (b"Content-Length", b"5"), (b"X-Good", b"yes")]


@pytest.mark.parametrize(("header", "problem"), [
    ("X-Team", None),
    ("Authorization", None),
    ("X-Client-CN", "gateway writes itself"),
    ("x.client.subject", "gateway writes itself"),
    ("X-Forwarded-Uri", "gateway writes itself"),
    ("Forwarded", "gateway writes itself"),
    ("Connection", "gateway writes itself"),
    ("Content-Length", "gateway writes itself"),
    ("Bad Name", "not a header name"),
    ("X-Ümlaut", "not a header name"),
])
def test_header_names(header: str, problem: str | None) -> None:
    found = header_name_problem(header)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_settings_defaults_and_relative_tls_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    settings = parse_settings("r", {"url": "https://auth.example:8443/v1/check?x=1",
                                    "ca": "ca.pem"}, BuildContext(tmp_path, 5.0))
    assert settings.timeout == 1.0
    assert settings.max_in_flight == 64
    assert settings.cache_ttl == 0
    assert not settings.on_error_allow
    assert settings.target == b"/v1/check?x=1"
    assert settings.reason_header == b"x-authz-reason"
    assert settings.upstream.ca == tmp_path / "ca.pem"
    assert (settings.upstream.host, settings.upstream.port) == ("auth.example", 8443)


@pytest.mark.parametrize(("options", "key"), [
    ({}, "url"),
    ({"url": "http://x/", "timeout": "5"}, "timeout"),
    ({"url": "http://x/", "timeout": "0"}, "timeout"),
    ({"url": "http://x/", "cache_ttl": "-1"}, "cache_ttl"),
    ({"url": "https://x/", "certificate": "missing.pem"}, "certificate"),
    ({"url": "http://u:p@x/"}, "url"),
    ({"url": "http://x/", "reason_header": "X-Client-Reason"}, "reason_header"),
    ({"url": "http://x/", "forward_certificate": "maybe"}, "forward_certificate"),
])
def test_settings_refused(tmp_path: Path, options: dict[str, str], key: str) -> None:
    with pytest.raises(OptionError) as caught:
        parse_settings("r", options, BuildContext(tmp_path, 5.0))
    assert caught.value.key == key


def test_timeout_free_when_the_authorize_timeout_is_off(tmp_path: Path) -> None:
    assert parse_settings("r", {"url": "http://x/", "timeout": "30"},
                          BuildContext(tmp_path, 0.0)).timeout == 30
