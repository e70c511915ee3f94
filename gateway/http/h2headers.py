"""Header lists for :mod:`gateway.http.h2`: request heads from ``h2``'s events, response
heads for ``h2``; pure, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hpack import Decoder, HeaderTuple
from twisted.logger import Logger

from gateway.config import Limits
from gateway.http.stream import Header, RequestHead

# Response headers the codec writes itself or that HTTP/2 forbids (RFC 9113 §8.2.2).
_NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
                            b"transfer-encoding", b"te", b"trailer", b"content-length"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def header_list_limit(limits: Limits) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE (bytes, RFC 7541 §4.1 sizes): past it HPACK decoding stops
    and the connection ends (GOAWAY ENHANCE_YOUR_CALM); below it a head over ``max_head_size``
    is the exchange's 431 on its stream."""
    return max(2 * limits.max_head_size, 65536)


class FramingDecoder(Decoder):
    """An HPACK decoder that keeps ``content-length`` (and ``host`` next to ``:authority``)
    away from ``h2``'s checks, which would make a malformed one a connection error.

    ``h2`` calls ``conn.decoder.decode(block, raw=True)`` once per header block; the headers
    held back from the last block are left in :attr:`held` for the session (which feeds ``h2``
    one frame at a time, so the block is that frame's stream's).
    """

    held: list[Header] | None = None

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        headers = list(super().decode(data, raw=raw))
        names = {bytes(h[0]) for h in headers}
        hold = {b"content-length", b"host"} if b":authority" in names else {b"content-length"}
        self.held = [(bytes(n), bytes(v)) for n, v in headers if n in hold]
        return [h for h in headers if h[0] not in hold]


def response_headers(status: int, headers: list[Header], length: int | None,
                      log: Logger) -> list[Header]:
    """``:status``, *headers* lower-cased without framing and hop-by-hop ones (a name or value
    HTTP/2 cannot carry is dropped, logged once), then ``content-length`` from *length*."""
    out = [(b":status", b"%d" % status)]
    dropped = []
    for name, value in headers:
        name = name.lower()
        if name in _NOT_FORWARDED:
            continue
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            dropped.append(name)
            continue
        out.append((name, value))
    if dropped:
        log.info("HTTP/2 response: dropped header(s) HTTP/2 cannot carry: {names!r}",
                 names=dropped)
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    return out


def request_head(headers: list[Header], held: list[Header]) -> RequestHead:
    """The :class:`RequestHead` of h2's validated request *headers* (pseudo-headers first, RFC
    9113 §8.3.1) and the *held* ones (see :class:`FramingDecoder`); ``head_size`` is method +
    path + (name + value + 4) per header."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[Header] = []
    expect_continue = False
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        elif name == b"expect" and value.lower() == b"100-continue":
            expect_continue = True
        else:
            fields.append((name, value))
    fields += held
    authority = pseudo.get(b":authority")
    if authority is not None:
        fields = [(n, v) for n, v in fields if not (n == b"host" and v == authority)]
        fields.insert(0, (b"host", authority))
    method, target = pseudo.get(b":method", b""), pseudo.get(b":path", b"")
    size = len(method) + len(target) + sum(len(n) + len(v) + 4 for n, v in fields)
    return RequestHead(method, target, b"HTTP/2", fields, None,
                       expect_continue=expect_continue, head_size=size)
