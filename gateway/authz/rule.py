"""``type = expr``: an authorizer whose ``rule`` combines named authorizers and matchers.

The rule (grammar in :mod:`gateway.authz.expr`, matchers in :mod:`gateway.authz.matchers`) is
parsed and built once, at start and on reload; per request it is a walk over prebuilt nodes:

* ``all(a, b, ...)`` — asks left to right, stops at the first denial and returns it; when all
  allow, the last allowing decision, with the upstream headers of every allow (an ``http``
  authorizer's, whatever its place);
* ``any(a, b, ...)`` — asks left to right, stops at the first allow and returns it; when none
  allows, the first denial;
* ``not(a)`` — the opposite of *a*'s decision, with *a*'s reason and authorizer (so
  ``decision=deny reason=fingerprint-allowed authorizer=blocked`` reads "denied: blocked matched");
* a name — the ``[authorizer:NAME]`` of that name (another ``expr`` too);
* a matcher — ``subject(...)``, ``method(...)``, … (its decisions name this rule's authorizer).

**Fail closed.** A *fault* is a leaf that raised, failed its Deferred, did not decide within
``[authorize] timeout``, returned something that is not a Decision or a reason that is not a
reason id (``invalid-reason-id``), or denied with reason ``authorizer-error``,
``authorizer-unavailable``, ``authorizer-busy`` or ``spiffe-invalid-svid``.
A fault ends the walk at once and is the rule's decision, a denial, whatever ``not`` or ``any``
surrounds it.
Leaves that the walk did not need (``any`` already allowed) are not asked.

The decision reports the reason and the authorizer of the leaf that decided. Leaves may answer
with a Deferred; while they answer with a Decision the walk stays synchronous.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.authz import matchers
from gateway.authz.expr import COMBINATORS, MAX_DEPTH, ExprError, Node, parse
from gateway.authz.interfaces import ClientIdentity, Decision, IAuthorizer, RequestInfo
from gateway.authz.outcome import checked, failed, joined
from gateway.config import _BOOLEANS, AuthorizerSection

FAULTS = frozenset({"authorizer-error", "authorizer-unavailable", "authorizer-busy",
                    "invalid-reason-id", matchers.INVALID_SVID})
KEYS = frozenset({"rule", "shadow"})

Identity = ClientIdentity | None
Outcome = Decision | Deferred[Decision]


def is_fault(decision: Decision) -> bool:
    """Whether *decision* is a fault (see the module docstring): it denies the whole rule."""
    return not decision.allowed and decision.reason in FAULTS


@attrs.frozen
class Limits:
    """How long each leaf may take: ``timeout`` seconds (0 = no limit) on ``clock`` (an
    ``IReactorTime``; ``None``: no limit)."""

    timeout: float = 0.0
    clock: Any = None


NO_LIMITS = Limits()


class _Node(Protocol):
    def eval(self, identity: Identity, request: RequestInfo, limits: Limits) -> Outcome: ...


@attrs.frozen
class _Leaf:
    """A named authorizer."""

    name: str
    authorizer: IAuthorizer

    def eval(self, identity: Identity, request: RequestInfo, limits: Limits) -> Outcome:
        name = self.name
        try:
            result = self.authorizer.authorize(identity, request)
        except Exception:
            return failed(name, Failure())
        if isinstance(result, Decision):
            return checked(name, result)
        if isinstance(result, Deferred):
            if limits.timeout and limits.clock is not None and not result.called:
                result.addTimeout(limits.timeout, limits.clock)  # a slow leaf fails closed
            return result.addCallbacks(lambda r: checked(name, r), lambda f: failed(name, f))
        return checked(name, result)


@attrs.frozen
class _Rule:
    """Another ``expr`` authorizer: its own leaves decide and are named."""

    rule: ExprAuthorizer

    def eval(self, identity: Identity, request: RequestInfo, limits: Limits) -> Outcome:
        return self.rule.root.eval(identity, request, limits)


@attrs.frozen
class _Match:
    matcher: matchers.Matcher
    owner: str

    def eval(self, identity: Identity, request: RequestInfo, limits: Limits) -> Outcome:
        try:
            return self.matcher.decide(identity, request)
        except Exception:
            return failed(self.owner, Failure())


@attrs.frozen
class _All:
    children: tuple[_Node, ...]

    def eval(self, identity: Identity, request: RequestInfo, limits: Limits,
             start: int = 0, last: Decision | None = None) -> Outcome:
        children = self.children
        for index in range(start, len(children)):
            result = children[index].eval(identity, request, limits)
            if not isinstance(result, Decision):  # a Deferred
                return result.addCallback(self._resume, index, identity, request, limits, last)
            if not result.allowed:
                return result
            last = joined(last, result)
        assert last is not None
        return last

    def _resume(self, result: Decision, index: int, identity: Identity, request: RequestInfo,
                limits: Limits, last: Decision | None) -> Outcome:
        if not result.allowed:
            return result
        return self.eval(identity, request, limits, index + 1, joined(last, result))


@attrs.frozen
class _Any:
    children: tuple[_Node, ...]

    def eval(self, identity: Identity, request: RequestInfo, limits: Limits,
             start: int = 0, first: Decision | None = None) -> Outcome:
        children = self.children
        for index in range(start, len(children)):
            result = children[index].eval(identity, request, limits)
            if not isinstance(result, Decision):  # a Deferred
                return result.addCallback(self._resume, index, identity, request, limits, first)
            if result.allowed or result.reason in FAULTS:
                return result
            first = first or result
        assert first is not None
        return first

    def _resume(self, result: Decision, index: int, identity: Identity, request: RequestInfo,
                limits: Limits, first: Decision | None) -> Outcome:
        if result.allowed or result.reason in FAULTS:
            return result
        return self.eval(identity, request, limits, index + 1, first or result)


@attrs.frozen
class _Not:
    child: _Node

    def eval(self, identity: Identity, request: RequestInfo, limits: Limits) -> Outcome:
        result = self.child.eval(identity, request, limits)
        if not isinstance(result, Decision):  # a Deferred
            return result.addCallback(_invert)
        return _invert(result)


def _invert(decision: Decision) -> Decision:
    if is_fault(decision):
        return decision
    try:
        return _inverted(decision)
    except TypeError:  # an unhashable Decision subclass from a plugin
        return Decision(not decision.allowed, decision.reason, decision.authorizer)


@functools.lru_cache(maxsize=1024)
def _inverted(decision: Decision) -> Decision:
    # Cached: a rule inverts the same few decisions over and over (Decision is frozen).
    return Decision(not decision.allowed, decision.reason, decision.authorizer)


@implementer(IAuthorizer)
@attrs.frozen
class ExprAuthorizer:
    """A built ``type = expr`` authorizer: ``name``, the ``rule`` text and its tree.

    ``shadow`` rules are evaluated and logged by the policy, never enforced (see
    :class:`~gateway.authz.policy.Policy`). :meth:`authorize` is the plain
    :class:`IAuthorizer` call (no time limit on the leaves); the policy calls :meth:`evaluate`.
    """

    name: str
    rule: str
    root: _Node = attrs.field(repr=False)
    shadow: bool = False
    depth: int = 0  # how deeply its calls nest, through the rules it names (<= MAX_DEPTH)

    def authorize(self, identity: Identity, request: RequestInfo) -> Outcome:
        """The rule's decision for *identity* making *request* (a Decision, or a Deferred that
        never fails when a leaf answered with one)."""
        return self.root.eval(identity, request, NO_LIMITS)

    def evaluate(self, identity: Identity, request: RequestInfo, limits: Limits) -> Outcome:
        """:meth:`authorize`, each leaf held to *limits*."""
        return self.root.eval(identity, request, limits)


#: ``resolve(name, depth)``: *depth* is how deeply the reference is nested (rules naming this
#: one counted), so that a chain of rules cannot nest deeper than :data:`MAX_DEPTH`.
Resolve = Callable[[str, int], IAuthorizer]
TOO_DEEP = f"nested more than {MAX_DEPTH} deep (through the rules it names or that name it)"


def build(section: AuthorizerSection, resolve: Resolve, depth: int = 0) -> ExprAuthorizer:
    """Build the ``type = expr`` authorizer of *section*.

    *resolve* returns the authorizer of another section by name, raising ``LookupError`` (with
    the problem as its message) when there is none or it cannot be referenced from here;
    *depth* is how deeply the rule is named by the rules being built.
    Raises :class:`~gateway.config.ConfigError`, one line:
    ``FILE: [authorizer:NAME] rule = '...': at character N ('token'): problem``.
    """
    text = section.options.get("rule", "")
    where = section.location.at("rule", text)
    if not text.strip():
        raise section.location.at("rule").error("required key is missing or empty")
    raw_shadow = section.options.get("shadow", "no") or "no"
    if raw_shadow.lower() not in _BOOLEANS:
        raise section.location.at("shadow", raw_shadow).error("must be yes or no")
    try:
        root, height = _compile(parse(text, matchers.KEYED), section.name, resolve, depth)
    except ExprError as exc:
        raise where.error(str(exc)) from None
    return ExprAuthorizer(section.name, text, root, _BOOLEANS[raw_shadow.lower()], height)


def _compile(node: Node, owner: str, resolve: Resolve, depth: int) -> tuple[_Node, int]:
    """The evaluable form of *node* (at *depth*) and how deeply its calls nest."""
    if node.is_reference:
        try:
            authorizer = resolve(node.name, depth)
        except LookupError as exc:
            raise ExprError(node.position, node.name, str(exc.args[0])) from None
        if isinstance(authorizer, ExprAuthorizer):
            if depth + authorizer.depth > MAX_DEPTH:
                raise ExprError(node.position, node.name, TOO_DEEP)
            return _Rule(authorizer), authorizer.depth
        return _Leaf(node.name, authorizer), 0
    if depth >= MAX_DEPTH:
        raise ExprError(node.position, node.name, TOO_DEEP)
    if node.name not in COMBINATORS:
        return _Match(matchers.build(node, owner), owner), 1
    compiled = [_compile(arg, owner, resolve, depth + 1) for arg in node.args or ()
                if isinstance(arg, Node)]
    children = tuple(child for child, _ in compiled)
    height = 1 + max((h for _, h in compiled), default=0)
    if node.name == "not":
        if len(children) != 1:
            raise ExprError(node.position, node.name, "not() takes exactly one rule")
        return _Not(children[0]), height
    if not children:
        raise ExprError(node.position, node.name, f"{node.name}() needs at least one rule")
    if len(children) == 1:
        return children[0], height
    return (_All(children) if node.name == "all" else _Any(children)), height


__all__ = ["FAULTS", "KEYS", "MAX_DEPTH", "TOO_DEEP", "ExprAuthorizer", "Limits", "build",
           "is_fault"]
