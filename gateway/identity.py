"""The client's identity, read from its verified leaf certificate.

Pure code over ``cryptography`` objects: no TLS library, no reactor. :class:`ClientIdentity` is what
authorizers decide on and what the identity headers are written from.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from collections.abc import Iterator

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.dn import format_name


class UnsafeNameError(ValueError):
    """A certificate name carries a character the gateway refuses to forward or match on.

    ``field`` names where (``subject``, ``issuer``, ``SAN DNS``, …).
    """

    def __init__(self, field: str) -> None:
        super().__init__(f"control character in certificate {field}")
        self.field = field


@attrs.frozen
class ClientIdentity:
    """Who the client is, from the leaf certificate it presented and the gateway verified.

    Strings are as in the certificate (Python ``str``, not escaped for headers), except
    ``subject`` and ``issuer``, which are RFC 4514 strings exactly as OpenSSL's
    ``XN_FLAG_RFC2253`` (and so nginx's ``$ssl_client_s_dn``) prints them.
    """

    subject: str
    issuer: str
    common_names: tuple[str, ...]  # subject CN attributes, in certificate order
    dns_names: tuple[str, ...]  # RFC 5280 §4.2.1.6 dNSName
    uris: tuple[str, ...]  # uniformResourceIdentifier
    emails: tuple[str, ...]  # rfc822Name
    ip_addresses: tuple[str, ...]  # iPAddress, in Python's compressed text form
    fingerprint_sha256: str  # 64 lowercase hex digits, SHA-256 of the DER certificate
    serial: str  # uppercase hex, two digits per byte, as nginx's $ssl_client_serial
    not_before: datetime.datetime  # UTC
    not_after: datetime.datetime  # UTC
    pem: str  # the certificate, PEM with "\n" line ends
    certificate: x509.Certificate = attrs.field(eq=False, repr=False)

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> ClientIdentity:
        """Build the identity of *certificate* (the verified leaf).

        Raises :class:`UnsafeNameError` when a subject or issuer attribute value or a SAN holds a
        control character (C0, DEL or C1), which no header or log line may carry.
        """
        check_names(certificate)
        sans = _sans(certificate)
        return cls(
            subject=format_name(certificate.subject),
            issuer=format_name(certificate.issuer),
            common_names=tuple(
                str(a.value)
                for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            ),
            dns_names=tuple(sans.get_values_for_type(x509.DNSName)) if sans else (),
            uris=tuple(sans.get_values_for_type(x509.UniformResourceIdentifier)) if sans else (),
            emails=tuple(sans.get_values_for_type(x509.RFC822Name)) if sans else (),
            ip_addresses=tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
            if sans
            else (),
            fingerprint_sha256=hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest(),
            serial=serial_hex(certificate.serial_number),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
            certificate=certificate,
        )


@functools.lru_cache(maxsize=4096)
def identity_from_der(der: bytes) -> ClientIdentity:
    """:meth:`ClientIdentity.from_certificate` of the DER certificate *der*, cached by its bytes.

    Clients reconnect with the same few certificates; parsing and formatting each once keeps the
    handshake path short. Raises ``ValueError`` for bytes that are not a certificate and
    :class:`UnsafeNameError` as ``from_certificate`` does (errors are not cached).
    """
    return ClientIdentity.from_certificate(x509.load_der_x509_certificate(der))


def serial_hex(serial: int) -> str:
    """Format a certificate serial as OpenSSL's ``i2a_ASN1_INTEGER``: uppercase hex, whole bytes.

    ``1 -> "01"``, ``0x1234 -> "1234"``, ``-5 -> "-05"`` (RFC 5280 §4.1.2.2 serials are positive,
    but certificates in the wild are not always conforming).
    """
    sign = "-" if serial < 0 else ""
    magnitude = abs(serial)
    length = max(1, (magnitude.bit_length() + 7) // 8)
    return sign + magnitude.to_bytes(length, "big").hex().upper()


def _sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _is_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text)


def _name_values(name: x509.Name) -> Iterator[str]:
    for attribute in name:
        value = attribute.value
        yield value if isinstance(value, str) else value.decode("latin-1")


def check_names(certificate: x509.Certificate) -> None:
    """Raise :class:`UnsafeNameError` if any name the gateway matches or forwards carries a
    control character (NUL included): subject and issuer attribute values, and the DNS, URI,
    email and directory-name SANs. Returns ``None`` when the certificate is clean.
    """
    for field, name in (("subject", certificate.subject), ("issuer", certificate.issuer)):
        if any(_is_control(v) for v in _name_values(name)):
            raise UnsafeNameError(field)
    sans = _sans(certificate)
    if sans is None:
        return
    for kind, label in (
        (x509.DNSName, "SAN DNS"),
        (x509.UniformResourceIdentifier, "SAN URI"),
        (x509.RFC822Name, "SAN email"),
    ):
        if any(_is_control(v) for v in sans.get_values_for_type(kind)):
            raise UnsafeNameError(label)
    for directory_name in sans.get_values_for_type(x509.DirectoryName):
        if any(_is_control(v) for v in _name_values(directory_name)):
            raise UnsafeNameError("SAN directory name")
