"""The gateway's own HTTP engine (``gateway/http/``), end to end against the real process.

Each test is named after one promise of the engine: the upstream pool and its safe retry, the
bounds on an upstream's response head, the upstream idle and read timeouts, request limits the
parser enforces (Content-Length range, header count), SIGTERM with a half-received head, 1xx and
bodiless responses, one upstream request per client request, pipelining, and an early refusal
while the body is still arriving.

Most of them need an upstream that misbehaves on purpose, which the harness ``Upstream`` (an
``http.server``) cannot do: :class:`RawUpstream` is a plain ``socket`` server on loopback that
runs a script per connection and records every request head the moment it arrives (so even a
request whose body never completes shows), with its connection number and its index on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import (
    DEADLINE,
    client_context,
    https_request,
    parse_responses,
    pattern_bytes,
    raw_exchange,
    raw_exchange_closed,
    read_until_closed,
    tls_connect,
    wait_for,
)

READ = 3.0  # seconds to wait for an answer that should come at once
FOLLOW_UP = b"GET /after HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


# -- a raw upstream ------------------------------------------------------------------------------


class _Peer:
    """One accepted upstream-side connection: buffered reads of heads and bodies."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.buffer = b""
        self.eof = False  # the gateway closed (or reset) this connection
        sock.settimeout(3 * DEADLINE)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def read_head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def read_exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                return None
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def wait_for_eof(self) -> bool:
        """Read (and drop) until the gateway closes; False if it never does."""
        while self._fill():
            self.buffer = b""
        return self.eof


def _parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return method, target, headers


Script = Callable[["RawUpstream", _Peer, dict[str, Any]], bool]


class RawUpstream:
    """A loopback TCP server; *script(upstream, peer, record)* answers each request (or not) and
    returns whether to serve the next one on that connection.

    ``requests`` holds one record per request head received, in arrival order: ``conn`` (the
    connection's number), ``n`` (the request's index on it), ``method``, ``path``, ``headers``;
    :meth:`read_body` adds ``body_length`` and ``body_sha256`` once the body is complete.
    ``events`` holds connection events (``eof`` with the time the gateway closed)."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._peers: list[_Peer] = []
        self._accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._accepted += 1
                peer = _Peer(sock, self._accepted)
                self._peers.append(peer)
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: _Peer) -> None:
        n = 0
        try:
            while True:
                head = peer.read_head()
                if head is None:
                    if peer.eof:
                        self.event(kind="eof", conn=peer.number, at=time.monotonic())
                    return
                method, path, headers = _parse_head(head)
                record = {"conn": peer.number, "n": n, "method": method, "path": path,
                          "headers": headers}
                with self._lock:
                    self.requests.append(record)
                n += 1
                if not self._script(self, peer, record):
                    return
        finally:
            peer.sock.close()

    def event(self, **item: Any) -> None:
        with self._lock:
            self.events.append(item)

    def find(self, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if all(r.get(k) == v for k, v in match.items())]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.events.clear()

    @staticmethod
    def read_body(peer: _Peer, record: dict[str, Any]) -> bool:
        """Read the request body *record* announces; record its length and SHA-256."""
        headers = {k.lower(): v for k, v in record["headers"]}
        digest = hashlib.sha256()
        total = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = peer.read_line()
                if line is None:
                    return False
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while peer.read_line() not in (b"", None):
                        pass
                    break
                data = peer.read_exactly(size + 2)
                if data is None:
                    return False
                digest.update(data[:-2])
                total += size
        else:
            remaining = int(headers.get("content-length", "0"))
            while remaining:
                data = peer.read_exactly(min(remaining, 65536))
                if data is None:
                    return False
                digest.update(data)
                total += len(data)
                remaining -= len(data)
        record["body_length"] = total
        record["body_sha256"] = digest.hexdigest()
        return True

    @staticmethod
    def echo(peer: _Peer, record: dict[str, Any]) -> bool:
        """Read the body (unless read already), answer 200 with a JSON description of the
        request, keep alive."""
        if "body_length" not in record and not RawUpstream.read_body(peer, record):
            return False
        body = json.dumps({k: record.get(k) for k in (
            "conn", "n", "method", "path", "body_length", "body_sha256")}).encode()
        sent = peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        record["answered_at"] = time.monotonic()
        return sent

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for peer in self._peers:
                with contextlib.suppress(OSError):
                    peer.sock.shutdown(socket.SHUT_RDWR)


BIG_HEADER = b"X-Big: " + b"b" * (1 << 20) + b"\r\n"
MANY_HEADERS = b"".join(b"X-H-%03d: v\r\n" % i for i in range(101))


def _scripted(upstream: RawUpstream, peer: _Peer, record: dict[str, Any]) -> bool:
    """The engine tests' upstream: a JSON echo, with misbehaving paths."""
    path = record["path"]
    if record["method"] == "HEAD":
        return peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 1234\r\n\r\n")
    if not upstream.read_body(peer, record):
        return False
    if path == "/early-hints":
        return peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    if path == "/not-modified":
        return peer.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n'
                         b"Content-Length: 1234\r\n\r\n")
    if path == "/no-content":
        return peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    if path == "/big-head":
        peer.send(b"HTTP/1.1 200 OK\r\n" + BIG_HEADER + b"Content-Length: 0\r\n\r\n")
        return False
    if path == "/many-headers":
        return peer.send(b"HTTP/1.1 200 OK\r\n" + MANY_HEADERS + b"Content-Length: 0\r\n\r\n")
    if path == "/stall":
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: 1000\r\n\r\n" + b"s" * 10)
        upstream.event(kind="stall-ended", by_peer=peer.wait_for_eof())
        return False
    return upstream.echo(peer, record)


def _close_on_second(upstream: RawUpstream, peer: _Peer, record: dict[str, Any]) -> bool:
    """Answer the first request on each connection and keep it alive; on the next one, read its
    head only and close the socket without a word."""
    if record["n"] == 0:
        return upstream.echo(peer, record)
    record["dropped"] = True
    return False


@pytest.fixture(scope="module")
def scripted() -> Iterator[RawUpstream]:
    server = RawUpstream(_scripted)
    yield server
    server.close()


@pytest.fixture(scope="module")
def engine(start_gateway, scripted):
    return start_gateway({"gateway": {"upstream": scripted.url}})


@pytest.fixture(scope="module")
def alice(pki) -> ssl.SSLContext:
    files = pki.alice()
    return client_context(pki.ca, files.cert, files.key)


@pytest.fixture(scope="module")
def bob(pki) -> ssl.SSLContext:
    files = pki.bob()
    return client_context(pki.ca, files.cert, files.key)


# -- helpers -----------------------------------------------------------------------------------


def _connection_tokens(response) -> set[str]:
    return {t.strip().lower() for v in response.header("Connection") for t in v.split(",")}


def _get(path: str, *headers: bytes, close: bool = True, method: bytes = b"GET") -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
            + b"".join(h + b"\r\n" for h in headers) + extra + b"\r\n")


def _forwarded_before_barrier(gateway, context, upstream: RawUpstream,
                              tag: str) -> list[dict[str, Any]]:
    """Every request head the upstream received since it was cleared, once a valid request sent
    now on a new connection has arrived (the gateway would have forwarded anything of the
    earlier exchange before this one: waiting for it stands in for a fixed sleep)."""
    path = f"/barrier/{tag}"
    raw_exchange(gateway.port, context, _get(path), READ)
    wait_for(lambda: upstream.find(path=path), "the barrier request to reach the upstream",
             timeout=READ)
    return [r for r in upstream.find() if r["path"] != path]


def _access_line(gateway, path: str) -> str:
    """The gateway's access log line for the request to *path* (the last one)."""
    def line() -> str | None:
        lines = [ln for ln in gateway.log().splitlines()
                 if "request peer=" in ln and f'path="{path}"' in ln]
        return lines[-1] if lines else None

    return str(wait_for(line, f"the access log line for {path}"))


def _poll(tls: ssl.SSLSocket, interval: float) -> bytes | None:
    """What the gateway sends within *interval* seconds (``b""``: it closed), or ``None``."""
    tls.settimeout(interval)
    try:
        return tls.recv(65536)
    except TimeoutError:
        return None
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return b""


# -- 1. the pool's safe retry ------------------------------------------------------------------


@pytest.fixture(scope="module")
def closing_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream(_close_on_second)
    yield server
    server.close()


def _closing_gateway(start_gateway, closing_upstream, alice):
    """A gateway in front of :func:`_close_on_second`, with one pooled connection that has
    carried a request (the next one on it will be dropped by the upstream)."""
    gateway = start_gateway({"gateway": {"upstream": closing_upstream.url,
                                         "upstream_idle_timeout": "30"}})
    status, _, body = https_request(gateway.port, alice, path="/warm-up")
    assert status == 200, body
    return gateway


def test_put_on_a_pooled_connection_the_upstream_just_closed_succeeds(start_gateway,
                                                                      closing_upstream, alice):
    gateway = _closing_gateway(start_gateway, closing_upstream, alice)
    closing_upstream.clear()
    body = b"".join(pattern_bytes(3000))
    status, _, response = https_request(gateway.port, alice, method="PUT", path="/put",
                                        body=body)
    assert status == 200, response
    puts = closing_upstream.find(method="PUT", path="/put")
    # Once on the pooled connection (dropped after the head), once on a fresh one (answered).
    assert [(r["n"], r.get("dropped", False)) for r in puts] == [(1, True), (0, False)], puts
    assert puts[0]["conn"] != puts[1]["conn"]
    assert puts[1]["body_length"] == len(body)
    assert puts[1]["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert json.loads(response)["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "upstream_status=200" in _access_line(gateway, "/put")


@pytest.mark.parametrize("body", [b"pay once", b""], ids=["with-body", "no-body"])
def test_post_on_a_closed_pooled_connection_is_never_repeated(start_gateway, closing_upstream,
                                                              alice, body):
    # Without a body too (Content-Length: 0): its head was written, and the upstream may have
    # acted on it (RFC 9110 §9.2.2).
    gateway = _closing_gateway(start_gateway, closing_upstream, alice)
    closing_upstream.clear()
    status, _, response = https_request(gateway.port, alice, method="POST", path="/post",
                                        body=body)
    assert (status, response) == (502, b"502 Bad Gateway: upstream-error\n")
    seen = _forwarded_before_barrier(gateway, alice, closing_upstream, "post")
    posts = [r for r in seen if r["path"] == "/post"]
    assert len(posts) <= 1, posts
    assert "upstream_status=upstream-error" in _access_line(gateway, "/post")


# -- 2. bounded upstream response heads ----------------------------------------------------------


def test_a_1_mib_upstream_response_head_is_a_502(engine, alice):
    status, _, body = https_request(engine.port, alice, path="/big-head")
    assert (status, body) == (502, b"502 Bad Gateway: upstream-head-too-large\n")
    assert "upstream_status=upstream-head-too-large" in _access_line(engine, "/big-head")


def test_an_upstream_response_with_more_than_100_header_lines_is_a_502(engine, alice):
    status, _, body = https_request(engine.port, alice, path="/many-headers")
    assert (status, body) == (502, b"502 Bad Gateway: upstream-head-too-large\n")
    assert "upstream_status=upstream-head-too-large" in _access_line(engine, "/many-headers")


# -- 3. upstream idle timeout ------------------------------------------------------------------


def test_idle_pooled_upstream_connections_are_closed_after_upstream_idle_timeout(
    start_gateway, alice
):
    upstream = RawUpstream(_scripted)
    try:
        gateway = start_gateway({"gateway": {"upstream": upstream.url,
                                             "upstream_idle_timeout": "0.5"}})
        status, _, body = https_request(gateway.port, alice, path="/idle-1")
        assert status == 200, body
        first = upstream.find(path="/idle-1")[0]
        closed = wait_for(lambda: [e for e in upstream.events
                                   if e["kind"] == "eof" and e["conn"] == first["conn"]],
                          "the gateway to close the idle upstream connection", timeout=3.5)
        # Kept alive for the idle timeout first (not closed after one response), then closed
        # well before the 4 s default.
        assert closed[0]["at"] - first["answered_at"] >= 0.4
        status, _, body = https_request(gateway.port, alice, path="/idle-2")
        assert status == 200, body
        second = upstream.find(path="/idle-2")[0]
        assert second["conn"] != first["conn"]
        assert second["n"] == 0
    finally:
        upstream.close()


# -- 4. upstream read timeout ------------------------------------------------------------------


def test_stalled_upstream_body_is_cut_after_upstream_read_timeout(start_gateway, scripted,
                                                                  alice):
    gateway = start_gateway({"gateway": {"upstream": scripted.url,
                                         "upstream_read_timeout": "1"}})
    started = time.monotonic()
    data, closed = raw_exchange_closed(gateway.port, alice, _get("/stall"), 10)
    elapsed = time.monotonic() - started
    assert closed, f"still open after 10 s: {data[:200]!r}"
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    responses, _ = parse_responses(data)
    assert responses == [], "a stalled body was presented as a complete response"
    assert 0.9 <= elapsed < 8, elapsed
    line = _access_line(gateway, "/stall")
    assert "upstream_status=200-aborted" in line, line
    # The gateway also hung up on the stalled upstream.
    ended = wait_for(lambda: [e for e in scripted.events if e["kind"] == "stall-ended"],
                     "the upstream to see the gateway hang up")
    assert ended[-1]["by_peer"] is True


# -- 5. Content-Length range -------------------------------------------------------------------


@pytest.mark.parametrize("length", [b"18446744073709551616", b"9223372036854775808"])
def test_content_length_of_2_64_or_more_is_refused_and_never_forwarded(length, engine,
                                                                        scripted, alice):
    scripted.clear()
    request = (b"POST /huge-length HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + length
               + b"\r\n\r\nhello")
    data, closed = raw_exchange_closed(engine.port, alice, request + FOLLOW_UP, READ)
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [400] and rest == b"", data
    assert "close" in _connection_tokens(responses[0])
    assert closed, "the gateway kept the connection open"
    assert _forwarded_before_barrier(engine, alice, scripted, "huge-length") == []


# -- 6. max_header_count -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ten_header_gateway(start_gateway, scripted):
    return start_gateway({"gateway": {"upstream": scripted.url, "max_header_count": "10"}})


@pytest.mark.parametrize(("count", "status"), [(11, 431), (9, 200)])
def test_more_than_max_header_count_headers_get_431(count, status, ten_header_gateway,
                                                    scripted, alice):
    scripted.clear()
    # Host and, for the 200, Connection: close count as header lines too.
    others = count - 1 if status == 431 else count - 2
    request = (b"GET /header-count HTTP/1.1\r\nHost: localhost\r\n"
               + b"".join(b"X-N-%02d: v\r\n" % i for i in range(others))
               + (b"Connection: close\r\n" if status == 200 else b"") + b"\r\n")
    data, closed = raw_exchange_closed(ten_header_gateway.port, alice, request, READ)
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [status] and rest == b"", data
    seen = _forwarded_before_barrier(ten_header_gateway, alice, scripted, "header-count")
    if status == 431:
        assert "close" in _connection_tokens(responses[0])
        assert closed
        assert seen == []
    else:
        assert [r["path"] for r in seen] == ["/header-count"]


# -- 7. SIGTERM with a half-received head ------------------------------------------------------


def test_sigterm_closes_a_connection_whose_head_is_half_received(start_gateway, scripted,
                                                                  alice):
    gateway = start_gateway({"gateway": {"upstream": scripted.url, "drain_timeout": "30"}})
    with tls_connect(gateway.port, alice) as tls:
        tls.sendall(b"GET /half HTTP/1.1\r\nHost: local")
        assert _poll(tls, 0.2) is None  # the gateway waits for the rest of the head
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        _, closed = read_until_closed(tls, 10)
        elapsed = time.monotonic() - started
    assert closed, "the connection was still open 10 s after SIGTERM"
    assert elapsed < 10, elapsed
    assert gateway.process.wait(DEADLINE) == 0
    assert time.monotonic() - started < 15  # not the 30 s drain_timeout
    assert scripted.find(path="/half") == []


# -- 8. 1xx and bodiless responses ---------------------------------------------------------------


def test_upstream_103_early_hints_reach_an_http11_client(engine, alice):
    data = raw_exchange(engine.port, alice, _get("/early-hints"), READ)
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [103, 200] and rest == b"", data
    assert responses[0].header("Link") == ["</a>; rel=preload"]
    assert responses[1].body == b"ok"


def test_304_keeps_the_upstreams_content_length(engine, alice):
    with tls_connect(engine.port, alice) as tls:
        tls.sendall(_get("/not-modified", close=False))
        data, _ = read_until_closed(tls, READ, until=lambda d: bool(parse_responses(d)[0]))
        # Then a second request on the same connection: nothing may stand between the two.
        tls.sendall(_get("/after-304"))
        more, _ = read_until_closed(tls, READ)
    head, _, extra = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 304 "), data
    responses, _ = parse_responses(data)
    assert responses[0].header("Content-Length") == ["1234"], data
    assert responses[0].header("Transfer-Encoding") == []
    assert extra == b""
    assert more.startswith(b"HTTP/1.1 200 "), more
    after, rest = parse_responses(more)
    assert rest == b"" and json.loads(after[0].body)["path"] == "/after-304"


@pytest.mark.parametrize(("method", "path", "code"), [
    pytest.param(b"HEAD", "/bodiless-head", 200, id="HEAD"),
    pytest.param(b"GET", "/no-content", 204, id="204"),
])
def test_bodiless_response_is_logged_with_its_status(method, path, code, engine, alice):
    data = raw_exchange(engine.port, alice, _get(path, method=method), READ)
    responses, _ = parse_responses(data, (method == b"HEAD",))
    assert [r.status for r in responses] == [code], data
    line = _access_line(engine, path)
    assert f" status={code} " in line, line
    assert f" upstream_status={code} " in line, line


# -- 9. one upstream request per client request -------------------------------------------------


def test_one_upstream_request_per_client_request_whatever_the_headers(engine, scripted, alice):
    scripted.clear()
    request = (b"POST /odd-headers HTTP/1.1\r\nHost: localhost\r\nX-A: one\r\nX-A: two\r\n"
               b"Content-Length: 005\r\nConnection: close\r\n\r\nhello")
    data = raw_exchange(engine.port, alice, request, READ)
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [200] and rest == b"", data
    seen = _forwarded_before_barrier(engine, alice, scripted, "odd-headers")
    assert [r["path"] for r in seen] == ["/odd-headers"], seen
    assert [v for k, v in seen[0]["headers"] if k.lower() == "x-a"] == ["one", "two"]
    assert seen[0]["body_length"] == 5
    assert seen[0]["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


# -- 10. pipelining with bodies ------------------------------------------------------------------


def test_pipelined_requests_with_bodies_are_answered_in_order(engine, scripted, alice):
    scripted.clear()
    bodies = [b"first", b"".join(pattern_bytes(3000)), b"third" * 4000]
    data = b""
    for index, body in enumerate(bodies, 1):
        close = b"Connection: close\r\n" if index == len(bodies) else b""
        data += (b"POST /pipelined-%d HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%s"
                 b"\r\n%s" % (index, len(body), close, body))
    response, closed = raw_exchange_closed(engine.port, alice, data, READ)
    responses, rest = parse_responses(response)
    assert [r.status for r in responses] == [200, 200, 200] and rest == b"", response
    echoed = [json.loads(r.body) for r in responses]
    assert [e["path"] for e in echoed] == ["/pipelined-1", "/pipelined-2", "/pipelined-3"]
    expected = [hashlib.sha256(b).hexdigest() for b in bodies]
    assert [e["body_sha256"] for e in echoed] == expected
    seen = [r for r in scripted.find() if r["path"].startswith("/pipelined-")]
    assert [(r["path"], r["body_length"], r["body_sha256"]) for r in seen] == [
        (f"/pipelined-{i}", len(b), hashlib.sha256(b).hexdigest())
        for i, b in enumerate(bodies, 1)]
    assert closed


# -- 11. an early refusal while the body is arriving --------------------------------------------


def test_early_403_with_a_body_still_arriving_closes_after_the_response(engine, scripted, bob,
                                                                        alice):
    scripted.clear()
    total = 1_000_000
    piece = b"x" * 8192
    started = time.monotonic()
    with tls_connect(engine.port, bob) as tls:
        tls.sendall(b"POST /denied-stream HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Length: %d\r\n\r\n" % total)
        received, closed, sent = b"", False, 0
        while sent < total:
            answer = _poll(tls, 0.02)  # the streaming pace, and a look for an early answer
            if answer is not None:
                received, closed = answer, answer == b""
                break
            try:
                tls.settimeout(READ)
                tls.sendall(piece[: total - sent])
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, TimeoutError):
                break  # refused and closed (or no longer read) while we were still sending
            sent += len(piece[: total - sent])
        if not closed:
            more, closed = read_until_closed(tls, READ)
            received += more
    elapsed = time.monotonic() - started
    responses, rest = parse_responses(received)
    assert [r.status for r in responses] == [403] and rest == b"", received
    assert responses[0].body == b"403 Forbidden: cn-not-allowed\n"
    assert "close" in _connection_tokens(responses[0]), responses[0]
    assert closed, "the gateway kept the connection open after the 403"
    assert sent < total, "the whole body was read before the 403"
    assert elapsed < 10, elapsed
    assert _forwarded_before_barrier(engine, alice, scripted, "denied-stream") == []


# -- 12. hostile upstream responses ----------------------------------------------------------


EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"
HOSTILE: dict[str, bytes] = {
    # status codes outside 100-599 (RFC 9110 §15); llhttp takes 0xx as a final response
    "/status-099": b"HTTP/1.1 099 X\r\nContent-Length: %d\r\n\r\n%s" % (len(EVIL), EVIL),
    "/status-000": b"HTTP/1.1 000 X\r\nContent-Length: %d\r\n\r\n%s" % (len(EVIL), EVIL),
    "/status-600": b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok",
    "/status-999": b"HTTP/1.1 999 X\r\nContent-Length: 2\r\n\r\nok",
    # transfer codings other than chunked alone (nginx: "upstream sent unknown Transfer-Encoding")
    "/te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n",
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
                b"hello",
}
# A complete response and, in the same write, more: the connection is out of step.
AFTER_THE_END: dict[str, tuple[bytes, int, bytes]] = {
    "/extra-response": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + EVIL, 200, b"hi"),
    "/extra-head": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                    b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n", 200, b"hi"),
    "/extra-junk": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\x00junk", 200, b"hi"),
    "/extra-after-204": (b"HTTP/1.1 204 No Content\r\n\r\n" + EVIL, 204, b""),
    "/extra-interim": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                       b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n", 200, b"hi"),
}


def _hostile(upstream: RawUpstream, peer: _Peer, record: dict[str, Any]) -> bool:
    path = record["path"]
    if record["method"] == "HEAD":  # a HEAD response with a body after its head
        return peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody" + EVIL)
    if not upstream.read_body(peer, record):
        return False
    if path in HOSTILE:
        peer.send(HOSTILE[path])
        return not path.startswith("/te-gzip")  # close-delimited: ends with the connection
    if path in AFTER_THE_END:
        return peer.send(AFTER_THE_END[path][0])
    return upstream.echo(peer, record)


@pytest.fixture(scope="module")
def hostile() -> Iterator[RawUpstream]:
    server = RawUpstream(_hostile)
    yield server
    server.close()


@pytest.fixture(scope="module")
def hostile_gateway(start_gateway, hostile):
    return start_gateway({"gateway": {"upstream": hostile.url, "upstream_idle_timeout": "30"}})


def _two_requests(gateway, context, first: bytes, head_only: bool = False
                  ) -> tuple[list[Any], bytes]:
    """*first* and then ``GET /after`` on one client connection: the responses and the rest."""
    with tls_connect(gateway.port, context) as tls:
        tls.sendall(first)
        data, _ = read_until_closed(tls, READ, until=lambda d: bool(
            [r for r in parse_responses(d, (head_only,))[0] if r.status >= 200]))
        tls.sendall(FOLLOW_UP)
        more, _ = read_until_closed(tls, READ)
    responses, rest = parse_responses(data + more, (head_only, False))
    return responses, rest


def _closed_after(hostile: RawUpstream, path: str) -> int:
    """The upstream connection that carried *path*, once the gateway has closed it."""
    used = hostile.find(path=path)[0]["conn"]
    wait_for(lambda: [e for e in hostile.events if e["kind"] == "eof" and e["conn"] == used],
             "the gateway to close the out-of-step upstream connection")
    return int(used)


def _no_traceback(gateway) -> None:
    log = gateway.log()
    assert "Unhandled" not in log and "Traceback" not in log, log


@pytest.mark.parametrize("path", sorted(HOSTILE))
def test_an_invalid_status_code_or_transfer_coding_is_a_502_and_nothing_of_it_reaches_the_client(
        path, hostile_gateway, hostile, alice):
    responses, rest = _two_requests(hostile_gateway, alice, _get(path, close=False))
    assert [r.status for r in responses] == [502, 200] and rest == b"", (responses, rest)
    assert responses[0].body == b"502 Bad Gateway: upstream-error\n"
    assert json.loads(responses[1].body)["path"] == "/after"
    assert "upstream_status=upstream-error" in _access_line(hostile_gateway, path)
    _no_traceback(hostile_gateway)


@pytest.mark.parametrize("path", sorted(AFTER_THE_END))
def test_bytes_after_a_complete_upstream_response_close_that_connection(
        path, hostile_gateway, hostile, alice):
    _, code, body = AFTER_THE_END[path]
    hostile.clear()
    responses, rest = _two_requests(hostile_gateway, alice, _get(path, close=False))
    assert [r.status for r in responses] == [code, 200] and rest == b"", (responses, rest)
    assert responses[0].body == body
    after = json.loads(responses[1].body)
    assert after["path"] == "/after"
    # The connection that carried the response was closed, not reused for /after.
    assert after["conn"] != _closed_after(hostile, path)
    _no_traceback(hostile_gateway)


def test_a_head_response_with_bytes_after_it_closes_that_connection(hostile_gateway, hostile,
                                                                    alice):
    hostile.clear()
    responses, rest = _two_requests(hostile_gateway, alice,
                                    _get("/head-body", close=False, method=b"HEAD"),
                                    head_only=True)
    assert [r.status for r in responses] == [200, 200] and rest == b"", (responses, rest)
    assert responses[0].header("Content-Length") == ["4"] and responses[0].body == b""
    assert json.loads(responses[1].body)["conn"] != _closed_after(hostile, "/head-body")
    _no_traceback(hostile_gateway)
