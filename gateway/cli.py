"""The ``mtlsgw`` command: helpers around the gateway (the gateway itself runs under ``twistd``).

    mtlsgw check-config FILE        validate FILE as the gateway would at start; exit 0 or 1
    mtlsgw inspect CERT.pem [--config FILE] [--method M] [--path P] [--host H] [--chain PEM]
                                    what the gateway would do with that certificate: its
                                    identity, the headers it writes, each route's decision;
                                    exit 0 allowed, 3 denied, 2 bad certificate, 1 bad config
    mtlsgw dev-pki DIR              write a development CA, server and client certificates
    mtlsgw quickstart [--dir DIR]   dev PKI + demo upstream + gateway on https://localhost:8443
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError

QUICKSTART_INI = """\
; Written by `mtlsgw quickstart`: a development setup. See etc/gw.ini for every setting.
[gateway]
listen = tcp:{port}:interface=127.0.0.1
upstream = http://127.0.0.1:{upstream_port}

[tls]
certificate = server.crt
private_key = server.key
client_ca = ca.pem
client_auth = require

[authorize]
policy = any
authorizers = team

[authorizer:team]
type = cn
allow = alice

[headers]
prefix = X-Client-
"""


def _check_config(args: argparse.Namespace) -> int:
    from gateway.service import validate

    try:
        checked = validate(args.file)
    except ConfigError as exc:
        print(f"mtlsgw: {exc}", file=sys.stderr)
        return 1
    settings = checked.settings
    print(f"{settings.path}: OK")
    if settings.supervised:
        print(f"  workers: {settings.workers}{' (auto)' if settings.workers_auto else ''}")
    for listener in settings.listeners:
        kind = "mTLS" if listener.tls else "plain HTTP"
        if listener.proxy_protocol:
            peers = ", ".join(str(n) for n in listener.trusted_proxies) or "any peer"
            kind += f", PROXY protocol from {peers}"
        print(f"  listener {listener.name}: {listener.listen} ({kind})")
    if settings.status is not None:
        print(f"  status: {settings.status.listen} (plain HTTP: /healthz, /readyz, /metrics)")
    for route in settings.routes:
        names = ", ".join(a.name for a in route.authorizers) or "-"
        print(f"  route {route.name}: {route.listener} {route.host or '*'}{route.prefix} -> "
              f"{route.upstream.url} (policy {route.policy}: {names})")
    return 0


def _ip_address(text: str) -> str:
    """An ``--client-address`` value: an IPv4 or IPv6 address, as written."""
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None
    return text


def _inspect(args: argparse.Namespace) -> int:
    from gateway.inspect import Request, inspect

    request = Request(method=args.method, path=args.path, host=args.host or None,
                      client_address=args.client_address, listener=args.listener)
    return inspect(Path(args.certificate), Path(args.config) if args.config else None, request,
                   Path(args.chain) if args.chain else None)


def _dev_pki(args: argparse.Namespace) -> int:
    from gateway.pki import write_dev_pki

    directory = Path(args.dir)
    if (directory / "ca.pem").exists() and not args.force:
        print(f"mtlsgw: {directory} holds a PKI already (ca.pem); --force replaces it, CA key "
              "included", file=sys.stderr)
        return 1
    try:
        pki = write_dev_pki(directory, client_cn=args.client_cn)
    except OSError as exc:
        print(f"mtlsgw: cannot write a PKI into {directory}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"wrote {pki.ca}, {pki.server_cert}, {pki.server_key}, {pki.client_cert}, "
          f"{pki.client_key}")
    return 0


def _common_name(text: str) -> str:
    """``--client-cn``: 1 to 64 printable ASCII characters (RFC 5280's ub-common-name), which
    the gateway itself then accepts in a certificate."""
    if not (1 <= len(text) <= 64 and text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError("must be 1 to 64 printable ASCII characters")
    return text


def _quickstart(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gateway.demo import echo_factory
    from gateway.pki import write_dev_pki
    from gateway.service import build

    directory = Path(args.dir).absolute()
    try:
        pki = write_dev_pki(directory)
    except OSError as exc:
        print(f"mtlsgw: cannot write a PKI into {directory}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    ini = directory / "gw.ini"
    ini.write_text(QUICKSTART_INI.format(port=args.port, upstream_port=args.upstream_port))
    try:
        service = build(ini, reactor)
    except ConfigError as exc:
        print(f"mtlsgw: {exc}", file=sys.stderr)
        return 1
    try:
        demo = reactor.listenTCP(args.upstream_port, echo_factory(), interface="127.0.0.1")
    except CannotListenError as exc:
        print(f"mtlsgw: cannot start the demo upstream on 127.0.0.1:{args.upstream_port} "
              f"({exc.socketError}); choose another with --upstream-port", file=sys.stderr)
        return 1
    try:
        service.privilegedStartService()
        service.startService()
    except SystemExit:  # the gateway's port is taken: it has said so in one line
        demo.stopListening()
        return 1
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    print(
        f"\nmtlsgw is running on https://localhost:{args.port}/ in front of a demo upstream "
        f"on http://127.0.0.1:{args.upstream_port}/ (it echoes what it receives).\n"
        f"Try it (in another terminal):\n\n"
        f"  curl --cacert {pki.ca} --cert {pki.client_cert} --key {pki.client_key} "
        f"https://localhost:{args.port}/hello\n\n"
        f"Without a client certificate the TLS handshake fails:\n\n"
        f"  curl --cacert {pki.ca} https://localhost:{args.port}/hello\n\n"
        f"The same gateway under twistd: twistd --nodaemon --pidfile= mtlsgw --config {ini}\n"
        f"(stop the quickstart first). Ctrl-C stops.\n",
        flush=True,
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mtlsgw`` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="mtlsgw", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mtlsgw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.set_defaults(run=_check_config)
    look = commands.add_parser(
        "inspect", help="show what the gateway would do with a client certificate")
    look.add_argument("certificate", metavar="CERT.pem")
    look.add_argument("--config", help="the gateway's config file (without: identity and "
                      "default headers only)")
    look.add_argument("--method", default="GET")
    look.add_argument("--path", default="/")
    look.add_argument("--host", default="localhost", help="the request's Host ('' for none)")
    look.add_argument("--chain", help="PEM bundle of the intermediates the client sends")
    look.add_argument("--client-address", default="127.0.0.1", type=_ip_address,
                      help="the client's IP address the authorizers and X-Forwarded-For see")
    look.add_argument("--listener", default="main", help="the listener the request arrives on")
    look.set_defaults(run=_inspect)
    pki = commands.add_parser("dev-pki", help="write a development PKI")
    pki.add_argument("dir")
    pki.add_argument("--client-cn", default="alice", type=_common_name)
    pki.add_argument("--force", action="store_true",
                     help="replace a PKI already in DIR (its CA key too)")
    pki.set_defaults(run=_dev_pki)
    quick = commands.add_parser("quickstart", help="run a demo setup on https://localhost:8443")
    quick.add_argument("--dir", default=".mtlsgw-quickstart")
    quick.add_argument("--port", type=int, default=8443)
    quick.add_argument("--upstream-port", type=int, default=3000)
    quick.set_defaults(run=_quickstart)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except BrokenPipeError:  # `mtlsgw check-config gw.ini | head -1`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
