"""An mtlsgw authorizer that allows requests by URL path prefix.

Configured as ``type = path`` in an ``[authorizer:NAME]`` section (the type object lives in
``twisted/plugins/mtlsgw_path_authorizer_plugin.py``)::

    [authorizer:public]
    type = path
    allow_prefix = /health, /metrics
    require_certificate = no

* ``allow_prefix`` (required): comma-separated path prefixes, each starting with ``/``. A prefix
  matches on a segment boundary: ``/health`` allows ``/health`` and ``/health/live``, not
  ``/healthz``. A trailing ``/`` is ignored (``/health/`` is ``/health``); ``/`` allows every path.
* ``require_certificate`` (``yes``/``no``, default ``yes``): with ``no``, a client that presented
  no certificate (possible under ``client_auth = optional``) is allowed on these paths too; with
  ``yes`` it is denied with reason ``no-certificate``.

Paths are compared as the gateway hands them over (``RequestInfo.path``: normalised, RFC 3986
§6.2.2; case-sensitive; an encoded slash stays encoded). A path still holding a ``.`` or ``..``
segment, also percent-encoded (``%2e%2e``), behind a backslash or an encoded slash (``%2f``), or
with ``;`` parameters (``..;``), is denied: an upstream that resolves ``/health/..%2fadmin`` (or,
on a route with ``normalize_path = no``, ``/health/../admin``) to ``/admin`` must not be reached
through a ``/health`` rule.

Reasons: ``path-allowed``, ``path-not-allowed``, ``no-certificate``.
"""

from __future__ import annotations

from urllib.parse import unquote

import attrs
from zope.interface import implementer

from gateway.authz.interfaces import (
    ClientIdentity,
    Decision,
    IAuthorizer,
    OptionError,
    Options,
    RequestInfo,
)
from gateway.config import parse_list

__all__ = ["KEYS", "PathAuthorizer", "from_options", "parse_prefix"]

KEYS = frozenset({"allow_prefix", "require_certificate"})

PATH_ALLOWED = Decision.allow("path-allowed")
PATH_NOT_ALLOWED = Decision.deny("path-not-allowed")
NO_CERTIFICATE = Decision.deny("no-certificate")

# The same spellings the gateway accepts for its own yes/no options.
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


@implementer(IAuthorizer)
@attrs.frozen
class PathAuthorizer:
    """Allows a request whose path lies under one of ``prefixes``.

    ``prefixes`` are normalised by :func:`parse_prefix` (start with ``/``, no trailing ``/`` except
    the root ``/`` itself). ``require_certificate`` False also allows a client without a
    certificate (``identity`` None).
    """

    prefixes: tuple[str, ...]
    require_certificate: bool = True

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
        if identity is None and self.require_certificate:
            return NO_CERTIFICATE
        path = request.path
        if _has_dot_segment(path):
            return PATH_NOT_ALLOWED
        if any(_under(path, prefix) for prefix in self.prefixes):
            return PATH_ALLOWED
        return PATH_NOT_ALLOWED


def _under(path: str, prefix: str) -> bool:
    """Whether *path* is *prefix* or below it, on a segment boundary."""
    base = prefix.rstrip("/")  # "" for the root "/", which then matches every "/..." path
    return path == base or path.startswith(base + "/")


def _has_dot_segment(path: str) -> bool:
    # Decode once the way an upstream might ("%2e" -> ".", "%2f" -> "/"), treat "\" as "/", and
    # drop ";params" (Tomcat-style "..;/"), then look for "." and ".." segments.
    decoded = unquote(path, errors="replace").replace("\\", "/")
    return any(seg.split(";", 1)[0] in (".", "..") for seg in decoded.split("/"))


def parse_prefix(text: str) -> str:
    """Validate one ``allow_prefix`` item and return it without a trailing ``/``.

    Raises ``ValueError`` (with the problem) for a prefix not starting with ``/``, carrying
    whitespace, a control character, a query or fragment, or a ``.``/``..`` segment.
    """
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError(f"{text!r} contains whitespace or a control character")
    if "?" in text or "#" in text:
        raise ValueError(f"{text!r} must be a path only, without '?' or '#'")
    if _has_dot_segment(text):
        raise ValueError(f"{text!r} must not contain '.' or '..' segments")
    return text.rstrip("/") or "/"


def from_options(options: Options) -> PathAuthorizer:
    """Build a :class:`PathAuthorizer` from an ``[authorizer:NAME]`` section's options.

    Raises :class:`~gateway.authz.interfaces.OptionError` naming the bad key.
    """
    items = parse_list(options.get("allow_prefix", ""))
    if not items:
        raise OptionError("allow_prefix", "required: give at least one path prefix, e.g. /health")
    prefixes: dict[str, None] = {}  # ordered, without duplicates
    for item in items:
        try:
            prefixes[parse_prefix(item)] = None
        except ValueError as exc:
            raise OptionError("allow_prefix", str(exc)) from None
    raw = options.get("require_certificate", "yes")
    if raw.lower() not in _BOOLEANS:
        raise OptionError("require_certificate", "must be yes or no")
    return PathAuthorizer(tuple(prefixes), require_certificate=_BOOLEANS[raw.lower()])
