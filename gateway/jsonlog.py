"""The JSON log (``[log] format = json``): one JSON object per log event, one event per line.

Every record has ``time`` (RFC 3339 UTC with milliseconds, ``2026-12-01T12:00:00.123Z``),
``event`` (its kind) and ``level``; the kinds and their fields are in ``docs/log-schema.json``
(JSON Schema draft 2020-12) and docs/operations.md:

* ``request`` — one per request, encoded by :func:`request_members` from the exchange (only in
  JSON mode: the text access line stays the cheap f-string); the members that are the same for
  many requests (client address, TLS parameters and identity of a connection; listener, route
  and decision) encoded once.
* ``handshake-refused`` — a TLS handshake that failed (:func:`handshake_record`).
* ``reload`` — a configuration reload, its result and error (:func:`reload_record`).
* ``log`` — every other event, Twisted's and twistd's own included: level, namespace, text.

A request event carries its encoded members in the field ``mtlsgw_request`` (a ``str``); any
other event with a record of its own carries it in ``mtlsgw_record`` (a ``dict`` of JSON values;
``time`` and ``level`` are filled in from the event by the observer). :func:`json_line` turns
any event into its line. Values are never formatted by hand: strings are escaped by Python's
JSON encoder (``ensure_ascii``: no control character or non-ASCII character reaches the line
unescaped), numbers are written as numbers, and the rest is the constant structure of the
record.
Bytes the client sent (method, target) are decoded as ISO 8859-1, one character per byte, so
``target.encode("latin-1")`` gives the bytes back. :class:`JSONLogObserver` writes the lines as
:class:`~gateway.accesslog.BufferedLogObserver` writes text: request records batched per reactor
iteration, everything else at once. No record holds a private key or body bytes.
"""

from __future__ import annotations

import functools
import json
import time
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from twisted.logger import LogEvent, eventAsText

from gateway.accesslog import BufferedLogObserver
from gateway.identity import ClientIdentity
from gateway.logfmt import logged

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _c_encode(value: Any) -> str:
    return "".join(_c_encoder(value, 0))  # type: ignore[misc]


# The standard library's C encoder with the settings of _ENCODER, made once instead of on each
# JSONEncoder.encode call (which builds it anew for every record: half of the encoding time).
_c_encoder = (c_make_encoder(None, _ENCODER.default, encode_basestring_ascii, None, ":", ",",
                             False, False, False) if c_make_encoder is not None else None)
_encode = _c_encode if _c_encoder is not None else _ENCODER.encode
_string = encode_basestring_ascii  # a str as a JSON string, escaped as the encoder escapes it
_stamp_second = -1
_stamp_prefix = ""
_stamp_ms = -1
_stamp = ""


def rfc3339(when: float) -> str:
    """*when* (POSIX seconds) as RFC 3339 UTC with milliseconds: ``2026-12-01T12:00:00.123Z``."""
    global _stamp_second, _stamp_prefix, _stamp_ms, _stamp
    ms = int(when * 1000)
    if ms != _stamp_ms:  # many records of a busy reactor iteration share their millisecond
        second, milli = divmod(ms, 1000)
        if second != _stamp_second:
            _stamp_second = second
            _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_ms, _stamp = ms, f"{_stamp_prefix}.{milli:03d}Z"
    return _stamp


def json_line(event: LogEvent) -> str:
    """The JSON line (with its ``\\n``) of one ``twisted.logger`` event: a request's record
    from its encoded members (``mtlsgw_request``, :func:`request_members`), another record
    (``mtlsgw_record``), or a ``log`` record of its level, namespace and text (traceback
    included)."""
    when = event.get("log_time") or time.time()
    level = event.get("log_level")
    level_name = level.name if level is not None else "info"
    worker = event.get("mtlsgw_worker")
    members = event.get("mtlsgw_request")
    if members.__class__ is str:
        relayed = f',"worker":{int(worker)}' if worker is not None else ""
        return (f'{{"time":"{rfc3339(when)}","event":"request","level":{_string(level_name)},'
                f"{members}{relayed}}}\n")
    record = event.get("mtlsgw_record")
    if isinstance(record, dict):
        record["time"] = rfc3339(when)
        record["level"] = level_name
    else:
        if worker is not None and "mtlsgw_text" in event:  # relayed: the worker's own text
            text = str(event["mtlsgw_text"])
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + _traceback(failure)
        else:
            text = eventAsText(event, includeTraceback=True, includeTimestamp=False,
                               includeSystem=False)
        record = {"time": rfc3339(when), "event": "log", "level": level_name,
                  "namespace": str(event.get("log_namespace") or "-"), "text": text}
    if worker is not None:
        record["worker"] = worker
    return _encode(record) + "\n"


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


def _ms(start: float | None, end: float | None) -> str:
    return "null" if start is None or end is None else f"{(end - start) * 1000:.3f}"


def _scalar(value: int | str | None) -> str:
    """A status as JSON: an integer, a string (a failure kind) or ``null``."""
    if value is None:
        return "null"
    return _string(value) if isinstance(value, str) else str(int(value))


@functools.lru_cache(maxsize=1024)
def _route_members(listener: str, route: str | None) -> str:
    return _encode({"listener": listener, "route": route})[1:-1]


_cached_string = functools.lru_cache(maxsize=1024)(_string)  # for a route's upstream URL


@functools.lru_cache(maxsize=1024)
def _decision_members(decision: str | None, reason: str | None, authorizer: str | None) -> str:
    return _encode({"decision": decision, "reason": reason, "authorizer": authorizer})[1:-1]


def request_members(exchange: Any, duration_ms: float, query: bool) -> str:
    """The members of a finished :class:`~gateway.http.exchange.Exchange`'s ``request`` record
    after ``time``, ``event`` and ``level``, encoded (``"request_id":...,...,"identity":...``;
    docs/log-schema.json); *duration_ms* in milliseconds, written with 3 decimals; *query*:
    whether ``target`` keeps the query string.

    Every string goes through the standard library encoder's own escaping
    (``encode_basestring_ascii``) and every number is formatted as one; the members that are
    the same for many requests (listener and route, decision, connection) are encoded once.
    """
    head = exchange.head
    target = logged(head.target if query else head.target.split(b"?", 1)[0])
    decision = exchange.decision
    route = exchange.route
    if decision is None:
        decided = _decision_members(None, exchange.local_reason, None)
    else:
        decided = _decision_members("allow" if decision.allowed else "deny", decision.reason,
                                    decision.authorizer)
    upstream = "null"
    if route is not None and decision is not None and decision.allowed:
        status = exchange.upstream_status
        sent = exchange.upstream
        timed = (f'"connect_ms":{_ms(sent.created_at, sent.attached_at)},'
                 f'"response_ms":{_ms(sent.attached_at, sent.head_at)}'
                 if sent else '"connect_ms":null,"response_ms":null')
        upstream = (f'{{"url":{_cached_string(route.upstream.settings.url)},'
                    f'"status":{"null" if status == "-" else _scalar(status)},{timed}}}')
    routed = _route_members(exchange.listener.name, route.name if route is not None else None)
    return (f'"request_id":{_string(exchange.request_id)},{routed},{decided},'
            f'"method":{_string(logged(head.method).decode("latin-1"))},'
            f'"target":{_string(target.decode("latin-1"))},'
            f'"version":{_string(head.version.decode("latin-1"))},'
            f'"status":{_scalar(exchange.status)},"upstream":{upstream},'
            f'"bytes_in":{int(exchange.received_bytes)},"bytes_out":{int(exchange.sent_bytes)},'
            f'"duration_ms":{max(duration_ms, 0.0):.3f},{connection_members(exchange.connection)}')


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
