"""Unit tests for gateway.authz.uri.URIPattern: URI SAN patterns with segment wildcards."""

from __future__ import annotations

import pytest

from gateway.authz.uri import URIPattern

MATCHES = [
    # a wildcard never stands for a dot segment, also not one spelt %2e (RFC 3986 §6.2.2.2)
    ("spiffe://td/ns/**", "spiffe://td/ns/%2e%2e/%2e%2e/admin", False),
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/%2E%2e/sa/web", False),
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/%2e/sa/web", False),
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/a%2eb/sa/web", True),
    # exact
    ("spiffe://td/ns/prod/sa/web", "spiffe://td/ns/prod/sa/web", True),
    ("spiffe://td/ns/prod/sa/web", "spiffe://td/ns/prod/sa/api", False),
    ("spiffe://td/ns/prod/sa/web", "spiffe://td/ns/prod/sa/web/x", False),
    ("spiffe://td/ns/prod/sa/web", "spiffe://td/ns/prod/sa", False),
    ("spiffe://td/ns/prod/sa/web", "spiffe://td/ns/prod/sa/web/", False),
    ("spiffe://td", "spiffe://td", True),
    ("spiffe://td", "spiffe://td/", False),
    # scheme and authority: case-insensitive; path: case-sensitive
    ("spiffe://td/ns/prod", "SPIFFE://TD/ns/prod", True),
    ("SPIFFE://Td/ns/prod", "spiffe://td/ns/prod", True),
    ("spiffe://td/ns/prod", "spiffe://td/NS/prod", False),
    ("spiffe://td/ns/prod", "spiffe://other/ns/prod", False),
    ("spiffe://td/ns/prod", "https://td/ns/prod", False),
    ("https://td/x", "https://td:443/x", False),
    ("https://td/x", "https://user@td/x", False),
    # '*': exactly one whole, non-empty segment
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/prod/sa/web", True),
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/a/b/sa/web", False),
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns//sa/web", False),
    ("spiffe://td/ns/*/sa/web", "spiffe://td/ns/sa/web", False),
    ("spiffe://td/ns/*", "spiffe://td/ns/", False),
    ("spiffe://td/ns/*", "spiffe://td/ns", False),
    ("spiffe://td/ns/*", "spiffe://td/ns/x", True),
    ("spiffe://td/*/*", "spiffe://td/a/b", True),
    ("spiffe://td/*/*", "spiffe://td/a/b/c", False),
    ("spiffe://td/*", "spiffe://td/%2A", True),
    # '**': one or more non-empty segments, only last
    ("spiffe://td/ns/**", "spiffe://td/ns/a", True),
    ("spiffe://td/ns/**", "spiffe://td/ns/a/b/c", True),
    ("spiffe://td/ns/**", "spiffe://td/ns", False),
    ("spiffe://td/ns/**", "spiffe://td/ns/", False),
    ("spiffe://td/ns/**", "spiffe://td/ns/a//b", False),
    ("spiffe://td/ns/**", "spiffe://td/ns/a/", False),
    ("spiffe://td/ns/**", "spiffe://td/other/a", False),
    ("spiffe://td/**", "spiffe://td/a", True),
    ("spiffe://td/**", "spiffe://td", False),
    ("spiffe://td/*/x/**", "spiffe://td/a/x/b/c", True),
    ("spiffe://td/*/x/**", "spiffe://td/a/y/b", False),
    # certificate URIs that are not plain URIs never match
    ("spiffe://td/ns/*", "spiffe://td/ns/a?x=1", False),
    ("spiffe://td/ns/*", "spiffe://td/ns/a#frag", False),
    ("spiffe://td/ns/*", "spiffe://[td/ns/a", False),
    ("spiffe://td/ns/a", "", False),
    # no decoding: %2F is not a separator
    ("spiffe://td/ns/*", "spiffe://td/ns/a%2Fb", True),
    ("spiffe://td/ns/a/b", "spiffe://td/ns/a%2Fb", False),
]


@pytest.mark.parametrize(
    ("pattern", "uri", "expected"),
    [pytest.param(p, u, e, id=f"{p} {'~' if e else '!~'} {u}") for p, u, e in MATCHES],
)
def test_uri_pattern_matches(pattern: str, uri: str, expected: bool) -> None:
    assert URIPattern.parse(pattern).matches(uri) is expected


def test_uri_pattern_does_not_match_a_uri_with_leading_space() -> None:
    assert not URIPattern.parse("spiffe://td/ns/a").matches(" spiffe://td/ns/a")


BAD_PATTERNS = [
    ("td/ns/*", "not an absolute URI"),
    ("", "not an absolute URI"),
    ("spiffe://*.td/ns", "only as whole path segments"),
    ("spif*e://td/ns", "not an absolute URI"),  # "spif*e" is not a scheme at all
    ("spiffe://td/ns/a*", "whole path segment"),
    ("spiffe://td/ns/*a", "whole path segment"),
    ("spiffe://td/ns/***", "whole path segment"),
    ("spiffe://td/**/a", "only as the last segment"),
    ("spiffe://td/**/**", "only as the last segment"),
    ("spiffe://td/ns?x=1", "query or fragment"),
    ("spiffe://td/ns#a", "query or fragment"),
]


@pytest.mark.parametrize(("pattern", "problem"), BAD_PATTERNS, ids=[p for p, _ in BAD_PATTERNS])
def test_uri_pattern_parse_refuses_malformed_patterns(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        URIPattern.parse(pattern)
    assert repr(pattern) in str(caught.value)


def test_uri_pattern_parse_normalises_scheme_and_authority_only() -> None:
    assert URIPattern.parse("SPIFFE://TD.Example/NS/*") == URIPattern(
        "spiffe", "td.example", ("NS", "*"))
