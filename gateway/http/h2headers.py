"""Header lists for :mod:`gateway.http.h2`: request heads from ``h2``'s events, response
heads for ``h2``; pure, no I/O.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.utilities import CONNECTION_HEADERS
from hpack import Decoder, HeaderTuple
from hpack.exceptions import HPACKError, OversizedHeaderListError
from twisted.logger import Logger

from gateway.config import Limits
from gateway.http.stream import Header, RequestHead

# Response headers the codec writes itself or that HTTP/2 forbids (RFC 9113 §8.2.2).
_NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
                            b"transfer-encoding", b"te", b"trailer", b"content-length"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


# h2's messages that quote a header *name* (kept, shortened); any other quotes values.
_NAMES_ONLY = re.compile(r"header name|pseudo-header|Connection-specific header field|mandatory")
_QUOTED = re.compile(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"")
MAX_QUOTED_NAME = 64  # characters of a quoted header name kept in a log line


def protocol_error_text(message: str) -> str:
    """*message* of an ``h2`` ``ProtocolError`` for the log, without the header values it
    quotes: a value (an ``authorization`` token, a ``:path`` with its query) becomes
    ``<N bytes>``; a quoted name is kept, cut to :data:`MAX_QUOTED_NAME` characters."""
    if _NAMES_ONLY.search(message):
        return _QUOTED.sub(lambda m: m[0] if len(m[0]) <= MAX_QUOTED_NAME
                           else f"{m[0][:MAX_QUOTED_NAME]}...", message)
    return _QUOTED.sub(lambda m: f"<{len(_unquoted(m[0]))} bytes>", message)


def shown(value: bytes | None) -> str:
    """A client's *value* in a log line: its ``repr``, the first 32 bytes only."""
    if value is None or len(value) <= 32:
        return repr(value)
    return f"{value[:32]!r}... ({len(value)} bytes)"


def _unquoted(quoted: str) -> bytes:
    try:
        value = ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        return quoted.encode()
    return value if isinstance(value, bytes) else quoted.encode()


def header_list_limit(limits: Limits) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE (bytes, RFC 7541 §4.1 sizes): past it HPACK decoding stops
    and the connection ends (GOAWAY ENHANCE_YOUR_CALM); below it a head over ``max_head_size``
    is the exchange's 431 on its stream."""
    return max(2 * limits.max_head_size, 65536)


# Request fields that make a request malformed (RFC 9113 §8.2.2): a stream error, not h2's
# connection error. ``te`` only with a value other than ``trailers``.
MALFORMED_FIELDS = CONNECTION_HEADERS | {b"te"}


class CompressionError(ProtocolError):
    """A header block HPACK cannot decode: the connection error COMPRESSION_ERROR (RFC 9113
    §4.3), where ``h2`` would say PROTOCOL_ERROR."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class FramingDecoder(Decoder):
    """An HPACK decoder that keeps ``content-length`` (and ``host`` next to ``:authority``)
    and the fields of :data:`MALFORMED_FIELDS` away from ``h2``'s checks, which would make a
    malformed one a connection error; the session makes it a stream error. A block it cannot
    decode raises :class:`CompressionError`.

    ``h2`` calls ``conn.decoder.decode(block, raw=True)`` once per header block; the headers
    held back from the last block are left in :attr:`held` for the session (which feeds ``h2``
    one frame at a time, so the block is that frame's stream's).
    """

    held: list[Header] | None = None
    # The last block was a request head (not CONNECT) without ``:authority`` or ``host``: h2
    # got an empty ``host`` in its place, so that the session resets the stream (RFC 9113
    # §8.1.1) where h2 would end the connection.
    no_authority = False

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        try:
            headers = list(super().decode(data, raw=raw))
        except OversizedHeaderListError:
            raise  # h2's ENHANCE_YOUR_CALM
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:  # as h2 catches
            raise CompressionError(f"Error decoding header block: {e}") from e
        names = {bytes(h[0]) for h in headers}
        hold = {b"content-length", b"host"} if b":authority" in names else {b"content-length"}
        kept: list[HeaderTuple] = []
        held: list[Header] = []
        for header in headers:
            name, value = bytes(header[0]), bytes(header[1])
            if name in hold or _malformed(name, value):
                held.append((name, value))
            else:
                kept.append(header)
        self.held = held
        self.no_authority = (b":method" in names and not names & {b":authority", b"host"}
                             and (b":method", b"CONNECT") not in headers)
        if self.no_authority:
            kept.append(HeaderTuple(b"host", b""))
        return kept


def _malformed(name: bytes, value: bytes) -> bool:
    return name in MALFORMED_FIELDS and (name != b"te" or value.lower() != b"trailers")


def connection_specific(held: list[Header] | None) -> bytes | None:
    """The first field of :data:`MALFORMED_FIELDS` that :class:`FramingDecoder` held back from
    a block (*held*), or ``None``: the block is malformed if there is one."""
    return next((name for name, _ in held or () if name in MALFORMED_FIELDS), None)


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
