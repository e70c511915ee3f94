"""Frame boundaries and per-connection abuse bounds for :mod:`gateway.http.h2`; pure, no I/O.

:class:`FrameReader` cuts the client's byte stream into whole HTTP/2 frames (RFC 9113 §4.1) so
that the session can hand them to ``h2`` one at a time, see each frame's type and stream before
``h2`` does, and keep the events of the frames before a bad one. :class:`FloodGuard` counts the
frames that cost the server work without carrying a request (CVE-2023-44487 rapid reset, PING,
SETTINGS, PRIORITY and empty DATA floods, CONTINUATION floods) and says when a connection went
past a bound; the session then ends it with GOAWAY(ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
from h2.errors import ErrorCodes

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4, checked by h2 itself

DATA, HEADERS, PRIORITY, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 2, 4, 6, 7, 9  # frame types
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

#: Bounds per connection within one :data:`WINDOW` (seconds), by what is counted.
WINDOW = 10.0
BOUNDS = {
    "reset": 200,  # streams reset by the client before their response ended, refused, malformed
    "ping": 1000,  # PING frames (not ACKs)
    "settings": 100,  # SETTINGS frames (not ACKs)
    "priority": 10_000,  # PRIORITY frames, for any stream, idle ones included
    "empty-data": 1000,  # DATA frames without payload and without END_STREAM
    "closed-data": 1000,  # DATA frames for streams that are closed or were never opened
}


class FrameError(Exception):
    """The connection must end: GOAWAY with ``error_code``; ``str()`` is the log reason."""

    def __init__(self, error_code: ErrorCodes, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code


@attrs.define(slots=True)
class RawFrame:
    """One whole frame: its 9-byte header fields and ``data``, header included."""

    type: int
    flags: int
    stream_id: int
    length: int  # payload bytes
    data: bytes


class FrameReader:
    """Whole frames out of the bytes that follow the connection preface.

    The first :data:`PREFACE`-many bytes come back from :meth:`feed` as one ``RawFrame`` of type
    ``-1`` for ``h2`` to check. A frame longer than *max_frame_size* (our SETTINGS_MAX_FRAME_SIZE)
    raises :class:`FrameError` (FRAME_SIZE_ERROR, RFC 9113 §4.2) before its payload is buffered;
    a header block (HEADERS + CONTINUATION) whose payload passes *max_block* bytes raises
    FrameError (ENHANCE_YOUR_CALM): ``h2`` buffers the whole block before decoding it.
    """

    def __init__(self, max_frame_size: int, max_block: int) -> None:
        self._buffer = bytearray()
        self._preface = len(PREFACE)
        self._max_frame_size = max_frame_size
        self._max_block = max_block
        self._block = -1  # payload bytes of the header block in progress, -1: none

    @property
    def in_header_block(self) -> bool:
        """A HEADERS frame came without END_HEADERS and its CONTINUATIONs are still due."""
        return self._block >= 0

    def feed(self, data: bytes) -> Iterator[RawFrame]:
        """The frames *data* completes, in order, one at a time (so that a bad frame raises
        only after the ones before it were handled); a partial frame stays buffered."""
        self._buffer += data
        if self._preface:
            if len(self._buffer) < self._preface:
                return
            preface = bytes(self._buffer[:self._preface])
            del self._buffer[:self._preface]
            self._preface = 0
            yield RawFrame(-1, 0, 0, len(preface), preface)
        offset = 0
        try:
            while len(self._buffer) - offset >= 9:
                header = self._buffer[offset:offset + 9]
                length = int.from_bytes(header[:3], "big")
                if length > self._max_frame_size:
                    raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if len(self._buffer) - offset < 9 + length:
                    break
                frame = RawFrame(header[3], header[4],
                                 int.from_bytes(header[5:9], "big") & 0x7FFFFFFF, length,
                                 bytes(self._buffer[offset:offset + 9 + length]))
                offset += 9 + length
                self._track_block(frame)
                yield frame
        finally:
            del self._buffer[:offset]

    def _track_block(self, frame: RawFrame) -> None:
        if frame.type == HEADERS or (frame.type == CONTINUATION and self._block >= 0):
            self._block = max(self._block, 0) + frame.length
            if self._block > self._max_block:
                raise FrameError(ErrorCodes.ENHANCE_YOUR_CALM,
                                 f"header block over {self._max_block} bytes")
            if frame.flags & END_HEADERS:
                self._block = -1


class FloodGuard:
    """Counts per kind (the keys of :data:`BOUNDS`) in fixed windows of :data:`WINDOW` seconds
    read from *clock*; :meth:`count` raises :class:`FrameError` (ENHANCE_YOUR_CALM) when a kind
    passes its bound."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._started = clock()
        self._counts = dict.fromkeys(BOUNDS, 0)

    def count(self, kind: str) -> None:
        now = self._clock()
        if now - self._started >= WINDOW:
            self._started = now
            self._counts = dict.fromkeys(BOUNDS, 0)
        self._counts[kind] += 1
        if self._counts[kind] > BOUNDS[kind]:
            raise FrameError(ErrorCodes.ENHANCE_YOUR_CALM,
                             f"{kind} flood: over {BOUNDS[kind]} in {WINDOW:g} s")

    def frame(self, frame: RawFrame) -> None:
        """Count *frame* if it is a control frame that a flood consists of."""
        if frame.type == PING and not frame.flags & ACK:
            self.count("ping")
        elif frame.type == SETTINGS and not frame.flags & ACK:
            self.count("settings")
        elif frame.type == PRIORITY:
            self.count("priority")
        elif frame.type == DATA and frame.length == 0 and not frame.flags & END_STREAM:
            self.count("empty-data")
