"""Twisted plugins of mtlsgw: the ``twistd mtlsgw`` command and the built-in authorizer types."""

from __future__ import annotations

import sys

from twisted.application.reactors import Reactor
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from gateway.authz.allowlist import file_type
from gateway.authz.builtin import any_type, cn_type, fingerprint_type, san_type
from gateway.authz.remote import http_type


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = (
        "Mutual-TLS gateway: verifies client certificates, authorizes requests by the client's "
        "identity and proxies them to an upstream with identity headers. "
        "Reload with SIGHUP."
    )
    optParameters = [["config", "c", "/etc/mtlsgw/gw.ini", "The INI configuration file."]]

    def opt_version(self) -> None:
        """Print mtlsgw's version (and Twisted's) and exit."""
        from gateway import __version__
        from twisted import version as twisted_version

        print(f"mtlsgw {__version__} (Twisted {twisted_version.short()})")
        raise SystemExit(0)

    def postOptions(self) -> None:
        from gateway.config import ConfigError
        from gateway.service import validate

        try:
            validate(self["config"])
        except ConfigError as exc:
            # One line naming file, section, key and value; no usage text, no traceback.
            sys.stderr.write(f"mtlsgw: {exc}\n")
            raise SystemExit(1) from None


@implementer(IServiceMaker, IPlugin)
class _ServiceMaker:
    tapname = "mtlsgw"
    description = "Mutual-TLS gateway in front of an HTTP upstream."
    options = Options

    def makeService(self, options: Options):  # type: ignore[no-untyped-def]
        from gateway.accesslog import observer_for
        from gateway.config import ConfigError
        from gateway.workers import make_service

        try:  # a supervisor when [gateway] workers is not 1
            service = make_service(options["config"])
        except ConfigError as exc:  # e.g. a systemd: listener started without its socket
            sys.stderr.write(f"mtlsgw: {exc}\n")
            raise SystemExit(1) from None
        settings = getattr(service, "settings", None) or service.generation.settings
        service.log_observer = observer_for(getattr(options, "parent", None),
                                            settings.log.format)
        return service


serviceMaker = _ServiceMaker()
# twistd --reactor=mtlsgw: epoll with writes sent at the end of each iteration (gateway/reactor.py)
reactor = Reactor("mtlsgw", "gateway.reactor",
                  "epoll, sending writes at the end of each loop iteration (mtlsgw)")
cn = cn_type
san = san_type
fingerprint = fingerprint_type
any_certificate = any_type
allowlist_file = file_type
remote_http = http_type
