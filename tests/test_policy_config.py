"""Unit tests for the policy keys in the config file: expr rules (one-line errors with the
offending token), shadow, normalize_path, escaped_slashes, deny_status."""

from __future__ import annotations

from pathlib import Path

from test_config import config_error, minimal, write_config

from gateway.authz.rule import ExprAuthorizer
from gateway.config import load
from gateway.service import validate


def test_an_expr_rule_may_name_authorizers_not_listed_anywhere(tmp_path: Path) -> None:
    sections = minimal()
    sections["authorize"] = {"authorizers": "rule"}
    sections["authorizer:rule"] = {"type": "expr", "rule": "all(people, not(blocked))"}
    sections["authorizer:blocked"] = {"type": "fingerprint", "sha256": "ab" * 32}
    checked = validate(write_config(tmp_path, sections))
    (named,) = checked.policies["default"].authorizers
    assert named.name == "rule" and isinstance(named.authorizer, ExprAuthorizer)


def test_a_bad_rule_is_one_line_naming_file_section_key_and_token(tmp_path: Path) -> None:
    sections = minimal()
    sections["authorize"] = {"authorizers": "rule"}
    sections["authorizer:rule"] = {"type": "expr", "rule": "all(people, subject(OU=ops, X=1))"}
    path = write_config(tmp_path, sections)
    assert config_error(validate, path) == (
        f"{path}: [authorizer:rule] rule = 'all(people, subject(OU=ops, X=1))': at character "
        "29 ('X'): not an attribute type (RFC 4514 short name or dotted OID)")


def test_a_rule_over_several_lines_is_one_line_in_the_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    path.write_text(path.read_text().replace(
        "authorizers = people", "authorizers = rule") + (
        "\n[authorizer:rule]\ntype = expr\nrule = all(people,\n    nobody)\n"))
    message = config_error(validate, path)
    assert message.endswith("at character 13 ('nobody'): no [authorizer:nobody] section")


def test_a_route_of_shadow_rules_only_is_refused(tmp_path: Path) -> None:
    sections = minimal()
    sections["authorize"] = {"authorizers": "trial"}
    sections["authorizer:trial"] = {"type": "expr", "rule": "people", "shadow": "yes"}
    path = write_config(tmp_path, sections)
    assert config_error(validate, path) == (
        f"{path}: [authorizer:trial] shadow = 'yes': every authorizer of route 'default' is a "
        "shadow rule: nothing would decide (list an enforcing authorizer too)")
    sections["authorize"] = {"authorizers": "trial, people"}
    validate(write_config(tmp_path, sections))


def test_route_keys_normalize_path_and_deny_status(tmp_path: Path) -> None:
    sections = minimal()
    sections["route:raw"] = {"prefix": "/raw/", "upstream": "http://127.0.0.1:9",
                             "normalize_path": "no", "deny_status": "404"}
    settings = load(write_config(tmp_path, sections))
    default, raw = settings.routes
    assert (default.normalize_path, default.deny_status) == (True, 403)
    assert (raw.normalize_path, raw.deny_status) == (False, 404)
    sections["route:raw"]["deny_status"] = "401"
    path = write_config(tmp_path, sections)
    assert config_error(load, path) == (
        f"{path}: [route:raw] deny_status = '401': must be one of 403, 404")
    sections["route:raw"].update(deny_status="403", strip_prefix="yes")
    path = write_config(tmp_path, sections)
    assert config_error(load, path).startswith(
        f"{path}: [route:raw] normalize_path = 'no': cannot be combined with strip_prefix = yes")


def test_escaped_slashes_per_listener(tmp_path: Path) -> None:
    sections = minimal()
    sections["gateway"]["escaped_slashes"] = "reject"
    sections["listener:egress"] = {"listen": "tcp:9080:interface=127.0.0.1", "tls": "off"}
    settings = load(write_config(tmp_path, sections))
    assert [x.escaped_slashes for x in settings.listeners] == ["reject", "keep"]
    sections["gateway"]["escaped_slashes"] = "decode"
    path = write_config(tmp_path, sections)
    assert config_error(load, path) == (
        f"{path}: [gateway] escaped_slashes = 'decode': must be one of keep, reject, unescape")


def test_the_commented_expr_example_of_etc_gw_ini_is_valid(tmp_path: Path) -> None:
    from test_example_config import local_copy, set_value

    from gateway.pki import write_dev_pki

    path = local_copy(tmp_path, write_dev_pki(tmp_path / "pki"))
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(";[authorizer:web]")
    for index in range(start, start + 4):
        assert lines[index].startswith(";"), lines[index]
        lines[index] = lines[index][1:]
    path.write_text(set_value("\n".join(lines), "authorize", "authorizers", "web"))
    (named,) = validate(path).policies["default"].authorizers
    assert named.name == "web" and isinstance(named.authorizer, ExprAuthorizer)


def test_check_config_gives_the_same_one_line_error_for_a_bad_rule(tmp_path: Path) -> None:
    import subprocess
    import sys

    sections = minimal()
    sections["authorize"] = {"authorizers": "rule"}
    sections["authorizer:rule"] = {"type": "expr", "rule": "any(people, not(people, people))"}
    path = write_config(tmp_path, sections)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"mtlsgw: {path}: [authorizer:rule] rule = 'any(people, not(people, people))': at "
        "character 13 ('not'): not() takes exactly one rule\n")
