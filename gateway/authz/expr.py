"""The ``rule`` language of ``type = expr`` authorizers: a recursive-descent parser. Pure.

Grammar (ABNF-like; whitespace, line breaks included, may stand between any two tokens)::

    rule     = node EOF
    node     = name [ "(" [ arg *( "," arg ) ] ")" ]
    arg      = node                      ; inside all(), any(), not()
             | [ key "=" ] value         ; inside a matcher: subject(OU=ops), method(GET)
    name     = ALNUM *( ALNUM / "_" / "." / "-" )
    key      = ALNUM *( ALNUM / "_" / "." / "-" )
    value    = quoted / bare
    quoted   = DQUOTE *( any character but DQUOTE and "\\" / "\\" DQUOTE / "\\" "\\" ) DQUOTE
    bare     = 1*( any printable character but "," "(" ")" DQUOTE ), leading and trailing
               spaces not counted (a bare value may hold spaces and "=" inside)

A ``name`` without parentheses names an authorizer (``[authorizer:NAME]``); a ``name`` with
parentheses is a function: ``all``, ``any``, ``not`` or a matcher. Which function takes
``key=value`` arguments and which plain values is the caller's business (see
:func:`parse`'s *keyed*): the parser only builds the tree.

Every mistake raises :class:`ExprError` with the 1-based character position and the offending
token.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import attrs

COMBINATORS = frozenset({"all", "any", "not"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SPACE = re.compile(r"\s*")
_BARE_STOP = frozenset(',()"')
END = "end of rule"  # the token shown for a rule that ends too early


class ExprError(ValueError):
    """A rule that does not parse or does not make sense.

    ``position`` is the 1-based character position in the rule, ``token`` the text found there
    (``end of rule`` at the end), ``problem`` what is wrong. ``str()`` is one line:
    ``at character 12 ('foo'): unknown authorizer``.
    """

    def __init__(self, position: int, token: str, problem: str) -> None:
        self.position = position
        self.token = token
        self.problem = problem
        shown = token if token == END else repr(token)
        super().__init__(f"at character {position} ({shown}): {problem}")


@attrs.frozen
class Value:
    """A matcher argument: ``key`` (``None`` for a plain value) and ``text``; ``position`` is
    where it starts (1-based), ``text_position`` where its text starts after ``key=``."""

    key: str | None
    text: str
    position: int
    text_position: int = 0  # where the text starts (after "key="); 0: at position

    @property
    def at(self) -> int:
        """Where the text starts (1-based)."""
        return self.text_position or self.position


@attrs.frozen
class Node:
    """A parsed node: ``name`` and, for a call, its ``args`` (``None`` for a bare authorizer
    name). Arguments of ``all``/``any``/``not`` are :class:`Node`, of a matcher :class:`Value`."""

    name: str
    position: int
    args: tuple[Node | Value, ...] | None = None

    @property
    def is_reference(self) -> bool:
        """Whether this is a bare name, i.e. a reference to a named authorizer."""
        return self.args is None


def parse(text: str, keyed: Collection[str] = ()) -> Node:
    """Parse rule *text* into its :class:`Node` tree.

    *keyed* names the matchers whose arguments are ``key=value`` pairs (``subject``, …); the
    arguments of every other matcher are plain values. Raises :class:`ExprError`.
    """
    parser = _Parser(text, frozenset(keyed))
    node = parser.node()
    parser.skip()
    if parser.at < len(text):
        raise parser.error("expected the end of the rule")
    return node


class _Parser:
    def __init__(self, text: str, keyed: frozenset[str]) -> None:
        self.text = text
        self.keyed = keyed
        self.at = 0

    def skip(self) -> None:
        match = _SPACE.match(self.text, self.at)
        assert match is not None
        self.at = match.end()

    def token(self) -> str:
        """The token at the current position, for error messages."""
        if self.at >= len(self.text):
            return END
        match = _NAME.match(self.text, self.at)
        if match:
            return match.group()
        if self.text[self.at] == '"':
            end = self.text.find('"', self.at + 1)
            return self.text[self.at:end + 1] if end > 0 else self.text[self.at:]
        return self.text[self.at]

    def error(self, problem: str, position: int | None = None, token: str | None = None
              ) -> ExprError:
        if position is None:
            position = self.at
        return ExprError(position + 1, token if token is not None else self.token(), problem)

    def peek(self) -> str:
        self.skip()
        return self.text[self.at] if self.at < len(self.text) else ""

    def expect(self, char: str, problem: str) -> None:
        if self.peek() != char:
            raise self.error(problem)
        self.at += 1

    def name(self, what: str) -> tuple[str, int]:
        self.skip()
        match = _NAME.match(self.text, self.at)
        if not match:
            raise self.error(f"expected {what}")
        self.at = match.end()
        return match.group(), match.start()

    def node(self) -> Node:
        name, start = self.name("an authorizer name or a function such as all(...)")
        if self.peek() != "(":
            return Node(name, start + 1)
        self.at += 1
        args: list[Node | Value] = []
        if self.peek() != ")":
            while True:
                args.append(self.node() if name in COMBINATORS else self.value(name))
                if self.peek() != ",":
                    break
                self.at += 1
        self.expect(")", "expected ',' or ')'")
        return Node(name, start + 1, tuple(args))

    def value(self, function: str) -> Value:
        self.skip()
        start = self.at
        key = None
        if function in self.keyed:
            key, _ = self.name(f"an attribute such as OU=... in {function}()")
            self.expect("=", f"expected '=' after {key!r}")
            self.skip()
        text_start = self.at
        text = self.quoted() if self.peek() == '"' else self.bare()
        return Value(key, text, start + 1, text_start + 1 if key is not None else 0)

    def quoted(self) -> str:
        start = self.at
        self.at += 1
        out: list[str] = []
        text = self.text
        while self.at < len(text):
            char = text[self.at]
            if char == '"':
                self.at += 1
                return "".join(out)
            if char == "\\":
                if self.at + 1 >= len(text) or text[self.at + 1] not in '"\\':
                    raise self.error('only \\" and \\\\ may follow a backslash in quotes')
                char = text[self.at + 1]
                self.at += 1
            elif ord(char) < 0x20 or ord(char) == 0x7F:
                raise self.error("control character in a quoted value", token=repr(char)[1:-1])
            out.append(char)
            self.at += 1
        raise self.error("unterminated quoted value", start, text[start:])

    def bare(self) -> str:
        start = self.at
        text = self.text
        while self.at < len(text) and text[self.at] not in _BARE_STOP:
            if ord(text[self.at]) < 0x20 and text[self.at] not in "\t\n\r":
                raise self.error("control character in a value")
            self.at += 1
        value = text[start:self.at].strip()
        if not value:
            raise self.error("expected a value")
        if any(ch in value for ch in "\t\n\r"):
            raise self.error("a value spans lines or holds a tab; quote it",
                             start, value)
        return value
