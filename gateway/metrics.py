"""The gateway's Prometheus metrics (docs/operations.md#metrics), on ``prometheus_client``.

:class:`GatewayMetrics` owns one ``CollectorRegistry`` (never the global one) and the metric
families; where it counts depends on its *role*:

* ``single`` (one process): everything, exposed from this process;
* ``worker`` (a worker of ``workers = N``): the request, handshake, authorizer and connection
  metrics, written to the supervisor's ``PROMETHEUS_MULTIPROC_DIR`` by prometheus_client's
  multiprocess mode; the live gauges (open connections, pooled connections) are sampled into
  ``livesum`` gauges every :data:`SAMPLE_INTERVAL` seconds;
* ``supervisor``: the configuration and certificate metrics and its own process metrics, plus
  the workers' metrics read from that directory at scrape time (``MultiProcessCollector``).

The per-request path is one call, :meth:`ListenerMetrics.request`, at the access-log point: the
labelled children are resolved once per listener, route, status and decision and kept, so a
request costs a few dict lookups and the increments. Labels are bounded: listener, route and
authorizer names from the configuration, status codes, reason ids, closed sets; never a subject,
fingerprint, path or client address.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as TimedOut
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import config
from gateway.authz.interfaces import Decision, IAuthorizer
from gateway.handshake_failure import REASONS

SAMPLE_INTERVAL = 1.0  # seconds between two samples of a worker's live gauges

# upstream_failures_total{kind}: the access line's upstream_status values that are failures.
UPSTREAM_FAILURES = ("upstream-unreachable", "upstream-error", "timeout",
                     "upstream-head-too-large", "aborted")
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)
_AUTHORIZER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                       0.25, 0.5, 1.0, 2.5, 5.0)
_VERDICTS = ("-", "allow", "deny")


@functools.lru_cache(maxsize=256)
def upstream_failure(status: str) -> str | None:
    """The ``kind`` of an access line's non-numeric ``upstream_status``, or ``None`` when it is
    no upstream failure (``-``, ``client-gone``): ``upstream-unreachable``, ``upstream-error``,
    ``timeout``, ``upstream-head-too-large``, or ``aborted`` (``<code>-aborted``: the response
    was cut after its head)."""
    if status.endswith("-client-gone"):
        status = status[: -len("-client-gone")]
    if status.endswith("-aborted"):
        return "aborted"
    return status if status in UPSTREAM_FAILURES else None


class RouteMetrics:
    """The children of one route (``-``: requests that found none) on one listener."""

    def __init__(self, metrics: GatewayMetrics, listener: str, route: str) -> None:
        self._metrics = metrics
        self._listener = listener
        self.route = route
        self.requests: dict[int, Any] = {}  # by status * 4 + verdict index
        self.denials: dict[str, Any] = {}  # by reason id
        self.failures: dict[str, Any] = {}  # by kind
        self.duration = metrics.request_duration.labels(route)
        self.upstream_response = metrics.upstream_response.labels(route)
        self.request_bytes = metrics.request_bytes.labels(route)
        self.response_bytes = metrics.response_bytes.labels(route)

    def request_counter(self, key: int, status: int, verdict: int) -> Any:
        child = self._metrics.requests.labels(self._listener, self.route,
                                              str(status) if status else "-", _VERDICTS[verdict])
        self.requests[key] = child
        return child

    def denial(self, reason: str) -> Any:
        child = self.denials.get(reason)
        if child is None:
            child = self.denials[reason] = self._metrics.denials.labels(self.route, reason)
        return child

    def failure(self, kind: str) -> Any:
        child = self.failures.get(kind)
        if child is None:
            child = self.failures[kind] = self._metrics.upstream_failures.labels(self.route, kind)
        return child


class ListenerMetrics:
    """What a :class:`~gateway.http.server.Listener` reports to (its ``metrics`` attribute)."""

    def __init__(self, metrics: GatewayMetrics, name: str) -> None:
        self._metrics = metrics
        self.name = name
        self._routes: dict[str, RouteMetrics] = {}
        self._none = RouteMetrics(metrics, name, "-")
        self._handshakes_ok = metrics.handshakes.labels(name, "success")
        self._handshakes_failed = metrics.handshakes.labels(name, "failure")
        self._handshake_seconds = metrics.handshake_seconds.labels(name)
        self._handshake_failures = {reason: metrics.handshake_failures.labels(name, reason)
                                    for reason in REASONS}

    def request(self, exchange: Any) -> None:
        """Count one finished :class:`~gateway.http.exchange.Exchange` (its ``route``,
        ``status``, ``decision``, ``upstream_status``, ``started``, ``upstream_sent`` and
        ``upstream_headed`` monotonic times, ``received_bytes`` and ``sent_bytes``)."""
        route = exchange.route
        if route is None:
            metrics = self._none
        else:
            metrics = self._routes.get(route.name)  # type: ignore[assignment]
            if metrics is None:
                metrics = self._routes[route.name] = RouteMetrics(self._metrics, self.name,
                                                                  route.name)
        decision = exchange.decision
        status = exchange.status or 0
        verdict = 0 if decision is None else 1 if decision.allowed else 2
        key = status * 4 + verdict
        counter = metrics.requests.get(key)
        if counter is None:
            counter = metrics.request_counter(key, status, verdict)
        counter.inc()
        metrics.duration.observe(time.monotonic() - exchange.started)
        if verdict == 2:
            metrics.denial(decision.reason).inc()
        upstream_status = exchange.upstream_status
        if upstream_status.__class__ is str and upstream_status != "-":
            kind = upstream_failure(upstream_status)
            if kind is not None:
                metrics.failure(kind).inc()
        if exchange.upstream_headed:
            metrics.upstream_response.observe(exchange.upstream_headed - exchange.upstream_sent)
        if exchange.received_bytes:
            metrics.request_bytes.inc(exchange.received_bytes)
        if exchange.sent_bytes:
            metrics.response_bytes.inc(exchange.sent_bytes)

    def handshake_completed(self, seconds: float) -> None:
        """A TLS handshake succeeded after *seconds*."""
        self._handshakes_ok.inc()
        self._handshake_seconds.observe(seconds)

    def handshake_failed(self, reason: str) -> None:
        """A TLS handshake failed; *reason* is one of :data:`~gateway.handshake_failure.REASONS`."""
        self._handshakes_failed.inc()
        self._handshake_failures[reason].inc()


@implementer(IAuthorizer)
class TimedAuthorizer:
    """An authorizer as configured, timed into ``mtlsgw_authorizer_seconds`` and counted into
    ``mtlsgw_authorizer_errors_total`` (``error``: raised, failed, or returned no
    :class:`Decision`; ``timeout``: cancelled by the policy's ``timeout``). Decisions pass
    through unchanged: the policy still fails closed on its own."""

    def __init__(self, inner: Any, seconds: Any, errors: Any, timeouts: Any) -> None:
        self.inner = inner
        self._seconds = seconds
        self._errors = errors
        self._timeouts = timeouts

    def authorize(self, identity: Any, request: Any) -> Any:
        started = time.perf_counter()
        try:
            result = self.inner.authorize(identity, request)
        except Exception:
            self._seconds.observe(time.perf_counter() - started)
            self._errors.inc()
            raise
        if isinstance(result, Deferred):
            return result.addBoth(self._done, started)
        self._seconds.observe(time.perf_counter() - started)
        if not isinstance(result, Decision):
            self._errors.inc()
        return result

    def _done(self, result: Any, started: float) -> Any:
        self._seconds.observe(time.perf_counter() - started)
        if isinstance(result, Failure):
            timed_out = result.check(CancelledError, TimedOut) is not None
            (self._timeouts if timed_out else self._errors).inc()
        elif not isinstance(result, Decision):
            self._errors.inc()
        return result


@attrs.frozen
class Expiry:
    """One ``mtlsgw_certificate_not_after_timestamp_seconds`` sample."""

    role: str  # server | client-ca | upstream-client | upstream-ca
    file: str
    index: int  # position in the file, 0 for the first
    not_after: float  # seconds since the epoch


def _not_after(certificate: Any) -> float:
    if isinstance(certificate, x509.Certificate):
        return certificate.not_valid_after_utc.timestamp()
    raw = certificate.get_notAfter().decode("ascii")  # pyOpenSSL: ASN.1 GeneralizedTime
    when = datetime.datetime.strptime(raw, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    return when.timestamp()


def certificate_expiries(settings: config.GatewaySettings) -> list[Expiry]:
    """The notAfter of every certificate the configuration names: ``[tls] certificate``
    (``server``, the chain file's every certificate), ``client_ca`` (``client-ca``), each route's
    ``upstream_certificate`` (``upstream-client``) and ``upstream_ca`` (``upstream-ca``); a file
    named twice is listed once. A file that no longer reads is left out."""
    from gateway.tls import load_certificates

    files: list[tuple[str, Path]] = []
    if settings.tls is not None:
        files += [("server", settings.tls.certificate), ("client-ca", settings.tls.client_ca)]
    for route in settings.routes:
        if route.upstream.certificate is not None:
            files.append(("upstream-client", route.upstream.certificate))
        if route.upstream.ca is not None:
            files.append(("upstream-ca", route.upstream.ca))
    found = []
    for role, path in dict.fromkeys(files):
        try:
            certificates = load_certificates(config.Location(path, "status"), path)
        except (config.ConfigError, OSError):
            continue
        found += [Expiry(role, str(path), index, _not_after(c))
                  for index, c in enumerate(certificates)]
    return found


def crl_next_updates(settings: config.GatewaySettings) -> list[tuple[str, int, float]]:
    """``(file, index, nextUpdate)`` of each CRL in ``[tls] crl`` that has a nextUpdate (RFC 5280
    §5.1.2.5) and that ``cryptography`` reads."""
    if settings.tls is None or settings.tls.crl is None:
        return []
    path = settings.tls.crl
    begin = b"-----BEGIN X509 CRL-----"
    try:
        blocks = [begin + block for block in path.read_bytes().split(begin)[1:]]
    except OSError:
        return []
    found = []
    for index, block in enumerate(blocks):
        try:
            next_update = x509.load_pem_x509_crl(block).next_update_utc
        except ValueError:
            continue
        if next_update is not None:
            found.append((str(path), index, next_update.timestamp()))
    return found


class _Sampled(Collector):
    """Gauges whose values are read at scrape time from *sample* (labels tuple -> value)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 sample: Callable[[], Iterable[tuple[tuple[str, ...], float]]]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._sample = sample

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, value in self._sample():
            family.add_metric(labels, value)
        yield family


_CONNECTIONS = ("mtlsgw_connections_open",
                "Open client connections past their TLS handshake, by protocol (h1, h2, "
                "websocket).", ("listener", "protocol"))
_POOL = ("mtlsgw_upstream_pool_connections",
         "Connections to a route's upstream: idle in its pool, or active (carrying a request).",
         ("route", "state"))


class GatewayMetrics:
    """The metric families of one process (see the module docstring). *role* is ``single``,
    ``worker`` or ``supervisor``."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = registry = CollectorRegistry()
        self._expiries: list[Expiry] = []
        self._crls: list[tuple[str, int, float]] = []
        self._listeners: dict[str, ListenerMetrics] = {}
        self._sampled: dict[str, set[tuple[str, ...]]] = {}
        self._connections: Callable[[], Iterable[tuple[tuple[str, ...], float]]] = list
        self._pools: Callable[[], Iterable[tuple[tuple[str, ...], float]]] = list
        if role != "supervisor":
            self._request_families(registry)
        if role == "worker":
            self._live = {
                "connections": Gauge(*_CONNECTIONS, registry=registry,
                                     multiprocess_mode="livesum"),
                "pools": Gauge(*_POOL, registry=registry, multiprocess_mode="livesum"),
            }
        else:
            self._config_families(registry)
        if role == "single":
            registry.register(_Sampled(*_CONNECTIONS, lambda: self._connections()))
            registry.register(_Sampled(*_POOL, lambda: self._pools()))

    def _request_families(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mtlsgw_requests", "Requests answered, by listener, route, status code and "
            "authorization decision (allow, deny, - for none).",
            ("listener", "route", "code", "decision"), registry=registry)
        self.denials = Counter(
            "mtlsgw_denials", "Requests denied by the authorizers (403), by route and reason id.",
            ("route", "reason"), registry=registry)
        self.request_duration = Histogram(
            "mtlsgw_request_duration_seconds", "From the request head parsed to the last byte "
            "of the response sent (or the abort).", ("route",), buckets=_DURATION_BUCKETS,
            registry=registry)
        self.upstream_response = Histogram(
            "mtlsgw_upstream_response_seconds", "From the request handed to the upstream "
            "connection to the upstream's response head.", ("route",),
            buckets=_DURATION_BUCKETS, registry=registry)
        self.upstream_failures = Counter(
            "mtlsgw_upstream_failures", "Upstream requests that failed, by kind (the access "
            "line's upstream_status).", ("route", "kind"), registry=registry)
        self.request_bytes = Counter(
            "mtlsgw_request_bytes", "Request body bytes received from clients.", ("route",),
            registry=registry)
        self.response_bytes = Counter(
            "mtlsgw_response_bytes", "Response body bytes sent to clients.", ("route",),
            registry=registry)
        self.handshakes = Counter(
            "mtlsgw_handshakes", "TLS handshakes, by result (success, failure).",
            ("listener", "result"), registry=registry)
        self.handshake_failures = Counter(
            "mtlsgw_handshake_failures", "Failed TLS handshakes, by reason class.",
            ("listener", "reason"), registry=registry)
        self.handshake_seconds = Histogram(
            "mtlsgw_handshake_seconds", "Duration of successful TLS handshakes, from accept.",
            ("listener",), buckets=_DURATION_BUCKETS, registry=registry)
        self.authorizer_seconds = Histogram(
            "mtlsgw_authorizer_seconds", "Time an authorizer took to decide.", ("authorizer",),
            buckets=_AUTHORIZER_BUCKETS, registry=registry)
        self.authorizer_errors = Counter(
            "mtlsgw_authorizer_errors", "Authorizer calls that failed (error) or timed out "
            "(timeout); each counts as a denial.", ("authorizer", "kind"), registry=registry)

    def _config_families(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter("mtlsgw_reloads", "Reloads (SIGHUP), by result (success, "
                               "failure).", ("result",), registry=registry)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.last_success = Gauge(
            "mtlsgw_config_last_reload_success_timestamp_seconds", "When the configuration in "
            "force was loaded (start or reload).", registry=registry)
        self.last_successful = Gauge(
            "mtlsgw_config_last_reload_successful", "1 if the last reload (or the start) "
            "succeeded, 0 if it was refused.", registry=registry)
        self.generation = Gauge("mtlsgw_config_generation", "Configurations loaded: 1 at start, "
                                "+1 per successful reload.", registry=registry)
        registry.register(_Sampled(
            "mtlsgw_certificate_not_after_timestamp_seconds", "notAfter of each configured "
            "certificate (seconds since the epoch).", ("role", "file", "index"),
            lambda: [((e.role, e.file, str(e.index)), e.not_after) for e in self._expiries]))
        registry.register(_Sampled(
            "mtlsgw_crl_next_update_timestamp_seconds", "nextUpdate of each CRL in [tls] crl "
            "(seconds since the epoch).", ("file", "index"),
            lambda: [((f, str(i)), t) for f, i, t in self._crls]))
        ProcessCollector(registry=registry)

    # -- wiring ------------------------------------------------------------------------------------

    def listener(self, name: str) -> ListenerMetrics:
        """The :class:`ListenerMetrics` of listener *name* (one per name)."""
        if name not in self._listeners:
            self._listeners[name] = ListenerMetrics(self, name)
        return self._listeners[name]

    def read_workers(self, directory: str) -> None:
        """The supervisor: add the workers' metrics in *directory* to every scrape."""
        MultiProcessCollector(self.registry, path=directory)

    def authorizer(self, name: str, inner: Any) -> TimedAuthorizer:
        """*inner*, the authorizer configured as *name*, timed and counted."""
        return TimedAuthorizer(inner, self.authorizer_seconds.labels(name),
                               self.authorizer_errors.labels(name, "error"),
                               self.authorizer_errors.labels(name, "timeout"))

    def sample_from(self, connections: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
                    pools: Callable[[], Iterable[tuple[tuple[str, ...], float]]]) -> None:
        """Where ``mtlsgw_connections_open`` and ``mtlsgw_upstream_pool_connections`` come
        from: read at scrape time (``single``), or by :meth:`sample` (``worker``)."""
        self._connections, self._pools = connections, pools

    def sample(self) -> None:
        """A worker: copy the live values into the multiprocess gauges."""
        for key, source in (("connections", self._connections), ("pools", self._pools)):
            gauge = self._live[key]
            current = dict(source())
            # A multiprocess gauge keeps a value once written: gone label sets are set to 0.
            for labels in self._sampled.get(key, set()) - current.keys():
                gauge.labels(*labels).set(0)
            for labels, value in current.items():
                gauge.labels(*labels).set(value)
            self._sampled[key] = set(current)

    def configured(self, settings: config.GatewaySettings | None, reload: bool | None) -> None:
        """A configuration was loaded: at start (*reload* ``None``), or by a successful reload
        (``True``); ``False``: a reload was refused and the previous one stays in force."""
        if reload is not None:
            self.reloads.labels("success" if reload else "failure").inc()
        self.last_successful.set(0 if reload is False else 1)
        if reload is False or settings is None:
            return
        self.last_success.set(time.time())
        self.generation.inc()
        self._expiries = certificate_expiries(settings)
        self._crls = crl_next_updates(settings)
