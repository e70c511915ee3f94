"""One HTTP/1.1 connection to an upstream: writes requests, parses responses with ``httptools``.

:class:`UpstreamConnection` carries one request at a time (no pipelining) for the pool in
:mod:`gateway.http.pool`. It writes the request head and the body bytes it already has in one
``write``, streams the rest of the body as the client sends it (chunked when the length is not
known), and reports the response to the request's sink as it is parsed: interim ``1xx`` heads,
the final head, body bytes (chunked coding removed), the end — or one failure. Backpressure both
ways: it is its transport's producer (a full upstream socket pauses reading the client's body),
and it pauses reading the upstream while the client cannot take more.

Response heads are bounded: over ``max_head_size`` bytes (status line and header lines without
line ends) or :data:`MAX_HEADER_COUNT` header lines, the response is refused
(``upstream-head-too-large``), as nginx and Envoy answer 502 for such a head. A status code
outside 100-599 (RFC 9110 §15) or a transfer coding other than ``chunked`` alone (nginx's
"upstream sent unknown Transfer-Encoding") is ``upstream-error``. A connection is reused only
when nothing follows its response: any byte after the end of a response (a second response in
the same read included) means the upstream is out of step, and the connection is closed once
the response it did complete is delivered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.http.stream import Header

if TYPE_CHECKING:
    from gateway.http.pool import Upstream, UpstreamRequest

MAX_HEADER_COUNT = 100  # header lines in one upstream response head


class _HeadTooLargeError(Exception):
    pass


class _HeadDone(Exception):  # noqa: N818  (a signal, not an error)
    """Stops llhttp after the head of a response that has no body (a response to HEAD)."""


class _OutOfStep(Exception):  # noqa: N818  (a signal, not an error)
    """Stops llhttp at the start of a message nobody asked for (after a complete response)."""


class _InvalidHeadError(Exception):
    """A final response head the gateway refuses (its text is the log's detail)."""


@implementer(IPushProducer)
class UpstreamConnection(Protocol):
    """A pooled HTTP/1.1 connection to one upstream (see the module docstring).

    ``request`` is the :class:`~gateway.http.pool.UpstreamRequest` it carries, or ``None`` while
    idle in the pool. ``deadline`` is read by the pool's sweep (``reactor.seconds()`` time):
    the response head timeout, the read timeout while a body streams, or the idle timeout.
    """

    transport: Any

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.request: UpstreamRequest | None = None
        self.deadline: float | None = None
        self.connected_at_least_once = False
        self.reused = False  # has carried a request before the current one
        self.lost = False
        self._expire_kind = "idle"
        self._parser: Any = None
        self._chunked_body = False
        self._head_bytes = 0
        self._head_count = 0
        self._in_head = False
        self._status = 0
        self._headers: list[Header] = []
        self._got_bytes = False  # any byte of the current response
        self._complete = False  # llhttp saw the end of the final response (in this read)
        self._response_done = False
        self._keep_alive = True
        self._reading_paused = False
        self._writing_paused = False
        self._raw = 0
        self._close_delimited = False

    # -- Protocol ------------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self.connected_at_least_once = True
        self.transport.registerProducer(self, True)
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:  # a request goes out in one write; never wait to coalesce
            nodelay(True)
        self.upstream.sweep.items.add(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        request = self.request
        if request is None or self._response_done:
            # Bytes nobody asked for: this connection is out of step; drop it.
            self.transport.abortConnection()
            return
        self._got_bytes = True
        if not self._in_head and self._expire_kind == "read":
            self.deadline = self.upstream.sweep.now() + self.upstream.settings.read_timeout \
                if self.upstream.settings.read_timeout else None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 to a request that was not an upgrade (llhttp stops there): unusable.
            self._fail("upstream-error", "the upstream switched protocols (101) unasked")
            return
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            if isinstance(context, _HeadTooLargeError):
                self._fail("upstream-head-too-large", "response head too large")
            elif isinstance(context, _InvalidHeadError):
                self._fail("upstream-error", str(context))
            elif isinstance(context, _HeadDone):
                # Reused only if the head ended this read (a HEAD response is its head alone;
                # a head split oddly across reads merely costs the connection).
                self._keep_alive = self._keep_alive and data.endswith(b"\r\n\r\n")
                self._finish_response()
            elif isinstance(context, _OutOfStep):
                self._finish_out_of_step()
            else:
                raise
            return
        except httptools.HttpParserError as exc:
            if self._complete:  # bytes after a complete response that are not even HTTP
                self._finish_out_of_step()
            elif self._status and not self._in_head:
                self._broke(f"malformed response body: {exc}")
            else:
                self._fail("upstream-error", f"malformed response head: {exc}")
            return
        if self._complete:
            self._finish_response()
        elif self._in_head:
            self._raw += len(data)
            if self._raw > 2 * self.upstream.settings.max_head_size + 65536:
                self._fail("upstream-head-too-large", "response head too large")

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.lost = True
        self.deadline = None
        self.upstream.sweep.items.discard(self)
        self.upstream.connection_lost(self)
        request = self.request
        if request is None or self._response_done:
            return
        if self._status and not self._in_head:
            if self._close_delimited:
                # A body without length or chunked coding ends with the connection (RFC 9112
                # §6.3): complete now.
                self._keep_alive = False
                self._finish_response()
            else:
                self._broke(failure_text(reason))
            return
        self.request = None
        request.connection_failed(self, reason, self._got_bytes)

    # -- sending -------------------------------------------------------------------------------

    def send(self, request: UpstreamRequest, first: bytes) -> None:
        """Carry *request*: write *first* (its head and the body bytes held so far)."""
        self.request = request
        self.deadline = None
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers = []
        self._head_bytes = self._head_count = self._raw = 0
        self._in_head = True
        self._got_bytes = False
        self._complete = False
        self._response_done = False
        self._keep_alive = True
        self._chunked_body = request.length is None
        self.transport.write(first)
        if request.body_complete:
            self.request_sent()

    def write_body(self, data: bytes) -> None:
        if data and not self.lost:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked_body
                                 else data)

    def end_body(self) -> None:
        if self._chunked_body and not self.lost:
            self.transport.write(b"0\r\n\r\n")
        self.request_sent()

    def request_sent(self) -> None:
        """The whole request is written: the response head must come within the timeout."""
        timeout = self.upstream.settings.response_timeout
        if self._in_head and not self._response_done:
            self._expire_kind = "head"
            self.deadline = self.upstream.sweep.now() + timeout if timeout else None

    def idle(self) -> None:
        """Back in the pool: closed after ``upstream_idle_timeout`` seconds unused."""
        self.request = None
        self.reused = True
        self._expire_kind = "idle"
        self.deadline = self.upstream.sweep.now() + self.upstream.settings.idle_timeout
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def expire(self) -> None:
        """Called by the sweep once ``deadline`` passed."""
        self.deadline = None
        kind = self._expire_kind
        if kind == "idle" and self.request is None:
            self.upstream.forget(self)
            self.transport.loseConnection()
        elif kind == "head" and self.request is not None:
            self._fail("timeout", "no response head in time")
        elif kind == "read" and self.request is not None:
            self._broke("no response bytes within upstream_read_timeout")

    def abort(self) -> None:
        """Give up on this connection (the request was cancelled): never reused."""
        self.request = None
        self.deadline = None
        self.upstream.forget(self)
        if not self.lost:
            self.transport.abortConnection()

    # -- IPushProducer (the upstream's write side) and reading control -------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self._writing_paused = True
        if self.request is not None:
            self.request.sink.pause_request_body()

    def resumeProducing(self) -> None:  # noqa: N802
        self._writing_paused = False
        if self.request is not None:
            self.request.sink.resume_request_body()

    def stopProducing(self) -> None:  # noqa: N802
        """The transport is going away; connectionLost follows."""

    def pause_reading(self) -> None:
        if not self._reading_paused and not self.lost:
            self._reading_paused = True
            if self._expire_kind == "read":
                self.deadline = None
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self._reading_paused and not self.lost:
            self._reading_paused = False
            if self._expire_kind == "read" and self.upstream.settings.read_timeout:
                self.deadline = self.upstream.sweep.now() + self.upstream.settings.read_timeout
            self.transport.resumeProducing()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete or self.request is None:
            raise _OutOfStep
        self._in_head = True
        self._headers = []
        self._head_bytes = self._head_count = 0

    def on_status(self, status: bytes) -> None:
        self._grow(len(status) + 13)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailer fields: dropped
        self._head_count += 1
        self._grow(len(name) + len(value) + 2)
        if self._head_count > MAX_HEADER_COUNT:
            raise _HeadTooLargeError
        self._headers.append((name, value))

    def _grow(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.upstream.settings.max_head_size:
            raise _HeadTooLargeError

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        request = self.request
        if request is None:  # cancelled while this read was being parsed
            raise _OutOfStep
        if not 100 <= status <= 599:
            raise _InvalidHeadError(f"invalid status code {status}")
        if status < 200:
            if status != 101:
                request.sink.upstream_informational(status, self._headers)
            return
        self._in_head = False
        self._status = status
        self._keep_alive = bool(self._parser.should_keep_alive())
        settings = self.upstream.settings
        self._expire_kind = "read"
        self.deadline = (self.upstream.sweep.now() + settings.read_timeout
                         if settings.read_timeout else None)
        codings = [c.strip().lower() for n, v in self._headers
                   if n.lower() == b"transfer-encoding" for c in v.split(b",")]
        if codings and codings != [b"chunked"]:
            coding = b", ".join(codings).decode("latin-1")
            raise _InvalidHeadError(f"unsupported transfer coding {coding!r}")
        length = _content_length(self._headers)
        self._close_delimited = length is None and not codings
        request.response_head(status, self._headers, length)
        if request.method == b"HEAD" and status not in (204, 304):
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        if self.request is not None:
            self.request.sink.upstream_data(body)

    def on_message_complete(self) -> None:
        if self._status:
            self._complete = True  # finished once llhttp has seen the rest of this read

    # -- endings -------------------------------------------------------------------------------

    def _finish_response(self) -> None:
        request = self.request
        if request is None or self._response_done:
            return
        self._response_done = True
        self.deadline = None
        reusable = self._keep_alive and request.body_complete and not self.lost
        request.response_end()
        self.request = None
        self.upstream.release(self, reusable)

    def _finish_out_of_step(self) -> None:
        """More bytes came after a complete response: deliver it, never reuse the connection."""
        self._keep_alive = False
        if self.request is not None and self._complete:
            self._finish_response()
        else:
            self.abort()

    def _fail(self, kind: str, detail: str) -> None:
        request = self.request
        self.abort()
        if request is not None:
            request.failed(kind, detail)

    def _broke(self, detail: str) -> None:
        request = self.request
        self.abort()
        if request is not None:
            request.broke(detail)


def _content_length(headers: list[Header]) -> int | None:
    """The response's ``Content-Length`` (llhttp has refused a conflicting one), or ``None``."""
    for name, value in headers:
        if name.lower() == b"content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
        if name.lower() == b"transfer-encoding":
            return None
    return None


def failure_text(failure: Failure) -> str:
    """A one-line description of *failure* for the log: ``Type: message``, the reasons of a
    multi-reason failure (Twisted's ``ConnectingCancelledError``, ``ResponseFailed``) joined."""
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(failure_text(r) for r in reasons)
    return f"{type(value).__name__}: {value}"
