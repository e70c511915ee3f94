"""Combining authorizers: ``policy = any`` (one allow suffices) or ``all`` (all must allow)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.authz.interfaces import ClientIdentity, Decision, RequestInfo
from gateway.authz.registry import NamedAuthorizer

log = Logger()


@attrs.frozen
class Policy:
    """The configured authorizers and how their decisions combine.

    ``mode`` is ``any``, ``all`` or ``open``. Authorizers are asked in configuration order and
    the walk stops as soon as the outcome is known. Fails closed: an authorizer that raises,
    fails its Deferred or returns something other than a :class:`Decision` counts as a denial
    with reason ``authorizer-error`` (the error is logged, not sent to the client).
    """

    mode: str
    authorizers: Sequence[NamedAuthorizer]

    def decide(self, identity: ClientIdentity | None, request: RequestInfo) -> Deferred[Decision]:
        """Return a Deferred firing with the combined :class:`Decision` (never failing).

        Mode ``open`` (routes on a plain loopback listener without authorizers) allows all.
        """
        if self.mode == "open":
            return succeed(Decision.allow("open-route"))
        return self._ask(0, identity, request, None)

    def _ask(
        self, index: int, identity: ClientIdentity | None, request: RequestInfo,
        last: Decision | None,
    ) -> Deferred[Decision]:
        if index == len(self.authorizers):
            return succeed(last or Decision.deny("no-authorizer"))
        named = self.authorizers[index]
        d: Deferred[Decision] = maybeDeferred(named.authorizer.authorize, identity, request)
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
    return attrs.evolve(result, authorizer=name)


def _failed(name: str, failure: Failure) -> Decision:
    log.failure("authorizer {name} failed; denying", failure, name=name)
    return Decision(False, "authorizer-error", name)
