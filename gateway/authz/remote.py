"""Authorizer type ``http``: ask an authorization service, as Envoy's HTTP ``ext_authz`` and
nginx's ``auth_request`` do (what is sent and what the answer means: :mod:`gateway.authz.
remote_http`).

The service is reached with the gateway's own upstream client (:mod:`gateway.http.pool`): a
keep-alive pool, ``https://`` with the upstream TLS settings (trust, name check, client
certificate). Every failure fails closed: a status other than 2xx/401/403, no answer within
``timeout``, a refused connection or an unusable answer denies with ``authorizer-unavailable``
(with ``on_error = allow``: allows, with that reason). At most ``max_in_flight`` checks are
under way at once; one more is answered at once with ``authorizer-busy`` (never queued). With
``cache_ttl`` the answers (allow, deny) are kept that many seconds, keyed by the certificate's
fingerprint and everything sent (:func:`~gateway.authz.remote_http.cache_key`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.authz.interfaces import (
    ClientIdentity,
    Decision,
    IAuthorizer,
    IAuthorizerType,
    OptionError,
    Options,
    RequestInfo,
)
from gateway.authz.registry import BuildContext
from gateway.authz.remote_http import cache_key as make_cache_key
from gateway.authz.remote_http import check_headers, header_name_problem, interpret
from gateway.config import ConfigError, UpstreamSettings, parse_list

log = Logger(namespace="mtlsgw.authz")

CACHE_SIZE = 10000  # decisions kept at most; the oldest go first
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


@attrs.frozen
class RemoteSettings:
    """One ``[authorizer:NAME]`` of type ``http``, validated (see docs/configuration.md)."""

    name: str
    upstream: UpstreamSettings  # the service, as the upstream client takes it
    target: bytes  # the request target of the check (path and query of ``url``)
    timeout: float  # seconds for the whole check
    on_error_allow: bool
    max_in_flight: int
    cache_ttl: float  # seconds; 0 = no cache
    forward_headers: tuple[bytes, ...]  # lower-cased
    allowed_upstream_headers: frozenset[bytes]  # lower-cased
    reason_header: bytes  # lower-cased
    forward_certificate: bool


class _Check:
    """One check on the wire: the upstream client's sink, firing ``result`` once."""

    def __init__(self, authorizer: HTTPAuthorizer, key: tuple[object, ...] | None) -> None:
        self.authorizer = authorizer
        self.key = key
        self.result: Deferred[Decision] = Deferred(lambda _: self._cancelled())
        self.request: Any = None
        self.timer: Any = None
        self.done = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []

    def _finish(self, decision: Decision | str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.result.callback(self.authorizer.settled(self.key, decision))

    def _cancelled(self) -> None:  # the policy's own timeout gave up on this check
        if not self.done:
            self.done = True
            self._stop()
            self.authorizer.settled(None, "cancelled")

    def _stop(self) -> None:
        if self.request is not None:
            self.request.cancel()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def expire(self) -> None:
        self.timer = None
        self._stop()
        self._finish(f"no answer within {self.authorizer.settings.timeout} s")

    # -- the upstream client's sink (gateway.http.pool.ResponseSink) ---------------------------

    def upstream_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]],
                      length: int | None) -> None:
        self._status, self._headers = status, headers

    def upstream_data(self, data: bytes) -> None:
        pass  # the body is not read for anything

    def upstream_end(self) -> None:
        settings = self.authorizer.settings
        self._finish(interpret(self._status, self._headers, settings.reason_header,
                               settings.allowed_upstream_headers))

    def upstream_failed(self, kind: str, detail: str) -> None:
        self._finish(f"{kind}: {detail}")

    def upstream_broke(self, detail: str) -> None:
        self._finish(f"upstream-error: {detail}")

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


@implementer(IAuthorizer)
class HTTPAuthorizer:
    """Asks the service of *settings* (see the module docstring). The connection pool is made
    on the first check, on *reactor* (the global one when ``None``); :meth:`close` closes it.

    Counters for the operator and the metrics: ``checks`` (sent), ``cache_hits``, ``busy``
    (refused over ``max_in_flight``), ``errors`` (no usable answer), ``in_flight`` (now).
    """

    def __init__(self, settings: RemoteSettings, tls: Any = None, reactor: Any = None) -> None:
        self.settings = settings
        self._tls = tls
        self._reactor = reactor
        self._upstream: Any = None
        self._sweep: Any = None
        self._cache: dict[tuple[object, ...], tuple[float, Decision]] = {}
        self.in_flight = 0
        self.checks = self.cache_hits = self.busy = self.errors = 0
        reason = "authorizer-unavailable"
        self._error = Decision.allow(reason) if settings.on_error_allow else Decision.deny(reason)
        self._busy = (Decision.allow("authorizer-busy") if settings.on_error_allow
                      else Decision.deny("authorizer-busy"))
        self._head_start = b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (
            settings.target, _authority(settings.upstream).encode("idna"))

    def _start(self) -> Any:
        from gateway.http.pool import Upstream
        from gateway.http.server import Sweep

        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._sweep = Sweep(self._reactor, 0.25)
        self._sweep.start()
        self._upstream = Upstream(self.settings.upstream, self._reactor, self._sweep, self._tls)
        return self._upstream

    def authorize(self, identity: ClientIdentity | None,
                  request: RequestInfo) -> Decision | Deferred[Decision]:
        settings = self.settings
        key = None
        if settings.cache_ttl:
            key = make_cache_key(identity, request, settings.forward_headers)
            cached = self._cache.get(key)
            if cached is not None:
                if cached[0] > self._now():
                    self.cache_hits += 1
                    return cached[1]
                del self._cache[key]
        if self.in_flight >= settings.max_in_flight:
            self.busy += 1
            return self._busy
        headers = check_headers(identity, request, settings.forward_headers,
                                settings.forward_certificate)
        head = b"".join([self._head_start, *[b"%s: %s\r\n" % pair for pair in headers], b"\r\n"])
        upstream = self._upstream or self._start()
        check = _Check(self, key)
        self.in_flight += 1
        self.checks += 1
        check.timer = self._reactor.callLater(settings.timeout, check.expire)
        check.request = upstream.request(b"GET", head, 0, check)
        return check.result

    def _now(self) -> float:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return float(self._reactor.seconds())

    def settled(self, key: tuple[object, ...] | None, outcome: Decision | str) -> Decision:
        """A check ended with *outcome* (a Decision, or a problem): count, cache, log."""
        self.in_flight -= 1
        if isinstance(outcome, Decision):
            if key is not None:
                cache = self._cache
                if len(cache) >= CACHE_SIZE:
                    del cache[next(iter(cache))]
                cache[key] = (self._now() + self.settings.cache_ttl, outcome)
            return outcome
        self.errors += 1
        if outcome != "cancelled":
            log.warn("authorizer {name}: {url}: {problem}; {verdict}", name=self.settings.name,
                     url=self.settings.upstream.url, problem=outcome,
                     verdict="allowing (on_error = allow)" if self.settings.on_error_allow
                     else "denying")
        return self._error

    def close(self) -> None:
        """Close the pooled connections (a reload replaced this authorizer, or shutdown)."""
        if self._upstream is not None:
            self._upstream.close()
        if self._sweep is not None:
            self._sweep.stop()
        self._cache.clear()


def _authority(settings: UpstreamSettings) -> str:
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    default = 443 if settings.scheme == "https" else 80
    return host if settings.port == default else f"{host}:{settings.port}"


def _seconds(options: Options, key: str, default: float, allow_zero: bool = False) -> float:
    raw = options.get(key, "").strip()
    if not raw:
        return default
    try:
        if not raw.isascii() or "_" in raw:  # float() takes 1_0 and other scripts' digits
            raise ValueError(raw)
        value = float(raw)
    except ValueError:
        raise OptionError(key, "must be a number of seconds") from None
    if value != value or value < 0 or (value == 0 and not allow_zero) or value > 86400:
        bound = "at least 0" if allow_zero else "more than 0"
        raise OptionError(key, f"must be {bound} and at most 86400 seconds")
    return value


def _names(options: Options, key: str) -> tuple[bytes, ...]:
    names = []
    for name in parse_list(options.get(key, "")):
        problem = header_name_problem(name)
        if problem is not None:
            raise OptionError(key, problem)
        names.append(name.lower().encode("ascii"))
    return tuple(dict.fromkeys(names))


def _file(options: Options, key: str, base: Path) -> Path | None:
    raw = options.get(key, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise OptionError(key, f"file not found: {path}")
    return path


def parse_settings(name: str, options: Options, context: BuildContext) -> RemoteSettings:
    """Validate the options of ``[authorizer:NAME]`` of type ``http``; raises
    :class:`OptionError` naming the key."""
    url = options.get("url", "").strip()
    if not url:
        raise OptionError("url", "required: the authorization service's http:// or https:// URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OptionError("url", f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OptionError("url", "must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.fragment:
        raise OptionError("url", "must not carry user info or a fragment")
    if any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in url):
        raise OptionError("url", "must be printable ASCII without spaces")
    tls_keys = ("ca", "certificate", "private_key", "server_name")
    if parts.scheme == "http":
        for key in tls_keys:
            if options.get(key, "").strip():
                raise OptionError(key, "only meaningful for an https:// url")
    certificate = _file(options, "certificate", context.config_dir)
    private_key = _file(options, "private_key", context.config_dir)
    if (certificate is None) != (private_key is None):
        raise OptionError("certificate" if certificate is None else "private_key",
                          "give both certificate and private_key, or neither")
    timeout = _seconds(options, "timeout", 1.0)
    if context.authorize_timeout and timeout >= context.authorize_timeout:
        raise OptionError("timeout", f"must be below [authorize] timeout "
                          f"({context.authorize_timeout:g} s), whose expiry is authorizer-error")
    on_error = options.get("on_error", "deny").strip().lower() or "deny"
    if on_error not in ("deny", "allow"):
        raise OptionError("on_error", "must be deny or allow")
    raw_max = options.get("max_in_flight", "").strip() or "64"
    if not (raw_max.isascii() and raw_max.isdigit()) or not 1 <= int(raw_max) <= 100000:
        raise OptionError("max_in_flight", "must be an integer between 1 and 100000")
    reason_header = options.get("reason_header", "").strip() or "X-Authz-Reason"
    if header_name_problem(reason_header) is not None:
        raise OptionError("reason_header", f"{reason_header!r} is not a usable header name")
    certificate_flag = options.get("forward_certificate", "no").strip().lower() or "no"
    if certificate_flag not in _BOOLEANS:
        raise OptionError("forward_certificate", "must be yes or no")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    upstream = UpstreamSettings(
        url=url, scheme=parts.scheme, host=parts.hostname, port=port, base_path="",
        pool_size=int(raw_max), connect_timeout=timeout, response_timeout=timeout,
        ca=_file(options, "ca", context.config_dir), certificate=certificate,
        private_key=private_key, server_name=options.get("server_name", "").strip() or None,
        host_header="upstream")
    return RemoteSettings(
        name=name, upstream=upstream, target=target.encode("ascii"), timeout=timeout,
        on_error_allow=on_error == "allow", max_in_flight=int(raw_max),
        cache_ttl=_seconds(options, "cache_ttl", 0.0, allow_zero=True),
        forward_headers=_names(options, "forward_headers"),
        allowed_upstream_headers=frozenset(_names(options, "allowed_upstream_headers")),
        reason_header=reason_header.lower().encode("ascii"),
        forward_certificate=_BOOLEANS[certificate_flag],
    )


@implementer(IPlugin, IAuthorizerType)
class _HTTPType:
    name = "http"
    keys = frozenset({"url", "timeout", "on_error", "max_in_flight", "cache_ttl",
                      "forward_headers", "allowed_upstream_headers", "reason_header",
                      "forward_certificate", "ca", "certificate", "private_key", "server_name"})

    def build(self, name: str, options: Options) -> HTTPAuthorizer:
        return self.build_in(name, options, BuildContext(Path.cwd()))

    def build_in(self, name: str, options: Options, context: BuildContext) -> HTTPAuthorizer:
        settings = parse_settings(name, options, context)
        tls = None
        if settings.upstream.scheme == "https":
            from gateway.upstream_tls import UpstreamTLS

            try:
                tls = UpstreamTLS(settings.upstream)
            except ConfigError as exc:
                key = ("private_key" if "upstream_private_key" in str(exc) else
                       "certificate" if settings.upstream.certificate is not None else "ca")
                raise OptionError(key, str(exc)) from None
        return HTTPAuthorizer(settings, tls)


http_type = _HTTPType()
