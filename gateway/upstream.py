"""The upstream side: one HTTP client (Twisted's ``Agent``) with a persistent connection pool.

``http://`` upstreams are plain; ``https://`` upstreams are verified against the system trust
store, with the hostname checked by ``service_identity`` (RFC 6125) and SNI sent
(``twisted.web.client.BrowserLikePolicyForHTTPS``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from gateway.config import UpstreamSettings


class Upstream:
    """Sends requests to the configured upstream over a pool of persistent connections.

    At most ``settings.pool_size`` idle connections are kept per upstream; connecting gives up
    after ``settings.connect_timeout`` seconds.
    """

    def __init__(self, settings: UpstreamSettings, reactor: Any) -> None:
        self.settings = settings
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = settings.pool_size
        self._agent = Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(),
            connectTimeout=settings.connect_timeout,
            pool=self._pool,
        )
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        self._base = f"{settings.scheme}://{host}:{settings.port}{settings.base_path}".encode(
            "idna")

    def request(
        self, method: bytes, target: bytes, headers: Headers, body: IBodyProducer | None
    ) -> Deferred[IResponse]:
        """Send *method* for the origin-form *target* (``/path?query``) with *headers*, streaming
        *body* (or none). Fires with the ``IResponse`` once its head has arrived; fails with
        Twisted's connect or ``ResponseNeverReceived`` errors."""
        return self._agent.request(method, self._base + target, headers, body)

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections (on shutdown or when a reload replaces this)."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed
