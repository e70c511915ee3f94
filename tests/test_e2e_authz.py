"""Authorization against the real process: each built-in type, policies, a third-party plugin,
and client_auth = optional."""

from __future__ import annotations

import pytest
from harness import Refused, client_context, headers_of, https_request

from gateway.pki import name


def _as(gateway, pki, files, path="/authz"):
    context = client_context(pki.ca, files.cert, files.key) if files else client_context(pki.ca)
    status, _, body = https_request(gateway.port, context, path=path)
    return status, body


@pytest.fixture(scope="module")
def san_leaf(pki):
    return pki.leaf("san-leaf", None, sans=[
        "dns:API.Example.com", "uri:spiffe://prod.example/ns/payments/sa/web",
        "email:svc@Example.COM", "ip:10.1.2.3"])


SAN_CASES = [
    ("dns", "dns = api.example.com.", True),
    ("dns other", "dns = other.example.com", False),
    ("uri wildcard", "uri = spiffe://prod.example/ns/*/sa/web", True),
    ("uri double wildcard", "uri = spiffe://prod.example/ns/**", True),
    ("uri wrong trust domain", "uri = spiffe://dev.example/ns/**", False),
    ("email", "email = svc@example.com", True),
    ("ip network", "ip = 10.1.0.0/16", True),
    ("ip other", "ip = 192.0.2.1", False),
]


@pytest.mark.parametrize(("label", "option", "allowed"), SAN_CASES, ids=[c[0] for c in SAN_CASES])
def test_san_authorizer(start_gateway, pki, upstream, san_leaf, label, option, allowed):
    key, value = (part.strip() for part in option.split("=", 1))
    gateway = start_gateway({"authorizer:team": {"type": "san", key: value}},
                            drop=("authorizer:team",))
    upstream.clear()
    status, body = _as(gateway, pki, san_leaf)
    if allowed:
        assert status == 200
        seen = upstream.last()
        assert headers_of(seen, "X-Client-SAN-DNS") == ["API.Example.com"]
        assert headers_of(seen, "X-Client-SAN-IP") == ["10.1.2.3"]
        assert headers_of(seen, "X-Client-Subject") == []  # empty subject: no header
    else:
        assert (status, body) == (403, b"403 Forbidden: san-not-allowed\n")
        assert upstream.requests == []


def test_cn_authorizer_allows_listed_and_denies_others(start_gateway, pki, upstream):
    gateway = start_gateway({"authorizer:team": {"allow": "alice, carol"}})
    assert _as(gateway, pki, pki.alice())[0] == 200
    upstream.clear()
    assert _as(gateway, pki, pki.bob()) == (403, b"403 Forbidden: cn-not-allowed\n")
    assert _as(gateway, pki, pki.two_cns()) == (403, b"403 Forbidden: cn-multiple\n")
    assert upstream.requests == []


def test_fingerprint_authorizer_pins_one_certificate(start_gateway, pki, upstream):
    alice = pki.alice()
    from gateway.identity import ClientIdentity

    pin = ClientIdentity.from_certificate(alice.issued.certificate).fingerprint_sha256
    colons = ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()
    gateway = start_gateway({"authorize": {"authorizers": "pinned"},
                             "authorizer:pinned": {"type": "fingerprint", "sha256": colons}})
    assert _as(gateway, pki, alice)[0] == 200
    # Same subject, other key: a different certificate.
    other_alice = pki.leaf("other-alice", name("alice", organization_name="Example, Inc.",
                                               country_name="DE"))
    upstream.clear()
    assert _as(gateway, pki, other_alice) == (403, b"403 Forbidden: fingerprint-not-allowed\n")
    assert upstream.requests == []


def test_policy_all_needs_every_authorizer(start_gateway, pki, upstream, san_leaf):
    gateway = start_gateway({
        "authorize": {"policy": "all", "authorizers": "team, internal"},
        "authorizer:team": {"allow": "alice"},
        "authorizer:internal": {"type": "san", "dns": "api.example.com"},
    })
    upstream.clear()
    assert _as(gateway, pki, pki.alice()) == (403, b"403 Forbidden: san-not-allowed\n")
    assert _as(gateway, pki, san_leaf) == (403, b"403 Forbidden: cn-not-allowed\n")
    both = pki.leaf("alice-with-san", "alice", sans=["dns:api.example.com"])
    assert _as(gateway, pki, both)[0] == 200
    assert len(upstream.requests) == 1


def test_policy_any_needs_one_authorizer(start_gateway, pki, san_leaf):
    gateway = start_gateway({
        "authorize": {"policy": "any", "authorizers": "team, internal"},
        "authorizer:internal": {"type": "san", "dns": "api.example.com"},
    })
    assert _as(gateway, pki, pki.alice())[0] == 200
    assert _as(gateway, pki, san_leaf)[0] == 200
    assert _as(gateway, pki, pki.bob())[0] == 403


def test_third_party_plugin_type_is_loaded_by_type_name(start_gateway, pki, upstream):
    pytest.importorskip("mtlsgw_path_authorizer", reason="scripts/test installs examples/")
    gateway = start_gateway({
        "authorize": {"authorizers": "public"},
        "authorizer:public": {"type": "path", "allow_prefix": "/health"},
    })
    assert _as(gateway, pki, pki.bob(), "/health/live")[0] == 200
    upstream.clear()
    assert _as(gateway, pki, pki.bob(), "/admin") == (403, b"403 Forbidden: path-not-allowed\n")
    assert upstream.requests == []
    assert "authorizer=public" in gateway.wait_log("reason=path-not-allowed")


def test_optional_client_auth_without_certificate(start_gateway, pki, upstream):
    pytest.importorskip("mtlsgw_path_authorizer", reason="scripts/test installs examples/")
    gateway = start_gateway({
        "tls": {"client_auth": "optional"},
        "authorize": {"policy": "any", "authorizers": "team, public"},
        "authorizer:public": {"type": "path", "allow_prefix": "/health",
                              "require_certificate": "no"},
    })
    upstream.clear()
    # No certificate: only the path the policy opens passes, and says so in X-Client-Verify.
    assert _as(gateway, pki, None, "/health")[0] == 200
    seen = upstream.last()
    assert headers_of(seen, "X-Client-Verify") == ["NONE"]
    assert headers_of(seen, "X-Client-CN") == []
    upstream.clear()
    assert _as(gateway, pki, None, "/admin") == (403, b"403 Forbidden: no-certificate\n")
    assert upstream.requests == []
    # A certificate that fails verification is still refused in the handshake.
    with pytest.raises(Refused):
        _as(gateway, pki, pki.expired(), "/health")
    # A good one works as usual.
    assert _as(gateway, pki, pki.alice(), "/admin")[0] == 200
    assert headers_of(upstream.last(), "X-Client-Verify") == ["SUCCESS"]


def test_built_in_authorizers_deny_a_connection_without_certificate(start_gateway, pki):
    gateway = start_gateway({"tls": {"client_auth": "optional"},
                             "authorizer:team": {"type": "any"}}, drop=("authorizer:team",))
    assert _as(gateway, pki, None) == (403, b"403 Forbidden: no-certificate\n")
    assert _as(gateway, pki, pki.bob())[0] == 200


def test_crl_revokes_a_certificate(start_gateway, pki, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    revoked = pki.leaf("revoked", "alice")
    now = datetime.datetime.now(datetime.UTC)
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(pki.root.certificate.subject)
           .last_update(now - datetime.timedelta(hours=1))
           .next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked.issued.certificate.serial_number)
                                    .revocation_date(now - datetime.timedelta(hours=1)).build())
           .sign(pki.root.key, hashes.SHA256()))
    crl_path = tmp_path / "root.crl"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    gateway = start_gateway({"tls": {"crl": str(crl_path)}})
    assert _as(gateway, pki, pki.alice())[0] == 200
    with pytest.raises(Refused):
        _as(gateway, pki, revoked)
    gateway.wait_log("verify_error=certificate revoked depth=0")
