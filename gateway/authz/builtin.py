"""The built-in authorizer types: ``cn``, ``san``, ``fingerprint`` and ``any``.

Each type is an :class:`~gateway.authz.interfaces.IAuthorizerType` (registered as a Twisted plugin
in ``twisted/plugins/mtlsgw_plugin.py``); each authorizer denies a connection that presented no
certificate (reason ``no-certificate``).
"""

from __future__ import annotations

import ipaddress
import re

import attrs
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
from gateway.authz.uri import URIPattern
from gateway.config import parse_list

NO_CERTIFICATE = Decision.deny("no-certificate")


def _required_list(options: Options, key: str) -> list[str]:
    values = parse_list(options.get(key, ""))
    if not values:
        raise OptionError(key, "required: give at least one value")
    return values


@implementer(IAuthorizer)
@attrs.frozen
class CNAuthorizer:
    """Allows a certificate whose subject has exactly one CN, equal (case-sensitively) to one of
    ``allowed``. A subject with several CNs is denied (``cn-multiple``): which one an
    application reads would be ambiguous. A CN value that cannot be decoded as text (a BIT STRING
    or SEQUENCE where a string belongs) never matches, and counts as one of several."""

    allowed: frozenset[str]

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
        if identity is None:
            return NO_CERTIFICATE
        # A CN that could not be decoded (identity.undecoded) counts, but never matches.
        if len(identity.common_names) + identity.undecoded.count("CN") > 1:
            return Decision.deny("cn-multiple")
        if identity.common_names and identity.common_names[0] in self.allowed:
            return Decision.allow("cn-allowed")
        return Decision.deny("cn-not-allowed")


@implementer(IAuthorizer)
@attrs.frozen
class SANAuthorizer:
    """Allows a certificate with at least one SAN (RFC 5280 §4.2.1.6) matching the lists.

    DNS names compare case-insensitively (a trailing dot ignored); URIs match
    :class:`~gateway.authz.uri.URIPattern`; emails compare the local part exactly and the domain
    case-insensitively; IPs match an address or a network (CIDR).
    """

    dns: frozenset[str]
    uris: tuple[URIPattern, ...]
    emails: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
        if identity is None:
            return NO_CERTIFICATE
        if any(_dns_key(name) in self.dns for name in identity.dns_names):
            return Decision.allow("san-dns-allowed")
        if any(p.matches(uri) for uri in identity.uris for p in self.uris):
            return Decision.allow("san-uri-allowed")
        if any(_email_key(email) in self.emails for email in identity.emails):
            return Decision.allow("san-email-allowed")
        for text in identity.ip_addresses:
            address = ipaddress.ip_address(text)
            if any(address in network for network in self.networks):
                return Decision.allow("san-ip-allowed")
        return Decision.deny("san-not-allowed")


def _dns_key(name: str) -> str:
    return name.lower().rstrip(".")


def _email_key(email: str) -> str:
    local, at, domain = email.rpartition("@")
    return f"{local}{at}{domain.lower()}" if at else email


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_fingerprint(text: str) -> str:
    """Normalise a SHA-256 fingerprint (colons optional, any case) to 64 lowercase hex digits.

    Raises ``ValueError`` for a SHA-1 fingerprint (40 digits) or anything else malformed.
    """
    digits = text.replace(":", "").strip().lower()
    if _SHA256.match(digits):
        return digits
    if re.fullmatch(r"[0-9a-f]{40}", digits):
        raise ValueError(f"{text!r} is a SHA-1 fingerprint; give the SHA-256 one")
    raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")


@implementer(IAuthorizer)
@attrs.frozen
class FingerprintAuthorizer:
    """Allows a leaf certificate whose SHA-256 fingerprint (of its DER) is listed (pinning)."""

    sha256: frozenset[str]

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
        if identity is None:
            return NO_CERTIFICATE
        if identity.fingerprint_sha256 in self.sha256:
            return Decision.allow("fingerprint-allowed")
        return Decision.deny("fingerprint-not-allowed")


@implementer(IAuthorizer)
@attrs.frozen
class AnyAuthorizer:
    """Allows every verified certificate; denies a connection without one."""

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
        if identity is None:
            return NO_CERTIFICATE
        return Decision.allow("verified")


@implementer(IPlugin, IAuthorizerType)
class _CNType:
    name = "cn"
    keys = frozenset({"allow"})

    def build(self, name: str, options: Options) -> CNAuthorizer:
        return CNAuthorizer(frozenset(_required_list(options, "allow")))


@implementer(IPlugin, IAuthorizerType)
class _SANType:
    name = "san"
    keys = frozenset({"dns", "uri", "email", "ip"})

    def build(self, name: str, options: Options) -> SANAuthorizer:
        if not any(parse_list(options.get(key, "")) for key in self.keys):
            raise OptionError("dns", "give at least one of dns, uri, email, ip")
        uris = []
        for text in parse_list(options.get("uri", "")):
            try:
                uris.append(URIPattern.parse(text))
            except ValueError as exc:
                raise OptionError("uri", str(exc)) from None
        networks = []
        for text in parse_list(options.get("ip", "")):
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                raise OptionError("ip", str(exc)) from None
        return SANAuthorizer(
            dns=frozenset(_dns_key(d) for d in parse_list(options.get("dns", ""))),
            uris=tuple(uris),
            emails=frozenset(_email_key(e) for e in parse_list(options.get("email", ""))),
            networks=tuple(networks),
        )


@implementer(IPlugin, IAuthorizerType)
class _FingerprintType:
    name = "fingerprint"
    keys = frozenset({"sha256"})

    def build(self, name: str, options: Options) -> FingerprintAuthorizer:
        pins = set()
        for text in _required_list(options, "sha256"):
            try:
                pins.add(parse_fingerprint(text))
            except ValueError as exc:
                raise OptionError("sha256", str(exc)) from None
        return FingerprintAuthorizer(frozenset(pins))


@implementer(IPlugin, IAuthorizerType)
class _AnyType:
    name = "any"
    keys: frozenset[str] = frozenset()

    def build(self, name: str, options: Options) -> AnyAuthorizer:
        return AnyAuthorizer()


cn_type = _CNType()
san_type = _SANType()
fingerprint_type = _FingerprintType()
any_type = _AnyType()
