"""Combining authorizers: ``policy = any`` (one allow suffices) or ``all`` (all must allow);
``shadow = yes`` rules beside them, evaluated and logged, never enforced."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.authz.interfaces import ClientIdentity, Decision, RequestInfo
from gateway.authz.outcome import checked as _checked
from gateway.authz.outcome import failed as _failed
from gateway.authz.outcome import joined
from gateway.authz.registry import NamedAuthorizer
from gateway.authz.rule import ExprAuthorizer, Limits
from gateway.logfmt import clean

shadow_log = Logger(namespace="mtlsgw.authz")

# One step of the walk: the authorizer's name, how to ask it, and whether its decisions already
# carry the name of the authorizer that decided (an expr rule names its leaves).
_Step = tuple[str, Callable[[ClientIdentity | None, RequestInfo], Any], bool]


def _steps(policy: Policy, shadow: bool) -> tuple[_Step, ...]:
    limits = Limits(policy.timeout, policy.clock)
    steps: list[_Step] = []
    for named in policy.authorizers:
        authorizer = named.authorizer
        if isinstance(authorizer, ExprAuthorizer):
            if authorizer.shadow == shadow:
                steps.append((named.name, functools.partial(authorizer.evaluate, limits=limits),
                              True))
        elif not shadow:
            steps.append((named.name, authorizer.authorize, False))
    return tuple(steps)


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

    An ``expr`` rule's decision names the leaf that decided (its ``authorizer``), and each of its
    leaves is held to ``timeout`` too. A ``shadow = yes`` rule takes no part in the combination
    (the policy decides as if it were not listed); it is evaluated for every request the policy
    decides and its would-be decision is logged, one line ``shadow rule NAME would allow|deny
    ...`` (namespace ``mtlsgw.authz``), without the request waiting for it.
    """

    mode: str
    authorizers: Sequence[NamedAuthorizer]
    timeout: float = 0.0  # seconds an authorizer may take; 0 = no limit (needs a clock)
    clock: Any = None  # an IReactorTime, for the timeout
    _enforcing: tuple[_Step, ...] = attrs.field(
        init=False, repr=False, eq=False,
        default=attrs.Factory(lambda self: _steps(self, False), takes_self=True))
    _shadows: tuple[_Step, ...] = attrs.field(
        init=False, repr=False, eq=False,
        default=attrs.Factory(lambda self: _steps(self, True), takes_self=True))

    @property
    def all_shadow(self) -> bool:
        """Whether every authorizer listed is a shadow rule (then nothing would decide)."""
        return not self._enforcing and bool(self._shadows)

    def decide(self, identity: ClientIdentity | None, request: RequestInfo) -> Deferred[Decision]:
        """Return a Deferred firing with the combined :class:`Decision` (never failing).

        Mode ``open`` (routes on a plain loopback listener without authorizers) allows all.
        """
        if self.mode == "open":
            return succeed(Decision.allow("open-route"))
        if self._shadows:
            self._shadow(identity, request)
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
        if self._shadows:
            self._shadow(identity, request)
        last: Decision | None = None
        for index, (name, ask, named) in enumerate(self._enforcing):
            try:
                result = ask(identity, request)
            except Exception:
                decision = _failed(name, Failure())
            else:
                if isinstance(result, Deferred):
                    return self._ask(index, identity, request, last, result)
                decision = result if named else _checked(name, result)
            if self.mode == "any" and decision.allowed:
                return decision
            if self.mode == "all" and not decision.allowed:
                return decision
            last = (last or decision) if self.mode == "any" else joined(last, decision)
        return last or Decision.deny("no-authorizer")

    def _ask(
        self, index: int, identity: ClientIdentity | None, request: RequestInfo,
        last: Decision | None, started: Deferred[Any] | None = None,
    ) -> Deferred[Decision]:
        if index == len(self._enforcing):
            return succeed(last or Decision.deny("no-authorizer"))
        name, ask, named = self._enforcing[index]
        d: Deferred[Decision] = started if started is not None else maybeDeferred(
            ask, identity, request)
        if self.timeout and self.clock is not None and not d.called:
            d.addTimeout(self.timeout, self.clock)  # a slow authorizer fails closed
        d.addCallbacks(lambda r: r if named else _checked(name, r), lambda f: _failed(name, f))

        def next_step(decision: Decision) -> Deferred[Decision] | Decision:
            if self.mode == "any" and decision.allowed:
                return decision
            if self.mode == "all" and not decision.allowed:
                return decision
            if self.mode == "any":
                # Report the first denial when nothing allows: it is the most specific reason.
                return self._ask(index + 1, identity, request, last or decision)
            return self._ask(index + 1, identity, request, joined(last, decision))

        return d.addCallback(next_step)

    def _shadow(self, identity: ClientIdentity | None, request: RequestInfo) -> None:
        for name, ask, _ in self._shadows:
            try:
                result = ask(identity, request)
            except Exception:
                result = _failed(name, Failure())
            if isinstance(result, Deferred):
                result.addErrback(_failed_shadow, name)
                result.addCallback(_log_shadow, name, identity, request)
            else:
                _log_shadow(result, name, identity, request)


def _failed_shadow(failure: Failure, name: str) -> Decision:
    return _failed(name, failure)


def _log_shadow(decision: Decision, name: str, identity: ClientIdentity | None,
                request: RequestInfo) -> None:
    shadow_log.info(
        "shadow rule {name} would {verdict} reason={reason} authorizer={authorizer} "
        "method={method} path={path} peer={peer} fingerprint={fingerprint}",
        name=name, verdict="allow" if decision.allowed else "deny",
        reason=clean(decision.reason), authorizer=clean(decision.authorizer or "-"),
        method=clean(request.method), path=clean(request.path), peer=request.client_address,
        fingerprint=identity.fingerprint_sha256 if identity else "-")
