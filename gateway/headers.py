"""Which request headers the gateway owns, and how identity is written into them.

Pure functions over header lists (``(name, value)`` pairs of ``bytes``); no reactor.

Two rules make the identity headers trustworthy for the upstream (docs/headers.md):

* **Ownership.** Every client header whose name, lower-cased and with ``_`` and ``.`` read as
  ``-``, starts with the configured prefix (``x-client-``), and every ``X-Forwarded-For``,
  ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Forwarded`` and ``X-Request-Id`` header, and
  every name a format of :mod:`gateway.formats` writes (whether the route enables it or not), is
  removed before the gateway adds its own. WSGI/CGI servers map ``X-Client-CN``,
  ``X_Client_CN`` and ``x.client.cn`` to the same variable, so all spellings are removed.
* **Escaping.** Every value written is single-line printable ASCII. Certificate strings (CN and
  SAN values) are UTF-8 encoded and every byte outside ``0x20``–``0x7E``, every ``%``, every
  ``,`` (the list separator) and a leading or trailing space is written as ``%XX`` (uppercase hex,
  RFC 3986 §2.1). Decoding is "split on ``,``, then percent-decode each item as UTF-8".
  Subject and issuer are RFC 4514 strings as nginx prints them, already ASCII-escaped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from urllib.parse import quote

from gateway.config import HeaderSettings
from gateway.formats import (
    FORMAT_HEADERS,
    NGINX,
    XFCC,
    XFCC_FORWARDING,
    XFCC_HEADER,
    XFCC_WRITING,
    format_values,
    names_client_cert,
)
from gateway.identity import ClientIdentity

Header = tuple[bytes, bytes]

# RFC 9110 §7.6.1 hop-by-hop fields, plus the framing headers the HTTP client writes itself
# and the ones only meaningful between the client and the gateway.
HOP_BY_HOP = frozenset({
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"expect",
})
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})
REQUEST_ID = b"x-request-id"  # written by the gateway (gateway/requestid.py)

VERIFY = "Verify"
SUBJECT = "Subject"
ISSUER = "Issuer"
CN = "CN"
SERIAL = "Serial"
FINGERPRINT = "Fingerprint-SHA256"
SAN_DNS = "SAN-DNS"
SAN_URI = "SAN-URI"
SAN_EMAIL = "SAN-Email"
SAN_IP = "SAN-IP"
NOT_BEFORE = "Not-Before"
NOT_AFTER = "Not-After"
CERT = "Cert"

_KEEP = frozenset(range(0x20, 0x7F)) - {ord("%"), ord(",")}


def normalize_name(name: bytes) -> bytes:
    """Lower-case *name* and read ``_`` and ``.`` as ``-``, as WSGI/CGI servers effectively do."""
    return name.lower().replace(b"_", b"-").replace(b".", b"-")


def escape_value(text: str) -> str:
    """Escape one certificate string for a header: printable ASCII out, reversible.

    Bytes of the UTF-8 encoding outside 0x20–0x7E, ``%``, ``,`` and a leading or trailing space
    become ``%XX``. ``urllib.parse.unquote`` (or ``decodeURIComponent``) reverses it.
    """
    encoded = text.encode("utf-8")
    out = []
    last = len(encoded) - 1
    for index, byte in enumerate(encoded):
        edge_space = byte == 0x20 and index in (0, last)
        out.append(f"%{byte:02X}" if byte not in _KEEP or edge_space else chr(byte))
    return "".join(out)


def _connection_tokens(headers: Sequence[Header]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def without_hop_by_hop(headers: Sequence[Header]) -> list[Header]:
    """Drop RFC 9110 §7.6.1 hop-by-hop headers, those named in ``Connection``, and framing."""
    # A client must not be able to remove Host by naming it in Connection.
    tokens = _connection_tokens(headers)
    drop = HOP_BY_HOP | (tokens - {b"host"}) if tokens else HOP_BY_HOP
    return [(n, v) for n, v in headers if n.lower() not in drop]


@functools.lru_cache(maxsize=4096)
def is_owned(name: bytes, settings: HeaderSettings) -> bool:
    """True if the gateway owns header *name* (any case; ``_``/``.`` spellings included)."""
    normalized = normalize_name(name)
    return (normalized.startswith(_prefix(settings)) or normalized in FORWARDED
            or normalized in FORMAT_HEADERS or normalized == REQUEST_ID)


def _prefix(settings: HeaderSettings) -> bytes:
    return normalize_name(settings.prefix.encode("ascii"))


@functools.lru_cache(maxsize=1024)
def identity_values(
    identity: ClientIdentity | None, settings: HeaderSettings,
    intermediates: tuple[bytes, ...] = (),
) -> tuple[Header, ...]:
    """The identity headers for *identity* (``None``: connection without a certificate) in
    every format of ``settings.formats``; *intermediates* are the DER certificates the client
    sent after its leaf (for XFCC ``Chain``, ``Client-Cert-Chain`` and Traefik's headers).

    The ``nginx`` format's are ``(name, value)`` pairs with the configured prefix. A list header
    with no item (no SAN of that type, no CN) and an empty subject or issuer are left out; a list
    of one empty item (``CN=``) is sent as an empty header. Dates are RFC 3339 UTC
    (``2026-01-31T12:00:00Z``). The other formats (:mod:`gateway.formats`) follow, and write
    nothing for a connection without a certificate. Cached: a keep-alive connection's requests
    share one computation.
    """
    formats = settings.formats
    nginx = _nginx_values(identity, settings) if NGINX in formats else ()
    if identity is None or formats == (NGINX,):
        return nginx
    others = format_values(identity, intermediates, formats, settings.xfcc_details,
                           settings.xfcc_by, settings.xfcc_mode in XFCC_WRITING)
    return nginx + others


def _nginx_values(identity: ClientIdentity | None,
                  settings: HeaderSettings) -> tuple[Header, ...]:
    fields: list[tuple[str, str | None]]
    if identity is None:
        fields = [(VERIFY, "NONE")]
    else:
        fields = [
            (VERIFY, "SUCCESS"),
            (SUBJECT, dn_header_value(identity.subject) or None),
            (ISSUER, dn_header_value(identity.issuer) or None),
            (CN, _join(identity.common_names)),
            (SERIAL, identity.serial),
            (FINGERPRINT, identity.fingerprint_sha256),
            (SAN_DNS, _join(identity.dns_names)),
            (SAN_URI, _join(identity.uris)),
            (SAN_EMAIL, _join(identity.emails)),
            (SAN_IP, _join(identity.ip_addresses)),
            (NOT_BEFORE, identity.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")),
            (NOT_AFTER, identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ]
        if settings.forward_certificate:
            fields.append((CERT, quote(identity.pem, safe="")))
    prefix = settings.prefix
    return tuple(
        ((prefix + name).encode("ascii"), value.encode("ascii"))
        for name, value in fields if value is not None
    )


def _join(values: Sequence[str]) -> str | None:
    """The list header value of *values*; ``None`` (no header) when there are none. One empty
    value gives an empty header (``[""]``, not ``[]``)."""
    if not values:
        return None
    return ",".join(escape_value(v) for v in values)


def dn_header_value(dn: str) -> str:
    """An RFC 4514 string as written into a header: as OpenSSL prints it, except that a trailing
    escaped space (``CN=x\\ ``) is written ``CN=x\\20`` (RFC 4514 §2.4 allows both), because
    HTTP strips trailing whitespace from field values (RFC 9110 §5.5)."""
    if dn.endswith("\\ ") and _escaped_last(dn):
        return _ascii_only(dn[:-2]) + "\\20"
    return _ascii_only(dn)


def _escaped_last(dn: str) -> bool:
    # The final space is escaped when an odd number of backslashes precede it.
    body = dn[:-1]
    return (len(body) - len(body.rstrip("\\"))) % 2 == 1


def _ascii_only(text: str) -> str:
    # format_name already escapes to printable ASCII; this keeps the promise if it ever did not.
    if all(0x20 <= ord(ch) <= 0x7E for ch in text):
        return text
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E else escape_value(ch) for ch in text)


def upstream_request_headers(
    client_headers: Sequence[Header],
    identity: ClientIdentity | None,
    settings: HeaderSettings,
    client_ip: str,
    host: bytes | None,
    *,
    tls: bool = True,
    upstream_host: bytes | None = None,
    intermediates: tuple[bytes, ...] = (),
) -> list[Header]:
    """The headers to send upstream for one client request.

    Keeps the client's end-to-end headers (all values of repeated ones, in order), removes
    hop-by-hop and framing headers (the HTTP client writes its own
    ``Content-Length``/``Transfer-Encoding``) and every header the gateway owns, then appends the
    identity headers (only for a TLS listener: *tls*), ``X-Forwarded-For`` (the client's address),
    ``X-Forwarded-Proto`` (``https`` or ``http``) and ``X-Forwarded-Host`` (the client's
    ``Host``). ``Host`` is the client's, or *upstream_host* when given (``host_header``).
    *intermediates*: the certificates the client sent after its leaf (DER).

    A forwarding ``xfcc_mode`` keeps the client's ``X-Forwarded-Client-Cert`` (that spelling
    only) when its certificate's fingerprint is in ``trusted_proxy_sha256``; ``append_forward``
    then appends the gateway's element after a ``,``.
    """
    forwarded = None
    if settings.trusted_proxy_sha256 and identity is not None:
        forwarded = _trusted_xfcc(client_headers, identity, settings)
    kept = [(n, v) for n, v in without_hop_by_hop(client_headers) if not is_owned(n, settings)]
    if upstream_host is not None:
        kept = [(n, v) for n, v in kept if n.lower() != b"host"]
        kept.insert(0, (b"Host", upstream_host))
    if tls:
        values = identity_values(identity, settings, intermediates)
        if forwarded:
            kept.extend(_forward_xfcc(values, forwarded, settings))
        else:
            kept.extend(values)
    kept.append((b"X-Forwarded-For", client_ip.encode("ascii")))
    kept.append((b"X-Forwarded-Proto", b"https" if tls else b"http"))
    if host is not None:
        kept.append((b"X-Forwarded-Host", host))
    return kept


_XFCC_NAME = XFCC_HEADER.lower().encode("ascii")


def _trusted_xfcc(client_headers: Sequence[Header], identity: ClientIdentity,
                  settings: HeaderSettings) -> list[bytes] | None:
    """The client's XFCC values when this route forwards them and the client is a trusted
    proxy; ``None`` otherwise."""
    if (XFCC not in settings.formats or settings.xfcc_mode not in XFCC_FORWARDING
            or identity.fingerprint_sha256 not in settings.trusted_proxy_sha256):
        return None
    # An empty value holds no element: kept, it would make ours ",Hash=..." (not Envoy's grammar).
    return [v for n, v in client_headers if n.lower() == _XFCC_NAME and v.strip(b" \t")]


def _forward_xfcc(values: Sequence[Header], forwarded: list[bytes],
                  settings: HeaderSettings) -> list[Header]:
    name = XFCC_HEADER.encode("ascii")
    if settings.xfcc_mode != "append_forward":
        return [*values, *((name, value) for value in forwarded)]
    out = []
    for header, value in values:
        if header == name:  # Envoy's APPEND_FORWARD: the proxy's elements, then ours
            value = b",".join([*forwarded, value])
        out.append((header, value))
    return out


def vary_for_client_cert(headers: list[Header]) -> list[Header]:
    """*headers* of an upstream response, with ``Vary`` rewritten to ``*`` when one names
    ``Client-Cert`` or ``Client-Cert-Chain`` (RFC 9440 §2.4: a cache outside the gateway cannot
    see those request fields); unchanged (the same list) otherwise."""
    if not any(n.lower() == b"vary" and names_client_cert(v) for n, v in headers):
        return headers
    out = [(n, v) for n, v in headers if n.lower() != b"vary"]
    out.append((b"Vary", b"*"))
    return out
