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


# --------------------------------------------------------------------------
# hostile DER: what OpenSSL accepts, the identity reads (tests/hostile.py builds it)
# --------------------------------------------------------------------------

import random  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import hostile as h  # noqa: E402

from gateway.config import HeaderSettings  # noqa: E402
from gateway.headers import identity_values  # noqa: E402
from gateway.tls import leaf_problem  # noqa: E402

needs_openssl = pytest.mark.skipif(h.OPENSSL is None, reason="openssl CLI not found")
BASE = make_leaf(CA, "alice")
HEADERS = HeaderSettings(prefix="X-Client-", forward_certificate=True)


def hostile(**fields: object) -> bytes:
    """BASE with *fields* replaced (see hostile.patch), signed by CA."""
    return h.patch(BASE.certificate, CA.key, **fields)  # type: ignore[arg-type]


def san(*names: bytes) -> bytes:
    return h.extension(h.SAN, h.general_names(*names))


HOSTILE_NAMES = [
    pytest.param(h.name(h.ava(h.O, h.PRINTABLE, b"Wells Fargo & Company"),
                        h.ava(h.CN, h.PRINTABLE, b"*.corp_x@example")),
                 "CN=*.corp_x@example,O=Wells Fargo & Company", ("*.corp_x@example",),
                 id="printablestring-outside-its-set"),
    pytest.param(h.name(h.ava(h.OU, h.IA5, b"M\xfcnchen"), h.ava(h.CN, h.T61, b"caf\xe9")),
                 r"CN=caf\C3\A9,OU=M\C3\BCnchen", ("café",), id="t61-and-ia5-latin1"),
    pytest.param(h.name(h.ava_raw(h.OU, h.tlv(h.SEQUENCE, h.tlv(h.INTEGER, b"\x05"))),
                        h.ava(h.DESCRIPTION, h.BIT_STRING, b"\x00\xab"), h.ava(h.CN, h.UTF8, "a")),
                 "CN=a,description=#030200AB,OU=#3003020105", ("a",), id="sequence-and-bitstring"),
    pytest.param(h.name(h.rdn(h.ava(h.CN, h.UTF8, "zzzzzzzz"), h.ava(h.UID, h.UTF8, "a")),
                        h.rdn(h.ava(h.CN, h.UTF8, "a"), h.ava(h.CN, h.UTF8, "a"))),
                 "CN=a+CN=a,UID=a+CN=zzzzzzzz", ("zzzzzzzz", "a", "a"),
                 id="unsorted-set-and-duplicate-ava"),
    pytest.param(h.name(h.ava(h.X500_UNIQUE_IDENTIFIER, h.BIT_STRING, b"\x03\x0a\x1f"),
                        h.ava(h.CN, h.UTF8, "u")),
                 "CN=u,x500UniqueIdentifier=#0303030A18", ("u",), id="x500UniqueIdentifier"),
    pytest.param(h.name(h.ava(h.CN, h.UTF8, "a"), h.rdn(), h.ava(h.O, h.UTF8, "b")),
                 "O=b,CN=a", ("a",), id="empty-rdn"),
    pytest.param(h.name(h.ava(h.CN, h.PRINTABLE, b"")), "CN=", ("",), id="empty-cn"),
    pytest.param(h.name(h.ava(h.CN, h.BIT_STRING, b"\x00\x41")), "CN=#03020041", (),
                 id="cn-not-a-string"),
]


@needs_openssl
@pytest.mark.parametrize(("subject", "printed", "cns"), HOSTILE_NAMES)
def test_hostile_subject_and_issuer_are_read_as_openssl_prints_them(
    tmp_path: Path, subject: bytes, printed: str, cns: tuple[str, ...]
) -> None:
    der = hostile(subject=subject, issuer=subject)
    assert h.openssl_print(der, tmp_path / "c.pem", "subject") == printed
    assert h.openssl_print(der, tmp_path / "c.pem", "issuer") == printed
    assert leaf_problem(der) is None
    who = ClientIdentity.from_der(der)
    assert (who.subject, who.issuer, who.common_names) == (printed, printed, cns)
    assert who.fingerprint_sha256 == hashlib.sha256(der).hexdigest()
    assert who.pem.encode("ascii") == h.pem(der)


def test_an_undecodable_cn_is_named_in_undecoded_and_never_matches() -> None:
    from gateway.authz.builtin import CNAuthorizer
    from gateway.authz.testing import request_info

    only = ClientIdentity.from_der(hostile(subject=h.name(h.ava(h.CN, h.BIT_STRING, b"\x00A"))))
    assert only.common_names == () and only.undecoded == ("CN",)
    both = ClientIdentity.from_der(hostile(subject=h.name(
        h.ava(h.CN, h.UTF8, "alice"), h.ava(h.CN, h.BIT_STRING, b"\x00A"))))
    assert both.common_names == ("alice",)
    authorizer = CNAuthorizer(frozenset({"alice", "#03020041"}))
    assert authorizer.authorize(only, request_info()).reason == "cn-not-allowed"
    assert authorizer.authorize(both, request_info()).reason == "cn-multiple"


def test_sans_the_library_does_not_model_are_skipped_not_refused() -> None:
    der = hostile(extra_extensions=[san(
        h.general_name(3, h.tlv(h.SEQUENCE, b""), constructed=True),  # x400Address
        h.general_name(5, h.general_name(1, h.tlv(h.UTF8, b"p"), constructed=True),
                       constructed=True),  # ediPartyName
        h.general_name(7, bytes(8)), h.general_name(7, bytes(32)), h.general_name(7, bytes(5)),
        h.general_name(7, bytes((192, 0, 2, 1))), h.general_name(2, b"ok.example"),
    )])
    assert leaf_problem(der) is None
    who = ClientIdentity.from_der(der)
    assert who.dns_names == ("ok.example",)
    assert who.ip_addresses == ("192.0.2.1",)  # 8, 32 and 5 bytes: not addresses


def test_non_ascii_ia5_sans_are_latin1_text_and_percent_escaped_in_headers() -> None:
    der = hostile(extra_extensions=[san(
        h.general_name(2, b"caf\xe9.example"), h.general_name(1, b"j\xf6rg@example.com"),
        h.general_name(6, b"https://x.example/\xe9"))])
    who = ClientIdentity.from_der(der)
    assert who.dns_names == ("café.example",)
    assert who.emails == ("jörg@example.com",)
    assert who.uris == ("https://x.example/é",)
    values = dict(identity_values(who, HEADERS))
    assert values[b"X-Client-SAN-DNS"] == b"caf%C3%A9.example"
    assert values[b"X-Client-SAN-Email"] == b"j%C3%B6rg@example.com"


@pytest.mark.parametrize(
    "extensions",
    [
        pytest.param([h.extension("1.2.3.4.99", b"\xff\xff"),
                      h.extension("2.5.29.32", b"\x30\x05garbage")], id="malformed"),
        pytest.param([h.extension("1.2.3.4.99", b"\x05\x00")] * 2, id="duplicate-unknown"),
        pytest.param([h.extension("2.5.29.32", h.tlv(h.SEQUENCE, h.tlv(
            h.SEQUENCE, h.oid("2.5.29.32.0"))))] * 2, id="duplicate-policies"),
    ],
)
def test_malformed_or_duplicate_non_critical_extensions_do_not_hide_the_sans(
    extensions: list[bytes],
) -> None:
    der = hostile(extra_extensions=[*extensions, san(h.general_name(2, b"svc.example"))])
    # cryptography reads every extension and refuses the certificate's
    with pytest.raises((ValueError, x509.DuplicateExtension)):
        _ = x509.load_der_x509_certificate(der).extensions
    assert leaf_problem(der) is None
    assert ClientIdentity.from_der(der).dns_names == ("svc.example",)


@needs_openssl
@pytest.mark.parametrize("serial", [0, -1234, -128, int("7f" + "ab" * 39, 16)],
                         ids=["zero", "negative", "negative-128", "forty-bytes"])
def test_zero_negative_and_long_serials_are_read_without_cryptography_warnings(
    tmp_path: Path, serial: int
) -> None:
    der = hostile(serial=serial)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        who = ClientIdentity.from_der(der)
        assert leaf_problem(der) is None
    printed = h.openssl_print(der, tmp_path / "c.pem", "serial")
    # i2a_ASN1_INTEGER (openssl x509 -serial, nginx's $ssl_client_serial) breaks the line with
    # "\\" + newline after every 35 bytes; the header has no line break (docs/headers.md).
    assert who.serial == printed.replace("\\\n", "")
    assert (len(printed.split("\\\n")) > 1) == (abs(serial).bit_length() > 35 * 8)


def test_identity_does_not_need_cryptography_to_parse_the_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cryptography says negative serials "will cause an exception in a future release".
    der = hostile(serial=-5)

    def refuse(data: bytes) -> x509.Certificate:
        raise ValueError("serial number may not be negative")

    monkeypatch.setattr(x509, "load_der_x509_certificate", refuse)
    who = ClientIdentity.from_der(der)
    assert who.certificate is None
    assert who.serial == "-05"
    assert leaf_problem(der) is None


@pytest.mark.parametrize(
    "extension",
    [
        pytest.param(h.extension(h.SAN, b"\x30\x03\x02\x01"), id="truncated-san"),
        pytest.param(h.extension(h.SAN, h.general_names(h.tlv(h.UTF8, b"x"))), id="not-a-gn"),
    ],
)
def test_unreadable_names_are_a_verify_problem_not_an_exception(extension: bytes) -> None:
    # OpenSSL refuses these itself (invalid certificate); if it ever did not, the gateway
    # would refuse them cleanly too.
    problem = leaf_problem(hostile(extra_extensions=[extension]))
    assert problem is not None
    assert problem.startswith("certificate names could not be read: subject alternative name")
    assert "\n" not in problem


def test_leaf_problem_never_raises_for_garbage() -> None:
    for der in (b"", b"\x30\x00", b"not a certificate", hostile()[:-10]):
        problem = leaf_problem(der)
        assert problem is not None and problem.startswith("certificate names could not be read")


# --------------------------------------------------------------------------
# generated hostile names against openssl x509 -nameopt RFC2253
# --------------------------------------------------------------------------

_OIDS = [h.CN, h.O, h.OU, h.C, h.UID, h.DESCRIPTION, "0.9.2342.19200300.100.1.25",
         "1.2.840.113549.1.9.1", "2.5.4.5", h.X500_UNIQUE_IDENTIFIER, "1.2.3.4.5"]
_TAGS = [h.UTF8, h.PRINTABLE, h.T61, h.IA5, h.NUMERIC, h.BMP, h.UNIVERSAL, h.BIT_STRING,
         h.SEQUENCE]
_ASCII = [chr(c) for c in range(0x20, 0x7F)] + list(',+"\\<>;#= ') * 4
_WIDE = ["é", "ü", "ÿ", "日", "本", "\u2028", "\ufeff", "\U0001f600"]
_CONTROLS = ["\x00", "\x01", "\n", "\r", "\x7f", "\x85", "\x9f"]


def _random_text(rng: random.Random, wide: bool) -> str:
    pool = _ASCII + (_WIDE if wide else ["é", "ü", "ÿ", "\xa0"])
    text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
    if rng.random() < 0.1:
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(_CONTROLS) + text[at:]
    if rng.random() < 0.15:
        text = text + " " * rng.randint(1, 2)
    if rng.random() < 0.1:
        text = " #"[rng.randint(0, 1)] + text
    return text


def _random_value(rng: random.Random) -> tuple[bytes, bool]:
    """(value TLV, holds a control character the gateway refuses)."""
    tag = rng.choice(_TAGS)
    if tag == h.BIT_STRING:
        return h.tlv(tag, bytes([rng.randint(0, 7)]) + rng.randbytes(rng.randint(1, 4))), False
    if tag == h.SEQUENCE:
        return h.tlv(tag, h.tlv(h.INTEGER, bytes([rng.randint(1, 127)]))), False
    text = _random_text(rng, wide=tag in (h.UTF8, h.BMP, h.UNIVERSAL))
    control = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
    if tag == h.UTF8:
        content = text.encode("utf-8")
    elif tag == h.BMP:
        # A lone surrogate makes OpenSSL refuse the certificate: none here.
        content = text.replace("\U0001f600", "\u4e2d").encode("utf-16-be")
    elif tag == h.UNIVERSAL:
        content = text.encode("utf-32-be")
    else:
        content = text.encode("latin-1", "replace")
    return h.tlv(tag, content), control


def _random_name(rng: random.Random) -> tuple[bytes, bool]:
    rdns, control = [], False
    for _ in range(rng.randint(0, 4)):
        avas = []
        for _ in range(rng.choice([0, 1, 1, 1, 1, 2, 3]) if rdns else rng.randint(1, 2)):
            value, bad = _random_value(rng)
            control = control or bad
            avas.append(h.ava_raw(rng.choice(_OIDS), value))
        rdns.append(h.rdn(*avas))
    return h.name(*rdns), control


@needs_openssl
def test_generated_hostile_names_never_raise_and_print_as_openssl(tmp_path: Path) -> None:
    from gateway.headers import dn_header_value

    rng = random.Random(20261201)
    checked = refused = 0
    for _ in range(300):
        subject, subject_control = _random_name(rng)
        issuer, issuer_control = _random_name(rng)
        der = hostile(subject=subject, issuer=issuer)
        problem = leaf_problem(der)  # never raises
        if subject_control or issuer_control:
            assert problem is not None and problem.startswith("control character"), problem
            refused += 1
            continue
        assert problem is None, problem
        who = identity_from_der_checked(der)
        for header, value in identity_values(who, HEADERS):
            assert all(0x20 <= b < 0x7F for b in value), (header, value)
            assert value == value.strip(), (header, value)  # nothing for HTTP to trim
        for which, ours in (("subject", who.subject), ("issuer", who.issuer)):
            theirs = h.openssl_print(der, tmp_path / "c.pem", which)
            assert ours == theirs, (which, ours, theirs)
            expected = theirs[:-2] + "\\20" if theirs.endswith("\\ ") else theirs
            assert dn_header_value(ours) == expected
        checked += 1
    assert checked > 200 and refused > 10, (checked, refused)


def identity_from_der_checked(der: bytes) -> ClientIdentity:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ClientIdentity.from_der(der)


# --------------------------------------------------------------------------
# docs/headers.md: what Name.from_rfc4514_string gives back of X-Client-Subject
# --------------------------------------------------------------------------

def _round_trip(subject: bytes) -> str:
    """"same" when from_rfc4514_string(header) gives the certificate's types and text values,
    RDN by RDN; "differs"; or "raises"."""
    from gateway.headers import dn_header_value
    from gateway.identity import decode_value, read_name

    header = dn_header_value(ClientIdentity.from_der(hostile(subject=subject)).subject)
    original = [[(oid, decode_value(tag, content)) for oid, tag, content, _ in rdn]
                for rdn in read_name(subject)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parsed = x509.Name.from_rfc4514_string(header)
    except ValueError:
        return "raises"
    back = [[(a.oid.dotted_string, a.value) for a in rdn] for rdn in parsed.rdns]
    return "same" if back == original else "differs"


ROUND_TRIPS = [
    # all the names cryptography knows, text in every string type, specials, edge spaces
    pytest.param(h.name(h.ava(h.C, h.PRINTABLE, b"DE"), h.ava("2.5.4.8", h.UTF8, "S"),
                        h.ava(h.L, h.T61, b"M\xfcnchen"), h.ava(h.O, h.PRINTABLE, b"A & B"),
                        h.ava(h.OU, h.BMP, "日本"), h.ava("0.9.2342.19200300.100.1.25", h.IA5,
                                                      b"com"),
                        h.ava(h.UID, h.UNIVERSAL, "u\U0001f600"),
                        h.ava(h.CN, h.UTF8, ' #Zoë, "x" <y>; +z\\ ')), "same", id="text"),
    pytest.param(h.name(h.ava(h.CN, h.UTF8, "x ")), "same", id="trailing-space-as-20"),
    pytest.param(h.name(h.ava("1.2.840.113549.1.9.1", h.IA5, b"a@b")), "raises",
                 id="emailAddress"),
    pytest.param(h.name(h.ava("2.5.4.9", h.UTF8, "Main St")), "raises", id="street"),
    pytest.param(h.name(h.ava("2.5.4.12", h.UTF8, "Dr")), "raises", id="title"),
    pytest.param(h.name(h.ava(h.CN, h.UTF8, "")), "raises", id="empty-cn"),
    pytest.param(h.name(h.ava(h.CN, h.UTF8, "a" * 65)), "raises", id="cn-over-64"),
    pytest.param(h.name(h.rdn(h.ava(h.UID, h.UTF8, "a"), h.ava(h.CN, h.UTF8, "b"))), "differs",
                 id="multi-valued-rdn"),
    pytest.param(h.name(h.rdn(h.ava(h.CN, h.UTF8, "a"), h.ava(h.CN, h.UTF8, "a"))), "raises",
                 id="repeated-ava"),
    pytest.param(h.name(h.ava(h.CN, h.UTF8, "a"), h.rdn(), h.ava(h.O, h.UTF8, "b")), "differs",
                 id="empty-rdn"),
    pytest.param(h.name(h.ava("1.2.3.4.5", h.UTF8, "x")), "differs", id="unknown-type-hex"),
    pytest.param(h.name(h.ava_raw(h.OU, h.tlv(h.SEQUENCE, h.tlv(h.INTEGER, b"\x05")))),
                 "differs", id="sequence-hex"),
    pytest.param(h.name(h.ava(h.X500_UNIQUE_IDENTIFIER, h.BIT_STRING, b"\x00\x01")), "raises",
                 id="x500UniqueIdentifier-hex"),
]


@pytest.mark.parametrize(("subject", "outcome"), ROUND_TRIPS)
def test_what_from_rfc4514_string_gives_back_is_as_docs_headers_md_says(
    subject: bytes, outcome: str
) -> None:
    assert _round_trip(subject) == outcome
