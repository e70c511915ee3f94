"""The authorizer contracts and the values passed across them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
from zope.interface import Attribute, Interface

from gateway.identity import ClientIdentity


@attrs.frozen
class Decision:
    """An authorizer's answer: allowed or not, and a short reason id.

    ``reason`` is a machine-friendly id such as ``cn-not-allowed`` (lowercase letters, digits and
    ``-``); it appears in the 403 body and the access log, so it must not carry secrets.
    ``authorizer`` is the configured name of the authorizer that decided (filled in by the policy).
    ``upstream_headers`` are ``(name, value)`` byte pairs an allowing decision adds to the upstream
    request (the ``http`` type's ``allowed_upstream_headers``): they replace the client's headers
    of the same names and can never set a header the gateway owns (identity, forwarding).
    ``upstream_replaced`` names headers (any case, ``_``/``.`` spellings included) whose client
    copies are removed from the upstream request even when ``upstream_headers`` has none of them:
    the ``http`` type puts every ``allowed_upstream_headers`` name there, so an application that
    trusts such a header never sees a copy the client forged.
    """

    allowed: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    reason: str = attrs.field(validator=attrs.validators.instance_of(str))
    authorizer: str = ""
    upstream_headers: tuple[tuple[bytes, bytes], ...] = ()
    upstream_replaced: frozenset[bytes] = frozenset()

    @classmethod
    def allow(cls, reason: str = "allowed") -> Decision:
        """An allowing decision."""
        return cls(True, reason)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        """A denying decision with reason id *reason*."""
        return cls(False, reason)


@attrs.frozen
class RequestInfo:
    """What an authorizer may know of the request, besides the identity.

    ``method`` is as the client sent it; ``path`` is the request path without the query string,
    normalised as for routing (RFC 3986 §6.2.2, :mod:`gateway.pathnorm`: ``/a/../b`` is ``/b``);
    ``host`` is the ``Host`` header or ``None``; ``server_name`` the TLS SNI or ``None``;
    ``client_address`` the peer IP as text; ``headers`` the request's ``(name, value)`` byte
    pairs as received (the gateway's own identity headers not yet added, the client's not yet
    removed: never trust an identity header found here); ``request_id`` the request's
    ``X-Request-Id`` (32 hex digits, or the client's own on a ``trust_request_id`` listener), for
    correlating logs, or ``None`` where there is no request (``mtlsgw inspect``); ``tls``
    whether the request came over TLS (``False`` on a plain listener, ``tls = off``).
    """

    method: str
    path: str
    host: str | None
    server_name: str | None
    client_address: str
    headers: Sequence[tuple[bytes, bytes]] = attrs.field(default=(), eq=False)
    request_id: str | None = attrs.field(default=None, eq=False)
    tls: bool = True


class IAuthorizer(Interface):
    """Decides whether one request may pass."""

    def authorize(identity, request):  # type: ignore[no-untyped-def]  # noqa: N805
        """Decide for *identity* (a :class:`ClientIdentity`, or ``None`` when the client sent no
        certificate under ``client_auth = optional``) making *request* (a :class:`RequestInfo`).

        Return a :class:`Decision` or a ``Deferred`` that fires with one. Raising, or a Deferred
        that fails, counts as a denial (reason ``authorizer-error``): decisions fail closed.
        """


class IAuthorizerType(Interface):
    """A kind of authorizer usable as ``type = NAME`` in an ``[authorizer:...]`` section.

    Provide it from a module in a ``twisted/plugins/`` folder (an ``IPlugin`` provider too), and
    Twisted's plugin system makes it available without touching mtlsgw.
    """

    name = Attribute("The ``type =`` value, a str such as ``cn``.")
    keys = Attribute("The frozenset of option names this type accepts (besides ``type``).")

    def build(name, options):  # type: ignore[no-untyped-def]  # noqa: N805
        """Return an :class:`IAuthorizer` for the section ``[authorizer:NAME]``.

        *options* maps the section's keys (other than ``type``) to their string values; only keys
        in :attr:`keys` are ever passed. Raise :class:`OptionError` for a bad value.
        """


class OptionError(ValueError):
    """A bad option value, raised by :meth:`IAuthorizerType.build`.

    ``key`` names the option; the registry turns it into a one-line ``ConfigError`` naming the
    file, section, key and value.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


Options = Mapping[str, str]
__all__ = [
    "ClientIdentity",
    "Decision",
    "IAuthorizer",
    "IAuthorizerType",
    "OptionError",
    "Options",
    "RequestInfo",
]
