"""Unit tests for gateway.authz.expr: the rule grammar and its errors (position and token)."""

from __future__ import annotations

import pytest

from gateway.authz.expr import ExprError, Node, Value, parse

KEYED = {"subject", "issuer", "spiffe"}


def test_the_example_of_the_documentation_parses_into_its_tree() -> None:
    rule = "all(team, not(blocked), any(method(GET, HEAD), all(path(/admin/), subject(OU=ops))))"
    assert parse(rule, KEYED) == Node("all", 1, (
        Node("team", 5),
        Node("not", 11, (Node("blocked", 15),)),
        Node("any", 25, (
            Node("method", 29, (Value(None, "GET", 36), Value(None, "HEAD", 41))),
            Node("all", 48, (
                Node("path", 52, (Value(None, "/admin/", 57),)),
                Node("subject", 67, (Value("OU", "ops", 75, 78),)),
            )),
        )),
    ))


def test_a_bare_name_is_a_reference_to_an_authorizer() -> None:
    node = parse("  team  ")
    assert node == Node("team", 3) and node.is_reference
    assert not parse("any(team)").is_reference


@pytest.mark.parametrize(("text", "value"), [
    pytest.param('subject(O="Example, Inc.")', "Example, Inc.", id="quoted-comma"),
    pytest.param('subject(O="say \\"hi\\" \\\\ bye")', 'say "hi" \\ bye', id="escapes"),
    pytest.param("subject(O=Example Inc)", "Example Inc", id="inner-space"),
    pytest.param("subject( O = Example )", "Example", id="outer-spaces"),
    pytest.param("subject(CN=a=b)", "a=b", id="equals-in-value"),
])
def test_values_of_a_keyed_matcher(text: str, value: str) -> None:
    args = parse(text, KEYED).args
    assert args is not None and len(args) == 1
    assert isinstance(args[0], Value) and args[0].text == value


def test_plain_values_keep_slashes_stars_and_equals() -> None:
    node = parse("spiffe(trust_domain=example.org, path=/ns/*/sa/web)", KEYED)
    assert node.args == (Value("trust_domain", "example.org", 8, 21),
                         Value("path", "/ns/*/sa/web", 34, 39))
    assert parse("path(/x?a=b)").args == (Value(None, "/x?a=b", 6),)


def test_a_rule_may_span_lines() -> None:
    node = parse("any(\n  alice,\n  bob\n)")
    assert [n.name for n in node.args or () if isinstance(n, Node)] == ["alice", "bob"]


@pytest.mark.parametrize(("text", "position", "token", "problem"), [
    pytest.param("", 1, "end of rule", "expected an authorizer name", id="empty"),
    pytest.param("all(team", 9, "end of rule", "expected ',' or ')'", id="unclosed"),
    pytest.param("all(team,)", 10, ")", "expected an authorizer name", id="trailing-comma"),
    pytest.param("all(team) extra", 11, "extra", "expected the end of the rule", id="trailing"),
    pytest.param("team blocked", 6, "blocked", "expected the end of the rule", id="two-names"),
    pytest.param("all(,team)", 5, ",", "expected an authorizer name", id="leading-comma"),
    pytest.param("subject(ops)", 12, ")", "expected '=' after 'ops'", id="no-key"),
    pytest.param("subject(=ops)", 9, "=", "expected an attribute", id="empty-key"),
    pytest.param("method(GET,)", 12, ")", "expected a value", id="empty-value"),
    pytest.param('method("GET)', 8, '"GET)', "unterminated quoted value", id="unterminated"),
    pytest.param('method("a\\b")', 10, "\\", "may follow a backslash", id="bad-escape"),
    pytest.param("method(GET\nHEAD)", 8, "GET\nHEAD", "spans lines", id="value-over-lines"),
    pytest.param("all(team))", 10, ")", "expected the end of the rule", id="extra-paren"),
    pytest.param("-team", 1, "-", "expected an authorizer name", id="bad-name"),
])
def test_errors_name_position_and_token(text: str, position: int, token: str,
                                        problem: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse(text, KEYED)
    error = caught.value
    assert (error.position, error.token) == (position, token)
    assert problem in error.problem
    assert str(error).startswith(f"at character {position} (")
    assert "\n" not in str(error).replace("\\n", "")
