"""Odd INI input and listen values: still one clear line, or accepted where users expect it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from test_config import config_error, minimal, write_config

from gateway.config import load, parse_list


def test_a_key_given_twice_names_section_key_and_line(tmp_path):
    path = write_config(tmp_path, minimal())
    path.write_text(path.read_text().replace("[gateway]\n", "[gateway]\nidle_timeout = 5\n"
                                             "idle_timeout = 6\n", 1))
    assert config_error(load, path) == (
        f"{path}: [gateway] idle_timeout: the key is given twice (line 3)")


def test_a_utf8_bom_is_accepted(tmp_path):
    path = write_config(tmp_path, minimal())
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load(path).listen == "tcp:8443"


def test_list_items_may_be_on_separate_lines():
    assert parse_list("bob\n  alice, carol") == ["bob", "alice", "carol"]


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("ssl:8443:privateKey=k.pem", "the gateway adds TLS itself"),
        ("tcp:99999:interface=127.0.0.1", "the port must be between 0 and 65535"),
        # each was a traceback at start (Twisted's tcp6 parser checks its arguments late)
        ("tcp6:8443:interface=::1", "not a Twisted server endpoint description (multiple "
         "values for argument 'interface'; write ':' in an IPv6 address as '\\:')"),
        ("tcp6:8443:interface=\\:\\:1:speed=9", "not a Twisted server endpoint description"),
    ],
)
def test_listen_values_that_would_fail_at_start_are_refused(tmp_path, listen, problem):
    sections = minimal()
    sections["gateway"]["listen"] = listen
    message = config_error(load, write_config(tmp_path, sections))
    assert message.startswith(f"{tmp_path / 'gw.ini'}: [gateway] listen = {listen!r}: {problem}")


def test_an_authorizer_plugin_that_fails_to_build_is_a_one_line_error(tmp_path):
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "broken_authz.py").write_text(
        "from twisted.plugin import IPlugin\n"
        "from zope.interface import implementer\n"
        "from gateway.authz.interfaces import IAuthorizerType\n"
        "@implementer(IPlugin, IAuthorizerType)\n"
        "class _Broken:\n"
        "    name = 'broken'\n"
        "    keys = frozenset()\n"
        "    def build(self, name, options):\n"
        "        raise ValueError('oops')\n"
        "broken = _Broken()\n")
    sections = minimal()
    sections["authorizer:people"] = {"type": "broken"}
    path = write_config(tmp_path, sections)
    env_path = f"{tmp_path / 'site'}"
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); "
         "from gateway.cli import main; sys.exit(main(sys.argv[1:]))", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"mtlsgw: {path}: [authorizer:people] type = 'broken': "
        "plugin twisted.plugins.broken_authz failed: ValueError: oops"), result.stderr


def test_quickstart_with_the_upstream_port_taken_says_so_and_exits(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "quickstart", "--dir", str(tmp_path / "qs"),
             "--port", "0", "--upstream-port", str(port)],
            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mtlsgw: cannot start the demo upstream on 127.0.0.1:{port} ([Errno 98] Address already "
        "in use); choose another with --upstream-port"]


def test_a_control_character_in_a_section_or_key_name_is_escaped_in_the_error(tmp_path):
    # an ANSI escape in a typo'd name must not reach the terminal raw
    path = tmp_path / "gw.ini"
    sections = minimal()
    sections["tsl\x1b[31mRED"] = {"certificate": "x"}
    path = write_config(tmp_path, sections)
    message = config_error(load, path)
    assert "\x1b" not in message and "tsl\\x1b[31mRED" in message, message
