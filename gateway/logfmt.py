"""Making untrusted values safe for log lines.

Anything a client controls (paths, methods, certificate fields) is passed through :func:`clean`
before it reaches a log line: no control character, no non-ASCII byte, no ``"``, so one request is
one line and a quoted field cannot be closed early.
"""

from __future__ import annotations

import re
from typing import Any

_KEEP = frozenset(range(0x20, 0x7F)) - {ord("%"), ord('"')}
_UNSAFE = re.compile(rb'[^\x20-\x7e]|[%"]')
MAX_LOGGED = 4096  # bytes of a request's method or target kept in its access line or record


def logged(value: bytes) -> bytes:
    """A request's method or target as its access line and JSON record show it: the first
    :data:`MAX_LOGGED` bytes, then ``...`` when it is longer (an HTTP/2 ``:path`` may be
    ~64 KiB; journald splits a line over its ``LineMax``, 48 KiB by default)."""
    return value if len(value) <= MAX_LOGGED else value[:MAX_LOGGED] + b"..."


def clean(value: str | bytes) -> str:
    """Return *value* as printable ASCII: other bytes (UTF-8 for ``str``), ``%`` and ``"`` become
    ``%XX`` (RFC 3986 §2.1 percent-encoding, reversible with ``urllib.parse.unquote``)."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if not _UNSAFE.search(data):
        return data.decode("ascii")  # the common case, without a per-byte loop
    return "".join(chr(b) if b in _KEEP else f"%{b:02X}" for b in data)


def peer_address(transport: Any) -> str:
    """A transport's peer for a log line: ``host:port``, or ``unix`` for a Unix socket."""
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else "unix"
