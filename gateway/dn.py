"""Render X.509 distinguished names exactly as OpenSSL's RFC 2253 printer.

nginx (>= 1.11.6) fills ``$ssl_client_s_dn`` and ``$ssl_client_i_dn`` with
``X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253)``; ``openssl x509 -noout
-subject -nameopt RFC2253`` prints the same string after ``subject=``.  This
module reproduces that output byte for byte from a parsed
:class:`cryptography.x509.Name`, in pure Python, so that the gateway can hand
backends the same DN strings an nginx front end would.

The rules, taken from OpenSSL's ``crypto/asn1/a_strex.c`` (``do_name_ex``,
``do_print_ex``, ``do_buf``, ``do_esc_char``, ``do_dump``) and checked against
the ``openssl`` command line tool:

* ``XN_FLAG_DN_REV`` reverses the flat list of attribute-value assertions
  (AVAs), so the RDNs come out last-first and the AVAs inside a multi-valued
  RDN are reversed as well.  RDNs are joined with ``,`` and the AVAs of one
  RDN with ``+``; no spaces are added anywhere.
* An attribute type that OpenSSL knows is printed as its OpenSSL short name
  (``CN``, ``O``, ``emailAddress``, ``DC``, ...).  Any other type is printed as
  a dotted OID, cut to 79 characters like OpenSSL's 80-byte buffer does, and
  its value is dumped as ``#`` followed by the uppercase hex of the value's
  whole DER encoding (tag, length, content).
* Values of a known type are shown according to their ASN.1 string type:
  UTF8String bytes are used as they are; BMPString (UCS-2) and
  UniversalString (UCS-4) are converted to UTF-8, with code units that
  cannot be encoded (such as UTF-16 surrogates) dropped; every other string
  type (PrintableString, IA5String, T61String, ...) is taken one byte per
  character, i.e. as Latin-1, and converted to UTF-8.  Values whose type is
  not a string type (BIT STRING, OCTET STRING) are dumped as ``#`` + hex DER.
* The UTF-8 bytes are escaped as ``ASN1_STRFLGS_RFC2253`` asks: a backslash
  before ``, + " \\ < > ;``, before a ``#`` or space that is the first byte and
  before a space that is the last byte (a one-byte value counts only as
  last, so a lone ``#`` stays bare), and ``\\XX`` (uppercase hex) for control
  bytes, DEL and every byte >= 0x80.  ``=`` is not escaped.

The result therefore only ever contains printable ASCII (0x20-0x7E).

Only the attribute types listed in ``_SHORT_NAMES`` are treated as known.
It holds every OID that OpenSSL 3.0 names under the usual attribute arcs;
an OID that OpenSSL knows for another purpose (an algorithm OID used as an
attribute type, say) is printed here in the dotted ``#hex`` form, where
OpenSSL would print its short name and the string value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from cryptography import x509
from cryptography.x509.name import _ASN1Type

__all__ = ["RawAttribute", "format_name", "format_rdns"]

# OID (dotted) -> OpenSSL short name, as OBJ_nid2sn() returns it.  Extracted
# from ``openssl list -objects`` (OpenSSL 3.0); every entry is checked
# against the openssl CLI by tests/test_dn.py.
_SHORT_NAMES: Final[Mapping[str, str]] = {
    # X.520 / X.500 attribute types (2.5.4.*)
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.13": "description",
    "2.5.4.14": "searchGuide",
    "2.5.4.15": "businessCategory",
    "2.5.4.16": "postalAddress",
    "2.5.4.17": "postalCode",
    "2.5.4.18": "postOfficeBox",
    "2.5.4.19": "physicalDeliveryOfficeName",
    "2.5.4.20": "telephoneNumber",
    "2.5.4.21": "telexNumber",
    "2.5.4.22": "teletexTerminalIdentifier",
    "2.5.4.23": "facsimileTelephoneNumber",
    "2.5.4.24": "x121Address",
    "2.5.4.25": "internationaliSDNNumber",
    "2.5.4.26": "registeredAddress",
    "2.5.4.27": "destinationIndicator",
    "2.5.4.28": "preferredDeliveryMethod",
    "2.5.4.29": "presentationAddress",
    "2.5.4.30": "supportedApplicationContext",
    "2.5.4.31": "member",
    "2.5.4.32": "owner",
    "2.5.4.33": "roleOccupant",
    "2.5.4.34": "seeAlso",
    "2.5.4.35": "userPassword",
    "2.5.4.36": "userCertificate",
    "2.5.4.37": "cACertificate",
    "2.5.4.38": "authorityRevocationList",
    "2.5.4.39": "certificateRevocationList",
    "2.5.4.40": "crossCertificatePair",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.45": "x500UniqueIdentifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.47": "enhancedSearchGuide",
    "2.5.4.48": "protocolInformation",
    "2.5.4.49": "distinguishedName",
    "2.5.4.50": "uniqueMember",
    "2.5.4.51": "houseIdentifier",
    "2.5.4.52": "supportedAlgorithms",
    "2.5.4.53": "deltaRevocationList",
    "2.5.4.54": "dmdName",
    "2.5.4.65": "pseudonym",
    "2.5.4.72": "role",
    "2.5.4.97": "organizationIdentifier",
    "2.5.4.98": "c3",
    "2.5.4.99": "n3",
    "2.5.4.100": "dnsName",
    # RFC 4519 / COSINE pilot attributes (0.9.2342.19200300.100.1.*)
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.2": "textEncodedORAddress",
    "0.9.2342.19200300.100.1.3": "mail",
    "0.9.2342.19200300.100.1.4": "info",
    "0.9.2342.19200300.100.1.5": "favouriteDrink",
    "0.9.2342.19200300.100.1.6": "roomNumber",
    "0.9.2342.19200300.100.1.7": "photo",
    "0.9.2342.19200300.100.1.8": "userClass",
    "0.9.2342.19200300.100.1.9": "host",
    "0.9.2342.19200300.100.1.10": "manager",
    "0.9.2342.19200300.100.1.11": "documentIdentifier",
    "0.9.2342.19200300.100.1.12": "documentTitle",
    "0.9.2342.19200300.100.1.13": "documentVersion",
    "0.9.2342.19200300.100.1.14": "documentAuthor",
    "0.9.2342.19200300.100.1.15": "documentLocation",
    "0.9.2342.19200300.100.1.20": "homeTelephoneNumber",
    "0.9.2342.19200300.100.1.21": "secretary",
    "0.9.2342.19200300.100.1.22": "otherMailbox",
    "0.9.2342.19200300.100.1.23": "lastModifiedTime",
    "0.9.2342.19200300.100.1.24": "lastModifiedBy",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.26": "aRecord",
    "0.9.2342.19200300.100.1.27": "pilotAttributeType27",
    "0.9.2342.19200300.100.1.28": "mXRecord",
    "0.9.2342.19200300.100.1.29": "nSRecord",
    "0.9.2342.19200300.100.1.30": "sOARecord",
    "0.9.2342.19200300.100.1.31": "cNAMERecord",
    "0.9.2342.19200300.100.1.37": "associatedDomain",
    "0.9.2342.19200300.100.1.38": "associatedName",
    "0.9.2342.19200300.100.1.39": "homePostalAddress",
    "0.9.2342.19200300.100.1.40": "personalTitle",
    "0.9.2342.19200300.100.1.41": "mobileTelephoneNumber",
    "0.9.2342.19200300.100.1.42": "pagerTelephoneNumber",
    "0.9.2342.19200300.100.1.43": "friendlyCountryName",
    "0.9.2342.19200300.100.1.44": "uid",
    "0.9.2342.19200300.100.1.45": "organizationalStatus",
    "0.9.2342.19200300.100.1.46": "janetMailbox",
    "0.9.2342.19200300.100.1.47": "mailPreferenceOption",
    "0.9.2342.19200300.100.1.48": "buildingName",
    "0.9.2342.19200300.100.1.49": "dSAQuality",
    "0.9.2342.19200300.100.1.50": "singleLevelQuality",
    "0.9.2342.19200300.100.1.51": "subtreeMinimumQuality",
    "0.9.2342.19200300.100.1.52": "subtreeMaximumQuality",
    "0.9.2342.19200300.100.1.53": "personalSignature",
    "0.9.2342.19200300.100.1.54": "dITRedirect",
    "0.9.2342.19200300.100.1.55": "audio",
    "0.9.2342.19200300.100.1.56": "documentPublisher",
    # PKCS #9 attributes (1.2.840.113549.1.9.*)
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.2.840.113549.1.9.3": "contentType",
    "1.2.840.113549.1.9.4": "messageDigest",
    "1.2.840.113549.1.9.5": "signingTime",
    "1.2.840.113549.1.9.6": "countersignature",
    "1.2.840.113549.1.9.7": "challengePassword",
    "1.2.840.113549.1.9.8": "unstructuredAddress",
    "1.2.840.113549.1.9.9": "extendedCertificateAttributes",
    "1.2.840.113549.1.9.14": "extReq",
    "1.2.840.113549.1.9.15": "SMIME-CAPS",
    "1.2.840.113549.1.9.16": "SMIME",
    "1.2.840.113549.1.9.20": "friendlyName",
    "1.2.840.113549.1.9.21": "localKeyID",
    # EV jurisdiction attributes (1.3.6.1.4.1.311.60.2.1.*)
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
    # RFC 3739 personal data attributes (1.3.6.1.5.5.7.9.*)
    "1.3.6.1.5.5.7.9.1": "id-pda-dateOfBirth",
    "1.3.6.1.5.5.7.9.2": "id-pda-placeOfBirth",
    "1.3.6.1.5.5.7.9.3": "id-pda-gender",
    "1.3.6.1.5.5.7.9.4": "id-pda-countryOfCitizenship",
    "1.3.6.1.5.5.7.9.5": "id-pda-countryOfResidence",
    # Russian qualified-certificate identifiers (1.2.643.*)
    "1.2.643.3.131.1.1": "INN",
    "1.2.643.100.1": "OGRN",
    "1.2.643.100.3": "SNILS",
    "1.2.643.100.5": "OGRNIP",
}

# OpenSSL's OBJ_obj2txt() writes into a char[80] buffer in do_name_ex().
_MAX_OID_TEXT: Final = 79

# a_strex.c tag2nbyte: bytes per character of each universal string tag;
# 0 is UTF-8; tags that are missing are not strings and get dumped.
_CHAR_WIDTH: Final[Mapping[int, int]] = {
    _ASN1Type.UTF8String.value: 0,
    _ASN1Type.NumericString.value: 1,
    _ASN1Type.PrintableString.value: 1,
    _ASN1Type.T61String.value: 1,
    _ASN1Type.IA5String.value: 1,
    _ASN1Type.UTCTime.value: 1,
    _ASN1Type.GeneralizedTime.value: 1,
    _ASN1Type.VisibleString.value: 1,
    _ASN1Type.UniversalString.value: 4,
    _ASN1Type.BMPString.value: 2,
}

# Bytes that ESC_2253 always escapes with a backslash (charmap.h).
_BACKSLASH_ESCAPED: Final = frozenset(b',+"\\<>;')


# One attribute-value assertion as read from the DER: (dotted OID, universal tag number of the
# value or -1 for any other class, the value's content octets, the value's whole DER TLV).
RawAttribute = tuple[str, int, bytes, bytes]


def format_name(name: x509.Name) -> str:
    """Format a distinguished name the way OpenSSL's XN_FLAG_RFC2253 does.

    Args:
        name: A parsed :class:`cryptography.x509.Name`, such as
            ``cert.subject`` or ``cert.issuer``.

    Returns:
        The RFC 4514 (RFC 2253) string exactly as OpenSSL's
        ``X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253)`` prints it,
        which is what nginx puts in ``$ssl_client_s_dn`` and
        ``$ssl_client_i_dn`` and what ``openssl x509 -noout -subject
        -nameopt RFC2253`` prints after ``subject=``.  RDNs come out in
        reverse order, separated by ``,``; AVAs of a multi-valued RDN are
        reversed too and separated by ``+``.  An empty name gives ``""``.
        The string only contains printable ASCII characters.

    This function never raises for a Name that cryptography parsed from a
    certificate, CSR or CRL; hand-built names with values cryptography
    would never produce (lone surrogates, say) are formatted too, not
    rejected.  :func:`format_rdns` formats a name read from the DER
    directly (``gateway.identity`` does that, for names cryptography refuses).
    """
    rdns = []
    for rdn in name.rdns:
        attributes = []
        for attribute in rdn:
            tag = attribute._type.value
            content = _content_octets(attribute.value, tag)
            tlv = _der_header(tag, len(content)) + content
            attributes.append((attribute.oid.dotted_string, tag, content, tlv))
        rdns.append(attributes)
    return format_rdns(rdns)


def format_rdns(rdns: Sequence[Sequence[RawAttribute]]) -> str:
    """:func:`format_name` of a name given as its RDNs in encoding order, each a sequence of
    :data:`RawAttribute` in encoding order (which need not be DER SET order: OpenSSL prints the
    AVAs of a multi-valued RDN as they are encoded, reversed). An empty RDN prints nothing.
    """
    entries = [
        (set_index, attribute) for set_index, rdn in enumerate(rdns) for attribute in rdn
    ]
    entries.reverse()

    parts: list[str] = []
    previous_set = -1
    for set_index, attribute in entries:
        if previous_set != -1:
            parts.append("+" if set_index == previous_set else ",")
        previous_set = set_index
        parts.append(_format_attribute(attribute))
    return "".join(parts)


def _format_attribute(attribute: RawAttribute) -> str:
    """Return ``type=value`` for one AVA."""
    oid, tag, content, tlv = attribute
    short_name = _SHORT_NAMES.get(oid)
    if short_name is None:
        # XN_FLAG_DUMP_UNKNOWN_FIELDS: unknown type -> dotted OID + DER dump.
        return f"{oid[:_MAX_OID_TEXT]}={_dump(tag, content, tlv)}"
    width = _CHAR_WIDTH.get(tag)
    if width is None:
        # ASN1_STRFLGS_DUMP_UNKNOWN: not a string type -> DER dump.
        return f"{short_name}={_dump(tag, content, tlv)}"
    return f"{short_name}={_escape(content, width)}"


def char_width(tag: int) -> int | None:
    """Bytes per character OpenSSL reads for universal string *tag* (0: UTF-8), or ``None`` for a
    tag that is not a string type (its value is printed as ``#`` + hex DER)."""
    return _CHAR_WIDTH.get(tag)


def is_known_type(oid: str) -> bool:
    """True if OpenSSL prints attribute type *oid* by a short name (and decodes its value)."""
    return oid in _SHORT_NAMES


def _content_octets(value: str | bytes, tag: int) -> bytes:
    """Rebuild the DER content octets cryptography decoded ``value`` from.

    cryptography decodes BMPString as UTF-16BE, UniversalString as UTF-32BE,
    every other string type as UTF-8 and keeps BIT STRING content as bytes,
    so encoding back the same way gives the original octets.
    """
    if isinstance(value, bytes):
        return value
    if tag == _ASN1Type.BMPString.value:
        encoding = "utf-16-be"
    elif tag == _ASN1Type.UniversalString.value:
        encoding = "utf-32-be"
    else:
        encoding = "utf-8"
    return value.encode(encoding, "surrogatepass")


def _code_units(content: bytes, width: int) -> list[int]:
    """Split string content into the units do_buf() reads one at a time.

    Width 0 (UTF8String) is read byte by byte, exactly like width 1, because
    with UTF8_CONVERT OpenSSL skips decoding a string that is already UTF-8.
    A trailing partial unit, which cryptography never produces, is ignored.
    """
    step = max(width, 1)
    usable = len(content) - len(content) % step
    return [int.from_bytes(content[i : i + step], "big") for i in range(0, usable, step)]


def _utf8_putc(code_point: int) -> bytes:
    """Encode one code point as OpenSSL's UTF8_putc(); b"" where it fails.

    UTF8_putc() refuses surrogates and values above U+10FFFF, and do_buf()
    then prints nothing for that unit.
    """
    if 0xD800 <= code_point <= 0xDFFF or code_point > 0x10FFFF:
        return b""
    return chr(code_point).encode("utf-8")


def _escape(content: bytes, width: int) -> str:
    """Print string content as do_buf() + do_esc_char() with RFC 2253 flags."""
    units = _code_units(content, width)
    out: list[str] = []
    last_index = len(units) - 1
    for index, unit in enumerate(units):
        # do_buf() sets the "first" flag, then overwrites it with "last" when
        # the unit is also the final one: a one-unit value is only "last".
        is_last = index == last_index
        is_first = index == 0 and not is_last
        encoded = bytes((unit,)) if width == 0 else _utf8_putc(unit)
        for byte in encoded:
            out.append(_escape_byte(byte, is_first=is_first, is_last=is_last))
    return "".join(out)


def _escape_byte(byte: int, *, is_first: bool, is_last: bool) -> str:
    """Escape one output byte as do_esc_char() does for XN_FLAG_RFC2253."""
    if byte in _BACKSLASH_ESCAPED:
        return "\\" + chr(byte)
    if byte == 0x20 and (is_first or is_last):
        return "\\ "
    if byte == 0x23 and is_first:
        return "\\#"
    if byte < 0x20 or byte >= 0x7F:
        return f"\\{byte:02X}"
    return chr(byte)


def _dump(tag: int, content: bytes, tlv: bytes) -> str:
    """Return ``#`` + uppercase hex of the value's DER TLV (do_dump()).

    A universal primitive value is re-encoded from its tag and content, as OpenSSL's
    ``i2d_ASN1_TYPE`` does; anything else (a SEQUENCE, which OpenSSL keeps in its encoded form)
    is printed as it was encoded.
    """
    if tag == _ASN1Type.BitString.value:
        content = _normalise_bit_string(content)
    elif tag < 0 or tag == 0x10 or (tlv[:1] and tlv[0] & 0x20):
        return "#" + tlv.hex().upper()
    return "#" + (_der_header(tag, len(content)) + content).hex().upper()


def _normalise_bit_string(content: bytes) -> bytes:
    """Re-encode BIT STRING content as OpenSSL's c2i/i2c round trip does.

    OpenSSL clears the unused bits of the last octet when it parses the
    value, and writes 0 unused bits when there are no data octets.
    """
    if not content or content[0] > 7:
        # OpenSSL refuses such a certificate; keep the octets unchanged.
        return content
    unused, data = content[0], bytearray(content[1:])
    if not data:
        return b"\x00"
    data[-1] &= (0xFF << unused) & 0xFF
    return bytes((unused,)) + bytes(data)


def _der_header(tag: int, length: int) -> bytes:
    """Return the DER identifier and length octets for a universal tag."""
    if length < 0x80:
        return bytes((tag, length))
    length_octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length_octets))) + length_octets
