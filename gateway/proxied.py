"""Listeners behind an L4 load balancer: the PROXY protocol (``listen = haproxy:...``).

Twisted's own wrapper (:func:`twisted.protocols.haproxy.proxyEndpoint`) reads the v1 or v2 header
each connection starts with and makes ``getPeer()`` return the client's address from it; a
connection without a valid header is closed. :class:`TrustedPeersEndpoint` goes under it and
closes, before a byte is read, every connection whose real peer (the balancer) is not in
``trusted_proxies``, as nginx's ``set_real_ip_from``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from zope.interface import implementer

log = Logger(namespace="mtlsgw")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted(host: object, networks: Sequence[Network]) -> bool:
    """Whether the address *host* (text) is in one of *networks* (an IPv4-mapped IPv6 address
    counts as its IPv4 address). Anything that is not an IP address is not trusted."""
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class _TrustedPeersFactory(WrappingFactory):
    noisy = False  # no "Starting factory" lines

    def __init__(self, wrapped: Any, networks: Sequence[Network]) -> None:
        super().__init__(wrapped)
        self._networks = tuple(networks)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        host = getattr(addr, "host", None)
        if trusted(host, self._networks):
            return self.wrappedFactory.buildProtocol(addr)
        log.warn("refusing connection peer={peer}: not in trusted_proxies", peer=host or "unix")
        return None  # the port closes the socket at once


@implementer(IStreamServerEndpoint)
class TrustedPeersEndpoint:
    """*wrapped*, accepting connections only from peers in *networks*."""

    def __init__(self, wrapped: Any, networks: Sequence[Network]) -> None:
        self._wrapped = wrapped
        self._networks = tuple(networks)

    def listen(self, factory: Any) -> Deferred[Any]:
        result: Deferred[Any] = self._wrapped.listen(
            _TrustedPeersFactory(factory, self._networks))
        return result


def proxy_protocol_endpoint(inner: Any, networks: Sequence[Network]) -> Any:
    """The PROXY protocol (v1 and v2) around the endpoint *inner*, from *networks* only (any
    peer when empty). TLS, when the listener has it, goes around the result."""
    from twisted.protocols.haproxy import proxyEndpoint

    return proxyEndpoint(TrustedPeersEndpoint(inner, networks) if networks else inner)
