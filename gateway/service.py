"""Assembling the running gateway: endpoint + TLS + HTTP factory + route, and reloads.

:func:`build` turns a config file into a :class:`GatewayService` (raising
:class:`~gateway.config.ConfigError` for any mistake, before anything listens).
``SIGHUP`` reloads TLS material, authorizers, headers and upstream settings; a reload that fails
validation is logged and the running state is kept. Changing ``listen``, ``handshake_timeout`` or
the limits in ``[gateway]`` needs a restart (a reload says so in the log).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.logger import Logger

from gateway import config
from gateway.authz.policy import Policy
from gateway.authz.registry import build_authorizers
from gateway.channel import GatewayHTTPFactory
from gateway.proxy import ProxyRequest, Route
from gateway.tls import ServerConnectionCreator, build_context
from gateway.upstream import Upstream

log = Logger(namespace="mtlsgw")


@attrs.frozen
class Generation:
    """Everything built from one reading of the config file."""

    settings: config.GatewaySettings
    context: Any  # OpenSSL.SSL.Context
    route: Route


def validate(path: str | Path) -> tuple[config.GatewaySettings, Any, Policy]:
    """Everything ``mtlsgw check-config`` checks: read and validate *path*, build the TLS context
    (key matches certificate, CA and CRL files parse) and the authorizers (types exist, options
    are valid). Returns the settings, the ``SSL.Context`` and the :class:`Policy`; needs no
    reactor and opens no socket. Raises :class:`~gateway.config.ConfigError` (one line).
    """
    settings = config.load(path)
    context = build_context(settings.tls)
    policy = Policy(settings.policy, build_authorizers(settings.authorizers))
    return settings, context, policy


def load_generation(path: str | Path, reactor: Any) -> Generation:
    """:func:`validate` *path*, then build the route (with its upstream client) on *reactor*."""
    settings, context, policy = validate(path)
    route = Route(policy, settings.headers, Upstream(settings.upstream, reactor))
    return Generation(settings, context, route)


class GatewayService(MultiService):
    """The gateway as a Twisted service: listens while running, reloads on ``SIGHUP``."""

    def __init__(self, generation: Generation, reactor: Any) -> None:
        super().__init__()
        self.generation = generation
        self._reactor = reactor
        settings = generation.settings
        self.creator = ServerConnectionCreator(generation.context)
        self.factory = GatewayHTTPFactory(
            ProxyRequest, settings.limits, settings.tls.handshake_timeout, reactor)
        self.factory.route = generation.route
        endpoint = wrapServerTLS(self.creator, serverFromString(reactor, settings.listen))
        listener = StreamServerEndpointService(endpoint, self.factory)
        listener._raiseSynchronously = True  # a port in use fails the start, not later
        listener.setServiceParent(self)
        self._previous_handler: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        settings = self.generation.settings
        log.info("mtlsgw listening on {listen}, upstream {upstream}, config {path}",
                 listen=settings.listen, upstream=settings.upstream.url, path=str(settings.path))
        self._previous_handler = signal.signal(
            signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.reload))

    def stopService(self) -> Any:  # noqa: N802
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
        self.generation.route.upstream.close()
        return super().stopService()

    def reload(self) -> bool:
        """Re-read the config file; on success new connections and requests use it.

        Returns ``True`` if the new configuration is in force, ``False`` if it was refused (the
        reason is logged and the previous configuration stays in force).
        """
        old = self.generation
        try:
            new = load_generation(old.settings.path, self._reactor)
        except config.ConfigError as exc:
            log.error("reload refused, keeping the running configuration: {error}",
                      error=str(exc))
            return False
        for key, before, after in (
            ("listen", old.settings.listen, new.settings.listen),
            ("idle_timeout", old.settings.limits.idle_timeout, new.settings.limits.idle_timeout),
            ("header_timeout", old.settings.limits.header_timeout,
             new.settings.limits.header_timeout),
            ("max_head_size", old.settings.limits.max_head_size,
             new.settings.limits.max_head_size),
            ("max_body_size", old.settings.limits.max_body_size,
             new.settings.limits.max_body_size),
            ("max_connections", old.settings.limits.max_connections,
             new.settings.limits.max_connections),
            ("handshake_timeout", old.settings.tls.handshake_timeout,
             new.settings.tls.handshake_timeout),
        ):
            if before != after:
                log.warn("reload: {key} changed to {value}; it takes effect on restart",
                         key=key, value=after)
        self.generation = new
        self.creator.context = new.context
        self.factory.route = new.route
        old.route.upstream.close()
        log.info("reloaded configuration from {path}", path=str(new.settings.path))
        return True


def build(path: str | Path, reactor: Any = None) -> GatewayService:
    """The gateway service for config file *path*; raises :class:`~gateway.config.ConfigError`."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return GatewayService(load_generation(path, reactor), reactor)
