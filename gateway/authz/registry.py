"""Finding authorizer types (Twisted plugins) and building the configured authorizers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
from twisted.plugin import getPlugins

from gateway.authz import rule
from gateway.authz.interfaces import IAuthorizer, IAuthorizerType, OptionError
from gateway.config import AuthorizerSection, ConfigError


def available_types() -> dict[str, IAuthorizerType]:
    """Every :class:`IAuthorizerType` visible to Twisted's plugin system, by ``name``.

    The built-ins come from ``twisted/plugins/mtlsgw_plugin.py``; third-party packages add theirs
    from their own ``twisted/plugins/`` modules. Raises :class:`ConfigError` when two plugins
    claim the same name (which one wins would be an accident of import order).
    """
    found: dict[str, IAuthorizerType] = {}
    for kind in getPlugins(IAuthorizerType):
        name = str(kind.name)
        if name in found and _origin(found[name]) != _origin(kind):
            raise ConfigError(
                f"authorizer type {name!r} is provided by two plugins: "
                f"{type(found[name]).__module__} and {type(kind).__module__}")
        found[name] = kind
    return found


def _origin(kind: object) -> str:
    # The same plugin module can be found twice (an installed copy and a source tree on sys.path);
    # that is one plugin, not a conflict.
    return f"{type(kind).__module__}.{type(kind).__qualname__}"


@attrs.frozen
class NamedAuthorizer:
    """A built authorizer and its configured name (``[authorizer:NAME]``)."""

    name: str
    authorizer: IAuthorizer


@attrs.frozen
class BuildContext:
    """What the gateway tells a type that has ``build_in(name, options, context)`` besides the
    options (it is called instead of ``build``): ``config_dir``, the folder relative file names
    resolve against (the config file's); ``authorize_timeout``, ``[authorize] timeout`` in
    seconds (0: no limit)."""

    config_dir: Path
    authorize_timeout: float = 0.0


def build_authorizers(
    sections: Sequence[AuthorizerSection],
    types: Mapping[str, IAuthorizerType] | None = None,
    defined: Mapping[str, AuthorizerSection] | None = None,
    authorize_timeout: float = 0.0,
    built: dict[str, IAuthorizer] | None = None,
) -> tuple[NamedAuthorizer, ...]:
    """Build one authorizer per configured section, in order (*authorize_timeout*: see
    :class:`BuildContext`).

    *defined* holds every ``[authorizer:NAME]`` section of the file, which ``type = expr`` rules
    may name (default: *sections* themselves); each section is built once per call, also when
    several rules name it, and once across calls that pass the same *built* mapping (section
    name to authorizer: the routes that list one section share its authorizer).

    Raises :class:`ConfigError` (one line: file, section, key, value) for an unknown ``type``, an
    option the type does not accept, a value the type refuses, or a rule naming an authorizer
    that does not exist, names itself (also through others), or is a ``shadow`` rule.
    """
    if types is None:
        types = available_types()
    builder = _Builder(types, defined if defined is not None else {s.name: s for s in sections},
                       authorize_timeout, built if built is not None else {})
    return tuple(NamedAuthorizer(section.name, builder.build(section)) for section in sections)


class _Builder:
    def __init__(self, types: Mapping[str, IAuthorizerType],
                 defined: Mapping[str, AuthorizerSection], authorize_timeout: float,
                 built: dict[str, IAuthorizer]) -> None:
        self.types = types
        self.defined = defined
        self.authorize_timeout = authorize_timeout
        self.built = built
        self.building: list[str] = []

    def resolve(self, name: str) -> IAuthorizer:
        """The authorizer a rule names; ``LookupError`` when it cannot be used there."""
        section = self.defined.get(name)
        if section is None:
            raise LookupError(f"no [authorizer:{name}] section")
        if name in self.building:
            cycle = " -> ".join([*self.building[self.building.index(name):], name])
            raise LookupError(f"the rule names itself ({cycle})")
        authorizer = self.build(section)
        if isinstance(authorizer, rule.ExprAuthorizer) and authorizer.shadow:
            raise LookupError("a shadow = yes rule is only listed in authorizers, not named "
                              "in another rule")
        return authorizer

    def build(self, section: AuthorizerSection) -> IAuthorizer:
        if section.name in self.built:
            return self.built[section.name]
        if section.type == "expr":
            self._check_keys(section, rule.KEYS)
            self.building.append(section.name)
            try:
                authorizer: IAuthorizer = rule.build(section, self.resolve)
            finally:
                self.building.pop()
        else:
            authorizer = self._plugin(section)
        self.built[section.name] = authorizer
        return authorizer

    def _check_keys(self, section: AuthorizerSection, accepted: frozenset[str]) -> None:
        for key, value in section.options.items():
            if key not in accepted:
                known = ", ".join(sorted(accepted | {"type"}))
                raise section.location.at(key, value).error(f"unknown key (known keys: {known})")

    def _plugin(self, section: AuthorizerSection) -> IAuthorizer:
        types = self.types
        kind = types.get(section.type)
        if kind is None:
            raise section.location.at("type", section.type).error(
                f"unknown authorizer type (available: {', '.join(sorted(types))})")
        try:
            accepted = frozenset(kind.keys)
        except TypeError:
            raise section.location.at("type", section.type).error(
                f"plugin {type(kind).__module__}: keys is not a set of option names") from None
        self._check_keys(section, accepted)
        try:
            build_in = getattr(kind, "build_in", None)
            if build_in is not None:
                context = BuildContext(section.location.path.parent, self.authorize_timeout)
                authorizer = build_in(section.name, dict(section.options), context)
            else:
                authorizer = kind.build(section.name, dict(section.options))
        except OptionError as exc:
            raise section.location.at(exc.key, section.options.get(exc.key, "")).error(
                exc.problem) from None
        except Exception as exc:  # a plugin bug: still one line, and a reload is refused
            raise section.location.at("type", section.type).error(
                f"plugin {type(kind).__module__} failed: {type(exc).__name__}: {exc}") from None
        if not IAuthorizer.providedBy(authorizer):
            raise section.location.at("type", section.type).error(
                f"plugin {type(kind).__module__} built {authorizer!r}, not an IAuthorizer")
        return authorizer
