"""The INI configuration: parsing and validation into frozen settings objects.

:func:`load` reads one INI file (``configparser`` syntax, ``;`` and ``#`` comments allowed after
values) and returns a :class:`GatewaySettings`, or raises :class:`ConfigError` whose message is one
line naming the file, the ``[section]``, the key and the offending value.

Only the shape of the file is checked here (known sections and keys, types, files that exist and
parse). The authorizer sections are validated by the authorizer types themselves (see
:mod:`gateway.authz.registry`); the TLS material is cross-checked (key matches certificate) by
:mod:`gateway.tls`. This module is pure: no reactor, no sockets.
"""

from __future__ import annotations

import configparser
import inspect
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs


class ConfigError(Exception):
    """A configuration mistake, with a one-line message for the operator.

    The message has the form ``FILE: [SECTION] KEY = 'VALUE': PROBLEM`` (key and value are left out
    where the problem is with a whole section or file). A control character in it (from a
    section or key name, a file name) is written escaped, ``\x1b``: it goes to a terminal or a
    log as one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_CONTROL.sub(lambda m: repr(m[0])[1:-1], message))


@attrs.frozen
class Location:
    """Where a setting comes from, for error messages: file, section and optionally key/value."""

    path: Path
    section: str
    key: str | None = None
    value: str | None = None

    def error(self, problem: str) -> ConfigError:
        """Return a :class:`ConfigError` naming this location and *problem* (one line)."""
        where = f"{self.path}: [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
            if self.value is not None:
                where += f" = {self.value!r}"
        return ConfigError(f"{where}: {_one_line(problem)}")

    def at(self, key: str, value: str | None = None) -> Location:
        """This section's location narrowed to *key* (and its *value*)."""
        return Location(self.path, self.section, key, value)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _number_text(raw: str) -> bool:
    """Whether *raw* is written in ASCII without ``_`` (Python's ``int`` and ``float`` also
    take ``1_0`` and other scripts' digits, ``１０``)."""
    return raw.isascii() and "_" not in raw


@attrs.frozen
class TLSSettings:
    """The ``[tls]`` section: the gateway's server identity and how clients are verified."""

    certificate: Path
    private_key: Path
    client_ca: Path
    client_auth: str  # "require" | "optional"
    verify_depth: int
    min_version: str  # "TLSv1.2" | "TLSv1.3"
    crl: Path | None
    handshake_timeout: float  # seconds
    http2: bool  # offer h2 in ALPN (HTTP/1.1 is always offered)
    location: Location


@attrs.frozen
class AuthorizerSection:
    """One ``[authorizer:NAME]`` section, not yet interpreted: its type and remaining options."""

    name: str
    type: str
    options: Mapping[str, str]
    location: Location


@attrs.frozen
class HeaderSettings:
    """The ``[headers]`` section: how identity is written into request headers."""

    prefix: str
    forward_certificate: bool
    # Header formats written (gateway.formats): "nginx" (the prefix headers), "xfcc",
    # "rfc9440", "traefik"; every format's names are owned whichever are enabled.
    formats: tuple[str, ...] = ("nginx",)
    xfcc_mode: str = "sanitize_set"  # Envoy's forward_client_cert_details, lower case
    xfcc_details: tuple[str, ...] = ("Subject", "URI", "DNS")  # set_current_client_cert_details
    xfcc_by: tuple[str, ...] = ()  # URI SANs of the gateway's own certificate (XFCC By)
    # SHA-256 fingerprints (lower-case hex) of the proxies whose XFCC a forwarding mode keeps:
    # the route's listener's trusted_proxy_sha256.
    trusted_proxy_sha256: frozenset[str] = frozenset()


@attrs.frozen
class UpstreamSettings:
    """Where allowed requests go and how the gateway talks to it."""

    url: str
    scheme: str  # "http" | "https"
    host: str
    port: int
    base_path: str  # "" or a path without trailing slash, prefixed to every request path
    pool_size: int  # persistent connections kept per upstream
    connect_timeout: float  # seconds
    response_timeout: float  # seconds to wait for the response head; 0 = no limit
    ca: Path | None  # trust anchors for an https upstream; None = the system store
    certificate: Path | None  # client certificate the gateway presents (mTLS upstream)
    private_key: Path | None
    server_name: str | None  # SNI and the name checked in the upstream's certificate
    host_header: str  # "client" | "upstream" | a literal Host value
    idle_timeout: float = 4.0  # seconds an idle pooled connection is kept
    read_timeout: float = 60.0  # seconds without a byte while a response body streams; 0 = none
    max_head_size: int = 65536  # bytes of one response head (502 upstream-head-too-large)
    # /readyz fails while every connect probe of the last ready_check_window seconds failed.
    ready_check: bool = False
    ready_check_window: float = 10.0  # seconds


@attrs.frozen
class Limits:
    """Per-connection and per-request limits of the listener (``[gateway]``)."""

    idle_timeout: float  # seconds a keep-alive connection may sit idle
    header_timeout: float  # seconds from a request's first byte to the end of its head (408)
    max_head_size: int  # bytes of request line + headers (431)
    max_body_size: int  # bytes of request body, 0 = unlimited (413)
    max_connections: int  # open client connections; more are closed at once
    drain_timeout: float  # seconds in-flight requests get to finish on SIGTERM
    access_log: str  # "all" | "problems" (denied, refused, status >= 400, aborted)
    max_header_count: int = 100  # header lines in one request head (431)
    drain_delay: float = 0.0  # seconds still accepting after SIGTERM, before the drain


@attrs.frozen
class ListenerSettings:
    """Where the gateway accepts connections: ``[gateway]`` (named ``main``) or
    ``[listener:NAME]``. ``tls`` off means plain HTTP (egress mode), loopback only unless
    ``allow_non_loopback`` was set."""

    name: str
    listen: str
    tls: bool
    location: Location
    reuse_port: tuple[int, str, int] | None = None  # (port, interface, backlog) with reuse_port
    # ``listen = haproxy:...``: every connection starts with a PROXY protocol header (v1 or v2,
    # Twisted's wrapper); ``inner`` is the description without ``haproxy:``.
    proxy_protocol: bool = False
    inner: str = ""
    # Peers (the balancers) allowed to connect to a PROXY-protocol listener; empty: any.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Client-certificate SHA-256 fingerprints of proxies whose XFCC header may be forwarded.
    trusted_proxy_sha256: frozenset[str] = frozenset()
    # ``%2F``, ``%5C`` and ``\`` in request paths: "keep" | "reject" | "unescape"
    # (gateway/pathnorm.py). Not compared (eq=False): a reload may change it (the route tables
    # carry it), where other listener changes need a restart.
    escaped_slashes: str = attrs.field(default="keep", eq=False)
    # ``trust_request_id = yes``: a well-formed client ``X-Request-Id`` is kept as the id.
    trust_request_id: bool = False

    @property
    def socket_listen(self) -> str:
        """The description of the endpoint that owns the socket: ``listen`` without
        ``haproxy:``."""
        return self.inner if self.proxy_protocol else self.listen


@attrs.frozen
class LogSettings:
    """``[log]``: ``format`` of every log line (``text``, twistd's, or ``json``, one object per
    line, docs/log-schema.json); ``query``: the request record's ``target`` keeps the query."""

    format: str = "text"  # "text" | "json"
    query: bool = False


@attrs.frozen
class RouteSettings:
    """Which requests go where: ``[route:NAME]``, or ``default`` from ``[gateway] upstream``.

    A request on ``listener`` whose path starts with ``prefix`` (and whose Host is ``host``, when
    set) takes this route; the longest prefix wins. ``policy`` is ``any``, ``all``, or ``open``
    (no authorization: routes on a plain listener without authorizers).
    """

    name: str
    listener: str
    prefix: str
    host: str | None
    strip_prefix: bool
    upstream: UpstreamSettings
    policy: str
    authorizers: tuple[AuthorizerSection, ...]
    headers: HeaderSettings
    location: Location
    normalize_path: bool = True  # route on, authorize and forward the normalised path
    deny_status: int = 403  # 403, or 404: a denial answered as a no-route 404


@attrs.frozen
class StatusSettings:
    """The ``[status]`` section: the plain-HTTP status listener (``/healthz``, ``/readyz``,
    ``/metrics``; :mod:`gateway.status`)."""

    listen: str  # a Twisted server endpoint description
    location: Location


@attrs.frozen
class GatewaySettings:
    """Everything the gateway needs, validated. Built by :func:`load`."""

    path: Path
    limits: Limits
    tls: TLSSettings | None  # None when no listener uses TLS
    listeners: tuple[ListenerSettings, ...]  # "main" first
    routes: tuple[RouteSettings, ...]
    authorizer_timeout: float = 5.0  # seconds an authorizer may take; then it counts as a denial
    workers: int = 1  # worker processes (``auto`` resolved); see :mod:`gateway.workers`
    workers_auto: bool = False  # ``workers = auto``
    status: StatusSettings | None = None  # ``[status]``; None: no status listener, no metrics
    # Every [authorizer:NAME] section by name (``type = expr`` rules name others).
    authorizer_sections: Mapping[str, AuthorizerSection] = attrs.field(factory=dict)
    # ``watch_files``: seconds between two checks of the files named here (0: not watched);
    # see :mod:`gateway.watch`.
    watch_interval: float = 0.0
    log: LogSettings = LogSettings()  # ``[log]``

    @property
    def supervised(self) -> bool:
        """Whether a supervisor runs :attr:`workers` worker processes (``workers`` other than 1)."""
        return self.workers > 1 or self.workers_auto

    @property
    def listen(self) -> str:
        """The main listener's endpoint description."""
        return self.listeners[0].listen


_UPSTREAM_KEYS = {
    "upstream",
    "upstream_pool_size",
    "upstream_connect_timeout",
    "upstream_response_timeout",
    "upstream_idle_timeout",
    "upstream_read_timeout",
    "upstream_max_head_size",
    "upstream_ca",
    "upstream_certificate",
    "upstream_private_key",
    "upstream_server_name",
    "host_header",
    "ready_check",
    "ready_check_window",
}
_LISTENER_KEYS = {"listen", "tls", "allow_non_loopback", "reuse_port", "trusted_proxies",
                  "trusted_proxy_sha256", "escaped_slashes", "trust_request_id"}
_ROUTE_KEYS = _UPSTREAM_KEYS | {
    "listener", "prefix", "host", "strip_prefix", "policy", "authorizers", "header_prefix",
    "forward_certificate", "formats", "xfcc_mode", "xfcc_details", "normalize_path",
    "deny_status",
}
_GATEWAY_KEYS = _UPSTREAM_KEYS | _LISTENER_KEYS | {
    "idle_timeout",
    "header_timeout",
    "max_head_size",
    "max_header_count",
    "max_body_size",
    "max_connections",
    "drain_timeout",
    "access_log",
    "workers",
    "drain_delay",
    "watch_files",
    "watch_interval",
}
_TLS_KEYS = {
    "certificate",
    "private_key",
    "client_ca",
    "client_auth",
    "verify_depth",
    "min_version",
    "crl",
    "handshake_timeout",
    "http2",
}
_AUTHORIZE_KEYS = {"policy", "authorizers", "timeout"}
_HEADERS_KEYS = {"prefix", "forward_certificate", "formats", "xfcc_mode", "xfcc_details"}
_STATUS_KEYS = {"listen", "allow_non_loopback"}
_LOG_KEYS = {"format", "query"}
_FIXED_SECTIONS = {
    "gateway": _GATEWAY_KEYS,
    "tls": _TLS_KEYS,
    "authorize": _AUTHORIZE_KEYS,
    "headers": _HEADERS_KEYS,
    "status": _STATUS_KEYS,
    "log": _LOG_KEYS,
}
_PATTERN_SECTIONS = ("authorizer", "route", "listener")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


class _Section:
    """Typed accessors over one section; every failure is a :class:`ConfigError` with location."""

    def __init__(self, path: Path, name: str, values: Mapping[str, str]) -> None:
        self.location = Location(path, name)
        self.values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.values.get(key)
        if value is None or value == "":
            return default
        return value

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise self.location.at(key).error("required key is missing or empty")
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key, default)
        assert value is not None
        if value.lower() not in allowed:
            raise self.location.at(key, value).error(f"must be one of {', '.join(allowed)}")
        return value.lower()

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.get(key, str(default))
        assert raw is not None
        try:
            if not _number_text(raw):
                raise ValueError(raw)
            value = int(raw)
        except ValueError:
            raise self.location.at(key, raw).error("must be an integer") from None
        if not low <= value <= high:
            raise self.location.at(key, raw).error(f"must be between {low} and {high}")
        return value

    def seconds(self, key: str, default: float, allow_zero: bool = False) -> float:
        raw = self.get(key, str(default))
        assert raw is not None
        try:
            if not _number_text(raw):
                raise ValueError(raw)
            value = float(raw)
        except ValueError:
            raise self.location.at(key, raw).error("must be a number of seconds") from None
        if value != value or value < 0 or (value == 0 and not allow_zero) or value > 86400:
            bound = "at least 0" if allow_zero else "more than 0"
            raise self.location.at(key, raw).error(f"must be {bound} and at most 86400 seconds")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.get(key)
        if raw is None:
            return default
        if raw.lower() not in _BOOLEANS:
            raise self.location.at(key, raw).error("must be yes or no")
        return _BOOLEANS[raw.lower()]

    def readable_file(self, key: str, base: Path, required: bool = True) -> Path | None:
        raw = self.require(key) if required else self.get(key)
        if raw is None:
            return None
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base / path
        if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block
            raise self.location.at(key, raw).error(f"not a regular file: {path}")
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except FileNotFoundError:
            raise self.location.at(key, raw).error(f"file not found: {path}") from None
        except IsADirectoryError:
            raise self.location.at(key, raw).error(f"is a directory: {path}") from None
        except OSError as exc:
            raise self.location.at(key, raw).error(
                f"cannot read {path}: {exc.strerror}") from None
        return path


def parse_list(raw: str) -> list[str]:
    """Split a list value into its stripped, non-empty items: separated by commas or by line
    breaks (a value continued on indented lines), ``alice, bob``."""
    return [item.strip() for item in re.split(r"[,\n]", raw) if item.strip()]


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        default_section="\x00no-defaults",  # [DEFAULT] is not a feature of this file
        strict=True,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block
        raise ConfigError(f"{path}: config file is not a regular file")
    try:
        with path.open(encoding="utf-8-sig") as handle:  # a BOM (Windows editors) is fine
            parser.read_file(handle, source=str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{path}: [{exc.section}] {exc.option}: the key is given twice "
                          f"(line {exc.lineno})") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{path}: [{exc.section}]: the section is given twice "
                          f"(line {exc.lineno})") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: a key before any [section]") from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(number) for number, _ in exc.errors)
        raise ConfigError(f"{path}: line {lines}: not a 'key = value' line") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {_one_line(str(exc))}") from None
    return parser


def _check_keys(section: _Section, values: Mapping[str, str], known: set[str]) -> None:
    for key, value in values.items():
        if key not in known:
            raise section.location.at(key, value).error(
                f"unknown key (known keys: {', '.join(sorted(known))})")


def _listener(section: _Section, name: str) -> ListenerSettings:
    raw = section.require("listen")
    loc = section.location.at("listen", raw)
    kind = raw.split(":", 1)[0].strip().lower()  # tcp, tcp6, unix, systemd, haproxy, …
    proxy_protocol = kind == "haproxy"
    inner = raw.split(":", 1)[1] if proxy_protocol and ":" in raw else raw
    if proxy_protocol:
        # haproxy:ENDPOINT, Twisted's PROXY protocol wrapper around another endpoint.
        kind = inner.split(":", 1)[0].strip().lower()
        if kind not in ("tcp", "tcp6", "unix", "systemd"):
            raise loc.error("haproxy: wraps a tcp:, tcp6:, unix: or systemd: endpoint, "
                            "e.g. haproxy:tcp:8443:interface=10.0.0.5")
    if kind == "ssl":
        raise loc.error("the gateway adds TLS itself ([tls]): give a plain endpoint (tcp:, unix:, "
                        "systemd:)")
    port, kwargs = _server_endpoint(loc, kind, inner)
    tls = section.boolean("tls", True)
    exposed = not tls and not section.boolean("allow_non_loopback", False)
    if exposed and not _loopback_only(kind, kwargs):
        raise loc.error(
            "a listener with tls = off must listen on loopback (interface=127.0.0.1 or ::1)"
            " or a unix socket; set allow_non_loopback = yes to override")
    reuse_port = None
    if section.boolean("reuse_port", False):
        if port is None:  # not tcp: or tcp6:
            raise section.location.at("reuse_port", section.get("reuse_port")).error(
                "needs a tcp:, tcp6:, haproxy:tcp: or haproxy:tcp6: listen description")
        default = "::" if kind == "tcp6" else "0.0.0.0"  # noqa: S104
        reuse_port = (port, str(kwargs.get("interface") or default),
                      int(str(kwargs.get("backlog") or 50)))
    return ListenerSettings(name, raw, tls, section.location, reuse_port, proxy_protocol,
                            inner if proxy_protocol else "",
                            _trusted_proxies(section, proxy_protocol, kind),
                            _trusted_proxy_sha256(section, tls),
                            section.choice("escaped_slashes", "keep",
                                           ("keep", "reject", "unescape")),
                            trust_request_id=section.boolean("trust_request_id", False))


def _trusted_proxies(
    section: _Section, proxy_protocol: bool, kind: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = section.get("trusted_proxies")
    if raw is None:
        return ()
    loc = section.location.at("trusted_proxies", raw)
    if not proxy_protocol:
        raise loc.error("only meaningful with a PROXY protocol listener (listen = haproxy:...)")
    if kind == "unix":
        raise loc.error("a unix socket's peers have no address: restrict who may connect with "
                        "the socket's mode and directory")
    networks = []
    for item in parse_list(raw):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise loc.error(f"{item!r} is not an address or CIDR network ({exc})") from None
    if not networks:
        raise loc.error("list at least one address or CIDR network")
    return tuple(networks)


_ADOPTABLE = ("tcp", "tcp6", "unix", "systemd")  # listen kinds a supervisor can share


def _workers(section: _Section, listeners: Mapping[str, ListenerSettings]) -> tuple[int, bool]:
    """``[gateway] workers``: ``(count, auto)``. Anything but 1 needs listeners the supervisor
    can bind once and hand to its workers, and no ``reuse_port``."""
    from gateway.workers import MAX_WORKERS, available_cpus

    raw = section.get("workers", "1")
    assert raw is not None
    loc = section.location.at("workers", raw)
    auto = raw.lower() == "auto"
    if auto:
        count = available_cpus()
    else:
        try:
            count = int(raw) if _number_text(raw) else 0
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_WORKERS:
            raise loc.error(f"must be auto or an integer between 1 and {MAX_WORKERS}")
    if count == 1 and not auto:
        return count, auto
    for listener in listeners.values():
        where = "[gateway]" if listener.name == "main" else f"[{listener.location.section}]"
        if listener.reuse_port is not None:
            raise loc.error(f"cannot be combined with reuse_port = yes ({where}): the workers "
                            "share the supervisor's socket; use one or the other")
        kind = listener.socket_listen.split(":", 1)[0].strip().lower()
        if kind not in _ADOPTABLE:
            raise loc.error(f"the listener in {where} ({listener.listen}) cannot be shared by "
                            "workers: only tcp:, tcp6:, unix: and systemd: listeners (also "
                            "behind haproxy:) can")
    return count, auto


def _status(section: _Section) -> StatusSettings:
    """``[status]``: its ``listen`` must be a plain stream endpoint, on loopback or a Unix socket
    unless ``allow_non_loopback = yes`` (as a ``tls = off`` listener)."""
    raw = section.require("listen")
    loc = section.location.at("listen", raw)
    kind = raw.split(":", 1)[0].strip().lower()
    if kind in ("ssl", "haproxy"):
        raise loc.error("the status listener speaks plain HTTP: give a tcp:, tcp6:, unix: or "
                        "systemd: endpoint")
    _port, kwargs = _server_endpoint(loc, kind, raw)
    if not section.boolean("allow_non_loopback", False) and not _loopback_only(kind, kwargs):
        raise loc.error(
            "the status listener must listen on loopback (interface=127.0.0.1 or ::1) or a unix "
            "socket; set allow_non_loopback = yes to override")
    return StatusSettings(raw, section.location)


def _server_endpoint(loc: Location, kind: str,
                     description: str) -> tuple[int | None, Mapping[str, object]]:
    """Parse a Twisted server endpoint *description* now, without a reactor, so a typo fails at
    start with the one-line message at *loc*: ``(port, keyword arguments)``; the port (0–65535)
    of a ``tcp:``/``tcp6:`` *kind*, else ``None``."""
    from twisted.internet.endpoints import _parseServer

    try:
        parser, args, kwargs = _parseServer(description, None)
        if kind == "tcp6":  # its parser checks its arguments only when the port is opened
            inspect.signature(parser._parseServer).bind(None, *args, **kwargs)
    except Exception as exc:  # Twisted raises ValueError, KeyError, TypeError…
        hint = "; write ':' in an IPv6 address as '\\:'" if kind == "tcp6" else ""
        raise loc.error(f"not a Twisted server endpoint description ({exc!s}{hint})") from None
    if kind not in ("tcp", "tcp6"):
        return None, kwargs
    try:
        # Twisted's tcp: parser has made the port an int already (from ８４４３ too)
        if not _number_text(description.split(":", 2)[1]):
            raise ValueError(args[0])
        port = int(args[0])
    except (ValueError, TypeError, IndexError):
        raise loc.error("the port must be a number") from None
    if not 0 <= port <= 65535:
        raise loc.error("the port must be between 0 and 65535")
    return port, kwargs


def _loopback_only(kind: str, kwargs: Mapping[str, object]) -> bool:
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False  # systemd:, ssl:, … : cannot tell
    try:
        return ipaddress.ip_address(str(kwargs.get("interface", ""))).is_loopback
    except ValueError:
        return False


_URL_TEXT = re.compile(r"[\x21-\x7e]+")


def _upstream(section: _Section, base: Path) -> UpstreamSettings:
    raw = section.require("upstream")
    loc = section.location.at("upstream", raw)
    if not _URL_TEXT.fullmatch(raw):  # the path goes into request lines as it is
        raise loc.error("must be printable ASCII without spaces: percent-encode the path, "
                        "write a name as IDNA (xn--...)")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise loc.error(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise loc.error("must start with http:// or https://")
    if not parts.hostname:
        raise loc.error("has no host")
    if "@" in parts.netloc or "?" in raw or "#" in raw:
        raise loc.error("must not carry user info, query or fragment")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise loc.error(f"{parts.hostname!r} is not a valid host name") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if port == 0:
        raise loc.error("port 0 is not a port one can connect to")
    return UpstreamSettings(
        url=raw,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        base_path=parts.path.rstrip("/"),
        pool_size=section.integer("upstream_pool_size", 32, 1, 10000),
        connect_timeout=section.seconds("upstream_connect_timeout", 5.0),
        response_timeout=section.seconds("upstream_response_timeout", 60.0, allow_zero=True),
        idle_timeout=section.seconds("upstream_idle_timeout", 4.0),
        read_timeout=section.seconds("upstream_read_timeout", 60.0, allow_zero=True),
        max_head_size=section.integer("upstream_max_head_size", 65536, 1024, 1 << 24),
        ready_check=section.boolean("ready_check", False),
        ready_check_window=section.seconds("ready_check_window", 10.0),
        **_upstream_tls(section, base, parts.scheme),
    )


def _upstream_tls(section: _Section, base: Path, scheme: str) -> dict[str, Any]:
    tls_keys = ("upstream_ca", "upstream_certificate", "upstream_private_key",
                "upstream_server_name")
    if scheme != "https":
        for key in tls_keys:
            if section.get(key) is not None:
                raise section.location.at(key, section.get(key)).error(
                    "only meaningful for an https:// upstream")
    certificate = section.readable_file("upstream_certificate", base, required=False)
    private_key = section.readable_file("upstream_private_key", base, required=False)
    if (certificate is None) != (private_key is None):
        key = "upstream_private_key" if private_key is None else "upstream_certificate"
        raise section.location.at(key).error(
            "give both upstream_certificate and upstream_private_key, or neither")
    host_header = section.get("host_header", "client")
    assert host_header is not None
    if host_header.lower() in ("client", "upstream"):
        host_header = host_header.lower()
    elif not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?",
                          host_header):
        raise section.location.at("host_header", host_header).error(
            "must be client, upstream, or a host[:port] value")
    return {
        "ca": section.readable_file("upstream_ca", base, required=False),
        "certificate": certificate,
        "private_key": private_key,
        "server_name": section.get("upstream_server_name"),
        "host_header": host_header,
    }


def _tls(section: _Section, base: Path) -> TLSSettings:
    certificate = section.readable_file("certificate", base)
    private_key = section.readable_file("private_key", base)
    client_ca = section.readable_file("client_ca", base)
    assert certificate and private_key and client_ca
    return TLSSettings(
        certificate=certificate,
        private_key=private_key,
        client_ca=client_ca,
        client_auth=section.choice("client_auth", "require", ("require", "optional")),
        verify_depth=section.integer("verify_depth", 2, 1, 16),
        min_version=_min_version(section),
        crl=section.readable_file("crl", base, required=False),
        handshake_timeout=section.seconds("handshake_timeout", 10.0),
        http2=section.boolean("http2", False),
        location=section.location,
    )


def _min_version(section: _Section) -> str:
    raw = section.get("min_version", "TLSv1.2")
    assert raw is not None
    canonical = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}.get(raw.lower())
    if canonical is None:
        raise section.location.at("min_version", raw).error("must be TLSv1.2 or TLSv1.3")
    return canonical


# Request headers an identity prefix must not own (RFC 9110, 9111, 6265, 6455, 9440, common ones).
_ORDINARY_HEADERS = (
    "accept", "accept-encoding", "accept-language", "authorization", "cache-control",
    "connection", "content-encoding", "content-length", "content-type", "cookie", "expect",
    "forwarded", "host", "if-match", "if-modified-since", "if-none-match", "if-range",
    "if-unmodified-since", "origin", "pragma", "range", "referer", "sec-websocket-key",
    "te", "traceparent", "transfer-encoding", "upgrade", "user-agent", "via",
    # written by the gateway itself, next to the identity headers
    "client-cert", "client-cert-chain", "x-forwarded-client-cert", "x-forwarded-for",
    "x-forwarded-host", "x-forwarded-proto", "x-request-id",
)


def _headers(section: _Section, key: str = "prefix",
             defaults: HeaderSettings | None = None) -> HeaderSettings:
    prefix = section.get(key, defaults.prefix if defaults else "X-Client-")
    assert prefix is not None
    if not _TOKEN.match(prefix):
        raise section.location.at(key, prefix).error(
            "must be a header-name prefix made of token characters (RFC 9110 §5.6.2)")
    spelled = prefix.lower().replace("_", "-")
    taken = "X-*" if spelled in ("x-", "x") else next(
        (n for n in _ORDINARY_HEADERS if n.startswith(spelled)), None)
    if taken is not None:
        # The gateway owns (removes) every client header with the prefix: it would take one
        # the application needs, or every X- header.
        raise section.location.at(key, prefix).error(
            f"would own the client's {taken} headers: choose a prefix of its own, "
            "such as X-Client-")
    return HeaderSettings(
        prefix=prefix,
        forward_certificate=section.boolean(
            "forward_certificate", defaults.forward_certificate if defaults else False),
        **_formats(section, defaults or HeaderSettings(prefix, False)),
    )


def _formats(section: _Section, defaults: HeaderSettings) -> dict[str, Any]:
    """``formats``, ``xfcc_mode`` and ``xfcc_details`` of *section*, defaulting to *defaults*."""
    from gateway.formats import FORMATS, XFCC, XFCC_DETAILS, XFCC_MODES

    formats = defaults.formats
    raw = section.get("formats")
    if raw is not None:
        listed = [item.lower() for item in parse_list(raw)]
        unknown = [item for item in listed if item not in FORMATS]
        if unknown or not listed:
            raise section.location.at("formats", raw).error(
                f"list one or more of {', '.join(FORMATS)}")
        formats = tuple(dict.fromkeys(listed))
    mode = section.get("xfcc_mode")
    details = section.get("xfcc_details")
    for key, value in (("xfcc_mode", mode), ("xfcc_details", details)):
        # In [headers] they are defaults for the routes that enable xfcc themselves.
        if value is not None and XFCC not in formats and section.location.section != "headers":
            raise section.location.at(key, value).error(
                "only meaningful with xfcc in the route's formats (set here or in [headers])")
    xfcc_details = defaults.xfcc_details
    if details is not None:
        by_name = {name.lower(): name for name in XFCC_DETAILS}
        chosen = [by_name.get(item.lower()) for item in parse_list(details)]
        if None in chosen:
            raise section.location.at("xfcc_details", details).error(
                f"list any of {', '.join(XFCC_DETAILS)} (By and Hash are always written)")
        xfcc_details = tuple(name for name in XFCC_DETAILS if name in chosen)
    return {
        "formats": formats,
        "xfcc_mode": (section.choice("xfcc_mode", "sanitize_set", XFCC_MODES)
                      if mode is not None else defaults.xfcc_mode),
        "xfcc_details": xfcc_details,
        "xfcc_by": defaults.xfcc_by,
    }


def _trusted_proxy_sha256(section: _Section, tls: bool) -> frozenset[str]:
    """``trusted_proxy_sha256``: SHA-256 fingerprints (64 hex digits, ``:`` allowed) of the
    client certificates of proxies whose ``X-Forwarded-Client-Cert`` may be forwarded."""
    raw = section.get("trusted_proxy_sha256")
    if raw is None:
        return frozenset()
    loc = section.location.at("trusted_proxy_sha256", raw)
    if not tls:
        raise loc.error("only meaningful on a TLS listener (the proxies are known by their "
                        "client certificates)")
    fingerprints = set()
    for item in parse_list(raw):
        digest = item.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise loc.error(f"{item!r} is not a SHA-256 fingerprint (64 hex digits)")
        fingerprints.add(digest)
    if not fingerprints:
        raise loc.error("list at least one SHA-256 fingerprint")
    return frozenset(fingerprints)


def _server_uris(tls: TLSSettings | None) -> tuple[str, ...]:
    """The URI SANs of the gateway's own certificate (XFCC ``By``); none when it cannot be read
    here (:mod:`gateway.tls` then reports the certificate)."""
    if tls is None:
        return ()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.identity import read_certificate, read_sans

    try:
        leaf = x509.load_pem_x509_certificates(tls.certificate.read_bytes())[0]
        return read_sans(read_certificate(leaf.public_bytes(Encoding.DER))).uris
    except (ValueError, OSError, IndexError):
        return ()


def _route_headers(section: _Section, listener: ListenerSettings,
                   headers: HeaderSettings, name: str) -> HeaderSettings:
    """The route's header settings, with its listener's trusted proxies; a forwarding
    ``xfcc_mode`` needs them."""
    from gateway.formats import XFCC, XFCC_FORWARDING

    settings = _headers(section, "header_prefix", headers)
    settings = attrs.evolve(settings, trusted_proxy_sha256=listener.trusted_proxy_sha256)
    if (XFCC in settings.formats and settings.xfcc_mode in XFCC_FORWARDING
            and not listener.trusted_proxy_sha256):
        loc = (section.location if section.get("xfcc_mode") is not None
               else Location(section.location.path, "headers"))
        where_listener = ("[gateway]" if listener.name == "main"
                          else f"[listener:{listener.name}]")
        raise loc.at("xfcc_mode", settings.xfcc_mode).error(
            f"forwards the client's X-Forwarded-Client-Cert (route {name!r}): set "
            f"trusted_proxy_sha256 in {where_listener} to the fingerprints of the proxies' "
            "client certificates")
    return settings


def _defined_authorizers(
    parser: configparser.ConfigParser, path: Path
) -> dict[str, AuthorizerSection]:
    defined: dict[str, AuthorizerSection] = {}
    for section_name in parser.sections():
        if not section_name.startswith("authorizer:"):
            continue
        name = section_name.split(":", 1)[1].strip()
        if name in defined:
            raise ConfigError(
                f"{path}: [{section_name}]: authorizer {name!r} is already defined by "
                f"[{defined[name].location.section}]")
        values = dict(parser.items(section_name))
        loc = Location(path, section_name)
        kind = values.pop("type", "")
        if not kind:
            raise loc.at("type").error("required key is missing or empty")
        defined[name] = AuthorizerSection(name, kind, values, loc)
    return defined


def _authorizer_list(
    section: _Section, defined: Mapping[str, AuthorizerSection]
) -> tuple[AuthorizerSection, ...]:
    listed_raw = section.require("authorizers")
    listed = parse_list(listed_raw)
    if not listed:
        raise section.location.at("authorizers", listed_raw).error(
            "list at least one authorizer")
    if len(set(listed)) != len(listed):
        twice = next(name for name in listed if listed.count(name) > 1)
        raise section.location.at("authorizers", listed_raw).error(
            f"authorizer {twice!r} is listed twice")
    for name in listed:
        if name not in defined:
            raise section.location.at("authorizers", listed_raw).error(
                f"authorizer {name!r} is listed but there is no [authorizer:{name}] section")
    return tuple(defined[name] for name in listed)


def _route(
    name: str, section: _Section, base: Path, listeners: Mapping[str, ListenerSettings],
    authorize: _Section, defined: Mapping[str, AuthorizerSection], headers: HeaderSettings,
) -> RouteSettings:
    listener = section.get("listener", "main")
    assert listener is not None
    if listener not in listeners:
        raise section.location.at("listener", listener).error(
            f"no such listener (known: {', '.join(listeners)})")
    prefix = section.get("prefix", "/")
    assert prefix is not None
    if not prefix.startswith("/") or any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in prefix):
        raise section.location.at("prefix", prefix).error(
            "must be a path starting with / (printable ASCII, no spaces)")
    from gateway.pathnorm import normalize_path as normalized

    normal = normalized(prefix.encode("ascii"))
    if normal != prefix.encode("ascii"):
        assert normal is not None
        raise section.location.at("prefix", prefix).error(
            "never matches: request paths are normalised before routing (write "
            f"{normal.decode('ascii')!r})")
    host = section.get("host")
    if host is not None and not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise section.location.at("host", host).error("must be a host name without port")
    if section.get("authorizers") is not None:
        authorizers = _authorizer_list(section, defined)
        policy = section.choice("policy", "any", ("any", "all"))
    elif section.get("policy") is not None and section.location.section != "gateway":
        raise section.location.at("policy", section.get("policy")).error(
            "set only together with authorizers in the same section")
    elif listeners[listener].tls:
        if authorize.get("authorizers") is None:
            where = "" if name == "default" else f" (or authorizers in [route:{name}])"
            raise authorize.location.at("authorizers").error(
                f"required key is missing or empty{where}")
        authorizers = _authorizer_list(authorize, defined)
        policy = authorize.choice("policy", "any", ("any", "all"))
    else:
        authorizers, policy = (), "open"  # a plain loopback listener: no identity to check
    normalize_path = section.boolean("normalize_path", True)
    strip_prefix = section.boolean("strip_prefix", False)
    if strip_prefix and not normalize_path:
        raise section.location.at("normalize_path", section.get("normalize_path")).error(
            "cannot be combined with strip_prefix = yes: the prefix is cut from the normalised "
            "path")
    deny_status = section.choice("deny_status", "403", ("403", "404"))
    return RouteSettings(
        name=name,
        listener=listener,
        prefix=prefix,
        host=host.lower().rstrip(".") if host else None,
        strip_prefix=strip_prefix,
        upstream=_upstream(section, base),
        policy=policy,
        authorizers=authorizers,
        headers=_route_headers(section, listeners[listener], headers, name),
        location=section.location,
        normalize_path=normalize_path,
        deny_status=int(deny_status),
    )


def load(path: str | Path) -> GatewaySettings:
    """Read and validate the INI file at *path*.

    Relative file paths inside the file resolve against the file's folder. Returns a
    :class:`GatewaySettings`; raises :class:`ConfigError` (one-line message naming file, section,
    key and value) on any mistake: missing or unreadable file, unknown section or key, bad value,
    an authorizer or listener referred to but not defined, two routes for the same prefix.
    """
    path = Path(path).expanduser().absolute()
    parser = _read(path)
    base = path.parent
    patterned: dict[str, list[tuple[str, _Section]]] = {kind: [] for kind in _PATTERN_SECTIONS}
    for name in parser.sections():
        if name in _FIXED_SECTIONS:
            continue
        kind, _, label = name.partition(":")
        if kind in patterned and _NAME.match(label.strip()):
            patterned[kind].append((label.strip(), _Section(path, name, dict(parser.items(name)))))
            continue
        raise ConfigError(
            f"{path}: [{name}]: unknown section (known: [gateway], [tls], [authorize], "
            "[headers], [status], [log], [authorizer:NAME], [route:NAME], [listener:NAME])")
    sections = {}
    for name, known in _FIXED_SECTIONS.items():
        values = dict(parser.items(name)) if parser.has_section(name) else {}
        section = _Section(path, name, values)
        if not parser.has_section(name) and name == "gateway":
            raise ConfigError(f"{path}: [{name}]: required section is missing")
        _check_keys(section, values, known)
        sections[name] = section
    gateway = sections["gateway"]

    listeners = {"main": _listener(gateway, "main")}
    for label, section in patterned["listener"]:
        _check_keys(section, section.values, _LISTENER_KEYS)
        if label in listeners:
            raise ConfigError(f"{path}: [listener:{label}]: the name {label!r} is taken")
        listeners[label] = _listener(section, label)
    tls = None
    if any(listener.tls for listener in listeners.values()):
        if not parser.has_section("tls"):
            raise ConfigError(f"{path}: [tls]: required section is missing")
        tls = _tls(sections["tls"], base)

    defined = _defined_authorizers(parser, path)
    headers = _headers(sections["headers"])
    headers = attrs.evolve(headers, xfcc_by=_server_uris(tls))
    routes = []
    if gateway.get("upstream") is None:
        for key in sorted(_UPSTREAM_KEYS - {"upstream"}):
            if gateway.get(key) is not None:
                raise gateway.location.at(key, gateway.get(key)).error(
                    "set only with [gateway] upstream (routes take their own upstream keys)")
    else:
        routes.append(_route("default", gateway, base, listeners, sections["authorize"],
                             defined, headers))
    for label, section in patterned["route"]:
        _check_keys(section, section.values, _ROUTE_KEYS)
        if label in {route.name for route in routes}:
            raise ConfigError(f"{path}: [{section.location.section}]: route name {label!r} is "
                              "taken (by another [route:] or by 'default', the [gateway] route)")
        routes.append(_route(label, section, base, listeners, sections["authorize"], defined,
                             headers))
    if not routes:
        raise gateway.location.at("upstream").error(
            "required key is missing or empty (or define [route:NAME] sections)")
    workers, workers_auto = _workers(gateway, listeners)
    seen: dict[tuple[str, str | None, str], str] = {}
    for route in routes:
        where = (route.listener, route.host, route.prefix)
        if where in seen:
            raise route.location.at("prefix", route.prefix).error(
                f"same listener, host and prefix as route {seen[where]!r}")
        seen[where] = route.name
        if route.upstream.ready_check and not parser.has_section("status"):
            raise route.location.at(
                "ready_check", parser.get(route.location.section, "ready_check")).error(
                "needs a [status] section: readiness is reported on its /readyz")
    return GatewaySettings(
        path=path,
        limits=Limits(
            idle_timeout=gateway.seconds("idle_timeout", 60.0),
            header_timeout=gateway.seconds("header_timeout", 10.0),
            max_head_size=gateway.integer("max_head_size", 16384, 1024, 1 << 20),
            max_body_size=gateway.integer("max_body_size", 0, 0, 1 << 50),
            max_connections=gateway.integer("max_connections", 10000, 1, 1_000_000),
            drain_timeout=gateway.seconds("drain_timeout", 10.0, allow_zero=True),
            access_log=gateway.choice("access_log", "all", ("all", "problems")),
            max_header_count=gateway.integer("max_header_count", 100, 1, 10000),
            drain_delay=gateway.seconds("drain_delay", 0.0, allow_zero=True),
        ),
        authorizer_timeout=sections["authorize"].seconds("timeout", 5.0, allow_zero=True),
        tls=tls,
        listeners=tuple(listeners.values()),
        routes=tuple(routes),
        workers=workers,
        workers_auto=workers_auto,
        status=_status(sections["status"]) if parser.has_section("status") else None,
        authorizer_sections=defined,
        watch_interval=_watch_interval(gateway),
        log=LogSettings(sections["log"].choice("format", "text", ("text", "json")),
                        sections["log"].boolean("query", False)),
    )


def _watch_interval(section: _Section) -> float:
    """``watch_files`` and ``watch_interval``: the seconds between two checks, 0 for off."""
    interval = section.seconds("watch_interval", 5.0)  # checked even while off
    return interval if section.boolean("watch_files", False) else 0.0
