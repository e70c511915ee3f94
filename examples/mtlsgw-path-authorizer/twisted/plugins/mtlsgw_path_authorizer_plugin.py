"""Twisted plugin: adds ``type = path`` to mtlsgw's ``[authorizer:NAME]`` sections.

This folder has no ``__init__.py`` on purpose: ``twisted.plugins`` is Twisted's plugin package,
whose search path spans every ``twisted/plugins/`` folder on ``sys.path``. ``getPlugins`` imports
this module and collects the module-level objects that provide the interface asked for.
"""

from __future__ import annotations

from mtlsgw_path_authorizer import KEYS, PathAuthorizer, from_options
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.authz.interfaces import IAuthorizerType, Options


@implementer(IPlugin, IAuthorizerType)
class _PathType:
    name = "path"
    keys = KEYS

    def build(self, name: str, options: Options) -> PathAuthorizer:
        return from_options(options)


path_type = _PathType()
