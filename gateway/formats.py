"""The identity header formats other than nginx's: Envoy's XFCC, RFC 9440, Traefik's.

Pure functions, no reactor: each takes the verified leaf's
:class:`~gateway.identity.ClientIdentity` and the DER of the other certificates the client sent
in its handshake (*intermediates*, leaf excluded, in the order sent) and returns ``(name, value)``
pairs of ``bytes``. Every value is single-line printable ASCII. :func:`format_values` combines
the formats a route enables; :mod:`gateway.headers` calls it (once per connection and route
settings: it is cached) and so does anything that wants to show what the gateway would write.

* ``xfcc``: ``X-Forwarded-Client-Cert`` as Envoy's HTTP connection manager writes it with
  ``forward_client_cert_details`` ``SANITIZE_SET``/``APPEND_FORWARD``: one element of
  ``;``-separated ``key=value`` pairs in Envoy's order ``By`` (one per URI SAN of the gateway's
  own certificate), ``Hash`` (SHA-256 hex of the leaf DER), then those of
  ``set_current_client_cert_details`` that are enabled: ``Cert`` (URL-encoded PEM of the leaf),
  ``Chain`` (URL-encoded PEM of the leaf and the intermediates), ``Subject`` (RFC 2253, always
  quoted, ``Subject=""`` for an empty subject), ``URI`` (the first URI SAN, ``URI=`` without
  one), ``DNS`` (one pair per DNS SAN). A value that contains ``,`` ``;`` ``=`` or ``"`` is
  written in double quotes with every ``"`` as ``\\"``; Envoy always quotes ``Cert`` and
  ``Chain``.
* ``rfc9440``: ``Client-Cert``, the leaf DER as a Structured Field Byte Sequence
  (RFC 8941 §3.3.5, ``:base64:``), and ``Client-Cert-Chain``, an sf-list of Byte Sequences of the
  intermediates (left out when the client sent none), RFC 9440 §2.
* ``traefik``: what Traefik v3's ``passTLSClientCert`` middleware writes with ``pem = true`` and
  every ``info`` field enabled: ``X-Forwarded-Tls-Client-Cert``, the base64 DER of each
  certificate the client sent (leaf first) without PEM armour or line breaks, joined with ``,``;
  ``X-Forwarded-Tls-Client-Cert-Info``, for each of them
  ``Subject="…";Issuer="…";SerialNumber="…";NB="…";NA="…";SAN="…"`` joined with ``,`` and then
  URL-escaped as Go's ``url.QueryEscape`` does (space as ``+``).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
from collections.abc import Sequence
from urllib.parse import quote, quote_plus

import http_sf
from http_sf.types import ListType

from gateway.identity import (
    COMMON_NAME,
    ClientIdentity,
    RawCertificate,
    decode_value,
    read_certificate,
    read_sans,
)

Header = tuple[bytes, bytes]

NGINX = "nginx"
XFCC = "xfcc"
RFC9440 = "rfc9440"
TRAEFIK = "traefik"
FORMATS = (NGINX, XFCC, RFC9440, TRAEFIK)

XFCC_HEADER = "X-Forwarded-Client-Cert"
CLIENT_CERT = "Client-Cert"
CLIENT_CERT_CHAIN = "Client-Cert-Chain"
TRAEFIK_CERT = "X-Forwarded-Tls-Client-Cert"
TRAEFIK_INFO = "X-Forwarded-Tls-Client-Cert-Info"

#: Every header name a format writes, lower case: owned by the gateway on every route.
FORMAT_HEADERS = frozenset(
    name.lower().encode("ascii")
    for name in (XFCC_HEADER, CLIENT_CERT, CLIENT_CERT_CHAIN, TRAEFIK_CERT, TRAEFIK_INFO))

#: ``xfcc_details`` values, in the order Envoy writes them.
XFCC_DETAILS = ("Cert", "Chain", "Subject", "URI", "DNS")
#: ``xfcc_mode`` values (Envoy's ``forward_client_cert_details``, lower case).
XFCC_MODES = ("sanitize", "sanitize_set", "forward_only", "append_forward",
              "always_forward_only")
#: The modes that keep an XFCC header a trusted proxy sent.
XFCC_FORWARDING = frozenset({"forward_only", "append_forward", "always_forward_only"})
#: The modes that write the gateway's own element.
XFCC_WRITING = frozenset({"sanitize_set", "append_forward"})

_XFCC_SPECIAL = frozenset(',;="')


# -- XFCC -----------------------------------------------------------------------------------------


def xfcc_value(value: str, *, always_quote: bool = False, dn: bool = False) -> str:
    """One XFCC value, quoted as Envoy's documentation says.

    A value containing ``,`` ``;`` ``=`` or ``"`` (or any value with *always_quote*) is wrapped
    in ``"`` with each ``"`` written ``\\"``. A backslash just before the closing quote would
    read as an escaped quote, so a quoted value never ends in one: in an RFC 4514 string (*dn*)
    the final escaped backslash ``\\\\`` is written ``\\5C`` (RFC 4514 §2.4 allows both), in any
    other value the final ``\\`` is written ``%5C``. Characters outside printable ASCII (which
    only a non-conforming SAN can carry) are written ``%XX``, UTF-8 hex.
    """
    value = _printable(value)
    if not always_quote and not any(ch in _XFCC_SPECIAL for ch in value):
        return value
    if value.endswith("\\"):
        if dn and (len(value) - len(value.rstrip("\\"))) % 2 == 0:
            value = value[:-2] + "\\5C"
        else:
            value = value[:-1] + "%5C"
    return '"' + value.replace('"', '\\"') + '"'


def _printable(text: str) -> str:
    if all(0x20 <= ord(ch) <= 0x7E for ch in text):
        return text
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E else quote(ch, safe="") for ch in text)


def _url_encoded_pem(der: bytes) -> str:
    # Envoy replaces "\n", " ", "+", "/" and "=" in the PEM: every other PEM character is
    # unreserved, so this is quote() with nothing kept safe.
    return quote(_pem(der), safe="")


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def xfcc_element(identity: ClientIdentity, intermediates: Sequence[bytes],
                 details: Sequence[str], by: Sequence[str] = ()) -> str:
    """The XFCC element the gateway writes for *identity* (see the module docstring).

    *details* are names from :data:`XFCC_DETAILS` (any order: Envoy's order is used); *by* the
    URI SANs of the gateway's own certificate.
    """
    pairs = [f"By={xfcc_value(uri)}" for uri in by]
    pairs.append(f"Hash={identity.fingerprint_sha256}")
    wanted = set(details)
    if "Cert" in wanted:
        pairs.append(f'Cert="{_url_encoded_pem(_der(identity))}"')
    if "Chain" in wanted:
        chain = "".join(_url_encoded_pem(der) for der in (_der(identity), *intermediates))
        pairs.append(f'Chain="{chain}"')
    if "Subject" in wanted:
        from gateway.headers import dn_header_value

        pairs.append("Subject=" + xfcc_value(dn_header_value(identity.subject),
                                             always_quote=True, dn=True))
    if "URI" in wanted:
        pairs.append("URI=" + (xfcc_value(identity.uris[0]) if identity.uris else ""))
    if "DNS" in wanted:
        pairs.extend(f"DNS={xfcc_value(name)}" for name in identity.dns_names)
    return ";".join(pairs)


def _der(identity: ClientIdentity) -> bytes:
    return base64.b64decode("".join(identity.pem.strip().splitlines()[1:-1]))


# -- RFC 9440 -------------------------------------------------------------------------------------


def rfc9440_values(identity: ClientIdentity, intermediates: Sequence[bytes]) -> list[Header]:
    """``Client-Cert`` and, when the client sent intermediates, ``Client-Cert-Chain``
    (RFC 9440 §2.2, §2.3), serialised by ``http_sf`` (RFC 8941 / RFC 9651)."""
    values = [(CLIENT_CERT.encode("ascii"), http_sf.ser(_der(identity)).encode("ascii"))]
    if intermediates:
        chain: ListType = [bytes(der) for der in intermediates]
        values.append((CLIENT_CERT_CHAIN.encode("ascii"), http_sf.ser(chain).encode("ascii")))
    return values


def names_client_cert(vary: bytes) -> bool:
    """Whether a ``Vary`` value names ``Client-Cert`` or ``Client-Cert-Chain`` (any case, any
    member of the list): then the gateway rewrites the response's ``Vary`` to ``*``
    (RFC 9440 §2.4)."""
    return any(item.strip().lower() in (b"client-cert", b"client-cert-chain")
               for item in vary.split(b","))


# -- Traefik --------------------------------------------------------------------------------------

_DOMAIN_COMPONENT = "0.9.2342.19200300.100.1.25"
# (label, OID): the order Go's pkix.Name fields are written in by passTLSClientCert.
_SUBJECT_ORDER = (("C", "2.5.4.6"), ("ST", "2.5.4.8"), ("L", "2.5.4.7"), ("O", "2.5.4.10"),
                  ("OU", "2.5.4.11"))
_ISSUER_ORDER = (("C", "2.5.4.6"), ("ST", "2.5.4.8"), ("L", "2.5.4.7"), ("O", "2.5.4.10"))
_SERIAL_NUMBER = "2.5.4.5"


def _go_name(rdns: Sequence[Sequence[tuple[str, int, bytes, bytes]]],
             order: Sequence[tuple[str, str]]) -> str:
    """A name as passTLSClientCert writes it from Go's ``pkix.Name``: every DC, then every C, ST,
    L, O (and OU for a subject) in certificate order, then the last serialNumber and the last CN
    (Go keeps one of each); only string values, and no empty ones."""
    values: list[tuple[str, str]] = []
    for rdn in rdns:
        for oid, tag, content, _ in rdn:
            text = decode_value(tag, content)
            if text is not None:
                values.append((oid, text))
    parts = [f"DC={text}" for oid, text in values if oid == _DOMAIN_COMPONENT]
    for label, wanted in order:
        parts += [f"{label}={text}" for oid, text in values if oid == wanted and text]
    for label, wanted in (("SN", _SERIAL_NUMBER), ("CN", COMMON_NAME)):
        last = [text for oid, text in values if oid == wanted]
        if last and last[-1]:
            parts.append(f"{label}={last[-1]}")
    return ",".join(parts)


def _go_ip(text: str) -> str:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # Go's net.IP.String() prints these as IPv4
    return text


def _traefik_info(raw: RawCertificate) -> str:
    fields = []
    subject = _go_name(raw.subject, (*_SUBJECT_ORDER,))
    if subject:
        fields.append(f'Subject="{subject}"')
    issuer = _go_name(raw.issuer, _ISSUER_ORDER)
    if issuer:
        fields.append(f'Issuer="{issuer}"')
    fields.append(f'SerialNumber="{raw.serial}"')
    fields.append(f'NB="{int(raw.not_before.timestamp()) % 2**64}"')
    fields.append(f'NA="{int(raw.not_after.timestamp()) % 2**64}"')
    try:
        sans = read_sans(raw)
    except ValueError:  # an intermediate's SANs the gateway cannot read: none written
        sans = None
    if sans is not None:
        names = [*sans.dns_names, *sans.emails, *map(_go_ip, sans.ip_addresses), *sans.uris]
        if names:
            fields.append('SAN="' + ",".join(names) + '"')
    return ";".join(fields)


def traefik_values(identity: ClientIdentity, intermediates: Sequence[bytes]) -> list[Header]:
    """``X-Forwarded-Tls-Client-Cert`` and ``X-Forwarded-Tls-Client-Cert-Info`` for the leaf and
    the intermediates the client sent (see the module docstring)."""
    ders = [_der(identity), *intermediates]
    certificates = ",".join(base64.b64encode(der).decode("ascii") for der in ders)
    infos = []
    for der in ders:
        try:
            infos.append(_traefik_info(read_certificate(bytes(der))))
        except ValueError:  # an intermediate the gateway cannot read: an empty entry
            infos.append("")
    info = quote_plus(",".join(infos), safe="")
    return [(TRAEFIK_CERT.encode("ascii"), certificates.encode("ascii")),
            (TRAEFIK_INFO.encode("ascii"), info.encode("ascii"))]


# -- all formats ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def format_values(identity: ClientIdentity, intermediates: tuple[bytes, ...],
                  formats: tuple[str, ...], xfcc_details: tuple[str, ...] = (),
                  xfcc_by: tuple[str, ...] = (), xfcc: bool = True) -> tuple[Header, ...]:
    """The headers the non-nginx formats in *formats* write for a connection with a verified
    certificate, in the order of *formats*. ``xfcc`` false leaves the XFCC element out (the
    modes that write none). Cached: a connection's requests share one computation."""
    values: list[Header] = []
    for name in formats:
        if name == XFCC and xfcc:
            element = xfcc_element(identity, intermediates, xfcc_details, xfcc_by)
            values.append((XFCC_HEADER.encode("ascii"), element.encode("ascii")))
        elif name == RFC9440:
            values += rfc9440_values(identity, intermediates)
        elif name == TRAEFIK:
            values += traefik_values(identity, intermediates)
    return tuple(values)
