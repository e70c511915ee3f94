"""Choosing the route for a request: longest path prefix, Host-specific routes first. Pure.

The path matched is the normalised one (:mod:`gateway.pathnorm`).

A route matches when the request path starts with its ``prefix`` (plain string prefix, as
nginx's ``location /prefix``: give ``/api/`` to exclude ``/apiary``) and, if the route names a
``host``, the request's Host (without port or trailing dot, case-insensitive) is that host. Among
matches the longest prefix wins; at equal length a route with a host beats one without.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class _Routable(Protocol):
    @property
    def prefix(self) -> str: ...

    @property
    def host(self) -> str | None: ...


R = TypeVar("R", bound=_Routable)


class RouteTable(Generic[R]):
    """The routes of one listener, searched per request by :meth:`match`."""

    def __init__(self, routes: Sequence[R], escaped_slashes: str = "keep") -> None:
        self._routes = sorted(routes, key=lambda r: (len(r.prefix), r.host is not None),
                              reverse=True)
        # How the listener's request paths treat %2F, %5C and "\\" (gateway/pathnorm.py).
        self.escaped_slashes = escaped_slashes

    def match(self, host: str | None, path: str) -> R | None:
        """The route for *host* (a normalised Host name, or ``None``) and *path*, or ``None``."""
        for route in self._routes:
            if path.startswith(route.prefix) and route.host in (None, host):
                return route
        return None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._routes)


def upstream_target(target: bytes, prefix: str, strip: bool) -> bytes:
    """The origin-form target to send upstream: *target* with *prefix* removed when *strip*
    (``/api/users?x`` with ``/api`` -> ``/users?x``; what is left always starts with ``/``)."""
    if not strip:
        return target
    rest = target[len(prefix.encode("ascii")):]
    return rest if rest.startswith(b"/") else b"/" + rest
