"""Authorizer type ``file`` against the real process: the allowlist is re-read when it changes,
a malformed or vanished version keeps the previous entries, SIGHUP re-reads it, an empty file
denies, and a missing or malformed file stops the start (and check-config) with one line."""

from __future__ import annotations

import signal
import subprocess
import sys

from harness import DEADLINE, client_context, https_request, render_ini, wait_for

from gateway.authz.testing import identity_from_file


def _status(gateway, pki, files):  # type: ignore[no-untyped-def]
    context = client_context(pki.ca, files.cert, files.key)
    status, _, body = https_request(gateway.port, context, path="/allow")
    return status, body


def _wait_log_asking(gateway, pki, text: str) -> str:  # type: ignore[no-untyped-def]
    # The file is looked at on a request (at most once a second): keep asking.
    def seen() -> str | None:
        _status(gateway, pki, pki.bob())
        return gateway.log() if text in gateway.log() else None
    return str(wait_for(seen, f"log line {text!r}"))


def _entry(files) -> str:  # type: ignore[no-untyped-def]
    return f"sha256:{identity_from_file(files.cert).fingerprint_sha256}\n"


def test_allowlist_changes_apply_without_a_restart(start_gateway, pki, tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("# the team\n" + _entry(pki.alice()))
    gateway = start_gateway({"authorize": {"authorizers": "listed"},
                             "authorizer:listed": {"type": "file", "path": str(allow)}},
                            drop=("authorizer:team",))
    assert _status(gateway, pki, pki.alice())[0] == 200
    assert _status(gateway, pki, pki.bob()) == (403, b"403 Forbidden: allowlist-not-listed\n")

    allow.write_text(_entry(pki.bob()))
    wait_for(lambda: _status(gateway, pki, pki.bob())[0] == 200, "the new list to apply")
    assert _status(gateway, pki, pki.alice())[0] == 403
    assert "loaded 1 entries" in gateway.wait_log("loaded 1 entries")

    # A malformed version: logged once with file and line, the previous list stays.
    allow.write_text(_entry(pki.alice()) + "sha256:nothex\n")
    line = f"allowlist {allow}: line 2: 'nothex' is not a SHA-256 fingerprint"
    log = _wait_log_asking(gateway, pki, line)
    assert "keeping the previous 1 entries" in log
    assert _status(gateway, pki, pki.bob())[0] == 200
    assert _status(gateway, pki, pki.alice())[0] == 403
    assert gateway.log().count(line) == 1

    # Vanished: still the previous list.
    allow.unlink()
    _wait_log_asking(gateway, pki, "cannot read the file")
    assert _status(gateway, pki, pki.bob())[0] == 200

    # SIGHUP while the file is missing: the reload is refused, the running list stays.
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reload refused")
    assert _status(gateway, pki, pki.bob())[0] == 200

    # Back, with alice; SIGHUP reads it at once.
    allow.write_text(_entry(pki.alice()))
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _status(gateway, pki, pki.alice())[0] == 200, "the reload")


def test_empty_allowlist_denies_everything(start_gateway, pki, tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("# nobody yet\n")
    gateway = start_gateway({"authorize": {"authorizers": "listed"},
                             "authorizer:listed": {"type": "file", "path": str(allow)}},
                            drop=("authorizer:team",))
    assert _status(gateway, pki, pki.alice()) == (403, b"403 Forbidden: allowlist-empty\n")


def _check(tmp_path, pki, upstream, content: str | None):  # type: ignore[no-untyped-def]
    config = tmp_path / "etc" / "gw.ini"
    config.parent.mkdir()
    if content is not None:
        (config.parent / "allow.txt").write_text(content)
    config.write_text(render_ini({
        "gateway": {"upstream": upstream.url, "listen": "tcp:0"},
        "tls": {"certificate": str(pki.server.cert), "private_key": str(pki.server.key),
                "client_ca": str(pki.ca)},
        "authorize": {"authorizers": "listed"},
        "authorizer:listed": {"type": "file", "path": "allow.txt"},
    }))
    return config, subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(config)],
        capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)


def test_check_config_resolves_the_path_against_the_config_file(tmp_path, pki, upstream):
    _, check = _check(tmp_path, pki, upstream, _entry(pki.alice()))
    assert check.returncode == 0, check.stderr


def test_check_config_refuses_a_malformed_allowlist(tmp_path, pki, upstream):
    config, check = _check(tmp_path, pki, upstream, "# ok\n\ndn:CN=a,,O=b\n")
    assert check.returncode == 1
    assert check.stderr.startswith(
        f"mtlsgw: {config}: [authorizer:listed] path = 'allow.txt': "
        f"{config.parent}/allow.txt: line 3: dn:CN=a,,O=b is not an RFC 4514")
    assert check.stderr.count("\n") == 1


def test_check_config_refuses_a_missing_allowlist(tmp_path, pki, upstream):
    config, check = _check(tmp_path, pki, upstream, None)
    assert check.returncode == 1
    assert check.stderr == (f"mtlsgw: {config}: [authorizer:listed] path = 'allow.txt': "
                            f"file not found: {config.parent}/allow.txt\n")
