"""Processes of a benchmark run: start, readiness, stop, and what /proc says about them
(RSS, peak RSS, CPU)."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartupError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (SO_REUSEPORT allows several): /proc/net/tcp*."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except (OSError, IndexError, ValueError):
            pass
    return n


class Proc:
    """A child in its own session: stop() ends it and all it forked, by its id only."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ):
        self.name = name
        self.argv = argv
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """This process and its descendants (nginx: master and worker)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
        return out

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if len(text) > lines + 5:  # the first lines often hold the error, the last the traceback
            text = [*text[:5], "...", *text[-lines:]]
        return "\n".join(text)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:
            # the leader is gone; make sure nothing it left in its group lingers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._logf.close()


# ------------------------------------------------------------------------------------------------ /


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmRSS") for p in pids)


def hwm_kib(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmHWM") for p in pids)


def reset_peak(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (write 5 to clear_refs); False if not allowed."""
    ok = True
    for p in pids:
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class CpuAccount:
    """Where the machine's CPU went while a measurement ran, in % of one core: the proxy, the
    upstream, the clients (children of this process, reaped meanwhile), this harness, and the
    rest, which is other processes on the machine plus interrupt time nobody is charged for.
    A large "other" marks a run disturbed by something outside the benchmark."""

    def __init__(self, proxy: list[int], upstream: list[int]) -> None:
        self.proxy, self.upstream = proxy, upstream
        self.result: dict[str, float | None] = {}

    @staticmethod
    def _rusage(who: int) -> float:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> CpuAccount:
        self.t0 = time.monotonic()
        self.p0, self.u0 = cpu_seconds(self.proxy), cpu_seconds(self.upstream)
        self.c0 = self._rusage(resource.RUSAGE_CHILDREN)
        self.s0 = self._rusage(resource.RUSAGE_SELF)
        self.m0, self.st0 = machine_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.t0, 1e-6)
        proxy = cpu_seconds(self.proxy) - self.p0
        upstream = cpu_seconds(self.upstream) - self.u0
        clients = self._rusage(resource.RUSAGE_CHILDREN) - self.c0
        harness = self._rusage(resource.RUSAGE_SELF) - self.s0
        busy, steal = machine_cpu()
        other = (busy - self.m0) - proxy - upstream - clients - harness
        pct = 100 / wall
        self.result = {
            "proxy_cpu_pct": proxy * pct if self.proxy else None,
            "upstream_cpu_pct": upstream * pct,
            "client_cpu_pct": clients * pct,
            "other_cpu_pct": max(other, 0.0) * pct,
            "steal_pct": (steal - self.st0) * pct,
        }


class PeakSampler:
    """Samples the summed RSS of `pids` every `interval` s in a thread; .peak_kib is the max."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib = rss_kib(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pids))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_kib(self.pids))


# ------------------------------------------------------------------------------------------- HTTP h


def client_context(cacert: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cacert)
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def http_get(
    url_host: str,
    port: int,
    path: str,
    ctx: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(url_host, port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def wait_ready(proc: Proc, check: Callable[[], bool], deadline_s: float, what: str) -> float:
    """Poll check() (True: ready) every 100 ms until deadline_s; fail fast if the process exits."""
    t0 = time.monotonic()
    last_err = "no attempt"
    while True:
        if not proc.alive():
            raise StartupError(
                f"{what} exited with code {proc.popen.returncode} before it was ready.\n"
                f"command: {' '.join(proc.argv)}\nlast lines of {proc.log}:\n{proc.log_tail()}"
            )
        try:
            if check():
                return time.monotonic() - t0
            last_err = "not ready yet"
        except Exception as exc:
            last_err = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - t0 > deadline_s:
            raise StartupError(
                f"{what} did not answer a mutual-TLS GET within {deadline_s:.0f} s "
                f"(last error: {last_err}).\n"
                f"command: {' '.join(proc.argv)}\nlast lines of {proc.log}:\n{proc.log_tail()}"
            )
        time.sleep(0.1)
