"""Is this request addressed to us? Request-target form and ``Host`` checks, pure.

:func:`check_request` returns ``None`` for a request the gateway may handle, or the status and
reason id to refuse it with:

* 400 ``request-target-not-origin-form`` — a reverse proxy takes ``/path?query`` only
  (RFC 9112 §3.2.1); absolute-form, authority-form and ``*`` are refused;
* 400 ``invalid-method`` — a method that is not a token (RFC 9110 §9.1);
* 400 ``invalid-request-target`` — a byte outside printable ASCII, or a ``#``, in the target;
* 400 ``missing-host`` / ``multiple-host-headers`` / ``invalid-host`` — RFC 9112 §3.2: an
  HTTP/1.1 request has exactly one ``Host``, a valid ``uri-host [ ":" port ]`` (RFC 3986 §3.2.2);
* 421 ``misdirected-request`` — the ``Host`` names another server than the TLS server name
  (SNI) the client connected with (RFC 9110 §15.5.20); compared case-insensitively, without port
  or trailing dot.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

_HOST = re.compile(
    rb"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._~!$&'()*+,;=%-]+))(?::(?P<port>[0-9]{1,5}))?")


# RFC 9112 §3.2: no spaces, controls or raw non-ASCII; no fragment (RFC 9110 §7.1).
_TARGET = re.compile(rb"[\x21-\x22\x24-\x7e]+")
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §9.1: a token


@functools.lru_cache(maxsize=1024)
def host_name(host: bytes) -> str:
    """The name part of a valid ``Host`` value: lower case, no port, no trailing dot."""
    match = _HOST.fullmatch(host)
    assert match is not None
    name = match.group("ip6") or match.group("name")
    return name.decode("ascii").lower().rstrip(".")


def check_request(
    target: bytes, version: bytes, hosts: Sequence[bytes] | None, server_name: str | None,
    method: bytes = b"GET",
) -> tuple[int, str] | None:
    """Check one request head; see the module docstring for the answers."""
    if not _METHOD.fullmatch(method):  # HTTP/1.1's parser checks this; HTTP/2's does not
        return 400, "invalid-method"
    if not target.startswith(b"/"):
        return 400, "request-target-not-origin-form"
    if not _TARGET.fullmatch(target):
        return 400, "invalid-request-target"
    hosts = hosts or []
    if len(hosts) > 1:
        return 400, "multiple-host-headers"
    if not hosts:
        return (400, "missing-host") if version == b"HTTP/1.1" else None
    host = _HOST.fullmatch(hosts[0])
    if host is None or int(host["port"] or 0) > 65535:
        return 400, "invalid-host"
    if server_name is not None and host_name(hosts[0]) != server_name.lower().rstrip("."):
        return 421, "misdirected-request"
    return None
