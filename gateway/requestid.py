"""Request ids: one per request, sent upstream and to the client as ``X-Request-Id``.

Each request gets :func:`new_request_id`, 128 random bits (``os.urandom``) as 32 lowercase hex
digits, like nginx's ``$request_id``. ``X-Request-Id`` is a gateway-owned header
(:func:`gateway.headers.is_owned`): a client's copy is removed in every spelling, and the
gateway writes its own. On a listener with ``trust_request_id = yes`` a well-formed client id
(:func:`trusted_request_id`) is kept and used instead, so one id can follow a request through
several proxies.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from gateway.headers import REQUEST_ID as _NAME

REQUEST_ID = b"X-Request-Id"
# A well-formed id: 1 to 128 characters of A-Z a-z 0-9 . _ : - (UUIDs, hex ids, W3C trace ids,
# nginx's $request_id); nothing that needs escaping in a header or a log line.
WELL_FORMED = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex digits (128 random bits)."""
    return os.urandom(16).hex()


def trusted_request_id(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The client's ``X-Request-Id`` (any case, spelled with ``-``) if it sent exactly one and it
    is well-formed (:data:`WELL_FORMED`) once the whitespace around it is taken off (not part of
    a field value: RFC 9110 §5.5); ``None`` otherwise (the gateway makes its own)."""
    found = [value.strip(b" \t") for name, value in headers if name.lower() == _NAME]
    if len(found) != 1 or WELL_FORMED.fullmatch(found[0]) is None:
        return None
    return found[0].decode("ascii")
