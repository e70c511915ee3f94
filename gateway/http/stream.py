"""The contract between the HTTP codecs and the version-independent request path.

An HTTP/1.1 connection (:mod:`gateway.http.h1`) or an HTTP/2 stream (:mod:`gateway.http.h2`)
turns a client's bytes into one :class:`RequestHead`, body bytes and an end; each request gets one
:class:`~gateway.http.exchange.Exchange`, which routes, authorizes and relays it to the upstream,
and answers through the :class:`ClientStream` that carries it. The exchange never knows which HTTP
version is below it; the codec never knows about routes, authorizers or upstreams.

Calls from the codec to the exchange (in this order; ``body_data``/``body_end`` only while the
request has a body, ``client_lost`` at any time, at most once, and nothing after it)::

    exchange = Exchange(stream, head); exchange.start()
    exchange.body_data(data) ...; exchange.body_end()
    exchange.client_lost()

Calls from the exchange to the stream: at most one ``send_informational`` per 1xx, then one
``send_head``, any number of ``send_data``, and one ``send_end`` — or ``reset`` at any point to
give up (the client must never take a cut response for a complete one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from gateway.identity import ClientIdentity

Header = tuple[bytes, bytes]


@attrs.define(slots=True)
class RequestHead:
    """One request head, as the codec parsed and checked it.

    ``method`` and ``target`` are the bytes sent (HTTP/2: ``:method`` and ``:path``; ``target``
    is ``b""`` for a CONNECT without ``:path``). ``version`` is ``b"HTTP/1.0"``, ``b"HTTP/1.1"``
    or ``b"HTTP/2"``. ``headers`` are the ``(name, value)`` pairs in arrival order, names as sent
    (lower case over HTTP/2), with ``Expect`` kept aside in ``expect_continue`` and, for HTTP/2,
    ``:authority`` turned into a ``host`` header (one equal ``host`` as well is no conflict).
    ``content_length`` is the body's length in bytes when known (``0``: no body), ``None`` for a
    chunked HTTP/1.1 body or an HTTP/2 body without ``content-length``.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[Header]
    content_length: int | None
    expect_continue: bool = False
    upgrade: bool = False  # HTTP/1.1 Connection: upgrade + Upgrade: (the codec stops parsing)
    head_size: int = 0  # HTTP/2: method + target + (name + value + 4) per header, for 431
    keep_alive: bool = True  # HTTP/1.x: False for Connection: close, HTTP/1.0 without keep-alive


class ClientConnection(Protocol):
    """What an exchange reads from the client connection that carries it.

    ``identity`` is the verified leaf's :class:`~gateway.identity.ClientIdentity` or ``None``
    (no certificate, or a plain listener); ``server_name`` the SNI sent, or ``None``;
    ``tls`` whether the listener is TLS; ``peer_host`` the client's IP address as text
    (``"unix"`` for a Unix socket); ``listener`` the :class:`~gateway.http.server.Listener`
    (routes, limits, reactor, access log); ``lost_as`` what a request it loses is logged as
    (``upstream_status``): ``client-gone``, or ``drain-timeout`` when the gateway dropped it.
    """

    identity: ClientIdentity | None
    server_name: str | None
    tls: bool
    peer_host: str
    listener: Any
    lost_as: str

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """DER of the certificates the client sent after its leaf, in the order sent."""


class ClientStream(Protocol):
    """What an exchange writes its response to: an HTTP/1.1 connection or an HTTP/2 stream."""

    @property
    def connection(self) -> ClientConnection:
        """The client connection that carries the stream."""

    @property
    def version(self) -> bytes:
        """``b"HTTP/1.0"``, ``b"HTTP/1.1"`` or ``b"HTTP/2"``."""

    def send_informational(self, status: int, headers: list[Header]) -> None:
        """A 1xx interim response (``100 Continue``, ``103 Early Hints``), before the head."""

    def send_head(self, status: int, headers: list[Header], length: int | None,
                  body: bool) -> None:
        """The response head: *status* (200–599, or 101 for an HTTP/1.1 upgrade), end-to-end
        *headers* (no hop-by-hop or framing headers: the codec writes its own), *length* the
        body's size in bytes if known (announced as ``Content-Length``, also for ``HEAD`` and
        ``304`` where *body* is false), else ``None`` (HTTP/1.1: chunked; HTTP/2: DATA until
        END_STREAM). *body* false: no body bytes follow (``HEAD``, ``204``, ``304``)."""

    def send_data(self, data: bytes) -> None:
        """Response body bytes."""

    def send_end(self) -> None:
        """The response is complete."""

    def reset(self) -> None:
        """Give up on the response: HTTP/1.1 aborts the connection, HTTP/2 resets the stream
        with ``INTERNAL_ERROR``. Safe to call more than once."""

    def close_after_response(self) -> None:
        """End the connection after this response (HTTP/1.1 ``Connection: close``; HTTP/2: the
        request body still arriving is discarded and the stream is reset with ``NO_ERROR``
        after the response, RFC 9113 §8.1)."""

    def pause_request_body(self) -> None:
        """Stop reading the request body (HTTP/2: stop opening the flow-control window)."""

    def resume_request_body(self) -> None:
        """Start reading the request body again."""

    def set_response_producer(self, producer: Any) -> None:
        """Register the ``IPushProducer`` of response bytes (the upstream connection), or
        ``None``: paused while the client cannot take more, resumed when it can."""
