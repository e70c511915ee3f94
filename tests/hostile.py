"""Hostile certificates for the tests: DER that cryptography refuses to build, made with asn1crypto.

Names, general names and extensions are assembled from raw TLVs (``tlv``), so a test can write
any tag and any octets: a PrintableString holding ``*`` or ``&``, Latin-1 bytes in a T61String, a
SET whose members are not in DER order, an empty RDN, a SEQUENCE where a string belongs. A base
certificate made by :mod:`gateway.pki` is then patched (subject, issuer, serial, extensions) and
signed again with the issuer's key (:func:`patch`).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asn1crypto import core, parser
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

OPENSSL = shutil.which("openssl")

# Universal tags.
BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID = 1, 2, 3, 4, 5, 6
UTF8, SEQUENCE, SET, NUMERIC, PRINTABLE, T61, IA5 = 12, 16, 17, 18, 19, 20, 22
VISIBLE, UNIVERSAL, BMP = 26, 28, 30

CN = "2.5.4.3"
O = "2.5.4.10"  # noqa: E741
OU = "2.5.4.11"
C = "2.5.4.6"
L = "2.5.4.7"
UID = "0.9.2342.19200300.100.1.1"
DESCRIPTION = "2.5.4.13"
X500_UNIQUE_IDENTIFIER = "2.5.4.45"
SAN = "2.5.29.17"


def tlv(tag: int, content: bytes, *, constructed: bool | None = None, class_: int = 0) -> bytes:
    """The DER of one value: *class_* (0 universal, 2 context), *tag*, *content*."""
    if constructed is None:
        constructed = class_ == 0 and tag in (SEQUENCE, SET)
    value = core.Asn1Value(class_=class_, tag=tag, method=1 if constructed else 0,
                           contents=content)
    return bytes(value.dump())


def oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


def ava(attribute: str, tag: int, content: bytes | str) -> bytes:
    """An AttributeTypeAndValue; *content* str is encoded as UTF-8 (BMP: UTF-16BE)."""
    if isinstance(content, str):
        content = content.encode("utf-16-be" if tag == BMP else
                                 "utf-32-be" if tag == UNIVERSAL else "utf-8")
    value = content if tag == -1 else tlv(tag, content)
    return tlv(SEQUENCE, oid(attribute) + value)


def ava_raw(attribute: str, value_tlv: bytes) -> bytes:
    """An AttributeTypeAndValue whose value is the TLV *value_tlv* as given."""
    return tlv(SEQUENCE, oid(attribute) + value_tlv)


def rdn(*avas: bytes) -> bytes:
    """A SET of AVAs in the order given (not re-sorted into DER order)."""
    return tlv(SET, b"".join(avas))


def name(*rdns: bytes | Sequence[bytes]) -> bytes:
    """A Name from RDNs in encoding order: each an ``rdn()`` or a bare AVA (one-AVA RDN)."""
    parts = []
    for item in rdns:
        if isinstance(item, bytes) and item[:1] == b"\x31":
            parts.append(item)
        elif isinstance(item, bytes):
            parts.append(rdn(item))
        else:
            parts.append(rdn(*item))
    return tlv(SEQUENCE, b"".join(parts))


def general_name(tag: int, content: bytes, *, constructed: bool = False) -> bytes:
    return tlv(tag, content, constructed=constructed, class_=2)


def general_names(*names: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(names))


def extension(extn_id: str, value: bytes, *, critical: bool = False) -> bytes:
    flag = tlv(BOOLEAN, b"\xff") if critical else b""
    return tlv(SEQUENCE, oid(extn_id) + flag + tlv(OCTET_STRING, value))


def split(content: bytes) -> list[bytes]:
    """The TLVs one after another in *content* (the content octets of a SEQUENCE or SET)."""
    out = []
    while content:
        _, _, _, header, inner, trailer = parser.parse(content)
        size = len(header) + len(inner) + len(trailer)
        out.append(content[:size])
        content = content[size:]
    return out


def _children(der: bytes) -> list[bytes]:
    return split(bytes(parser.parse(der, strict=True)[4]))


def patch(
    certificate: x509.Certificate, signing_key: Any, *,
    subject: bytes | None = None, issuer: bytes | None = None, serial: int | None = None,
    extensions: Sequence[bytes] | None = None, extra_extensions: Sequence[bytes] = (),
) -> bytes:
    """*certificate* with the given fields replaced, signed again with *signing_key*: the DER.

    *extensions* replaces every extension; *extra_extensions* are appended to the existing ones.
    """
    cert_parts = _children(certificate.public_bytes(Encoding.DER))
    tbs_der, algorithm = cert_parts[0], cert_parts[1]
    fields = _children(tbs_der)
    # version [0], serial, signature, issuer, validity, subject, spki, extensions [3]
    assert fields[0][:1] == b"\xa0", "a v3 certificate"
    if serial is not None:
        fields[1] = bytes(core.Integer(serial).dump())
    if issuer is not None:
        fields[3] = issuer
    if subject is not None:
        fields[5] = subject
    existing: list[bytes] = []
    if len(fields) > 7 and fields[-1][:1] == b"\xa3":
        existing = _children(_children(fields[-1])[0])
        fields = fields[:-1]
    chosen = list(extensions) if extensions is not None else existing
    chosen += list(extra_extensions)
    if chosen:
        fields.append(tlv(3, tlv(SEQUENCE, b"".join(chosen)), constructed=True, class_=2))
    tbs = tlv(SEQUENCE, b"".join(fields))
    if isinstance(signing_key, ec.EllipticCurvePrivateKey):
        signature = signing_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    elif isinstance(signing_key, rsa.RSAPrivateKey):
        signature = signing_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = signing_key.sign(tbs)
    return tlv(SEQUENCE, tbs + algorithm + tlv(BIT_STRING, b"\x00" + signature))


def pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def openssl_print(der: bytes, path: Path, which: str) -> str:
    """What ``openssl x509 -noout -<which> -nameopt RFC2253`` prints for *der* (without the
    ``subject=`` prefix; for ``serial``, the hex after ``serial=``)."""
    assert OPENSSL is not None
    path.write_bytes(pem(der))
    args = [OPENSSL, "x509", "-noout", f"-{which}", "-in", str(path)]
    if which in ("subject", "issuer"):
        args += ["-nameopt", "RFC2253"]
    out = subprocess.run(args, check=True, capture_output=True).stdout
    prefix = f"{which}=".encode("ascii")
    assert out.startswith(prefix) and out.endswith(b"\n"), out
    return out[len(prefix):-1].decode("ascii")


def openssl_verifies(der: bytes, chain: Sequence[bytes], ca_pem: Path, workdir: Path) -> str:
    """``openssl verify -purpose sslclient`` of *der* with *chain* as untrusted: its output."""
    assert OPENSSL is not None
    leaf = workdir / "verify-leaf.pem"
    leaf.write_bytes(pem(der))
    args = [OPENSSL, "verify", "-purpose", "sslclient", "-CAfile", str(ca_pem)]
    if chain:
        untrusted = workdir / "verify-chain.pem"
        untrusted.write_bytes(b"".join(pem(c) for c in chain))
        args += ["-untrusted", str(untrusted)]
    result = subprocess.run([*args, str(leaf)], capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def patch_crl(crl: x509.CertificateRevocationList, signing_key: Any, *, issuer: bytes) -> bytes:
    """*crl* with its issuer name replaced by the DER *issuer*, signed again: the DER."""
    parts = _children(crl.public_bytes(Encoding.DER))
    fields = _children(parts[0])
    # version, signature, issuer, thisUpdate, nextUpdate, revokedCertificates, [0] extensions
    index = 2 if fields[0][:1] == b"\x02" else 1
    fields[index] = issuer
    tbs = tlv(SEQUENCE, b"".join(fields))
    signature = signing_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return tlv(SEQUENCE, tbs + parts[1] + tlv(BIT_STRING, b"\x00" + signature))


def crl_pem(der: bytes) -> bytes:
    return pem(der).replace(b"CERTIFICATE", b"X509 CRL")
