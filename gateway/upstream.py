"""The upstream side: an HTTP client (Twisted's ``Agent``) with a persistent connection pool,
and the TLS policy for ``https://`` upstreams.

An ``https://`` upstream's certificate is verified against ``upstream_ca`` (or the system trust
store), its name checked with ``service_identity`` (RFC 6125; ``upstream_server_name`` or the
URL's host) and the same name sent as SNI. With ``upstream_certificate``/``upstream_private_key``
the gateway presents its own client certificate (mTLS upstream, like nginx's
``proxy_ssl_certificate``). A TLS failure is a failed request (502), never a downgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from gateway.config import ConfigError, UpstreamSettings


@implementer(IPolicyForHTTPS)
class UpstreamTLS:
    """``IPolicyForHTTPS`` for one upstream: trust anchors, checked name, client certificate.

    Raises :class:`ConfigError` at construction when the CA or client certificate files do not
    parse or the key does not match.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        self._server_name = settings.server_name or settings.host
        self._trust: Any = None  # None: the platform's trust store
        if settings.ca is not None:
            certificates = _certificates(settings.ca, "upstream_ca", settings)
            self._trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates])
        self._client: Any = None
        self._chain: list[Any] = []
        if settings.certificate is not None and settings.private_key is not None:
            certificates = _certificates(settings.certificate, "upstream_certificate", settings)
            try:
                self._client = ssl.PrivateCertificate.loadPEM(
                    certificates[0].public_bytes(Encoding.PEM) + settings.private_key.read_bytes())
                self._client.options()  # checks that the key matches
            except Exception as exc:
                raise ConfigError(
                    f"upstream {settings.url}: upstream_private_key {settings.private_key} "
                    f"does not match upstream_certificate ({exc})") from None
            self._chain = [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)).original
                           for c in certificates[1:]]

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        """Twisted's ``IPolicyForHTTPS``: the connection creator for one upstream connection."""
        extra = {"extraCertChain": self._chain} if self._chain else None
        return ssl.optionsForClientTLS(
            self._server_name, trustRoot=self._trust, clientCertificate=self._client,
            extraCertificateOptions=extra)


def _certificates(path: Path, key: str, settings: UpstreamSettings) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"upstream {settings.url}: {key} {path}: no PEM certificate ({exc})"
                          ) from None


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class _Pool(HTTPConnectionPool):
    """A pool that, once closed, closes connections handed back to it instead of keeping them:
    after a reload, requests still in flight on the old upstream finish, then their connections
    go (Twisted's pool would keep them until ``cachedConnectionTimeout``)."""

    closed = False

    def _putConnection(self, key: Any, connection: Any) -> None:  # noqa: N802
        if self.closed:
            connection.transport.loseConnection()
            return
        super()._putConnection(key, connection)


@implementer(IAgentEndpointFactory)
class _FixedEndpoint:
    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802
        return self._endpoint


class Upstream:
    """Sends requests to one configured upstream over a pool of persistent connections.

    At most ``settings.pool_size`` idle connections are kept; connecting gives up after
    ``settings.connect_timeout`` seconds.
    """

    def __init__(self, settings: UpstreamSettings, reactor: Any,
                 tls: UpstreamTLS | None = None) -> None:
        self.settings = settings
        self._pool = _Pool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = settings.pool_size
        self._pool._factory = _QuietClientFactory  # no "Starting factory" line per connection
        # One endpoint for every request (and every WebSocket upgrade): Agent would build (and
        # IDNA-encode) one per request. *tls*: the policy validate() already built, if any.
        endpoint: Any = HostnameEndpoint(reactor, settings.host.encode("idna"), settings.port,
                                         timeout=settings.connect_timeout)
        if settings.scheme == "https":
            creator = (tls or UpstreamTLS(settings)).creatorForNetloc(
                settings.host.encode("idna"), settings.port)
            endpoint = wrapClientTLS(creator, endpoint)
        self.endpoint = endpoint  # IStreamClientEndpoint to the upstream, TLS included
        self._agent = Agent.usingEndpointFactory(reactor, _FixedEndpoint(endpoint), self._pool)
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        default_port = 443 if settings.scheme == "https" else 80
        self.authority = host if settings.port == default_port else f"{host}:{settings.port}"
        self._base = f"{settings.scheme}://{host}:{settings.port}{settings.base_path}".encode(
            "idna")

    def host_header(self, client_host: bytes | None) -> bytes | None:
        """The ``Host`` to send: the client's (``host_header = client``), the upstream's own
        authority (``upstream``) or the configured literal."""
        mode = self.settings.host_header
        if mode == "client":
            return client_host
        if mode == "upstream":
            return self.authority.encode("idna")
        return mode.encode("ascii")

    def request(
        self, method: bytes, target: bytes, headers: Headers, body: IBodyProducer | None
    ) -> Deferred[IResponse]:
        """Send *method* for the origin-form *target* (``/path?query``) with *headers*, streaming
        *body* (or none). Fires with the ``IResponse`` once its head has arrived; fails with
        Twisted's connect, TLS or ``ResponseNeverReceived`` errors."""
        sent: Deferred[IResponse] = self._agent.request(method, self._base + target, headers, body)
        return sent

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections (on shutdown or when a reload replaces this)."""
        self._pool.closed = True
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

