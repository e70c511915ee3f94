"""``mtlsgw inspect``: its output (identity, verification, headers, every route's decision) and its
exit codes; the headers it prints are the bytes a real gateway sends its upstream."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from harness import DEADLINE, client_context, headers_of, https_request, render_ini
from test_e2e_remote_authz import AuthService

from gateway.inspect import Request, inspect
from gateway.pki import name


def _config(tmp_path: Path, pki, upstream, **extra: dict[str, str]) -> Path:  # type: ignore[no-untyped-def]
    sections = {
        "gateway": {"upstream": upstream.url, "listen": "tcp:0"},
        "tls": {"certificate": str(pki.server.cert), "private_key": str(pki.server.key),
                "client_ca": str(pki.ca)},
        "authorize": {"authorizers": "team"},
        "authorizer:team": {"type": "cn", "allow": "alice"},
        "authorizer:ops": {"type": "cn", "allow": "bob"},
        "route:admin": {"prefix": "/admin/", "upstream": upstream.url, "authorizers": "ops",
                        "header_prefix": "X-Admin-"},
    }
    for section, values in extra.items():
        sections.setdefault(section.replace("__", ":"), {}).update(values)
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "inspect", *map(str, args)],
                          capture_output=True, text=True, timeout=DEADLINE)


def _inspect(certificate: Path, config: Path | None, **request: str):  # type: ignore[no-untyped-def]
    out, err = io.StringIO(), io.StringIO()
    status = inspect(certificate, config, Request(**request), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_prints_identity_headers_and_each_routes_decision(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream)
    alice = pki.alice()
    status, out, err = _inspect(alice.cert, config, path="/app/x")
    assert status == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"certificate {alice.cert}"
    assert "  subject:      CN=alice,C=DE,O=Example\\, Inc." in lines
    assert "  common names: alice" in lines
    assert f"verification against client_ca {pki.ca}: OK" in lines
    assert "request GET /app/x Host: localhost (listener main)" in lines
    assert ("selected route default (*/ -> " + upstream.url +
            "): allow (reason cn-allowed, authorizer team)") in lines
    assert (f"route admin (*/admin/ -> {upstream.url}): deny (reason cn-not-allowed, "
            "authorizer ops)") in lines
    # Under each route the headers of its own formats and prefix.
    admin = lines.index(f"route admin (*/admin/ -> {upstream.url}): deny (reason "
                        "cn-not-allowed, authorizer ops)")
    default = [line for line in lines[:admin] if line.startswith("    ")]
    assert "    X-Client-CN: alice" in default
    assert "    X-Forwarded-Host: localhost" in default
    assert not any(line.startswith("    X-Admin-") for line in default)
    assert "    X-Admin-CN: alice" in lines[admin:]
    assert not any(line.startswith("    X-Client-") for line in lines[admin:])


def test_selected_route_decides_the_exit_status(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream)
    status, out, _ = _inspect(pki.alice().cert, config, path="/admin/users")
    assert status == 3
    assert ("selected route admin (*/admin/ -> " + upstream.url +
            "): deny (reason cn-not-allowed, authorizer ops)") in out
    assert "    X-Admin-CN: alice" in out  # that route's own header prefix
    assert _inspect(pki.bob().cert, config, path="/admin/users")[0] == 0


def test_printed_headers_are_what_the_upstream_receives(start_gateway, pki, upstream, tmp_path):
    san_leaf = pki.leaf("inspect-sans", name("svc", organization_name="Ex, \"Q\""), sans=[
        "dns:api.example", "uri:spiffe://example.org/ns/a/sa/b", "email:svc@example.com",
        "ip:10.0.0.1"])
    gateway = start_gateway({"authorizer:team": {"type": "any"},
                             "headers": {"forward_certificate": "yes"}},
                            drop=("authorizer:team",))
    upstream.clear()
    context = client_context(pki.ca, san_leaf.cert, san_leaf.key)
    assert https_request(gateway.port, context, path="/seen")[0] == 200
    seen = upstream.last()
    check = _run(san_leaf.cert, "--config", gateway.config, "--path", "/seen",
                 "--host", f"localhost:{gateway.port}")
    assert check.returncode == 0, check.stderr
    printed = [line[4:].split(": ", 1) for line in check.stdout.splitlines()
               if line.startswith("    ")]
    assert printed, check.stdout
    for header, value in printed:
        assert headers_of(seen, header) == [value], header
    # X-Request-Id is new for every request: not something inspect can print.
    gateway_owned = [k for k, _ in seen["headers"]
                     if k.lower().startswith("x-") and k != "X-Request-Id"]
    assert sorted(gateway_owned) == sorted(h for h, _ in printed)


def test_verification_failure_warns_with_openssls_reason(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream)
    for files, reason in [
        (pki.expired(), "certificate has expired (depth 0)"),
        (pki.untrusted(), "unable to get local issuer certificate (depth 0)"),
        (pki.server_eku_only(), "unsuitable certificate purpose (depth 0)"),
    ]:
        status, out, err = _inspect(files.cert, config)
        assert status == 3, (files, out)
        assert err == ("mtlsgw: warning: the certificate would fail verification against "
                       f"client_ca {pki.ca}: {reason}\n")
        assert f"FAILED: {reason}" in out


def test_chain_option_supplies_the_intermediates(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream, tls={"client_ca": str(pki.ca)})
    leaf = pki.via_intermediate(send_chain=False)
    status, _, err = _inspect(leaf.cert, config)
    assert status == 3
    assert "unable to get local issuer certificate" in err
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(pki.intermediate.cert_pem())
    out, err_io = io.StringIO(), io.StringIO()
    assert inspect(leaf.cert, config, Request(), bundle, out, err_io) == 0, err_io.getvalue()
    assert "verification against" in out.getvalue() and ": OK" in out.getvalue()
    # A certificate file holding the chain after the leaf: the same.
    assert _inspect(pki.via_intermediate(send_chain=True).cert, config)[0] == 0


def test_no_route_is_denied(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream, route__admin={"host": "admin.example"},
                     gateway={"upstream": ""})
    config.write_text(config.read_text().replace("upstream = \n", ""))
    status, out, _ = _inspect(pki.bob().cert, config, path="/admin/x")
    assert status == 3
    assert "no route: the gateway would answer 404 no-route" in out
    assert _inspect(pki.bob().cert, config, path="/admin/x", host="admin.example")[0] == 0


def test_without_config_prints_identity_and_default_headers(pki):
    check = _run(pki.alice().cert)
    assert check.returncode == 0, check.stderr
    assert "headers (nginx format, [headers] defaults):" in check.stdout
    assert "    X-Client-CN: alice" in check.stdout


@pytest.mark.parametrize("content", [None, "not a certificate\n",
                                     "-----BEGIN CERTIFICATE-----\n!!!\n"
                                     "-----END CERTIFICATE-----\n"])
def test_bad_certificate_file_exits_2(tmp_path, content):
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_text(content)
    check = _run(path)
    assert check.returncode == 2
    assert check.stderr.startswith(f"mtlsgw: {path}: ")
    assert check.stderr.count("\n") == 1


def test_bad_config_exits_1_as_check_config(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream, authorizer__team={"allow": ""})
    check = _run(pki.alice().cert, "--config", config)
    assert check.returncode == 1
    assert check.stderr == (f"mtlsgw: {config}: [authorizer:team] allow = '': required: give "
                            "at least one value\n")
    assert check.stdout == ""


def test_http_authorizer_is_asked_for_real(tmp_path, pki, upstream):
    service = AuthService()
    try:
        service.answer(lambda record: (200, [("X-Team", "payments")]))
        config = _config(tmp_path, pki, upstream, authorize={"authorizers": "remote"},
                         authorizer__remote={"type": "http", "url": service.url,
                                             "allowed_upstream_headers": "X-Team"})
        check = _run(pki.alice().cert, "--config", config, "--path", "/app",
                     "--method", "POST")
        assert check.returncode == 0, check.stderr
        assert "allow (reason remote-allowed, authorizer remote)" in check.stdout
        assert "    X-Team: payments" in check.stdout
        seen = dict((k.lower(), v) for k, v in service.requests[0]["headers"])
        assert (seen["x-forwarded-method"], seen["x-forwarded-uri"]) == ("POST", "/app")
        service.answer(lambda record: (403, [("X-Authz-Reason", "nope")]))
        check = _run(pki.alice().cert, "--config", config, "--path", "/app")
        assert check.returncode == 3
        assert "deny (reason nope, authorizer remote)" in check.stdout
    finally:
        service.close()


def test_path_is_normalised_as_the_request_path_does(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream)
    status, out, _ = _inspect(pki.bob().cert, config, path="/app/../%61dmin//users")
    assert status == 0
    assert "  normalised path: /admin/users" in out.splitlines()
    assert "selected route admin (*/admin/ -> " in out
    rejecting = _config(tmp_path, pki, upstream, gateway={"escaped_slashes": "reject"})
    status, out, _ = _inspect(pki.bob().cert, rejecting, path="/admin%2F../x")
    assert status == 3
    assert "  the gateway would answer 400 escaped-slash-in-path" in out.splitlines()


def test_every_configured_format_is_printed(tmp_path, pki, upstream):
    config = _config(tmp_path, pki, upstream,
                     headers={"formats": "nginx, xfcc, rfc9440, traefik"})
    status, out, _ = _inspect(pki.alice().cert, config, path="/app/x")
    assert status == 0
    for header in ("X-Client-CN", "X-Forwarded-Client-Cert", "Client-Cert",
                 "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info"):
        assert any(line.startswith(f"    {header}: ") for line in out.splitlines()), header


@pytest.mark.parametrize(("option", "value"), [
    ("path", "/\u20ac"), ("path", "/a\x1b[31mred"), ("host", "h\u20ac"), ("host", "a\x07b"),
    ("method", "G\u20acT"),
])
def test_odd_request_arguments_are_refused_as_the_gateway_would_and_printed_escaped(
        tmp_path, pki, upstream, option: str, value: str):
    config = _config(tmp_path, pki, upstream)
    status, out, err = _inspect(pki.alice().cert, config, **{option: value})
    assert status == 3, err
    (line,) = [x for x in out.splitlines() if x.startswith("request ")]
    assert all(0x20 <= ord(ch) <= 0x7E for ch in line), line
    assert "  the gateway would answer 400 " in out


def test_a_client_address_that_is_not_an_ip_address_is_a_usage_error(pki):
    result = _run(str(pki.alice().cert), "--client-address", "x\r\nInjected: 1")
    assert result.returncode == 2
    assert "--client-address" in result.stderr and "Traceback" not in result.stderr


def test_a_plain_listener_decides_without_the_certificate_as_the_gateway_does(tmp_path, pki,
                                                                              upstream):
    # A plain listener has no client certificate: its authorizers deny no-certificate there,
    # whatever certificate inspect was given.
    config = _config(tmp_path, pki, upstream,
                     listener__plain={"listen": "tcp:0:interface=127.0.0.1", "tls": "off"},
                     route__egress={"listener": "plain", "upstream": upstream.url,
                                    "authorizers": "team"})
    status, out, _ = _inspect(pki.alice().cert, config, listener="plain")
    assert status == 3
    assert ("selected route egress (*/ -> " + upstream.url +
            "): deny (reason no-certificate, authorizer team)") in out
    assert _inspect(pki.alice().cert, config)[0] == 0  # the TLS listener: alice is allowed


def test_issuer_sha256_sees_the_verified_issuer_without_a_chain(tmp_path, pki, upstream):
    # The gateway's issuer_sha256 is the leaf's parent in the verified chain: for a leaf the
    # root in client_ca issued, that root, with no intermediates sent.
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    root = hashlib.sha256(pki.root.certificate.public_bytes(Encoding.DER)).hexdigest()
    config = _config(tmp_path, pki, upstream,
                     authorizer__rooted={"type": "expr", "rule": f"issuer_sha256({root})"},
                     authorize={"authorizers": "rooted"})
    status, out, err = _inspect(pki.alice().cert, config)
    assert status == 0, out + err
    assert "allow (reason issuer-sha256-matched, authorizer rooted)" in out


def test_a_fifo_is_no_certificate_file_and_does_not_block(tmp_path: Path) -> None:
    import os

    from gateway.inspect import CertificateFileError, read_pem_certificates

    os.mkfifo(tmp_path / "leaf.pem")
    with pytest.raises(CertificateFileError, match="not a regular file"):
        read_pem_certificates(tmp_path / "leaf.pem")
