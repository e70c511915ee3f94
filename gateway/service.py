"""Assembling the running gateway: listeners (endpoint + optional TLS + HTTP factory) and their
route tables; reloads and graceful shutdown.

:func:`build` turns a config file into a :class:`GatewayService` (raising
:class:`~gateway.config.ConfigError` for any mistake, before anything listens).
``SIGHUP`` reloads TLS material, authorizers, routes, headers and upstream settings; a reload that
fails validation is logged and the running state is kept. Changing listeners, ``handshake_timeout``
or the limits in ``[gateway]`` needs a restart (a reload says so in the log).
``SIGTERM`` stops accepting, lets in-flight requests finish for up to ``drain_timeout`` seconds,
then closes what is left and exits.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from gateway import config
from gateway.accesslog import BufferedLogObserver, offer_observer
from gateway.authz.interfaces import IAuthorizer
from gateway.authz.policy import Policy
from gateway.authz.registry import available_types, build_authorizers
from gateway.http.exchange import Route
from gateway.http.pool import Upstream
from gateway.http.server import Listener, Sweep
from gateway.jsonlog import reload_record
from gateway.notify import SystemdNotifier
from gateway.proxied import proxy_protocol_endpoint
from gateway.reuseport import ReusePortEndpoint
from gateway.routes import RouteTable
from gateway.status import Operations
from gateway.tls import ServerConnectionCreator, build_context
from gateway.upstream_tls import UpstreamTLS
from gateway.watch import FileWatcher, watched_files
from gateway.worker import InheritedEndpoint

log = Logger(namespace="mtlsgw")


@attrs.frozen
class Checked:
    """What :func:`validate` built: settings, the server TLS context, a policy per route."""

    settings: config.GatewaySettings
    context: Any  # OpenSSL.SSL.Context, or None when no listener uses TLS
    policies: dict[str, Policy]  # by route name
    upstream_tls: dict[str, UpstreamTLS]  # by route name, for https upstreams
    # every authorizer built, once each (also those only a rule names), to close on replacement
    authorizers: tuple[IAuthorizer, ...] = ()


@attrs.frozen
class Generation:
    """Everything built from one reading of the config file."""

    settings: config.GatewaySettings
    context: Any
    tables: dict[str, RouteTable[Route]]  # by listener name
    upstreams: tuple[Upstream, ...]
    sweep: Sweep  # the timer sweep of the upstream connections and the client connections
    authorizers: tuple[Any, ...] = ()  # every authorizer built (Checked.authorizers)


def validate(path: str | Path) -> Checked:
    """Everything ``mtlsgw check-config`` checks: read and validate *path*, build the TLS context
    (key matches certificate, CA and CRL files parse), the authorizers (types exist, options are
    valid) and the upstream TLS settings. Needs no reactor and opens no socket. Raises
    :class:`~gateway.config.ConfigError` (one line).
    """
    settings = config.load(path)
    context = build_context(settings.tls) if settings.tls is not None else None
    types = available_types()
    policies = {}
    upstream_tls = {}
    built: dict[str, IAuthorizer] = {}  # one authorizer per section, shared by its routes
    for route in settings.routes:
        policies[route.name] = _policy(route, settings, types, built)
        if route.upstream.scheme == "https":
            upstream_tls[route.name] = UpstreamTLS(route.upstream)
    return Checked(settings, context, policies, upstream_tls, tuple(built.values()))


def _policy(route: config.RouteSettings, settings: config.GatewaySettings,
            types: Mapping[str, Any], built: dict[str, IAuthorizer]) -> Policy:
    authorizers = build_authorizers(route.authorizers, types, settings.authorizer_sections,
                                    settings.authorizer_timeout, built)
    policy = Policy(route.policy, authorizers, timeout=settings.authorizer_timeout)
    if authorizers and policy.all_shadow:
        section = route.authorizers[0]
        raise section.location.at("shadow", section.options.get("shadow")).error(
            f"every authorizer of route {route.name!r} is a shadow rule: nothing would decide "
            "(list an enforcing authorizer too)")
    return policy


def sweep_interval(settings: config.GatewaySettings) -> float:
    """Seconds between two timeout sweeps: an eighth of the shortest timeout configured, between
    0.05 and 1 s, so a deadline fires at most 12.5 % (or a second) late."""
    limits = settings.limits
    timeouts = [limits.idle_timeout, limits.header_timeout]
    if settings.tls is not None:
        timeouts.append(settings.tls.handshake_timeout)
    for route in settings.routes:
        upstream = route.upstream
        timeouts += [upstream.idle_timeout, upstream.response_timeout, upstream.read_timeout]
    return min(1.0, max(0.05, min(t for t in timeouts if t > 0) / 8))


def load_generation(path: str | Path, reactor: Any, sweep: Sweep | None = None) -> Generation:
    """:func:`validate` *path*, then build the routes (with their upstream clients) on *reactor*.
    *sweep* applies the timeouts (a new one when not given)."""
    checked = validate(path)
    settings = checked.settings
    if sweep is None:
        sweep = Sweep(reactor, sweep_interval(settings))
    upstreams = []
    by_listener: dict[str, list[Route]] = {listener.name: [] for listener in settings.listeners}
    for route in settings.routes:
        upstream = Upstream(route.upstream, reactor, sweep, checked.upstream_tls.get(route.name))
        upstreams.append(upstream)
        by_listener[route.listener].append(Route(
            route.name, route.prefix, route.host, route.strip_prefix,
            attrs.evolve(checked.policies[route.name], clock=reactor), route.headers, upstream,
            route.normalize_path, route.deny_status))
    tables = {listener.name: RouteTable(by_listener[listener.name], listener.escaped_slashes)
              for listener in settings.listeners}
    return Generation(settings, checked.context, tables, tuple(upstreams), sweep,
                      checked.authorizers)


def close_authorizers(authorizers: Iterable[IAuthorizer]) -> None:
    """Let the *authorizers* that hold resources (the ``http`` type's connection pool) release
    them: ``close()`` where one has it; called when a reload replaces them and at shutdown."""
    for authorizer in authorizers:
        close = getattr(authorizer, "close", None)
        if callable(close):
            close()


class _AcceptPendingPort:
    """A listening port that, when told to stop, first accepts the connections already waiting
    in its queue (the kernel would reset them when the socket closes: behind a load balancer,
    connections it has already handed on). They are then drained like the others."""

    def __init__(self, port: Any) -> None:
        self._port = port

    def stopListening(self) -> Any:  # noqa: N802
        accept = getattr(self._port, "doRead", None)  # a stream port: accept() until EAGAIN
        if accept is not None and getattr(self._port, "connected", False):
            accept()
        return self._port.stopListening()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


@implementer(IStreamServerEndpoint)
class _AcceptPendingEndpoint:
    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def listen(self, factory: Any) -> Deferred[Any]:
        listening: Deferred[Any] = self._wrapped.listen(factory)
        return listening.addCallback(_AcceptPendingPort)


def listener_endpoint(reactor: Any, listener: config.ListenerSettings,
                      inherited: int | None = None) -> Any:
    """The server endpoint of *listener*, without TLS: its ``listen`` description, with
    ``SO_REUSEPORT`` for ``reuse_port``, or adopting the descriptor *inherited* from a
    supervisor; for ``haproxy:``, the PROXY protocol (limited to ``trusted_proxies``) around
    that inner endpoint."""
    endpoint: Any
    if inherited is not None:
        endpoint = InheritedEndpoint(reactor, inherited)
    elif listener.reuse_port:
        endpoint = ReusePortEndpoint(reactor, *listener.reuse_port)
    else:
        endpoint = serverFromString(reactor, listener.socket_listen)
    if listener.proxy_protocol:
        endpoint = proxy_protocol_endpoint(endpoint, listener.trusted_proxies)
    return _AcceptPendingEndpoint(endpoint)


def cannot_listen(settings: config.GatewaySettings, exc: CannotListenError | OSError) -> NoReturn:
    """Stop the start with one line naming the listener that could not listen, as for any other
    configuration mistake, instead of a traceback; exit status 1. *exc* is Twisted's
    ``CannotListenError`` (its port), or an ``OSError`` of a ``unix:`` socket (its file: the
    directory does not exist, or is not writable)."""
    if isinstance(exc, CannotListenError):
        mark, problem = str(exc.port), str(exc.socketError)
    else:  # Twisted's lock file is a symlink: filename2 is its path
        name = os.fsdecode(exc.filename2 or exc.filename or "")
        mark, problem = str(Path(name).parent), f"{exc.strerror}: {name}"
    listen = next((x for x in settings.listeners if mark in x.listen), settings.listeners[0])
    section = "gateway" if listen.name == "main" else f"listener:{listen.name}"
    # The process's own stderr, not twistd's log (which has taken sys.stderr over by now).
    (sys.__stderr__ or sys.stderr).write(
        f"mtlsgw: {settings.path}: [{section}] listen = {listen.listen!r}: "
        f"cannot listen ({problem})\n")
    raise SystemExit(1) from None


class GatewayService(MultiService):
    """The gateway as a Twisted service: listens while running, reloads on ``SIGHUP``.

    With *inherited* (a worker of ``workers = N``, :mod:`gateway.workers`) every listener adopts
    the listening socket its supervisor bound, ``{listener name: descriptor}``, instead of
    binding its own.
    """

    log_observer: BufferedLogObserver | None = None  # set by the twistd plugin

    def __init__(self, generation: Generation, reactor: Any,
                 inherited: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self._worker = inherited is not None
        # [status]: metrics, readiness and the status listener (gateway/status.py), or None.
        self.operations = Operations.for_service(generation.settings, reactor, self._worker)
        if self.operations is not None:
            generation = self.operations.instrument(generation)
        self.generation = generation
        self._reactor = reactor
        settings = generation.settings
        self._limits = settings.limits
        self._started = settings  # as started: what the restart-only keys are compared with
        self.creator = ServerConnectionCreator(generation.context) if generation.context else None
        self.factories: dict[str, Listener] = {}
        self.sweep = generation.sweep
        handshake_timeout = settings.tls.handshake_timeout if settings.tls else 0.0
        for listener in settings.listeners:
            factory = Listener(listener.name, generation.tables[listener.name], settings.limits,
                               handshake_timeout, listener.tls, reactor, self.sweep)
            factory.log_settings = settings.log
            factory.trust_request_id = listener.trust_request_id
            self.factories[listener.name] = factory
            endpoint = listener_endpoint(
                reactor, listener, inherited[listener.name] if inherited is not None else None)
            if self.creator is not None and listener.tls:
                endpoint = wrapServerTLS(self.creator, endpoint)
            service = StreamServerEndpointService(endpoint, factory)
            service._raiseSynchronously = True  # a port in use fails the start, not later
            service.setServiceParent(self)
        if self.operations is not None:
            self.operations.attach(self)
        self._previous_handler: Any = None
        # A worker leaves systemd and file watching to its supervisor.
        self.systemd = SystemdNotifier(None) if self._worker else SystemdNotifier.from_environ()
        self._watcher = FileWatcher(
            reactor, settings.watch_interval, lambda: watched_files(self.generation.settings),
            self.notified_reload) if settings.watch_interval and not self._worker else None

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802
        """Under twistd, *parent* is the application: offer it the gateway's log observer (an
        ``ILogObserver`` component, twistd's documented way; ``--logger`` still wins)."""
        super().setServiceParent(parent)
        offer_observer(parent, self.log_observer, self._reactor)

    def privilegedStartService(self) -> None:  # noqa: N802
        # twistd opens the listening ports here (before dropping privileges). The status
        # listener first: once a listener accepts connections, /readyz answers (503 until
        # started), which a probe that saw the port open can rely on.
        if self.operations is not None:
            self.operations.listen()
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError) as exc:  # OSError: a unix: socket's lock file
            self._cannot_listen(exc)

    def _cannot_listen(self, exc: CannotListenError | OSError) -> None:
        cannot_listen(self.generation.settings, exc)

    def startService(self) -> None:  # noqa: N802
        try:
            super().startService()
        except CannotListenError as exc:
            self._cannot_listen(exc)
        self.sweep.start()
        if self.operations is not None:
            self.operations.started(self.generation.settings)
        for listener in self.generation.settings.listeners:
            routes = ", ".join(f"{r.prefix}->{r.upstream.settings.url}"
                               for r in self.generation.tables[listener.name])
            log.info("mtlsgw listening on {listen} ({kind}), routes {routes}",
                     listen=listener.listen, kind="mTLS" if listener.tls else "plain HTTP",
                     routes=routes)
        self._previous_handler = signal.signal(
            signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.notified_reload))
        self._reactor.callWhenRunning(self._handle_sigterm)
        self._reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        # Every service of the application has started by now: the listeners are bound.
        listening = ", ".join(x.listen for x in self.generation.settings.listeners)
        self.systemd.ready(f"serving on {listening}")
        self.systemd.start_watchdog(self._reactor)
        if self._watcher is not None:
            self._watcher.start()

    def notified_reload(self) -> bool:
        """:meth:`reload`, between ``RELOADING=1`` and ``READY=1`` to systemd (``SIGHUP``,
        ``watch_files``)."""
        self.systemd.reloading()
        ok = self.reload()
        if self._watcher is not None:
            self._watcher.reloaded()  # after a SIGHUP, the watch does not reload again
        self.systemd.reloaded(ok)
        return ok

    def _handle_sigterm(self) -> None:
        # Twisted's own handler makes twistd re-raise SIGTERM at exit (status -15); a drained,
        # orderly stop is a success, so exit 0 instead.
        signal.signal(signal.SIGTERM, lambda *_: self._reactor.callFromThread(self._terminate))

    def _terminate(self) -> None:
        if self.log_observer is not None:
            self.log_observer.flush()
        # A SIGTERM while already stopping (systemd signals every process of the service, and a
        # workers supervisor forwards it too) changes nothing.
        with suppress(ReactorNotRunning):
            self._reactor.stop()

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Stop accepting; let in-flight requests finish within ``drain_timeout``; close."""
        if self.operations is not None:
            self.operations.draining()  # /readyz: 503 at once
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
        stopped: Deferred[Any] = Deferred.fromCoroutine(self._drain())
        return stopped

    async def _drain(self) -> None:
        delay = self._limits.drain_delay  # as started: limits change on restart only
        drain_timeout = self._limits.drain_timeout
        self.systemd.stopping(f"accepting for {delay:g} s more, then draining for up to "
                              f"{drain_timeout:g} s")
        if self._watcher is not None:
            self._watcher.stop()
        if delay > 0:
            # Still accepting and serving, while load balancers take this instance out.
            log.info("drain_delay: accepting for {delay} s more before draining", delay=delay)
            await deferLater(self._reactor, delay, lambda: None)
        await super().stopService()  # listening ports closed: nothing new comes in
        drained: set[Any] = set()

        def drain_new() -> list[Deferred[None]]:
            # Connections can join after the ports closed: accepted from the listen queue, or
            # behind a PROXY protocol wrapper once its header has been read. Each gets drained.
            fresh = [c for f in self.factories.values() for c in list(f.connections)
                     if c not in drained]
            drained.update(fresh)
            return [c.drain() for c in fresh]

        waiting = drain_new()
        if waiting:
            log.info("draining {count} connection(s) for up to {timeout} s",
                     count=len(waiting), timeout=drain_timeout)
            timer = self._reactor.callLater(drain_timeout, self._abort_all)
            while waiting and timer.active():
                await DeferredList(waiting)
                await deferLater(self._reactor, 0.05, lambda: None)  # late arrivals, if any
                waiting = drain_new()
            if timer.active():
                timer.cancel()
        for upstream in self.generation.upstreams:
            await upstream.close()
        close_authorizers(self.generation.authorizers)
        self.sweep.stop()
        if self.operations is not None:
            self.operations.stop()  # the status listener was open until now

    def _abort_all(self) -> None:
        for factory in self.factories.values():
            for channel in list(factory.connections):
                if channel.busy:
                    log.warn("drain timeout: aborting connection with a request in flight")
                channel.abort("drain-timeout")

    def reload(self) -> bool:
        """Re-read the config file; on success new connections and requests use it.

        Returns ``True`` if the new configuration is in force, ``False`` if it was refused (the
        reason is logged and the previous configuration stays in force).
        """
        old = self.generation
        try:
            new = load_generation(old.settings.path, self._reactor, self.sweep)
        except Exception as exc:  # a ConfigError, or a bug: either way the old state stays
            if not isinstance(exc, config.ConfigError):
                log.failure("reload failed")
                exc = config.ConfigError(f"{old.settings.path}: {type(exc).__name__}: {exc}")
            log.error("reload refused, keeping the running configuration: {error}",
                      error=str(exc), mtlsgw_record=reload_record(
                          "refused", str(old.settings.path), str(exc)))
            if self.operations is not None:
                self.operations.reloaded(None, str(exc))
            return False
        if new.settings.listeners != old.settings.listeners:
            # Routes are authorized by their listener's kind (TLS or plain): never mix the two.
            log.error("reload refused: listeners changed (listen, tls); restart to apply",
                      mtlsgw_record=reload_record("refused", str(old.settings.path),
                                                  "listeners changed; restart to apply"))
            for upstream in new.upstreams:
                upstream.close()
            close_authorizers(new.authorizers)
            if self.operations is not None:
                self.operations.reloaded(None, "listeners changed (listen, tls); restart to "
                                               "apply")
            return False
        if self.operations is not None:
            new = self.operations.instrument(new)
        # Restart-only keys: compared with what runs, so that a file put back says nothing.
        started = self._started
        if new.settings.limits != started.limits or (
                new.settings.tls and started.tls
                and new.settings.tls.handshake_timeout != started.tls.handshake_timeout):
            log.warn("reload: limits or handshake_timeout changed; that takes effect on restart")
        if new.settings.log != started.log:
            log.warn("reload: [log] changed; that takes effect on restart")
        if not self._worker and (new.settings.workers, new.settings.workers_auto) != (
                started.workers, started.workers_auto):  # a supervisor says it once
            log.warn("reload: workers changed; that takes effect on restart")
        self.generation = new
        if self.creator is not None:
            self.creator.context = new.context
        for name, factory in self.factories.items():
            factory.routes = new.tables[name]
        for upstream in old.upstreams:
            upstream.close()
        close_authorizers(old.authorizers)
        log.info("reloaded configuration from {path}", path=str(new.settings.path),
                 mtlsgw_record=reload_record("ok", str(new.settings.path), None))
        if self.operations is not None:
            self.operations.reloaded(new.settings, None)
        return True


def build(path: str | Path, reactor: Any = None,
          inherited: Mapping[str, int] | None = None) -> GatewayService:
    """The gateway service for config file *path* (*inherited*: see :class:`GatewayService`);
    raises :class:`~gateway.config.ConfigError`."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return GatewayService(load_generation(path, reactor), reactor, inherited)
