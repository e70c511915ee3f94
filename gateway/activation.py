"""Socket activation (sd_listen_fds(3)): the listening sockets systemd passed, checked at start.

A ``systemd:domain=INET6:index=0`` or ``systemd:domain=INET6:name=https`` listener adopts a
socket that systemd (a ``.socket`` unit, or ``systemd-socket-activate``) opened and passed as
descriptor 3, 4, ..., described by ``$LISTEN_FDS``, ``$LISTEN_FDNAMES`` and ``$LISTEN_PID``
(Twisted's :class:`~twisted.python.systemd.ListenFDs` reads them). Started without that socket,
for example by hand, Twisted's endpoint parser would fail with an ``IndexError`` or
``KeyError``; :func:`check_passed_sockets` turns that into the usual one-line configuration
error instead. ``mtlsgw check-config`` does not call it: it runs without the sockets.
"""

from __future__ import annotations

import socket

from twisted.python.systemd import ListenFDs

from gateway import config


def passed_sockets() -> ListenFDs:
    """The sockets ``systemd:`` endpoints adopt: what Twisted's endpoint parser read from the
    environment when it was imported (it removes ``LISTEN_FDS`` and ``LISTEN_PID`` from
    ``os.environ`` then, so that no one adopts a socket twice)."""
    from twisted.internet.endpoints import _SystemdParser

    return _SystemdParser._sddaemon


def check_passed_sockets(settings: config.GatewaySettings, passed: ListenFDs) -> None:
    """Raise :class:`~gateway.config.ConfigError` naming the listener (file, section, key,
    value) whose ``systemd:`` description does not match a socket in *passed*: no socket at
    that ``index``, none of that ``name``, or a ``domain`` that is not an address family."""
    from twisted.internet.endpoints import _parseServer

    descriptors = passed.inheritedDescriptors()
    names = passed.inheritedNamedDescriptors()
    for listener in settings.listeners:
        inner = listener.socket_listen
        if inner.split(":", 1)[0].strip().lower() != "systemd":
            continue
        _kind, args, kwargs = _parseServer(inner, None)  # checked by config.load already
        where = listener.location.at("listen", listener.listen)
        domain = str(kwargs.get("domain", args[0] if args else ""))
        if not isinstance(getattr(socket, f"AF_{domain}", None), int):
            raise where.error(f"domain={domain} is not an address family (INET, INET6, UNIX)")
        passed_text = (f"systemd passed {len(descriptors)} socket(s)" if descriptors else
                       "no socket was passed (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES must "
                       "all be set for this process, as a .socket unit sets them; Twisted takes "
                       "no socket without its name, so systemd-socket-activate needs --fdname): "
                       "start it through its .socket unit")
        if kwargs.get("index") is not None and kwargs.get("name") is not None:
            raise where.error("give index= or name=, not both")
        if kwargs.get("index") is not None:
            index = str(kwargs["index"])
            if not index.isdigit() or int(index) >= len(descriptors):
                raise where.error(f"no passed socket at index {index}; {passed_text}")
        elif kwargs.get("name") is not None:
            name = str(kwargs["name"])
            if name not in names:
                known = f" (names: {', '.join(names)})" if names else ""
                raise where.error(f"no passed socket named {name!r}{known}; {passed_text}")
        else:
            raise where.error("give index= or name= (FileDescriptorName=) of the passed socket")
