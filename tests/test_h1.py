"""The HTTP/1.1 request parser (gateway/http/h1.py) on its own: no reactor, no sockets."""

from __future__ import annotations

import pytest

from gateway.http.h1 import RequestError, RequestParser


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def request_head(self, head) -> None:  # type: ignore[no-untyped-def]
        self.events.append((head.method, head.target, head.content_length, head.upgrade))

    def request_body(self, data: bytes) -> None:
        self.events.append(data)

    def request_end(self) -> None:
        self.events.append("end")


def parse(*pieces: bytes) -> tuple[list[object], list[bytes | None]]:
    recorder = Recorder()
    parser = RequestParser(recorder, 16384, 100)
    return recorder.events, [parser.feed(piece) for piece in pieces]


def test_an_upgrade_that_is_not_a_websocket_handshake_keeps_its_body_and_the_next_request():
    events, rests = parse(
        b"POST /u HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events == [(b"POST", b"/u", 3, False), b"abc", "end", (b"GET", b"/next", 0, False),
                      "end"]
    assert rests == [None]


def test_a_chunked_body_after_a_refused_upgrade_is_read_by_its_framing():
    events, _ = parse(
        b"POST /u HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events == [(b"POST", b"/u", None, False), b"abc", "end",
                      (b"GET", b"/next", 0, False), "end"]


def test_a_websocket_handshake_stops_the_parser_and_hands_over_what_follows():
    events, rests = parse(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x02hi")
    assert events[0] == (b"GET", b"/ws", 0, True)
    assert rests == [b"\x81\x02hi"]


@pytest.mark.parametrize("second", [
    pytest.param(b"GET  /p2 HTTP/1.1\r\nHost: a\r\n\r\n", id="two spaces"),
    pytest.param(b"GET /p2  HTTP/1.1\r\nHost: a\r\n\r\n", id="two spaces before the version"),
])
def test_a_bad_request_line_is_refused_in_a_pipelined_request_too(second):
    recorder = Recorder()
    parser = RequestParser(recorder, 16384, 100)
    with pytest.raises(RequestError) as refused:
        parser.feed(b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\n" + second)
    assert refused.value.status == 400
    assert recorder.events == [(b"GET", b"/p1", 0, False), "end"]


def test_a_request_line_split_over_reads_is_still_checked():
    events, _ = parse(b"GET /split", b"-line HTTP/1.1\r\nHo", b"st: a\r\n\r\n")
    assert events == [(b"GET", b"/split-line", 0, False), "end"]
    with pytest.raises(RequestError):
        parse(b"GET  /split", b"-line HTTP/1.1\r\nHost: a\r\n\r\n")


def test_whitespace_around_a_field_value_is_not_part_of_it():
    # RFC 9112 §5: a Host with a space after it is the same host, and an id the same id
    heads = []
    recorder = Recorder()
    recorder.request_head = heads.append  # type: ignore[method-assign]
    RequestParser(recorder, 16384, 100).feed(
        b"GET / HTTP/1.1\r\nHost:  localhost \t\r\nX-Request-Id: abc  \r\nX-Empty: \r\n"
        b"X-Inner: a  b\r\n\r\n")
    assert heads[0].headers == [(b"Host", b"localhost"), (b"X-Request-Id", b"abc"),
                                (b"X-Empty", b""), (b"X-Inner", b"a  b")]
