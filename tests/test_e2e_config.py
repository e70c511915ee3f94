"""Bad configuration stops the start with one line naming file, section, key and value;
``mtlsgw check-config`` says the same; SIGHUP reloads, and a failed reload keeps serving."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_sections
from harness import (
    DEADLINE,
    client_context,
    https_request,
    refused_start,
    render_ini,
    run_twistd,
    wait_for,
)


def _write(tmp_path: Path, sections) -> Path:
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    return path


def _sections(pki, upstream, change):
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = "tcp:0:interface=127.0.0.1"
    change(sections)
    return sections


def _set(section, key, value):
    def change(sections):
        sections.setdefault(section, {})[key] = value
    return change


def _other_key(pki):
    return str(pki.alice().key)


BAD = [
    ("missing certificate file", lambda p: _set("tls", "certificate", "nope.pem"),
     "[tls] certificate = 'nope.pem': file not found"),
    ("key does not match certificate", lambda p: _set("tls", "private_key", _other_key(p)),
     "[tls] private_key = "),
    ("CA file without a certificate", lambda p: _set("tls", "client_ca", str(p.server.key)),
     "[tls] client_ca = "),
    ("unknown authorizer type", lambda p: _set("authorizer:team", "type", "nope"),
     "[authorizer:team] type = 'nope': unknown authorizer type"),
    ("authorizer listed but not defined", lambda p: _set("authorize", "authorizers", "team, x"),
     "[authorize] authorizers = 'team, x': authorizer 'x' is listed but there is no"),
    ("unknown key", lambda p: _set("gateway", "lisen", "tcp:1"),
     "[gateway] lisen = 'tcp:1': unknown key"),
    ("bad endpoint", lambda p: _set("gateway", "listen", "tcpp:8443"),
     "[gateway] listen = 'tcpp:8443': not a Twisted server endpoint description"),
]


SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def _sha1_change(sections):
    sections["authorizer:team"] = {"type": "fingerprint", "sha256": SHA1}


def _malformed_fp_change(sections):
    sections["authorizer:team"] = {"type": "fingerprint", "sha256": "xyz"}


CASES = [*BAD,
    ("SHA-1 fingerprint", lambda p: _sha1_change,
     f"[authorizer:team] sha256 = '{SHA1}': "),
    ("malformed fingerprint", lambda p: _malformed_fp_change,
     "[authorizer:team] sha256 = 'xyz': "),
]


@pytest.mark.parametrize(("label", "make_change", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_stops_twistd_with_one_line(tmp_path, pki, upstream, label, make_change,
                                               expected):
    path = _write(tmp_path, _sections(pki, upstream, make_change(pki)))
    line = refused_start(path)
    assert line.startswith(f"mtlsgw: {path}: "), line
    assert expected in line


def test_check_config_accepts_a_good_file(tmp_path, pki, upstream):
    path = _write(tmp_path, _sections(pki, upstream, lambda s: None))
    check = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                           capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert check.returncode == 0, check.stderr
    assert "OK" in check.stdout


def test_sighup_reloads_and_a_broken_reload_keeps_serving(start_gateway, pki):
    gateway = start_gateway()
    alice, bob = pki.alice(), pki.bob()

    def status(files):
        return https_request(gateway.port, client_context(pki.ca, files.cert, files.key))[0]

    assert (status(alice), status(bob)) == (200, 403)
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("allow = alice", "allow = bob"))
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reloaded configuration")
    wait_for(lambda: status(bob) == 200, "bob to be allowed after the reload")
    assert status(alice) == 403
    gateway.config.write_text(text.replace("type = cn", "type = nope"))
    gateway.process.send_signal(signal.SIGHUP)
    log = gateway.wait_log("reload refused, keeping the running configuration")
    assert "[authorizer:team] type = 'nope'" in log
    assert (status(alice), status(bob)) == (403, 200)
    assert gateway.process.poll() is None


@pytest.mark.parametrize(("key", "value", "warning"), [
    ("drain_timeout", "5", "reload: limits or handshake_timeout changed"),
    ("workers", "2", "reload: workers changed"),
])
def test_a_restart_only_change_warns_until_the_file_is_put_back(start_gateway, key, value,
                                                                 warning):
    # Compared with what runs, not with the last file loaded: putting it back says nothing.
    gateway = start_gateway()
    text = gateway.config.read_text()

    def reload(config: str, count: int) -> str:
        gateway.config.write_text(config)
        gateway.process.send_signal(signal.SIGHUP)
        return str(wait_for(lambda: gateway.log().count("reloaded configuration") == count
                            and gateway.log(), f"reload {count}"))

    changed = text.replace("[gateway]\n", f"[gateway]\n{key} = {value}\n", 1)
    assert reload(changed, 1).count(warning) == 1
    assert reload(text, 2).count(warning) == 1
    assert reload(changed, 3).count(warning) == 2


@pytest.mark.parametrize("where", ["route", "http-authorizer"])
def test_an_encrypted_client_key_for_an_upstream_is_one_line_and_never_prompts(
        tmp_path, pki, upstream, where):
    # OpenSSL's loader asks for a passphrase on the terminal: a reload from one blocked
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        PrivateFormat,
        load_pem_private_key,
    )

    files = pki.alice()
    key = load_pem_private_key(files.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                            BestAvailableEncryption(b"secret")))
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = "tcp:9:interface=127.0.0.1"  # refused before it is bound
    if where == "route":
        sections["gateway"].update({"upstream": "https://127.0.0.1:9",
                                    "upstream_ca": str(pki.ca),
                                    "upstream_certificate": str(files.cert),
                                    "upstream_private_key": str(encrypted)})
    else:
        sections["authorize"]["authorizers"] = "remote"
        sections["authorizer:remote"] = {"type": "http", "url": "https://127.0.0.1:9/check",
                                         "ca": str(pki.ca), "certificate": str(files.cert),
                                         "private_key": str(encrypted)}
    line = refused_start(_write(tmp_path, sections))
    assert "is encrypted; give an unencrypted PEM key" in line, line
    assert "pass phrase" not in line
    if where == "http-authorizer":
        assert "[authorizer:remote] private_key" in line, line


def test_reload_refuses_to_change_a_listener(start_gateway, pki):
    gateway = start_gateway()
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("[gateway]\n", "[gateway]\ntls = off\n", 1))
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reload refused: listeners changed")
    alice = pki.alice()
    assert https_request(gateway.port, client_context(pki.ca, alice.cert, alice.key))[0] == 200


def test_a_port_in_use_stops_the_start_with_one_line(tmp_path, pki, upstream):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sections = base_sections(pki, upstream.url)
        sections["gateway"]["listen"] = f"tcp:{port}:interface=127.0.0.1"
        path = _write(tmp_path, sections)
        process = run_twistd(path, None)
        out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1
    assert f"[gateway] listen = 'tcp:{port}:interface=127.0.0.1': cannot listen" in out + err
    assert "Traceback" not in out + err


def test_a_unix_socket_in_a_missing_directory_stops_the_start_with_one_line(tmp_path, pki,
                                                                          upstream):
    # The directory may come with the service (systemd's RuntimeDirectory=), so check-config
    # accepts it; the start names the listener instead of Twisted's lock-file traceback.
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = f"unix:{tmp_path}/missing/gw.sock"
    path = _write(tmp_path, sections)
    process = run_twistd(path, None)
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1, out + err
    assert err.strip().splitlines() == [
        f"mtlsgw: {path}: [gateway] listen = 'unix:{tmp_path}/missing/gw.sock': cannot listen "
        f"(No such file or directory: {tmp_path}/missing/gw.sock.lock)"], err
    assert "Traceback" not in out + err


def test_reuse_port_lets_two_gateways_share_a_port(tmp_path, pki, upstream):
    from harness import Gateway, free_port

    port = free_port()
    sections = base_sections(pki, upstream.url)
    sections["gateway"].update({"listen": f"tcp:{port}:interface=127.0.0.1",
                                "reuse_port": "yes"})
    first = Gateway(tmp_path / "one", sections)
    second = Gateway(tmp_path / "two", sections)
    try:
        alice = pki.alice()
        for _ in range(24):  # new connections: the kernel spreads them over both processes
            assert https_request(port, client_context(pki.ca, alice.cert, alice.key))[0] == 200
        assert first.process.poll() is None and second.process.poll() is None
        assert "mtlsgw.access" in first.log() and "mtlsgw.access" in second.log()
    finally:
        first.stop()
        second.stop()
