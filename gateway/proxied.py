"""Listeners behind an L4 load balancer: the PROXY protocol (``listen = haproxy:...``).

Twisted's parsers (``twisted.protocols.haproxy``) read the v1 or v2 header each connection
starts with, and its wrapper makes ``getPeer()`` return the client's address from it.
:class:`CheckedProxyWrapper` is that wrapper with what it lacks for a gateway:

* the header is read whole however TCP splits it (Twisted's closed a connection whose first
  read was shorter than 8 or 16 bytes);
* the addresses must be IP addresses of the header's family (``TCP4``: IPv4, ``TCP6``: IPv6,
  no zone) and the ports 0-65535, written in their canonical text (``2001:db8::1``). Twisted's
  v1 parser takes any text between the spaces, which went as it was into ``X-Forwarded-For``
  and log lines: a line feed in it was a header of the attacker's upstream;
* a connection without a valid header is closed with one log line, never an exception.

:func:`proxy_protocol_endpoint` puts a peer check under it that closes, before a byte is read,
every connection whose real peer (the balancer) is not in ``trusted_proxies``, as nginx's
``set_real_ip_from``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
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


_V1_SIGNATURE = b"PROXY "


class _V1Parser(V1Parser):
    """Twisted's v1 parser, which also takes ``PROXY UNKNOWN`` with nothing after it (as the
    specification allows, section 2.1, and HAProxy sends for a source it cannot name)."""

    @classmethod
    def parse(cls, line: bytes) -> ProxyInfo:
        if line == b"PROXY UNKNOWN":
            return ProxyInfo(line, None, None)
        return super().parse(line)


def _parser_for(data: bytes) -> type[_V1Parser] | type[V2Parser] | bool:
    """The parser for a connection that starts with *data*: ``True`` while *data* may still
    become a header's start (wait for more), ``False`` when it cannot."""
    if data.startswith(_V1_SIGNATURE):
        return _V1Parser
    if data[:12] == V2Parser.PREFIX:
        if len(data) < 16:
            return True
        return V2Parser if data[12] & 0xF0 == 0x20 else False  # version 2
    return _V1_SIGNATURE.startswith(data) or V2Parser.PREFIX.startswith(data)


def _checked_address(given: Any) -> Any:
    """*given* (a parsed header's source or destination) with its host in canonical text;
    ``ValueError`` when it is not an IP address of its family or its port is out of range."""
    if not isinstance(given, address.IPv4Address | address.IPv6Address):
        return given  # None (UNKNOWN, LOCAL) or a UNIXAddress: no text of the client's
    ip = ipaddress.ip_address(given.host)  # ValueError for anything else
    family = ipaddress.IPv4Address if isinstance(given, address.IPv4Address) else \
        ipaddress.IPv6Address
    if not isinstance(ip, family) or getattr(ip, "scope_id", None) or \
            not 0 <= given.port <= 65535:
        raise ValueError(f"not an {family.__name__} with a port: {given.host!r}")
    return type(given)(given.type, str(ip), given.port)


class CheckedProxyWrapper(ProtocolWrapper):
    """A connection that starts with a PROXY protocol header, checked as the module docstring
    says; ``getPeer()`` and ``getHost()`` return the header's addresses once it was read (the
    balancer's own before, and for ``UNKNOWN`` / ``LOCAL``)."""

    transport: Any

    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._info: ProxyInfo | None = None
        self._parser: V1Parser | V2Parser | None = None
        self._pending = b""
        self._refused = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._info is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        if self._parser is None:
            data = self._pending + data
            parser = _parser_for(data)
            if parser is True:
                self._pending = data
                return
            self._pending = b""
            if parser is False:
                self._refuse("no PROXY protocol header")
                return
            self._parser = parser()
        try:
            info, remaining = self._parser.feed(data)
            if info is not None:
                info = ProxyInfo(info.header, _checked_address(info.source),
                                 _checked_address(info.destination))
        except (ValueError, UnicodeDecodeError, InvalidProxyHeader):
            self._refuse("malformed PROXY protocol header")
            return
        if info is None:
            return  # the header goes on in the next read
        self._info = info
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

    def _refuse(self, why: str) -> None:
        self._refused = True
        log.info("refusing connection peer={peer}: {why}",
                 peer=getattr(self.transport.getPeer(), "host", "unix"), why=why)
        self.loseConnection()

    def getPeer(self) -> Any:  # noqa: N802
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return self.transport.getPeer()

    def getHost(self) -> Any:  # noqa: N802
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return self.transport.getHost()


class _CheckedProxyFactory(WrappingFactory):
    protocol = CheckedProxyWrapper
    noisy = False


@implementer(IStreamServerEndpoint)
class _WrappingEndpoint:
    """The endpoint *wrapped*, listening with its factory wrapped by *wrap* (a factory of
    factories: the peer check, the PROXY protocol)."""

    def __init__(self, wrapped: Any, wrap: Callable[[Any], WrappingFactory]) -> None:
        self._wrapped = wrapped
        self._wrap = wrap

    def listen(self, factory: Any) -> Deferred[Any]:
        result: Deferred[Any] = self._wrapped.listen(self._wrap(factory))
        return result


def proxy_protocol_endpoint(inner: Any, networks: Sequence[Network]) -> Any:
    """The PROXY protocol (v1 and v2) around the endpoint *inner*, from *networks* only (any
    peer when empty: the peer check goes under the header's). TLS, when the listener has it,
    goes around the result."""
    if networks:
        checked = tuple(networks)
        inner = _WrappingEndpoint(inner, lambda factory: _TrustedPeersFactory(factory, checked))
    return _WrappingEndpoint(inner, _CheckedProxyFactory)
