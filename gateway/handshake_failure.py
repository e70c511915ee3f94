"""Why a TLS handshake failed, as one class of a closed set: the ``reason`` label of
``mtlsgw_handshake_failures_total`` (docs/operations.md). Pure: no reactor, no OpenSSL calls.

:func:`failure_reason` maps the first verification error the verify callback recorded (an
OpenSSL ``X509_V_ERR_*`` code, numbered as in OpenSSL 3's ``x509_vfy.h``, or the gateway's own leaf
checks, code ``-1``) and, when verification never failed, OpenSSL's handshake error text, onto
:data:`REASONS`. A label value is never taken from the client: the set stays bounded.
"""

from __future__ import annotations

REASONS = (
    "expired",  # a certificate of the chain is past its notAfter
    "not-yet-valid",  # ... before its notBefore
    "unknown-ca",  # no chain to a configured client CA
    "revoked",  # listed in a CRL
    "crl-problem",  # a CRL is missing, expired, not yet valid or unverifiable (crl configured)
    "no-certificate",  # client_auth = require and the client sent none
    "eku",  # the leaf's extended key usage does not allow clientAuth (RFC 5280 §4.2.1.12)
    "depth",  # more intermediate CAs than verify_depth allows
    "bad-names",  # the leaf's names cannot be read or carry control characters
    "handshake-timeout",  # not done within handshake_timeout
    "protocol",  # a TLS protocol failure: no shared version or cipher, not TLS at all, ...
    "other",  # anything else: the client closed the connection mid-handshake, a bad signature
)

# OpenSSL's X509_V_ERR_* codes (include/openssl/x509_vfy.h.in), by class.
_BY_CODE = {
    9: "not-yet-valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    2: "unknown-ca",  # UNABLE_TO_GET_ISSUER_CERT
    18: "unknown-ca",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown-ca",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown-ca",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown-ca",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    79: "unknown-ca",  # INVALID_CA (24 before OpenSSL 3.0)
    27: "unknown-ca",  # CERT_UNTRUSTED
    28: "unknown-ca",  # CERT_REJECTED
    23: "revoked",  # CERT_REVOKED
    3: "crl-problem",  # UNABLE_TO_GET_CRL
    5: "crl-problem",  # UNABLE_TO_DECRYPT_CRL_SIGNATURE
    8: "crl-problem",  # CRL_SIGNATURE_FAILURE
    11: "crl-problem",  # CRL_NOT_YET_VALID
    12: "crl-problem",  # CRL_HAS_EXPIRED
    15: "crl-problem",  # ERROR_IN_CRL_LAST_UPDATE_FIELD
    16: "crl-problem",  # ERROR_IN_CRL_NEXT_UPDATE_FIELD
    33: "crl-problem",  # UNABLE_TO_GET_CRL_ISSUER
    35: "crl-problem",  # KEYUSAGE_NO_CRL_SIGN
    36: "crl-problem",  # UNHANDLED_CRITICAL_CRL_EXTENSION
    44: "crl-problem",  # DIFFERENT_CRL_SCOPE
    54: "crl-problem",  # CRL_PATH_VALIDATION_ERROR
    26: "eku",  # INVALID_PURPOSE
    22: "depth",  # CERT_CHAIN_TOO_LONG (verify_depth)
    25: "depth",  # PATH_LENGTH_EXCEEDED (a CA's pathLenConstraint)
    47: "bad-names",  # PERMITTED_VIOLATION (name constraints)
    48: "bad-names",  # EXCLUDED_VIOLATION
    49: "bad-names",  # SUBTREE_MINMAX
    51: "bad-names",  # UNSUPPORTED_CONSTRAINT_TYPE
    52: "bad-names",  # UNSUPPORTED_CONSTRAINT_SYNTAX
    53: "bad-names",  # UNSUPPORTED_NAME_SYNTAX
}
GATEWAY_CHECK = -1  # the code gateway.tls records for its own leaf checks

# OpenSSL's handshake error texts (SSL_R_*) when the client sent no certificate.
_NO_CERTIFICATE = ("peer did not return a certificate", "certificate required")


def failure_reason(code: int | None, verify_text: str | None, ssl_text: str | None,
                   ssl_error: bool) -> str:
    """The class in :data:`REASONS` of one failed handshake.

    *code* and *verify_text* are the first verification error (``None`` when verification never
    failed); *ssl_text* OpenSSL's error text for the handshake (``SSL_R_*`` reason strings) or
    the text of the connection's end; *ssl_error* whether the handshake ended with an OpenSSL
    error (false: the connection was closed or reset without one).
    """
    if code is not None:
        if code == GATEWAY_CHECK:
            text = verify_text or ""
            return "eku" if text.startswith("extended key usage") else "bad-names"
        return _BY_CODE.get(code, "other")
    text = (ssl_text or "").lower()
    if any(marker in text for marker in _NO_CERTIFICATE):
        return "no-certificate"
    return "protocol" if ssl_error else "other"
