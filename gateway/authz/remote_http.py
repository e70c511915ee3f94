"""The exchange with an authorization service (authorizer type ``http``), without the I/O: the
headers sent, the cache key, what an answer means, the headers an answer adds upstream. Pure.

The check is a ``GET`` of the configured URL without a body, as Traefik's ``forwardAuth`` and
the usual nginx ``auth_request`` setups send it, with the original request described in headers
(see docs/configuration.md, ``type = http``):

* ``X-Forwarded-Method``, ``X-Forwarded-Uri`` (the path, without the query),
  ``X-Forwarded-Host`` (the client's ``Host``, when it sent one), ``X-Forwarded-Proto``
  (``https``, or ``http`` on a plain listener) and ``X-Forwarded-For`` (the client's address) —
  Traefik's names;
* ``X-Request-Id``, the request's id (docs/configuration.md), so the service's log lines can be
  matched with the gateway's; a cached answer is reused across ids;
* the identity headers the ``nginx`` format writes (``X-Client-Verify``, ``X-Client-Subject``,
  ``X-Client-Fingerprint-SHA256``, …; ``X-Client-Cert`` with ``forward_certificate``), exactly as
  an upstream gets them;
* the client's headers named in ``forward_headers``, every occurrence, as received.

The answer, as nginx's ``auth_request`` reads it: a 2xx allows, 401 and 403 deny (with the
reason the service gives in ``reason_header``, when it is a reason id), anything else is an
error.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from gateway.authz.interfaces import ClientIdentity, Decision, RequestInfo
from gateway.config import HeaderSettings
from gateway.headers import HOP_BY_HOP, identity_values, is_owned, normalize_name

Header = tuple[bytes, bytes]

IDENTITY_HEADERS = HeaderSettings(prefix="X-Client-", forward_certificate=False)
IDENTITY_HEADERS_WITH_CERT = HeaderSettings(prefix="X-Client-", forward_certificate=True)
SENT = frozenset({b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-host",
                  b"x-forwarded-proto", b"x-forwarded-for"})
_NEVER_ADDED = SENT | HOP_BY_HOP | {b"host"}  # (normalised names) by an allowing decision
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_VALUE = re.compile(rb"[\x20-\x7e]*")  # what the gateway writes: printable ASCII only
_REASON = re.compile(rb"[a-z0-9][a-z0-9._-]{0,63}")  # a reason id, as the policy wants it

ALLOWED = Decision.allow("remote-allowed")
DENIED = Decision.deny("remote-denied")


def header_name_problem(name: str) -> str | None:
    """Why *name* cannot be a ``forward_headers`` or ``allowed_upstream_headers`` entry, or
    ``None``: it must be a token (RFC 9110 §5.6.2) and not a header the gateway writes itself
    (identity headers of the default ``X-Client-`` prefix, ``X-Forwarded-*``, ``Forwarded``,
    ``Host``, hop-by-hop and framing headers), in any spelling (``_`` or ``.`` for ``-``)."""
    raw = name.encode("ascii", "replace")
    if not _TOKEN.fullmatch(raw):
        return f"{name!r} is not a header name (RFC 9110 token)"
    normalized = normalize_name(raw)
    if (normalized in SENT or normalized == b"host" or normalized in HOP_BY_HOP
            or is_owned(raw, IDENTITY_HEADERS)):
        return f"{name!r} is a header the gateway writes itself"
    return None


def check_headers(identity: ClientIdentity | None, request: RequestInfo,
                  forward: Sequence[bytes], certificate: bool = False) -> list[Header]:
    """The headers of the check request for *identity* making *request* (``Host`` aside).

    *forward* holds the lower-cased names of the client headers to pass on. Raises
    ``ValueError`` when the method, path or host would carry a byte a header cannot (the codecs
    refuse those before; kept as a last line).
    """
    method = request.method.encode("latin-1")
    path = request.path.encode("latin-1")
    headers = [(b"X-Forwarded-Method", method), (b"X-Forwarded-Uri", path)]
    if request.host is not None:
        headers.append((b"X-Forwarded-Host", request.host.encode("latin-1")))
    headers.append((b"X-Forwarded-Proto", b"https" if request.tls else b"http"))
    headers.append((b"X-Forwarded-For", request.client_address.encode("ascii")))
    if request.request_id is not None:  # for the service's logs; not part of the cache key
        headers.append((b"X-Request-Id", request.request_id.encode("ascii")))
    for _, value in headers:
        if not _VALUE.fullmatch(value):
            raise ValueError("a control or non-ASCII byte in the request line or Host")
    settings = IDENTITY_HEADERS_WITH_CERT if certificate else IDENTITY_HEADERS
    headers.extend(identity_values(identity, settings))
    if forward:
        headers.extend((n, v) for n, v in request.headers if n.lower() in forward)
    return headers


def cache_key(identity: ClientIdentity | None, request: RequestInfo,
              forward: Sequence[bytes]) -> tuple[object, ...]:
    """The decision-cache key of a check: the certificate's fingerprint and everything else
    :func:`check_headers` sends (method, path, host, scheme, client address, forwarded
    headers)."""
    forwarded = tuple((n.lower(), v) for n, v in request.headers if n.lower() in forward) \
        if forward else ()
    return (identity.fingerprint_sha256 if identity is not None else None, request.method,
            request.path, request.host, request.tls, request.client_address, forwarded)


def interpret(status: int, headers: Sequence[Header], reason_header: bytes,
              allowed_upstream: Collection[bytes]) -> Decision | str:
    """The :class:`Decision` an answer *status* / *headers* gives, or a one-line problem (str)
    when it gives none (status not 2xx, 401, 403; an ``allowed_upstream_headers`` value that is
    not printable ASCII).

    2xx: :data:`ALLOWED`, carrying as ``upstream_headers`` every header of *allowed_upstream*
    (lower-cased names). 401/403: denied with the ``reason_header`` value when it is a reason id
    (``[a-z0-9][a-z0-9._-]{0,63}``), else ``remote-denied``.
    """
    if 200 <= status <= 299:
        if not allowed_upstream:
            return ALLOWED
        added = []
        for name, value in headers:
            if name.lower() in allowed_upstream:
                if not _VALUE.fullmatch(value):
                    return (f"allowed upstream header {name.decode('latin-1')!r} carries a "
                            "control or non-ASCII byte")
                added.append((name, value))
        # The client's own copies of every allowed name go, whether the service sent it or not.
        return Decision(True, ALLOWED.reason, upstream_headers=tuple(added),
                        upstream_replaced=frozenset(allowed_upstream))
    if status in (401, 403):
        for name, value in headers:
            if name.lower() == reason_header:
                reason = value.strip()
                if _REASON.fullmatch(reason):
                    return Decision.deny(reason.decode("ascii"))
                break
        return DENIED
    return f"the authorization service answered {status}"


def with_decision_headers(headers: list[Header], added: Sequence[Header],
                          settings: HeaderSettings,
                          replaced: Collection[bytes] = ()) -> list[Header]:
    """*headers* (the upstream request's) with *added* (an allowing decision's
    ``upstream_headers``): each replaces the client's headers of its name (in every spelling,
    ``_`` or ``.`` for ``-``); one the gateway owns under *settings*, a hop-by-hop or framing
    header, a name that is not a token and a value that is not printable ASCII (a plugin's
    Decision is not checked by :func:`interpret`) are dropped, so an authorization service can
    never overwrite an identity or forwarding header nor frame the upstream request. The client's
    headers named in *replaced* (an allowing decision's ``upstream_replaced``) are removed too,
    also when *added* has none of them."""
    usable = [(n, v) for n, v in added if _TOKEN.fullmatch(n) and _VALUE.fullmatch(v)
              and not is_owned(n, settings) and normalize_name(n) not in _NEVER_ADDED]
    names = {normalize_name(n) for n, _ in usable}
    names.update(normalize_name(n) for n in replaced
                 if not is_owned(n, settings) and normalize_name(n) not in _NEVER_ADDED)
    if not names:
        return headers
    kept = [(n, v) for n, v in headers if normalize_name(n) not in names]
    kept.extend(usable)
    return kept
