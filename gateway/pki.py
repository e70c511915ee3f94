"""A small PKI for development and tests: CAs, server and client certificates (``cryptography``).

Not for production trust anchors: keys are written unencrypted. ECDSA P-256 by default.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@attrs.frozen
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    def cert_pem(self) -> bytes:
        """The certificate as PEM bytes."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM bytes."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate and the key (mode 0600) as PEM files."""
        cert_path.write_bytes(self.cert_pem())
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem())


def new_key(kind: str = "ec") -> CertificateIssuerPrivateKeyTypes:
    """A new private key: ``ec`` (P-256) or ``rsa`` (2048 bits)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str | None = None, **attributes: str) -> x509.Name:
    """An ``x509.Name``: optional CN, attributes by ``NameOID`` name (``organization_name=``)."""
    parts = [x509.NameAttribute(getattr(NameOID, k.upper()), v) for k, v in attributes.items()]
    if common_name is not None:
        parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(parts)


def _window(
    not_before: datetime.datetime | None, not_after: datetime.datetime | None, days: int
) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    start = not_before or now - _DAY
    return start, not_after or now + days * _DAY


def make_ca(
    subject: x509.Name | str,
    issuer: Issued | None = None,
    *,
    path_length: int | None = None,
    days: int = 3650,
    key_kind: str = "ec",
) -> Issued:
    """A CA certificate: self-signed root when *issuer* is ``None``, else an intermediate."""
    if isinstance(subject, str):
        subject = name(subject)
    key = new_key(key_kind)
    start, end = _window(None, None, days)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(signer_key, _hash(signer_key)), key)


def _hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return hashes.SHA256()
    return None  # Ed25519/Ed448 sign without a separate hash


def general_names(values: Sequence[str]) -> list[x509.GeneralName]:
    """SANs from strings: ``dns:``, ``uri:``, ``email:``, ``ip:`` prefixes; bare values are DNS
    names, or IP addresses when they parse as one."""
    result: list[x509.GeneralName] = []
    for value in values:
        kind, _, rest = value.partition(":")
        if kind == "dns":
            result.append(x509.DNSName(rest))
        elif kind == "uri":
            result.append(x509.UniformResourceIdentifier(rest))
        elif kind == "email":
            result.append(x509.RFC822Name(rest))
        elif kind == "ip":
            result.append(x509.IPAddress(ipaddress.ip_address(rest)))
        else:
            try:
                result.append(x509.IPAddress(ipaddress.ip_address(value)))
            except ValueError:
                result.append(x509.DNSName(value))
    return result


def make_leaf(
    issuer: Issued,
    subject: x509.Name | str | None,
    *,
    sans: Sequence[str | x509.GeneralName] = (),
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    days: int = 365,
    serial: int | None = None,
    key_kind: str = "ec",
) -> Issued:
    """An end-entity certificate signed by *issuer*.

    *subject* is a Name, a CN string, or ``None`` for an empty subject (then give *sans*; the SAN
    extension is marked critical as RFC 5280 §4.2.1.6 asks). *eku* ``None`` leaves the EKU
    extension out. Dates default to yesterday .. *days* from now (UTC).
    """
    if isinstance(subject, str):
        subject = name(subject)
    if subject is None:
        subject = x509.Name([])
    key = new_key(key_kind)
    start, end = _window(not_before, not_after, days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=key_kind == "rsa", data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    names = [s if isinstance(s, x509.GeneralName) else general_names([s])[0] for s in sans]
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=len(subject) == 0)
    return Issued(builder.sign(issuer.key, _hash(issuer.key)), key)


@attrs.frozen
class DevPKI:
    """Paths of the files :func:`write_dev_pki` wrote."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_dev_pki(directory: Path, client_cn: str = "alice",
                  ca_name: str = "mtlsgw dev CA") -> DevPKI:
    """Write a development PKI into *directory* (created if needed; files overwritten):
    ``ca.pem`` (root for both sides), ``server.crt``/``server.key`` (``localhost``, ``127.0.0.1``,
    ``::1``), ``client.crt``/``client.key`` (CN *client_cn*, EKU clientAuth). *ca_name* is the
    CA's CN: give two PKIs used side by side different ones."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca = make_ca(name(ca_name, organization_name="mtlsgw development"))
    server = make_leaf(ca, "localhost", sans=["localhost", "127.0.0.1", "::1"],
                       eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    client = make_leaf(ca, client_cn, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    pki = DevPKI(directory, directory / "ca.pem", directory / "server.crt",
                 directory / "server.key", directory / "client.crt", directory / "client.key")
    pki.ca.write_bytes(ca.cert_pem())
    server.write(pki.server_cert, pki.server_key)
    client.write(pki.client_cert, pki.client_key)
    return pki
