"""Unit tests of the ``path`` authorizer, with mtlsgw's test helpers and dev PKI.

Run from examples/mtlsgw-path-authorizer with mtlsgw importable, e.g.
``PYTHONPATH=/path/to/mtlsgw python -m pytest`` (or with both packages installed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mtlsgw_path_authorizer import PathAuthorizer, from_options
from twisted.plugin import IPlugin

from gateway import pki
from gateway.authz.interfaces import (
    ClientIdentity,
    Decision,
    IAuthorizer,
    IAuthorizerType,
    OptionError,
)
from gateway.authz.policy import Policy
from gateway.authz.registry import available_types, build_authorizers
from gateway.authz.testing import decide, identity_from_pem, request_info
from gateway.config import AuthorizerSection, ConfigError, Location, load


@pytest.fixture(scope="module")
def alice() -> ClientIdentity:
    ca = pki.make_ca("Test CA")
    return identity_from_pem(pki.make_leaf(ca, "alice").cert_pem())


def ask(authorizer: PathAuthorizer, identity: ClientIdentity | None, path: str) -> Decision:
    return decide(authorizer, identity, request_info(path=path))


# -- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/health/", "/health/live", "/health/a/b"])
def test_prefix_allows_on_segment_boundary(alice: ClientIdentity, path: str) -> None:
    authorizer = from_options({"allow_prefix": "/health"})
    assert ask(authorizer, alice, path) == Decision.allow("path-allowed")


@pytest.mark.parametrize(
    "path", ["/healthz", "/health-check", "/", "/admin", "/Health", "//health"]
)
def test_other_paths_denied(alice: ClientIdentity, path: str) -> None:
    authorizer = from_options({"allow_prefix": "/health"})
    assert ask(authorizer, alice, path) == Decision.deny("path-not-allowed")


def test_several_prefixes(alice: ClientIdentity) -> None:
    authorizer = from_options({"allow_prefix": "/health, /metrics/"})
    assert authorizer.prefixes == ("/health", "/metrics")
    assert ask(authorizer, alice, "/metrics").allowed
    assert ask(authorizer, alice, "/metrics/app").allowed
    assert not ask(authorizer, alice, "/metricsx").allowed


def test_root_prefix_allows_every_path(alice: ClientIdentity) -> None:
    authorizer = from_options({"allow_prefix": "/"})
    assert ask(authorizer, alice, "/").allowed
    assert ask(authorizer, alice, "/anything/at/all").allowed


@pytest.mark.parametrize(
    "path",
    [
        "/health/../admin",
        "/health/./live",
        "/health/..",
        "/health/%2e%2e/admin",
        "/health/%2E%2E/admin",
        "/health/..%2fadmin",
        "/health/..%5cadmin",
        "/health/..\\admin",
        "/health/..;/admin",
        "/health/.;x/live",
    ],
)
def test_dot_segments_denied(alice: ClientIdentity, path: str) -> None:
    # The gateway forwards the path unchanged; an upstream could resolve it outside /health.
    authorizer = from_options({"allow_prefix": "/health"})
    assert ask(authorizer, alice, path) == Decision.deny("path-not-allowed")


def test_dots_inside_names_are_fine(alice: ClientIdentity) -> None:
    authorizer = from_options({"allow_prefix": "/health"})
    assert ask(authorizer, alice, "/health/v1.2/..status...").allowed


# -- clients without a certificate ---------------------------------------------------------------


def test_no_certificate_denied_by_default() -> None:
    authorizer = from_options({"allow_prefix": "/health"})
    assert authorizer.require_certificate
    assert ask(authorizer, None, "/health") == Decision.deny("no-certificate")


def test_no_certificate_allowed_when_not_required() -> None:
    authorizer = from_options({"allow_prefix": "/health", "require_certificate": "no"})
    assert ask(authorizer, None, "/health/live") == Decision.allow("path-allowed")
    assert ask(authorizer, None, "/admin") == Decision.deny("path-not-allowed")
    assert ask(authorizer, None, "/health/../admin") == Decision.deny("path-not-allowed")


def test_certificate_still_needs_the_path(alice: ClientIdentity) -> None:
    authorizer = from_options({"allow_prefix": "/health", "require_certificate": "no"})
    assert ask(authorizer, alice, "/health").allowed
    assert not ask(authorizer, alice, "/admin").allowed


@pytest.mark.parametrize(("raw", "expected"), [("yes", True), ("No", False), ("off", False),
                                               ("true", True), ("0", False)])
def test_require_certificate_spellings(raw: str, expected: bool) -> None:
    options = {"allow_prefix": "/health", "require_certificate": raw}
    assert from_options(options).require_certificate is expected


# -- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "allow_prefix"),
        ({"allow_prefix": " , "}, "allow_prefix"),
        ({"allow_prefix": "health"}, "allow_prefix"),
        ({"allow_prefix": "/health, metrics"}, "allow_prefix"),
        ({"allow_prefix": "/a b"}, "allow_prefix"),
        ({"allow_prefix": "/health?x=1"}, "allow_prefix"),
        ({"allow_prefix": "/health/../admin"}, "allow_prefix"),
        ({"allow_prefix": "/health", "require_certificate": "maybe"}, "require_certificate"),
        ({"allow_prefix": "/health", "require_certificate": ""}, "require_certificate"),
    ],
)
def test_bad_options(options: dict[str, str], key: str) -> None:
    with pytest.raises(OptionError) as caught:
        from_options(options)
    assert caught.value.key == key


# -- as a plugin, through the gateway's registry and configuration --------------------------------


def test_discovered_as_plugin() -> None:
    kind = available_types()["path"]
    assert IPlugin.providedBy(kind)
    assert IAuthorizerType.providedBy(kind)
    assert kind.keys == frozenset({"allow_prefix", "require_certificate"})
    assert IAuthorizer.providedBy(kind.build("public", {"allow_prefix": "/health"}))


def test_bad_option_becomes_config_error(tmp_path: Path) -> None:
    location = Location(tmp_path / "gw.ini", "authorizer:public")
    section = AuthorizerSection("public", "path", {"allow_prefix": "health"}, location)
    with pytest.raises(ConfigError, match=r"\[authorizer:public\] allow_prefix = 'health': .*'/'"):
        build_authorizers([section])


def test_ini_snippet_with_policy_any(tmp_path: Path, alice: ClientIdentity) -> None:
    dev = pki.write_dev_pki(tmp_path / "pki")
    config = tmp_path / "gw.ini"
    config.write_text(
        f"""
[gateway]
listen = tcp:8443
upstream = http://127.0.0.1:8080

[tls]
certificate = {dev.server_cert}
private_key = {dev.server_key}
client_ca = {dev.ca}
client_auth = optional

[authorize]
policy = any
authorizers = team, public

[authorizer:team]
type = cn
allow = alice

[authorizer:public]
type = path
allow_prefix = /health
require_certificate = no
"""
    )
    settings = load(config)
    route = settings.routes[0]
    policy = Policy(route.policy, build_authorizers(route.authorizers))

    def combined(identity: ClientIdentity | None, path: str) -> Decision:
        results: list[Decision] = []
        policy.decide(identity, request_info(path=path)).addCallback(results.append)
        return results[0]

    assert combined(None, "/health/live") == Decision(True, "path-allowed", "public")
    # Nothing allows: the first denial (from "team") is reported.
    assert combined(None, "/admin") == Decision(False, "no-certificate", "team")
    assert combined(alice, "/admin") == Decision(True, "cn-allowed", "team")
