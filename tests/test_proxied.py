"""``listen = haproxy:...`` and ``trusted_proxies`` in the configuration, and the peer check
(:mod:`gateway.proxied`). The PROXY protocol itself is Twisted's; tests/test_e2e_haproxy.py runs
it behind a real HAProxy."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from test_config import changed, config_error, write_config

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
