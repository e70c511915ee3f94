"""The TLS policy for ``https://`` upstreams: trust anchors, the checked name, SNI, and the
gateway's own client certificate.

An ``https://`` upstream's certificate is verified against ``upstream_ca`` (or the system trust
store), its name checked with ``service_identity`` (RFC 6125; ``upstream_server_name`` or the
URL's host) and the same name sent as SNI. With ``upstream_certificate``/``upstream_private_key``
the gateway presents its own client certificate (mTLS upstream, like nginx's
``proxy_ssl_certificate``). A TLS failure is a failed request (502), never a downgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import ssl

from gateway.config import ConfigError, UpstreamSettings
from gateway.tls import KeyFileError, load_unencrypted_key


class UpstreamTLS:
    """Trust anchors, checked name and client certificate of one upstream.

    Raises :class:`ConfigError` at construction when the CA or client certificate files do not
    parse or the key does not match.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        self._server_name = settings.server_name or settings.host
        self._trust: Any = None  # None: the platform's trust store
        if settings.ca is not None:
            certificates = _certificates(settings.ca, "upstream_ca", settings)
            self._trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates])
        self._client: Any = None
        self._chain: list[Any] = []
        if settings.certificate is not None and settings.private_key is not None:
            certificates = _certificates(settings.certificate, "upstream_certificate", settings)
            try:  # before OpenSSL's loader, which would prompt for a passphrase
                load_unencrypted_key(settings.private_key)
            except KeyFileError as exc:
                raise ConfigError(
                    f"upstream {settings.url}: upstream_private_key: {exc}") from None
            try:
                self._client = ssl.PrivateCertificate.loadPEM(
                    certificates[0].public_bytes(Encoding.PEM) + settings.private_key.read_bytes())
                self._client.options()  # checks that the key matches
            except Exception as exc:
                raise ConfigError(
                    f"upstream {settings.url}: upstream_private_key {settings.private_key} "
                    f"does not match upstream_certificate ({exc})") from None
            self._chain = [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)).original
                           for c in certificates[1:]]

    def creator(self) -> Any:
        """The ``IOpenSSLClientConnectionCreator`` for connections to this upstream."""
        extra = {"extraCertChain": self._chain} if self._chain else None
        return ssl.optionsForClientTLS(
            self._server_name, trustRoot=self._trust, clientCertificate=self._client,
            extraCertificateOptions=extra)


def _certificates(path: Path, key: str, settings: UpstreamSettings) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"upstream {settings.url}: {key} {path}: no PEM certificate ({exc})"
                          ) from None
