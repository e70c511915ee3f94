"""HTTP/1.1 from clients: a request parser on ``httptools`` (llhttp) and response serialisation.

Pure: no reactor, no sockets. :class:`RequestParser` is fed the bytes of one connection and
calls its receiver with one :class:`~gateway.http.stream.RequestHead` per request, the body's
bytes (chunked coding removed) and the end of each body; any framing error raises
:class:`RequestError` carrying the status and reason id to answer with, after which the
connection is closed: nothing after a framing error can be trusted to start a request.

On top of llhttp's strict mode (CR LF line ends only; one ``Content-Length``; no
``Content-Length`` with ``Transfer-Encoding``; no obs-fold; chunk sizes that fit 64 bits;
token header names; no CR, LF or NUL in values) the parser refuses, as RFC 9112 asks of a proxy
and as docs/configuration.md lists:

* any version but ``HTTP/1.0`` and ``HTTP/1.1`` (``HTTP/0.9``, ``HTTP/2.0``, ...): 400
  ``malformed-request``;
* a ``Transfer-Encoding`` other than one ``chunked``, or any in HTTP/1.0: 400
  ``unsupported-transfer-encoding`` (§6.1);
* a ``Content-Length`` that is not one decimal number up to 2^63−1: 400 ``malformed-request``;
* a head (request line and header lines, without line ends) over ``max_head_size`` bytes, or more
  than ``max_header_count`` header lines: 431 ``request-head-too-large``;
* a line starting with whitespace (obs-fold, §5.2): 400 ``obs-fold-or-leading-whitespace``;
* a line ending in a bare LF: 400 ``malformed-request`` at once (never a wait for more).

Trailer fields after a chunked body are read and dropped.

Upgrades: llhttp stops at the end of any head with ``Connection: upgrade`` and ``Upgrade``. Only
a WebSocket opening handshake (``GET`` without a body, ``Upgrade: websocket``) is one for the
gateway (``RequestHead.upgrade``); for any other (``Upgrade: h2c`` from curl, a ``POST`` with a
body) the parser goes on as for a plain request: the body is read by its framing and the next
request follows, and ``Upgrade`` is dropped as the hop-by-hop header it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import httptools

from gateway.http.stream import Header, RequestHead

MAX_CONTENT_LENGTH = (1 << 63) - 1  # bytes; RFC 9110 §8.6 leaves the bound to us, as nginx does

# RFC 9110 §15 reason phrases.
PHRASES = {
    100: b"Continue", 101: b"Switching Protocols", 103: b"Early Hints",
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict", 410: b"Gone",
    411: b"Length Required", 412: b"Precondition Failed", 413: b"Content Too Large",
    414: b"URI Too Long", 415: b"Unsupported Media Type", 417: b"Expectation Failed",
    421: b"Misdirected Request", 422: b"Unprocessable Content", 426: b"Upgrade Required",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}


def reason_phrase(code: int) -> bytes:
    """The RFC 9110 reason phrase for status *code* (``b"Unknown"`` for an unlisted one)."""
    return PHRASES.get(code, b"Unknown")


class RequestError(Exception):
    """A request that cannot be served: answer ``status`` with ``reason`` (a reason id), then
    close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class Receiver(Protocol):
    """What :class:`RequestParser` reports to, in order, per request."""

    def request_head(self, head: RequestHead) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_end(self) -> None: ...


class RequestParser:
    """Parses the client side of one HTTP/1.1 connection.

    *max_head_size* (bytes) and *max_header_count* bound each request head. :meth:`feed` raises
    :class:`RequestError` for a request that must be refused. It returns the bytes that follow
    the head of a request after which the connection no longer speaks HTTP/1.1 (an upgrade, a
    ``CONNECT``) or that ends it (``Connection: close``, HTTP/1.0 without keep-alive); the parser
    then stops and ignores anything fed later (``finished`` is true).
    """

    def __init__(self, receiver: Receiver, max_head_size: int, max_header_count: int) -> None:
        self._receiver = receiver
        self._max_head = max_head_size
        self._max_headers = max_header_count
        self._parser = httptools.HttpRequestParser(self)
        self.in_head = False  # between a request's first byte and the end of its head
        self.finished = False
        self._in_body = False
        self._window = b""  # the bytes of the current feed (and a head begun before it)
        self._resume = False  # an upgrade head that is not one: parse on after llhttp stops
        self._synthetic = False  # parsing the stand-in head that resumes the body
        self._signal: Exception | None = None  # what a callback raised to stop llhttp
        self._new_message()

    def _new_message(self) -> None:
        self._url = b""
        self._headers: list[Header] = []
        self._size = 0
        self._raw = 0
        self._length: int | None = 0
        self._chunked = False
        self._expect = False

    def feed(self, data: bytes) -> bytes | None:
        """Parse *data*; see the class docstring."""
        if self.finished:
            return None
        self._window = self._window + data if self.in_head else data
        self._signal = None
        rest: bytes | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0]:]
            if not self._resume:
                self.finished = True
                return rest
        except httptools.HttpParserCallbackError:
            if isinstance(self._signal, RequestError):
                raise self._signal from None
            if isinstance(self._signal, _Finished):
                return b""
            raise  # a receiver's own error: the caller logs it
        except httptools.HttpParserError as exc:
            if self.finished:
                return b""  # bytes after a request that ends the connection: ignored
            raise _framing_error(str(exc), data) from None
        if rest is not None:  # an upgrade head that is not one: read on (outside the handler)
            return self._resume_body(rest)
        if self.in_head:
            # llhttp holds a partial header line itself, out of our sight: bound the bytes a
            # head may take (counted generously: all of a read in which a head began).
            self._raw += len(data)
            if self._raw > 2 * self._max_head + 2 * self._max_headers + 65536:
                raise RequestError(431, "request-head-too-large")
        else:
            self._window = b""
        return None

    def _resume_body(self, rest: bytes) -> bytes | None:
        """llhttp stopped after a head that asked for an upgrade the gateway does not make: a
        new parser reads on, primed with a stand-in head carrying the same body framing."""
        self._resume = False
        self._parser = httptools.HttpRequestParser(self)
        framing = (b"Transfer-Encoding: chunked" if self._chunked
                   else b"Content-Length: %d" % (self._length or 0))
        self._synthetic = True
        self.in_head = self._in_body = False
        return self.feed(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + rest)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        self._new_message()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body or self._synthetic:
            return  # a trailer field: dropped
        self._grow(len(name) + len(value) + 2)
        if len(self._headers) >= self._max_headers:
            raise self._stop(RequestError(431, "request-head-too-large"))
        lower = name.lower()
        if lower == b"content-length":
            value = value.strip(b" \t")
            if not value.isdigit() or int(value) > MAX_CONTENT_LENGTH:
                raise self._stop(RequestError(400, "malformed-request"))
            self._length = int(value)
        elif lower == b"transfer-encoding":
            if self._chunked or value.strip(b" \t").lower() != b"chunked":
                raise self._stop(RequestError(400, "unsupported-transfer-encoding"))
            self._chunked = True
            self._length = None
        elif lower == b"expect":
            self._expect = self._expect or value.strip().lower() == b"100-continue"
            return  # answered by the gateway itself, after authorization; never forwarded
        # llhttp leaves the whitespace after a value, which is not part of it (RFC 9112 §5)
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self._synthetic:
            self._synthetic = False
            self.in_head, self._in_body = False, True
            return
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise self._stop(RequestError(400, "malformed-request"))
        if self._chunked and version == "1.0":
            raise self._stop(RequestError(400, "unsupported-transfer-encoding"))
        method = parser.get_method()
        self._size += len(method) + 9
        if self._size > self._max_head:
            raise self._stop(RequestError(431, "request-head-too-large"))
        line = b"%s %s HTTP/%s" % (method, self._url, version.encode("ascii"))
        if line not in self._window:  # RFC 9112 §3: exactly one space between the parts
            raise self._stop(RequestError(400, "malformed-request"))
        self.in_head = False
        self._in_body = True
        upgrade = bool(parser.should_upgrade()) and method != b"CONNECT"
        websocket = upgrade and method == b"GET" and self._length == 0 and any(
            n.lower() == b"upgrade" and b"websocket" in v.lower() for n, v in self._headers)
        self._resume = upgrade and not websocket
        head = RequestHead(
            method=method, target=self._url, version=b"HTTP/" + version.encode("ascii"),
            headers=self._headers, content_length=self._length,
            expect_continue=self._expect and version == "1.1", upgrade=websocket,
            keep_alive=bool(parser.should_keep_alive()))
        self._receiver.request_head(head)

    def on_body(self, body: bytes) -> None:
        self._receiver.request_body(body)

    def on_message_complete(self) -> None:
        if self._resume:
            return  # llhttp ends an upgrade request at its head; its body follows (resumed)
        self._in_body = False
        keep_alive = self._parser.should_keep_alive()
        self._receiver.request_end()
        if not keep_alive:
            self.finished = True
            raise self._stop(_Finished())

    def _stop(self, signal: Exception) -> Exception:
        # httptools wraps what a callback raises; feed() finds it here.
        self._signal = signal
        return signal

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size > self._max_head:
            raise self._stop(RequestError(431, "request-head-too-large"))


class _Finished(Exception):  # noqa: N818  (a signal, not an error)
    """Raised out of llhttp after a request that ends the connection: stop parsing."""


def _framing_error(message: str, data: bytes) -> RequestError:
    lowered = message.lower()
    if "whitespace" in lowered or ("invalid header field char" in lowered and (
            b"\n " in data or b"\n\t" in data)):
        return RequestError(400, "obs-fold-or-leading-whitespace")
    if "transfer-encoding" in lowered:
        return RequestError(400, "unsupported-transfer-encoding")
    return RequestError(400, "malformed-request")


def response_head(version: bytes, status: int, headers: Iterable[Header]) -> bytes:
    """An HTTP/1.1 response head: status line, *headers* as given, and the final CRLF CRLF.

    *version* is the status line's version (``b"HTTP/1.1"``). The caller has already chosen the
    framing headers (``Content-Length``, ``Transfer-Encoding``, ``Connection``).
    """
    lines = [b"%s %d %s" % (version, status, reason_phrase(status))]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """*data* as one chunk of the chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
