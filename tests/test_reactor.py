"""``twistd --reactor=mtlsgw`` (gateway/reactor.py): the internals it relies on, and the gateway
running on it with real clients."""

from __future__ import annotations

import configparser
import hashlib
import inspect
import json
from pathlib import Path

import pytest
from conftest import base_sections
from harness import (
    Gateway,
    client_context,
    https_request,
    parse_responses,
    pattern_bytes,
    pattern_sha256,
    raw_exchange,
    read_until_closed,
    tls_connect,
)
from twisted.internet.epollreactor import EPollReactor

import twisted

ROOT = Path(__file__).resolve().parent.parent


def _pinned_twisted() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    for line in parser["options"]["install_requires"].splitlines():
        if line.strip().startswith("twisted"):
            return line.split("==", 1)[1].split("#", 1)[0].strip()
    raise AssertionError("Twisted is not pinned in setup.cfg")


def test_twisted_is_the_pinned_version_whose_internals_the_reactor_uses():
    # A new Twisted may move these: then read gateway/reactor.py again before raising the pin.
    assert twisted.__version__ == _pinned_twisted()
    for name in ("_poller", "_selectables", "_reads", "_writes"):
        assert name in inspect.getsource(EPollReactor.__init__), name
    assert list(inspect.signature(EPollReactor._doReadOrWrite).parameters) == [
        "self", "selectable", "fd", "event"]
    assert EPollReactor.doIteration is EPollReactor.doPoll
    for name in ("addWriter", "removeWriter", "getWriters", "removeAll", "_POLL_OUT"):
        assert hasattr(EPollReactor, name), name


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pki, upstream):
    running = Gateway(tmp_path_factory.mktemp("gw-reactor"), base_sections(pki, upstream.url),
                      reactor="mtlsgw")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def alice(pki):
    files = pki.alice()
    return client_context(pki.ca, files.cert, files.key)


def test_the_gateway_runs_on_the_mtlsgw_reactor(gateway, alice, upstream):
    assert "reactor class: gateway.reactor.GatewayReactor" in gateway.log()
    status, _, body = https_request(gateway.port, alice, path="/on-reactor")
    assert status == 200
    assert json.loads(body)["path"] == "/on-reactor"


def test_large_bodies_stream_both_ways_when_sockets_fill(gateway, alice, upstream):
    # Bodies far beyond socket buffers: writes that cannot go out at once wait for epoll.
    size = 24 * 1024 * 1024 + 7
    status, _, body = https_request(gateway.port, alice, path=f"/download/{size}")
    assert status == 200 and len(body) == size
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)
    upload = 16 * 1024 * 1024 + 3
    status, _, body = https_request(gateway.port, alice, method="PUT", path="/upload",
                                    body=pattern_bytes(upload))
    assert status == 200
    seen = json.loads(body)
    assert (seen["body_length"], seen["body_sha256"]) == (upload, pattern_sha256(upload))


def test_keep_alive_and_pipelined_requests_are_answered_in_order(gateway, alice):
    with tls_connect(gateway.port, alice) as tls:
        for index in range(50):
            tls.sendall(b"GET /ka/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % index)
            data, _ = read_until_closed(tls, 5, until=lambda d: bool(parse_responses(d)[0]))
            [response], _ = parse_responses(data)
            assert json.loads(response.body)["path"] == f"/ka/{index}"
    data = raw_exchange(gateway.port, alice,
                        b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                        b"GET /p2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 5)
    responses, _ = parse_responses(data)
    assert [json.loads(r.body)["path"] for r in responses] == ["/p1", "/p2"]
