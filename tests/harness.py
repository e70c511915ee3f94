"""End-to-end test harness: the real ``twistd mtlsgw`` process, a real upstream, real clients.

* :class:`Upstream` — a threaded HTTP/1.1 server on a free loopback port that records every
  request it receives (headers in arrival order, body length and SHA-256) and has a few special
  paths: ``/download/N`` streams N bytes, ``/die/N`` sends half of a promised 2N-byte body then
  drops the connection, ``/hold`` keeps the request open until the gateway hangs up.
* :class:`Gateway` — writes an INI file, runs ``twistd --nodaemon mtlsgw --config``,
  polls until the port accepts connections (or the process exits), and stops it at the end.
* :func:`https_request` (Python ``ssl`` + ``http.client``) and :func:`curl` as clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEADLINE = 20.0  # seconds to wait for anything that should happen "now"
PATTERN = hashlib.sha256(b"mtlsgw").digest() * 2048  # 64 KiB of deterministic bytes


def _assignable_ports() -> range:
    """Loopback ports the kernel never picks by itself, so that no server bound to port 0 and no
    outgoing connection can take a port between :func:`free_port` and the gateway binding it:
    the 20,000 below ``ip_local_port_range`` (or above it, when it starts low)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - 20000 >= 1024:
        return range(low - 20000, low)
    return range(high + 1, 65536)


_PORTS = _assignable_ports()
_next_port = iter(range(os.getpid() % len(_PORTS), os.getpid() % len(_PORTS) + len(_PORTS)))


def free_port() -> int:
    """A loopback TCP port that nothing listens on and that no other call in this test run has
    returned: two listeners of one test never collide, nor a gateway with a server of a test."""
    for index in _next_port:
        port = _PORTS[index % len(_PORTS)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # a service of the machine, or a socket of an earlier test
            return port
    raise AssertionError("no free loopback port left")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll *condition* until it returns something truthy; fail the test after *timeout*."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # polling interval, not a wait for an outcome
        delay = min(delay * 2, 0.2)


def pattern_bytes(n: int) -> Iterator[bytes]:
    """*n* bytes of the deterministic pattern, in 64 KiB pieces."""
    while n > 0:
        piece = PATTERN[: min(n, len(PATTERN))]
        n -= len(piece)
        yield piece


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_bytes(n):
        digest.update(piece)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 1 << 16))
                    digest.update(data)
                    remaining -= len(data)
                    total += len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 16))
                if not data:
                    break
                digest.update(data)
                remaining -= len(data)
                total += len(data)
        return total, digest.hexdigest()

    def _handle(self) -> None:
        length, sha = self._read_body()
        peer = getattr(self.connection, "getpeercert", lambda: None)()
        record = {
            "client_certificate_subject": peer and dict(x[0] for x in peer["subject"]),
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.raw_items()],
            "body_length": length,
            "body_sha256": sha,
        }
        self.server.record(record)
        if self.path.startswith("/download/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            for piece in pattern_bytes(size):
                self.wfile.write(piece)
            return
        if self.path.startswith("/die/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(2 * size))
            self.end_headers()
            for piece in pattern_bytes(size):
                self.wfile.write(piece)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path.startswith("/slow/"):
            # Answer after the given number of seconds (or when the peer goes away).
            self.connection.settimeout(float(self.path.rsplit("/", 1)[1]))
            with contextlib.suppress(OSError):
                self.connection.recv(1)
            self.close_connection = True
            return
        if self.path.startswith("/nolength/"):
            # An HTTP/1.0-style response: no Content-Length, ended by closing the connection.
            size = int(self.path.rsplit("/", 1)[1])
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Connection: close\r\n\r\n")
            for piece in pattern_bytes(size):
                self.wfile.write(piece)
            self.close_connection = True
            return
        if self.path == "/hold":
            # Hold the request until the gateway closes its side (the client went away).
            self.connection.settimeout(DEADLINE)
            try:
                gone = self.connection.recv(1) == b""
            except ConnectionResetError:
                gone = True
            except OSError:
                gone = False
            self.server.record({"hold_ended_by_peer": gone})
            self.close_connection = True
            return
        body = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "one")
        self.send_header("X-Upstream", "two")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: 100 concurrent HTTP/2 streams, 100 connections

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._tls = tls

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self._tls is not None:  # handshake in the handler thread, on first read
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def record(self, item: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(item)


class Upstream:
    """A real HTTP/1.1 server on loopback that records what it received."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = _Server(tls)
        self.port = int(self._server.server_address[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    def clear(self) -> None:
        self._server.requests.clear()

    def last(self) -> dict[str, Any]:
        return wait_for(lambda: self._server.requests and self._server.requests[-1],
                        "the upstream to receive a request")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def headers_of(record: dict[str, Any], name: str) -> list[str]:
    """All values of header *name* (case-insensitive) the upstream received, in order."""
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def render_ini(sections: dict[str, dict[str, str]]) -> str:
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{key} = {value}" for key, value in values.items())
        out.append("")
    return "\n".join(out)


class Gateway:
    """A running ``twistd mtlsgw`` process."""

    def __init__(self, directory: Path, sections: dict[str, dict[str, str]],
                 env: dict[str, str] | None = None, reactor: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        sections = {k: dict(v) for k, v in sections.items()}
        listen = sections.setdefault("gateway", {}).setdefault(
            "listen", f"tcp:{self.port}:interface=127.0.0.1")
        if listen.startswith(("tcp:", "haproxy:tcp:")):
            self.port = int(listen.removeprefix("haproxy:").split(":")[1])
        self.config = directory / "gw.ini"
        self.config.write_text(render_ini(sections))
        self.log_path = directory / "gw.log"
        self.process = run_twistd(self.config, self.log_path, env, reactor)
        self.url = f"https://localhost:{self.port}"
        try:
            wait_for(self._ready, "the gateway to listen")
        except BaseException:
            self.stop()  # never leave a half-started gateway behind
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            out, err = self.process.communicate()
            raise AssertionError(f"gateway exited with {self.process.returncode}: {err}{out}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str) -> str:
        """Wait until the log contains *text*; return the log."""
        return str(wait_for(lambda: text in self.log() and self.log(), f"log line {text!r}"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.communicate()


def twistd_command(config: Path, log_path: Path | None = None,
                   reactor: str | None = None) -> list[str]:
    logfile = [f"--logfile={log_path}"] if log_path else []
    reactor = reactor or os.environ.get("MTLSGW_TEST_REACTOR")  # e.g. the whole suite on mtlsgw
    chosen = [f"--reactor={reactor}"] if reactor else []
    twistd = Path(sys.executable).parent / "twistd"  # the script pip installed with Twisted
    return [str(twistd), "--nodaemon", "--pidfile=", *logfile, *chosen, "mtlsgw", "--config",
            str(config)]


def run_twistd(config: Path, log_path: Path | None, env: dict[str, str] | None = None,
               reactor: str | None = None) -> subprocess.Popen[str]:
    # Run from the config's folder, never from the source tree: the installed package is tested.
    return subprocess.Popen(
        twistd_command(config, log_path, reactor), cwd=config.parent, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )


def refused_start(config: Path) -> str:
    """Start ``twistd mtlsgw`` with *config*, which it must refuse: exit status 1, one line on
    stderr and no traceback; ``mtlsgw check-config`` must print the same line (exit status 1).
    Returns that line."""
    process = run_twistd(config, None)
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    check = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(config)],
                           capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert check.returncode == 1
    assert check.stderr.strip() == lines[0]
    return lines[0]


class Refused(Exception):
    """The TLS handshake (or the connection right after it) was refused by the gateway."""


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None,
                   chain_extra: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def https_request(
    port: int, context: ssl.SSLContext, method: str = "GET", path: str = "/",
    headers: list[tuple[str, str]] | None = None, body: bytes | Iterator[bytes] | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with Python's ``http.client``; raises :class:`Refused` on a TLS refusal."""
    connection = http.client.HTTPSConnection("localhost", port, context=context,
                                             timeout=DEADLINE)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        chunked = body is not None and not isinstance(body, bytes)
        for name, value in headers or []:
            connection.putheader(name, value)
        if isinstance(body, bytes):
            connection.putheader("Content-Length", str(len(body)))
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        if isinstance(body, bytes):
            connection.send(body)
        elif body is not None:
            for piece in body:
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError,
            http.client.RemoteDisconnected) as exc:
        raise Refused(repr(exc)) from exc
    finally:
        connection.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl with *args* (``-sS`` added); returns the completed process."""
    return subprocess.run(["curl", "-sS", "--max-time", str(DEADLINE), *args],
                          capture_output=True, text=True, timeout=DEADLINE + 5, check=False)


# -- raw HTTP/1.1 over TLS: for framing tests that must send exactly the bytes they mean ----------


def tls_connect(port: int, context: ssl.SSLContext, server_hostname: str | None = "localhost",
                timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection to the gateway on loopback, handshake done; the caller closes it."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def read_until_closed(tls: ssl.SSLSocket, read_timeout: float,
                      until: Callable[[bytes], bool] | None = None) -> tuple[bytes, bool]:
    """Read from *tls* until the peer closes it, *until(received)* is true, or *read_timeout*
    seconds pass. Returns ``(received, closed)``; a reset or an unclean TLS EOF counts as closed."""
    deadline = time.monotonic() + read_timeout
    received = b""
    while True:
        if until is not None and until(received):
            return received, False
        left = deadline - time.monotonic()
        if left <= 0:
            return received, False
        tls.settimeout(min(left, 0.5))
        try:
            data = tls.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return received, True
        except ssl.SSLError:
            return received, True
        if not data:
            return received, True
        received += data


def raw_exchange_closed(port: int, context: ssl.SSLContext, data: bytes, read_timeout: float,
                        server_hostname: str | None = "localhost") -> tuple[bytes, bool]:
    """Like :func:`raw_exchange`, and also whether the gateway closed the connection."""
    with tls_connect(port, context, server_hostname) as tls:
        try:
            tls.sendall(data)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            # The gateway answered and closed before reading everything: what it sent is still
            # worth reading, but it will not be long in coming.
            read_timeout = min(read_timeout, 2.0)
        return read_until_closed(tls, read_timeout)


def raw_exchange(port: int, context: ssl.SSLContext, data: bytes, read_timeout: float) -> bytes:
    """Send *data* as is over a new TLS connection (SNI ``localhost``) and return every byte the
    gateway sends back until it closes the connection or *read_timeout* seconds pass."""
    return raw_exchange_closed(port, context, data, read_timeout)[0]


class RawResponse:
    """One HTTP/1.x response parsed from raw bytes: status, headers in order, body, framing."""

    def __init__(self, status_line: bytes, headers: list[tuple[str, str]], body: bytes,
                 framing: str, raw_head: bytes) -> None:
        self.status_line = status_line
        self.status = int(status_line.split(b" ", 2)[1])
        self.headers = headers
        self.body = body
        self.framing = framing  # "content-length" | "chunked" | "none" | "close"
        self.raw_head = raw_head

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"<RawResponse {self.status_line!r} {self.headers!r} body={self.body[:80]!r}>"


def parse_responses(data: bytes, head_only: tuple[bool, ...] = (),
                    ) -> tuple[list[RawResponse], bytes]:
    """Split *data* into complete responses (1xx interim responses included, as their own items).

    ``head_only[i]`` says the i-th final response answers a HEAD request (no body whatever its
    headers say). Returns the responses and the unparsed rest (an incomplete response or junk).
    """
    responses: list[RawResponse] = []
    finals = 0
    rest = data
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            break
        raw_head = rest[: end + 4]
        lines = rest[:end].split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1."):
            break
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        after = rest[end + 4:]
        status = int(lines[0].split(b" ", 2)[1])
        lower = {k.lower(): v for k, v in headers}
        if 100 <= status < 200:
            responses.append(RawResponse(lines[0], headers, b"", "none", raw_head))
            rest = after
            continue
        is_head = finals < len(head_only) and head_only[finals]
        finals += 1
        if is_head or status in (204, 304):
            responses.append(RawResponse(lines[0], headers, b"", "none", raw_head))
            rest = after
        elif lower.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            pos = 0
            complete = False
            while True:
                line_end = after.find(b"\r\n", pos)
                if line_end < 0:
                    break
                size = int(after[pos:line_end].split(b";")[0], 16)
                if size == 0:
                    trailer_end = after.find(b"\r\n\r\n", line_end)  # after any trailers
                    if trailer_end < 0:
                        break
                    pos = trailer_end + 4
                    complete = True
                    break
                start = line_end + 2
                if len(after) < start + size + 2:
                    break
                body += after[start:start + size]
                pos = start + size + 2
            if not complete:
                break
            responses.append(RawResponse(lines[0], headers, body, "chunked", raw_head))
            rest = after[pos:]
        elif "content-length" in lower:
            length = int(lower["content-length"])
            if len(after) < length:
                break
            responses.append(RawResponse(lines[0], headers, after[:length], "content-length",
                                         raw_head))
            rest = after[length:]
        else:
            responses.append(RawResponse(lines[0], headers, after, "close", raw_head))
            rest = b""
    return responses, rest
