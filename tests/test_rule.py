"""Unit tests for ``type = expr`` (gateway.authz.rule) and its place in the policy and the
registry: combinators, fail closed under not/any, asynchronous leaves, timeouts, shadow rules,
and the one-line config errors. No reactor runs: Deferreds are fired by hand, time is a Clock."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from test_authz import Scripted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gateway.authz.interfaces import ClientIdentity, Decision, IAuthorizer
from gateway.authz.policy import Policy
from gateway.authz.registry import available_types, build_authorizers
from gateway.authz.rule import ExprAuthorizer
from gateway.authz.testing import identity_from_pem, request_info
from gateway.config import AuthorizerSection, ConfigError, Location
from gateway.pki import make_ca, make_leaf, name

INI = Path("/etc/mtlsgw/gw.ini")
CA = make_ca(name("Rule CA"))
ALICE = identity_from_pem(make_leaf(CA, name("alice", organizational_unit_name="ops")).cert_pem())
BOB = identity_from_pem(make_leaf(CA, "bob").cert_pem())


LEAVES: dict[str, Scripted] = {}


class _ScriptedType:
    name = "scripted"
    keys = frozenset({"leaf"})

    def build(self, name: str, options: dict[str, str]) -> Scripted:
        return LEAVES[options["leaf"]]


def section(label: str, kind: str, **options: str) -> AuthorizerSection:
    return AuthorizerSection(label, kind, options, Location(INI, f"authorizer:{label}"))


def build(rule: str, shadow: str = "no", **leaves: object) -> tuple[Policy, dict[str, Scripted]]:
    """A policy of one expr authorizer ``r`` with *rule* over Scripted leaves *leaves*."""
    LEAVES.clear()
    scripted = {label: Scripted(result) for label, result in leaves.items()}
    LEAVES.update(scripted)
    defined = {label: section(label, "scripted", leaf=label) for label in leaves}
    defined["r"] = section("r", "expr", rule=rule, shadow=shadow)
    types = {**available_types(), "scripted": _ScriptedType()}
    built = build_authorizers([defined["r"]], types, defined)  # type: ignore[arg-type]
    return Policy("any", built), scripted


def now(policy: Policy, who: ClientIdentity | None = ALICE, **request: object) -> Decision:
    decision = policy.decide_now(who, request_info(**request))  # type: ignore[arg-type]
    assert isinstance(decision, Decision), decision
    return decision


ALLOW = Decision.allow("yes")
DENY = Decision.deny("no")


@pytest.mark.parametrize(("rule", "expected"), [
    ("all(a, b)", Decision(True, "yes", "b")),  # all allow: the last allow
    ("all(a, n, b)", Decision(False, "no", "n")),  # the first denial
    ("any(n, a, b)", Decision(True, "yes", "a")),  # the first allow
    ("any(n, m)", Decision(False, "no", "n")),  # none: the first denial
    ("not(n)", Decision(True, "no", "n")),  # inverted, the leaf's reason and name
    ("not(a)", Decision(False, "yes", "a")),
    ("not(not(a))", Decision(True, "yes", "a")),
    ("all(a, not(n), any(n, b))", Decision(True, "yes", "b")),
    ("a", Decision(True, "yes", "a")),
    ("any(a)", Decision(True, "yes", "a")),
    ("all(a, method(POST))", Decision(False, "method-not-matched", "r")),  # matchers: the rule
    ("any(n, subject(OU=ops))", Decision(True, "subject-matched", "r")),
])
def test_combinators(rule: str, expected: Decision) -> None:
    policy, _ = build(rule, a=ALLOW, b=ALLOW, n=DENY, m=Decision.deny("other"))
    assert now(policy) == expected


def test_the_walk_stops_once_the_outcome_is_known() -> None:
    policy, leaves = build("any(a, b)", a=ALLOW, b=ALLOW)
    now(policy)
    assert (leaves["a"].calls, leaves["b"].calls) == (1, 0)
    policy, leaves = build("all(n, b)", n=DENY, b=ALLOW)
    now(policy)
    assert leaves["b"].calls == 0


BROKEN = [
    pytest.param(RuntimeError("boom"), "authorizer-error", id="raises"),
    pytest.param("not a decision", "authorizer-error", id="not-a-decision"),
    pytest.param(Decision.deny("authorizer-unavailable"), "authorizer-unavailable",
                 id="unavailable"),
    pytest.param(Decision.deny("authorizer-error"), "authorizer-error", id="says-error"),
    # An http authorizer over max_in_flight did not ask: not(central) must not allow then.
    pytest.param(Decision.deny("authorizer-busy"), "authorizer-busy", id="busy"),
]


@pytest.mark.parametrize(("result", "reason"), BROKEN)
@pytest.mark.parametrize("rule", ["not(x)", "any(x, a)", "any(not(x), a)", "not(any(x, a))",
                                  "all(a, not(x))", "not(all(a, x))"])
def test_a_fault_denies_the_whole_rule_whatever_surrounds_it(rule: str, result: object,
                                                             reason: str) -> None:
    policy, _ = build(rule, x=result, a=ALLOW)
    assert now(policy) == Decision(False, reason, "x")


@pytest.mark.parametrize("rule", ["not(bad)", "any(not(bad), n)", "bad", "all(a, bad)"])
def test_a_decision_with_a_reason_that_is_not_a_reason_id_is_a_fault(rule: str) -> None:
    # a plugin's malformed answer, allow or deny, fails closed: not() does not invert it
    for answer in (Decision.deny("no\nreason=ok"), Decision.allow("Allowed!")):
        policy, _ = build(rule, bad=answer, a=ALLOW, n=DENY)
        assert now(policy) == Decision(False, "invalid-reason-id", "bad"), (rule, answer)


def test_an_invalid_svid_is_a_fault_too() -> None:
    policy, _ = build("not(spiffe(trust_domain=example.org))")
    assert now(policy) == Decision(False, "spiffe-invalid-svid", "r")


def test_a_certificate_matcher_without_certificate_is_an_ordinary_denial() -> None:
    policy, _ = build("any(subject(OU=ops), path(/public/))")
    assert now(policy, None, path="/public/x") == Decision(True, "path-matched", "r")
    assert now(policy, None, path="/x") == Decision(False, "no-certificate", "r")


def test_asynchronous_leaves_continue_the_walk() -> None:
    later: Deferred[Decision] = Deferred()
    policy, leaves = build("all(slow, not(n), b)", slow=later, n=DENY, b=ALLOW)
    result = policy.decide_now(ALICE, request_info())
    assert isinstance(result, Deferred) and leaves["b"].calls == 0
    fired: list[object] = []
    result.addBoth(fired.append)
    later.callback(ALLOW)
    assert fired == [Decision(True, "yes", "b")]


SERVICE = Decision(True, "allowed", upstream_headers=((b"X-User-Team", b"ops"),),
                   upstream_replaced=frozenset({b"x-user-team", b"x-user-role"}))


@pytest.mark.parametrize("rule", ["all(h, a)", "all(a, h)", "all(h, all(a, b))",
                                  "all(all(h, a), b)", "all(slow, h, a)", "all(h, slow)"])
def test_all_keeps_the_upstream_headers_of_every_allow_whatever_its_place(rule: str) -> None:
    # An http authorization service's headers (and the removal of the client's copies) were
    # lost when another allow came after it: a forged X-User-Team then reached the application.
    later: Deferred[Decision] = Deferred()
    policy, _ = build(rule, h=SERVICE, a=ALLOW, b=ALLOW, slow=later)
    result = policy.decide_now(ALICE, request_info())
    if isinstance(result, Deferred):
        fired: list[Decision] = []
        result.addBoth(fired.append)
        later.callback(ALLOW)
        result = fired[0]
    assert result.allowed
    assert result.upstream_headers == ((b"X-User-Team", b"ops"),)
    assert result.upstream_replaced == {b"x-user-team", b"x-user-role"}


def test_under_all_a_later_allow_sets_a_header_both_name() -> None:
    other = Decision(True, "allowed", upstream_headers=((b"x-user-team", b"dev"),),
                     upstream_replaced=frozenset({b"x-user-team"}))
    policy, _ = build("all(h, g)", h=SERVICE, g=other)
    decision = now(policy)
    assert decision.upstream_headers == ((b"x-user-team", b"dev"),)
    assert decision.upstream_replaced == {b"x-user-team", b"x-user-role"}


@pytest.mark.parametrize("rule", ["not(slow)", "any(slow, a)"])
def test_an_asynchronous_fault_denies_the_whole_rule(rule: str) -> None:
    later: Deferred[Decision] = Deferred()
    policy, _ = build(rule, slow=later, a=ALLOW)
    fired: list[object] = []
    result = policy.decide_now(ALICE, request_info())
    assert isinstance(result, Deferred)
    result.addBoth(fired.append)
    later.errback(RuntimeError("remote down"))
    assert fired == [Decision(False, "authorizer-error", "slow")]


def test_a_leaf_that_does_not_decide_in_time_denies_the_rule_and_is_named() -> None:
    clock = Clock()
    never: Deferred[Decision] = Deferred()
    policy, _ = build("not(slow)", slow=never)
    policy = attrs.evolve(policy, timeout=2.0, clock=clock)
    fired: list[object] = []
    result = policy.decide_now(ALICE, request_info())
    assert isinstance(result, Deferred)
    result.addBoth(fired.append)
    clock.advance(1.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [Decision(False, "authorizer-error", "slow")]


def test_a_rule_can_name_another_rule_whose_leaves_then_decide() -> None:
    LEAVES.clear()
    LEAVES["n"] = Scripted(DENY)
    defined = {
        "n": section("n", "scripted", leaf="n"),
        "inner": section("inner", "expr", rule="not(n)"),
        "outer": section("outer", "expr", rule="all(inner, method(GET))"),
    }
    types = {**available_types(), "scripted": _ScriptedType()}
    built = build_authorizers([defined["outer"]], types, defined)  # type: ignore[arg-type]
    policy = Policy("all", built)
    assert now(policy) == Decision(True, "method-matched", "outer")
    assert now(policy, method="POST") == Decision(False, "method-not-matched", "outer")


def test_expr_authorizer_is_a_plain_iauthorizer_too() -> None:
    policy, _ = build("all(a, method(GET))", a=ALLOW)
    authorizer = policy.authorizers[0].authorizer
    assert isinstance(authorizer, ExprAuthorizer) and IAuthorizer.providedBy(authorizer)
    assert authorizer.authorize(ALICE, request_info()) == Decision(True, "method-matched", "r")


def collect_logs() -> tuple[list[dict[str, object]], object]:
    events: list[dict[str, object]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    return events, observer


def shadow_lines(events: list[dict[str, object]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_namespace") == "mtlsgw.authz"]


def test_a_shadow_rule_is_logged_and_not_enforced() -> None:
    LEAVES.clear()
    LEAVES["team"] = Scripted(Decision.allow("cn-allowed"))
    defined = {
        "team": section("team", "scripted", leaf="team"),
        "trial": section("trial", "expr", rule="all(team, method(GET))", shadow="yes"),
    }
    types = {**available_types(), "scripted": _ScriptedType()}
    for mode in ("any", "all"):
        built = build_authorizers([defined["team"], defined["trial"]], types, defined)  # type: ignore[arg-type]
        policy = Policy(mode, built)
        events, observer = collect_logs()
        try:
            # The shadow rule would deny a POST; the policy allows (team decides alone).
            assert now(policy, method="POST") == Decision(True, "cn-allowed", "team")
            assert now(policy, method="GET") == Decision(True, "cn-allowed", "team")
        finally:
            globalLogPublisher.removeObserver(observer)
        lines = shadow_lines(events)
        assert len(lines) == 2, lines
        assert lines[0].startswith("shadow rule trial would deny reason=method-not-matched "
                                   "authorizer=trial method=POST path=/ ")
        assert lines[1].startswith("shadow rule trial would allow reason=method-matched ")
        assert f"fingerprint={ALICE.fingerprint_sha256}" in lines[0]


def test_a_shadow_rule_with_an_asynchronous_leaf_logs_when_it_decides() -> None:
    later: Deferred[Decision] = Deferred()
    LEAVES.clear()
    LEAVES.update({"team": Scripted(Decision.allow("cn-allowed")), "remote": Scripted(later)})
    defined = {
        "team": section("team", "scripted", leaf="team"),
        "remote": section("remote", "scripted", leaf="remote"),
        "trial": section("trial", "expr", rule="remote", shadow="yes"),
    }
    types = {**available_types(), "scripted": _ScriptedType()}
    built = build_authorizers([defined["trial"], defined["team"]], types, defined)  # type: ignore[arg-type]
    events, observer = collect_logs()
    try:
        # The request does not wait for the shadow rule.
        assert now(Policy("any", built)) == Decision(True, "cn-allowed", "team")
        assert shadow_lines(events) == []
        later.errback(RuntimeError("down"))
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = shadow_lines(events)
    assert len(lines) == 1 and lines[0].startswith(
        "shadow rule trial would deny reason=authorizer-error authorizer=remote ")


def build_error(rule: str, *more: AuthorizerSection, **options: str) -> str:
    defined = {s.name: s for s in more}
    defined["r"] = section("r", "expr", rule=rule, **options)
    with pytest.raises(ConfigError) as caught:
        build_authorizers([defined["r"]], None, defined)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("rule", "problem"), [
    ("all(team, nobody)", "at character 11 ('nobody'): no [authorizer:nobody] section"),
    ("all(team, r)", "at character 11 ('r'): the rule names itself (r -> r)"),
    ("not(team, team)", "at character 1 ('not'): not() takes exactly one rule"),
    ("any()", "at character 1 ('any'): any() needs at least one rule"),
    ("all(team, methd(GET))", "at character 11 ('methd'): unknown function"),
    ("all(team, subject(OU=ops)", "at character 26 (end of rule): expected ',' or ')'"),
    ("all(team, path(admin))", "at character 16 ('admin'): a path prefix starts with /"),
])
def test_rule_errors_are_one_line_naming_file_section_key_and_token(rule: str,
                                                                    problem: str) -> None:
    message = build_error(rule, section("team", "cn", allow="alice"))
    assert message.startswith(f"{INI}: [authorizer:r] rule = {rule!r}: {problem}"), message


def test_a_cycle_through_other_rules_is_refused() -> None:
    message = build_error("all(b)", section("b", "expr", rule="any(c)"),
                          section("c", "expr", rule="not(r)"))
    assert "at character 5 ('r'): the rule names itself (r -> b -> c -> r)" in message


def test_a_shadow_rule_cannot_be_named_by_another() -> None:
    message = build_error("all(trial)", section("trial", "expr", rule="method(GET)",
                                                shadow="yes"))
    assert "at character 5 ('trial'): a shadow = yes rule is only listed" in message


def test_rule_keys_are_checked() -> None:
    assert build_error("method(GET)", shadow="maybe") == (
        f"{INI}: [authorizer:r] shadow = 'maybe': must be yes or no")
    assert build_error("method(GET)", rules="x") == (
        f"{INI}: [authorizer:r] rules = 'x': unknown key (known keys: rule, shadow, type)")
    assert build_error("  ") == f"{INI}: [authorizer:r] rule: required key is missing or empty"


def test_an_error_inside_a_named_section_is_reported_there() -> None:
    message = build_error("all(team)", section("team", "cn"))
    assert message.startswith(f"{INI}: [authorizer:team] allow = '': required")


def test_not_inverts_an_unhashable_decision_from_a_plugin() -> None:
    @attrs.frozen(hash=False)
    class Loose(Decision):
        extra: list[str] = attrs.field(factory=list)  # a list field: not hashable

    loose = Loose(False, "listed")
    with pytest.raises(TypeError):
        hash(loose)
    policy, _ = build("not(x)", x=loose)
    assert now(policy) == Decision(True, "listed", "x")


def test_rules_naming_rules_too_deep_are_one_config_line_not_a_recursion_error() -> None:
    # A chain of rules each nested to the limit: refused at build, never a RecursionError at
    # build or per request.
    deep = "not(" * 30 + "{}" + ")" * 30
    chain = [section(f"c{i}", "expr", rule=deep.format(f"c{i + 1}")) for i in range(60)]
    chain.append(section("c60", "cn", allow="alice"))
    message = build_error(deep.format("c0"), *chain)
    assert "nested more than 32 deep (through the rules it names or that name it)" in message
