"""HTTP/2 from clients (RFC 9113) on the ``h2`` library's sans-I/O :class:`H2Connection`.

The server protocol creates one :class:`H2Session` per connection once ALPN chose ``h2``; every
client stream becomes one :class:`H2Stream` (a :class:`~gateway.http.stream.ClientStream`) and
one exchange from ``exchange_factory``. The session owns what ``h2`` leaves to its user:

- **Streams.** ``SETTINGS_MAX_CONCURRENT_STREAMS`` = :data:`MAX_STREAMS` is advertised and
  enforced here; ``h2``'s own bound is higher, so the excess stream's HEADERS are still decoded
  (HPACK stays in sync) and that stream alone gets ``RST_STREAM(REFUSED_STREAM)`` (§5.1.2).
- **Flow control** (§5.2). Response DATA goes out within the stream's and the connection's
  windows, from a buffer per stream; above :data:`HIGH_WATER` bytes the stream's response
  producer is paused, at :data:`LOW_WATER` resumed. Request DATA is acknowledged only once the
  exchange took it, and not while the exchange paused the request body.
- **Malformed requests** (§8.1.1): a repeated, non-numeric or oversized ``content-length``, a
  body of another length, or a connection-specific field (§8.2.2: ``connection``,
  ``keep-alive``, ``proxy-connection``, ``transfer-encoding``, ``upgrade``, ``te`` other than
  ``trailers``; in the trailers too) is a stream error (``RST_STREAM(PROTOCOL_ERROR)``).
  ``h2`` would make them connection errors, so its HPACK decoder is replaced by
  :class:`~gateway.http.h2headers.FramingDecoder`, which takes those fields out of the header
  list ``h2`` checks. A header block HPACK cannot decode ends the connection with
  ``GOAWAY(COMPRESSION_ERROR)`` (§4.3), one GOAWAY for any connection error.
- **Abuse bounds** (:mod:`gateway.http.h2frames`) end the connection with GOAWAY.
- **GOAWAY** (§6.8). ``h2`` refuses to send anything once a GOAWAY passed either way, so the
  session writes its draining GOAWAY itself and reads the client's GOAWAY itself: the streams
  in flight finish, new ones are refused, and the connection closes when the last one ends.

No exception leaves :meth:`H2Session.data_received`: ``h2`` errors become a stream or connection
error with one log line, an exchange callback raising resets its stream (``INTERNAL_ERROR``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import h2.events
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame, GoAwayFrame
from twisted.logger import Logger

from gateway.config import Limits
from gateway.http.h2frames import DATA, GOAWAY, FloodGuard, FrameError, FrameReader, RawFrame
from gateway.http.h2headers import (
    FramingDecoder,
    connection_specific,
    header_list_limit,
    protocol_error_text,
    request_head,
    response_headers,
    shown,
)
from gateway.http.stream import ClientConnection, Header, RequestHead
from gateway.logfmt import clean

MAX_STREAMS = 100  # SETTINGS_MAX_CONCURRENT_STREAMS advertised and enforced
H2_MAX_STREAMS = 1000  # h2's own bound, above MAX_STREAMS (see the module docstring)
CONNECTION_WINDOW = 16 * 1024 * 1024  # bytes: the connection's receive window (§6.9.2)
MAX_FRAME_SIZE = 16384  # SETTINGS_MAX_FRAME_SIZE (the default)
HIGH_WATER = 64 * 1024  # bytes buffered per stream above which its producer is paused
LOW_WATER = 16 * 1024  # ... and at or below which it is resumed
MAX_CONTENT_LENGTH = 2**63 - 1



class H2Stream:
    """One client stream: the :class:`~gateway.http.stream.ClientStream` its exchange answers
    through. Calls after the stream ended (client reset, connection gone) are ignored."""

    version = b"HTTP/2"

    def __init__(self, session: H2Session, stream_id: int, content_length: int | None) -> None:
        self.connection: ClientConnection = session.connection
        self.stream_id = stream_id
        self.exchange: Any = None  # None: told nothing more
        self.content_length = content_length  # announced request body length, bytes
        self.received = 0  # request body bytes so far
        self.last_body = session.now()  # when the last request body bytes (or the head) came
        self.last_sent = self.last_body  # when response bytes last went out (or the head came)
        self.request_open = content_length != 0  # client's side still sending
        self.response_done = False  # END_STREAM sent (or reset)
        self.closed = False
        self.buffer = bytearray()  # response body not yet within the flow-control windows
        self.end_pending = False  # send_end called, END_STREAM goes out with the buffer's end
        self.paused = False  # pause_request_body: WINDOW_UPDATEs withheld
        self.unacked = 0  # flow-controlled request bytes taken while paused
        self.producer: Any = None
        self.producer_paused = False
        self._session = session

    def send_informational(self, status: int, headers: list[Header]) -> None:
        """A 1xx HEADERS frame on this stream (RFC 9113 §8.1)."""
        if not self.closed and not self.response_done:
            self._session.send_headers(self, response_headers(status, headers, None,
                                                               self._session.log), False)

    def send_head(self, status: int, headers: list[Header], length: int | None,
                  body: bool) -> None:
        if not self.closed and not self.response_done:
            end = not body
            self._session.send_headers(self, response_headers(status, headers, length,
                                                               self._session.log), end)
            if end:
                self._session.response_ended(self)

    def send_data(self, data: bytes) -> None:
        if not self.closed and not self.response_done and data:
            self.buffer += data
            self._session.flush(self)

    def send_end(self) -> None:
        if not self.closed and not self.response_done:
            self.end_pending = True
            self._session.flush(self)

    def reset(self) -> None:
        """RST_STREAM(INTERNAL_ERROR); the exchange is told nothing more."""
        if not self.closed:
            self.exchange = None
            self._session.reset(self, ErrorCodes.INTERNAL_ERROR)

    def close_after_response(self) -> None:
        """Nothing to do: a request body still arriving when the response ended is always
        discarded and the stream reset with NO_ERROR (RFC 9113 §8.1)."""

    def pause_request_body(self) -> None:
        self.paused = True

    def resume_request_body(self) -> None:
        self.paused = False
        if self.unacked and not self.closed:
            self._session.acknowledge(self, self.unacked)
            self.unacked = 0

    def set_response_producer(self, producer: Any) -> None:
        """Register *producer* (or ``None``); one this stream paused is resumed as it goes."""
        self.release_producer()
        self.producer = producer
        self._session.update_producer(self)

    def release_producer(self) -> None:
        """Forget the producer, resumed if this stream had paused it (an upstream connection
        must not go back to its pool paused)."""
        producer, self.producer = self.producer, None
        if producer is not None and self.producer_paused:
            producer.resumeProducing()
        self.producer_paused = False


class H2Session:
    """The HTTP/2 side of one client connection (see the module docstring).

    *transport* needs ``write``, ``unregisterProducer`` and ``loseConnection``;
    *exchange_factory(stream, head)* returns an object with ``start()``, ``body_data(bytes)``,
    ``body_end()``, ``client_lost()``; *clock* (seconds) times the abuse bounds; *close*, if
    given, closes the connection instead of the transport's own ``loseConnection``.
    """

    def __init__(self, connection: ClientConnection, transport: Any,
                 exchange_factory: Callable[[H2Stream, RequestHead], Any], limits: Limits,
                 log: Logger, *, clock: Callable[[], float] = time.monotonic,
                 close: Callable[[], None] | None = None) -> None:
        self.connection = connection
        self._close = close  # closes the connection (the server protocol's, with its grace)
        self.log = log
        self._transport = transport
        self._exchange_factory = exchange_factory
        self._streams: dict[int, H2Stream] = {}
        self._reader = FrameReader(MAX_FRAME_SIZE, header_list_limit(limits))
        self._guard = FloodGuard(clock)
        self._clock = clock
        self._receiving = False  # inside data_received: one write at its end
        self._writing_paused = False
        self._goaway = False  # GOAWAY sent (drain) or received: refuse new streams
        self._closed = False

        self._decoder = FramingDecoder(header_list_limit(limits))
        # Response header lists come from h2headers.response_headers, already what RFC 9113
        # §8.2 asks (lower-case token names, no connection-specific fields, clean values,
        # :status first): h2's own outbound checks would only repeat that, at a third of the
        # cost of a small response. Inbound checks stay on.
        self._conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self._conn.decoder = self._decoder

        def settings(max_streams: int) -> Settings:
            return Settings(client=False, initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: header_list_limit(limits),
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
            })

        # Advertise MAX_STREAMS, then let h2 itself allow more (the module docstring says why).
        self._conn.local_settings = settings(MAX_STREAMS)
        self._conn.initiate_connection()
        self._conn.local_settings = settings(H2_MAX_STREAMS)
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._write()

    # -- from the transport ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from the client; everything they cause is written at once at the end."""
        if self._closed:
            return
        self._receiving = True
        try:
            for frame in self._reader.feed(data):
                self._guard.frame(frame)
                if frame.type == DATA and frame.stream_id not in self._streams:
                    self._guard.count("closed-data")  # each would cost an RST_STREAM
                self._receive_frame(frame)
                if self._closed:
                    break
        except FrameError as e:
            self._connection_error(e.error_code, str(e))
        except (h2.exceptions.ProtocolError, HyperframeError) as e:
            # For a ProtocolError h2 has already queued its GOAWAY: _connection_error sends it.
            self._connection_error(getattr(e, "error_code", ErrorCodes.PROTOCOL_ERROR),
                                   f"{type(e).__name__}: {protocol_error_text(str(e))}")
        except Exception:
            self.log.failure("HTTP/2 connection from {peer}: unexpected error",
                             peer=self.connection.peer_host)
            self._connection_error(ErrorCodes.INTERNAL_ERROR, "internal error")
        finally:
            self._receiving = False
        self._write()
        self._close_if_done()

    def connection_lost(self) -> None:
        """The transport is gone: every open exchange gets ``client_lost()``."""
        self._closed = True
        for stream in list(self._streams.values()):
            self._lose(stream)
        self._streams.clear()

    def pause_writing(self) -> None:
        """The transport's buffer is full: hold response DATA, pause every producer."""
        self._writing_paused = True
        for stream in self._streams.values():
            self.update_producer(stream)

    def resume_writing(self) -> None:
        self._writing_paused = False
        for stream in list(self._streams.values()):
            self.flush(stream)

    def drain(self) -> None:
        """SIGTERM: GOAWAY(NO_ERROR, last stream = highest seen), refuse new streams with
        REFUSED_STREAM, close once the open streams are done."""
        if self._closed or self._goaway:
            return
        self._goaway = True
        self._write(now=True)
        frame = GoAwayFrame(0, last_stream_id=self._conn.highest_inbound_stream_id,
                            error_code=ErrorCodes.NO_ERROR)
        self._transport.write(frame.serialize())
        self._close_if_done()

    def idle(self) -> bool:
        """No stream is open."""
        return not self._streams

    def now(self) -> float:
        """The session's clock, in seconds."""
        return self._clock()

    def reset_stalled(self, seconds: float) -> None:
        """Reset, with CANCEL, every stream whose request body has not moved for *seconds*
        (``idle_timeout``, as for an HTTP/1.1 body), or whose response the client has taken no
        bytes of for as long (its flow-control window stays shut, as nginx's ``send_timeout``);
        its exchange gets ``client_lost()``, which cancels the upstream request."""
        limit = self._clock() - seconds
        for stream in list(self._streams.values()):
            if stream.request_open and not stream.paused and stream.last_body <= limit:
                what = "no request body bytes"
            elif stream.buffer and stream.last_sent <= limit:
                what = "the client took no response bytes"
            else:
                continue
            self.log.info("HTTP/2 stream {id} from {peer}: {what} within idle_timeout: "
                          "RST_STREAM(CANCEL)", id=stream.stream_id, what=what,
                          peer=self.connection.peer_host)
            self._lose(stream)
            self.reset(stream, ErrorCodes.CANCEL)
        self._write()

    def close_idle(self) -> None:
        """``idle_timeout`` fired: GOAWAY(NO_ERROR) and close at once."""
        self._connection_error(ErrorCodes.NO_ERROR, None)

    # -- frames and events -------------------------------------------------------------------

    def _receive_frame(self, frame: RawFrame) -> None:
        if frame.type == GOAWAY and not self._reader.in_header_block:
            self._receive_goaway(frame)
            return
        self._decoder.held = None
        self._decoder.no_authority = False
        for event in self._conn.receive_data(frame.data):
            self._receive_event(event)
            if self._closed:
                return

    def _receive_goaway(self, raw: RawFrame) -> None:
        """The client's GOAWAY (§6.8), kept from h2 (which would stop all sending): finish the
        streams in flight; an error code ends the connection at once."""
        frame, _ = Frame.parse_frame_header(memoryview(raw.data[:9]))
        if not isinstance(frame, GoAwayFrame) or frame.stream_id != 0:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
        frame.parse_body(memoryview(raw.data[9:]))
        self._goaway = True
        if frame.error_code != ErrorCodes.NO_ERROR:
            self._connection_error(ErrorCodes.NO_ERROR,
                                   f"client sent GOAWAY with error {frame.error_code}")

    def _receive_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event.stream_id, event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailers(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._request_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.closed = True
                if not stream.response_done:
                    self._guard.count("reset")
                self._lose(stream)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream in list(self._streams.values()):
                self.flush(stream)

    def _request(self, stream_id: int, headers: list[Header], ended: bool) -> None:
        held = self._decoder.held or []
        lengths = [v for n, v in held if n == b"content-length"]
        if self._goaway or len(self._streams) >= MAX_STREAMS:
            self._guard.count("reset")
            self._conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        malformed = connection_specific(held)
        if malformed is not None:
            self._stream_error(stream_id, f"connection-specific field {malformed!r}")
            return
        if self._decoder.no_authority:
            self._stream_error(stream_id, "no :authority and no host")
            return
        if len(lengths) > 1 or (lengths and not (lengths[0].isdigit()
                                                 and int(lengths[0]) <= MAX_CONTENT_LENGTH)):
            self._stream_error(stream_id, f"content-length {shown(b', '.join(lengths))}")
            return
        pseudo = dict(h for h in headers if h[0].startswith(b":"))
        if pseudo.get(b":method") != b"CONNECT" and pseudo.get(b":scheme") not in (b"https",
                                                                                  b"http"):
            self._stream_error(stream_id, f":scheme {shown(pseudo.get(b':scheme'))}")
            return
        content_length = 0 if ended else int(lengths[0]) if lengths else None
        if ended and lengths and int(lengths[0]) != 0:
            self._stream_error(stream_id, "content-length without a body")
            return
        head = request_head(headers, held)
        head.content_length = content_length
        stream = H2Stream(self, stream_id, content_length)
        self._streams[stream_id] = stream
        self._call(stream, "start", head)

    def _data(self, stream_id: int, data: bytes, flow_length: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.request_open or stream.exchange is None:
            # Discarded after an early response (or a reset): still open the connection window.
            self._conn.acknowledge_received_data(flow_length, stream_id)
            return
        stream.received += len(data)
        stream.last_body = self._clock()
        if stream.content_length is not None and stream.received > stream.content_length:
            self._stream_error(stream_id, "body longer than content-length", stream)
            self._conn.acknowledge_received_data(flow_length, stream_id)
            return
        if data:
            self._call(stream, "body_data", data)
        if stream.closed:
            self._conn.acknowledge_received_data(flow_length, stream_id)
        elif stream.paused:
            stream.unacked += flow_length
        else:
            self.acknowledge(stream, flow_length)

    def _trailers(self, stream_id: int) -> None:
        """Trailers are dropped, but a connection-specific field makes them malformed too
        (RFC 9113 §8.2.2): the stream is reset and its exchange told the client is gone."""
        malformed = connection_specific(self._decoder.held)
        stream = self._streams.get(stream_id)
        if malformed is not None and stream is not None:
            self._stream_error(stream_id, f"connection-specific trailer field {malformed!r}",
                               stream)

    def _request_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.request_open:
            return
        stream.request_open = False
        if stream.content_length is not None and stream.received != stream.content_length:
            self._stream_error(stream_id, "body shorter than content-length", stream)
            return
        if stream.exchange is not None:
            self._call(stream, "body_end")
        self._finish_if_done(stream)

    # -- stream bookkeeping (called by H2Stream) ---------------------------------------------

    def send_headers(self, stream: H2Stream, headers: list[Header], end: bool) -> None:
        try:
            self._conn.send_headers(stream.stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError as e:
            self.log.info("HTTP/2 stream {id}: cannot send response head: {e}",
                          id=stream.stream_id, e=clean(str(e)))
            stream.exchange = None
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
        self._write()

    def flush(self, stream: H2Stream) -> None:
        """Send what the flow-control windows allow of *stream*'s buffer (and its END_STREAM
        after the last byte), then pause or resume its producer."""
        if stream.closed:
            return
        try:
            self._send_buffer(stream)
        except h2.exceptions.ProtocolError as e:  # h2 found the stream closed: give up on it
            self.log.info("HTTP/2 stream {id}: cannot send the response: {e}",
                          id=stream.stream_id, e=clean(str(e)))
            stream.exchange = None
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        self.update_producer(stream)
        self._write()

    def _send_buffer(self, stream: H2Stream) -> None:
        while stream.buffer and not self._writing_paused:
            size = min(self._conn.local_flow_control_window(stream.stream_id),
                       self._conn.max_outbound_frame_size, len(stream.buffer))
            if size <= 0:
                return
            chunk = bytes(stream.buffer[:size])
            del stream.buffer[:size]
            stream.last_sent = self._clock()
            end = stream.end_pending and not stream.buffer
            self._conn.send_data(stream.stream_id, chunk, end_stream=end)
            if end:
                self.response_ended(stream)
                return
        if stream.end_pending and not stream.buffer and not stream.response_done:
            self._conn.end_stream(stream.stream_id)
            self.response_ended(stream)

    def response_ended(self, stream: H2Stream) -> None:
        """END_STREAM went out. A request body still arriving is discarded: RST_STREAM(NO_ERROR)
        (RFC 9113 §8.1)."""
        stream.response_done = True
        stream.release_producer()
        if stream.request_open:
            stream.request_open = False
            stream.exchange = None
            self._conn.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
            stream.closed = True
        self._finish_if_done(stream)

    def reset(self, stream: H2Stream, code: ErrorCodes) -> None:
        stream.closed = True
        stream.buffer.clear()
        stream.release_producer()
        self._streams.pop(stream.stream_id, None)
        with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 finds it closed already
            self._conn.reset_stream(stream.stream_id, code)
        self._write()
        self._close_if_done()

    def acknowledge(self, stream: H2Stream, size: int) -> None:
        """Give *size* flow-controlled bytes back to the client's windows (WINDOW_UPDATE when
        h2 finds it worth a frame)."""
        self._conn.acknowledge_received_data(size, stream.stream_id)
        self._write()

    def update_producer(self, stream: H2Stream) -> None:
        producer = stream.producer
        if producer is None:
            return
        size = len(stream.buffer)
        if not stream.producer_paused and (self._writing_paused or size > HIGH_WATER):
            stream.producer_paused = True
            producer.pauseProducing()
        elif stream.producer_paused and not self._writing_paused and size <= LOW_WATER:
            stream.producer_paused = False
            producer.resumeProducing()

    # -- helpers -----------------------------------------------------------------------------

    def _call(self, stream: H2Stream, name: str, *args: Any) -> None:
        """Call the exchange's method *name* (``"start"`` with the head: create the exchange
        first); if that raises, log the traceback and reset the stream with INTERNAL_ERROR."""
        try:
            if name == "start":
                stream.exchange = self._exchange_factory(stream, *args)
                stream.exchange.start()
            elif stream.exchange is not None:
                getattr(stream.exchange, name)(*args)
        except Exception:
            self.log.failure("HTTP/2 stream {id} from {peer}: exchange {name} failed",
                             id=stream.stream_id, peer=self.connection.peer_host, name=name)
            stream.exchange = None
            if not stream.closed:
                self.reset(stream, ErrorCodes.INTERNAL_ERROR)

    def _lose(self, stream: H2Stream) -> None:
        exchange, stream.exchange, stream.closed = stream.exchange, None, True
        if exchange is not None and not stream.response_done:
            try:
                exchange.client_lost()
            except Exception:
                self.log.failure("HTTP/2 stream {id}: exchange client_lost failed",
                                 id=stream.stream_id)

    def _stream_error(self, stream_id: int, reason: str, stream: H2Stream | None = None) -> None:
        """A malformed request (RFC 9113 §8.1.1): RST_STREAM(PROTOCOL_ERROR), one log line.
        Counted as a refused stream is: past the bound the connection ends (FrameError)."""
        self._guard.count("reset")
        self.log.info("HTTP/2 stream {id} from {peer}: {reason}: RST_STREAM(PROTOCOL_ERROR)",
                      id=stream_id, peer=self.connection.peer_host, reason=clean(reason))
        if stream is None:
            self._conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        self._lose(stream)
        self.reset(stream, ErrorCodes.PROTOCOL_ERROR)

    def _finish_if_done(self, stream: H2Stream) -> None:
        if stream.response_done and not stream.request_open:
            stream.closed = True
            self._streams.pop(stream.stream_id, None)
            self._close_if_done()

    def _connection_error(self, code: ErrorCodes, reason: str | None) -> None:
        """GOAWAY(*code*) and close; *reason* (None: a plain idle close) is logged."""
        if self._closed:
            return
        if reason is not None:
            self.log.info("HTTP/2 connection from {peer}: {reason}: GOAWAY({code})",
                          peer=self.connection.peer_host, reason=clean(reason), code=code.name)
        if self._conn.state_machine.state is not ConnectionState.CLOSED:
            self._conn.close_connection(code)  # else h2 has queued its GOAWAY already
        self._write(now=True)
        self._lose_transport()
        self.connection_lost()

    def _close_if_done(self) -> None:
        if self._goaway and not self._streams and not self._closed and not self._receiving:
            self._write(now=True)
            self._lose_transport()
            self.connection_lost()

    def _lose_transport(self) -> None:
        """Close the transport once its buffer is written. The server protocol is registered
        as its producer, and Twisted's TLS transport closes only without one: unregister it."""
        if self._close is not None:
            self._close()
            return
        self._transport.unregisterProducer()
        self._transport.loseConnection()

    def _write(self, now: bool = False) -> None:
        """Hand h2's queued frames to the transport: inside :meth:`data_received` only once,
        at its end (or *now*, before closing)."""
        if now or not self._receiving:
            data = self._conn.data_to_send()
            if data:
                self._transport.write(data)
