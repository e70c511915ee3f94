"""Unit tests for gateway.headers: which headers the gateway owns and how identity is written.

Pure functions over ``(name, value)`` byte pairs; certificates come from gateway.pki.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from urllib.parse import quote, unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.config import HeaderSettings
from gateway.headers import (
    escape_value,
    identity_values,
    is_owned,
    normalize_name,
    upstream_request_headers,
)
from gateway.identity import ClientIdentity
from gateway.pki import make_ca, make_leaf, name

DEFAULT = HeaderSettings(prefix="X-Client-", forward_certificate=False)
WITH_CERT = HeaderSettings(prefix="X-Client-", forward_certificate=True)
NOT_BEFORE = datetime.datetime(2026, 1, 31, 12, 0, 0, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2027, 2, 1, 8, 30, 5, tzinfo=datetime.UTC)
CA = make_ca(name("Test CA", organization_name="Example"))


def identity_of(
    subject: x509.Name | str | None, sans: Sequence[str] = (), **kwargs: object
) -> ClientIdentity:
    leaf = make_leaf(CA, subject, sans=sans, **kwargs)
    return ClientIdentity.from_certificate(leaf.certificate)


def as_dict(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    names = [n for n, _ in headers]
    assert len(names) == len(set(names)), f"repeated identity header in {names}"
    return dict(headers)


def is_printable_ascii(value: bytes) -> bool:
    return all(0x20 <= byte <= 0x7E for byte in value)


# --------------------------------------------------------------------------
# escape_value
# --------------------------------------------------------------------------

ESCAPE_CASES = [
    pytest.param("alice", "alice", id="plain-kept"),
    pytest.param("a b", "a b", id="inner-space-kept"),
    pytest.param(" a", "%20a", id="leading-space"),
    pytest.param("a ", "a%20", id="trailing-space"),
    pytest.param(" ", "%20", id="lone-space"),
    pytest.param("  a  ", "%20 a %20", id="only-edge-spaces-escaped"),
    pytest.param("100%", "100%25", id="percent"),
    pytest.param("%41", "%2541", id="percent-not-decoded-again"),
    pytest.param("Doe, Jane", "Doe%2C Jane", id="comma"),
    pytest.param("Zoë", "Zo%C3%AB", id="non-ascii-utf8"),
    pytest.param("日本", "%E6%97%A5%E6%9C%AC", id="cjk-utf8"),
    pytest.param("a\x00b", "a%00b", id="nul"),
    pytest.param("a\r\nb", "a%0D%0Ab", id="cr-lf"),
    pytest.param("a\tb", "a%09b", id="tab"),
    pytest.param("a\x7fb", "a%7Fb", id="del"),
    pytest.param("a\x85b", "a%C2%85b", id="c1-control"),
    pytest.param("a\u2028b", "a%E2%80%A8b", id="unicode-line-separator"),
    pytest.param('"<x>";\\=+#', '"<x>";\\=+#', id="other-punctuation-kept"),
    pytest.param("", "", id="empty"),
]


@pytest.mark.parametrize(("text", "expected"), ESCAPE_CASES)
def test_escape_value_escapes_exactly_the_documented_bytes(text: str, expected: str) -> None:
    assert escape_value(text) == expected


@pytest.mark.parametrize(("text", "expected"), ESCAPE_CASES)
def test_escape_value_round_trips_through_unquote(text: str, expected: str) -> None:
    assert unquote(escape_value(text), encoding="utf-8", errors="strict") == text


def test_escape_value_keeps_every_printable_ascii_character_but_percent_and_comma() -> None:
    printable = "".join(chr(c) for c in range(0x21, 0x7F))
    assert escape_value(printable) == printable.replace("%", "%25").replace(",", "%2C")


def test_escape_value_uses_uppercase_hex() -> None:
    assert escape_value("\xff") == "%C3%BF"


# --------------------------------------------------------------------------
# ownership
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        (b"X-Client-CN", b"x-client-cn"),
        (b"x-client-cn", b"x-client-cn"),
        (b"X_CLIENT_CN", b"x-client-cn"),
        (b"x.client.cn", b"x-client-cn"),
        (b"X_Client.Cn", b"x-client-cn"),
        (b"Forwarded", b"forwarded"),
    ],
)
def test_normalize_name_lowercases_and_reads_underscore_and_dot_as_dash(
    name: bytes, normalized: bytes
) -> None:
    assert normalize_name(name) == normalized


OWNED = [
    b"X-Client-CN",
    b"x-client-cn",
    b"X_CLIENT_CN",
    b"x.client.cn",
    b"X-CLIENT-Verify",
    b"X-Client-Anything-Else",
    b"X-Forwarded-For",
    b"x_forwarded_for",
    b"X.Forwarded.Proto",
    b"X-Forwarded-Host",
    b"Forwarded",
    b"FORWARDED",
]
NOT_OWNED = [
    b"Host",
    b"X-Client",  # the prefix is "X-Client-", dash included
    b"X-ClientCN",
    b"X-Forwarded-Port",
    b"X-Real-IP",
    b"Authorization",
]


@pytest.mark.parametrize("name", OWNED)
def test_is_owned_for_every_spelling_of_an_owned_header(name: bytes) -> None:
    assert is_owned(name, DEFAULT)


@pytest.mark.parametrize("name", NOT_OWNED)
def test_is_owned_leaves_other_headers_to_the_client(name: bytes) -> None:
    assert not is_owned(name, DEFAULT)


@pytest.mark.parametrize(
    ("name", "owned"),
    [(b"X-SSL-CN", True), (b"x_ssl_cn", True), (b"X-Client-CN", False), (b"Forwarded", True)],
)
def test_is_owned_follows_the_configured_prefix(name: bytes, owned: bool) -> None:
    settings = HeaderSettings(prefix="X-SSL-", forward_certificate=False)
    assert is_owned(name, settings) is owned


# --------------------------------------------------------------------------
# upstream_request_headers
# --------------------------------------------------------------------------

def upstream(client_headers: list[tuple[bytes, bytes]], host: bytes | None = b"api.example"):
    return upstream_request_headers(client_headers, None, DEFAULT, "192.0.2.7", host)


def client_part(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers before the gateway's own (identity and X-Forwarded-*)."""
    return [(n, v) for n, v in headers if not is_owned(n, DEFAULT)]


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"Proxy-Authenticate",
        b"Proxy-Authorization",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Content-Length",
        b"Expect",
        b"transfer-encoding",
    ],
)
def test_upstream_request_headers_remove_hop_by_hop_and_framing_headers(name: bytes) -> None:
    headers = upstream([(b"Accept", b"*/*"), (name, b"x")])
    assert client_part(headers) == [(b"Accept", b"*/*")]


def test_upstream_request_headers_remove_headers_named_in_connection() -> None:
    headers = upstream([
        (b"Connection", b"keep-alive, X-Secret ,x-other"),
        (b"connection", b"X-Third"),
        (b"x-secret", b"1"),
        (b"X-Other", b"2"),
        (b"X-THIRD", b"3"),
        (b"X-Kept", b"4"),
    ])
    assert client_part(headers) == [(b"X-Kept", b"4")]


def test_upstream_request_headers_keep_repeated_headers_with_all_values_in_order() -> None:
    client = [
        (b"Accept", b"text/html"),
        (b"Cookie", b"a=1"),
        (b"X-Trace", b"one"),
        (b"Cookie", b"b=2"),
        (b"X-Trace", b"two"),
    ]
    assert client_part(upstream(client)) == client


def test_upstream_request_headers_keep_host() -> None:
    assert (b"Host", b"api.example") in upstream([(b"Host", b"api.example")])


@pytest.mark.parametrize("name", OWNED)
def test_upstream_request_headers_drop_client_copies_of_owned_headers(name: bytes) -> None:
    headers = upstream([(name, b"forged")])
    assert b"forged" not in [v for _, v in headers]


def test_upstream_request_headers_append_x_forwarded_headers() -> None:
    headers = upstream([(b"Host", b"api.example")], host=b"api.example")
    assert headers[-3:] == [
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"api.example"),
    ]


def test_upstream_request_headers_leave_out_x_forwarded_host_without_a_host() -> None:
    headers = upstream([], host=None)
    assert [n for n, _ in headers if n.startswith(b"X-Forwarded-")] == [
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
    ]


def test_upstream_request_headers_put_identity_after_client_headers() -> None:
    headers = upstream_request_headers(
        [(b"Accept", b"*/*")], identity_of("alice"), DEFAULT, "192.0.2.7", None)
    assert headers[0] == (b"Accept", b"*/*")
    assert headers[1] == (b"X-Client-Verify", b"SUCCESS")
    assert (b"X-Client-CN", b"alice") in headers


# --------------------------------------------------------------------------
# identity_values
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_identity() -> ClientIdentity:
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
    ])
    return identity_of(
        subject,
        sans=[
            "dns:alice.example", "dns:a2.example", "uri:spiffe://td/alice",
            "email:alice@example.com", "ip:192.0.2.1", "ip:2001:db8::1",
        ],
        serial=0xABCDEF,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )


def test_identity_values_with_the_default_prefix(full_identity: ClientIdentity) -> None:
    assert list(identity_values(full_identity, DEFAULT)) == [
        (b"X-Client-Verify", b"SUCCESS"),
        (b"X-Client-Subject", b"CN=alice,O=Example"),
        (b"X-Client-Issuer", b"CN=Test CA,O=Example"),
        (b"X-Client-CN", b"alice"),
        (b"X-Client-Serial", b"ABCDEF"),
        (b"X-Client-Fingerprint-SHA256", full_identity.fingerprint_sha256.encode()),
        (b"X-Client-SAN-DNS", b"alice.example,a2.example"),
        (b"X-Client-SAN-URI", b"spiffe://td/alice"),
        (b"X-Client-SAN-Email", b"alice@example.com"),
        (b"X-Client-SAN-IP", b"192.0.2.1,2001:db8::1"),
        (b"X-Client-Not-Before", b"2026-01-31T12:00:00Z"),
        (b"X-Client-Not-After", b"2027-02-01T08:30:05Z"),
    ]


def test_identity_values_fingerprint_is_lowercase_sha256_of_der(
    full_identity: ClientIdentity,
) -> None:
    der = full_identity.certificate.public_bytes(Encoding.DER)
    value = as_dict(identity_values(full_identity, DEFAULT))[b"X-Client-Fingerprint-SHA256"]
    assert value == hashlib.sha256(der).hexdigest().encode()
    assert value == value.lower()


def test_identity_values_serial_is_uppercase_hex() -> None:
    identity = identity_of("alice", serial=0xDEADBEEF01)
    assert as_dict(identity_values(identity, DEFAULT))[b"X-Client-Serial"] == b"DEADBEEF01"


def test_identity_values_use_the_configured_prefix(full_identity: ClientIdentity) -> None:
    settings = HeaderSettings(prefix="X-SSL-", forward_certificate=False)
    names = [n for n, _ in identity_values(full_identity, settings)]
    assert names[0] == b"X-SSL-Verify"
    assert all(n.startswith(b"X-SSL-") for n in names)


def test_identity_values_leave_out_empty_san_headers() -> None:
    names = as_dict(identity_values(identity_of("alice"), DEFAULT))
    assert not any(n.startswith(b"X-Client-SAN-") for n in names)


def test_identity_values_cert_only_when_forward_certificate_is_on(
    full_identity: ClientIdentity,
) -> None:
    assert b"X-Client-Cert" not in as_dict(identity_values(full_identity, DEFAULT))
    headers = identity_values(full_identity, WITH_CERT)
    assert headers[-1][0] == b"X-Client-Cert"


def test_identity_values_cert_is_url_escaped_pem_like_nginx(
    full_identity: ClientIdentity,
) -> None:
    value = as_dict(identity_values(full_identity, WITH_CERT))[b"X-Client-Cert"]
    pem = full_identity.certificate.public_bytes(Encoding.PEM).decode("ascii")
    assert value == quote(pem, safe="").encode("ascii")
    assert unquote(value.decode("ascii")) == pem
    assert value.startswith(b"-----BEGIN%20CERTIFICATE-----%0A")


def test_identity_values_without_a_certificate_is_only_verify_none() -> None:
    assert identity_values(None, WITH_CERT) == ((b"X-Client-Verify", b"NONE"),)


def test_identity_values_escape_san_lists_and_keep_them_splittable() -> None:
    identity = identity_of(
        None, sans=["dns:a,b.example", "dns:c.example", "email:x,y@example.com",
                    "uri:spiffe://td/a,b%20c", "uri:spiffe://td/d"])
    values = as_dict(identity_values(identity, DEFAULT))
    assert values[b"X-Client-SAN-DNS"] == b"a%2Cb.example,c.example"
    assert values[b"X-Client-SAN-Email"] == b"x%2Cy@example.com"
    assert values[b"X-Client-SAN-URI"] == b"spiffe://td/a%2Cb%2520c,spiffe://td/d"
    decoded = [unquote(item) for item in values[b"X-Client-SAN-URI"].decode().split(",")]
    assert decoded == ["spiffe://td/a,b%20c", "spiffe://td/d"]


def test_identity_values_escape_several_cns_and_non_ascii_cn() -> None:
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "Zoë, \"Z\""),
        x509.NameAttribute(NameOID.COMMON_NAME, " bob "),
    ])
    values = as_dict(identity_values(identity_of(subject), DEFAULT))
    assert values[b"X-Client-CN"] == b"Zo%C3%AB%2C \"Z\",%20bob%20"
    assert values[b"X-Client-Subject"] == b'CN=\\ bob\\ ,CN=Zo\\C3\\AB\\, \\"Z\\"'


HOSTILE_SUBJECTS = [
    pytest.param("Zoë 日本", id="non-ascii-cn"),
    pytest.param("a,b,c", id="commas-in-cn"),
    pytest.param("100% \u2028 \ufeff", id="percent-and-unicode-separators"),
    pytest.param(" edge ", id="edge-spaces"),
    pytest.param('"quoted"; <tag> \\ +#=', id="dn-special-characters"),
]


@pytest.mark.parametrize("cn", HOSTILE_SUBJECTS)
@pytest.mark.parametrize("settings", [DEFAULT, WITH_CERT], ids=["plain", "with-cert"])
def test_identity_values_are_printable_ascii_for_hostile_certificates(
    cn: str, settings: HeaderSettings
) -> None:
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cn),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])
    issuer = make_ca(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    leaf = make_leaf(issuer, subject, sans=[
        f"dns:{cn.encode('ascii', 'replace').decode()}.example",
        "uri:spiffe://td/%C3%A9,x",  # IA5String: cryptography refuses non-ASCII
        "email:a,b@example.com",
        "dns:x,y",
    ])
    identity = ClientIdentity.from_certificate(leaf.certificate)
    for header_name, value in identity_values(identity, settings):
        assert is_printable_ascii(header_name), header_name
        assert is_printable_ascii(value), (header_name, value)
        assert b"\r" not in value and b"\n" not in value
    cn_value = as_dict(identity_values(identity, settings))[b"X-Client-CN"]
    assert unquote(cn_value.decode("ascii")) == cn


# --------------------------------------------------------------------------
# issue 8: empty list items, a trailing escaped space in a DN
# --------------------------------------------------------------------------


def test_a_lone_empty_cn_is_sent_as_an_empty_header_not_left_out() -> None:
    import attrs as _attrs

    identity = _attrs.evolve(identity_of("alice"), common_names=("",), dns_names=("",))
    values = as_dict(identity_values(identity, DEFAULT))
    assert values[b"X-Client-CN"] == b""
    assert values[b"X-Client-SAN-DNS"] == b""
    assert b"X-Client-SAN-URI" not in values  # no URI SAN at all: still left out


@pytest.mark.parametrize(
    ("dn", "header"),
    [
        pytest.param("CN=x\\ ", "CN=x\\20", id="trailing-escaped-space"),
        pytest.param("CN=\\ ", "CN=\\20", id="lone-space"),
        pytest.param("CN=x\\\\\\ ", "CN=x\\\\\\20", id="escaped-backslash-then-space"),
        pytest.param("CN=x\\ ,O=y", "CN=x\\ ,O=y", id="inner-rdn-kept"),
        pytest.param("CN=x", "CN=x", id="plain"),
    ],
)
def test_a_dn_ending_in_an_escaped_space_ends_in_backslash_20(dn: str, header: str) -> None:
    import attrs as _attrs

    from gateway.headers import dn_header_value

    assert dn_header_value(dn) == header
    identity = _attrs.evolve(identity_of("alice"), subject=dn, issuer=dn)
    values = as_dict(identity_values(identity, DEFAULT))
    assert values[b"X-Client-Subject"] == header.encode("ascii")
    assert values[b"X-Client-Issuer"] == header.encode("ascii")
