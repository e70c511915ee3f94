"""A fixed test certificate for the header-format tests and docs/headers.md.

Ed25519 keys from fixed seeds, a fixed serial and fixed dates: Ed25519 signatures are
deterministic, so the DER (and every header written from it) is the same on every run.
``python tests/formats_fixture.py`` prints every header each format writes for it.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOT_BEFORE = datetime.datetime(2026, 1, 31, 12, 0, 0, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2027, 1, 31, 12, 0, 0, tzinfo=datetime.UTC)


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _certificate(subject: x509.Name, issuer: x509.Name, key: Ed25519PrivateKey,
                 issuer_key: Ed25519PrivateKey, serial: int, ca: bool,
                 sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, None)


ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "Example Root CA")])
INTERMEDIATE_NAME = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
    x509.NameAttribute(NameOID.COMMON_NAME, "Example Client CA")])
LEAF_NAME = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "payments"),
    x509.NameAttribute(NameOID.COMMON_NAME, "alice")])

INTERMEDIATE = _certificate(INTERMEDIATE_NAME, ROOT_NAME, _key(2), _key(1), 0x1001, True)
LEAF = _certificate(LEAF_NAME, INTERMEDIATE_NAME, _key(3), _key(2), 0x3C2E1210, False, [
    x509.UniformResourceIdentifier("spiffe://example.org/ns/prod/sa/web"),
    x509.DNSName("alice.example.com"),
    x509.DNSName("api.example.com"),
    x509.RFC822Name("alice@example.com"),
    x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.5")),
])
LEAF_DER = LEAF.public_bytes(Encoding.DER)
INTERMEDIATE_DER = INTERMEDIATE.public_bytes(Encoding.DER)


def main() -> None:
    from gateway.config import HeaderSettings
    from gateway.formats import FORMATS
    from gateway.headers import identity_values
    from gateway.identity import ClientIdentity

    identity = ClientIdentity.from_der(LEAF_DER)
    for fmt in FORMATS:
        settings = HeaderSettings("X-Client-", False, formats=(fmt,),
                                  xfcc_details=("Cert", "Chain", "Subject", "URI", "DNS"),
                                  xfcc_by=("spiffe://example.org/ns/edge/sa/mtlsgw",))
        print(f"# {fmt}")
        for header, value in identity_values(identity, settings, (INTERMEDIATE_DER,)):
            print(f"{header.decode()}: {value.decode()}")


if __name__ == "__main__":
    main()
