"""The JSON body of a denial, RFC 9457 "Problem Details for HTTP APIs". Pure.

A 403 is sent as ``application/problem+json`` when the client's ``Accept`` names
``application/problem+json`` or ``application/json`` itself (with a non-zero ``q``); ``*/*``,
``application/*`` or no ``Accept`` keep the plain text body. The body carries only the status,
the reason id and the request id: never a certificate field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway.http.h1 import reason_phrase

PROBLEM_JSON = b"application/problem+json"
_JSON_TYPES = frozenset({"application/problem+json", "application/json"})


def wants_problem_json(accept: Sequence[bytes]) -> bool:
    """Whether the ``Accept`` header values *accept* name a JSON problem type explicitly
    (RFC 9110 §12.5.1; a media range with ``q=0`` means "not acceptable")."""
    for value in accept:
        for item in value.decode("latin-1").split(","):
            media, *params = item.split(";")
            if media.strip().lower() not in _JSON_TYPES:
                continue
            if not any(_is_q_zero(param) for param in params):
                return True
    return False


def _is_q_zero(param: str) -> bool:
    name, _, value = param.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value.strip()) == 0
    except ValueError:
        return False


def problem_body(status: int, reason: str, request_id: str | None) -> bytes:
    """The RFC 9457 problem document for a denial with *status* and reason id *reason*:
    ``type`` ``about:blank`` (the status says it all, §4.2.1), ``title`` the status phrase,
    ``status``, ``detail`` naming the reason id and *request_id* (when known), and the same two
    as the extension members ``reason`` and ``request_id``. UTF-8 JSON bytes."""
    detail = f"denied by the gateway: {reason}"
    document: dict[str, object] = {
        "type": "about:blank",
        "title": reason_phrase(status).decode("ascii"),
        "status": status,
        "detail": detail if request_id is None else f"{detail} (request id {request_id})",
        "reason": reason,
    }
    if request_id is not None:
        document["request_id"] = request_id
    return json.dumps(document, ensure_ascii=True).encode("ascii") + b"\n"
