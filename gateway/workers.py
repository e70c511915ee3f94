"""``[gateway] workers = N | auto``: one supervisor process, N worker processes.

The supervisor (the ``twistd mtlsgw`` process) binds every listener once and starts N workers
(``python -m gateway.worker``, :mod:`gateway.worker`) that inherit the listening sockets and
adopt them; the kernel hands each new connection to whichever worker accepts it first. Each worker
is a complete :class:`~gateway.service.GatewayService` with its own TLS context, upstream pools
and limits. The supervisor:

* restarts a worker that exits, after a back-off (:class:`Backoff`);
* on ``SIGHUP`` validates the file once (:func:`gateway.service.validate`) and then sends
  ``SIGHUP`` to every worker, or refuses the reload for all of them with one log line;
* on ``SIGTERM`` sends ``SIGTERM`` to every worker, waits for them to drain (``drain_timeout``
  plus :data:`KILL_GRACE`), kills what is left, and exits 0;
* relays the workers' log events into its own log, each prefixed ``worker=N``;
* with ``[status]``, serves the status listener itself: the workers write snapshots of their
  metrics into a directory of this run (``MTLSGW_METRICS_DIR``), and ``/metrics`` adds them up
  (:mod:`gateway.status`, :mod:`gateway.metrics`).

Because the supervisor holds the sockets, nothing else can take the port while a worker restarts.
The workers watch a pipe from the supervisor (their stdin) and stop when it closes, so they do
not outlive it. The pure parts (:func:`cpu_quota`, :func:`auto_workers`, :class:`Backoff`,
:func:`worker_event`) are unit-tested directly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ProcessExitedAlready, ReactorNotRunning
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import (
    InvalidLogLevelError,
    Logger,
    LogLevel,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from gateway import config
from gateway.accesslog import BufferedLogObserver, offer_observer
from gateway.activation import check_passed_sockets, passed_sockets
from gateway.jsonlog import reload_record
from gateway.notify import NOTIFY_VARIABLES, SystemdNotifier
from gateway.watch import FileWatcher, watched_files

if TYPE_CHECKING:
    from gateway.service import GatewayService

log = Logger(namespace="mtlsgw.workers")

MAX_WORKERS = 256
KILL_GRACE = 5.0  # seconds after drain_timeout before a worker that has not exited is killed
CGROUP_ROOT = Path("/sys/fs/cgroup")


# -- auto: the CPUs this process may use --------------------------------------------------------


def cpu_quota(cpu_max: str) -> int | None:
    """The CPUs one cgroup v2 ``cpu.max`` allows: ``"QUOTA PERIOD"`` (microseconds) gives
    ``ceil(QUOTA / PERIOD)``, at least 1; ``"max PERIOD"`` (no quota) or anything unreadable gives
    ``None``. The period defaults to 100000, as in the kernel."""
    parts = cpu_max.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def auto_workers(affinity: int, cpu_max: Iterable[str]) -> int:
    """``workers = auto``: *affinity* (the number of CPUs in the process's affinity mask),
    bounded by every cgroup quota in *cpu_max* (``cpu.max`` contents, see :func:`cpu_quota`),
    between 1 and :data:`MAX_WORKERS`."""
    count = affinity
    for text in cpu_max:
        quota = cpu_quota(text)
        if quota is not None:
            count = min(count, quota)
    return max(1, min(count, MAX_WORKERS))


def cgroup_cpu_max(root: Path = CGROUP_ROOT,
                   proc_cgroup: Path = Path("/proc/self/cgroup")) -> list[str]:
    """The ``cpu.max`` files of this process's cgroup (v2) and of its ancestors up to *root*: a
    quota anywhere up the tree applies (a Kubernetes pod's container, a systemd ``CPUQuota=``).
    Missing or unreadable files are left out."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    relative = next((line[3:] for line in lines if line.startswith("0::")), "/")
    directory = root / relative.strip("/")
    texts = []
    while True:
        with suppress(OSError):
            texts.append((directory / "cpu.max").read_text())
        if directory == root or root not in directory.parents:
            return texts
        directory = directory.parent


def available_cpus() -> int:
    """What ``workers = auto`` means on this machine, now (:func:`auto_workers`)."""
    return auto_workers(len(os.sched_getaffinity(0)), cgroup_cpu_max())


# -- restarts -----------------------------------------------------------------------------------


@attrs.define
class Backoff:
    """The delay before restarting a worker that exited: *first* seconds, doubling with every
    exit up to *cap*; back to *first* once a worker had stayed up *stable_after* seconds."""

    first: float = 0.5
    cap: float = 30.0
    stable_after: float = 30.0
    failures: int = 0

    def next_delay(self, uptime: float) -> float:
        """The delay before the next start, for a process that ran *uptime* seconds."""
        if uptime >= self.stable_after:
            self.failures = 0
        delay = min(self.cap, self.first * 2.0 ** self.failures)
        self.failures += 1
        return delay


# -- log relay ----------------------------------------------------------------------------------

_RELAYED = "worker={mtlsgw_worker} {mtlsgw_text}"


def worker_event(number: int, line: bytes, stderr: bool, now: float) -> dict[str, Any]:
    """The log event the supervisor publishes for one *line* worker *number* wrote.

    On stdout a worker writes one line per log event (:class:`gateway.worker.PipeLogObserver`).
    An access line, ``A <time> <level> <line>``, becomes an access event again (namespace
    ``mtlsgw.access``, format ``{access}``) with ``worker=N`` put before the line. Any other event
    is Twisted's JSON: it keeps its namespace, level, time and fields, and its text becomes
    ``worker=N <text>``. Anything else (stderr, a stray print) is a line of namespace
    ``mtlsgw.worker``, at level error for stderr. A request with its JSON log record,
    ``R <JSON [time, level, line, record members]>``, becomes that access event with the
    record's members (``mtlsgw_request``) and ``mtlsgw_worker``; members that are not printable
    ASCII (the encoder never writes a control character) make it a plain line, so that a stray
    print cannot put one into the supervisor's JSON log.
    """
    text = line.decode("utf-8", "replace").rstrip("\r")
    if not stderr and text.startswith("R "):
        with suppress(ValueError, TypeError, InvalidLogLevelError):  # else: a plain line
            when, level, access, members = json.loads(text[2:])
            if isinstance(members, str) and members.isascii() and members.isprintable():
                return {"log_namespace": "mtlsgw.access", "log_format": "{access}",
                        "access": f"worker={number} {access}", "mtlsgw_request": members,
                        "mtlsgw_worker": number, "log_level": LogLevel.levelWithName(level),
                        "log_time": float(when)}
    if not stderr and text.startswith("A "):
        with suppress(ValueError, InvalidLogLevelError):  # else: relayed as a plain line
            _, when, level, access = text.split(" ", 3)
            return {"log_namespace": "mtlsgw.access", "log_format": "{access}",
                    "access": f"worker={number} {access}",
                    "log_level": LogLevel.levelWithName(level), "log_time": float(when)}
    event: Any = None
    if not stderr:
        with suppress(ValueError):
            event = eventFromJSON(text)
    if not isinstance(event, dict) or "log_format" not in event:
        return {"log_format": _RELAYED, "mtlsgw_worker": number, "mtlsgw_text": text,
                "log_namespace": "mtlsgw.worker",
                "log_level": LogLevel.error if stderr else LogLevel.info, "log_time": now}
    if event["log_format"] == "{access}" and isinstance(event.get("access"), str):
        event.pop("log_flattened", None)
        event["access"] = f"worker={number} {event['access']}"
        return event
    formatted = formatEvent(event)
    event.pop("log_flattened", None)  # formatted already; the new format has other fields
    event.update(log_format=_RELAYED, mtlsgw_worker=number, mtlsgw_text=formatted)
    return event


# -- the supervisor -----------------------------------------------------------------------------


class _NoConnections(Factory):
    """The factory of the supervisor's own ports, which never accept (the workers do)."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:  # noqa: N802
        return None


def bind_tcp(listen: str) -> socket.socket:
    """A listening, non-blocking socket for the ``tcp:``/``tcp6:`` description *listen*
    (``interface``, ``backlog`` and ``SO_REUSEADDR`` as Twisted's TCP endpoints have them).
    Raises ``CannotListenError``."""
    from twisted.internet.endpoints import _parseServer

    _parser, args, kwargs = _parseServer(listen, None)
    port = int(args[0])
    default = "::" if listen.lower().startswith("tcp6:") else "0.0.0.0"  # noqa: S104
    interface = str(kwargs.get("interface") or default)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        address = socket.getaddrinfo(interface, port, family, socket.SOCK_STREAM, 0,
                                     socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0][4]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(int(str(kwargs.get("backlog") or 50)))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise CannotListenError(interface, port, exc) from None
    return sock


def bind(reactor: Any, listen: str) -> Any:
    """Open the listener *listen* in this process without accepting on it: a socket from
    :func:`bind_tcp` for ``tcp:``/``tcp6:``, else (``unix:``, ``systemd:``) Twisted's listening
    port, which the reactor does not read. Raises ``CannotListenError``."""
    if listen.split(":", 1)[0].strip().lower() in ("tcp", "tcp6"):
        return bind_tcp(listen)
    results: list[Any] = []
    serverFromString(reactor, listen).listen(_NoConnections()).addBoth(results.append)
    if not results:
        raise RuntimeError(f"{listen}: the endpoint did not listen at once")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    port = results[0]
    reactor.removeReader(port)  # bound and listening; the workers accept
    return port


def reactor_name(reactor: Any) -> str | None:
    """The ``twistd --reactor`` name of *reactor*'s type (``epoll``, ``mtlsgw``, ...), so that
    the workers run the one the supervisor was started with; ``None`` if no plugin names it."""
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    return next((r.shortName for r in getReactorTypes()
                 if getattr(r, "moduleName", None) == module), None)


class _Worker(ProcessProtocol):
    """One running worker process: relays its output, tells the supervisor when it ends."""

    def __init__(self, supervisor: Supervisor, number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.pid = 0  # set once spawned
        self.ready = False  # wrote its first log line: its SIGHUP handler is in place
        self.reload_pending = False
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        *lines, self._partial[childFD] = (self._partial.get(childFD, b"") + data).split(b"\n")
        for line in lines:
            self.supervisor.relay(self.number, line, stderr=childFD == 2)
        if lines and childFD == 1 and not self.ready:
            self.ready = True
            if self.reload_pending:
                self.signal("HUP")
            self.supervisor.worker_ready()

    def signal(self, name: str) -> None:
        with suppress(ProcessExitedAlready, OSError):
            if self.transport is not None:
                self.transport.signalProcess(name)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        for fd, rest in self._partial.items():
            if rest:
                self.supervisor.relay(self.number, rest, stderr=fd == 2)
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


def _how(reason: Failure) -> str:
    signal_number = getattr(reason.value, "signal", None)
    if signal_number:
        return f"signal {signal.Signals(signal_number).name}"
    return f"status {getattr(reason.value, 'exitCode', '?')}"


class Supervisor(Service):
    """The ``workers`` supervisor as a Twisted service (see the module docstring)."""

    log_observer: BufferedLogObserver | None = None  # set by the twistd plugin

    def __init__(self, settings: config.GatewaySettings, reactor: Any) -> None:
        self.settings = settings  # as started: listeners, workers and drain_timeout
        self._reactor = reactor
        self._ports: dict[str, Any] = {}  # by listener name
        self.workers: dict[int, _Worker] = {}  # by worker number, while running
        self._backoff = {n: Backoff() for n in range(1, settings.workers + 1)}
        self._restarts: dict[int, Any] = {}  # pending restarts (IDelayedCall) by number
        self._stopping = False
        self._reactor_name = reactor_name(reactor)
        self.operations: Any = None  # gateway.status.Operations, with [status]
        self._metrics_dir: str | None = None  # where the workers write their metrics
        self._started_all = False  # every worker has been up once
        if settings.status is not None:
            from gateway.status import Operations

            self.operations = Operations(settings, reactor, "supervisor")
            self.operations.readiness.workers = self._workers_down
        self.loaded = settings  # as last validated: the files it names are watched
        self.systemd = SystemdNotifier.from_environ()  # the workers never notify
        self._notified_ready = False
        self._watcher = FileWatcher(reactor, settings.watch_interval,
                                    lambda: watched_files(self.loaded), self.notified_reload
                                    ) if settings.watch_interval else None

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802
        """As :meth:`GatewayService.setServiceParent`: offer twistd the log observer, which then
        buffers the access lines relayed from every worker."""
        super().setServiceParent(parent)
        offer_observer(parent, self.log_observer, self._reactor)

    def privilegedStartService(self) -> None:  # noqa: N802
        super().privilegedStartService()
        from gateway.service import cannot_listen

        if self.operations is not None:  # first, as GatewayService does
            self.operations.listen()
        for listener in self.settings.listeners:
            try:
                # haproxy:tcp:… binds its tcp: socket; each worker adds the PROXY protocol.
                self._ports[listener.name] = bind(self._reactor, listener.socket_listen)
            except CannotListenError as exc:
                cannot_listen(self.settings, exc)

    def startService(self) -> None:  # noqa: N802
        super().startService()
        log.info("mtlsgw supervisor pid={pid}: {count} worker(s){auto}", pid=os.getpid(),
                 count=self.settings.workers, auto=" (auto)" if self.settings.workers_auto else "")
        signal.signal(signal.SIGHUP,
                      lambda *_: self._reactor.callFromThread(self.notified_reload))
        if self.operations is not None:
            # Made here, after twistd dropped privileges: the workers write into it.
            self._metrics_dir = tempfile.mkdtemp(prefix="mtlsgw-metrics-")
            self.operations.metrics.read_workers(self._metrics_dir)
            self.operations.started(self.settings)
        self._reactor.callWhenRunning(self._running)

    def _workers_down(self) -> str | None:
        """Why ``/readyz`` fails for the workers: until every worker has started, and later
        while none is up (one being restarted leaves the others serving); else ``None``."""
        up = sum(1 for worker in self.workers.values() if worker.ready)
        self._started_all = self._started_all or up == self.settings.workers
        if up == 0 or not self._started_all:
            return f"workers starting: {up} of {self.settings.workers} up"
        return None

    def _running(self) -> None:
        # As GatewayService: an orderly, drained stop exits 0 rather than re-raising SIGTERM.
        signal.signal(signal.SIGTERM, lambda *_: self._reactor.callFromThread(self._terminate))
        for number in range(1, self.settings.workers + 1):
            self._spawn(number)
        self.systemd.start_watchdog(self._reactor)
        if self._watcher is not None:
            self._watcher.start()

    def worker_ready(self) -> None:
        """A worker serves: ``READY=1`` to systemd once all of them do, the first time."""
        if self._notified_ready or self._stopping:
            return
        if sum(worker.ready for worker in self.workers.values()) == self.settings.workers:
            self._notified_ready = True
            self.systemd.ready(f"serving with {self.settings.workers} worker(s)")

    def notified_reload(self) -> bool:
        """:meth:`reload`, between ``RELOADING=1`` and ``READY=1`` to systemd (``SIGHUP``,
        ``watch_files``)."""
        self.systemd.reloading()
        ok = self.reload()
        if self._watcher is not None:
            self._watcher.reloaded()  # after a SIGHUP, the watch does not reload again
        self.systemd.reloaded(ok)
        return ok

    def _terminate(self) -> None:
        if self.log_observer is not None:
            self.log_observer.flush()
        with suppress(ReactorNotRunning):  # a second SIGTERM while stopping
            self._reactor.stop()

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self._stopping:
            return
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}  # stdin: the worker's lifeline
        listeners = {}
        for index, listener in enumerate(self.settings.listeners):
            child_fds[3 + index] = self._ports[listener.name].fileno()
            listeners[listener.name] = {"fd": 3 + index, "listen": listener.listen,
                                        "tls": listener.tls}
        args = [sys.executable, "-u", "-m", "gateway.worker", "--config",
                str(self.settings.path), "--number", str(number),
                "--listeners", json.dumps(listeners)]
        if self._reactor_name is not None:
            args += ["--reactor", self._reactor_name]
        # The socket-activation variables describe the supervisor's descriptors, not the worker's.
        # NOTIFY_SOCKET and WATCHDOG_*: only the supervisor talks to systemd.
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", *NOTIFY_VARIABLES)}
        if self._metrics_dir is not None:
            from gateway.status import METRICS_DIR_ENV

            env[METRICS_DIR_ENV] = self._metrics_dir
        worker = _Worker(self, number, self._reactor.seconds())
        process = self._reactor.spawnProcess(worker, sys.executable, args, env=env,
                                             childFDs=child_fds)
        worker.pid = int(process.pid)
        self.workers[number] = worker
        log.info("started worker {number} pid={pid}", number=number, pid=worker.pid)

    def relay(self, number: int, line: bytes, stderr: bool) -> None:
        """Publish one line of worker *number*'s output in this process's log."""
        globalLogPublisher(worker_event(number, line, stderr, self._reactor.seconds()))

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if self.operations is not None:
            self.operations.metrics.retire(worker.pid)  # its counts stay, its gauges go
        if self._stopping:
            log.info("worker {number} pid={pid} exited ({how})", number=worker.number,
                     pid=worker.pid, how=_how(reason))
            return
        delay = self._backoff[worker.number].next_delay(self._reactor.seconds() - worker.started)
        log.warn("worker {number} pid={pid} exited ({how}); restarting it in {delay} s",
                 number=worker.number, pid=worker.pid, how=_how(reason), delay=delay)
        self._restarts[worker.number] = self._reactor.callLater(delay, self._spawn,
                                                                worker.number)

    def reload(self) -> bool:
        """``SIGHUP``: validate the file once, then have every worker reload it.

        Returns ``False`` when the reload is refused (logged once; no worker is signalled).
        """
        from gateway.service import validate

        try:
            new = validate(self.settings.path).settings
        except Exception as exc:  # a ConfigError, or a bug: either way the old state stays
            if not isinstance(exc, config.ConfigError):
                log.failure("reload failed")
                exc = config.ConfigError(f"{self.settings.path}: {type(exc).__name__}: {exc}")
            log.error("reload refused, keeping the running configuration: {error}",
                      error=str(exc), mtlsgw_record=reload_record(
                          "refused", str(self.settings.path), str(exc)))
            if self.operations is not None:
                self.operations.reloaded(None, str(exc))
            return False
        if new.listeners != self.settings.listeners:
            log.error("reload refused: listeners changed (listen, tls); restart to apply",
                      mtlsgw_record=reload_record("refused", str(self.settings.path),
                                                  "listeners changed; restart to apply"))
            if self.operations is not None:
                self.operations.reloaded(None, "listeners changed (listen, tls); restart to "
                                               "apply")
            return False
        if (new.workers, new.workers_auto) != (self.settings.workers, self.settings.workers_auto):
            log.warn("reload: workers changed; that takes effect on restart")
        self.loaded = new
        for worker in self.workers.values():
            if worker.ready:
                worker.signal("HUP")
            else:  # still starting: signal it once its handler is in place
                worker.reload_pending = True
        log.info("reload: {path} is valid; reloading {count} worker(s)",
                 path=str(self.settings.path), count=len(self.workers))
        if self.operations is not None:
            self.operations.reloaded(new, None)
        return True

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Forward ``SIGTERM`` to every worker, wait for them to drain, then close the sockets."""
        if self.operations is not None:
            self.operations.draining()  # /readyz: 503 at once
        super().stopService()
        stopped: Deferred[Any] = Deferred.fromCoroutine(self._stop())
        return stopped

    async def _stop(self) -> None:
        self._stopping = True
        delay = self.settings.limits.drain_delay  # applied by each worker, not here as well
        self.systemd.stopping(f"stopping {len(self.workers)} worker(s): accepting for "
                              f"{delay:g} s more, then draining")
        if self._watcher is not None:
            self._watcher.stop()
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        if workers:
            limit = delay + self.settings.limits.drain_timeout + KILL_GRACE
            log.info("stopping {count} worker(s), waiting up to {limit} s", count=len(workers),
                     limit=limit)
            for worker in workers:
                worker.signal("TERM")
            # A TCP socket goes once the workers have closed theirs too: new connections are
            # refused while the workers drain, as in a single process.
            self._close(tcp_only=True)
            timer = self._reactor.callLater(limit, self._kill_remaining, limit)
            await DeferredList([worker.ended for worker in workers])
            if timer.active():
                timer.cancel()
        await DeferredList(self._close(tcp_only=False))
        if self.operations is not None:
            self.operations.stop()  # the status listener was open until now
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _close(self, tcp_only: bool) -> list[Deferred[Any]]:
        closing = []
        for name, port in list(self._ports.items()):
            if isinstance(port, socket.socket):
                port.close()
            elif not tcp_only:
                closing.append(maybeDeferred(port.stopListening))  # unix: removes the file
            else:
                continue
            del self._ports[name]
        return closing

    def _kill_remaining(self, limit: float) -> None:
        for worker in list(self.workers.values()):
            log.warn("worker {number} pid={pid} still running {limit} s after SIGTERM; "
                     "killing it", number=worker.number, pid=worker.pid, limit=limit)
            worker.signal("KILL")


def make_service(path: str | Path, reactor: Any = None) -> GatewayService | Supervisor:
    """The ``twistd mtlsgw`` service for config file *path*: a :class:`Supervisor` when
    ``workers`` is not 1, else the single-process :class:`~gateway.service.GatewayService`.
    Raises :class:`~gateway.config.ConfigError`."""
    from gateway.service import build

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    settings = config.load(path)
    check_passed_sockets(settings, passed_sockets())
    if settings.supervised:
        return Supervisor(settings, reactor)
    return build(path, reactor)
