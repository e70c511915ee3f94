"""The gateway's Prometheus metrics (docs/operations.md#metrics), exposed with
``prometheus_client``.

:class:`GatewayMetrics` owns one ``CollectorRegistry`` (never the global one). The values are
plain counts kept per labelled child (:class:`Count`, :class:`Timing`), resolved once per
listener, route, status and decision and then held by the objects that count: a request costs a
few attribute increments and one bucket search per histogram (about 1 µs), where
``prometheus_client``'s own metric objects, with a lock per value, cost some 8 µs, several per
cent of a small keep-alive request (docs/performance.md). At scrape time a collector turns the
counts into ``prometheus_client`` metric families, which ``generate_latest`` writes in the text
exposition format.

Where it counts depends on the *role*:

* ``single`` (one process): everything, exposed from this process;
* ``worker`` (a worker of ``workers = N``): the request-side families (requests, handshakes,
  authorizers, connections, pools), written as a JSON snapshot to the supervisor's directory
  every :data:`SAMPLE_INTERVAL` seconds and when it stops (:meth:`GatewayMetrics.write_snapshot`);
* ``supervisor``: the configuration and certificate families and its own process metrics, plus
  the sum of the workers' snapshots at scrape time; a worker that exits has its counters folded
  into the supervisor's (:meth:`GatewayMetrics.retire`), its gauges dropped.

Labels are bounded: listener, route and authorizer names from the configuration, status codes,
reason ids, closed sets; never a subject, fingerprint, path or client address.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as TimedOut
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import config
from gateway.authz.interfaces import Decision, IAuthorizer
from gateway.handshake_failure import REASONS

SAMPLE_INTERVAL = 1.0  # seconds between two snapshots of a worker

# upstream_failures_total{kind}: the access line's upstream_status values that are failures.
UPSTREAM_FAILURES = ("upstream-unreachable", "upstream-error", "timeout",
                     "upstream-head-too-large", "aborted")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
AUTHORIZER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.25, 0.5, 1.0, 2.5, 5.0)
_VERDICTS = ("-", "allow", "deny")


@functools.lru_cache(maxsize=256)
def upstream_failure(status: str) -> str | None:
    """The ``kind`` of an access line's non-numeric ``upstream_status``, or ``None`` when it is
    no upstream failure (``-``, ``client-gone``, ``drain-timeout``): ``upstream-unreachable``,
    ``upstream-error``, ``timeout``, ``upstream-head-too-large``, or ``aborted``
    (``<code>-aborted``: the response was cut after its head)."""
    for ended in ("-client-gone", "-drain-timeout"):  # the client side ended it
        if status.endswith(ended):
            status = status[: -len(ended)]
    if status.endswith("-aborted"):
        return "aborted"
    return status if status in UPSTREAM_FAILURES else None


# -- values ---------------------------------------------------------------------------------------


class Count:
    """One counter or gauge child: ``value``, incremented (or set) in place."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Timing:
    """One histogram child: ``counts[i]`` observations in bucket *i* (not cumulative; the last
    one is ``+Inf``), and their ``sum``, in seconds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, the bucket "le" that holds it.
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


class Family:
    """One metric family: *name* (without ``_total``), *kind* (``counter``, ``gauge``,
    ``histogram``), label names, and its children by label values."""

    def __init__(self, name: str, documentation: str, kind: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.labels = labels
        self.buckets = buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def labels_(self, *values: str) -> Any:
        """The child for label *values* (made on first use): a :class:`Count` or
        :class:`Timing`."""
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = (Timing(self.buckets) if self.kind == "histogram"
                                             else Count())
        return child

    def exposed(self, children: dict[tuple[str, ...], Any]) -> Metric:
        """*children* (this family's, or a sum of several processes') as a
        ``prometheus_client`` family."""
        metric: Metric
        if self.kind == "histogram":
            metric = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
            for values, (counts, total) in children.items():
                cumulative, buckets = 0, []
                for bound, count in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                metric.add_metric(list(values), buckets, total)
            return metric
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        metric = cls(self.name, self.documentation, labels=self.labels)
        for values, value in children.items():
            metric.add_metric(list(values), value)
        return metric

    def plain(self) -> dict[tuple[str, ...], Any]:
        """The children as plain values: a number, or ``(counts, sum)`` for a histogram."""
        if self.kind == "histogram":
            return {k: (list(t.counts), t.sum) for k, t in self.children.items()}
        return {k: c.value for k, c in self.children.items()}


def _add(kind: str, into: dict[tuple[str, ...], Any], values: tuple[str, ...], value: Any) -> None:
    if kind != "histogram":
        into[values] = into.get(values, 0.0) + value
        return
    counts, total = into.get(values, ([0] * len(value[0]), 0.0))
    into[values] = ([a + b for a, b in zip(counts, value[0], strict=True)], total + value[1])


# -- per listener and route ---------------------------------------------------------------------


MAX_DENIAL_REASONS = 64  # distinct reason values per route; later ones count as OTHER_REASON
OTHER_REASON = "other"


class RouteMetrics:
    """The children of one route (``-``: requests that found none) on one listener."""

    def __init__(self, metrics: GatewayMetrics, listener: str, route: str) -> None:
        self._metrics = metrics
        self._listener = listener
        self.route = route
        self.requests: dict[int, Count] = {}  # by status * 4 + verdict index
        self.denials: dict[str, Count] = {}  # by reason id
        self.failures: dict[str, Count] = {}  # by kind
        self.duration: Timing = metrics.request_duration.labels_(route)
        self.upstream_response: Timing = metrics.upstream_response.labels_(route)
        self.request_bytes: Count = metrics.request_bytes.labels_(route)
        self.response_bytes: Count = metrics.response_bytes.labels_(route)

    def count_request(self, status: int, verdict: int) -> None:
        """One request answered with *status* (0: none) and *verdict* (an index of
        ``_VERDICTS``); its counter is looked up by one int, made on first use."""
        key = status * 4 + verdict
        counter = self.requests.get(key)
        if counter is None:
            counter = self.requests[key] = self._metrics.requests.labels_(
                self._listener, self.route, str(status) if status else "-", _VERDICTS[verdict])
        counter.value += 1

    def denial(self, reason: str) -> Count:
        child = self.denials.get(reason)
        if child is None:
            if len(self.denials) >= MAX_DENIAL_REASONS:
                # Reasons come from plugins and authorization services too: keep the label set
                # bounded whatever they answer.
                reason = OTHER_REASON
                child = self.denials.get(reason)
                if child is not None:
                    return child
            child = self.denials[reason] = self._metrics.denials.labels_(self.route, reason)
        return child

    def failure(self, kind: str) -> Count:
        child = self.failures.get(kind)
        if child is None:
            child = self.failures[kind] = self._metrics.upstream_failures.labels_(self.route,
                                                                                   kind)
        return child


class ListenerMetrics:
    """What a :class:`~gateway.http.server.Listener` reports to (its ``metrics`` attribute)."""

    def __init__(self, metrics: GatewayMetrics, name: str) -> None:
        self._metrics = metrics
        self.name = name
        self._routes: dict[str, RouteMetrics] = {}
        self._none = RouteMetrics(metrics, name, "-")
        self._handshakes_ok: Count = metrics.handshakes.labels_(name, "success")
        self._handshakes_failed: Count = metrics.handshakes.labels_(name, "failure")
        self._handshake_seconds: Timing = metrics.handshake_seconds.labels_(name)
        self._handshake_failures: dict[str, Count] = {
            reason: metrics.handshake_failures.labels_(name, reason) for reason in REASONS}

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
        metrics.count_request(status, verdict)
        metrics.duration.observe(time.monotonic() - exchange.started)
        if verdict == 2:
            metrics.denial(decision.reason).value += 1
        upstream_status = exchange.upstream_status
        if upstream_status.__class__ is str and upstream_status != "-":
            kind = upstream_failure(upstream_status)
            if kind is not None:
                metrics.failure(kind).value += 1
        if exchange.upstream_headed:
            metrics.upstream_response.observe(exchange.upstream_headed - exchange.upstream_sent)
        if exchange.received_bytes:
            metrics.request_bytes.value += exchange.received_bytes
        if exchange.sent_bytes:
            metrics.response_bytes.value += exchange.sent_bytes

    def refused(self, status: int) -> None:
        """Count an HTTP/1.1 request refused while its head was read (400, 408, 431; no
        exchange, no route), as ``route="-"``, ``decision="-"``: what HTTP/2 counts for the
        same refusals, which answer one stream."""
        self._none.count_request(status, 0)

    def handshake_completed(self, seconds: float) -> None:
        """A TLS handshake succeeded after *seconds*."""
        self._handshakes_ok.value += 1
        self._handshake_seconds.observe(seconds)

    def handshake_failed(self, reason: str) -> None:
        """A TLS handshake failed; *reason* is one of :data:`~gateway.handshake_failure.REASONS`."""
        self._handshakes_failed.value += 1
        self._handshake_failures[reason].value += 1


@implementer(IAuthorizer)
class TimedAuthorizer:
    """An authorizer as configured, timed into ``mtlsgw_authorizer_seconds`` and counted into
    ``mtlsgw_authorizer_errors_total`` (``error``: raised, failed, or returned no
    :class:`Decision`; ``timeout``: cancelled by the policy's ``timeout``). Decisions pass
    through unchanged: the policy still fails closed on its own."""

    def __init__(self, inner: Any, seconds: Timing, errors: Count, timeouts: Count) -> None:
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
            self._errors.value += 1
            raise
        # A Decision first: isinstance against Deferred (an ABC, through Awaitable) costs more
        # than the authorizer itself for most built-in ones.
        if result.__class__ is not Decision:
            if isinstance(result, Deferred):
                return result.addBoth(self._done, started)
            if not isinstance(result, Decision):
                self._errors.value += 1
        self._seconds.observe(time.perf_counter() - started)
        return result

    def _done(self, result: Any, started: float) -> Any:
        self._seconds.observe(time.perf_counter() - started)
        if isinstance(result, Failure):
            timed_out = result.check(CancelledError, TimedOut) is not None
            (self._timeouts if timed_out else self._errors).value += 1
        elif not isinstance(result, Decision):
            self._errors.value += 1
        return result


# -- certificates ---------------------------------------------------------------------------------


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


# -- the families ---------------------------------------------------------------------------------

Sample = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class _Exposed(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()


class GatewayMetrics:
    """The metric families of one process (see the module docstring). *role* is ``single``,
    ``worker`` or ``supervisor``."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        self._listeners: dict[str, ListenerMetrics] = {}
        self._connections: Sample = list
        self._pools: Sample = list
        self._workers: Path | None = None  # the supervisor's directory of worker snapshots
        self._retired: dict[str, dict[tuple[str, ...], Any]] = {}  # exited workers' counts
        self._reasons: dict[str, set[str]] = {}  # the supervisor: denial reasons shown, by route

        # Counted where requests are served (single, worker).
        self.requests = Family(
            "mtlsgw_requests", "Requests answered, by listener, route, status code and "
            "authorization decision (allow, deny, - for none).", "counter",
            ("listener", "route", "code", "decision"))
        self.denials = Family(
            "mtlsgw_denials", "Requests denied by the authorizers (403), by route and reason id.",
            "counter", ("route", "reason"))
        self.request_duration = Family(
            "mtlsgw_request_duration_seconds", "From the request head parsed to the last byte "
            "of the response sent (or the abort).", "histogram", ("route",), DURATION_BUCKETS)
        self.upstream_response = Family(
            "mtlsgw_upstream_response_seconds", "From the request handed to the upstream "
            "connection to the upstream's response head.", "histogram", ("route",),
            DURATION_BUCKETS)
        self.upstream_failures = Family(
            "mtlsgw_upstream_failures", "Upstream requests that failed, by kind (the access "
            "line's upstream_status).", "counter", ("route", "kind"))
        self.request_bytes = Family(
            "mtlsgw_request_bytes", "Request body bytes received from clients.", "counter",
            ("route",))
        self.response_bytes = Family(
            "mtlsgw_response_bytes", "Response body bytes sent to clients.", "counter",
            ("route",))
        self.handshakes = Family(
            "mtlsgw_handshakes", "TLS handshakes, by result (success, failure).", "counter",
            ("listener", "result"))
        self.handshake_failures = Family(
            "mtlsgw_handshake_failures", "Failed TLS handshakes, by reason class.", "counter",
            ("listener", "reason"))
        self.handshake_seconds = Family(
            "mtlsgw_handshake_seconds", "Duration of successful TLS handshakes, from accept.",
            "histogram", ("listener",), DURATION_BUCKETS)
        self.authorizer_seconds = Family(
            "mtlsgw_authorizer_seconds", "Time an authorizer took to decide.", "histogram",
            ("authorizer",), AUTHORIZER_BUCKETS)
        self.authorizer_errors = Family(
            "mtlsgw_authorizer_errors", "Authorizer calls that failed (error) or timed out "
            "(timeout); each counts as a denial.", "counter", ("authorizer", "kind"))
        self.connections_open = Family(
            "mtlsgw_connections_open", "Open client connections past their TLS handshake, by "
            "protocol (h1, h2, websocket).", "gauge", ("listener", "protocol"))
        self.pool_connections = Family(
            "mtlsgw_upstream_pool_connections", "Connections to a route's upstream: idle in its "
            "pool, or active (carrying a request).", "gauge", ("route", "state"))
        self.request_side = (
            self.requests, self.denials, self.request_duration, self.upstream_response,
            self.upstream_failures, self.request_bytes, self.response_bytes, self.handshakes,
            self.handshake_failures, self.handshake_seconds, self.authorizer_seconds,
            self.authorizer_errors, self.connections_open, self.pool_connections)
        # Kept where the status listener is (single, supervisor).
        self.reloads = Family("mtlsgw_reloads", "Reloads (SIGHUP), by result (success, "
                              "failure).", "counter", ("result",))
        for result in ("success", "failure"):
            self.reloads.labels_(result)
        self.last_success = Family(
            "mtlsgw_config_last_reload_success_timestamp_seconds", "When the configuration in "
            "force was loaded (start or reload).", "gauge")
        self.last_successful = Family(
            "mtlsgw_config_last_reload_successful", "1 if the last reload (or the start) "
            "succeeded, 0 if it was refused.", "gauge")
        self.generation = Family(
            "mtlsgw_config_generation", "Configurations loaded: 1 at start, +1 per successful "
            "reload.", "gauge")
        self.not_after = Family(
            "mtlsgw_certificate_not_after_timestamp_seconds", "notAfter of each configured "
            "certificate (seconds since the epoch).", "gauge", ("role", "file", "index"))
        self.next_update = Family(
            "mtlsgw_crl_next_update_timestamp_seconds", "nextUpdate of each CRL in [tls] crl "
            "(seconds since the epoch).", "gauge", ("file", "index"))
        self.serving_side = (self.reloads, self.last_success, self.last_successful,
                             self.generation, self.not_after, self.next_update)
        if role != "worker":
            self.registry.register(_Exposed(self))
            ProcessCollector(registry=self.registry)

    # -- wiring ----------------------------------------------------------------------------------

    def listener(self, name: str) -> ListenerMetrics:
        """The :class:`ListenerMetrics` of listener *name* (one per name)."""
        if name not in self._listeners:
            self._listeners[name] = ListenerMetrics(self, name)
        return self._listeners[name]

    def authorizer(self, name: str, inner: Any) -> TimedAuthorizer:
        """*inner*, the authorizer configured as *name*, timed and counted."""
        return TimedAuthorizer(inner, self.authorizer_seconds.labels_(name),
                               self.authorizer_errors.labels_(name, "error"),
                               self.authorizer_errors.labels_(name, "timeout"))

    def sample_from(self, connections: Sample, pools: Sample) -> None:
        """Where ``mtlsgw_connections_open`` and ``mtlsgw_upstream_pool_connections`` come
        from; they are read when the families are collected or snapshotted."""
        self._connections, self._pools = connections, pools

    def configured(self, settings: config.GatewaySettings | None, reload: bool | None) -> None:
        """A configuration was loaded: at start (*reload* ``None``), or by a successful reload
        (``True``); ``False``: a reload was refused and the previous one stays in force."""
        if reload is not None:
            self.reloads.labels_("success" if reload else "failure").value += 1
        self.last_successful.labels_().value = 0 if reload is False else 1
        if reload is False or settings is None:
            return
        self.last_success.labels_().value = time.time()
        self.generation.labels_().value += 1
        self.not_after.children.clear()
        for e in certificate_expiries(settings):
            self.not_after.labels_(e.role, e.file, str(e.index)).value = e.not_after
        self.next_update.children.clear()
        for file, index, when in crl_next_updates(settings):
            self.next_update.labels_(file, str(index)).value = when

    # -- exposition and workers ----------------------------------------------------------------

    def _live(self) -> None:
        for family, sample in ((self.connections_open, self._connections),
                               (self.pool_connections, self._pools)):
            family.children.clear()
            for values, value in sample():
                family.labels_(*values).value = value

    def collect(self) -> Iterator[Metric]:
        """Every family as ``prometheus_client`` metric families (this process's values, and
        for the supervisor the workers' added up)."""
        self._live()
        totals = {f.name: f.plain() for f in (*self.request_side, *self.serving_side)}
        if self._workers is not None:
            for name, children in self._retired.items():
                for values, value in children.items():
                    _add(self._kind(name), totals[name], values, value)
            for path in self._workers.glob("worker-*.json"):
                self._fold(totals, path, gauges=True)
            totals[self.denials.name] = self._bounded_reasons(totals[self.denials.name])
        for family in (*self.request_side, *self.serving_side):
            yield family.exposed(totals[family.name])

    def _bounded_reasons(self, denials: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], Any]:
        """The workers' denial counts added up, with at most :data:`MAX_DENIAL_REASONS` reasons
        per route across every worker, those of exited ones included, as one process keeps
        them: a reason first seen once a route shows that many counts as ``other`` from then
        on, so that every series only grows."""
        bounded: dict[tuple[str, ...], Any] = {}
        for (route, reason), value in denials.items():
            shown = self._reasons.setdefault(route, set())
            if reason != OTHER_REASON and reason not in shown:
                if len(shown) < MAX_DENIAL_REASONS:
                    shown.add(reason)
                else:
                    reason = OTHER_REASON
            bounded[(route, reason)] = bounded.get((route, reason), 0.0) + value
        return bounded

    def _kind(self, name: str) -> str:
        return next(f.kind for f in self.request_side if f.name == name)

    def _fold(self, totals: dict[str, dict[tuple[str, ...], Any]], path: Path,
              gauges: bool) -> None:
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # gone, or being replaced: the next scrape has it
        for family in self.request_side:
            if family.kind == "gauge" and not gauges:
                continue
            into = totals.setdefault(family.name, {})
            for entry in snapshot.get(family.name, []):
                *values, value = entry
                _add(family.kind, into, tuple(values), value)

    def read_workers(self, directory: str) -> None:
        """The supervisor: add the workers' snapshots in *directory* to every scrape."""
        self._workers = Path(directory)

    def retire(self, pid: int) -> None:
        """The supervisor: worker *pid* exited; keep its counters, drop its gauges."""
        if self._workers is None:
            return
        path = self._workers / f"worker-{pid}.json"
        self._fold(self._retired, path, gauges=False)
        path.unlink(missing_ok=True)

    def write_snapshot(self, directory: str) -> None:
        """A worker: write its request-side values to *directory* (``worker-PID.json``,
        replaced atomically), for the supervisor."""
        self._live()
        snapshot = {family.name: [[*values, value] for values, value in family.plain().items()]
                    for family in self.request_side}
        path = Path(directory) / f"worker-{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot))
        os.replace(temporary, path)
