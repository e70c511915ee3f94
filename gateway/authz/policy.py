"""Combining authorizers: ``policy = any`` (one allow suffices) or ``all`` (all must allow)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.authz.interfaces import ClientIdentity, Decision, RequestInfo
from gateway.authz.registry import NamedAuthorizer

log = Logger()
_REASON = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@attrs.frozen
class Policy:
    """The configured authorizers and how their decisions combine.

    ``mode`` is ``any``, ``all`` or ``open``. Authorizers are asked in configuration order and
    the walk stops as soon as the outcome is known. Fails closed: an authorizer that raises,
    fails its Deferred or returns something other than a :class:`Decision` counts as a denial
    with reason ``authorizer-error`` (the error is logged, not sent to the client), and so does
    one that has not decided within ``timeout`` seconds. A reason that is not a reason id
    (lowercase letters, digits, ``.``, ``_``, ``-``; at most 64) is replaced by
    ``invalid-reason-id``.
    """

    mode: str
    authorizers: Sequence[NamedAuthorizer]
    timeout: float = 0.0  # seconds an authorizer may take; 0 = no limit (needs a clock)
    clock: Any = None  # an IReactorTime, for the timeout

    def decide(self, identity: ClientIdentity | None, request: RequestInfo) -> Deferred[Decision]:
        """Return a Deferred firing with the combined :class:`Decision` (never failing).

        Mode ``open`` (routes on a plain loopback listener without authorizers) allows all.
        """
        if self.mode == "open":
            return succeed(Decision.allow("open-route"))
        return self._ask(0, identity, request, None)

    def decide_now(
        self, identity: ClientIdentity | None, request: RequestInfo
    ) -> Decision | Deferred[Decision]:
        """Like :meth:`decide`, without a Deferred while every authorizer asked answers with a
        :class:`Decision` directly (the common case, and the cheap one): returns the combined
        :class:`Decision`, or a Deferred (never failing) from the first authorizer that returned
        one on."""
        if self.mode == "open":
            return Decision.allow("open-route")
        last: Decision | None = None
        for index, named in enumerate(self.authorizers):
            try:
                result = named.authorizer.authorize(identity, request)
            except Exception:
                decision = _failed(named.name, Failure())
            else:
                if isinstance(result, Deferred):
                    return self._ask(index, identity, request, last, result)
                decision = _checked(named.name, result)
            if self.mode == "any" and decision.allowed:
                return decision
            if self.mode == "all" and not decision.allowed:
                return decision
            last = (last or decision) if self.mode == "any" else decision
        return last or Decision.deny("no-authorizer")

    def _ask(
        self, index: int, identity: ClientIdentity | None, request: RequestInfo,
        last: Decision | None, started: Deferred[Any] | None = None,
    ) -> Deferred[Decision]:
        if index == len(self.authorizers):
            return succeed(last or Decision.deny("no-authorizer"))
        named = self.authorizers[index]
        d: Deferred[Decision] = started if started is not None else maybeDeferred(
            named.authorizer.authorize, identity, request)
        if self.timeout and self.clock is not None and not d.called:
            d.addTimeout(self.timeout, self.clock)  # a slow authorizer fails closed
        d.addCallbacks(lambda r: _checked(named.name, r), lambda f: _failed(named.name, f))

        def next_step(decision: Decision) -> Deferred[Decision] | Decision:
            if self.mode == "any" and decision.allowed:
                return decision
            if self.mode == "all" and not decision.allowed:
                return decision
            if self.mode == "any":
                # Report the first denial when nothing allows: it is the most specific reason.
                return self._ask(index + 1, identity, request, last or decision)
            return self._ask(index + 1, identity, request, decision)

        return d.addCallback(next_step)


def _checked(name: str, result: object) -> Decision:
    if not isinstance(result, Decision):
        log.error("authorizer {name} returned {result!r}, not a Decision", name=name,
                  result=result)
        return Decision(False, "authorizer-error", name)
    if not _REASON.fullmatch(result.reason):
        # Reason ids go into the 403 body and the access line: keep them plain tokens.
        log.error("authorizer {name} gave reason {reason!r}, not a reason id", name=name,
                  reason=result.reason)
        return Decision(result.allowed, "invalid-reason-id", name)
    try:
        return _named(name, result)
    except TypeError:  # an unhashable Decision subclass from a plugin
        return attrs.evolve(result, authorizer=name)


@functools.lru_cache(maxsize=1024)
def _named(name: str, result: Decision) -> Decision:
    # Cached: authorizers give the same few decisions over and over (Decision is frozen).
    return attrs.evolve(result, authorizer=name)


def _failed(name: str, failure: Failure) -> Decision:
    log.failure("authorizer {name} failed; denying", failure, name=name)
    return Decision(False, "authorizer-error", name)
