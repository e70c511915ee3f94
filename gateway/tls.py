"""The server side of TLS: the pyOpenSSL ``Context`` that verifies client certificates.

:func:`build_context` turns validated :class:`~gateway.config.TLSSettings` into a
``OpenSSL.SSL.Context``; :class:`ServerConnectionCreator` hands out connections from it to Twisted
(``IOpenSSLServerConnectionCreator``), so any server endpoint (``tcp:``, ``unix:``, ``systemd:``)
can be wrapped with TLS, and a reload swaps in a new context without touching live connections.

Verification is OpenSSL's (chain to the ``client_ca`` trust anchors, validity, depth, the
``sslclient`` purpose, i.e. RFC 5280 §4.2.1.12 EKU ``clientAuth`` and §4.2.1.3 key usage, CRLs when
configured). The verify callback only adds checks: it never turns a failure into a pass.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gateway.config import Location, TLSSettings
from gateway.identity import (
    ClientIdentity,
    UnsafeNameError,
    extended_key_usages,
    identity_from_der,
    read_certificate,
)

# Modern AEAD suites for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults).
_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
_SESSION_ID_CONTEXT = b"mtlsgw"
# Set on a connection whose leaf passed OpenSSL but failed one of the gateway's own checks.
_GATEWAY_REJECTED = -1


@attrs.define
class VerifyError:
    """The first verification failure of a handshake: chain depth (0 = leaf) and the reason."""

    depth: int
    code: int  # OpenSSL X509_V_ERR_* code, or -1 for the gateway's own checks
    reason: str  # X509_verify_cert_error_string, or the gateway's own text
    certificate: bytes | None = None  # DER of the certificate that failed, for the audit log


@attrs.define
class HandshakeState:
    """What the verify callback learned about one connection (see :func:`handshake_state`)."""

    first_error: VerifyError | None = None
    # The verified leaf's identity, read by the verify callback at depth 0.
    identity: ClientIdentity | None = None

    def record(self, depth: int, code: int, reason: str,
               certificate: crypto.X509 | None = None) -> None:
        """Keep the first failure only (and the DER of *certificate*, the one that failed):
        later ones are usually consequences of it."""
        if self.first_error is None:
            der = None
            if certificate is not None:
                with contextlib.suppress(Exception):  # never raise out of the callback
                    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
            self.first_error = VerifyError(depth, code, reason, der)


def verify_error_string(code: int) -> str:
    """OpenSSL's text for verification error *code* (``X509_verify_cert_error_string``)."""
    text: bytes = _ffi.string(_lib.X509_verify_cert_error_string(code))
    return text.decode("ascii", "replace")


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"

Certificate = x509.Certificate | crypto.X509


def load_certificates(location: Location, path: Path) -> list[Certificate]:
    """All PEM certificates in *path*, in file order.

    A certificate that ``cryptography``'s stricter parser refuses but OpenSSL reads (a CA whose
    name has ``*`` or ``&`` in a PrintableString, say) is kept as OpenSSL's (pyOpenSSL) object:
    OpenSSL verifies against it. Raises :class:`ConfigError` at *location* when the file holds none
    or one does not parse.
    """
    data = path.read_bytes()
    certificates: list[Certificate] = []
    for index, block in enumerate(data.split(_PEM_BEGIN)[1:], 1):
        pem = _PEM_BEGIN + block.split(_PEM_END, 1)[0] + _PEM_END + b"\n"
        try:
            certificates.append(x509.load_pem_x509_certificate(pem))
            continue
        except ValueError as exc:
            refused = exc
        try:
            certificates.append(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
        except (crypto.Error, ValueError):
            raise location.error(
                f"certificate {index} in {path} does not parse ({refused})") from None
    if not certificates:
        raise location.error(f"no PEM certificate in {path}")
    return certificates


def _openssl_reason(exc: BaseException) -> str:
    """The text of an OpenSSL error (its reason strings), or of any other exception."""
    if isinstance(exc, SSL.Error | crypto.Error) and exc.args and isinstance(exc.args[0], list):
        parts = [str(entry[-1]) for entry in exc.args[0] if entry and entry[-1]]
        if parts:
            return "; ".join(parts)
    return str(exc) or type(exc).__name__


_OPENSSL_ERRORS = (SSL.Error, crypto.Error, ValueError, TypeError)


class KeyFileError(ValueError):
    """A private key file that cannot be used; the message is one line."""


def load_unencrypted_key(path: Path) -> object:
    """The PEM private key in *path*, read without a passphrase (``cryptography``; before
    OpenSSL's own loader, which would ask for one on the terminal). Raises
    :class:`KeyFileError` when it is encrypted, unsupported or unreadable."""
    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise KeyFileError(f"{path} is encrypted; give an unencrypted PEM key") from None
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"unsupported key in {path} ({exc})") from None
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"no usable PEM private key in {path} ({exc})") from None


def _load_key(location: Location, path: Path) -> object:
    try:
        key = load_unencrypted_key(path)
    except KeyFileError as exc:
        raise location.error(str(exc)) from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise location.error(f"unsupported key type {type(key).__name__} in {path}")
    return key


_CRL_BEGIN = b"-----BEGIN X509 CRL-----"


def _load_crls(location: Location, path: Path) -> list[x509.CertificateRevocationList] | None:
    """The CRLs in *path*, or ``None`` when cryptography refuses one that OpenSSL must read
    itself (a CRL whose issuer name has ``&`` in a PrintableString, say): see :func:`_add_crls`.
    """
    data = path.read_bytes()
    blocks = [_CRL_BEGIN + block for block in data.split(_CRL_BEGIN)[1:]]
    if not blocks:
        raise location.error(f"no PEM CRL in {path}")
    try:
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as exc:
        if _PEM_BEGIN in data:  # OpenSSL would load (and trust) the certificates too
            raise location.error(f"bad PEM CRL in {path} ({exc})") from None
        return None


def _add_crls(store: crypto.X509Store, location: Location, path: Path) -> None:
    crls = _load_crls(location, path)
    try:
        if crls is None:
            # X509_load_cert_crl_file: OpenSSL's own parser, for a file holding only CRLs.
            store.load_locations(str(path))
        else:
            for crl in crls:
                store.add_crl(crl)
    except _OPENSSL_ERRORS as exc:
        raise location.error(f"OpenSSL refuses a CRL in {path}: {_openssl_reason(exc)}") from None


_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string


def verify_callback(
    connection: SSL.Connection, certificate: crypto.X509, code: int, depth: int, ok: int
) -> bool:
    """pyOpenSSL verify callback: OpenSSL's verdict *ok*, and the gateway's own leaf checks.

    Returns ``ok and <extra checks>``; records the first failure (depth and reason) in the
    connection's :class:`HandshakeState` for the audit log. Extra checks on the leaf (depth 0): the
    EKU allows ``clientAuth`` (RFC 5280 §4.2.1.12), no name carries a control character, and the
    identity (subject, issuer, SANs, serial) can be read; the identity read is kept in the state.
    Nothing raises out of it: an exception escaping a verify callback would abort the handshake
    with a traceback instead of a verification failure.
    """
    try:
        state = handshake_state(connection)
    except TypeError:
        return False  # not our connection: cannot record, fail closed
    if not ok:
        state.record(depth, code, verify_error_string(code), certificate)
        return False
    if depth != 0:
        return True
    try:
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
        problem = leaf_problem(der)
        if problem is None:
            state.identity = identity_from_der(der)
    except Exception as exc:  # any failure to read it is a verification failure
        problem = names_unreadable(exc)
    if problem is not None:
        state.record(depth, _GATEWAY_REJECTED, problem, certificate)
        return False
    return True


def names_unreadable(exc: BaseException) -> str:
    """The verify error for a leaf whose identity could not be read (one line)."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"certificate names could not be read: {detail}"


@functools.lru_cache(maxsize=4096)
def leaf_problem(der: bytes) -> str | None:
    """Why the gateway refuses the (OpenSSL-verified) leaf certificate *der*, or ``None``.

    Never raises: a certificate whose names cannot be read gets
    ``certificate names could not be read: ...``. Cached by the certificate's bytes: reconnecting
    clients present the same certificates.
    """
    try:
        raw = read_certificate(der)
    except Exception as exc:  # see names_unreadable
        return names_unreadable(exc)
    try:
        purposes = extended_key_usages(raw)
    except Exception as exc:  # a malformed EKU (OpenSSL refuses those first)
        return f"extended key usage could not be read: {' '.join(str(exc).split())}"
    # RFC 5280 §4.2.1.12: no EKU extension means any purpose
    if purposes is not None and _CLIENT_AUTH not in purposes:
        return "extended key usage does not allow clientAuth"
    try:
        identity_from_der(der)
    except UnsafeNameError as exc:
        return str(exc)
    except Exception as exc:  # see names_unreadable
        return names_unreadable(exc)
    return None


def build_context(
    settings: TLSSettings,
    callback: Callable[[SSL.Connection, crypto.X509, int, int, int], bool] = verify_callback,
) -> SSL.Context:
    """Build the server ``Context`` for *settings*.

    Raises :class:`ConfigError` naming ``[tls]`` and the key for: a certificate file without a
    certificate, a key that does not parse or does not match the certificate, a ``client_ca`` file
    without a certificate, a bad CRL file, and anything OpenSSL refuses while the context is built
    (``ee key too small``, ``ca md too weak``, an unsupported curve, ...): never a traceback.

    Choices (docs/configuration.md): TLS ``min_version`` and up, AEAD ciphers, no compression, no
    renegotiation, no session resumption (no tickets, no cache), so every connection runs full
    verification against the current trust anchors and CRLs; client CA names advertised in the
    CertificateRequest.
    """
    loc = settings.location
    chain = load_certificates(loc.at("certificate", str(settings.certificate)),
                              settings.certificate)
    key_loc = loc.at("private_key", str(settings.private_key))
    key = _load_key(key_loc, settings.private_key)
    anchors = load_certificates(loc.at("client_ca", str(settings.client_ca)), settings.client_ca)

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(_VERSIONS[settings.min_version])
    context.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    context.set_cipher_list(_TLS12_CIPHERS)
    # Free the 16 KiB read/write buffers of idle connections (as nginx does): most of the memory
    # of an idle keep-alive connection.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_session_id(_SESSION_ID_CONTEXT)

    # Every OpenSSL refusal below (a key too small for the security level, an unsupported curve,
    # a weak signature, a bad CA or CRL file) becomes the one-line error of its key.
    cert_loc = loc.at("certificate", str(settings.certificate))
    with _quiet():
        try:
            context.use_certificate(chain[0])
            for extra in chain[1:]:
                context.add_extra_chain_cert(extra)
        except _OPENSSL_ERRORS as exc:
            raise cert_loc.error(
                f"OpenSSL refuses {settings.certificate}: {_openssl_reason(exc)}") from None
    try:
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
    except _OPENSSL_ERRORS:
        # OpenSSL says "key values mismatch" or "no certificate assigned" (another key type).
        raise key_loc.error(
            f"private key does not match the certificate in {settings.certificate}") from None

    ca_loc = loc.at("client_ca", str(settings.client_ca))
    with _quiet():
        try:
            context.load_verify_locations(str(settings.client_ca))
            for anchor in anchors:
                context.add_client_ca(anchor)
        except _OPENSSL_ERRORS as exc:
            raise ca_loc.error(
                f"OpenSSL refuses {settings.client_ca}: {_openssl_reason(exc)}") from None
    store = context.get_cert_store()
    assert store is not None
    if settings.crl is not None:
        _add_crls(store, loc.at("crl", str(settings.crl)), settings.crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)

    mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
    if settings.client_auth == "require":
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    context.set_verify(mode, callback)
    # SSL_CTX_set_verify_depth, as nginx's ssl_verify_depth: at most this many intermediate CA
    # certificates between the leaf and the trust anchor.
    context.set_verify_depth(settings.verify_depth)
    ours = (b"h2", b"http/1.1") if settings.http2 else (b"http/1.1",)

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
        # Our preference first (RFC 7301 §3.2). No overlap: no ALPN answer, HTTP/1.1 assumed.
        chosen = next((p for p in ours if p in offered), None)
        return chosen if chosen is not None else SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

    context.set_alpn_select_callback(select)
    return context


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pyOpenSSL warns that its own X509 objects are deprecated; load_certificates hands it one
    # only for a certificate cryptography cannot read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnectionCreator:
    """Hands Twisted a new ``SSL.Connection`` per accepted socket, from the current context.

    Assign :attr:`context` to switch every *new* connection to new TLS settings (reload); live
    connections keep the context they started with.
    """

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802, N803
        """Twisted's ``IOpenSSLServerConnectionCreator`` method."""
        return _Connection(self.context, None)


class _Connection(SSL.Connection):
    # Twisted keeps its own object in the connection's app data, so the state lives here.
    mtlsgw_handshake: HandshakeState

    def __init__(self, context: SSL.Context, sock: None) -> None:
        super().__init__(context, sock)
        self.mtlsgw_handshake = HandshakeState()


def handshake_state(connection: SSL.Connection) -> HandshakeState:
    """The :class:`HandshakeState` of a connection made by :class:`ServerConnectionCreator`.

    Raises ``TypeError`` for a connection made elsewhere.
    """
    if not isinstance(connection, _Connection):
        raise TypeError(f"{connection!r} was not made by ServerConnectionCreator")
    return connection.mtlsgw_handshake
