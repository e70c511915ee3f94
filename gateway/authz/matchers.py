"""The matchers of ``type = expr`` rules: tests on the certificate and on the request. Pure.

Each matcher is built once, from its parsed call (:func:`build`), and then decides per request
with prebuilt :class:`~gateway.authz.interfaces.Decision` objects: ``<name>-matched`` or
``<name>-not-matched`` (``-`` for ``_``: ``issuer-sha256-matched``), ``no-certificate`` for a
certificate matcher when the client sent none, and the special ids below.

Certificate matchers (read from the verified leaf, once per certificate, cached):

* ``subject(TYPE=VALUE, ...)`` / ``issuer(TYPE=VALUE, ...)`` — every listed attribute must be
  present with that value. ``TYPE`` is an RFC 4514 / OpenSSL short name (``CN``, ``O``, ``OU``,
  ``C``, ``DC``, ``UID``, ``emailAddress``…, case-insensitive) or a dotted OID. Values compare
  exactly (case-sensitively) with the attribute's decoded text; a value that does not decode as
  text never matches. Several attributes of one type (two ``OU``, in separate RDNs or one
  multi-valued RDN): ``OU=x`` matches if any of them is ``x``; ``OU=x, OU=y`` needs both.
* ``issuer_sha256(FP, ...)`` — the SHA-256 fingerprint of the certificate that issued the leaf in
  the verified chain is one of those listed (colons optional).
* ``spiffe(trust_domain=TD, path=PATTERN, ...)`` — the leaf is an X.509-SVID (SPIFFE X509-SVID
  §2, §4: exactly one URI SAN, scheme ``spiffe``, a lowercase trust domain of ``a-z 0-9 . - _``, a
  non-empty path of segments of ``A-Z a-z 0-9 . - _``, none empty, ``.`` or ``..``, no query,
  fragment, port or user info; the leaf is not a CA and has neither ``keyCertSign`` nor
  ``cRLSign``) in trust domain ``TD``, and, when ``path`` is given, its path matches one of them
  (``*`` one segment, ``**`` as the last one or more, as in ``type = san``). A leaf breaking the
  X.509-SVID rules is ``spiffe-invalid-svid``, which a rule treats as a fault (it denies
  whatever ``not`` surrounds it).
* ``eku(OID, ...)`` — the extended key usage lists every OID given (dotted, or ``serverAuth``,
  ``clientAuth``, ``codeSigning``, ``emailProtection``, ``timeStamping``, ``OCSPSigning``); a
  certificate without the extension does not match.
* ``policy_oid(OID, ...)`` — the certificate policies extension lists every OID given.
* ``serial(HEX, ...)`` — the serial number is one of those listed (hex, colons optional, any
  case, leading zeros ignored).
* ``spki_sha256(FP, ...)`` — the SHA-256 of the DER SubjectPublicKeyInfo is one of those listed:
  a pin on the key, kept by a renewal with the same key.
* ``max_validity(DAYS)`` — the certificate's validity period (notAfter − notBefore) is at most
  DAYS days: ``validity-within-limit`` or ``validity-too-long``.

Request matchers (work without a certificate too):

* ``method(M, ...)`` — the method is one of those listed (case-sensitive, RFC 9110 §9.1).
* ``path(PREFIX, ...)`` — the normalised path starts with one of the prefixes (a plain string
  prefix, as a route's ``prefix``).
* ``host(NAME, ...)`` — the ``Host`` (without port and trailing dot, case-insensitive) is one
  of those listed.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping

import attrs
from asn1crypto import x509 as asn1_x509

from gateway.authz.builtin import parse_fingerprint
from gateway.authz.expr import ExprError, Node, Value
from gateway.authz.interfaces import ClientIdentity, Decision, RequestInfo
from gateway.authz.uri import URIPattern
from gateway.dn import _SHORT_NAMES
from gateway.identity import decode_value, extended_key_usages, read_certificate, read_sans

INVALID_SVID = "spiffe-invalid-svid"
NO_CERTIFICATE = "no-certificate"

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_EKU_NAMES = {
    "serverauth": "1.3.6.1.5.5.7.3.1",
    "clientauth": "1.3.6.1.5.5.7.3.2",
    "codesigning": "1.3.6.1.5.5.7.3.3",
    "emailprotection": "1.3.6.1.5.5.7.3.4",
    "timestamping": "1.3.6.1.5.5.7.3.8",
    "ocspsigning": "1.3.6.1.5.5.7.3.9",
}
# RFC 4514 §3 names, then OpenSSL's short names, case-insensitively (RFC 4512 §1.4).
_ATTRIBUTE_TYPES = {name.lower(): oid for oid, name in _SHORT_NAMES.items()} | {
    "cn": "2.5.4.3", "l": "2.5.4.7", "st": "2.5.4.8", "o": "2.5.4.10", "ou": "2.5.4.11",
    "c": "2.5.4.6", "street": "2.5.4.9", "dc": "0.9.2342.19200300.100.1.25",
    "uid": "0.9.2342.19200300.100.1.1",
}
_BASIC_CONSTRAINTS = "2.5.29.19"
_KEY_USAGE = "2.5.29.15"
_CERTIFICATE_POLICIES = "2.5.29.32"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SVID_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

Identity = ClientIdentity | None


@attrs.frozen
class CertificateFacts:
    """What the certificate matchers read from one leaf, computed once per certificate.

    ``subject``/``issuer`` map dotted attribute OIDs to the decoded values of that type;
    ``ekus`` is ``None`` without the EKU extension; ``svid`` is the SPIFFE ID of a valid
    X.509-SVID, or ``None`` with ``svid_problem`` saying why it is not one.
    """

    subject: Mapping[str, frozenset[str]]
    issuer: Mapping[str, frozenset[str]]
    spki_sha256: str
    ekus: frozenset[str] | None
    policies: frozenset[str]
    validity: datetime.timedelta
    svid: str | None
    svid_problem: str | None


def _attributes(rdns: tuple[tuple[tuple[str, int, bytes, bytes], ...], ...]
                ) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for rdn in rdns:
        for oid, tag, content, _ in rdn:
            text = decode_value(tag, content)
            if text is not None:
                found.setdefault(oid, set()).add(text)
    return {oid: frozenset(values) for oid, values in found.items()}


@functools.lru_cache(maxsize=4096)
def certificate_facts(pem: str) -> CertificateFacts:
    """The :class:`CertificateFacts` of the PEM certificate *pem* (an identity's ``pem``).

    Raises ``ValueError`` when an extension a matcher reads does not parse (a rule counts that
    as a fault)."""
    body = "".join(pem.strip().splitlines()[1:-1])
    raw = read_certificate(base64.b64decode(body))
    policies: set[str] = set()
    try:
        for value in raw.extension_values(_CERTIFICATE_POLICIES):
            policies.update(p["policy_identifier"].dotted
                            for p in asn1_x509.CertificatePolicies.load(value))
        is_ca = any(bool(asn1_x509.BasicConstraints.load(v)["ca"].native)
                    for v in raw.extension_values(_BASIC_CONSTRAINTS))
        usages: set[str] = set()
        for value in raw.extension_values(_KEY_USAGE):
            usages.update(asn1_x509.KeyUsage.load(value).native)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"certificate extension: {exc}") from None
    ekus = extended_key_usages(raw)
    svid, problem = _svid(read_sans(raw).uris, is_ca, usages)
    return CertificateFacts(
        subject=_attributes(raw.subject),
        issuer=_attributes(raw.issuer),
        spki_sha256=hashlib.sha256(raw.spki).hexdigest(),
        ekus=frozenset(ekus) if ekus is not None else None,
        policies=frozenset(policies),
        validity=raw.not_after - raw.not_before,
        svid=svid,
        svid_problem=problem,
    )


def svid_problem(uri: str) -> str | None:
    """Why *uri* is not the SPIFFE ID of an X.509-SVID leaf (SPIFFE ID §2, X509-SVID §2), or
    ``None``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme != "spiffe":
        return "the URI SAN is not a spiffe:// URI"
    trust_domain, slash, path = rest.partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        return "the trust domain is not lowercase letters, digits, '.', '-', '_'"
    if not slash or not path:
        return "a leaf SPIFFE ID needs a path"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "the path has an empty, '.' or '..' segment"
        if not _SVID_SEGMENT.fullmatch(segment):
            return "a path segment holds a character outside A-Z a-z 0-9 . - _"
    return None


def _svid(uris: tuple[str, ...], is_ca: bool, usages: set[str]) -> tuple[str | None, str | None]:
    if len(uris) != 1:
        return None, f"an X.509-SVID has exactly one URI SAN, not {len(uris)}"
    if is_ca:
        return None, "an X.509-SVID leaf is not a CA"
    if usages & {"key_cert_sign", "crl_sign"}:
        return None, "an X.509-SVID leaf has neither keyCertSign nor cRLSign"
    problem = svid_problem(uris[0])
    return (None, problem) if problem else (uris[0], None)


@functools.lru_cache(maxsize=1024)
def host_of(host: str) -> str:
    """A ``Host`` value's name: lower case, without port, brackets or trailing dot."""
    host = host.lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


@attrs.frozen
class Matcher:
    """One built matcher: :meth:`decide` gives ``yes`` or ``no`` by ``test``.

    ``test(facts_or_identity, request)`` is called with the :class:`CertificateFacts` (or, for
    ``on_identity``, the identity itself) for a certificate matcher, and with ``None`` for a
    request matcher (``needs_certificate`` false).
    """

    yes: Decision
    no: Decision
    test: Callable[[object, RequestInfo], bool]
    needs_certificate: bool = True
    on_identity: bool = False
    no_certificate: Decision | None = None
    invalid: Decision | None = None

    def decide(self, identity: Identity, request: RequestInfo) -> Decision:
        """The decision for *identity* making *request*; raises ``ValueError`` for a
        certificate whose extensions do not parse."""
        subject: object = None
        if self.needs_certificate:
            if identity is None:
                assert self.no_certificate is not None
                return self.no_certificate
            if self.on_identity:
                subject = identity
            else:
                facts = certificate_facts(identity.pem)
                if self.invalid is not None and facts.svid is None:
                    return self.invalid
                subject = facts
        return self.yes if self.test(subject, request) else self.no


def build(node: Node, owner: str) -> Matcher:
    """The :class:`Matcher` for the matcher call *node* of the rule of authorizer *owner*
    (whose name its decisions carry). Raises :class:`~gateway.authz.expr.ExprError` for an
    unknown matcher or bad arguments, pointing at the offending one."""
    builder = _BUILDERS.get(node.name)
    if builder is None:
        known = ", ".join(sorted(_BUILDERS))
        raise ExprError(node.position, node.name,
                        f"unknown function (all, any, not, or a matcher: {known})")
    values = [arg for arg in node.args or () if isinstance(arg, Value)]
    if not values:
        raise ExprError(node.position, node.name, f"{node.name}() needs at least one value")
    test, needs_certificate, on_identity = builder(node, values)
    stem = node.name.replace("_", "-")
    yes, no = f"{stem}-matched", f"{stem}-not-matched"
    if node.name == "max_validity":
        yes, no = "validity-within-limit", "validity-too-long"
    return Matcher(
        yes=Decision(True, yes, owner), no=Decision(False, no, owner), test=test,
        needs_certificate=needs_certificate, on_identity=on_identity,
        no_certificate=Decision(False, NO_CERTIFICATE, owner),
        invalid=Decision(False, INVALID_SVID, owner) if node.name == "spiffe" else None,
    )


KEYED = frozenset({"subject", "issuer", "spiffe"})
_Built = tuple[Callable[[object, RequestInfo], bool], bool, bool]


def _bad(value: Value, problem: str) -> ExprError:
    """An error pointing at *value*'s text."""
    return ExprError(value.at, value.text, problem)


def _bad_key(value: Value, problem: str) -> ExprError:
    """An error pointing at *value*'s key."""
    return ExprError(value.position, value.key or value.text, problem)


def _attribute_list(values: list[Value]) -> tuple[tuple[str, str], ...]:
    wanted = []
    for value in values:
        assert value.key is not None
        oid = value.key if _OID.fullmatch(value.key) else _ATTRIBUTE_TYPES.get(value.key.lower())
        if oid is None:
            raise _bad_key(value, "not an attribute type (RFC 4514 short name or dotted OID)")
        wanted.append((oid, value.text))
    return tuple(wanted)


def _subject(node: Node, values: list[Value]) -> _Built:
    wanted = _attribute_list(values)
    issuer = node.name == "issuer"

    def test(facts: object, request: RequestInfo) -> bool:
        assert isinstance(facts, CertificateFacts)
        names = facts.issuer if issuer else facts.subject
        return all(value in names.get(oid, ()) for oid, value in wanted)

    return test, True, False


def _fingerprints(values: list[Value]) -> frozenset[str]:
    pins = set()
    for value in values:
        try:
            pins.add(parse_fingerprint(value.text))
        except ValueError as exc:
            raise _bad(value, str(exc)) from None
    return frozenset(pins)


def _issuer_sha256(node: Node, values: list[Value]) -> _Built:
    pins = _fingerprints(values)

    def test(identity: object, request: RequestInfo) -> bool:
        assert isinstance(identity, ClientIdentity)
        return identity.issuer_sha256 in pins

    return test, True, True


def _spki_sha256(node: Node, values: list[Value]) -> _Built:
    pins = _fingerprints(values)

    def test(facts: object, request: RequestInfo) -> bool:
        assert isinstance(facts, CertificateFacts)
        return facts.spki_sha256 in pins

    return test, True, False


def _spiffe(node: Node, values: list[Value]) -> _Built:
    domains = [v for v in values if v.key == "trust_domain"]
    paths = [v for v in values if v.key == "path"]
    for value in values:
        if value.key not in ("trust_domain", "path"):
            raise _bad_key(value, "spiffe() takes trust_domain= and path=")
    if len(domains) != 1:
        raise ExprError(node.position, node.name, "spiffe() needs exactly one trust_domain=")
    domain = domains[0].text
    if not _TRUST_DOMAIN.fullmatch(domain):
        raise _bad(domains[0], "a trust domain is lowercase letters, digits, '.', '-', '_'")
    patterns = []
    for value in paths:
        if not value.text.startswith("/"):
            raise _bad(value, "a SPIFFE ID path starts with /")
        try:
            patterns.append(URIPattern.parse(f"spiffe://{domain}{value.text}"))
        except ValueError as exc:
            raise _bad(value, str(exc)) from None
    prefix = f"spiffe://{domain}/"

    def test(facts: object, request: RequestInfo) -> bool:
        assert isinstance(facts, CertificateFacts) and facts.svid is not None
        if not facts.svid.startswith(prefix):
            return False
        return not patterns or any(p.matches(facts.svid) for p in patterns)

    return test, True, False


def _oids(node: Node, values: list[Value], names: Mapping[str, str]) -> frozenset[str]:
    oids = set()
    for value in values:
        oid = names.get(value.text.lower(), value.text)
        if not _OID.fullmatch(oid):
            raise _bad(value, "not a dotted OID")
        oids.add(oid)
    return frozenset(oids)


def _eku(node: Node, values: list[Value]) -> _Built:
    wanted = _oids(node, values, _EKU_NAMES)

    def test(facts: object, request: RequestInfo) -> bool:
        assert isinstance(facts, CertificateFacts)
        return facts.ekus is not None and wanted <= facts.ekus

    return test, True, False


def _policy_oid(node: Node, values: list[Value]) -> _Built:
    wanted = _oids(node, values, {})

    def test(facts: object, request: RequestInfo) -> bool:
        assert isinstance(facts, CertificateFacts)
        return wanted <= facts.policies

    return test, True, False


def _serial(node: Node, values: list[Value]) -> _Built:
    from gateway.identity import serial_hex

    serials = set()
    for value in values:
        digits = value.text.replace(":", "")
        try:
            serials.add(serial_hex(int(digits, 16)))
        except ValueError:
            raise _bad(value, "not a hex serial number (colons optional)") from None
    frozen = frozenset(serials)

    def test(identity: object, request: RequestInfo) -> bool:
        assert isinstance(identity, ClientIdentity)
        return identity.serial in frozen

    return test, True, True


def _max_validity(node: Node, values: list[Value]) -> _Built:
    if len(values) != 1 or not values[0].text.isdigit() or not 0 < int(values[0].text) <= 36500:
        raise _bad(values[-1], "max_validity() takes one number of days, 1-36500")
    limit = datetime.timedelta(days=int(values[0].text))

    def test(facts: object, request: RequestInfo) -> bool:
        assert isinstance(facts, CertificateFacts)
        return facts.validity <= limit

    return test, True, False


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _method(node: Node, values: list[Value]) -> _Built:
    for value in values:
        if not _TOKEN.fullmatch(value.text):
            raise _bad(value, "not a method (an RFC 9110 token)")
    methods = frozenset(v.text for v in values)
    return (lambda _, request: request.method in methods), False, False


def _path(node: Node, values: list[Value]) -> _Built:
    for value in values:
        if not value.text.startswith("/") or any(ord(c) <= 0x20 or ord(c) >= 0x7F
                                                  for c in value.text):
            raise _bad(value, "a path prefix starts with / (printable ASCII, no spaces)")
    prefixes = tuple(v.text for v in values)
    return (lambda _, request: request.path.startswith(prefixes)), False, False


def _host(node: Node, values: list[Value]) -> _Built:
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", value.text) and not _ipv6(value.text):
            raise _bad(value, "a host name or IP address without port")
    hosts = frozenset(v.text.lower().rstrip(".") for v in values)

    def test(_: object, request: RequestInfo) -> bool:
        return request.host is not None and host_of(request.host) in hosts

    return test, False, False


def _ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


_BUILDERS: dict[str, Callable[[Node, list[Value]], _Built]] = {
    "subject": _subject,
    "issuer": _subject,
    "issuer_sha256": _issuer_sha256,
    "spiffe": _spiffe,
    "eku": _eku,
    "policy_oid": _policy_oid,
    "serial": _serial,
    "spki_sha256": _spki_sha256,
    "max_validity": _max_validity,
    "method": _method,
    "path": _path,
    "host": _host,
}
MATCHERS = frozenset(_BUILDERS)
