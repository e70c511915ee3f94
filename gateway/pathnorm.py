"""Request path normalisation (RFC 3986 §6.2.2), before route selection and authorization. Pure.

:func:`normalize_target` turns an origin-form target (``/path?query``, already checked to be
printable ASCII by :mod:`gateway.target`) into the one the gateway routes, authorizes and
forwards; the query is kept as it is. Steps, on the path only:

1. encoded and literal slashes and backslashes (``%2F``, ``%5C``, ``\\``, any case) follow
   *escaped_slashes* (Envoy's ``path_with_escaped_slashes_action``): ``keep`` leaves them as
   they are (``%2F`` stays inside its segment; a backslash is a plain character), ``reject``
   refuses the request, ``unescape`` turns each into ``/`` (a backslash too, as browsers'
   URL parsers and Envoy's normalisation do);
2. percent-encoded unreserved characters are decoded (``%61`` is ``a``, ``%2E`` is ``.``;
   RFC 3986 §6.2.2.2), and the hex digits of the other percent-encodings are upper-cased
   (§6.2.2.1); a ``%`` not followed by two hex digits stays as it is;
3. runs of ``/`` are merged into one (``//admin`` is ``/admin``, as nginx's ``merge_slashes``);
4. ``.`` and ``..`` segments are resolved (RFC 3986 §5.2.4); ``..`` never climbs above ``/``.

| target               | keep               | reject | unescape   |
|----------------------|--------------------|--------|------------|
| ``/api/../admin/x``  | ``/admin/x``       | same   | same       |
| ``/%61dmin/x``       | ``/admin/x``       | same   | same       |
| ``//admin/x``        | ``/admin/x``       | same   | same       |
| ``/admin%2F../x``    | ``/admin%2F../x``  | 400    | ``/x``     |
"""

from __future__ import annotations

import re

MODES = ("keep", "reject", "unescape")

# A path that may need work: any "%", a dot segment candidate, "//" or a backslash.
_SUSPECT = re.compile(rb"%|/\.|//|\\")
_ESCAPED_SLASH = re.compile(rb"%2[fF]|%5[cC]|\\")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(rb"/{2,}")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _percent(match: re.Match[bytes]) -> bytes:
    byte = int(match.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + match.group(1).upper()


def normalize_path(path: bytes, escaped_slashes: str = "keep") -> bytes | None:
    """The normalised form of *path* (bytes starting with ``/``, no query), or ``None`` when
    *escaped_slashes* is ``reject`` and the path holds an encoded slash or a backslash.
    Returns *path* itself when nothing changes."""
    if not _SUSPECT.search(path):
        return path  # the common case: one regex scan
    if escaped_slashes != "keep" and _ESCAPED_SLASH.search(path):
        if escaped_slashes == "reject":
            return None
        path = _ESCAPED_SLASH.sub(b"/", path)
    if b"%" in path:
        path = _PERCENT.sub(_percent, path)
    path = _SLASHES.sub(b"/", path)
    if b"/." in path:
        path = _remove_dot_segments(path)
    return path


def _remove_dot_segments(path: bytes) -> bytes:
    # RFC 3986 §5.2.4 on an absolute path, segment by segment.
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def normalize_target(target: bytes, escaped_slashes: str = "keep") -> bytes | None:
    """:func:`normalize_path` of *target*'s path, its query (from the first ``?``) kept as it
    is; ``None`` when the path is refused."""
    if not _SUSPECT.search(target):
        return target  # the common case, without splitting off the query
    path, question, query = target.partition(b"?")
    normal = normalize_path(path, escaped_slashes)
    if normal is None:
        return None
    if normal is path:
        return target
    return normal + question + query
