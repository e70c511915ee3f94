"""Routes and listeners: selection (pure), and the configuration rules that keep them safe."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from test_config import config_error, minimal, write_config

from gateway.config import load
from gateway.routes import RouteTable, upstream_target


@attrs.frozen
class R:
    name: str
    prefix: str
    host: str | None = None


TABLE = RouteTable([R("root", "/"), R("api", "/api/"), R("v2", "/api/v2/"),
                    R("api-host", "/api/", "api.example")])


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        (None, "/", "root"),
        (None, "/apiary", "root"),
        (None, "/api/x", "api"),
        (None, "/api/v2/x", "v2"),
        ("api.example", "/api/x", "api-host"),
        ("api.example", "/api/v2/x", "v2"),
        ("other.example", "/api/x", "api"),
    ],
)
def test_longest_prefix_wins_and_host_routes_come_first(host, path, expected):
    route = TABLE.match(host, path)
    assert route is not None
    assert route.name == expected


def test_no_route_matches():
    assert RouteTable([R("api", "/api/")]).match(None, "/") is None


@pytest.mark.parametrize(
    ("target", "prefix", "strip", "expected"),
    [
        (b"/api/users?x=1", "/api", True, b"/users?x=1"),
        (b"/api/users", "/api/", True, b"/users"),
        (b"/api", "/api", True, b"/"),
        (b"/api/users", "/api", False, b"/api/users"),
    ],
)
def test_upstream_target(target, prefix, strip, expected):
    assert upstream_target(target, prefix, strip) == expected


def _with(tmp_path: Path, extra: dict[str, dict[str, str]]) -> Path:
    sections = minimal()
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return write_config(tmp_path, sections)


def test_route_names_are_unique(tmp_path):
    path = _with(tmp_path, {"route:a": {"prefix": "/a/", "upstream": "http://127.0.0.1:1"},
                            "route: a": {"prefix": "/b/", "upstream": "http://127.0.0.1:1"}})
    assert "route name 'a' is taken" in config_error(load, path)


def test_a_route_cannot_be_called_default(tmp_path):
    path = _with(tmp_path, {"route:default": {"prefix": "/a/", "upstream": "http://127.0.0.1:1"}})
    assert "route name 'default' is taken" in config_error(load, path)


def test_two_routes_for_the_same_prefix_are_refused(tmp_path):
    path = _with(tmp_path, {"route:a": {"prefix": "/", "upstream": "http://127.0.0.1:1"}})
    assert "same listener, host and prefix as route 'default'" in config_error(load, path)


def test_route_policy_without_authorizers_is_refused(tmp_path):
    path = _with(tmp_path, {"route:a": {"prefix": "/a/", "upstream": "http://127.0.0.1:1",
                                        "policy": "all"}})
    assert "[route:a] policy = 'all': set only together with authorizers" in config_error(
        load, path)


def test_plain_listener_must_be_loopback(tmp_path):
    path = _with(tmp_path, {"listener:egress": {"listen": "tcp:9080", "tls": "off"}})
    assert "[listener:egress] listen = 'tcp:9080': a listener with tls = off must listen on " \
        "loopback" in config_error(load, path)


def test_plain_listener_routes_without_authorizers_are_open(tmp_path):
    path = _with(tmp_path, {
        "listener:egress": {"listen": "tcp:9080:interface=127.0.0.1", "tls": "off"},
        "route:out": {"listener": "egress", "upstream": "https://api.internal"},
    })
    routes = {r.name: r for r in load(path).routes}
    assert routes["out"].policy == "open"
    assert routes["default"].policy == "any"  # the mTLS listener keeps [authorize]


def test_upstream_tls_keys_need_an_https_upstream(tmp_path):
    path = _with(tmp_path, {"gateway": {"upstream_server_name": "x"}})
    assert "[gateway] upstream_server_name = 'x': only meaningful for an https:// upstream" in \
        config_error(load, path)
