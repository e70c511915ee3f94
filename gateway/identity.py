"""The client's identity, read from its verified leaf certificate.

Pure code: no TLS library, no reactor. :class:`ClientIdentity` is what authorizers decide on and
what the identity headers are written from.

**Lenient by design.** The identity must never be stricter than OpenSSL's verification: a
certificate OpenSSL verified is served. ``cryptography``'s parser refuses DER that OpenSSL
accepts and real CAs have issued (``&``, ``@``, ``*``, ``_`` in a PrintableString, Latin-1 bytes in
a T61String, multi-valued RDNs not in DER SET order, duplicate AVAs, x400Address or ediPartyName
SANs, iPAddress SANs that are not 4 or 16 bytes, a malformed extension that is not the SAN, a
negative serial). So every field is read from the DER itself with **asn1crypto**: the name as its
raw RDN sequence (attribute OID, ASN.1 tag, value octets), the SAN extension as its raw
GeneralNames, the serial as an INTEGER of any sign. asn1crypto was chosen over pyasn1 because it
parses lazily (only the fields read here are decoded, so a malformed extension that is not the
SAN is never looked at), exposes the tag and content octets of any value through ``core.Any``,
is pure Python with no dependencies of its own, and is far faster than pyasn1 on the handshake
path; it has been stable for years and is the DER layer of several maintained PKI projects.
No DER is parsed by hand here.

Values are decoded the way OpenSSL decodes each string type: PrintableString, IA5String,
T61String, NumericString and VisibleString byte by byte (Latin-1 where not ASCII), BMPString as
UTF-16BE, UniversalString as UTF-32BE, UTF8String as UTF-8. A value that does not decode (a
BIT STRING, a SEQUENCE, invalid UTF-8) is printed in ``subject``/``issuer`` as ``#`` + hex of its
DER, as OpenSSL and RFC 4514 §2.4 do, and is left out of ``common_names``; its field is named in
``undecoded``, so that a matcher on names never matches it.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import attrs
from asn1crypto import core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.dn import RawAttribute, char_width, format_rdns

COMMON_NAME = "2.5.4.3"
SUBJECT_ALT_NAME = "2.5.29.17"
EXTENDED_KEY_USAGE = "2.5.29.37"


class UnsafeNameError(ValueError):
    """A certificate name carries a character the gateway refuses to forward or match on.

    ``field`` names where (``subject``, ``issuer``, ``SAN DNS``, …).
    """

    def __init__(self, field: str) -> None:
        super().__init__(f"control character in certificate {field}")
        self.field = field


class UnreadableCertificateError(ValueError):
    """The certificate's DER could not be read at all (not even leniently)."""


# -- the lenient DER structures (asn1crypto specs with raw values) --------------------------------


class _AVA(core.Sequence):  # type: ignore[misc]  # asn1crypto is not annotated
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("type", core.ObjectIdentifier), ("value", core.Any)]


class _RDN(core.SetOf):  # type: ignore[misc]  # asn1crypto is not annotated
    _child_spec = _AVA


class _RDNSequence(core.SequenceOf):  # type: ignore[misc]  # asn1crypto is not annotated
    _child_spec = _RDN


class _Extension(core.Sequence):  # type: ignore[misc]  # asn1crypto is not annotated
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("extn_id", core.ObjectIdentifier),
        ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString),
    ]


class _Extensions(core.SequenceOf):  # type: ignore[misc]  # asn1crypto is not annotated
    _child_spec = _Extension


class _TBSCertificate(core.Sequence):  # type: ignore[misc]  # asn1crypto is not annotated
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("version", core.Integer, {"explicit": 0, "default": 0}),
        ("serial_number", core.Integer),
        ("signature", core.Any),
        ("issuer", core.Any),
        ("validity", asn1_x509.Validity),
        ("subject", core.Any),
        ("subject_public_key_info", core.Any),
        ("issuer_unique_id", core.OctetBitString, {"implicit": 1, "optional": True}),
        ("subject_unique_id", core.OctetBitString, {"implicit": 2, "optional": True}),
        ("extensions", _Extensions, {"explicit": 3, "optional": True}),
    ]


class _Certificate(core.Sequence):  # type: ignore[misc]  # asn1crypto is not annotated
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("tbs_certificate", _TBSCertificate),
        ("signature_algorithm", core.Any),
        ("signature_value", core.Any),
    ]


class _AnySequence(core.SequenceOf):  # type: ignore[misc]  # asn1crypto is not annotated
    _child_spec = core.Any


class _OIDSequence(core.SequenceOf):  # type: ignore[misc]  # asn1crypto is not annotated
    _child_spec = core.ObjectIdentifier


@attrs.frozen
class RawCertificate:
    """The fields of a certificate the gateway reads, straight from its DER (see module doc)."""

    der: bytes
    serial: int
    subject: tuple[tuple[RawAttribute, ...], ...]  # RDNs in encoding order
    issuer: tuple[tuple[RawAttribute, ...], ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    extensions: tuple[tuple[str, bool, bytes], ...]  # (OID, critical, value octets), in order
    spki: bytes = b""  # the DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), as encoded

    def extension_values(self, oid: str) -> list[bytes]:
        """The value octets of every extension *oid* (usually none or one)."""
        return [value for ext_oid, _, value in self.extensions if ext_oid == oid]


def _header(value: core.Asn1Value) -> tuple[int, int, int, bytes, bytes]:
    """(class, method, tag number, content octets, whole TLV) of a raw value."""
    tlv = bytes(value.dump())
    class_, method, tag, _, content, _ = parser.parse(tlv, strict=True)
    return class_, method, tag, bytes(content), tlv


def _raw_attribute(value: core.Any, oid: str) -> RawAttribute:
    # A universal tag number for the universal class; -1 for any other class (never a string).
    class_, _, tag, content, tlv = _header(value)
    return (oid, tag if class_ == 0 else -1, content, tlv)


def read_name(der: bytes) -> tuple[tuple[RawAttribute, ...], ...]:
    """The RDNs of DER ``Name`` *der*, each a tuple of :data:`~gateway.dn.RawAttribute` in the
    order they are encoded (not re-sorted). Raises ``ValueError`` for DER that is not a Name."""
    try:
        sequence = _RDNSequence.load(der)
        return tuple(
            tuple(_raw_attribute(ava["value"], ava["type"].dotted) for ava in rdn)
            for rdn in sequence
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"name: {exc}") from None


def _utc(value: object) -> datetime.datetime:
    if not isinstance(value, datetime.datetime):
        raise ValueError(f"validity time {value!r} is not a date and time")
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


@functools.lru_cache(maxsize=4096)
def read_certificate(der: bytes) -> RawCertificate:
    """Read the fields the gateway uses from DER certificate *der*, leniently.

    Raises :class:`UnreadableCertificateError` (a ``ValueError``) when even that fails.
    """
    try:
        certificate = _Certificate.load(der)
        tbs = certificate["tbs_certificate"]
        extensions: list[tuple[str, bool, bytes]] = []
        raw_extensions = tbs["extensions"]
        if isinstance(raw_extensions, _Extensions):
            for extension in raw_extensions:
                extensions.append((extension["extn_id"].dotted,
                                   bool(extension["critical"].native),
                                   bytes(extension["extn_value"].contents or b"")))
        return RawCertificate(
            der=der,
            serial=int(tbs["serial_number"].native),
            subject=read_name(tbs["subject"].dump()),
            issuer=read_name(tbs["issuer"].dump()),
            not_before=_utc(tbs["validity"]["not_before"].native),
            not_after=_utc(tbs["validity"]["not_after"].native),
            extensions=tuple(extensions),
            spki=bytes(tbs["subject_public_key_info"].dump()),
        )
    except UnreadableCertificateError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise UnreadableCertificateError(str(exc) or type(exc).__name__) from None


# -- decoding values as OpenSSL does ----------------------------------------------------------


def _units(content: bytes, width: int) -> list[int]:
    step = max(width, 1)
    return [int.from_bytes(content[i:i + step], "big") for i in range(0, len(content), step)]


def decode_value(tag: int, content: bytes) -> str | None:
    """The text of a name value of universal *tag*, decoded as OpenSSL reads it, or ``None`` when
    it is not a string type or its octets do not decode in that type's encoding."""
    width = char_width(tag)
    if width is None:
        return None
    try:
        if width == 0:
            return content.decode("utf-8")
        if width == 1:
            return content.decode("latin-1")
        return content.decode("utf-16-be" if width == 2 else "utf-32-be")
    except UnicodeDecodeError:
        return None


def _has_control(tag: int, content: bytes) -> bool:
    """A control character (C0, DEL, C1) in a string value, read unit by unit as OpenSSL does."""
    width = char_width(tag)
    if width is None:
        return False  # printed as #hex: no character of it reaches a header or a log line
    if width == 0:
        return _is_control(content.decode("utf-8", "surrogateescape"))
    return any(u < 0x20 or 0x7F <= u <= 0x9F for u in _units(content, width))


def _is_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text)


@attrs.frozen
class SubjectAltNames:
    """The SANs the gateway forwards and matches on; the other kinds are skipped."""

    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    directory_names: tuple[tuple[tuple[RawAttribute, ...], ...], ...] = ()


_SAN_TEXT = {1: "emails", 2: "dns_names", 6: "uris"}
_SAN_LABEL = {1: "SAN email", 2: "SAN DNS", 6: "SAN URI"}


def read_sans(raw: RawCertificate) -> SubjectAltNames:
    """The subject alternative names of *raw*, read leniently (RFC 5280 §4.2.1.6).

    dNSName, rfc822Name and URI values are IA5Strings read byte by byte (Latin-1 where not
    ASCII). An iPAddress of 4 or 16 bytes is an address; any other length (8 and 32 are name
    constraint forms) is skipped, never written as a network. otherName, x400Address,
    ediPartyName and registeredID are skipped. Only the first SAN extension is read (OpenSSL
    does not verify a certificate with two). Raises :class:`UnsafeNameError` for a control
    character, ``ValueError`` for a SAN extension that is not GeneralNames.
    """
    values = raw.extension_values(SUBJECT_ALT_NAME)
    if not values:
        return SubjectAltNames()
    found: dict[str, list[str]] = {"dns_names": [], "uris": [], "emails": []}
    ips: list[str] = []
    directories: list[tuple[tuple[RawAttribute, ...], ...]] = []
    try:
        names = list(_AnySequence.load(values[0]))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"subject alternative name: {exc}") from None
    for general_name in names:
        class_, _, tag, content, _ = _header(general_name)
        if class_ != 2:  # not context-specific: not a GeneralName at all
            raise ValueError("subject alternative name: not a GeneralName")
        if tag in _SAN_TEXT:
            text = content.decode("latin-1")
            if _is_control(text):
                raise UnsafeNameError(_SAN_LABEL[tag])
            found[_SAN_TEXT[tag]].append(text)
        elif tag == 7:
            if len(content) in (4, 16):
                ips.append(str(ipaddress.ip_address(content)))
        elif tag == 4:  # directoryName: [4] EXPLICIT Name
            directory = read_name(content)
            if any(_has_control(t, c) for rdn in directory for (_, t, c, _) in rdn):
                raise UnsafeNameError("SAN directory name")
            directories.append(directory)
    return SubjectAltNames(
        dns_names=tuple(found["dns_names"]), uris=tuple(found["uris"]),
        emails=tuple(found["emails"]), ip_addresses=tuple(ips),
        directory_names=tuple(directories),
    )


def extended_key_usages(raw: RawCertificate) -> tuple[str, ...] | None:
    """The EKU purposes of *raw* as dotted OIDs, or ``None`` without the extension."""
    values = raw.extension_values(EXTENDED_KEY_USAGE)
    if not values:
        return None
    try:
        return tuple(oid.dotted for oid in _OIDSequence.load(values[0]))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"extended key usage: {exc}") from None


def _check_name(field: str, rdns: Sequence[Sequence[RawAttribute]]) -> None:
    for rdn in rdns:
        for _, tag, content, _ in rdn:
            if _has_control(tag, content):
                raise UnsafeNameError(field)


def serial_hex(serial: int) -> str:
    """Format a certificate serial as OpenSSL's ``i2a_ASN1_INTEGER``: uppercase hex, whole bytes.

    ``1 -> "01"``, ``0x1234 -> "1234"``, ``-5 -> "-05"`` (RFC 5280 §4.1.2.2 serials are positive,
    but certificates in the wild are not always conforming). Unlike ``i2a_ASN1_INTEGER``, no
    ``\\`` + newline is inserted after every 35 bytes of a (non-conforming) longer serial.
    """
    sign = "-" if serial < 0 else ""
    magnitude = abs(serial)
    length = max(1, (magnitude.bit_length() + 7) // 8)
    return sign + magnitude.to_bytes(length, "big").hex().upper()


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _cryptography_certificate(der: bytes) -> x509.Certificate | None:
    """cryptography's view of *der*, or ``None`` where its stricter parser refuses it (and
    without the warnings it gives for non-conforming serials: they are not the client's news)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return x509.load_der_x509_certificate(der)
        except Exception:  # any refusal (today ValueError) means "not available"
            return None


def _common_names(rdns: Sequence[Sequence[RawAttribute]]) -> Iterator[str | None]:
    for rdn in rdns:
        for oid, tag, content, _ in rdn:
            if oid == COMMON_NAME:
                yield decode_value(tag, content)


@attrs.frozen
class ClientIdentity:
    """Who the client is, from the leaf certificate it presented and the gateway verified.

    Strings are as in the certificate (Python ``str``, not escaped for headers), except
    ``subject`` and ``issuer``, which are RFC 4514 strings exactly as OpenSSL's
    ``XN_FLAG_RFC2253`` (and so nginx's ``$ssl_client_s_dn``) prints them.
    """

    subject: str
    issuer: str
    common_names: tuple[str, ...]  # subject CN attributes that decode, in certificate order
    dns_names: tuple[str, ...]  # RFC 5280 §4.2.1.6 dNSName
    uris: tuple[str, ...]  # uniformResourceIdentifier
    emails: tuple[str, ...]  # rfc822Name
    ip_addresses: tuple[str, ...]  # iPAddress, in Python's compressed text form
    fingerprint_sha256: str  # 64 lowercase hex digits, SHA-256 of the DER certificate
    serial: str  # uppercase hex, two digits per byte, as nginx's $ssl_client_serial
    not_before: datetime.datetime  # UTC
    not_after: datetime.datetime  # UTC
    pem: str  # the certificate, PEM with "\n" line ends
    # cryptography's parse of the certificate, or None where cryptography refuses the DER.
    certificate: x509.Certificate | None = attrs.field(eq=False, repr=False)
    # One label ("CN") per name value that could not be decoded (left out of common_names).
    undecoded: tuple[str, ...] = ()
    # SHA-256 (64 lowercase hex digits) of the DER of the certificate that issued the leaf in
    # the chain OpenSSL verified (the leaf itself when it is trusted directly): set per
    # connection (see with_issuer); None where no verified chain is known.
    issuer_sha256: str | None = None

    def with_issuer(self, issuer_der: bytes) -> ClientIdentity:
        """This identity with :attr:`issuer_sha256` of the DER certificate *issuer_der* (cached:
        clients reconnect with the same certificates and chains)."""
        return _with_issuer(self, issuer_der)

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> ClientIdentity:
        """Build the identity of *certificate* (the verified leaf): :func:`identity_from_der`
        of its DER, keeping *certificate* itself as ``certificate``."""
        return _from_der(certificate.public_bytes(Encoding.DER), certificate)

    @classmethod
    def from_der(cls, der: bytes) -> ClientIdentity:
        """Build the identity of DER certificate *der* (uncached; see :func:`identity_from_der`).

        Raises :class:`UnsafeNameError` when a subject or issuer attribute value or a SAN holds a
        control character (C0, DEL or C1), which no header or log line may carry, and
        ``ValueError`` when the names cannot be read at all.
        """
        return _from_der(der, _cryptography_certificate(der))


def _from_der(der: bytes, certificate: x509.Certificate | None) -> ClientIdentity:
    raw = read_certificate(der)
    _check_name("subject", raw.subject)
    _check_name("issuer", raw.issuer)
    sans = read_sans(raw)
    names = list(_common_names(raw.subject))
    return ClientIdentity(
        subject=format_rdns(raw.subject),
        issuer=format_rdns(raw.issuer),
        common_names=tuple(n for n in names if n is not None),
        dns_names=sans.dns_names,
        uris=sans.uris,
        emails=sans.emails,
        ip_addresses=sans.ip_addresses,
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        serial=serial_hex(raw.serial),
        not_before=raw.not_before,
        not_after=raw.not_after,
        pem=_pem(der),
        certificate=certificate,
        undecoded=tuple("CN" for n in names if n is None),
    )


@functools.lru_cache(maxsize=4096)
def _with_issuer(identity: ClientIdentity, issuer_der: bytes) -> ClientIdentity:
    return attrs.evolve(identity, issuer_sha256=hashlib.sha256(issuer_der).hexdigest())


@functools.lru_cache(maxsize=4096)
def identity_from_der(der: bytes) -> ClientIdentity:
    """:meth:`ClientIdentity.from_der` of the DER certificate *der*, cached by its bytes.

    Clients reconnect with the same few certificates; parsing and formatting each once keeps the
    handshake path short. Raises ``ValueError`` for bytes that cannot be read as a certificate and
    :class:`UnsafeNameError` as ``from_der`` does (errors are not cached).
    """
    return ClientIdentity.from_der(der)


def check_names(certificate: x509.Certificate | bytes) -> None:
    """Raise :class:`UnsafeNameError` if any name the gateway matches or forwards carries a
    control character (NUL included): subject and issuer attribute values, and the DNS, URI,
    email and directory-name SANs. Returns ``None`` when the certificate is clean.

    *certificate* is a cryptography certificate or DER bytes.
    """
    der = certificate if isinstance(certificate, bytes) else certificate.public_bytes(Encoding.DER)
    raw = read_certificate(der)
    _check_name("subject", raw.subject)
    _check_name("issuer", raw.issuer)
    read_sans(raw)


__all__ = [
    "ClientIdentity",
    "RawCertificate",
    "SubjectAltNames",
    "UnreadableCertificateError",
    "UnsafeNameError",
    "check_names",
    "decode_value",
    "extended_key_usages",
    "identity_from_der",
    "read_certificate",
    "read_name",
    "read_sans",
    "serial_hex",
]
