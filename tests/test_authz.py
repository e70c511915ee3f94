"""Unit tests for gateway.authz: the built-in types, the policy and the registry.

Authorizers are built the way the gateway builds them (``TYPE.build(name, options)``) and asked
through gateway.authz.testing; no reactor runs: Deferreds are fired by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gateway.authz.builtin import (
    AnyAuthorizer,
    any_type,
    cn_type,
    fingerprint_type,
    parse_fingerprint,
    san_type,
)
from gateway.authz.interfaces import (
    ClientIdentity,
    Decision,
    IAuthorizer,
    IAuthorizerType,
    OptionError,
    RequestInfo,
)
from gateway.authz.policy import Policy
from gateway.authz.registry import NamedAuthorizer, build_authorizers
from gateway.authz.testing import decide, identity_from_pem, request_info
from gateway.config import AuthorizerSection, ConfigError, Location
from gateway.pki import make_ca, make_leaf, name

CA = make_ca(name("Test CA"))
REQUEST = request_info()


def identity(subject: x509.Name | str | None = "alice", sans: Sequence[str] = ()) -> ClientIdentity:
    return identity_from_pem(make_leaf(CA, subject, sans=sans).cert_pem())


def two_cns(first: str, second: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, first),
        x509.NameAttribute(NameOID.COMMON_NAME, second),
    ])


def ask(kind: IAuthorizerType, options: dict[str, str], who: ClientIdentity | None) -> Decision:
    return decide(kind.build("test", options), who, REQUEST)


# --------------------------------------------------------------------------
# cn
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("allow", "subject", "allowed", "reason"),
    [
        pytest.param("alice", "alice", True, "cn-allowed", id="exact"),
        pytest.param("alice, bob", "bob", True, "cn-allowed", id="one-of-list"),
        pytest.param("alice", "Alice", False, "cn-not-allowed", id="case-sensitive"),
        pytest.param("alice", "alice ", False, "cn-not-allowed", id="no-trimming"),
        pytest.param("alice", "mallory", False, "cn-not-allowed", id="other-cn"),
        pytest.param("alice", name(organization_name="alice"), False, "cn-not-allowed",
                     id="no-cn"),
        pytest.param("alice", two_cns("alice", "alice"), False, "cn-multiple",
                     id="two-equal-cns"),
        pytest.param("alice", two_cns("mallory", "alice"), False, "cn-multiple",
                     id="two-cns-one-allowed"),
    ],
)
def test_cn_authorizer(allow: str, subject: x509.Name | str, allowed: bool, reason: str) -> None:
    assert ask(cn_type, {"allow": allow}, identity(subject)) == Decision(allowed, reason)


@pytest.mark.parametrize("options", [{}, {"allow": ""}, {"allow": " , "}])
def test_cn_type_requires_allow(options: dict[str, str]) -> None:
    with pytest.raises(OptionError) as caught:
        cn_type.build("test", options)
    assert caught.value.key == "allow"


# --------------------------------------------------------------------------
# san
# --------------------------------------------------------------------------

SAN_CASES = [
    # dns: case-insensitive, trailing dot ignored, no wildcard semantics
    ({"dns": "api.example.com"}, "dns:api.example.com", True, "san-dns-allowed"),
    ({"dns": "api.example.com"}, "dns:API.Example.COM", True, "san-dns-allowed"),
    ({"dns": "api.example.com"}, "dns:api.example.com.", True, "san-dns-allowed"),
    ({"dns": "API.example.com."}, "dns:api.example.com", True, "san-dns-allowed"),
    ({"dns": "api.example.com"}, "dns:x.api.example.com", False, "san-not-allowed"),
    ({"dns": "*.example.com"}, "dns:api.example.com", False, "san-not-allowed"),
    ({"dns": "a.example, b.example"}, "dns:b.example", True, "san-dns-allowed"),
    # uri: URIPattern (more cases in test_uri.py)
    ({"uri": "spiffe://td/ns/*/sa/web"}, "uri:spiffe://td/ns/prod/sa/web", True,
     "san-uri-allowed"),
    ({"uri": "spiffe://td/ns/*/sa/web"}, "uri:spiffe://td/ns//sa/web", False, "san-not-allowed"),
    ({"uri": "spiffe://td/ns/**"}, "uri:spiffe://td/ns/a/b", True, "san-uri-allowed"),
    ({"uri": "spiffe://td/ns/**"}, "uri:spiffe://td/ns", False, "san-not-allowed"),
    ({"uri": "spiffe://TD/ns/x"}, "uri:SPIFFE://td/ns/x", True, "san-uri-allowed"),
    ({"uri": "spiffe://td/ns/x"}, "uri:spiffe://td/NS/x", False, "san-not-allowed"),
    # email: local part exact, domain case-insensitive
    ({"email": "Alice@Example.COM"}, "email:Alice@example.com", True, "san-email-allowed"),
    ({"email": "alice@example.com"}, "email:alice@EXAMPLE.com", True, "san-email-allowed"),
    ({"email": "alice@example.com"}, "email:Alice@example.com", False, "san-not-allowed"),
    ({"email": "alice@example.com"}, "email:alice@example.org", False, "san-not-allowed"),
    # ip: address or network
    ({"ip": "192.0.2.7"}, "ip:192.0.2.7", True, "san-ip-allowed"),
    ({"ip": "192.0.2.7"}, "ip:192.0.2.8", False, "san-not-allowed"),
    ({"ip": "10.0.0.0/8"}, "ip:10.200.3.4", True, "san-ip-allowed"),
    ({"ip": "10.0.0.0/8"}, "ip:11.0.0.1", False, "san-not-allowed"),
    ({"ip": "2001:db8::/32"}, "ip:2001:db8:ffff::1", True, "san-ip-allowed"),
    ({"ip": "2001:0db8:0:0::1"}, "ip:2001:db8::1", True, "san-ip-allowed"),
    ({"ip": "10.0.0.0/8"}, "ip:::ffff:10.0.0.1", False, "san-not-allowed"),
    # a SAN of another type never matches
    ({"dns": "alice"}, "email:alice@example.com", False, "san-not-allowed"),
    ({"dns": "192.0.2.7"}, "ip:192.0.2.7", False, "san-not-allowed"),
]


@pytest.mark.parametrize(
    ("options", "san", "allowed", "reason"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in SAN_CASES],
)
def test_san_authorizer(options: dict[str, str], san: str, allowed: bool, reason: str) -> None:
    assert ask(san_type, options, identity(None, sans=[san])) == Decision(allowed, reason)


def test_san_authorizer_allows_when_any_san_matches() -> None:
    who = identity("svc", sans=["dns:other.example", "ip:192.0.2.1", "dns:api.example"])
    assert ask(san_type, {"dns": "api.example"}, who).allowed


def test_san_authorizer_ignores_the_cn() -> None:
    assert ask(san_type, {"dns": "api.example"}, identity("api.example")) == Decision(
        False, "san-not-allowed")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        pytest.param({}, "dns", id="nothing"),
        pytest.param({"dns": " , ", "uri": ""}, "dns", id="only-empty-lists"),
        pytest.param({"uri": "spiffe://td/**/x"}, "uri", id="bad-uri-pattern"),
        pytest.param({"uri": "not-absolute"}, "uri", id="relative-uri"),
        pytest.param({"ip": "10.0.0.1/8"}, "ip", id="cidr-with-host-bits"),
        pytest.param({"ip": "10.0.0.300"}, "ip", id="not-an-address"),
    ],
)
def test_san_type_refuses_bad_options(options: dict[str, str], key: str) -> None:
    with pytest.raises(OptionError) as caught:
        san_type.build("test", options)
    assert caught.value.key == key


# --------------------------------------------------------------------------
# fingerprint
# --------------------------------------------------------------------------

def colon_upper(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()


@pytest.mark.parametrize(
    "spelling",
    [pytest.param(str.lower, id="lowercase"), pytest.param(str.upper, id="uppercase"),
     pytest.param(colon_upper, id="colons-uppercase")],
)
def test_fingerprint_authorizer_allows_a_pinned_certificate(spelling) -> None:
    who = identity()
    decision = ask(fingerprint_type, {"sha256": spelling(who.fingerprint_sha256)}, who)
    assert decision == Decision(True, "fingerprint-allowed")


def test_fingerprint_authorizer_denies_another_certificate() -> None:
    pinned = identity()
    other = identity()  # same subject, new key: another certificate
    assert ask(fingerprint_type, {"sha256": pinned.fingerprint_sha256}, other) == Decision(
        False, "fingerprint-not-allowed")


def test_fingerprint_authorizer_accepts_a_list_of_pins() -> None:
    first, second = identity(), identity()
    pins = f"{first.fingerprint_sha256}, {colon_upper(second.fingerprint_sha256)}"
    authorizer = fingerprint_type.build("pins", {"sha256": pins})
    assert decide(authorizer, first, REQUEST).allowed
    assert decide(authorizer, second, REQUEST).allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ab" * 32, "ab" * 32),
        ("AB" * 32, "ab" * 32),
        (":".join(["Ab"] * 32), "ab" * 32),
        (f"  {'0f' * 32}  ", "0f" * 32),
    ],
    ids=["lowercase", "uppercase", "colons-mixed-case", "surrounding-space"],
)
def test_parse_fingerprint_normalises(text: str, expected: str) -> None:
    assert parse_fingerprint(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("ab" * 20, "SHA-1", id="sha1"),
        pytest.param(":".join(["AB"] * 20), "SHA-1", id="sha1-with-colons"),
        pytest.param("ab" * 31, "not a SHA-256 fingerprint", id="too-short"),
        pytest.param("ab" * 33, "not a SHA-256 fingerprint", id="too-long"),
        pytest.param("zz" * 32, "not a SHA-256 fingerprint", id="not-hex"),
        pytest.param("sha256:" + "ab" * 32, "not a SHA-256 fingerprint", id="with-label"),
    ],
)
def test_parse_fingerprint_refuses_sha1_and_malformed(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_fingerprint(text)


@pytest.mark.parametrize("pins", ["", "ab" * 20, f"{'ab' * 32}, nope"])
def test_fingerprint_type_refuses_bad_pins(pins: str) -> None:
    with pytest.raises(OptionError) as caught:
        fingerprint_type.build("pins", {"sha256": pins})
    assert caught.value.key == "sha256"


# --------------------------------------------------------------------------
# any, and no certificate at all
# --------------------------------------------------------------------------

def test_any_authorizer_allows_every_verified_certificate() -> None:
    assert ask(any_type, {}, identity(None, sans=["dns:x"])) == Decision(True, "verified")


BUILT_INS = [
    pytest.param(cn_type, {"allow": "alice"}, id="cn"),
    pytest.param(san_type, {"dns": "alice", "uri": "spiffe://td/**", "ip": "0.0.0.0/0"},
                 id="san"),
    pytest.param(fingerprint_type, {"sha256": "ab" * 32}, id="fingerprint"),
    pytest.param(any_type, {}, id="any"),
]


@pytest.mark.parametrize(("kind", "options"), BUILT_INS)
def test_every_built_in_denies_a_connection_without_certificate(
    kind: IAuthorizerType, options: dict[str, str]
) -> None:
    assert ask(kind, options, None) == Decision(False, "no-certificate")


@pytest.mark.parametrize(("kind", "options"), BUILT_INS)
def test_every_built_in_provides_the_interfaces(
    kind: IAuthorizerType, options: dict[str, str]
) -> None:
    assert IAuthorizerType.providedBy(kind)
    assert set(options) <= kind.keys
    assert IAuthorizer.providedBy(kind.build("test", options))


# --------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------

@implementer(IAuthorizer)
@attrs.define
class Scripted:
    """Returns (or raises) ``result``; counts how often it was asked."""

    result: object
    calls: int = 0

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> object:
        self.calls += 1
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def allows(reason: str = "ok") -> Scripted:
    return Scripted(Decision.allow(reason))


def denies(reason: str) -> Scripted:
    return Scripted(Decision.deny(reason))


def policy(mode: str, **authorizers: Scripted) -> Policy:
    return Policy(mode, tuple(NamedAuthorizer(n, a) for n, a in authorizers.items()))


def results_of(d: Deferred) -> list[object]:
    """What *d* has fired with so far (a Decision, or a Failure if it ever errbacks)."""
    results: list[object] = []
    d.addBoth(results.append)
    return results


def decided(p: Policy, who: ClientIdentity | None = None) -> Decision:
    results = results_of(p.decide(who, REQUEST))
    assert len(results) == 1, "Policy.decide did not fire synchronously"
    assert isinstance(results[0], Decision), results[0]
    return results[0]


POLICY_CASES = [
    # mode, authorizers (name -> outcome), expected decision
    ("any", {"a": "allow"}, Decision(True, "ok", "a")),
    ("any", {"a": "deny-x", "b": "allow"}, Decision(True, "ok", "b")),
    ("any", {"a": "deny-x", "b": "deny-y"}, Decision(False, "x", "a")),
    ("any", {"a": "deny-x", "b": "deny-y", "c": "deny-z"}, Decision(False, "x", "a")),
    ("all", {"a": "allow", "b": "allow"}, Decision(True, "ok", "b")),
    ("all", {"a": "allow", "b": "deny-y"}, Decision(False, "y", "b")),
    ("all", {"a": "deny-x", "b": "deny-y"}, Decision(False, "x", "a")),
    ("any", {}, Decision(False, "no-authorizer")),
    ("all", {}, Decision(False, "no-authorizer")),
]


@pytest.mark.parametrize("order", [("h", "a"), ("a", "h")])
def test_policy_all_keeps_an_http_authorizers_upstream_headers_in_any_order(order) -> None:
    service = Scripted(Decision(True, "allowed", upstream_headers=((b"X-User-Team", b"ops"),),
                                upstream_replaced=frozenset({b"x-user-team"})))
    authorizers = {"h": service, "a": allows()}
    for asked in (decided, lambda p: p.decide_now(None, REQUEST)):
        decision = asked(policy("all", **{n: authorizers[n] for n in order}))
        assert decision.allowed and decision.authorizer == order[-1]
        assert decision.upstream_headers == ((b"X-User-Team", b"ops"),)
        assert decision.upstream_replaced == {b"x-user-team"}


def scripted(outcome: str) -> Scripted:
    return allows() if outcome == "allow" else denies(outcome.removeprefix("deny-"))


@pytest.mark.parametrize(
    ("mode", "outcomes", "expected"),
    [pytest.param(m, o, e, id=f"{m}-{'-'.join(o.values()) or 'none'}") for m, o, e in POLICY_CASES],
)
def test_policy_combines_decisions(mode: str, outcomes: dict[str, str], expected: Decision) -> None:
    p = policy(mode, **{n: scripted(o) for n, o in outcomes.items()})
    assert decided(p, identity()) == expected


def test_policy_any_stops_at_the_first_allow() -> None:
    first, second, third = denies("x"), allows(), allows()
    assert decided(policy("any", a=first, b=second, c=third)).authorizer == "b"
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_policy_all_stops_at_the_first_denial() -> None:
    first, second, third = allows(), denies("y"), allows()
    assert decided(policy("all", a=first, b=second, c=third)).reason == "y"
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_policy_passes_identity_and_request_to_authorizers() -> None:
    seen = []

    @implementer(IAuthorizer)
    class Spy:
        def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
            seen.append((identity, request))
            return Decision.allow()

    who, request = identity(), request_info(method="POST", path="/admin", host=None)
    results_of(Policy("any", (NamedAuthorizer("spy", Spy()),)).decide(who, request))
    assert seen == [(who, request)]


def test_policy_with_real_authorizers_and_no_certificate_reports_first_denial() -> None:
    p = Policy("any", (
        NamedAuthorizer("people", cn_type.build("people", {"allow": "alice"})),
        NamedAuthorizer("everyone", AnyAuthorizer()),
    ))
    assert decided(p, None) == Decision(False, "no-certificate", "people")


# -- fail closed ---------------------------------------------------------

def broken_authorizers() -> list:
    """Authorizers that break the contract; built afresh per test (a Deferred fires once)."""
    return [
        pytest.param(lambda: Scripted(RuntimeError("boom")), id="raises"),
        pytest.param(lambda: Scripted(None), id="returns-none"),
        pytest.param(lambda: Scripted(True), id="returns-true"),
        pytest.param(lambda: Scripted("allow"), id="returns-string"),
        pytest.param(lambda: Scripted(succeed(True)), id="deferred-non-decision"),
        pytest.param(lambda: Scripted(fail(RuntimeError("boom"))), id="deferred-failure"),
    ]


@pytest.mark.parametrize("make_broken", broken_authorizers())
@pytest.mark.parametrize("mode", ["any", "all"])
def test_policy_fails_closed_on_a_broken_authorizer(make_broken, mode: str) -> None:
    assert decided(policy(mode, broken=make_broken()), identity()) == Decision(
        False, "authorizer-error", "broken")


@pytest.mark.parametrize("make_broken", broken_authorizers())
def test_policy_all_denies_when_one_authorizer_is_broken(make_broken) -> None:
    p = policy("all", ok=allows(), broken=make_broken(), later=allows())
    assert decided(p, identity()) == Decision(False, "authorizer-error", "broken")


def test_policy_any_moves_on_after_a_broken_authorizer() -> None:
    p = policy("any", broken=Scripted(RuntimeError("boom")), ok=allows())
    assert decided(p, identity()) == Decision(True, "ok", "ok")


# -- asynchronous authorizers --------------------------------------------

def test_policy_waits_for_an_asynchronous_authorizer() -> None:
    pending: Deferred[Decision] = Deferred()
    later = allows("later")
    p = policy("all", slow=Scripted(pending), later=later)
    results = results_of(p.decide(identity(), REQUEST))
    assert results == []
    assert later.calls == 0
    pending.callback(Decision.allow("slow"))
    assert results == [Decision(True, "later", "later")]
    assert later.calls == 1


def test_policy_any_stops_at_an_asynchronous_allow() -> None:
    pending: Deferred[Decision] = Deferred()
    later = allows()
    results = results_of(policy("any", slow=Scripted(pending), later=later).decide(None, REQUEST))
    pending.callback(Decision.allow("slow-ok"))
    assert results == [Decision(True, "slow-ok", "slow")]
    assert later.calls == 0


@pytest.mark.parametrize(
    "fire",
    [
        pytest.param(lambda d: d.errback(RuntimeError("lookup failed")), id="fails-later"),
        pytest.param(lambda d: d.callback({"allowed": True}), id="fires-non-decision-later"),
    ],
)
def test_policy_fails_closed_on_a_late_broken_answer(fire) -> None:
    pending: Deferred[Decision] = Deferred()
    results = results_of(policy("any", slow=Scripted(pending)).decide(identity(), REQUEST))
    assert results == []
    fire(pending)
    assert results == [Decision(False, "authorizer-error", "slow")]


# --------------------------------------------------------------------------
# registry.build_authorizers
# --------------------------------------------------------------------------

INI = Path("/etc/mtlsgw/gw.ini")


@implementer(IAuthorizerType)
class LevelType:
    """A test plugin type: ``level`` must be 1, 2 or 3."""

    name = "level"
    keys = frozenset({"level", "note"})

    def build(self, name: str, options: dict[str, str]) -> IAuthorizer:
        if options.get("level") not in ("1", "2", "3"):
            raise OptionError("level", "must be 1, 2\n or 3")
        return AnyAuthorizer()


@implementer(IAuthorizerType)
class BrokenType:
    name = "broken"
    keys = frozenset()

    def build(self, name: str, options: dict[str, str]) -> object:
        return object()


TYPES = {"cn": cn_type, "any": any_type, "level": LevelType(), "broken": BrokenType()}


def section(name: str, kind: str, **options: str) -> AuthorizerSection:
    return AuthorizerSection(name, kind, options, Location(INI, f"authorizer:{name}"))


def build_error(*sections: AuthorizerSection) -> str:
    with pytest.raises(ConfigError) as caught:
        build_authorizers(sections, TYPES)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_build_authorizers_builds_each_section_in_order_with_its_name() -> None:
    built = build_authorizers(
        [section("people", "cn", allow="alice"), section("rest", "any")], TYPES)
    assert [b.name for b in built] == ["people", "rest"]
    assert decide(built[0].authorizer, identity("alice"), REQUEST).allowed
    assert isinstance(built[1].authorizer, AnyAuthorizer)


def test_build_authorizers_passes_only_the_options_to_the_type() -> None:
    received = []

    @implementer(IAuthorizerType)
    class Recording:
        name = "rec"
        keys = frozenset({"a", "b"})

        def build(self, name: str, options: dict[str, str]) -> IAuthorizer:
            received.append((name, options))
            return AnyAuthorizer()

    build_authorizers([section("x", "rec", a="1", b="")], {"rec": Recording()})
    assert received == [("x", {"a": "1", "b": ""})]


def test_build_authorizers_unknown_type_lists_available_types() -> None:
    message = build_error(section("x", "nope"))
    assert message == (
        f"{INI}: [authorizer:x] type = 'nope': "
        "unknown authorizer type (available: any, broken, cn, level)")


def test_build_authorizers_unknown_key_lists_known_keys() -> None:
    message = build_error(section("x", "cn", allow="alice", alow="bob"))
    assert message == (
        f"{INI}: [authorizer:x] alow = 'bob': unknown key (known keys: allow, type)")


def test_build_authorizers_option_error_names_section_key_and_value() -> None:
    message = build_error(section("ok", "any"), section("lvl", "level", level="9"))
    assert message == f"{INI}: [authorizer:lvl] level = '9': must be 1, 2 or 3"


def test_build_authorizers_option_error_for_a_missing_key_shows_empty_value() -> None:
    message = build_error(section("people", "cn"))
    assert message.startswith(f"{INI}: [authorizer:people] allow = '': required")


def test_build_authorizers_refuses_a_type_that_builds_no_authorizer() -> None:
    message = build_error(section("b", "broken"))
    assert message.startswith(f"{INI}: [authorizer:b] type = 'broken': plugin ")
    assert "not an IAuthorizer" in message


def test_an_authorizer_that_does_not_decide_in_time_counts_as_a_denial() -> None:
    from twisted.internet.task import Clock

    class Never:
        def authorize(self, identity, request):  # type: ignore[no-untyped-def]
            return Deferred()

    clock = Clock()
    policy = Policy("any", [NamedAuthorizer("slow", Never())], timeout=2.0, clock=clock)
    results: list[Decision] = []
    policy.decide(None, request_info()).addCallback(results.append)
    assert results == []
    clock.advance(2.0)
    assert results == [Decision(False, "authorizer-error", "slow")]


def test_a_reason_that_is_not_a_reason_id_is_replaced() -> None:
    class Chatty:
        def authorize(self, identity, request):  # type: ignore[no-untyped-def]
            return Decision.deny("nope authorizer=admin status=200")

    results: list[Decision] = []
    Policy("any", [NamedAuthorizer("chatty", Chatty())]).decide(None, request_info()).addCallback(
        results.append)
    assert results == [Decision(False, "invalid-reason-id", "chatty")]
