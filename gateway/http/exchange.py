"""One request, whatever HTTP version carried it: check, route, authorize, relay, log.

An :class:`Exchange` starts as soon as the request head is parsed, not after the body: the
authorization decision comes first, then the upstream request starts and the client's body
streams into it as it arrives. Both directions apply backpressure: a slow upstream pauses reading
from the client, a slow client pauses reading from the upstream, so memory stays flat whatever the
body size.

Status codes the gateway writes itself: 400 (request target, method, ``Host``), 404
(``no-route``), 405 (``CONNECT``), 413 (``max_body_size``), 421 (``Host`` against SNI), 431
(HTTP/2 head size), 403 (no authorizer allowed; the body names the reason id), 502
(``upstream-unreachable``, ``upstream-error``, ``upstream-head-too-large``), 504
(``upstream-timeout``). An upstream that breaks after the response head aborts the client
connection (HTTP/2: resets the stream), so the client never takes a truncated body for a
complete one.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.authz.interfaces import Decision, RequestInfo
from gateway.authz.policy import Policy
from gateway.authz.remote_http import with_decision_headers
from gateway.config import HeaderSettings
from gateway.formats import RFC9440
from gateway.headers import upstream_request_headers, vary_for_client_cert, without_hop_by_hop
from gateway.http.pool import Upstream, UpstreamRequest
from gateway.http.problem import PROBLEM_JSON, problem_body, wants_problem_json
from gateway.http.stream import ClientStream, Header, RequestHead
from gateway.jsonlog import request_members
from gateway.logfmt import clean, logged
from gateway.pathnorm import normalize_target
from gateway.requestid import REQUEST_ID, new_request_id, trusted_request_id
from gateway.routes import upstream_target
from gateway.target import check_request, host_name

access_log = Logger(namespace="mtlsgw.access")

_REFUSAL_HEADERS = [(b"Content-Type", b"text/plain; charset=utf-8")]
_PROBLEM_HEADERS = [(b"Content-Type", PROBLEM_JSON)]
# Control characters other than HTAB (RFC 9110 §5.5): HTTP/1.1's parser refuses them in values;
# HTTP/2 forbids only NUL, CR and LF (RFC 9113 §8.2.1), so they are refused here.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
MAX_INFORMATIONAL = 8  # 1xx responses relayed per request; more are dropped
_BODILESS = (204, 304)
_NGINX_ONLY = ("nginx",)  # the default header format, which needs no peer chain


@attrs.frozen
class Route:
    """What one request needs from the configuration: who may pass, where to, which headers.

    Immutable; a reload builds new ones and new requests pick them up. ``prefix``/``host`` select
    the route (:class:`~gateway.routes.RouteTable`); ``strip_prefix`` removes the prefix from the
    path sent upstream.
    """

    name: str
    prefix: str
    host: str | None
    strip_prefix: bool
    policy: Policy
    headers: HeaderSettings
    upstream: Upstream
    normalize_path: bool = True  # False: forward the target as sent (routed on the normalised)
    deny_status: int = 403  # 404: a denial is answered exactly as a no-route 404


class Exchange:
    """One client request and its upstream counterpart, from request head to access-log line.

    Driven by its :class:`~gateway.http.stream.ClientStream` (``start``, ``body_data``,
    ``body_end``, ``client_lost``) and by its upstream request (the ``upstream_*`` calls).
    """

    def __init__(self, stream: ClientStream, head: RequestHead) -> None:
        self.stream = stream
        self.head = head
        connection = stream.connection
        self.connection = connection
        self.listener = connection.listener
        self.started = time.monotonic()
        self.route: Route | None = None
        self.target = head.target  # normalised (gateway/pathnorm.py) once routed
        self.decision: Decision | None = None
        self.local_reason: str | None = None  # why the gateway answered by itself
        self.status: int | None = None  # sent to the client
        self.upstream_status: int | str = "-"
        self.finished = False
        self.body_complete = head.content_length == 0
        self.received_bytes = 0
        self.sent_bytes = 0  # response body bytes sent to the client
        self.upstream_sent = 0.0  # monotonic time the request went to the upstream connection
        self.upstream_headed = 0.0  # ... and its response head arrived; 0.0: none
        # X-Request-Id (gateway/requestid.py): the client's only where the listener trusts it.
        self.request_id = ((self.listener.trust_request_id and trusted_request_id(head.headers))
                           or new_request_id())
        self.upstream: UpstreamRequest | None = None
        self._held: list[bytes] = []  # body bytes before the upstream request exists
        self._paused = False
        self._relay: Any = None  # a WebSocket upgrade's relay
        self._informational = 0  # 1xx responses relayed

    # -- request side ---------------------------------------------------------------------------

    def start(self) -> None:
        head = self.head
        limits = self.listener.limits
        if head.head_size > limits.max_head_size:  # HTTP/2 (HTTP/1.1's parser checks it)
            self.respond_locally(431, "request-head-too-large")
            return
        hosts = [v for n, v in head.headers if n.lower() == b"host"]
        problem = check_request(head.target, head.version, hosts, self.connection.server_name,
                                head.method)
        if problem is not None:
            self.respond_locally(*problem)
            return
        if head.method == b"CONNECT":  # a reverse proxy, not a tunnel (nor RFC 8441)
            self.respond_locally(405, "connect-not-supported")
            return
        host = hosts[0] if hosts else None
        table = self.listener.routes
        target = normalize_target(head.target, table.escaped_slashes)
        if target is None:
            self.respond_locally(400, "escaped-slash-in-path")
            return
        self.target = target
        path = target.split(b"?", 1)[0].decode("latin-1")
        self.route = table.match(host_name(host) if host else None, path)
        if self.route is None:
            self.respond_locally(404, "no-route")
            return
        # A route hidden behind deny_status = 404 answers 413 only once authorized.
        if self.route.deny_status != 404 and self._too_large(head.content_length):
            return
        info = RequestInfo(
            method=head.method.decode("latin-1"),
            path=path,
            host=host.decode("latin-1") if host is not None else None,
            server_name=self.connection.server_name,
            client_address=self.connection.peer_host,
            headers=head.headers,
            request_id=self.request_id,
            tls=self.connection.tls,
        )
        decision = self.route.policy.decide_now(self.connection.identity, info)
        if isinstance(decision, Deferred):
            decision.addCallback(self._decided)
        else:
            self._decided(decision)

    def _too_large(self, size: int | None) -> bool:
        """Refuse with 413 when *size* bytes of body exceed ``max_body_size``."""
        limit = self.listener.limits.max_body_size
        if not limit or size is None or size <= limit or self.finished:
            return False
        if self.upstream is not None:
            self.upstream.cancel()  # the upstream must not take a truncated body
        if self.status is not None:  # the upstream already answered: cannot send a 413
            self._abort_client("request body over max_body_size after the response started")
        else:
            self.respond_locally(413, "request-body-too-large")
        return True

    def body_data(self, data: bytes) -> None:
        if self.finished:
            return
        self.received_bytes += len(data)
        if self._too_large(self.received_bytes):
            return
        if self.upstream is not None:
            self.upstream.body_data(data)
        elif self._relay is None:
            self._held.append(data)
            if sum(len(d) for d in self._held) > 65536:
                self.pause_request_body()

    def body_end(self) -> None:
        self.body_complete = True
        if self.upstream is not None and not self.finished:
            self.upstream.body_end()

    def client_lost(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._relay is not None:
            self._relay.client_gone()
        if self.upstream is not None:
            self.upstream.cancel()
        lost_as = self.connection.lost_as  # client-gone, or drain-timeout
        self.upstream_status = (lost_as if self.upstream_status == "-"
                                else f"{self.upstream_status}-{lost_as}")
        self._log_access()

    def pause_request_body(self) -> None:
        if not self._paused:
            self._paused = True
            self.stream.pause_request_body()

    def resume_request_body(self) -> None:
        if self._paused:
            self._paused = False
            self.stream.resume_request_body()

    def _decided(self, decision: Decision) -> None:
        self.decision = decision
        if self.finished:
            return
        route = self.route
        assert route is not None
        if not decision.allowed:
            self._deny(decision, route)
            return
        head = self.head
        if route.deny_status == 404 and self._too_large(head.content_length):
            return
        if head.expect_continue and not self.body_complete:
            # RFC 9110 §10.1.1: only now, allowed, may the client send its body.
            self.stream.send_informational(100, [])
        upstream = route.upstream
        connection = self.connection
        hosts = [v for n, v in head.headers if n.lower() == b"host"]
        client_host = hosts[0] if hosts else None
        upstream_host = upstream.host_header(client_host)
        headers = upstream_request_headers(
            head.headers, connection.identity, route.headers, connection.peer_host, client_host,
            tls=connection.tls,
            upstream_host=upstream_host if upstream_host != client_host else None,
            intermediates=(connection.peer_chain if route.headers.formats != _NGINX_ONLY
                           else ()))
        if decision.upstream_headers or decision.upstream_replaced:  # an authorization service's
            headers = with_decision_headers(headers, decision.upstream_headers, route.headers,
                                            decision.upstream_replaced)
        headers.append((REQUEST_ID, self.request_id.encode("ascii")))
        target = upstream.base_path + upstream_target(
            self.target if route.normalize_path else head.target, route.prefix,
            route.strip_prefix)
        if head.upgrade and head.version == b"HTTP/1.1":
            from gateway.http.websocket import is_websocket_upgrade, relay

            if is_websocket_upgrade(head.method, head.headers):
                self._relay = relay(self, head.method, target, headers, upstream,
                                    self.listener.reactor)
                return
        length = head.content_length
        if not any(n.lower() == b"host" for n, _ in headers):
            headers.insert(0, (b"Host", upstream.authority.encode("idna")))
        framing: list[Header] = []
        if length is None:
            framing.append((b"Transfer-Encoding", b"chunked"))
        elif length or head.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            framing.append((b"Content-Length", b"%d" % length))
        headers += framing
        # HTTP/1.1 names passed the parser's token check; HTTP/2 allows more (RFC 9113 §8.2.1
        # keeps only controls, upper case and ":" out); h2 has checked the values.
        if head.version == b"HTTP/2" and not all(
                _is_token(n) and not _CONTROL.search(v) for n, v in head.headers):
            self.respond_locally(400, "malformed-request")
            return
        request_head = b"".join([b"%s %s HTTP/1.1\r\n" % (head.method, target),
                                 *[b"%s: %s\r\n" % pair for pair in headers], b"\r\n"])
        self.upstream_sent = time.monotonic()
        self.upstream = upstream.request(head.method, request_head, length, self)
        held, self._held = self._held, []
        for data in held:
            self.upstream.body_data(data)
        if self.body_complete and length != 0:
            self.upstream.body_end()
        self.resume_request_body()

    # -- upstream side ---------------------------------------------------------------------------

    def upstream_informational(self, status: int, headers: list[Header]) -> None:
        if not self.finished and status != 100 and self._informational < MAX_INFORMATIONAL:
            self._informational += 1
            self.stream.send_informational(status, without_hop_by_hop(headers))

    def upstream_head(self, status: int, headers: list[Header], length: int | None) -> None:
        self.upstream_status = status
        self.upstream_headed = time.monotonic()
        if self.finished:
            return
        self.status = status
        body = self.head.method != b"HEAD" and status not in _BODILESS
        if status == 204:
            length = None  # RFC 9110 §8.6: never a Content-Length on a 204
        if not self.body_complete:
            # The upstream answers before the client finished sending: close after this.
            self.stream.close_after_response()
        route = self.route
        if route is not None and RFC9440 in route.headers.formats:
            headers = vary_for_client_cert(headers)
        self.stream.send_head(status, without_hop_by_hop(headers), length, body)
        if not body:
            return
        assert self.upstream is not None
        self.stream.set_response_producer(self.upstream)

    def upstream_data(self, data: bytes) -> None:
        if not self.finished:
            self.sent_bytes += len(data)
            self.stream.send_data(data)

    def upstream_end(self) -> None:
        if self.finished:
            return
        self.stream.set_response_producer(None)
        if not self.body_complete:
            # The upstream answered before the client finished sending: close after this.
            self.stream.close_after_response()
        self._finish()

    def upstream_failed(self, kind: str, detail: str) -> None:
        if self.finished:
            return
        self.upstream_status = kind
        if kind == "timeout":
            self.respond_locally(504, "upstream-timeout")
            return
        access_log.warn("upstream request failed: {error}", error=clean(detail))
        self.respond_locally(502, kind)

    def upstream_broke(self, detail: str) -> None:
        if not self.finished:
            self._abort_client(f"upstream broke mid-response: {detail}")

    # -- WebSocket relay -------------------------------------------------------------------------

    def upgraded(self, status: int) -> None:
        """The upstream's head (101, or another status) has been written to the client."""
        if self.finished:
            return
        self.upstream_status = self.status = status
        self._log_access()
        self.finished = True

    def upgrade_failed(self, detail: str, kind: str = "upstream-unreachable") -> None:
        if self.finished:
            return
        self._relay = None
        self.upstream_status = kind
        access_log.warn("upstream request failed: {error}", error=clean(detail))
        self.respond_locally(502, kind)

    # -- endings --------------------------------------------------------------------------------

    def _deny(self, decision: Decision, route: Route) -> None:
        """Answer a denial: 403 naming the reason id (RFC 9457 problem+json when the client
        asks for JSON), or, for a ``deny_status = 404`` route, exactly the no-route 404."""
        if route.deny_status == 404:
            self.decision = Decision(False, "no-route", decision.authorizer)
            self.respond_locally(404, "no-route")
            return
        accept = [v for n, v in self.head.headers if n.lower() == b"accept"]
        if accept and wants_problem_json(accept):
            body = problem_body(403, decision.reason, getattr(self, "request_id", None))
            self.respond_locally(403, decision.reason, body, _PROBLEM_HEADERS)
            return
        self.respond_locally(403, decision.reason)

    def respond_locally(self, code: int, reason: str, body: bytes | None = None,
                        headers: list[Header] | None = None) -> None:
        """Answer the client from the gateway itself: status *code*, a short text body naming
        *reason* (or *body* with *headers*). If the request body is still arriving, or the
        request was malformed (400), the connection closes after this (HTTP/2: only the stream
        ends)."""
        if self.finished:
            return
        self.local_reason = reason
        if self.upstream is not None:
            self.upstream.cancel()
        from gateway.http.server import refusal

        if body is None:
            body = refusal(code, reason)
        if not self.body_complete or code == 400:
            self.stream.close_after_response()
        self.status = code
        bodied = self.head.method != b"HEAD"
        self.stream.send_head(code, [*(headers or _REFUSAL_HEADERS),
                                     (REQUEST_ID, self.request_id.encode("ascii"))],
                              len(body), bodied)
        self.stream.send_data(body)
        self.sent_bytes += len(body) if bodied else 0
        self._finish()

    def _abort_client(self, why: str) -> None:
        """Abort the client connection (HTTP/2: the stream): the response cannot be completed
        truthfully."""
        access_log.warn("aborting client connection peer={peer}: {why}",
                        peer=self.connection.peer_host, why=clean(why))
        self.upstream_status = f"{self.upstream_status}-aborted"
        self.finished = True
        self._log_access()
        self.stream.set_response_producer(None)
        self.stream.reset()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.stream.send_end()
        self._log_access()

    def _log_access(self) -> None:
        metrics = self.listener.metrics  # gateway.metrics.ListenerMetrics, with [status]
        if metrics is not None:
            metrics.request(self)
        decision = self.decision
        code = self.status
        if (self.listener.limits.access_log == "problems" and decision is not None
                and decision.allowed and code is not None and code < 400
                and isinstance(self.upstream_status, int)):
            return  # access_log = problems: a request that went well is not logged
        duration = (time.monotonic() - self.started) * 1000
        if self.listener.log_settings.format == "json":
            # The JSON observer writes the record; the text line is made only if another
            # observer formats the event.
            access_log.info("{access}", access=_AccessLine(self, duration),
                            mtlsgw_request=request_members(self, duration,
                                                           self.listener.log_settings.query))
        else:
            access_log.info("{access}", access=self.access_line(duration))

    def access_line(self, duration: float) -> str:
        """The text access line (docs/configuration.md "Log lines"); *duration* in ms."""
        # Formatted here in one f-string: per-field formatting of a 12-field event was the
        # largest single cost of a small keep-alive request (docs/performance.md).
        identity = self.connection.identity
        decision = self.decision
        code = self.status
        if decision is None:  # refused before authorization (400, 404, 413, 421, …)
            verdict = authorizer = "-"
            reason = clean(self.local_reason or "-")
        else:
            verdict = "allow" if decision.allowed else "deny"
            reason, authorizer = clean(decision.reason), clean(decision.authorizer or "-")
        subject = _clean_subject(identity.subject) if identity else "-"
        head = self.head
        return (
            f'request peer={self.connection.peer_host} method="{clean(logged(head.method))}" '
            f'path="{clean(logged(head.target))}" subject="{subject}" '
            f"fingerprint={identity.fingerprint_sha256 if identity else '-'} "
            f"route={self.route.name if self.route else '-'} decision={verdict} "
            f"reason={reason} authorizer={authorizer} "
            f"status={'-' if code is None else code} "
            f"upstream_status={self.upstream_status} "
            f"duration_ms={duration:.1f} request_id={self.request_id}"
        )


class _AccessLine:
    """An exchange's text access line, made when first formatted (``str``/``format``)."""

    __slots__ = ("_duration", "_exchange", "_text")

    def __init__(self, exchange: Exchange, duration: float) -> None:
        self._exchange, self._duration, self._text = exchange, duration, ""

    def __str__(self) -> str:
        if not self._text:
            self._text = self._exchange.access_line(self._duration)
        return self._text

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


@functools.lru_cache(maxsize=4096)
def _clean_subject(subject: str) -> str:
    return clean(subject)


@functools.lru_cache(maxsize=1024)
def _is_token(name: bytes) -> bool:
    """Whether a header name can be written in HTTP/1.1: a token (RFC 9110 §5.1)."""
    from gateway.target import _METHOD

    return _METHOD.fullmatch(name) is not None
