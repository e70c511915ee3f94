"""Unit tests for the helpers other tests and plugin authors lean on: gateway.pki and
gateway.authz.testing."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gateway.authz.interfaces import Decision, IAuthorizer, RequestInfo
from gateway.authz.testing import decide, identity_from_file, identity_from_pem, request_info
from gateway.identity import UnsafeNameError
from gateway.pki import general_names, make_ca, make_leaf, name, write_dev_pki

ROOT = make_ca(name("Root", organization_name="Example"))


# --------------------------------------------------------------------------
# gateway.pki
# --------------------------------------------------------------------------

def test_name_puts_attributes_first_and_cn_last() -> None:
    assert name("alice", organization_name="Example", country_name="DE") == x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
    ])


def test_make_ca_without_issuer_is_a_self_signed_root() -> None:
    cert = ROOT.certificate
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_make_ca_with_issuer_is_an_intermediate() -> None:
    intermediate = make_ca("Intermediate", ROOT, path_length=0)
    intermediate.certificate.verify_directly_issued_by(ROOT.certificate)
    assert intermediate.certificate.issuer == ROOT.certificate.subject
    constraints = intermediate.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints).value
    assert constraints.path_length == 0


def test_make_leaf_defaults_to_a_client_certificate() -> None:
    leaf = make_leaf(ROOT, "alice").certificate
    leaf.verify_directly_issued_by(ROOT.certificate)
    assert leaf.subject == name("alice")
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(make_leaf(ROOT, "alice").key, ec.EllipticCurvePrivateKey)


def test_make_leaf_without_eku() -> None:
    leaf = make_leaf(ROOT, "alice", eku=None).certificate
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


@pytest.mark.parametrize(("subject", "critical"), [(None, True), ("alice", False)])
def test_make_leaf_marks_san_critical_only_for_an_empty_subject(
    subject: str | None, critical: bool
) -> None:
    leaf = make_leaf(ROOT, subject, sans=["svc.example"]).certificate
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical is critical


def test_make_leaf_serial_dates_and_rsa_key() -> None:
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(2025, 2, 1, tzinfo=datetime.UTC)
    issued = make_leaf(ROOT, "alice", serial=42, not_before=start, not_after=end, key_kind="rsa")
    assert issued.certificate.serial_number == 42
    assert (issued.certificate.not_valid_before_utc, issued.certificate.not_valid_after_utc) == (
        start, end)
    assert isinstance(issued.key, rsa.RSAPrivateKey)


@pytest.mark.parametrize(
    ("text", "general_name"),
    [
        ("dns:a.example", x509.DNSName("a.example")),
        ("uri:spiffe://td/x", x509.UniformResourceIdentifier("spiffe://td/x")),
        ("email:a@example.com", x509.RFC822Name("a@example.com")),
        ("ip:::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("a.example", x509.DNSName("a.example")),
        ("192.0.2.1", x509.IPAddress(ipaddress.ip_address("192.0.2.1"))),
        ("dns:192.0.2.1", x509.DNSName("192.0.2.1")),
    ],
)
def test_general_names_from_prefixed_strings(text: str, general_name: x509.GeneralName) -> None:
    assert general_names([text]) == [general_name]


def test_issued_write_makes_the_key_private(tmp_path: Path) -> None:
    issued = make_leaf(ROOT, "alice")
    issued.write(tmp_path / "a.crt", tmp_path / "a.key")
    assert (tmp_path / "a.crt").read_bytes() == issued.cert_pem()
    assert (tmp_path / "a.key").read_bytes() == issued.key_pem()
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600


def test_write_dev_pki(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path / "dev", client_cn="carol")
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    client = identity_from_file(pki.client_cert)
    assert client.common_names == ("carol",)
    client.certificate.verify_directly_issued_by(ca)
    server = identity_from_file(pki.server_cert)
    assert server.dns_names == ("localhost",)
    assert server.ip_addresses == ("127.0.0.1", "::1")


# --------------------------------------------------------------------------
# gateway.authz.testing
# --------------------------------------------------------------------------

def test_identity_from_pem_reads_the_first_certificate() -> None:
    alice, bob = make_leaf(ROOT, "alice"), make_leaf(ROOT, "bob")
    assert identity_from_pem(alice.cert_pem() + bob.cert_pem()).common_names == ("alice",)


def test_identity_from_pem_without_a_certificate_raises_value_error() -> None:
    with pytest.raises(ValueError):
        identity_from_pem(b"no certificate here")


def test_identity_from_pem_refuses_unsafe_names() -> None:
    with pytest.raises(UnsafeNameError):
        identity_from_pem(make_leaf(ROOT, "a\nb").cert_pem())


def test_request_info_defaults_and_overrides() -> None:
    assert request_info() == RequestInfo("GET", "/", "localhost", "localhost", "127.0.0.1")
    assert request_info(path="/admin", host=None).path == "/admin"


@implementer(IAuthorizer)
class Returns:
    def __init__(self, result: object) -> None:
        self.result = result

    def authorize(self, identity: object, request: RequestInfo) -> object:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize(
    "make_result",
    [lambda: Decision.allow("yes"), lambda: succeed(Decision.allow("yes"))],
    ids=["decision", "fired-deferred"],
)
def test_decide_returns_the_decision(make_result) -> None:
    assert decide(Returns(make_result()), None, request_info()) == Decision(True, "yes")


def test_decide_refuses_an_unfired_deferred() -> None:
    with pytest.raises(RuntimeError, match="has not fired"):
        decide(Returns(Deferred()), None, request_info())


@pytest.mark.parametrize(
    "make_result",
    [lambda: KeyError("boom"), lambda: fail(KeyError("boom"))],
    ids=["raises", "failed-deferred"],
)
def test_decide_reraises_the_authorizer_error(make_result) -> None:
    with pytest.raises(KeyError, match="boom"):
        decide(Returns(make_result()), None, request_info())


def _mtlsgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_dev_pki_keeps_an_existing_pki_unless_forced(tmp_path: Path) -> None:
    assert _mtlsgw("dev-pki", str(tmp_path / "pki")).returncode == 0
    ca = (tmp_path / "pki" / "ca.pem").read_bytes()
    again = _mtlsgw("dev-pki", str(tmp_path / "pki"))
    assert (again.returncode, again.stderr) == (1, (
        f"mtlsgw: {tmp_path / 'pki'} holds a PKI already (ca.pem); --force replaces it, CA key "
        "included\n"))
    assert (tmp_path / "pki" / "ca.pem").read_bytes() == ca
    assert _mtlsgw("dev-pki", "--force", str(tmp_path / "pki")).returncode == 0
    assert (tmp_path / "pki" / "ca.pem").read_bytes() != ca


@pytest.mark.parametrize("make", ["file", "cn-empty", "cn-control", "cn-long"])
def test_dev_pki_mistakes_are_one_line(tmp_path: Path, make: str) -> None:
    target, options = tmp_path / "pki", []
    if make == "file":
        target.write_text("not a directory")
    else:
        options = ["--client-cn", {"cn-empty": "", "cn-control": "a\x01b",
                                   "cn-long": "a" * 65}[make]]
    result = _mtlsgw("dev-pki", *options, str(target))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # argparse: usage + line


def test_check_config_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path / "pki")
    ini = tmp_path / "gw.ini"
    ini.write_text(f"[gateway]\nlisten = tcp:8443:interface=127.0.0.1\n"
                   f"upstream = http://127.0.0.1:3000\n[tls]\ncertificate = {pki.server_cert}\n"
                   f"private_key = {pki.server_key}\nclient_ca = {pki.ca}\n[authorize]\n"
                   f"authorizers = team\n[authorizer:team]\ntype = cn\nallow = alice\n")
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "check-config", str(ini)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # as `| head -0` would
    _, err = process.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
