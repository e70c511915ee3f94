"""``type = expr`` rules against the real process: each construct and matcher allows and denies,
shadow rules log without enforcing, a failing leaf denies under not/any (fail closed)."""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import client_context, https_request, parse_responses, tls_connect, wait_for

from gateway.pki import Issued, name, new_key

NOW = datetime.datetime.now(datetime.UTC)

PLUGIN = '''
from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.authz.interfaces import IAuthorizer, IAuthorizerType


@implementer(IAuthorizer)
class Failing:
    def authorize(self, identity, request):
        raise RuntimeError("broken on purpose")


@implementer(IAuthorizer)
class Never:
    def authorize(self, identity, request):
        return Deferred()


@implementer(IPlugin, IAuthorizerType)
class FailingType:
    name = "test-failing"
    keys = frozenset()

    def build(self, name, options):
        return Failing()


@implementer(IPlugin, IAuthorizerType)
class NeverType:
    name = "test-never"
    keys = frozenset()

    def build(self, name, options):
        return Never()


failing_type = FailingType()
never_type = NeverType()
'''


@attrs.frozen
class Client:
    cert: Path
    key: Path
    issued: Issued


def write(pki, label: str, issued: Issued) -> Client:  # type: ignore[no-untyped-def]
    cert, key = pki.directory / f"{label}.crt", pki.directory / f"{label}.key"
    issued.write(cert, key)
    return Client(cert, key, issued)


def custom(pki, label: str, *, key=None, policies=(), uris=(), days=30):  # type: ignore[no-untyped-def]
    """A client certificate with what gateway.pki does not offer: policies, a given key."""
    key = key or new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(label))
        .issuer_name(pki.root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if policies:
        builder = builder.add_extension(x509.CertificatePolicies(
            [x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in policies]),
            critical=False)
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return write(pki, label, Issued(builder.sign(pki.root.key, hashes.SHA256()), key))


@attrs.frozen
class Certs:
    alice: Client
    carol: Client  # O=Example, OU=ops
    bob: Client
    blocked: Client  # CN alice, pinned by [authorizer:blocked]
    intermediate: Client  # issued by the test intermediate, sent with its chain
    svid: Client
    svid_other: Client
    svid_two: Client
    eku_both: Client
    policy: Client
    serial: Client
    pinned: Client
    renewed: Client
    short: Client


@pytest.fixture(scope="module")
def certs(pki) -> Certs:  # type: ignore[no-untyped-def]
    def leaf(label: str, subject, **kwargs) -> Client:  # type: ignore[no-untyped-def]
        files = pki.leaf(label, subject, **kwargs)
        return Client(files.cert, files.key, files.issued)

    key = new_key()
    via = pki.via_intermediate(True)
    return Certs(
        alice=leaf("alice", name("alice", organization_name="Example, Inc.", country_name="DE")),
        carol=leaf("policy-carol", x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
            x509.NameAttribute(NameOID.COMMON_NAME, "carol")])),
        bob=leaf("bob", "bob"),
        blocked=leaf("policy-blocked", "alice"),
        intermediate=Client(via.cert, via.key, via.issued),
        svid=leaf("policy-svid", None, sans=["uri:spiffe://example.org/ns/prod/sa/web"]),
        svid_other=leaf("policy-svid-other", None, sans=["uri:spiffe://example.org/ns/prod/sa/db"]),
        svid_two=leaf("policy-svid-two", None, sans=["uri:spiffe://example.org/ns/prod/sa/web",
                                                     "uri:spiffe://example.org/ns/x"]),
        eku_both=leaf("policy-eku", "alice", eku=(ExtendedKeyUsageOID.CLIENT_AUTH,
                                                  ExtendedKeyUsageOID.EMAIL_PROTECTION)),
        policy=custom(pki, "policy-oid", policies=("1.3.6.1.4.1.55555.1",)),
        serial=leaf("policy-serial", "alice", serial=0x1234ABCD),
        pinned=custom(pki, "policy-pinned", key=key),
        renewed=custom(pki, "policy-renewed", key=key, days=60),
        short=leaf("policy-short", "alice", days=30),
    )


def fingerprint(issued: Issued) -> str:
    return hashlib.sha256(issued.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def spki(issued: Issued) -> str:
    return hashlib.sha256(issued.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


# label -> (rule, client allowed, client denied, reason of the denial)
MATCHERS = {
    "subject": ("subject(O=Example, OU=ops)", "carol", "alice", "subject-not-matched"),
    "issuer": ("issuer(CN=mtlsgw test intermediate)", "intermediate", "alice",
               "issuer-not-matched"),
    "issuer_sha256": ("issuer_sha256({intermediate_ca})", "intermediate", "alice",
                      "issuer-sha256-not-matched"),
    "spiffe": ("spiffe(trust_domain=example.org, path=/ns/*/sa/web)", "svid", "svid_other",
               "spiffe-not-matched"),
    "spiffe_invalid": ("spiffe(trust_domain=example.org)", "svid", "svid_two",
                       "spiffe-invalid-svid"),
    "eku": ("eku(clientAuth, emailProtection)", "eku_both", "alice", "eku-not-matched"),
    "policy_oid": ("policy_oid(1.3.6.1.4.1.55555.1)", "policy", "alice",
                   "policy-oid-not-matched"),
    "serial": ("serial(12:34:ab:cd)", "serial", "alice", "serial-not-matched"),
    "spki_sha256": ("spki_sha256({pinned_key})", "pinned", "alice", "spki-sha256-not-matched"),
    "spki_renewed": ("spki_sha256({pinned_key})", "renewed", "alice",
                     "spki-sha256-not-matched"),
    "max_validity": ("max_validity(90)", "short", "alice", "validity-too-long"),
}
CONSTRUCT = ("all(team, not(blocked), any(method(GET, HEAD), "
             "all(path(/c/admin/), subject(OU=ops))))")


@pytest.fixture(scope="module")
def gateway(start_gateway, upstream, certs, pki, tmp_path_factory):  # type: ignore[no-untyped-def]
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "twisted" / "plugins").mkdir(parents=True)
    (plugins / "twisted" / "plugins" / "mtlsgw_test_failing.py").write_text(PLUGIN)
    values = {"intermediate_ca": fingerprint(pki.intermediate),
              "pinned_key": spki(certs.pinned.issued)}
    sections: dict[str, dict[str, str]] = {
        "authorize": {"authorizers": "team", "timeout": "0.5"},
        "authorizer:team": {"type": "cn", "allow": "alice, carol"},
        "authorizer:blocked": {"type": "fingerprint", "sha256": fingerprint(certs.blocked.issued)},
        "authorizer:broken": {"type": "test-failing"},
        "authorizer:slow": {"type": "test-never"},
        "authorizer:trial": {"type": "expr", "rule": "all(team, method(GET))", "shadow": "yes"},
    }

    def route(label: str, prefix: str, rule: str, **more: str) -> None:
        sections[f"authorizer:{label}"] = {"type": "expr", "rule": rule}
        sections[f"route:{label}"] = {"prefix": prefix, "upstream": upstream.url,
                                      "authorizers": label, **more}

    route("construct", "/c/", CONSTRUCT)
    for label, (rule, *_) in MATCHERS.items():
        route(f"m-{label}", f"/m/{label}/", rule.format(**values))
    route("m-method", "/m/method/", "method(GET, HEAD)")
    route("m-path", "/m/path/", "path(/m/path/open/)")
    route("m-host", "/m/host/", "host(localhost)")
    route("f-not", "/f/not/", "not(broken)")
    route("f-any", "/f/any/", "any(not(broken), team)")
    route("f-slow", "/f/slow/", "any(slow, team)")
    route("f-skipped", "/f/skipped/", "any(team, broken)")
    sections["route:shadow"] = {"prefix": "/s/", "upstream": upstream.url,
                                "authorizers": "team, trial"}
    return start_gateway(sections, env={"PYTHONPATH": str(plugins)})


def call(gateway, client: Client | None, path: str, method: str = "GET",  # type: ignore[no-untyped-def]
         headers: list[tuple[str, str]] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    return https_request(gateway.port, _context(client), method, path, headers)


_CONTEXTS: dict[object, object] = {}


def _context(client: Client | None):  # type: ignore[no-untyped-def]
    return _CONTEXTS[client]


@pytest.fixture(autouse=True, scope="module")
def contexts(pki, certs):  # type: ignore[no-untyped-def]
    _CONTEXTS.clear()
    _CONTEXTS[None] = client_context(pki.ca)
    for client in attrs.astuple(certs, recurse=False):
        _CONTEXTS[client] = client_context(pki.ca, client.cert, client.key)


def access_line(gateway, path: str) -> str:  # type: ignore[no-untyped-def]
    """The access-log line of the request for *path* (each test uses its own paths)."""
    marker = f'path="{path}"'

    def find() -> str | None:
        return next((line for line in gateway.log().splitlines() if marker in line), None)

    return str(wait_for(find, f"the access line of {path}"))


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))


def test_the_documented_construct_allows_and_denies(gateway, certs, upstream) -> None:  # type: ignore[no-untyped-def]
    cases = [
        # client, method, path, status, reason, authorizer
        (certs.alice, "GET", "/c/1", 200, "method-matched", "construct"),
        (certs.alice, "POST", "/c/2", 403, "method-not-matched", "construct"),
        (certs.carol, "POST", "/c/admin/3", 200, "subject-matched", "construct"),
        (certs.alice, "POST", "/c/admin/4", 403, "method-not-matched", "construct"),
        (certs.carol, "POST", "/c/5", 403, "method-not-matched", "construct"),
        (certs.blocked, "GET", "/c/6", 403, "fingerprint-allowed", "blocked"),
        (certs.bob, "GET", "/c/7", 403, "cn-not-allowed", "team"),
    ]
    for client, method, path, status, reason, authorizer in cases:
        upstream.clear()
        got, _, body = call(gateway, client, path, method)
        assert got == status, (path, got, body)
        line = fields(access_line(gateway, path))
        assert (line["reason"], line["authorizer"]) == (reason, authorizer), (path, line)
        if status == 403:
            assert body == f"403 Forbidden: {reason}\n".encode()
            assert upstream.requests == []
        else:
            assert upstream.last()["path"] == path


@pytest.mark.parametrize("label", list(MATCHERS))
def test_each_matcher_allows_and_denies(gateway, certs, upstream, label: str) -> None:  # type: ignore[no-untyped-def]
    _, allowed, denied, reason = MATCHERS[label]
    assert call(gateway, getattr(certs, allowed), f"/m/{label}/yes")[0] == 200
    upstream.clear()
    status, _, body = call(gateway, getattr(certs, denied), f"/m/{label}/no")
    assert (status, body) == (403, f"403 Forbidden: {reason}\n".encode())
    assert upstream.requests == []
    assert fields(access_line(gateway, f"/m/{label}/no"))["authorizer"] == f"m-{label}"


def test_request_matchers_allow_and_deny(gateway, certs, upstream, pki) -> None:  # type: ignore[no-untyped-def]
    assert call(gateway, certs.bob, "/m/method/a", "HEAD")[0] == 200
    assert call(gateway, certs.bob, "/m/method/b", "DELETE")[0] == 403
    assert call(gateway, certs.bob, "/m/path/open/x")[0] == 200
    status, _, body = call(gateway, certs.bob, "/m/path/closed")
    assert (status, body) == (403, b"403 Forbidden: path-not-matched\n")
    assert call(gateway, certs.bob, "/m/host/a")[0] == 200  # Host: localhost
    # Another Host (no SNI, so no 421): the address the certificate also names.
    with tls_connect(gateway.port, _context(certs.bob), server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /m/host/b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    (response,), _ = parse_responses(data)
    assert (response.status, response.body) == (403, b"403 Forbidden: host-not-matched\n")


@pytest.mark.parametrize(("path", "allowed"), [
    ("/f/not/1", False),  # not(broken): broken raises, the rule denies
    ("/f/any/1", False),  # any(not(broken), team): team would allow, the fault wins
    ("/f/slow/1", False),  # any(slow, team): slow times out, the fault wins
    ("/f/skipped/1", True),  # any(team, broken): team allows, broken is never asked
])
def test_a_failing_leaf_denies_the_whole_rule(gateway, certs, upstream, path: str,  # type: ignore[no-untyped-def]
                                              allowed: bool) -> None:
    upstream.clear()
    status, _, body = call(gateway, certs.alice, path)
    if allowed:
        assert status == 200
        return
    assert (status, body) == (403, b"403 Forbidden: authorizer-error\n")
    assert upstream.requests == []
    line = fields(access_line(gateway, path))
    assert line["authorizer"] == ("slow" if "slow" in path else "broken")


def test_a_shadow_rule_logs_its_decision_and_does_not_enforce_it(gateway, certs,  # type: ignore[no-untyped-def]
                                                                 upstream) -> None:
    # trial = all(team, method(GET)) would deny a POST; team alone decides: allowed.
    assert call(gateway, certs.alice, "/s/post-1", "POST")[0] == 200
    log = gateway.wait_log("path=/s/post-1 ")
    (line,) = [x for x in log.splitlines() if "path=/s/post-1 " in x]
    assert "shadow rule trial would deny reason=method-not-matched authorizer=trial " \
           "method=POST path=/s/post-1 " in line
    assert fields(access_line(gateway, "/s/post-1"))["reason"] == "cn-allowed"
    # And the other way: bob is denied by team, while the shadow rule would deny too.
    assert call(gateway, certs.bob, "/s/get-2")[0] == 403
    assert "shadow rule trial would deny reason=cn-not-allowed authorizer=team method=GET " \
           "path=/s/get-2 " in gateway.wait_log("path=/s/get-2 ")
    assert call(gateway, certs.alice, "/s/get-3")[0] == 200
    assert "shadow rule trial would allow reason=method-matched authorizer=trial" in \
        gateway.wait_log("path=/s/get-3 ")
