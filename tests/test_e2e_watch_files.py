"""``[gateway] watch_files = yes``: the real ``twistd mtlsgw`` process reloads when a file it
names changes, the way files really change, under continuous load (a client thread making
requests on new connections with SHA-256-checked bodies: none may fail).

* a Kubernetes Secret volume: ``cert.pem -> ..data/cert.pem``, ``..data -> ..2026_01``, and an
  update that swaps ``..data`` in one rename;
* cert-manager / an ACME client: the certificate written before its key. The reload in between
  is refused (the key does not match) and logged once; the one after the key succeeds.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import threading
import time
from pathlib import Path

import pytest
from conftest import base_sections
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import (
    Gateway,
    client_context,
    https_request,
    pattern_bytes,
    pattern_sha256,
    tls_connect,
    wait_for,
)

from gateway.pki import Issued, make_leaf

INTERVAL = "0.2"
SIZE = 65536


def new_server_certificate(pki) -> Issued:
    return make_leaf(pki.root, "localhost", sans=["localhost", "127.0.0.1"],
                     eku=(ExtendedKeyUsageOID.SERVER_AUTH,))


def served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The DER of the server certificate a new connection gets."""
    with tls_connect(port, context) as tls:
        return tls.getpeercert(binary_form=True)


def der(issued: Issued) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return issued.certificate.public_bytes(Encoding.DER)


def write_atomically(path: Path, data: bytes) -> None:
    """As cert-manager and most tools write a file: a temporary file renamed into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class Load:
    """A client thread: requests on new connections until stopped, each body checked."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        expected = pattern_sha256(SIZE)
        while not self._stop.is_set():
            try:
                if self.ok % 2:
                    status, _, body = https_request(self.port, self.context,
                                                    path=f"/download/{SIZE}")
                    good = status == 200 and hashlib.sha256(body).hexdigest() == expected
                else:
                    status, _, body = https_request(self.port, self.context, "POST", "/upload",
                                                    body=b"".join(pattern_bytes(SIZE)))
                    good = status == 200 and (f'"body_sha256": "{expected}"'.encode() in body)
            except Exception as exc:  # every failure counts
                self.failures.append(repr(exc))
                continue
            if good:
                self.ok += 1
            else:
                self.failures.append(f"status {status}: {body[:200]!r}")

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def loaded(pki):
    running: list[Load] = []

    def start(port: int) -> Load:
        alice = pki.alice()
        load = Load(port, client_context(pki.ca, alice.cert, alice.key))
        running.append(load)
        wait_for(lambda: load.ok >= 3 or load.failures, "the load to run")
        return load

    yield start
    for load in running:
        load.finish()


def renewed_and_served(gateway: Gateway, context: ssl.SSLContext, renewed: Issued,
                       load: Load) -> None:
    """Wait for the reload, then for *renewed* to be served and for requests after it; stop the
    load and assert that no request failed."""
    gateway.wait_log("reloaded configuration")
    wait_for(lambda: served_certificate(gateway.port, context) == der(renewed),
             "the renewed certificate to be served")
    served = load.ok
    wait_for(lambda: load.ok >= served + 3 or load.failures, "requests after the reload")
    load.finish()
    assert load.failures == []


def start_watching(tmp_path: Path, pki, upstream, certificate: Path, key: Path) -> Gateway:
    sections = base_sections(pki, upstream.url)
    sections["gateway"].update({"watch_files": "yes", "watch_interval": INTERVAL})
    sections["tls"].update({"certificate": str(certificate), "private_key": str(key)})
    return Gateway(tmp_path / "gw", sections)


def test_a_secret_volume_update_is_reloaded_under_load(tmp_path, pki, upstream, loaded):
    secret = tmp_path / "secret"
    first = secret / "..2026_01_01_00_00_00.000000001"
    first.mkdir(parents=True)
    (first / "tls.crt").write_bytes(pki.server.issued.cert_pem())
    (first / "tls.key").write_bytes(pki.server.issued.key_pem())
    (secret / "..data").symlink_to(first.name)
    for name in ("tls.crt", "tls.key"):
        (secret / name).symlink_to(f"..data/{name}")
    gateway = start_watching(tmp_path, pki, upstream, secret / "tls.crt", secret / "tls.key")
    try:
        alice = pki.alice()
        context = client_context(pki.ca, alice.cert, alice.key)
        assert served_certificate(gateway.port, context) == der(pki.server.issued)
        load = loaded(gateway.port)

        renewed = new_server_certificate(pki)
        second = secret / "..2026_02_01_00_00_00.000000002"
        second.mkdir()
        (second / "tls.crt").write_bytes(renewed.cert_pem())
        (second / "tls.key").write_bytes(renewed.key_pem())
        (secret / "..data_tmp").symlink_to(second.name)
        os.replace(secret / "..data_tmp", secret / "..data")  # kubelet's atomic swap

        renewed_and_served(gateway, context, renewed, load)
        log = gateway.log()
        assert log.count("reloaded configuration") == 1
        assert "reload refused" not in log
        assert f"watch_files: {secret / 'tls.crt'}, {secret / 'tls.key'} changed" in log
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0


def test_a_certificate_written_before_its_key_reloads_once_complete(tmp_path, pki, upstream,
                                                                    loaded):
    certificate, key = tmp_path / "server.crt", tmp_path / "server.key"
    pki.server.issued.write(certificate, key)
    gateway = start_watching(tmp_path, pki, upstream, certificate, key)
    try:
        alice = pki.alice()
        context = client_context(pki.ca, alice.cert, alice.key)
        load = loaded(gateway.port)

        renewed = new_server_certificate(pki)
        write_atomically(certificate, renewed.cert_pem())
        log = gateway.wait_log("reload refused, keeping the running configuration")
        assert "[tls] private_key" in log or "does not match" in log, log
        # Several checks go by with the pair still incomplete: refused once, not every interval.
        checks = float(INTERVAL) * 5
        time.sleep(checks)  # the span the refusal must not repeat in
        assert gateway.log().count("reload refused") == 1
        assert served_certificate(gateway.port, context) == der(pki.server.issued)

        write_atomically(key, renewed.key_pem())
        renewed_and_served(gateway, context, renewed, load)
        log = gateway.log()
        assert log.count("reload refused") == 1
        assert log.count("reloaded configuration") == 1
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0


def test_an_unchanged_rewrite_does_not_reload(tmp_path, pki, upstream):
    certificate, key = tmp_path / "server.crt", tmp_path / "server.key"
    pki.server.issued.write(certificate, key)
    gateway = start_watching(tmp_path, pki, upstream, certificate, key)
    try:
        write_atomically(certificate, certificate.read_bytes())  # new inode, same bytes
        config = gateway.config
        config.write_text(config.read_text() + "\n; a comment\n")  # the INI file itself
        gateway.wait_log(f"watch_files: {config} changed; reloading")
        gateway.wait_log("reloaded configuration")
        assert not re.search(r"watch_files: .*server\.crt", gateway.log())
    finally:
        gateway.stop()


def test_with_workers_the_supervisor_watches_and_reloads_them(tmp_path, pki, upstream):
    from sdsocket import NotifySocket
    from test_e2e_workers import until_both_served, wait_serving

    notify = NotifySocket()
    sections = base_sections(pki, upstream.url)
    sections["gateway"].update({"watch_files": "yes", "watch_interval": INTERVAL, "workers": "2"})
    gateway = Gateway(tmp_path / "gw", sections, env=notify.env)
    try:
        wait_serving(gateway, 2)
        ready = notify.wait("READY")
        until_both_served(gateway, pki, "bob", 403)
        since = len(gateway.log())
        gateway.config.write_text(gateway.config.read_text().replace("allow = alice",
                                                                     "allow = bob"))
        gateway.wait_log(f"watch_files: {gateway.config} changed; reloading")
        reloading = notify.wait("RELOADING", ready + 1)
        assert notify.fields(notify.wait("READY", reloading + 1))["STATUS"] == (
            "reloaded the configuration")
        wait_for(lambda: gateway.log()[since:].count("reloaded configuration from") == 2,
                 "both workers to reload")
        until_both_served(gateway, pki, "bob", 200, since)
        # Only the supervisor watches: one reload for the change, not one per process.
        assert gateway.log().count("watch_files:") == 1
    finally:
        gateway.stop()
        notify.close()
    assert gateway.process.returncode == 0
