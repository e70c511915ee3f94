"""The JSON log (``[log] format = json``): one JSON object per log event, one event per line.

Every record has ``time`` (RFC 3339 UTC with milliseconds, ``2026-12-01T12:00:00.123Z``),
``event`` (its kind) and ``level``; the kinds and their fields are in ``docs/log-schema.json``
(JSON Schema draft 2020-12) and docs/operations.md:

* ``request`` — one per request, built by :func:`request_record` from the exchange (only in JSON
  mode: the text access line stays the cheap f-string); the parts that are the same for every
  request of a connection (client address, TLS parameters, identity) once per connection.
* ``handshake-refused`` — a TLS handshake that failed (:func:`handshake_record`).
* ``reload`` — a configuration reload, its result and error (:func:`reload_record`).
* ``log`` — every other event, Twisted's and twistd's own included: level, namespace, text.

A log event carries its record in the field ``mtlsgw_record`` (a ``dict`` of JSON values;
``time`` and ``level`` are filled in from the event by the observer), a request event also the
encoded members of its connection in ``mtlsgw_connection``; :func:`json_line` turns any event
into its line with Python's JSON encoder (``ensure_ascii``: no control character or non-ASCII
character reaches the line unescaped), never by formatting values itself.
Bytes the client sent (method, target) are decoded as ISO 8859-1, one character per byte, so
``target.encode("latin-1")`` gives the bytes back. :class:`JSONLogObserver` writes the lines as
:class:`~gateway.accesslog.BufferedLogObserver` writes text: request records batched per reactor
iteration, everything else at once. No record holds a private key or body bytes.
"""

from __future__ import annotations

import json
import time
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from twisted.logger import LogEvent, eventAsText

from gateway.accesslog import BufferedLogObserver
from gateway.identity import ClientIdentity

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _c_encode(value: Any) -> str:
    return "".join(_c_encoder(value, 0))  # type: ignore[misc]


# The standard library's C encoder with the settings of _ENCODER, made once instead of on each
# JSONEncoder.encode call (which builds it anew for every record: half of the encoding time).
_c_encoder = (c_make_encoder(None, _ENCODER.default, encode_basestring_ascii, None, ":", ",",
                             False, False, False) if c_make_encoder is not None else None)
_encode = _c_encode if _c_encoder is not None else _ENCODER.encode
_stamp_second = -1
_stamp_prefix = ""


def rfc3339(when: float) -> str:
    """*when* (POSIX seconds) as RFC 3339 UTC with milliseconds: ``2026-12-01T12:00:00.123Z``."""
    global _stamp_second, _stamp_prefix
    second = int(when)
    if second != _stamp_second:
        _stamp_second = second
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_stamp_prefix}.{int((when - second) * 1000):03d}Z"


def json_line(event: LogEvent) -> str:
    """The JSON line (with its ``\\n``) of one ``twisted.logger`` event: its ``mtlsgw_record``,
    or a ``log`` record of its level, namespace and text (traceback included)."""
    when = event.get("log_time") or time.time()
    level = event.get("log_level")
    record = event.get("mtlsgw_record")
    worker = event.get("mtlsgw_worker")
    if isinstance(record, dict):
        record["time"] = rfc3339(when)
        record["level"] = level.name if level is not None else "info"
    else:
        if worker is not None and "mtlsgw_text" in event:  # relayed: the worker's own text
            text = str(event["mtlsgw_text"])
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + _traceback(failure)
        else:
            text = eventAsText(event, includeTraceback=True, includeTimestamp=False,
                               includeSystem=False)
        record = {"time": rfc3339(when), "event": "log",
                  "level": level.name if level is not None else "info",
                  "namespace": str(event.get("log_namespace") or "-"), "text": text}
    if worker is not None:
        record["worker"] = worker
    line = _encode(record)
    members = event.get("mtlsgw_connection")
    if members:  # a request's connection members, encoded once per connection
        return f"{line[:-1]},{members}}}\n"
    return line + "\n"


def _traceback(failure: Any) -> str:
    try:
        return str(failure.getTraceback())
    except Exception:  # a failure rebuilt from a worker's JSON may lack its frames
        return str(getattr(failure, "value", failure))


class JSONLogObserver(BufferedLogObserver):
    """Writes every event as one JSON line (:func:`json_line`) to *out*; request events (and the
    warnings of a request, namespace ``mtlsgw.access``) are buffered as
    :class:`~gateway.accesslog.BufferedLogObserver` buffers access lines."""

    def __call__(self, event: LogEvent) -> None:
        line = json_line(event)
        if event.get("log_namespace") == "mtlsgw.access":
            self._buffer.append(line)
            self._schedule()
            return
        self.flush()
        self._out.write(line)
        self._out.flush()


# -- records ----------------------------------------------------------------------------------


def client_part(transport: Any) -> dict[str, Any]:
    """``{"address": ..., "port": ...}`` of a transport's peer (``unix``, port ``null``, for a
    Unix socket)."""
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:
        return {"address": "unix", "port": None}
    return {"address": str(host), "port": int(peer.port)}


def tls_part(transport: Any) -> dict[str, Any] | None:
    """The negotiated TLS parameters of a transport (``None`` when it is not TLS): ``version``
    (``TLSv1.3``), ``cipher`` (OpenSSL's name), ``alpn``, ``sni`` and ``resumed`` (always
    false: the gateway keeps session resumption off, docs/configuration.md)."""
    try:
        connection = transport.getHandle()
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name()
        alpn = connection.get_alpn_proto_negotiated()
        sni = connection.get_servername()
    except Exception:  # not a TLS transport (a plain listener)
        return None
    return {"version": version, "cipher": cipher,
            "alpn": alpn.decode("latin-1") if alpn else None,
            "sni": sni.decode("latin-1") if sni else None,
            "resumed": False}


def identity_part(identity: ClientIdentity | None) -> dict[str, Any] | None:
    """The verified client certificate's identity (RFC 4514 ``subject``/``issuer``, RFC 5280
    SAN lists by type), or ``None`` without a certificate."""
    if identity is None:
        return None
    return {
        "subject": identity.subject,
        "issuer": identity.issuer,
        "common_names": list(identity.common_names),
        "serial": identity.serial,
        "fingerprint_sha256": identity.fingerprint_sha256,
        "not_before": identity.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "san": {"dns": list(identity.dns_names), "uri": list(identity.uris),
                "email": list(identity.emails), "ip": list(identity.ip_addresses)},
    }


def connection_members(connection: Any) -> str:
    """The ``client``, ``tls`` and ``identity`` members of a connection's request records,
    encoded (``"client":{...},"tls":{...},"identity":{...}``): computed and encoded at its first
    request and kept on it (``connection.log_parts``) for the others."""
    members = connection.log_parts
    if members is None:
        transport = connection.transport
        members = connection.log_parts = _encode({
            "client": client_part(transport),
            "tls": tls_part(transport) if connection.tls else None,
            "identity": identity_part(connection.identity)})[1:-1]
    return members  # type: ignore[no-any-return]


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 3)


def request_record(exchange: Any, duration_ms: float, query: bool) -> dict[str, Any]:
    """The ``request`` record of a finished :class:`~gateway.http.exchange.Exchange`, without
    the members its connection gives (:func:`connection_members`); *query*: whether ``target``
    keeps the query string."""
    head = exchange.head
    target = head.target if query else head.target.split(b"?", 1)[0]
    decision = exchange.decision
    route = exchange.route
    upstream: dict[str, Any] | None = None
    if route is not None and decision is not None and decision.allowed:
        status = exchange.upstream_status
        sent = exchange.upstream
        upstream = {
            "url": route.upstream.settings.url,
            "status": None if status == "-" else status,
            "connect_ms": _ms(sent.created_at, sent.attached_at) if sent else None,
            "response_ms": _ms(sent.attached_at, sent.head_at) if sent else None,
        }
    return {
        "time": None,
        "event": "request",
        "level": None,
        "request_id": exchange.request_id,
        "listener": exchange.listener.name,
        "route": route.name if route is not None else None,
        "decision": None if decision is None else ("allow" if decision.allowed else "deny"),
        "reason": decision.reason if decision is not None else exchange.local_reason,
        "authorizer": decision.authorizer if decision is not None else None,
        "method": head.method.decode("latin-1"),
        "target": target.decode("latin-1"),
        "version": head.version.decode("latin-1"),
        "status": exchange.status,
        "upstream": upstream,
        "bytes_in": exchange.received_bytes,
        "bytes_out": exchange.sent_bytes,
        "duration_ms": round(duration_ms, 3),
    }


def handshake_record(listener: str, transport: Any, error: Any, reason: str) -> dict[str, Any]:
    """The ``handshake-refused`` record: *error* is the connection's first
    :class:`~gateway.tls.VerifyError` (or ``None``: the handshake failed otherwise, *reason*
    says how); the failing certificate's subject and issuer when it could be read."""
    from gateway.dn import format_rdns
    from gateway.identity import read_certificate

    subject = issuer = None
    der = getattr(error, "certificate", None)
    if der:
        try:
            raw = read_certificate(der)
            subject, issuer = format_rdns(raw.subject), format_rdns(raw.issuer)
        except Exception:  # unreadable names: the record says so by null
            subject = issuer = None
    try:
        sni = transport.getHandle().get_servername()
    except Exception:
        sni = None
    return {
        "time": None,
        "event": "handshake-refused",
        "level": None,
        "listener": listener,
        "client": client_part(transport),
        "sni": sni.decode("latin-1") if sni else None,
        "verify_error": error.reason if error is not None else None,
        "verify_code": error.code if error is not None else None,
        "depth": error.depth if error is not None else None,
        "subject": subject,
        "issuer": issuer,
        "reason": reason,
    }


def reload_record(result: str, path: str, error: str | None) -> dict[str, Any]:
    """The ``reload`` record: *result* ``ok`` or ``refused`` (*error* says why)."""
    return {"time": None, "event": "reload", "level": None, "result": result, "path": path,
            "error": error}
