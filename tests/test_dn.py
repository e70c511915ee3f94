"""Tests for gateway.dn.format_name against the real ``openssl`` CLI.

Every case builds a certificate with ``cryptography`` (ECDSA P-256), writes
it to ``tmp_path`` and checks that ``format_name()`` on the re-parsed subject
and issuer is byte-for-byte what

    openssl x509 -noout -subject -nameopt RFC2253 -in FILE

prints after ``subject=`` (and ``-issuer`` after ``issuer=``).  That is the
string nginx exposes as ``$ssl_client_s_dn`` / ``$ssl_client_i_dn``.  Each
case also carries the expected string literally, so a change in either side
shows up as a readable diff.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from gateway.dn import _SHORT_NAMES, format_name

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not found")

UNKNOWN_OID = x509.ObjectIdentifier("1.2.3.4.5")
# 119 characters; OpenSSL prints only the first 79.
LONG_OID = x509.ObjectIdentifier("1.2." + ".".join(["100"] * 29))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def attr(
    oid: x509.ObjectIdentifier,
    value: str | bytes,
    asn1_type: _ASN1Type | None = None,
) -> x509.NameAttribute[str | bytes]:
    """One AVA; ``asn1_type`` None means cryptography's default type."""
    return x509.NameAttribute(oid, value, _type=asn1_type)


def name(
    *rdns: x509.NameAttribute[str | bytes] | Sequence[x509.NameAttribute[str | bytes]],
) -> x509.Name:
    """A Name from RDNs in encoding order; a sequence is a multi-valued RDN."""
    return x509.Name(
        [
            x509.RelativeDistinguishedName([rdn] if isinstance(rdn, x509.NameAttribute) else rdn)
            for rdn in rdns
        ]
    )


def cn(value: str, asn1_type: _ASN1Type | None = None) -> x509.NameAttribute[str | bytes]:
    return attr(NameOID.COMMON_NAME, value, asn1_type)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    issuer: x509.Name | None = None,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A certificate for ``subject``; self-signed unless told otherwise."""
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .sign(key if signing_key is None else signing_key, hashes.SHA256())
    )


def write_pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_dn(path: Path, which: str = "subject") -> str:
    """What ``openssl x509 -noout -<which> -nameopt RFC2253`` prints."""
    assert OPENSSL is not None
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", f"-{which}", "-nameopt", "RFC2253", "-in", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    prefix = f"{which}=".encode("ascii")
    assert out.startswith(prefix) and out.endswith(b"\n"), out
    return out[len(prefix) : -1].decode("ascii")


# --------------------------------------------------------------------------
# The case table: (Name in encoding order, expected OpenSSL string)
# --------------------------------------------------------------------------

CASES = [
    # -- structure ---------------------------------------------------------
    pytest.param(
        name(
            attr(NameOID.COUNTRY_NAME, "US"),
            attr(NameOID.ORGANIZATION_NAME, "Example Corp"),
            cn("alice"),
        ),
        "CN=alice,O=Example Corp,C=US",
        id="plain-cn-o-c",
    ),
    pytest.param(name(), "", id="empty-subject"),
    pytest.param(name(cn("alice")), "CN=alice", id="single-cn"),
    # cryptography DER-sorts the AVAs of a SET; OpenSSL then reverses them.
    # A shorter AVA encoding sorts first, whatever order it was given in.
    pytest.param(
        name(
            attr(NameOID.ORGANIZATION_NAME, "Example"),
            [cn("a"), attr(NameOID.USER_ID, "alice01")],
        ),
        "UID=alice01+CN=a,O=Example",
        id="multi-valued-cn-then-uid",
    ),
    pytest.param(
        name(
            attr(NameOID.ORGANIZATION_NAME, "Example"),
            [attr(NameOID.USER_ID, "alice01"), cn("a")],
        ),
        "UID=alice01+CN=a,O=Example",
        id="multi-valued-uid-then-cn",
    ),
    pytest.param(
        name(
            attr(NameOID.ORGANIZATION_NAME, "Example"),
            [cn("alice-long-name"), attr(NameOID.USER_ID, "a")],
        ),
        "CN=alice-long-name+UID=a,O=Example",
        id="multi-valued-long-cn-short-uid",
    ),
    pytest.param(
        name(
            attr(NameOID.COUNTRY_NAME, "US"),
            [
                attr(NameOID.ORGANIZATION_NAME, "Org"),
                attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "Unit"),
                cn("x"),
            ],
            cn("leaf"),
        ),
        "CN=leaf,OU=Unit+O=Org+CN=x,C=US",
        id="multi-valued-three-avas-in-middle",
    ),
    # -- RFC 2253 special characters ---------------------------------------
    pytest.param(name(cn("a,b")), r"CN=a\,b", id="comma"),
    pytest.param(name(cn("a+b")), r"CN=a\+b", id="plus"),
    pytest.param(name(cn('a"b')), r"CN=a\"b", id="double-quote"),
    pytest.param(name(cn("a\\b")), r"CN=a\\b", id="backslash"),
    pytest.param(name(cn("a;b")), r"CN=a\;b", id="semicolon"),
    pytest.param(name(cn("a<b")), r"CN=a\<b", id="less-than"),
    pytest.param(name(cn("a>b")), r"CN=a\>b", id="greater-than"),
    pytest.param(name(cn("a=b")), "CN=a=b", id="equals-not-escaped"),
    pytest.param(name(cn('x,+"\\<>;=y')), r"CN=x\,\+\"\\\<\>\;=y", id="all-specials"),
    pytest.param(
        name(attr(NameOID.ORGANIZATION_NAME, "Smith, Jones & Co."), cn("Bob")),
        r"CN=Bob,O=Smith\, Jones & Co.",
        id="comma-in-organization",
    ),
    # -- '#' and spaces at the edges ----------------------------------------
    pytest.param(name(cn("#hash")), r"CN=\#hash", id="leading-hash"),
    pytest.param(name(cn("a#b#")), "CN=a#b#", id="inner-and-trailing-hash"),
    pytest.param(name(cn("##")), r"CN=\##", id="two-hashes"),
    # A one-character value is only "last" in do_buf(), so '#' stays bare.
    pytest.param(name(cn("#")), "CN=#", id="lone-hash-not-escaped"),
    pytest.param(name(cn(" lead")), r"CN=\ lead", id="leading-space"),
    pytest.param(name(cn("trail ")), r"CN=trail\ ", id="trailing-space"),
    pytest.param(name(cn(" both ")), r"CN=\ both\ ", id="leading-and-trailing-space"),
    pytest.param(name(cn("a b")), "CN=a b", id="inner-space"),
    pytest.param(name(cn(" ")), r"CN=\ ", id="lone-space"),
    pytest.param(name(cn("   ")), r"CN=\  \ ", id="three-spaces"),
    pytest.param(name(cn(" # ")), r"CN=\ #\ ", id="hash-between-spaces"),
    # -- non-ASCII ----------------------------------------------------------
    pytest.param(name(cn("Zoë")), r"CN=Zo\C3\AB", id="utf8string-latin"),
    pytest.param(name(cn("日本")), r"CN=\E6\97\A5\E6\9C\AC", id="utf8string-cjk"),
    pytest.param(name(cn("smile \U0001f600")), r"CN=smile \F0\9F\98\80", id="utf8string-emoji"),
    pytest.param(name(cn("Zoë", _ASN1Type.BMPString)), r"CN=Zo\C3\AB", id="bmpstring-latin"),
    pytest.param(
        name(cn("日本", _ASN1Type.BMPString)),
        r"CN=\E6\97\A5\E6\9C\AC",
        id="bmpstring-cjk",
    ),
    pytest.param(
        name(cn(" é#", _ASN1Type.BMPString)),
        r"CN=\ \C3\A9#",
        id="bmpstring-leading-space",
    ),
    pytest.param(
        name(cn("Zoë\U0001f600", _ASN1Type.UniversalString)),
        r"CN=Zo\C3\AB\F0\9F\98\80",
        id="universalstring",
    ),
    # T61String octets are read as Latin-1, so UTF-8 input is double-encoded.
    pytest.param(
        name(cn("Zoë", _ASN1Type.T61String)),
        r"CN=Zo\C3\83\C2\AB",
        id="t61string-utf8-octets-as-latin1",
    ),
    # -- control characters ---------------------------------------------------
    pytest.param(name(cn("a\x01b")), r"CN=a\01b", id="control-0x01"),
    pytest.param(name(cn("line1\nline2")), r"CN=line1\0Aline2", id="newline"),
    pytest.param(name(cn("a\tb\rc")), r"CN=a\09b\0Dc", id="tab-and-cr"),
    pytest.param(name(cn("\x00nul")), r"CN=\00nul", id="nul"),
    pytest.param(name(cn("del\x7f")), r"CN=del\7F", id="del-0x7f"),
    # -- attribute types --------------------------------------------------------
    pytest.param(
        name(cn("alice"), attr(NameOID.EMAIL_ADDRESS, "alice@example.com")),
        "emailAddress=alice@example.com,CN=alice",
        id="email-address",
    ),
    pytest.param(
        name(
            attr(NameOID.DOMAIN_COMPONENT, "com"),
            attr(NameOID.DOMAIN_COMPONENT, "example"),
            attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "People"),
            attr(NameOID.USER_ID, "alice"),
        ),
        "UID=alice,OU=People,DC=example,DC=com",
        id="domain-components",
    ),
    pytest.param(
        name(
            attr(NameOID.JURISDICTION_COUNTRY_NAME, "DE"),
            attr(NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME, "Berlin"),
            attr(NameOID.JURISDICTION_LOCALITY_NAME, "Berlin"),
            attr(NameOID.BUSINESS_CATEGORY, "Private Organization"),
            attr(NameOID.SERIAL_NUMBER, "HRB 12345"),
            attr(NameOID.ORGANIZATION_IDENTIFIER, "VATDE-123456789"),
            attr(NameOID.POSTAL_CODE, "10115"),
            attr(NameOID.STREET_ADDRESS, "Main St 1"),
        ),
        "street=Main St 1,postalCode=10115,organizationIdentifier=VATDE-123456789,"
        "serialNumber=HRB 12345,businessCategory=Private Organization,"
        "jurisdictionL=Berlin,jurisdictionST=Berlin,jurisdictionC=DE",
        id="ev-attributes",
    ),
    pytest.param(
        name(
            attr(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            attr(NameOID.LOCALITY_NAME, "SF"),
            attr(NameOID.TITLE, "Dr"),
            attr(NameOID.SURNAME, "Doe"),
            attr(NameOID.GIVEN_NAME, "Jane"),
            attr(NameOID.INITIALS, "JD"),
            attr(NameOID.GENERATION_QUALIFIER, "III"),
            attr(NameOID.DN_QUALIFIER, "q1"),
            attr(NameOID.PSEUDONYM, "jd"),
            attr(x509.ObjectIdentifier("2.5.4.41"), "Jane Doe"),
            attr(x509.ObjectIdentifier("2.5.4.13"), "a person"),
        ),
        "description=a person,name=Jane Doe,pseudonym=jd,dnQualifier=q1,"
        "generationQualifier=III,initials=JD,GN=Jane,SN=Doe,title=Dr,L=SF,ST=CA",
        id="person-attributes",
    ),
    pytest.param(
        name(attr(x509.ObjectIdentifier("0.9.2342.19200300.100.1.44"), "u1")),
        "uid=u1",
        id="uniqueIdentifier-is-lowercase-uid",
    ),
    pytest.param(
        name(attr(NameOID.X500_UNIQUE_IDENTIFIER, b"\x03\xff\xff", _ASN1Type.BitString)),
        "x500UniqueIdentifier=#030303FFF8",
        id="bitstring-dumped-with-unused-bits-cleared",
    ),
    # -- unknown attribute types: dotted OID and '#' + hex of the DER TLV --------
    pytest.param(
        name(cn("alice"), attr(UNKNOWN_OID, "hello")),
        "1.2.3.4.5=#0C0568656C6C6F,CN=alice",
        id="unknown-oid-utf8string",
    ),
    pytest.param(
        name(attr(UNKNOWN_OID, "hé", _ASN1Type.BMPString)),
        "1.2.3.4.5=#1E04006800E9",
        id="unknown-oid-bmpstring",
    ),
    pytest.param(
        name(attr(UNKNOWN_OID, "ab", _ASN1Type.PrintableString)),
        "1.2.3.4.5=#13026162",
        id="unknown-oid-printablestring",
    ),
    pytest.param(
        name(attr(UNKNOWN_OID, "#, +")),
        "1.2.3.4.5=#0C04232C202B",
        id="unknown-oid-specials-are-hex",
    ),
    pytest.param(
        name(attr(UNKNOWN_OID, "x" * 200)),
        "1.2.3.4.5=#0C81C8" + "78" * 200,
        id="unknown-oid-long-form-length",
    ),
    pytest.param(
        name([cn("a"), attr(UNKNOWN_OID, "b")]),
        "1.2.3.4.5=#0C0162+CN=a",
        id="unknown-oid-in-multi-valued-rdn",
    ),
    pytest.param(
        name(attr(LONG_OID, "x")),
        LONG_OID.dotted_string[:79] + "=#0C0178",
        id="unknown-oid-text-cut-at-79-chars",
    ),
]


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize(("subject", "expected"), CASES)
def test_matches_openssl(
    key: ec.EllipticCurvePrivateKey, tmp_path: Path, subject: x509.Name, expected: str
) -> None:
    cert = make_cert(key, subject)
    path = write_pem(cert, tmp_path / "cert.pem")
    reparsed = x509.load_pem_x509_certificate(path.read_bytes())

    assert openssl_dn(path, "subject") == expected
    assert openssl_dn(path, "issuer") == expected
    assert format_name(cert.subject) == expected
    assert format_name(cert.issuer) == expected
    assert format_name(reparsed.subject) == expected
    assert format_name(reparsed.issuer) == expected


@pytest.mark.parametrize(("subject", "expected"), CASES)
def test_output_is_printable_ascii(
    key: ec.EllipticCurvePrivateKey, subject: x509.Name, expected: str
) -> None:
    out = format_name(make_cert(key, subject).subject)
    assert out == expected
    assert all(0x20 <= ord(ch) < 0x7F for ch in out), repr(out)


@needs_openssl
def test_every_code_point_and_string_type_is_printable_and_matches(
    key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    """All of U+0000..U+02FF and some wider characters, in every string type."""

    # OU, unlike CN, has no length limit in cryptography.
    def ou(value: str, asn1_type: _ASN1Type) -> x509.NameAttribute[str | bytes]:
        return attr(NameOID.ORGANIZATIONAL_UNIT_NAME, value, asn1_type)

    low = "".join(chr(c) for c in range(0x300))
    wide = "\u0100\u07ff\u0800\ud7ff\ue000\ufeff\uffff"
    astral = "\U00010000\U0001f600\U0010ffff"
    rdns = []
    for asn1_type in (_ASN1Type.UTF8String, _ASN1Type.T61String):
        rdns += [ou(low[i : i + 64], asn1_type) for i in range(0, len(low), 64)]
        rdns.append(ou(wide + astral, asn1_type))
    for asn1_type in (_ASN1Type.BMPString, _ASN1Type.UniversalString):
        rdns += [ou(low[i : i + 32], asn1_type) for i in range(0, len(low), 32)]
        rdns.append(ou(wide, asn1_type))
    rdns.append(ou(astral, _ASN1Type.UniversalString))
    rdns.append(attr(UNKNOWN_OID, low))
    cert = make_cert(key, name(*rdns))
    path = write_pem(cert, tmp_path / "cert.pem")

    out = format_name(cert.subject)
    raw = out.encode("ascii")
    assert all(0x20 <= b < 0x7F for b in raw)
    assert out == openssl_dn(path, "subject")


@needs_openssl
def test_issuer_differs_from_subject(key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    ca_name = name(
        attr(NameOID.COUNTRY_NAME, "US"),
        attr(NameOID.ORGANIZATION_NAME, "Example, Inc."),
        cn("Example Issuing CA #1"),
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = name(
        attr(NameOID.DOMAIN_COMPONENT, "org"),
        attr(NameOID.DOMAIN_COMPONENT, "example"),
        [cn("client 7"), attr(NameOID.USER_ID, "c7")],
    )
    leaf = make_cert(leaf_key, leaf_name, issuer=ca_name, signing_key=key)
    path = write_pem(leaf, tmp_path / "leaf.pem")

    assert format_name(leaf.issuer) == r"CN=Example Issuing CA #1,O=Example\, Inc.,C=US"
    assert format_name(leaf.subject) == "UID=c7+CN=client 7,DC=example,DC=org"
    assert format_name(leaf.issuer) == openssl_dn(path, "issuer")
    assert format_name(leaf.subject) == openssl_dn(path, "subject")


@needs_openssl
def test_every_known_short_name_matches_openssl(
    key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    """Each OID in the short-name table prints as OpenSSL names it."""
    oids = list(_SHORT_NAMES)
    subject = name(*(attr(x509.ObjectIdentifier(oid), "ab", _ASN1Type.UTF8String) for oid in oids))
    cert = make_cert(key, subject)
    path = write_pem(cert, tmp_path / "cert.pem")

    ours = format_name(cert.subject).split(",")
    theirs = openssl_dn(path, "subject").split(",")
    expected = [f"{_SHORT_NAMES[oid]}=ab" for oid in reversed(oids)]
    assert ours == theirs == expected
