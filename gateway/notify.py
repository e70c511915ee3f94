"""systemd's service notification protocol, ``Type=notify`` (sd_notify(3)), and its watchdog.

A service tells its manager how it is doing by sending datagrams of ``KEY=VALUE`` lines to the
``AF_UNIX`` ``SOCK_DGRAM`` socket named in ``$NOTIFY_SOCKET``: a path, or an abstract-namespace
name written ``@name``. systemd documents the protocol as stable and recommends implementing it
directly; these few lines do, so the socket is non-blocking and a manager that is gone or slow
never stops the reactor (the ``sdnotify`` package, unreleased since 2017, blocks and swallows
every error with a bare ``except``).

The gateway sends (:class:`SystemdNotifier`):

* ``READY=1`` once every listener is bound and every service has started;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC``, microseconds) when a reload
  starts, then ``READY=1`` whatever its result, with ``STATUS=`` saying which;
* ``STOPPING=1`` when the drain starts (``SIGTERM``);
* ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, from a reactor timer, so that a reactor that
  stops turning misses its pings and systemd restarts the service (``WatchdogSec=``); only if
  ``$WATCHDOG_PID`` is unset or this process's pid;
* ``STATUS=`` a short state line with each of these.

Without ``$NOTIFY_SOCKET`` nothing is sent. The pure parts (:func:`socket_address`,
:func:`encode`, :func:`watchdog_interval`) are unit-tested directly.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="mtlsgw")

# Variables a child process must not inherit: only the main process talks to systemd.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str | None) -> str | bytes | None:
    """The ``sendto`` address of ``$NOTIFY_SOCKET`` *value*: a filesystem path as it is, an
    abstract-namespace ``@name`` as ``b"\\0name"``; ``None`` for unset, empty, or a kind this
    gateway does not speak (``vsock:``)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def encode(fields: Mapping[str, str]) -> bytes:
    """One notification datagram: ``KEY=VALUE`` lines, in order. A value is one line: any
    control character in it (a line break would start a new assignment) becomes a space."""
    lines = []
    for key, value in fields.items():
        clean = "".join(" " if ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in value)
        lines.append(f"{key}={clean}\n")
    return "".join(lines).encode("utf-8", "replace")


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (microseconds, as
    sd_watchdog_enabled(3) reads it), or ``None`` when it is unset or not a positive integer,
    or when ``$WATCHDOG_PID`` names another process than *pid*."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    return usec / 2 / 1_000_000


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` now, in microseconds (``MONOTONIC_USEC=``, as systemd reads it)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """Notifications to the service manager at *address* (see :func:`socket_address`); every
    method does nothing when *address* is ``None``. A send that fails (the manager is gone,
    its queue is full) is dropped: it is logged once, and never raises."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog if address is not None else None  # seconds between pings
        self._socket: socket.socket | None = None
        self._pinging: LoopingCall | None = None
        self._failed = False
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None,
                     pid: int | None = None) -> SystemdNotifier:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` describe
        (default: this process's environment and pid)."""
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        return cls(socket_address(environ.get("NOTIFY_SOCKET")), watchdog_interval(environ, pid))

    def send(self, **fields: str) -> None:
        """Send one datagram of *fields* (``READY="1"``, ``STATUS="..."``)."""
        if self._socket is None or self.address is None:
            return
        try:
            self._socket.sendto(encode(fields), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warn("systemd notification not sent: {error}", error=str(exc))

    def ready(self, status: str) -> None:
        """``READY=1``: started (or a reload is over); *status* says how it stands."""
        self.send(READY="1", STATUS=status)

    def reloading(self) -> None:
        """``RELOADING=1``: a reload starts now."""
        self.send(RELOADING="1", MONOTONIC_USEC=str(monotonic_usec()),
                  STATUS="reloading the configuration")

    def reloaded(self, ok: bool) -> None:
        """``READY=1`` after a reload, with whether the new configuration is in force."""
        self.ready("reloaded the configuration" if ok else
                   "reload refused: running the previous configuration (see the log)")

    def stopping(self, status: str) -> None:
        """``STOPPING=1``: the drain starts."""
        self.send(STOPPING="1", STATUS=status)

    def start_watchdog(self, clock: Any) -> None:
        """Ping ``WATCHDOG=1`` every :attr:`watchdog` seconds on *clock* (the reactor), the
        first at once; nothing when there is no watchdog."""
        if self.watchdog is None or self._pinging is not None:
            return
        self._pinging = LoopingCall(self.send, WATCHDOG="1")
        self._pinging.clock = clock
        self._pinging.start(self.watchdog, now=True)
