"""Turning what an authorizer returned (or raised) into a checked, named Decision: fail closed."""

from __future__ import annotations

import functools
import re

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.authz.interfaces import Decision

log = Logger(namespace="gateway.authz.policy")
_REASON = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def checked(name: str, result: object) -> Decision:
    """*result* as the :class:`Decision` of authorizer *name*: something that is not a Decision
    is a denial ``authorizer-error``; a decision whose reason is not a reason id (lowercase
    letters, digits, ``.``, ``_``, ``-``; at most 64), an allow too, is a denial
    ``invalid-reason-id``: a malformed answer fails closed, and ``not`` does not invert it."""
    if not isinstance(result, Decision):
        log.error("authorizer {name} returned {result!r}, not a Decision", name=name,
                  result=result)
        return Decision(False, "authorizer-error", name)
    if not _REASON.fullmatch(result.reason):
        # Reason ids go into the 403 body and the access line: keep them plain tokens.
        log.error("authorizer {name} gave reason {reason!r}, not a reason id", name=name,
                  reason=result.reason)
        return Decision(False, "invalid-reason-id", name)
    try:
        return _named(name, result)
    except TypeError:  # an unhashable Decision subclass from a plugin
        return attrs.evolve(result, authorizer=name)


@functools.lru_cache(maxsize=1024)
def _named(name: str, result: Decision) -> Decision:
    # Cached: authorizers give the same few decisions over and over (Decision is frozen).
    return attrs.evolve(result, authorizer=name)


def failed(name: str, failure: Failure) -> Decision:
    """The denial ``authorizer-error`` of authorizer *name*, which raised or failed (logged)."""
    log.failure("authorizer {name} failed; denying", failure, name=name)
    return Decision(False, "authorizer-error", name)


def joined(earlier: Decision | None, later: Decision) -> Decision:
    """*later*, an allow that ``all`` combines after the allows up to *earlier*, carrying their
    ``upstream_headers`` and ``upstream_replaced`` as well as its own: each of them was needed,
    so the headers an ``http`` service adds (and the client copies it removes) apply whatever
    its place in the list. For a name that both set, *later*'s value is sent."""
    if earlier is None or not (earlier.upstream_headers or earlier.upstream_replaced):
        return later
    names = {name.lower() for name, _ in later.upstream_headers}
    return attrs.evolve(
        later,
        upstream_headers=tuple(h for h in earlier.upstream_headers if h[0].lower() not in names)
        + later.upstream_headers,
        upstream_replaced=earlier.upstream_replaced | later.upstream_replaced)
