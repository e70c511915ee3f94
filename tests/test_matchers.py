"""Unit tests for gateway.authz.matchers: each matcher allows and denies, the X.509-SVID rules,
and the argument errors (with positions)."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.authz import matchers
from gateway.authz.expr import ExprError, parse
from gateway.authz.interfaces import ClientIdentity, Decision
from gateway.authz.testing import request_info
from gateway.pki import Issued, make_ca, make_leaf, name, new_key

CA = make_ca(name("Matcher CA", organization_name="Example"))
OTHER_CA = make_ca(name("Other CA"))
NOW = datetime.datetime.now(datetime.UTC)


def der(issued: Issued) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def identity_of(issued: Issued, issuer: Issued = CA) -> ClientIdentity:
    return ClientIdentity.from_der(der(issued)).with_issuer(der(issuer))


def custom_leaf(*, uris: tuple[str, ...] = ("spiffe://example.org/ns/prod/sa/web",),
                ca: bool = False, key_cert_sign: bool = False, policies: tuple[str, ...] = (),
                days: int = 30, key=None) -> Issued:  # type: ignore[no-untyped-def]
    """A leaf with the extensions gateway.pki does not offer (policies, CA flag, key usage)."""
    key = key or new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name("svc"))
        .issuer_name(CA.certificate.subject)
        .public_key(key.public_key())
        .serial_number(0x1234AB)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW - datetime.timedelta(days=1) + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    if policies:
        builder = builder.add_extension(x509.CertificatePolicies(
            [x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in policies]),
            critical=False)
    from cryptography.hazmat.primitives import hashes

    return Issued(builder.sign(CA.key, hashes.SHA256()), key)


def matcher(text: str) -> matchers.Matcher:
    return matchers.build(parse(text, matchers.KEYED), "rule")


def reason(text: str, who: ClientIdentity | None, **request: object) -> str:
    decision = matcher(text).decide(who, request_info(**request))  # type: ignore[arg-type]
    assert decision.authorizer == "rule"
    return ("+" if decision.allowed else "-") + decision.reason


PAYMENTS = make_leaf(CA, x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "payments"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
    x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
]))
WHO = identity_of(PAYMENTS)


@pytest.mark.parametrize(("rule", "expected"), [
    ("subject(O=Example, OU=payments)", "+subject-matched"),
    ("subject(OU=ops)", "+subject-matched"),  # any of the OU values
    ("subject(OU=ops, OU=payments)", "+subject-matched"),  # both present
    ("subject(ou=payments, cn=alice)", "+subject-matched"),  # type names case-insensitive
    ("subject(2.5.4.10=Example)", "+subject-matched"),  # dotted OID
    ("subject(organizationalUnitName=ops)", "-subject-not-matched"),  # not a short name
    ("subject(O=example)", "-subject-not-matched"),  # values compare exactly
    ("subject(OU=ops, OU=dev)", "-subject-not-matched"),  # every one listed must be there
    ("subject(L=Berlin)", "-subject-not-matched"),
    ("issuer(CN=Matcher CA, O=Example)", "+issuer-matched"),
    ("issuer(CN=Other CA)", "-issuer-not-matched"),
])
def test_subject_and_issuer(rule: str, expected: str) -> None:
    if "organizationalUnitName" in rule:
        with pytest.raises(ExprError, match="not an attribute type"):
            matcher(rule)
        return
    assert reason(rule, WHO) == expected


def test_issuer_sha256_is_the_fingerprint_of_the_verified_issuer() -> None:
    pin = hashlib.sha256(der(CA)).hexdigest()
    colons = ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()
    assert reason(f"issuer_sha256({colons})", WHO) == "+issuer-sha256-matched"
    assert reason(f"issuer_sha256({pin})", identity_of(PAYMENTS, OTHER_CA)) == (
        "-issuer-sha256-not-matched")
    # No verified chain known (a certificate read from a file): never matches.
    assert reason(f"issuer_sha256({pin})", ClientIdentity.from_der(der(PAYMENTS))) == (
        "-issuer-sha256-not-matched")


@pytest.mark.parametrize(("rule", "expected"), [
    ("spiffe(trust_domain=example.org)", "+spiffe-matched"),
    ("spiffe(trust_domain=example.org, path=/ns/*/sa/web)", "+spiffe-matched"),
    ("spiffe(trust_domain=example.org, path=/ns/**)", "+spiffe-matched"),
    ("spiffe(trust_domain=example.org, path=/ns/dev/sa/web, path=/ns/prod/sa/web)",
     "+spiffe-matched"),
    ("spiffe(trust_domain=example.org, path=/ns/*/sa/db)", "-spiffe-not-matched"),
    ("spiffe(trust_domain=example.com)", "-spiffe-not-matched"),
    ("spiffe(trust_domain=example.or)", "-spiffe-not-matched"),
])
def test_spiffe_matches_a_valid_svid(rule: str, expected: str) -> None:
    assert reason(rule, identity_of(custom_leaf())) == expected


@pytest.mark.parametrize("leaf", [
    pytest.param(lambda: custom_leaf(uris=()), id="no-uri-san"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/a", "spiffe://example.org/b")),
                 id="two-uri-sans"),
    pytest.param(lambda: custom_leaf(uris=("https://example.org/ns/prod",)), id="not-spiffe"),
    pytest.param(lambda: custom_leaf(uris=("SPIFFE://example.org/ns/prod",)),
                 id="scheme-upper-case"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://Example.org/ns/prod",)),
                 id="trust-domain-upper-case"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org",)), id="no-path"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/",)), id="root-path"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/ns//web",)), id="empty-segment"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/ns/./web",)), id="dot-segment"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/ns/../web",)), id="dot-dot"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/ns/web/",)), id="trailing-slash"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org:8443/ns",)), id="port"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/ns?x=1",)), id="query"),
    pytest.param(lambda: custom_leaf(uris=("spiffe://example.org/n%41s",)), id="percent"),
    pytest.param(lambda: custom_leaf(ca=True), id="leaf-is-a-ca"),
    pytest.param(lambda: custom_leaf(key_cert_sign=True), id="key-cert-sign"),
])
def test_spiffe_denies_a_broken_svid_with_its_own_reason(leaf) -> None:  # type: ignore[no-untyped-def]
    rule = "spiffe(trust_domain=example.org)"
    assert reason(rule, identity_of(leaf())) == "-spiffe-invalid-svid"


def test_eku_policy_serial_spki_and_validity() -> None:
    key = new_key()
    leaf = identity_of(custom_leaf(policies=("1.3.6.1.4.1.99999.1", "2.23.140.1.2.1"), key=key))
    renewed = identity_of(custom_leaf(key=key, days=60))
    spki = hashlib.sha256(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    cases = [
        ("eku(clientAuth)", leaf, "+eku-matched"),
        ("eku(1.3.6.1.5.5.7.3.2)", leaf, "+eku-matched"),
        ("eku(clientAuth, serverAuth)", leaf, "-eku-not-matched"),
        ("eku(serverAuth)", leaf, "-eku-not-matched"),
        ("policy_oid(1.3.6.1.4.1.99999.1)", leaf, "+policy-oid-matched"),
        ("policy_oid(1.3.6.1.4.1.99999.1, 2.23.140.1.2.1)", leaf, "+policy-oid-matched"),
        ("policy_oid(1.3.6.1.4.1.99999.2)", leaf, "-policy-oid-not-matched"),
        ("policy_oid(1.3.6.1.4.1.99999.1)", renewed, "-policy-oid-not-matched"),
        ("serial(12:34:ab)", leaf, "+serial-matched"),
        ("serial(001234AB, 01)", leaf, "+serial-matched"),
        ("serial(1234AC)", leaf, "-serial-not-matched"),
        (f"spki_sha256({spki})", leaf, "+spki-sha256-matched"),
        (f"spki_sha256({spki})", renewed, "+spki-sha256-matched"),  # same key, renewed
        (f"spki_sha256({spki})", WHO, "-spki-sha256-not-matched"),
        ("max_validity(30)", leaf, "+validity-within-limit"),
        ("max_validity(29)", leaf, "-validity-too-long"),
        ("max_validity(45)", renewed, "-validity-too-long"),
    ]
    assert [reason(rule, who) for rule, who, _ in cases] == [want for _, _, want in cases]


def test_eku_without_the_extension_does_not_match() -> None:
    no_eku = identity_of(make_leaf(CA, "x", eku=None))
    assert reason("eku(clientAuth)", no_eku) == "-eku-not-matched"


@pytest.mark.parametrize(("rule", "request_", "expected"), [
    ("method(GET, HEAD)", {"method": "HEAD"}, "+method-matched"),
    ("method(GET)", {"method": "get"}, "-method-not-matched"),
    ("method(GET)", {"method": "POST"}, "-method-not-matched"),
    ("path(/admin/)", {"path": "/admin/x"}, "+path-matched"),
    ("path(/api/, /admin/)", {"path": "/admin/"}, "+path-matched"),
    ("path(/admin/)", {"path": "/admin"}, "-path-not-matched"),
    ("host(api.example.com)", {"host": "API.example.com.:8443"}, "+host-matched"),
    ("host(::1)", {"host": "[::1]:443"}, "+host-matched"),
    ("host(api.example.com)", {"host": "www.example.com"}, "-host-not-matched"),
    ("host(api.example.com)", {"host": None}, "-host-not-matched"),
])
def test_request_matchers(rule: str, request_: dict[str, object], expected: str) -> None:
    assert reason(rule, WHO, **request_) == expected


def test_request_matchers_need_no_certificate_and_certificate_matchers_do() -> None:
    assert reason("method(GET)", None) == "+method-matched"
    for rule in ("subject(CN=alice)", "issuer(CN=x)", "eku(clientAuth)", "serial(01)",
                 "spiffe(trust_domain=x)", "max_validity(1)", "policy_oid(1.2.3)",
                 f"spki_sha256({'0' * 64})", f"issuer_sha256({'0' * 64})"):
        assert reason(rule, None) == "-no-certificate", rule


@pytest.mark.parametrize(("rule", "position", "token", "problem"), [
    ("nope(x)", 1, "nope", "unknown function"),
    ("method()", 1, "method", "needs at least one value"),
    ("subject(XX=1)", 9, "XX", "not an attribute type"),
    ("spiffe(path=/x)", 1, "spiffe", "exactly one trust_domain"),
    ("spiffe(trust_domain=Example.org)", 21, "Example.org", "lowercase"),
    ("spiffe(trust_domain=a, path=x)", 29, "x", "starts with /"),
    ("spiffe(trust_domain=a, path=/a*)", 29, "/a*", "whole path segment"),
    ("spiffe(trust_domain=a, port=1)", 24, "port", "trust_domain= and path="),
    ("eku(client)", 5, "client", "not a dotted OID"),
    ("serial(xyz)", 8, "xyz", "hex serial"),
    ("spki_sha256(abcd)", 13, "abcd", "not a SHA-256 fingerprint"),
    ("max_validity(0)", 14, "0", "one number of days"),
    ("max_validity(10, 20)", 18, "20", "one number of days"),
    ("method(GET POST)", 8, "GET POST", "not a method"),
    ("path(admin)", 6, "admin", "starts with /"),
    ("host(a.example:443)", 6, "a.example:443", "without port"),
])
def test_bad_arguments_point_at_the_token(rule: str, position: int, token: str,
                                          problem: str) -> None:
    with pytest.raises(ExprError) as caught:
        matcher(rule)
    assert (caught.value.position, caught.value.token) == (position, token)
    assert problem in caught.value.problem


def test_decisions_are_prebuilt_and_name_the_rule() -> None:
    built = matcher("method(GET)")
    first = built.decide(None, request_info())
    assert first is built.decide(None, request_info())
    assert first == Decision(True, "method-matched", "rule")
