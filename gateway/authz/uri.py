"""URI SAN patterns with path-segment wildcards, as ghostunnel's ``--allow-uri`` has them.

A pattern is a URI whose scheme and authority must match exactly (compared
case-insensitively) and whose path segments match one by one: ``*`` stands for exactly one whole,
non-empty segment other than ``.`` and ``..``; ``**``, allowed only as the last segment, stands
for one or more such segments.
``*`` inside a segment (``spiffe://x/a*``) is refused, as is a query or fragment in the pattern.

| pattern                     | matches                       | does not match               |
|-----------------------------|-------------------------------|------------------------------|
| ``spiffe://td/ns/*/sa/web`` | ``spiffe://td/ns/prod/sa/web`` | ``spiffe://td/ns/a/b/sa/web`` |
| ``spiffe://td/ns/**``       | ``spiffe://td/ns/a/b``         | ``spiffe://td/ns``            |
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs


@attrs.frozen
class URIPattern:
    """A parsed URI SAN pattern; build with :meth:`parse`, test with :meth:`matches`."""

    scheme: str
    authority: str
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> URIPattern:
        """Parse *text*; raises ``ValueError`` naming the problem for a malformed pattern."""
        scheme, authority, segments = _split(text)
        if not scheme:
            raise ValueError(f"{text!r} is not an absolute URI")
        if "*" in scheme or "*" in authority:
            raise ValueError(f"{text!r}: wildcards are allowed only as whole path segments")
        for index, segment in enumerate(segments):
            if "*" in segment and segment not in ("*", "**"):
                raise ValueError(f"{text!r}: a wildcard must be a whole path segment")
            if segment == "**" and index != len(segments) - 1:
                raise ValueError(f"{text!r}: '**' is allowed only as the last segment")
        return cls(scheme, authority, segments)

    def matches(self, uri: str) -> bool:
        """True if the certificate URI *uri* matches this pattern."""
        try:
            scheme, authority, segments = _split(uri)
        except ValueError:
            return False
        if (scheme, authority) != (self.scheme, self.authority):
            return False
        if self.segments and self.segments[-1] == "**":
            fixed = self.segments[:-1]
            if len(segments) <= len(fixed):
                return False
            rest = segments[len(fixed):]
            return _match_segments(fixed, segments[: len(fixed)]) and all(map(_wild, rest))
        return len(segments) == len(self.segments) and _match_segments(self.segments, segments)


def _match_segments(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    return all(p == s or (p == "*" and _wild(s)) for p, s in zip(pattern, segments, strict=True))


def _wild(segment: str) -> bool:
    # A wildcard never stands for an empty segment or a dot segment (RFC 3986 §3.3), also not
    # one spelt with percent-encoded dots (%2e is ".", RFC 3986 §6.2.2.2).
    return segment.replace("%2e", ".").replace("%2E", ".") not in ("", ".", "..")


def _split(text: str) -> tuple[str, str, tuple[str, ...]]:
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError(f"{text!r}: spaces and control characters are not allowed in a URI")
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a query or fragment is not allowed")
    authority = parts.netloc.lower()
    path = parts.path
    segments = tuple(path[1:].split("/")) if path.startswith("/") else ((path,) if path else ())
    return parts.scheme.lower(), authority, segments
