"""``mtlsgw inspect CERT.pem``: what the gateway would do with a client certificate.

Prints the :class:`~gateway.identity.ClientIdentity` read from the certificate, whether it would
pass verification against the configured ``client_ca`` (OpenSSL's verdict and reason, with
``--chain``, or the file's further certificates, as the intermediates the client sends), and for
every route of the listener its decision (the authorizer and reason that decided) and the headers
the gateway would add to the upstream request there (computed by the function the request path
calls, so they are exactly the bytes an upstream gets). The route selected for ``--host`` and
``--path`` decides the exit status. Authorizers run for real: an ``http`` authorizer asks its
service (the reactor runs for that call).

Exit status: 0 allowed, 3 denied (also: no route, a request the gateway would refuse, or a
certificate that would fail verification), 2 unreadable certificate file, 1 bad configuration.
"""

from __future__ import annotations

import base64
import binascii
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
from OpenSSL import crypto
from OpenSSL._util import lib as _lib

from gateway.authz.allowlist import spki_sha256
from gateway.authz.interfaces import Decision, RequestInfo
from gateway.authz.policy import Policy
from gateway.authz.remote_http import with_decision_headers
from gateway.config import ConfigError, HeaderSettings, RouteSettings
from gateway.headers import upstream_request_headers
from gateway.identity import ClientIdentity
from gateway.pathnorm import normalize_target
from gateway.routes import RouteTable
from gateway.target import check_request, host_name
from gateway.tls import leaf_problem, verify_error_string

ALLOWED, CONFIG_ERROR, BAD_CERTIFICATE, DENIED = 0, 1, 2, 3
_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
_CHAIN_TOO_LONG = 22  # X509_V_ERR_CERT_CHAIN_TOO_LONG


class CertificateFileError(ValueError):
    """A certificate file that cannot be read, with a one-line reason."""


def read_pem_certificates(path: Path) -> list[bytes]:
    """The DER of every PEM certificate in *path*, in order; raises
    :class:`CertificateFileError` when there is none or one is not base64."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise CertificateFileError(f"{path}: not a regular file")  # a FIFO would block
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateFileError(f"{path}: cannot read: {exc.strerror}") from None
    found = []
    for block in data.split(_BEGIN)[1:]:
        if _END not in block:
            raise CertificateFileError(f"{path}: a PEM certificate without its END line")
        try:
            found.append(base64.b64decode(b"".join(block.split(_END, 1)[0].split()),
                                          validate=True))
        except binascii.Error as exc:
            raise CertificateFileError(f"{path}: bad PEM certificate ({exc})") from None
    if not found:
        raise CertificateFileError(f"{path}: no PEM certificate")
    return found


def _x509(der: bytes) -> crypto.X509:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return crypto.load_certificate(crypto.FILETYPE_ASN1, der)


def verified_issuer(store: crypto.X509Store, leaf: bytes, chain: Sequence[bytes]
                    ) -> bytes | None:
    """DER of *leaf*'s parent in the chain OpenSSL verifies against *store* (the leaf itself
    when self-issued), as the gateway reads it after the handshake; ``None`` when it does not
    verify."""
    try:
        verified = crypto.X509StoreContext(
            store, _x509(leaf), [_x509(c) for c in chain]).get_verified_chain()
    except (crypto.X509StoreContextError, crypto.Error):
        return None
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, verified[min(1, len(verified) - 1)])


def verification_problem(store: crypto.X509Store, leaf: bytes, chain: Sequence[bytes],
                         depth: int) -> str | None:
    """Why OpenSSL would refuse *leaf* (DER) with intermediates *chain* against *store* (the
    server context's: ``client_ca`` and CRLs), as the handshake checks it (``sslclient``
    purpose, ``verify_depth``, the gateway's own leaf checks), or ``None``. One line with the
    failing depth: ``certificate has expired (depth 0)``."""
    _lib.X509_STORE_set_purpose(store._store, _lib.X509_PURPOSE_SSL_CLIENT)
    try:
        context = crypto.X509StoreContext(store, _x509(leaf), [_x509(c) for c in chain])
        verified = context.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code, failed_depth = (exc.errors[0], exc.errors[1]) if len(exc.errors) >= 2 else (0, 0)
        reason = verify_error_string(code) if code else str(exc)
        return f"{reason} (depth {failed_depth})"
    except crypto.Error as exc:
        return f"OpenSSL cannot read the certificate: {exc}"
    if len(verified) - 2 > depth:  # SSL_CTX_set_verify_depth counts the intermediates
        return f"{verify_error_string(_CHAIN_TOO_LONG)} (verify_depth = {depth})"
    problem = leaf_problem(leaf)
    return f"{problem} (depth 0)" if problem else None


@attrs.frozen
class Request:
    """The request to picture: ``--method``, ``--path``, ``--host``, ``--client-address``,
    ``--listener``."""

    method: str = "GET"
    path: str = "/"
    host: str | None = "localhost"
    client_address: str = "127.0.0.1"
    listener: str = "main"


def _print_identity(out: TextIO, path: Path, identity: ClientIdentity) -> None:
    rows = [
        ("subject", identity.subject or "-"),
        ("issuer", identity.issuer or "-"),
        ("common names", ", ".join(identity.common_names) or "-"),
        ("SAN DNS", ", ".join(identity.dns_names) or "-"),
        ("SAN URI", ", ".join(identity.uris) or "-"),
        ("SAN email", ", ".join(identity.emails) or "-"),
        ("SAN IP", ", ".join(identity.ip_addresses) or "-"),
        ("serial", identity.serial),
        ("SHA-256", identity.fingerprint_sha256),
        ("SPKI SHA-256", spki_sha256(identity.pem)),
        ("not before", identity.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("not after", identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")),
    ]
    print(f"certificate {path}", file=out)
    for label, value in rows:
        print(f"  {label + ':':<14}{_printable(value)}", file=out)


def _printable(text: str) -> str:
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E else f"\\x{ord(ch):02x}" for ch in text)


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _print_headers(out: TextIO, headers: Sequence[tuple[bytes, bytes]]) -> None:
    for name, value in headers:
        print(f"    {name.decode('latin-1')}: {value.decode('latin-1')}", file=out)


def _decision_text(decision: Decision) -> str:
    verdict = "allow" if decision.allowed else "deny"
    return f"{verdict} (reason {decision.reason}, authorizer {decision.authorizer or '-'})"


def _decide(pairs: Sequence[tuple[Policy, RequestInfo]],
            identity: ClientIdentity | None) -> list[Decision]:
    """Every policy's decision; runs the reactor while one is asked over the network."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred, DeferredList

    reactor: Any = global_reactor
    results: list[Decision | Deferred[Decision]] = []
    for policy, info in pairs:
        results.append(attrs.evolve(policy, clock=reactor).decide_now(identity, info))
    pending = [r for r in results if isinstance(r, Deferred) and not r.called]
    if pending:
        DeferredList(pending).addBoth(lambda _: reactor.stop())
        reactor.run(installSignalHandlers=False)
    decisions = []
    for result in results:
        if isinstance(result, Deferred):
            found: list[object] = []
            result.addBoth(found.append)
            first = found[0] if found else None
            result = first if isinstance(first, Decision) else Decision.deny("authorizer-error")
        decisions.append(result)
    return decisions


def inspect(certificate: Path, config_path: Path | None, request: Request,
            chain: Path | None = None, out: TextIO = sys.stdout,
            err: TextIO = sys.stderr) -> int:
    """Run ``mtlsgw inspect`` (see the module docstring); returns the exit status."""
    try:
        blocks = read_pem_certificates(certificate)
        chain_blocks = read_pem_certificates(chain) if chain is not None else []
        identity = ClientIdentity.from_der(blocks[0])
    except CertificateFileError as exc:
        print(f"mtlsgw: {exc}", file=err)
        return BAD_CERTIFICATE
    except ValueError as exc:  # unreadable names, control characters
        print(f"mtlsgw: {certificate}: {' '.join(str(exc).split())}", file=err)
        return BAD_CERTIFICATE
    if config_path is None:
        _print_identity(out, certificate, identity)
        print("headers (nginx format, [headers] defaults):", file=out)
        settings = HeaderSettings(prefix="X-Client-", forward_certificate=False)
        _print_headers(out, upstream_request_headers([], identity, settings,
                                                     request.client_address, None))
        return ALLOWED
    from gateway.service import close_authorizers, validate

    try:
        checked = validate(config_path)
    except ConfigError as exc:
        print(f"mtlsgw: {exc}", file=err)
        return CONFIG_ERROR
    _print_identity(out, certificate, identity)
    try:
        return _inspect_request(checked, identity, blocks[0], chain_blocks or blocks[1:],
                                request, out, err)
    finally:
        close_authorizers(checked.authorizers)


def _inspect_request(checked: Any, identity: ClientIdentity, leaf: bytes,
                     chain: list[bytes], request: Request, out: TextIO, err: TextIO) -> int:
    settings = checked.settings
    status = ALLOWED
    # The issuing CA for issuer_sha256 matchers: as the gateway takes it, the leaf's parent in
    # the verified chain (the root in client_ca too); unverified, the first intermediate sent.
    issuer = (verified_issuer(checked.context.get_cert_store(), leaf, chain)
              if checked.context is not None else None)
    if issuer is not None or chain:
        identity = identity.with_issuer(issuer if issuer is not None else chain[0])
    if checked.context is not None and settings.tls is not None:
        problem = verification_problem(checked.context.get_cert_store(), leaf, chain,
                                       settings.tls.verify_depth)
        where = f"against client_ca {settings.tls.client_ca}"
        if problem is None:
            print(f"verification {where}: OK", file=out)
        else:
            print(f"mtlsgw: warning: the certificate would fail verification {where}: "
                  f"{problem}", file=err)
            print(f"verification {where}: FAILED: {problem}", file=out)
            status = DENIED
    listener = next((x for x in settings.listeners if x.name == request.listener), None)
    if listener is None:
        print(f"mtlsgw: no listener {request.listener!r} (known: "
              f"{', '.join(x.name for x in settings.listeners)})", file=err)
        return CONFIG_ERROR
    # As a client would send them: UTF-8 bytes, which the request checks refuse when they are
    # not printable ASCII; shown escaped (\xNN), never raw control characters.
    host = _wire(request.host) if request.host is not None else None
    target = _wire(request.path)
    print(f"request {_printable(request.method)} {_printable(request.path)} Host: "
          f"{_printable(request.host or '-')} (listener {listener.name})", file=out)
    problem_answer = check_request(target, b"HTTP/1.1", [host] if host is not None else [],
                                   None, _wire(request.method))
    if problem_answer is not None:
        print(f"  the gateway would answer {problem_answer[0]} {problem_answer[1]}", file=out)
        return DENIED
    routes: list[RouteSettings] = [r for r in settings.routes if r.listener == listener.name]
    normal = normalize_target(target, listener.escaped_slashes)  # as the request path does
    if normal is None:
        print("  the gateway would answer 400 escaped-slash-in-path", file=out)
        return DENIED
    path = normal.decode("latin-1").split("?", 1)[0]
    if normal != target:
        print(f"  normalised path: {path}", file=out)
    selected = RouteTable(routes).match(host_name(host) if host else None, path)
    info = RequestInfo(request.method, path, request.host, None, request.client_address,
                       headers=[(b"Host", host)] if host is not None else [])
    # A plain listener has no client certificate: its authorizers decide without one.
    decisions = _decide([(checked.policies[r.name], info) for r in routes],
                        identity if listener.tls else None)
    for route, decision in zip(routes, decisions, strict=True):
        mark = "selected " if route is selected else ""
        print(f"{mark}route {route.name} ({route.host or '*'}{route.prefix} -> "
              f"{route.upstream.url}): {_decision_text(decision)}", file=out)
        headers = upstream_request_headers(
            [(b"Host", host)] if host is not None else [],
            identity if listener.tls else None, route.headers, request.client_address,
            host, tls=listener.tls, intermediates=tuple(chain))
        if decision.upstream_headers or decision.upstream_replaced:
            headers = with_decision_headers(headers, decision.upstream_headers, route.headers,
                                            decision.upstream_replaced)
        print("  headers the gateway adds upstream (the client's own kept, its identity "
              "headers removed):", file=out)
        _print_headers(out, [h for h in headers if h[0].lower() != b"host"])
        if route is selected and not decision.allowed:
            status = DENIED
    if selected is None:
        print("no route: the gateway would answer 404 no-route", file=out)
        return DENIED
    return status
