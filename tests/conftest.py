"""Shared fixtures: a test PKI written to disk, a real upstream, and gateway processes."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import Gateway, Upstream

from gateway.pki import Issued, make_ca, make_leaf, name

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


@attrs.frozen
class Files:
    cert: Path
    key: Path
    issued: Issued


class TestPKI:
    """Certificates for the tests, each written as NAME.crt / NAME.key under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.root = make_ca(name("mtlsgw test root", organization_name="mtlsgw tests"))
        self.intermediate = make_ca(name("mtlsgw test intermediate"), self.root, path_length=0)
        self.other_root = make_ca("somebody else's root")
        self.ca = directory / "ca.pem"
        self.ca.write_bytes(self.root.cert_pem())
        self.both = directory / "root-and-intermediate.pem"
        self.both.write_bytes(self.root.cert_pem() + self.intermediate.cert_pem())
        self.server = self._write("server", make_leaf(
            self.root, "localhost", sans=["localhost", "127.0.0.1"],
            eku=(ExtendedKeyUsageOID.SERVER_AUTH,)))
        self._cache: dict[str, Files] = {}

    def _write(self, label: str, issued: Issued, chain: tuple[Issued, ...] = ()) -> Files:
        cert = self.directory / f"{label}.crt"
        key = self.directory / f"{label}.key"
        issued.write(cert, key)
        if chain:
            cert.write_bytes(issued.cert_pem() + b"".join(c.cert_pem() for c in chain))
        return Files(cert, key, issued)

    def leaf(self, label: str, subject: x509.Name | str | None, *, issuer: Issued | None = None,
             chain: tuple[Issued, ...] = (), **kwargs: object) -> Files:
        """A client certificate called *label*, made once per session."""
        if label not in self._cache:
            issued = make_leaf(issuer or self.root, subject, **kwargs)  # type: ignore[arg-type]
            self._cache[label] = self._write(label, issued, chain)
        return self._cache[label]

    # The certificates most tests use.
    def alice(self) -> Files:
        return self.leaf("alice", name("alice", organization_name="Example, Inc.",
                                        country_name="DE"))

    def bob(self) -> Files:
        return self.leaf("bob", "bob")

    def expired(self) -> Files:
        return self.leaf("expired", "alice", not_before=NOW - 30 * DAY, not_after=NOW - DAY)

    def not_yet_valid(self) -> Files:
        return self.leaf("not-yet-valid", "alice", not_before=NOW + DAY, not_after=NOW + 30 * DAY)

    def server_eku_only(self) -> Files:
        return self.leaf("server-eku", "alice", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))

    def untrusted(self) -> Files:
        return self.leaf("untrusted", "alice", issuer=self.other_root)

    def via_intermediate(self, send_chain: bool) -> Files:
        label = "via-intermediate-chain" if send_chain else "via-intermediate-leaf-only"
        chain = (self.intermediate,) if send_chain else ()
        return self.leaf(label, "alice", issuer=self.intermediate, chain=chain)

    def two_cns(self) -> Files:
        return self.leaf("two-cns", x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def base_sections(pki: TestPKI, upstream_url: str) -> dict[str, dict[str, str]]:
    return {
        "gateway": {"upstream": upstream_url},
        "tls": {
            "certificate": str(pki.server.cert),
            "private_key": str(pki.server.key),
            "client_ca": str(pki.ca),
        },
        "authorize": {"policy": "any", "authorizers": "team"},
        "authorizer:team": {"type": "cn", "allow": "alice"},
    }


GatewayFactory = Callable[..., Gateway]


@pytest.fixture(scope="module")
def start_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: TestPKI, upstream: Upstream
) -> Iterator[GatewayFactory]:
    """``start_gateway(extra=None, drop=(), env=None)``: run a gateway, stopped after the module.

    The config is :func:`base_sections` with *extra* (``{"section": {"key": "value"}}``) merged
    in after the sections named in *drop* are removed; *env* adds environment variables.
    """
    running: list[Gateway] = []

    def start(extra: dict[str, dict[str, str]] | None = None,
              drop: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Gateway:
        sections = base_sections(pki, upstream.url)
        for section in drop:
            sections.pop(section, None)
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        gateway = Gateway(tmp_path_factory.mktemp("gw"), sections, env)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()
