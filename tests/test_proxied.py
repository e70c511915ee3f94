"""``listen = haproxy:...`` and ``trusted_proxies`` in the configuration, the peer check, and
the checked PROXY protocol header (:mod:`gateway.proxied`, on Twisted's parsers, driven here
through a ``StringTransport``); tests/test_e2e_haproxy.py runs it behind a real HAProxy."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from test_config import changed, config_error, write_config
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from gateway.config import load
from gateway.proxied import trusted


def listener(tmp_path: Path, **gateway: str):  # type: ignore[no-untyped-def]
    sections = changed({("gateway", key): value for key, value in gateway.items()})
    return load(write_config(tmp_path, sections)).listeners[0]


def error(tmp_path: Path, **gateway: str) -> str:
    sections = changed({("gateway", key): value for key, value in gateway.items()})
    path = write_config(tmp_path, sections)
    return config_error(load, path).split(": ", 1)[1]


def test_haproxy_listener_with_trusted_proxies(tmp_path: Path) -> None:
    found = listener(tmp_path, listen="haproxy:tcp:8443:interface=10.0.0.11",
                     trusted_proxies="10.0.0.5, 10.1.0.0/16,\n fd00::/8")
    assert found.proxy_protocol and found.inner == "tcp:8443:interface=10.0.0.11"
    assert found.socket_listen == "tcp:8443:interface=10.0.0.11"
    assert found.listen == "haproxy:tcp:8443:interface=10.0.0.11"
    assert found.trusted_proxies == (ipaddress.ip_network("10.0.0.5/32"),
                                     ipaddress.ip_network("10.1.0.0/16"),
                                     ipaddress.ip_network("fd00::/8"))


def test_plain_listener_is_not_proxied(tmp_path: Path) -> None:
    found = listener(tmp_path)
    assert not found.proxy_protocol and found.socket_listen == "tcp:8443"
    assert found.trusted_proxies == ()


def test_reuse_port_reads_the_inner_endpoint(tmp_path: Path) -> None:
    found = listener(tmp_path, listen="haproxy:tcp:8443:interface=10.0.0.11:backlog=128",
                     reuse_port="yes")
    assert found.reuse_port == (8443, "10.0.0.11", 128)


@pytest.mark.parametrize(("gateway", "problem"), [
    ({"trusted_proxies": "10.0.0.5"},
     "[gateway] trusted_proxies = '10.0.0.5': only meaningful with a PROXY protocol listener "
     "(listen = haproxy:...)"),
    ({"listen": "haproxy:tcp:8443", "trusted_proxies": "10.0.0.5/8"},
     "[gateway] trusted_proxies = '10.0.0.5/8': '10.0.0.5/8' is not an address or CIDR network "
     "(10.0.0.5/8 has host bits set)"),
    ({"listen": "haproxy:tcp:8443", "trusted_proxies": "balancer.internal"},
     "[gateway] trusted_proxies = 'balancer.internal': 'balancer.internal' is not an address or "
     "CIDR network ('balancer.internal' does not appear to be an IPv4 or IPv6 network)"),
    ({"listen": "haproxy:unix:/run/gw.sock", "trusted_proxies": "10.0.0.5"},
     "[gateway] trusted_proxies = '10.0.0.5': a unix socket's peers have no address: restrict "
     "who may connect with the socket's mode and directory"),
    ({"listen": "haproxy:ssl:8443"},
     "[gateway] listen = 'haproxy:ssl:8443': haproxy: wraps a tcp:, tcp6:, unix: or systemd: "
     "endpoint, e.g. haproxy:tcp:8443:interface=10.0.0.5"),
    ({"listen": "haproxy:haproxy:tcp:8443"},
     "[gateway] listen = 'haproxy:haproxy:tcp:8443': haproxy: wraps a tcp:, tcp6:, unix: or "
     "systemd: endpoint, e.g. haproxy:tcp:8443:interface=10.0.0.5"),
    ({"listen": "haproxy:tcp:99999"},
     "[gateway] listen = 'haproxy:tcp:99999': the port must be between 0 and 65535"),
    ({"listen": "haproxy:unix:/run/gw.sock", "reuse_port": "yes"},
     "[gateway] reuse_port = 'yes': needs a tcp:, tcp6:, haproxy:tcp: or haproxy:tcp6: listen "
     "description"),
])
def test_mistakes_are_one_line_errors(tmp_path: Path, gateway: dict[str, str],
                                      problem: str) -> None:
    assert error(tmp_path, **gateway) == problem


def test_the_loopback_rule_looks_at_the_inner_endpoint(tmp_path: Path) -> None:
    plain = {"tls": "off"}
    assert "must listen on loopback" in error(tmp_path, listen="haproxy:tcp:9080", **plain)
    assert not listener(tmp_path, listen="haproxy:tcp:9080:interface=127.0.0.1", **plain).tls
    assert listener(tmp_path, listen="haproxy:unix:/run/gw.sock", **plain).proxy_protocol


def test_trusted_matches_addresses_in_the_networks() -> None:
    networks = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/8"))
    assert trusted("10.0.0.7", networks)
    assert trusted("::ffff:10.0.0.7", networks)  # IPv4-mapped, on a tcp6: socket
    assert trusted("fd00::1", networks)
    assert not trusted("10.0.1.7", networks)
    assert not trusted("fe80::1", networks)
    assert not trusted(None, networks)  # not an IP peer (unix, …): never trusted
    assert not trusted("unix", networks)


# -- the PROXY protocol header, checked (gateway.proxied.CheckedProxyWrapper) --------------------

class _App(Protocol):
    """The protocol behind the wrapper: what it received, and the peer it saw then."""

    def __init__(self) -> None:
        self.received = b""
        self.peers: list[object] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.peers.append(self.transport.getPeer())


def _connect() -> tuple[_App, StringTransport, list[dict]]:
    from twisted.internet.protocol import Factory

    from gateway.proxied import _CheckedProxyFactory

    app = _App()
    factory = _CheckedProxyFactory(Factory.forProtocol(lambda: app))
    wrapper = factory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 40000))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        wrapper.makeConnection(transport)
    finally:
        globalLogPublisher.removeObserver(events.append)
    app.wrapper = wrapper  # type: ignore[attr-defined]
    return app, transport, events


def _feed(pieces: list[bytes]) -> tuple[_App, StringTransport, list[str]]:
    app, transport, events = _connect()
    globalLogPublisher.addObserver(events.append)
    try:
        for piece in pieces:
            app.wrapper.dataReceived(piece)  # type: ignore[attr-defined]
    finally:
        globalLogPublisher.removeObserver(events.append)
    return app, transport, [formatEvent(e) for e in events if "refusing" in e.get(
        "log_format", "")]


V1 = b"PROXY TCP4 192.0.2.7 10.0.0.11 50123 8443\r\n"
V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 7, 10, 0, 0, 11])
      + (50123).to_bytes(2, "big") + (8443).to_bytes(2, "big"))
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_header_split_at_any_byte_is_read_whole(header: bytes) -> None:
    # Twisted's wrapper closed the connection when the first read was under 8 (v1) or 16 (v2)
    data = header + REQUEST
    for cut in range(1, len(header) + 1):
        app, transport, refusals = _feed([data[:cut], data[cut:]])
        assert (app.received, refusals, transport.disconnecting) == (REQUEST, [], False), cut
        assert (app.peers[0].host, app.peers[0].port) == ("192.0.2.7", 50123)


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 9.9.9.9\nX-Client-Role:admin 5.6.7.8 1 2\r\n",  # a line feed in the address
    b"PROXY TCP4 1.2.3.4,6.6.6.6 10.0.0.11 1 2\r\n",  # a list
    b"PROXY TCP4 evil.example 10.0.0.11 1 2\r\n",  # a name
    b"PROXY TCP4 1.2.3.4\x1b[31m\x00 10.0.0.11 1 2\r\n",  # control characters
    b"PROXY TCP4 \xff\xfe 10.0.0.11 1 2\r\n",  # not UTF-8 (Twisted raised)
    b"PROXY TCP4 1.2.3.4 10.0.0.11 port 2\r\n",  # not a number (Twisted raised)
    b"PROXY TCP4 1.2.3.4 10.0.0.11 70000 2\r\n",  # over 65535
    b"PROXY TCP4 ::1 10.0.0.11 1 2\r\n",  # IPv6 in a TCP4 header
    b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",  # IPv4 in a TCP6 header
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # a zone
    b"GET / HTTP/1.1\r\n",  # no header at all
    b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + b"\x00" * 12,  # v2 signature, version 1
])
def test_a_header_with_anything_but_ip_addresses_and_ports_closes_the_connection(
        header: bytes) -> None:
    app, transport, refusals = _feed([header + REQUEST])
    assert app.received == b"" and transport.disconnecting
    assert len(refusals) == 1 and "peer=10.0.0.5" in refusals[0], refusals


def test_addresses_are_written_in_canonical_text_and_unknown_keeps_the_balancers() -> None:
    app, _, _ = _feed([b"PROXY TCP6 2001:db8:0:0:0:0:0:1 2001:DB8::2 1 2\r\n" + REQUEST])
    assert app.peers[0].host == "2001:db8::1"
    assert app.wrapper.getHost().host == "2001:db8::2"  # type: ignore[attr-defined]
    app, _, _ = _feed([b"PROXY UNKNOWN\r\n" + REQUEST])
    assert (app.received, app.peers[0].host) == (REQUEST, "10.0.0.5")
