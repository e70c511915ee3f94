"""Unit tests for gateway.identity: ClientIdentity read from a leaf certificate."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from gateway.identity import ClientIdentity, UnsafeNameError, check_names, serial_hex
from gateway.pki import Issued, make_ca, make_leaf, name

CA = make_ca(name("Test CA", organization_name="Example"))


def cn(value: str, asn1_type: _ASN1Type | None = None) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value, _type=asn1_type)


def leaf(
    subject: x509.Name | str | None, sans: Sequence[str | x509.GeneralName] = (),
    issuer: Issued = CA, **kwargs: object,
) -> x509.Certificate:
    """A leaf certificate, round-tripped through DER as the gateway would receive it."""
    issued = make_leaf(issuer, subject, sans=sans, **kwargs)
    return x509.load_der_x509_certificate(issued.certificate.public_bytes(Encoding.DER))


def identity(subject: x509.Name | str | None, sans: Sequence[str] = (),
             **kwargs: object) -> ClientIdentity:
    return ClientIdentity.from_certificate(leaf(subject, sans, **kwargs))


# --------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------

def test_plain_certificate_gives_subject_issuer_and_cn() -> None:
    alice = identity(name("alice", organization_name="Example"))
    assert alice.subject == "CN=alice,O=Example"
    assert alice.issuer == "CN=Test CA,O=Example"
    assert alice.common_names == ("alice",)


def test_empty_subject_with_san_only() -> None:
    who = identity(None, sans=["dns:svc.example"])
    assert who.subject == ""
    assert who.common_names == ()
    assert who.dns_names == ("svc.example",)


def test_multi_valued_rdn_cn_is_found_and_subject_joined_with_plus() -> None:
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]),
        x509.RelativeDistinguishedName([
            cn("alice"), x509.NameAttribute(NameOID.USER_ID, "alice01")]),
    ])
    who = identity(subject)
    assert who.common_names == ("alice",)
    assert who.subject == "UID=alice01+CN=alice,O=Example"


def test_commas_and_quotes_are_kept_in_cn_and_escaped_in_subject() -> None:
    who = identity(x509.Name([cn('Doe, "Jane" <j>; +x')]))
    assert who.common_names == ('Doe, "Jane" <j>; +x',)
    assert who.subject == 'CN=Doe\\, \\"Jane\\" \\<j\\>\\; \\+x'


@pytest.mark.parametrize(
    ("asn1_type", "subject"),
    [
        pytest.param(None, "CN=Zo\\C3\\AB \\E6\\97\\A5\\E6\\9C\\AC", id="utf8string"),
        pytest.param(_ASN1Type.BMPString, "CN=Zo\\C3\\AB \\E6\\97\\A5\\E6\\9C\\AC",
                     id="bmpstring"),
    ],
)
def test_non_ascii_cn_is_text_and_subject_is_escaped_utf8(
    asn1_type: _ASN1Type | None, subject: str
) -> None:
    certificate = leaf(x509.Name([cn("Zoë 日本", asn1_type)]))
    expected_type = asn1_type or _ASN1Type.UTF8String
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]._type == expected_type
    who = ClientIdentity.from_certificate(certificate)
    assert who.common_names == ("Zoë 日本",)
    assert who.subject == subject


def test_several_cns_are_all_kept_in_certificate_order() -> None:
    who = identity(x509.Name([cn("alice"), cn("mallory")]))
    assert who.common_names == ("alice", "mallory")
    assert who.subject == "CN=mallory,CN=alice"


def test_every_san_type_is_read_in_certificate_order() -> None:
    who = identity("svc", sans=[
        "dns:a.example", "uri:spiffe://td/ns/prod/sa/web", "email:ops@example.com",
        "ip:192.0.2.10", "ip:2001:0db8:0000:0000:0000:0000:0000:0001", "dns:b.example",
        "uri:https://example.com/x", "email:sec@example.com", "ip:10.0.0.1",
    ])
    assert who.dns_names == ("a.example", "b.example")
    assert who.uris == ("spiffe://td/ns/prod/sa/web", "https://example.com/x")
    assert who.emails == ("ops@example.com", "sec@example.com")
    assert who.ip_addresses == ("192.0.2.10", "2001:db8::1", "10.0.0.1")


def test_no_san_extension_gives_empty_san_tuples() -> None:
    who = identity("alice")
    assert (who.dns_names, who.uris, who.emails, who.ip_addresses) == ((), (), (), ())


# --------------------------------------------------------------------------
# serial, fingerprint, dates, PEM
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("serial", "text"),
    [
        pytest.param(0, "00", id="zero"),
        pytest.param(1, "01", id="one-is-two-digits"),
        pytest.param(0xFF, "FF", id="high-bit-no-sign-byte"),
        pytest.param(0x100, "0100", id="whole-bytes"),
        pytest.param(0x1234, "1234", id="two-bytes"),
        pytest.param(0xABCDEF, "ABCDEF", id="uppercase"),
        pytest.param(int("7F" + "AB" * 19, 16), "7F" + "AB" * 19, id="twenty-bytes"),
        pytest.param(-5, "-05", id="negative"),
    ],
)
def test_serial_hex_formats_like_openssl(serial: int, text: str) -> None:
    assert serial_hex(serial) == text


@pytest.mark.parametrize(
    ("serial", "text"),
    [(1, "01"), (0x1234, "1234"), (int("7F" + "AB" * 19, 16), "7F" + "AB" * 19)],
    ids=["one", "0x1234", "twenty-bytes"],
)
def test_identity_serial_is_serial_hex_of_the_certificate(serial: int, text: str) -> None:
    assert identity("alice", serial=serial).serial == text


def test_fingerprint_is_lowercase_sha256_of_der() -> None:
    certificate = leaf("alice")
    who = ClientIdentity.from_certificate(certificate)
    assert who.fingerprint_sha256 == hashlib.sha256(
        certificate.public_bytes(Encoding.DER)).hexdigest()
    assert len(who.fingerprint_sha256) == 64


def test_dates_are_utc_aware_datetimes() -> None:
    start = datetime.datetime(2026, 1, 31, 12, 0, tzinfo=datetime.UTC)
    end = datetime.datetime(2027, 1, 31, 12, 0, tzinfo=datetime.UTC)
    who = identity("alice", not_before=start, not_after=end)
    assert (who.not_before, who.not_after) == (start, end)
    assert who.not_before.utcoffset() == datetime.timedelta(0)


def test_pem_is_the_certificate_with_newline_line_ends() -> None:
    certificate = leaf("alice")
    who = ClientIdentity.from_certificate(certificate)
    assert who.pem == certificate.public_bytes(Encoding.PEM).decode("ascii")
    assert who.pem.startswith("-----BEGIN CERTIFICATE-----\n")
    assert "\r" not in who.pem
    assert who.certificate is certificate


def test_identities_of_the_same_certificate_are_equal() -> None:
    certificate = leaf("alice")
    assert ClientIdentity.from_certificate(certificate) == ClientIdentity.from_certificate(
        certificate)


# --------------------------------------------------------------------------
# unsafe names (cryptography builds all of these without complaint)
# --------------------------------------------------------------------------

UNSAFE = [
    pytest.param(dict(subject=x509.Name([cn("a\x00b")])), "subject", id="nul-in-cn"),
    pytest.param(dict(subject=x509.Name([cn("alice\r\nX-Client-CN: admin")])), "subject",
                 id="crlf-in-cn"),
    pytest.param(dict(subject=x509.Name([cn("a\x7f")])), "subject", id="del-in-cn"),
    pytest.param(dict(subject=x509.Name([cn("a\x85b")])), "subject", id="c1-in-cn"),
    pytest.param(dict(subject=x509.Name([cn("a\x00b", _ASN1Type.BMPString)])), "subject",
                 id="nul-in-bmpstring-cn"),
    pytest.param(
        dict(subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ex\nample"),
                                cn("alice")])),
        "subject", id="lf-in-o"),
    pytest.param(dict(subject="alice", sans=["dns:a\x00.example"]), "SAN DNS",
                 id="nul-in-dns-san"),
    pytest.param(dict(subject="alice", sans=["dns:a.example\r\nX: y"]), "SAN DNS",
                 id="crlf-in-dns-san"),
    pytest.param(dict(subject="alice", sans=["uri:spiffe://td/a\nb"]), "SAN URI",
                 id="lf-in-uri-san"),
    pytest.param(dict(subject="alice", sans=["email:a\x00@example.com"]), "SAN email",
                 id="nul-in-email-san"),
    pytest.param(
        dict(subject="alice",
             sans=[x509.DirectoryName(x509.Name([cn("dir\x00name")]))]),
        "SAN directory name", id="nul-in-directory-name-san"),
    pytest.param(dict(subject="alice", issuer=make_ca(x509.Name([cn("Evil\r\nCA")]))),
                 "issuer", id="crlf-in-issuer"),
]


@pytest.mark.parametrize(("build", "field"), UNSAFE)
def test_check_names_refuses_control_characters(build: dict, field: str) -> None:
    certificate = leaf(**build)
    with pytest.raises(UnsafeNameError) as caught:
        check_names(certificate)
    assert caught.value.field == field
    assert str(caught.value) == f"control character in certificate {field}"


@pytest.mark.parametrize(("build", "field"), UNSAFE)
def test_from_certificate_refuses_control_characters(build: dict, field: str) -> None:
    with pytest.raises(UnsafeNameError):
        ClientIdentity.from_certificate(leaf(**build))


def test_unsafe_name_error_is_a_value_error() -> None:
    assert issubclass(UnsafeNameError, ValueError)


@pytest.mark.parametrize(
    "value",
    ["Zoë 日本", "tab-less but spaced out ", "\u2028line separator", "100% ,;+\"<>#"],
    ids=["non-ascii", "spaces", "unicode-separator", "punctuation"],
)
def test_check_names_accepts_printable_unicode(value: str) -> None:
    certificate = leaf(x509.Name([cn(value)]), sans=["dns:ok.example"])
    assert check_names(certificate) is None
    assert ClientIdentity.from_certificate(certificate).common_names == (value,)
