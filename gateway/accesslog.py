"""The log observer of ``twistd mtlsgw``: twistd's text log, with the access lines buffered.

An access line is one ``twisted.logger`` event per request (namespace ``mtlsgw.access``, format
``{access}``; docs/configuration.md), and the event stays that for every observer. What changes
is how the log file gets it: twistd's own file observer formats each event field by field and
writes and flushes it on its own, the largest cost of a small request after the HTTP work itself.
:class:`BufferedLogObserver` writes access events in the very same text
(``2026-12-01T12:00:00+0000 [mtlsgw.access#info] request ...``) into a buffer that goes to the
file in one write at the end of the reactor iteration that produced them (under load, one write
for many requests; never later than that, so a line is in the file as soon as the request's
response has been handed to the client), before any other event (so the file keeps the order of
events), when it holds :data:`MAX_BUFFERED` lines, on SIGTERM and at exit. The other events of
a request (its warnings, namespace ``mtlsgw.access``) are buffered with it, so a request's lines
are written together; every other event goes to twistd's usual observer at once.

:func:`observer_for` builds it for twistd's options the way twistd itself picks the log file
(``--logfile``, ``-`` or none for standard output under ``--nodaemon``, ``twistd.log`` for a
daemon, ``SIGUSR1`` rotating it); with ``--syslog`` or ``--logger`` it returns ``None`` and
twistd's own choice stands. With ``[log] format = json`` the same file gets JSON lines instead
(:mod:`gateway.jsonlog`).
"""

from __future__ import annotations

import signal
import sys
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

MAX_BUFFERED = 512  # access lines held before they are written anyway


@implementer(ILogObserver)
class BufferedLogObserver:
    """Writes events to *out* (a text file: ``write``/``flush``) as twistd's text observer does,
    buffering access lines until :meth:`flush`, which *clock* (an ``IReactorTime``, set once the
    reactor runs; until then lines are written at once) calls at the end of the iteration."""

    clock: Any = None

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._scheduled = False
        self._text = textFileLogObserver(out)
        self._buffer: list[str] = []
        self._stamp_second = -1
        self._stamp = ""

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") != "mtlsgw.access":
            self.flush()
            self._text(event)
            return
        if event.get("log_format") != "{access}":
            # A request's warning ("upstream request failed: ...") goes out with its access
            # line, in the same write.
            self._buffer.append(formatEventAsClassicLogText(event) or "")
            self._schedule()
            return
        when = event.get("log_time")
        second = int(when) if when is not None else 0
        if second != self._stamp_second:
            self._stamp_second, self._stamp = second, formatTime(second)
        level = event.get("log_level")
        name = level.name if level is not None else "-"
        self._buffer.append(f"{self._stamp} [mtlsgw.access#{name}] {event.get('access')}\n")
        self._schedule()

    def _schedule(self) -> None:
        if len(self._buffer) >= MAX_BUFFERED or self.clock is None:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write the buffered access lines."""
        self._scheduled = False
        if self._buffer:
            lines, self._buffer = "".join(self._buffer), []
            self._out.write(lines)
            self._out.flush()


def offer_observer(application: Any, observer: BufferedLogObserver | None, reactor: Any) -> None:
    """Offer *observer* to twistd as *application*'s ``ILogObserver`` component (twistd's
    documented way; ``--logger`` still wins), flushed by *reactor* and at shutdown."""
    if observer is None or not hasattr(application, "setComponent"):
        return
    if application.getComponent(ILogObserver, None) is None:
        application.setComponent(ILogObserver, observer)
        observer.clock = reactor
        reactor.addSystemEventTrigger("after", "shutdown", observer.flush)


def observer_for(twistd_options: Any, log_format: str = "text") -> BufferedLogObserver | None:
    """The observer for twistd's parsed options (``twistd_options["logfile"]``, ``nodaemon``,
    ``syslog``, ``logger``), or ``None`` where twistd's own choice must stand; *log_format*
    ``json`` (``[log] format``) makes it a :class:`~gateway.jsonlog.JSONLogObserver`."""
    from gateway.jsonlog import JSONLogObserver

    kind = JSONLogObserver if log_format == "json" else BufferedLogObserver
    if twistd_options is None or twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    name = twistd_options.get("logfile")
    nodaemon = twistd_options.get("nodaemon")
    if name == "-" and not nodaemon:
        return None  # twistd refuses this itself: "Daemons cannot log to stdout"
    if name == "-" or (nodaemon and not name):
        return kind(sys.stdout)
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return kind(log_file)  # LogFile is file-like: write, flush
