"""Hostile certificate names through the real gateway: what OpenSSL verifies is served, with the
headers nginx would forward (``openssl x509 -nameopt RFC2253`` is the reference); what must be
refused is refused in the handshake with one log line and no traceback; OpenSSL refusals while
building the TLS context are one-line configuration errors, at start, check-config and reload."""

from __future__ import annotations

import signal
import subprocess
import urllib.parse
from pathlib import Path

import attrs
import hostile as h
import pytest
from conftest import base_sections
from harness import (
    Refused,
    client_context,
    headers_of,
    https_request,
    refused_start,
    render_ini,
)

from gateway.pki import Issued, make_ca, make_leaf

pytestmark = pytest.mark.skipif(h.OPENSSL is None, reason="openssl CLI not found")


@attrs.frozen
class Client:
    """A hostile leaf (DER), the chain it sends, and the files the TLS client loads."""

    leaf: bytes
    chain: tuple[bytes, ...]
    cert: Path
    key: Path


def _client(pki, label: str, leaf: bytes, key_of: Issued, chain: tuple[bytes, ...] = ()) -> Client:
    cert = pki.directory / f"names-{label}.crt"
    key = pki.directory / f"names-{label}.key"
    cert.write_bytes(h.pem(leaf) + b"".join(h.pem(c) for c in chain))
    key.touch(mode=0o600)
    key.write_bytes(key_of.key_pem())
    return Client(leaf, chain, cert, key)


def _san(*names: bytes) -> bytes:
    return h.extension(h.SAN, h.general_names(*names))


def _leaf_with(pki, label: str, **fields: object) -> Client:
    base = make_leaf(pki.root, "alice")
    return _client(pki, label, h.patch(base.certificate, pki.root.key, **fields), base)  # type: ignore[arg-type]


def _via_hostile_intermediate(pki, label: str, ca_name: bytes) -> Client:
    intermediate = make_ca("placeholder intermediate", pki.root, path_length=0)
    ca_der = h.patch(intermediate.certificate, pki.root.key, subject=ca_name)
    base = make_leaf(intermediate, "alice")
    leaf = h.patch(base.certificate, intermediate.key, issuer=ca_name)
    return _client(pki, label, leaf, base, (ca_der,))


ACCEPTED = {
    "printable-specials": lambda p: _leaf_with(p, "printable-specials", subject=h.name(
        h.ava(h.C, h.PRINTABLE, b"US"),
        h.ava(h.O, h.PRINTABLE, b"Wells Fargo & Company"),
        h.ava(h.OU, h.PRINTABLE, b"ops_team@corp"),
        h.ava(h.CN, h.PRINTABLE, b"*.corp.example"))),
    "intermediate-printable-specials": lambda p: _via_hostile_intermediate(
        p, "intermediate-printable-specials", h.name(
            h.ava(h.O, h.PRINTABLE, b"Wells Fargo & Company"),
            h.ava(h.CN, h.PRINTABLE, b"*_Issuing CA @1"))),
    "t61-ia5-latin1": lambda p: _leaf_with(p, "t61-ia5-latin1", subject=h.name(
        h.ava(h.L, h.T61, b"M\xfcnchen"), h.ava(h.OU, h.IA5, b"caf\xe9"),
        h.ava(h.CN, h.T61, b"J\xf6rg"))),
    "unexpected-types": lambda p: _leaf_with(p, "unexpected-types", subject=h.name(
        h.ava_raw(h.OU, h.tlv(h.SEQUENCE, h.tlv(h.INTEGER, b"\x05"))),
        h.ava(h.DESCRIPTION, h.BIT_STRING, b"\x04\xa0"), h.ava(h.CN, h.UTF8, "alice"))),
    "unsorted-and-duplicate-avas": lambda p: _leaf_with(p, "unsorted-and-duplicate-avas",
        subject=h.name(h.rdn(h.ava(h.CN, h.UTF8, "zzzzzzzzzz"), h.ava(h.UID, h.UTF8, "a")),
                       h.rdn(h.ava(h.CN, h.UTF8, "a"), h.ava(h.CN, h.UTF8, "a")))),
    "x500-unique-identifier": lambda p: _leaf_with(p, "x500-unique-identifier", subject=h.name(
        h.ava(h.X500_UNIQUE_IDENTIFIER, h.BIT_STRING, b"\x03\x0a\x1f"),
        h.ava(h.CN, h.UTF8, "alice"))),
    "unmodelled-sans": lambda p: _leaf_with(p, "unmodelled-sans", extra_extensions=[_san(
        h.general_name(3, h.tlv(h.SEQUENCE, b""), constructed=True),
        h.general_name(5, h.general_name(1, h.tlv(h.UTF8, b"party"), constructed=True),
                       constructed=True),
        h.general_name(7, bytes((10, 0, 0, 0, 255, 0, 0, 0))),
        h.general_name(7, bytes(32)), h.general_name(7, bytes(5)),
        h.general_name(7, bytes((192, 0, 2, 7))), h.general_name(2, b"svc.example"))]),
    "latin1-ia5-sans": lambda p: _leaf_with(p, "latin1-ia5-sans", extra_extensions=[_san(
        h.general_name(2, b"caf\xe9.example"), h.general_name(1, b"j\xf6rg@example.com"),
        h.general_name(6, b"https://x.example/\xe9"))]),
    "bad-and-duplicate-extensions": lambda p: _leaf_with(p, "bad-and-duplicate-extensions",
        extra_extensions=[h.extension("1.2.3.4.99", b"\xff\xff"),
                          h.extension("1.2.3.4.99", b"\x05\x00"),
                          h.extension("2.5.29.32", b"\x30\x05garbage"),
                          _san(h.general_name(2, b"svc.example"))]),
    "empty-rdn": lambda p: _leaf_with(p, "empty-rdn", subject=h.name(
        h.ava(h.O, h.UTF8, "Example"), h.rdn(), h.ava(h.CN, h.UTF8, "alice"))),
    "serial-zero": lambda p: _leaf_with(p, "serial-zero", serial=0),
    "serial-negative": lambda p: _leaf_with(p, "serial-negative", serial=-0x1234),
    "empty-cn-and-san": lambda p: _leaf_with(p, "empty-cn-and-san",
        subject=h.name(h.ava(h.CN, h.PRINTABLE, b"")),
        extra_extensions=[_san(h.general_name(2, b""))]),
    "trailing-space": lambda p: _leaf_with(p, "trailing-space",
        subject=h.name(h.ava(h.CN, h.UTF8, "x "))),
}

# What the upstream gets besides the DN headers, where the case is about it.
EXPECTED = {
    "printable-specials": {"X-Client-CN": ["*.corp.example"]},
    "t61-ia5-latin1": {"X-Client-CN": ["J%C3%B6rg"]},
    "unexpected-types": {"X-Client-CN": ["alice"]},
    "unsorted-and-duplicate-avas": {"X-Client-CN": ["zzzzzzzzzz,a,a"]},
    "unmodelled-sans": {"X-Client-SAN-DNS": ["svc.example"], "X-Client-SAN-IP": ["192.0.2.7"]},
    "latin1-ia5-sans": {"X-Client-SAN-DNS": ["caf%C3%A9.example"],
                        "X-Client-SAN-Email": ["j%C3%B6rg@example.com"],
                        "X-Client-SAN-URI": ["https://x.example/%C3%A9"]},
    "bad-and-duplicate-extensions": {"X-Client-SAN-DNS": ["svc.example"]},
    "empty-cn-and-san": {"X-Client-CN": [""], "X-Client-SAN-DNS": [""]},
    "trailing-space": {"X-Client-CN": ["x%20"]},
}


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway({"authorizer:team": {"type": "any"},
                          "headers": {"forward_certificate": "yes"}}, drop=("authorizer:team",))


def _openssl(der: bytes, workdir: Path, which: str) -> str:
    return h.openssl_print(der, workdir / "print.pem", which)


def _openssl_pem(der: bytes, workdir: Path) -> str:
    source = workdir / "in.pem"
    source.write_bytes(h.pem(der))
    return subprocess.run([h.OPENSSL, "x509", "-in", str(source)], capture_output=True,  # type: ignore[list-item]
                          text=True, check=True).stdout


@pytest.mark.parametrize("label", list(ACCEPTED))
def test_hostile_certificate_is_served_with_the_headers_nginx_forwards(
    gateway, pki, upstream, tmp_path, label
):
    client = ACCEPTED[label](pki)
    # OpenSSL verifies it (the rule: what OpenSSL verifies is served).
    verdict = h.openssl_verifies(client.leaf, client.chain, pki.ca, tmp_path)
    assert verdict.strip().endswith(": OK"), verdict
    path = f"/names/{label}"
    status, _, body = https_request(gateway.port, client_context(pki.ca, client.cert, client.key),
                                    path=path)
    assert status == 200, body
    seen = next(r for r in reversed(upstream.requests) if r.get("path") == path)

    subject = _openssl(client.leaf, tmp_path, "subject")
    issuer = _openssl(client.leaf, tmp_path, "issuer")
    serial = _openssl(client.leaf, tmp_path, "serial")

    def header(dn: str) -> list[str]:  # docs/headers.md: a trailing "\ " is written "\20"
        return [dn[:-2] + "\\20" if dn.endswith("\\ ") else dn] if dn else []

    assert headers_of(seen, "X-Client-Subject") == header(subject)
    assert headers_of(seen, "X-Client-Issuer") == header(issuer)
    assert headers_of(seen, "X-Client-Serial") == [serial]
    assert headers_of(seen, "X-Client-Verify") == ["SUCCESS"]
    assert headers_of(seen, "X-Client-Cert") == [
        urllib.parse.quote(_openssl_pem(client.leaf, tmp_path), safe="")]
    for name, values in EXPECTED.get(label, {}).items():
        assert headers_of(seen, name) == values, name
    log = gateway.log()
    assert "Traceback" not in log and "Unhandled Error" not in log


def test_the_issuer_header_shows_the_hostile_intermediate(gateway, pki, upstream):
    client = ACCEPTED["intermediate-printable-specials"](pki)
    https_request(gateway.port, client_context(pki.ca, client.cert, client.key), path="/issuer")
    seen = next(r for r in reversed(upstream.requests) if r.get("path") == "/issuer")
    assert headers_of(seen, "X-Client-Issuer") == ["CN=*_Issuing CA @1,O=Wells Fargo & Company"]


def _untrusted_hostile(pki) -> Client:
    base = make_leaf(pki.other_root, "alice")
    leaf = h.patch(base.certificate, pki.other_root.key,
                   subject=h.name(h.ava(h.CN, h.PRINTABLE, b"*.x&y")))
    return _client(pki, "untrusted-hostile-subject", leaf, base)


REFUSED = {
    # (A second SAN extension, or a SAN that is not GeneralNames, cannot even be presented: the
    # client's OpenSSL refuses to load such a certificate, "invalid certificate".)
    # Not verified by OpenSSL at all: its own reason, at its own depth.
    "untrusted-hostile-subject": (lambda p: _untrusted_hostile(p), None),
    # A C1 control byte (0x9B, CSI) in a T61String: in the intermediate's name, so the issuer.
    "control-in-intermediate": (lambda p: _via_hostile_intermediate(
        p, "control-in-intermediate", h.name(h.ava(h.CN, h.T61, b"Evil\x9b2J CA"))),
        "control character in certificate issuer"),
    # The gateway's own rule: control characters, here in a hostile PrintableString.
    "control-in-printable": (lambda p: _leaf_with(p, "control-in-printable", subject=h.name(
        h.ava(h.CN, h.PRINTABLE, b"alice\r\nX-Client-CN: admin"))),
        "control character in certificate subject"),
    "control-in-latin1-san": (lambda p: _leaf_with(p, "control-in-latin1-san", extra_extensions=[
        _san(h.general_name(2, b"a\x85.example"))]), "control character in certificate SAN DNS"),
}


@pytest.mark.parametrize("label", list(REFUSED))
def test_refused_certificate_ends_the_handshake_with_one_line_and_no_traceback(
    gateway, pki, upstream, label
):
    make, reason = REFUSED[label]
    client = make(pki)
    before = gateway.log().count("tls handshake failed")
    with pytest.raises(Refused):
        https_request(gateway.port, client_context(pki.ca, client.cert, client.key),
                      path=f"/refused/{label}")
    log = gateway.wait_log("tls handshake failed")

    def failures() -> list[str]:
        return [ln for ln in gateway.log().splitlines() if "tls handshake failed" in ln]

    from harness import wait_for
    wait_for(lambda: len(failures()) > before, "the handshake line")
    line = failures()[-1]
    if reason is not None:
        assert f"verify_error={reason} depth=0" in line, line
    else:
        assert "verify_error=unable to get local issuer certificate depth=0" in line, line
    log = gateway.log()
    assert "Traceback" not in log and "Unhandled Error" not in log
    assert "closing connection" not in log
    assert not [r for r in upstream.requests if r.get("path") == f"/refused/{label}"]


# -- OpenSSL refusals while building the context: one line, at start, check-config, reload ------


def _weak_server(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed RSA-512 server certificate: OpenSSL refuses it ("ee key too small")."""
    cert, key = tmp_path / "weak.crt", tmp_path / "weak.key"
    subprocess.run([h.OPENSSL, "req", "-x509", "-newkey", "rsa:512", "-nodes", "-subj",  # type: ignore[list-item]
                    "/CN=localhost", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True)
    return cert, key


def _small_curve_server(tmp_path: Path) -> tuple[Path, Path]:
    """A server key on secp112r1, a curve cryptography does not support."""
    cert, key = tmp_path / "curve.crt", tmp_path / "curve.key"
    subprocess.run([h.OPENSSL, "ecparam", "-name", "secp112r1", "-genkey", "-noout",  # type: ignore[list-item]
                    "-out", str(key)], capture_output=True, check=True)
    subprocess.run([h.OPENSSL, "req", "-x509", "-key", str(key), "-subj", "/CN=localhost",  # type: ignore[list-item]
                    "-days", "2", "-out", str(cert)], capture_output=True, check=True)
    return cert, key


@pytest.mark.parametrize(
    ("make", "key", "problem"),
    [
        pytest.param(_weak_server, "certificate", "OpenSSL refuses {cert}: ee key too small",
                     id="rsa-512"),
        pytest.param(_small_curve_server, "private_key",
                     "unsupported key in {key} (Curve 1.3.132.0.6 is not supported)",
                     id="unsupported-curve"),
    ],
)
def test_a_key_openssl_refuses_is_one_line_at_start_and_check_config(
    tmp_path, pki, upstream, make, key, problem
):
    cert_file, key_file = make(tmp_path)
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = "tcp:0:interface=127.0.0.1"
    sections["tls"].update({"certificate": str(cert_file), "private_key": str(key_file)})
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    line = refused_start(path)
    value = cert_file if key == "certificate" else key_file
    assert line == (f"mtlsgw: {path}: [tls] {key} = '{value}': "
                    + problem.format(cert=cert_file, key=key_file)), line


def test_a_key_openssl_refuses_on_reload_keeps_the_running_configuration(
    start_gateway, pki, tmp_path
):
    gateway = start_gateway()
    cert, key = _weak_server(tmp_path)
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace(str(pki.server.cert), str(cert))
                              .replace(str(pki.server.key), str(key)))
    gateway.process.send_signal(signal.SIGHUP)
    log = gateway.wait_log("reload refused, keeping the running configuration")
    line = next(ln for ln in log.splitlines() if "reload refused" in ln)
    assert f"[tls] certificate = '{cert}': OpenSSL refuses" in line and "key too small" in line
    assert "Traceback" not in log
    alice = pki.alice()
    assert https_request(gateway.port, client_context(pki.ca, alice.cert, alice.key))[0] == 200


def test_a_hostile_ca_in_client_ca_is_loaded_and_trusted(start_gateway, pki, upstream, tmp_path):
    # cryptography refuses a CA whose name has "&" in a PrintableString; OpenSSL trusts it.
    ca_name = h.name(h.ava(h.O, h.PRINTABLE, b"Smith & Jones"), h.ava(h.CN, h.PRINTABLE,
                                                                      b"*root*"))
    root = make_ca("placeholder root")
    root_der = h.patch(root.certificate, root.key, subject=ca_name, issuer=ca_name)
    bundle = tmp_path / "hostile-ca.pem"
    bundle.write_bytes(pki.root.cert_pem() + h.pem(root_der))
    base = make_leaf(root, "alice")
    client = _client(pki, "under-hostile-root", h.patch(base.certificate, root.key,
                                                        issuer=ca_name), base)
    gateway = start_gateway({"tls": {"client_ca": str(bundle)},
                             "authorizer:team": {"type": "any"}}, drop=("authorizer:team",))
    status, _, _ = https_request(gateway.port, client_context(pki.ca, client.cert, client.key),
                                 path="/hostile-root")
    assert status == 200
    seen = next(r for r in reversed(upstream.requests) if r.get("path") == "/hostile-root")
    assert headers_of(seen, "X-Client-Issuer") == ["CN=*root*,O=Smith & Jones"]


def test_a_crl_from_a_hostile_ca_is_loaded_and_checked(start_gateway, pki, upstream, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    ca_name = h.name(h.ava(h.O, h.PRINTABLE, b"R&D"), h.ava(h.CN, h.PRINTABLE, b"crl*ca"))
    root = make_ca("placeholder crl root")
    root_der = h.patch(root.certificate, root.key, subject=ca_name, issuer=ca_name)
    bundle = tmp_path / "crl-ca.pem"
    bundle.write_bytes(pki.root.cert_pem() + h.pem(root_der))
    good_base, revoked_base = make_leaf(root, "alice"), make_leaf(root, "mallory")
    good = _client(pki, "crl-good", h.patch(good_base.certificate, root.key, issuer=ca_name),
                   good_base)
    revoked = _client(pki, "crl-revoked", h.patch(revoked_base.certificate, root.key,
                                                  issuer=ca_name), revoked_base)
    now = datetime.datetime.now(datetime.UTC)
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(root.certificate.subject)
           .last_update(now - datetime.timedelta(hours=1))
           .next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked_base.certificate.serial_number)
                                    .revocation_date(now - datetime.timedelta(hours=1)).build())
           .sign(root.key, hashes.SHA256()))
    crl_file = tmp_path / "hostile.crl"
    crl_file.write_bytes(h.crl_pem(h.patch_crl(crl, root.key, issuer=ca_name)))
    with pytest.raises(ValueError):  # what made the gateway refuse such a CRL file
        x509.load_pem_x509_crl(crl_file.read_bytes())
    gateway = start_gateway({"tls": {"client_ca": str(bundle), "crl": str(crl_file)},
                             "authorizer:team": {"type": "any"}}, drop=("authorizer:team",))
    assert https_request(gateway.port, client_context(pki.ca, good.cert, good.key))[0] == 200
    with pytest.raises(Refused):
        https_request(gateway.port, client_context(pki.ca, revoked.cert, revoked.key))
    gateway.wait_log("verify_error=certificate revoked depth=0")
