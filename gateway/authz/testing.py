"""Helpers for unit-testing an authorizer plugin without a gateway, a socket or a reactor run.

Example (pytest)::

    from gateway.authz.testing import identity_from_pem, request_info, decide

    def test_team_lead_allowed():
        identity = identity_from_pem(open("tests/alice.pem", "rb").read())
        assert decide(MyAuthorizer(), identity, request_info(path="/admin")).allowed
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from gateway.authz.interfaces import ClientIdentity, Decision, IAuthorizer, RequestInfo


def identity_from_pem(data: bytes) -> ClientIdentity:
    """The :class:`ClientIdentity` of the first PEM certificate in *data* (bytes).

    Raises ``ValueError`` if *data* holds no PEM certificate, and
    :class:`~gateway.identity.UnsafeNameError` if a name carries a control character.
    """
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = data.find(begin)
    stop = data.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate in the data")
    try:
        der = base64.b64decode(b"".join(data[start + len(begin):stop].split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad PEM certificate: {exc}") from None
    # Read as the gateway reads it: leniently, from the DER (cryptography refuses some names).
    return ClientIdentity.from_der(der)


def identity_from_file(path: str | Path) -> ClientIdentity:
    """:func:`identity_from_pem` of the file at *path*."""
    return identity_from_pem(Path(path).read_bytes())


def request_info(
    method: str = "GET",
    path: str = "/",
    host: str | None = "localhost",
    server_name: str | None = "localhost",
    client_address: str = "127.0.0.1",
) -> RequestInfo:
    """A :class:`RequestInfo` with test defaults; override what your authorizer looks at."""
    return RequestInfo(method, path, host, server_name, client_address)


def decide(
    authorizer: IAuthorizer, identity: ClientIdentity | None, request: RequestInfo
) -> Decision:
    """Call ``authorizer.authorize`` and return its :class:`Decision` synchronously.

    Works for authorizers that return a Decision or an already-fired Deferred. Raises
    ``RuntimeError`` if the Deferred has not fired (test those with ``pytest-twisted`` or
    ``twisted.trial`` instead), and re-raises the authorizer's own exception.
    """
    results: list[Decision | Failure] = []
    d: Deferred[Decision] = maybeDeferred(authorizer.authorize, identity, request)
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("the authorizer's Deferred has not fired")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, Decision)
    return result
