#!/usr/bin/env python3
"""mtlsgw against nginx, both terminating mutual TLS in front of one shared upstream.

Run it through `bench/run`, which installs missing Debian tools and picks the gateway's Python; see
bench/README.md for what is measured and how to read the result. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import pki  # noqa: E402
import procs  # noqa: E402
from procs import Proc, StartupError  # noqa: E402

GIB = 1 << 30
TARGETS = ("mtlsgw", "nginx")
# the order they run in; "multi" is N mtlsgw processes against nginx with N workers (--processes)
SCENARIOS = ("keepalive", "handshake", "latency", "transfer", "idle", "multi")
Run = dict[str, Any]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ setup


def raise_fd_limit(want: int) -> int:
    """Raise the open-files limit (children inherit it) as far as allowed; to `want` if root."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def go_build(src: Path, name: str) -> Path:
    """Build a Go main package into bench/.build/, once per (source, Go version)."""
    go = shutil.which("go")
    if not go:
        raise SystemExit("go is missing: apt-get install -y golang-go (bench/run does it as root)")
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout
    h = hashlib.sha256(version.encode())
    for f in [*sorted(src.glob("*.go")), *sorted(src.glob("go.mod"))]:
        h.update(f.name.encode() + f.read_bytes())
    out = BENCH / ".build" / f"{name}-{h.hexdigest()[:12]}"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        log(f"building {name} from {src}")
        env = dict(os.environ, CGO_ENABLED="0")
        res = subprocess.run(
            [go, "build", "-o", str(out), "."], cwd=src, env=env, capture_output=True, text=True
        )
        if res.returncode:
            raise SystemExit(f"go build of {src} failed:\n{res.stderr}")
    return out


def find_loadgen(arg: str | None) -> Path:
    candidates = (
        [Path(arg)]
        if arg
        else [REPO.parent / "shared/tools/loadgen", Path("/work/shared/tools/loadgen")]
    )
    for c in candidates:
        if (c / "main.go").exists():
            return c
    where = ", ".join(map(str, candidates))
    raise SystemExit(f"loadgen source not found in {where} (use --loadgen-src)")


def fill(template: Path, dest: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    dest.write_text(text)
    return dest


# ------------------------------------------------------------------------------------------ bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[Proc] = []
        self.proxies: dict[str, Proc] = {}  # the single-process proxies
        self.active: dict[str, list[Proc]] = {}  # the processes measured now, per target
        self.run_dir = Path(tempfile.mkdtemp(prefix="mtlsgw-bench-"))
        self.fd_limit = 0
        self.retries_left = args.retries
        settings = {k: v for k, v in vars(args).items() if k != "compare"}
        self.results: dict[str, Any] = {
            "schema": 1,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["bench/run", *sys.argv[1:]]),
            "settings": settings,
            "targets": list(args.targets),
            "checks": {},
            "scenarios": {},
        }

    # ---- processes -----------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, argv, self.run_dir / f"{name}.log", env=env, cwd=str(REPO))
        self.procs.append(p)
        return p

    def stop_proc(self, p: Proc) -> None:
        p.stop()
        self.procs.remove(p)

    def proxy_pids(self, target: str) -> list[int]:
        """The measured proxy's processes: every mtlsgw process, nginx's master and workers."""
        return [pid for p in self.active.get(target, []) for pid in p.pids()]

    def check_alive(self) -> None:
        for ps in self.active.values():
            for p in ps:
                if not p.alive():
                    raise SystemExit(f"{p.name} died during the run; its log ends:\n{p.log_tail()}")

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def setup(self) -> None:
        a = self.args
        self.fd_limit = raise_fd_limit(65536)
        if "idle" in a.scenarios and self.fd_limit < a.idle_conns * 2 + 1000:
            log(f"warning: open-files limit {self.fd_limit} may not fit {a.idle_conns} connections")
        self.loadgen = go_build(find_loadgen(a.loadgen_src), "loadgen")
        self.upstream_bin = go_build(BENCH / "upstream", "upstream")
        self.pki = pki.make_pki(self.run_dir / "pki")
        self.results["pki"] = {
            k: v for k, v in self.pki.items() if k.startswith(("client_s", "algorithm"))
        }
        self.ctx = procs.client_context(
            self.pki["server_ca"], self.pki["client_crt"], self.pki["client_key"]
        )
        self.blob = self.sparse_file(a.transfer_bytes)

        self.ports = {name: procs.free_port() for name in ("upstream", *TARGETS)}
        self.values = values = {
            "RUN": str(self.run_dir),
            "PKI": self.pki["dir"],
            "UPSTREAM_PORT": str(self.ports["upstream"]),
            "USER": "user root;" if os.geteuid() == 0 else "",
        }

        up = self.start(
            "upstream",
            [str(self.upstream_bin), "-listen", f"127.0.0.1:{self.ports['upstream']}"],
            env=dict(os.environ, GOMAXPROCS=str(a.upstream_procs)),
        )
        procs.wait_ready(up, lambda: self.upstream_stats() is not None, 15, "the upstream")
        self.upstream = up

        if "nginx" in a.targets:
            self.proxies["nginx"] = self.start_nginx(dict(values, PORT=str(self.ports["nginx"])))
        if "mtlsgw" in a.targets:
            values = dict(values, PORT=str(self.ports["mtlsgw"]), REUSE_PORT="")
            ini = fill(BENCH / "conf/mtlsgw.ini", self.run_dir / "mtlsgw.ini", values)
            self.proxies["mtlsgw"] = self.start_mtlsgw(ini)
        self.active = {t: [p] for t, p in self.proxies.items()}

    def start_nginx(self, values: dict[str, str], workers: int = 1) -> Proc:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise SystemExit(
                "nginx is missing: apt-get install -y nginx (bench/run does it as root)"
            )
        name = "nginx" if workers == 1 else f"nginx-{workers}w"
        stem = "nginx-edge" if workers == 1 else f"nginx-edge-{workers}w"
        values = dict(values, WORKERS=str(workers), NAME=stem)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / f"{stem}-tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = fill(BENCH / "conf/nginx-edge.conf", self.run_dir / f"{stem}.conf", values)
        errlog = self.run_dir / f"{stem}.error.log"
        argv = [nginx, "-p", str(self.run_dir), "-c", str(conf), "-e", str(errlog)]
        p = self.start(name, argv)

        def ready() -> bool:  # answers, and the master has forked all its workers
            return self._ready("nginx") and len(p.pids()) >= workers + 1

        took = procs.wait_ready(p, ready, 20, name)
        log(f"{name} is up on 127.0.0.1:{self.ports['nginx']} ({took:.1f} s)")
        return p

    def start_mtlsgw(self, ini: Path, name: str = "mtlsgw", listeners: int = 1) -> Proc:
        """Start one mtlsgw process; ready once it answers and `listeners` sockets listen on the
        port (with reuse_port each process has its own, so the i-th process makes i)."""
        a = self.args
        if a.gateway_cmd:
            argv = [part.replace("{config}", str(ini)) for part in a.gateway_cmd.split()]
        else:
            # what the twistd script does, with this Python (no need to find the script)
            twistd = "import sys; from twisted.scripts.twistd import run; "
            twistd += "sys.argv[0] = 'twistd'; run()"
            argv = [sys.executable, "-c", twistd, "--nodaemon", "--pidfile="]
            argv += ["mtlsgw", "--config", str(ini)]
        path = [str(REPO), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        p = self.start(name, argv, env=env)
        port = self.ports["mtlsgw"]

        def ready() -> bool:
            return procs.listening_sockets(port) >= listeners and self._ready("mtlsgw")

        took = procs.wait_ready(p, ready, a.gateway_timeout, name)
        log(f"{name} is up on 127.0.0.1:{port} ({took:.1f} s): {' '.join(argv)}")
        return p

    def _ready(self, target: str) -> bool:
        port = self.ports[target]
        return procs.http_get("127.0.0.1", port, "/small", self.ctx, timeout=2)[0] == 200

    def sparse_file(self, size: int) -> Path:
        """A file of `size` zero bytes that occupies no disk: reading it costs no I/O."""
        path = self.run_dir / f"upload-{size}.bin"
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size)
        return path

    def url(self, target: str, path: str) -> str:
        if target == "direct":
            return f"http://127.0.0.1:{self.ports['upstream']}{path}"
        return f"https://127.0.0.1:{self.ports[target]}{path}"

    def upstream_stats(self) -> dict[str, int]:
        stats: dict[str, int] = json.loads(
            procs.http_get("127.0.0.1", self.ports["upstream"], "/__stats")[1]
        )
        return stats

    def cert_args(self) -> list[str]:
        p = self.pki
        return ["--cert", p["client_crt"], "--key", p["client_key"], "--cacert", p["server_ca"]]

    # ---- checks: same verification, same headers ---------------------------------------------

    def checks(self) -> None:
        spoof = {"X-Client-CN": "spoofed-by-client", "X-Client-Verify": "SUCCESS"}
        ident: dict[str, Any] = {}
        for t in self.args.targets:
            st, body, _ = procs.http_get("127.0.0.1", self.ports[t], "/headers", self.ctx, 5, spoof)
            seen: dict[str, list[str]] = json.loads(body)["headers"] if st == 200 else {}
            ident[t] = {
                "status": st,
                "identity_headers": {
                    k: v for k, v in sorted(seen.items()) if k.lower().startswith("x-client-")
                },
                "other_headers": sorted(k for k in seen if not k.lower().startswith("x-client-")),
            }
            if any("spoofed-by-client" in v for vs in seen.values() for v in vs):
                log(f"WARNING: {t} forwarded the client's own X-Client-CN header")
            shown = "; ".join(
                f"{k}: {', '.join(v)}" for k, v in ident[t]["identity_headers"].items()
            )
            log(f"{t} forwards {shown}")
        self.results["checks"]["identity_headers"] = ident

        nocert = procs.client_context(self.pki["server_ca"])
        rejected = {}
        for t in self.args.targets:
            before = self.upstream_stats()["requests"]
            try:
                outcome = f"HTTP {procs.http_get('127.0.0.1', self.ports[t], '/small', nocert)[0]}"
            except Exception as exc:  # the expected outcome for mtlsgw: the handshake fails
                outcome = f"{type(exc).__name__}: {exc}"
            reached = self.upstream_stats()["requests"] - before
            rejected[t] = {"outcome": outcome, "reached_upstream": reached}
            log(f"{t} without a client certificate: {outcome}; reached upstream: {reached}")
            if reached:
                raise SystemExit(f"{t} forwarded a request without a client certificate")
        self.results["checks"]["no_client_certificate"] = rejected

        expect = {}
        for t in self.args.targets:
            r = self.curl(t, "/upload", upload=self.sparse_file(2 << 20), expect=True, max_time=15)
            expect[t] = {k: r.get(k) for k in ("http_code", "time_total", "error")}
            log(
                f"{t}: 2 MiB upload with 'Expect: 100-continue': HTTP {r.get('http_code')} "
                f"in {r.get('time_total')} s"
            )
        self.results["checks"]["expect_100_continue_2MiB"] = expect

    # ---- drivers -------------------------------------------------------------------------------

    def loadgen_run(self, target: str, conc: int, seconds: float, keepalive: bool = True) -> Run:
        p = self.pki
        argv = [str(self.loadgen), "-url", self.url(target, "/small"), "-cert", p["client_crt"]]
        argv += ["-key", p["client_key"], "-cacert", p["server_ca"], "-c", str(conc)]
        argv += ["-d", f"{seconds}s", f"-keepalive={'true' if keepalive else 'false'}"]
        return self.measured(target, lambda: json_cmd(argv, seconds + 60))

    def rate_run(self, target: str) -> Run:
        a = self.args
        argv = [sys.executable, str(BENCH / "aioclient.py"), "rate"]
        argv += ["--url", self.url(target, "/small"), "--rate", str(a.latency_rate)]
        argv += ["--duration", str(a.latency_duration), "--conns", str(a.latency_conns)]
        if target != "direct":
            argv += self.cert_args()
        return self.measured(target, lambda: json_cmd(argv, a.latency_duration + 90))

    def curl(
        self,
        target: str,
        path: str,
        upload: Path | None = None,
        expect: bool = False,
        max_time: float = 120,
    ) -> Run:
        resp = self.run_dir / "curl-response.txt"
        resp.unlink(missing_ok=True)
        p = self.pki
        argv = ["curl", "-sS", "--http1.1", "--cert", p["client_crt"], "--key", p["client_key"]]
        argv += ["--cacert", p["server_ca"], "--max-time", str(max_time), "-w", "%{json}"]
        argv += ["-o", str(resp) if upload else "/dev/null"]
        if upload:
            argv += ["-T", str(upload)]
            if not expect:
                argv += ["-H", "Expect:"]
        argv.append(self.url(target, path))
        res = subprocess.run(argv, capture_output=True, text=True, timeout=max_time + 30)
        try:
            full = json.loads(res.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            full = {}
        keys = ("http_code", "size_download", "size_upload", "time_total", "time_appconnect")
        out: Run = {k: full.get(k) for k in keys}
        if res.returncode:
            out["error"] = (res.stderr.strip() or f"curl exit {res.returncode}")[-300:]
        if upload and resp.exists():
            with contextlib.suppress(json.JSONDecodeError):
                out["upstream_received"] = json.loads(resp.read_text() or "{}").get("received")
        return out

    def measured(self, target: str, fn: Callable[[], Run]) -> Run:
        """Run fn() and add the proxy's CPU use and the upstream connections opened meanwhile."""
        pids = self.proxy_pids(target)
        each0 = {pid: procs.cpu_seconds([pid]) for pid in pids}
        s0 = self.upstream_stats()
        t0 = time.monotonic()
        with procs.CpuAccount(pids, self.upstream.pids()) as cpu:
            out = fn()
        wall = max(time.monotonic() - t0, 1e-6)
        s1 = self.upstream_stats()
        out.update(cpu.result)
        if len(pids) > 1:
            # how the work spread over the processes (nginx: the master's share is near 0)
            each = [100 * (procs.cpu_seconds([pid]) - c) / wall for pid, c in each0.items()]
            out["proxy_cpu_pct_each"] = sorted(each, reverse=True)
        # less the connection that fetched s1 itself
        out["upstream_conns_opened"] = s1["conns_opened"] - s0["conns_opened"] - 1
        out["upstream_requests"] = s1["requests"] - s0["requests"]
        out["proxy_rss_mib"] = procs.rss_kib(pids) / 1024 if pids else None
        if out.get("rps") and out.get("proxy_cpu_pct"):
            # throughput per core the proxy really used: comparable even when the client, not the
            # proxy, was the bottleneck (they share this machine's cores)
            out["rps_per_core"] = out["rps"] / (out["proxy_cpu_pct"] / 100)
        return out

    # ---- scenarios -----------------------------------------------------------------------------

    def alternate(
        self,
        name: str,
        fn: Callable[[str], Run],
        targets: list[str] | None = None,
        rounds: int | None = None,
    ) -> None:
        """Run fn(target) as A B A B ..., keeping every run.

        A round during which other work on the machine used more than --noisy-threshold of a core
        is marked noisy (left out of the medians) and repeated, while --retries lasts."""
        a = self.args
        runs: list[Run] = []
        r = clean = 0
        while clean < (rounds or a.rounds):
            r += 1
            batch = []
            for t in targets or a.targets:
                out = fn(t)
                out.update(round=r, target=t)
                batch.append(out)
                log(f"{name} round {r} {t}: {summarize(out)}")
            runs.extend(batch)
            other = max((o.get("other_cpu_pct") or 0.0) for o in batch)
            if other > a.noisy_threshold and self.retries_left > 0:
                self.retries_left -= 1
                for o in batch:
                    o["noisy"] = True
                log(f"{name} round {r}: other work used {other:.0f}% of a core; repeating it")
                self.settle()
            else:
                clean += 1
        self.results["scenarios"][name] = {"runs": runs}

    def settle(self, limit: float = 20.0) -> float:
        """Wait up to `limit` seconds for other work to fall below --noisy-threshold."""
        deadline = time.monotonic() + limit
        while True:
            with procs.CpuAccount([], []) as cpu:
                time.sleep(2)
            load = cpu.result["other_cpu_pct"] or 0.0
            if load <= self.args.noisy_threshold or time.monotonic() >= deadline:
                return load

    def warmup(self) -> None:
        for t in self.args.targets:
            out = self.loadgen_run(t, self.args.concurrency, self.args.warmup)
            log(f"warm-up {t}: {summarize(out)}")

    def sc_keepalive(self) -> None:
        a = self.args
        direct = self.loadgen_run("direct", a.concurrency, a.duration)
        log(f"upstream alone (plain HTTP, keep-alive, c={a.concurrency}): {summarize(direct)}")
        self.results["upstream_capacity"] = direct
        self.alternate("keepalive", lambda t: self.loadgen_run(t, a.concurrency, a.duration))

    def sc_handshake(self) -> None:
        a = self.args
        conc = a.handshake_concurrency
        self.alternate("handshake", lambda t: self.loadgen_run(t, conc, a.duration, False))

    def sc_latency(self) -> None:
        self.alternate("latency", self.rate_run, targets=["direct", *self.args.targets])

    def transfer(self, t: str, direction: str) -> Run:
        a = self.args
        n = a.transfer_bytes
        pids = self.proxy_pids(t)
        base = procs.rss_kib(pids)
        hwm_ok = procs.reset_peak(pids)
        with procs.CpuAccount(pids, self.upstream.pids()) as cpu, procs.PeakSampler(pids) as peak:
            if direction == "upload":
                r = self.curl(t, "/upload", upload=self.blob, max_time=a.transfer_timeout)
            else:
                r = self.curl(t, f"/download?bytes={n}", max_time=a.transfer_timeout)
        r.update(cpu.result)
        secs = r.get("time_total") or 0
        moved = r.get("upstream_received") if direction == "upload" else r.get("size_download")
        complete = moved == n and r.get("http_code") == 200 and "error" not in r
        peak_kib = max(peak.peak_kib, procs.hwm_kib(pids) if hwm_ok else 0)
        r.update(
            direction=direction,
            bytes=n,
            complete=complete,
            mb_per_s=(n / secs / 1e6) if complete and secs else None,
            rss_before_mib=base / 1024,
            peak_rss_mib=peak_kib / 1024,
            peak_source=("VmHWM after clear_refs, and " if hwm_ok else "") + "20 Hz sampling",
        )
        return r

    def sc_transfer(self) -> None:
        self.alternate("upload", lambda t: self.transfer(t, "upload"))
        self.alternate("download", lambda t: self.transfer(t, "download"))

    def idle(self, t: str) -> Run:
        a = self.args
        time.sleep(1)
        base = procs.rss_kib(self.proxy_pids(t))
        argv = [sys.executable, str(BENCH / "aioclient.py"), "idle", "--url", self.url(t, "/small")]
        argv += ["-n", str(a.idle_conns), "--hold", str(a.idle_hold_max), *self.cert_args()]
        drv = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            est = read_json_line(drv, a.idle_hold_max) or {}
            if not est.get("established"):
                return {"error": f"no connection established: {est or 'driver gave no answer'}"}
            pids = self.proxy_pids(t)
            samples = []
            for _ in range(max(4, int(a.idle_settle / 0.25))):  # settle, sampling as it goes
                time.sleep(0.25)
                samples.append(procs.rss_kib(pids))
            rss = statistics.median(samples[-4:])
            assert drv.stdin is not None
            drv.stdin.write("check\n")
            drv.stdin.flush()
            chk = read_json_line(drv, 60) or {}
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                drv.wait(30)
            if drv.poll() is None:
                os.killpg(drv.pid, signal.SIGKILL)
                drv.wait()
        time.sleep(1)
        n = est["established"]
        return {
            "connections": n,
            "open_errors": est.get("errors"),
            "error_sample": est.get("error_sample"),
            "open_seconds": est.get("seconds"),
            "still_open_at_check": chk.get("still_open"),
            "closed_by_server": chk.get("closed_by_server"),
            "probed": chk.get("probed"),
            "probe_ok": chk.get("probe_ok"),
            "rss_before_mib": base / 1024,
            "rss_mib": rss / 1024,
            "kib_per_conn": (rss - base) / n,
            "rss_after_close_mib": procs.rss_kib(self.proxy_pids(t)) / 1024,
        }

    def sc_idle(self) -> None:
        self.alternate("idle", self.idle, rounds=self.args.idle_rounds)

    def sc_multi(self) -> None:
        """N against N: N mtlsgw processes with reuse_port = yes on one port (otherwise the same
        configuration) against nginx with worker_processes N; keep-alive and new-connection runs."""
        a = self.args
        n = a.processes
        self.check_alive()
        for p in self.proxies.values():  # done with the single-process proxies
            self.stop_proc(p)
        self.active = {}
        self.ports.update({t: procs.free_port() for t in a.targets})
        if "nginx" in a.targets:
            values = dict(self.values, PORT=str(self.ports["nginx"]))
            self.active["nginx"] = [self.start_nginx(values, workers=n)]
        if "mtlsgw" in a.targets:
            values = dict(
                self.values, PORT=str(self.ports["mtlsgw"]), REUSE_PORT="reuse_port = yes"
            )
            ini = fill(BENCH / "conf/mtlsgw.ini", self.run_dir / f"mtlsgw-{n}p.ini", values)
            self.active["mtlsgw"] = [
                self.start_mtlsgw(ini, f"mtlsgw-{n}p-{i}", listeners=i) for i in range(1, n + 1)
            ]
        self.warmup()
        conc, hconc = a.concurrency, a.handshake_concurrency
        self.alternate("multi_keepalive", lambda t: self.loadgen_run(t, conc, a.duration))
        self.alternate("multi_handshake", lambda t: self.loadgen_run(t, hconc, a.duration, False))
        self.check_alive()

    # ---- the run -------------------------------------------------------------------------------

    def wait_quiet(self) -> None:
        """Record the machine's background load; with --wait-quiet S, wait up to S seconds for it
        to fall below --quiet-threshold (% of one core) before starting."""
        a = self.args
        deadline = time.monotonic() + a.wait_quiet
        while True:
            with procs.CpuAccount([], []) as cpu:
                time.sleep(2)
            load = cpu.result["other_cpu_pct"] or 0.0
            if load <= a.quiet_threshold or time.monotonic() >= deadline:
                break
            log(f"machine busy with other work ({load:.0f}% of a core); waiting for quiet")
        self.results["background_cpu_pct_at_start"] = round(load, 1)
        if load > a.quiet_threshold:
            log(f"warning: other work is using {load:.0f}% of a core: expect noisy numbers")

    def run(self) -> dict[str, Any]:
        try:
            self.wait_quiet()
            self.setup()
            self.results["machine"] = machine_info(self)
            self.checks()
            self.warmup()
            for s in SCENARIOS:
                if s in self.args.scenarios:
                    log(f"--- {s}")
                    getattr(self, f"sc_{s}")()
            self.check_alive()
        finally:
            for t, p in self.proxies.items():
                self.results.setdefault("logs", {})[t] = p.log_tail(15)
                self.results.setdefault("log_lines", {})[t] = count_lines(p.log)
            if "multi" in self.args.scenarios:
                multi = self.results.setdefault("multi", {"processes": self.args.processes})
                for p in (p for ps in self.active.values() for p in ps):
                    if p not in self.proxies.values():
                        multi.setdefault("logs", {})[p.name] = p.log_tail(15)
                        multi.setdefault("log_lines", {})[p.name] = count_lines(p.log)
            self.stop_all()
            if self.args.keep:
                log(f"kept {self.run_dir}")
            else:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        self.results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return self.results


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def json_cmd(argv: list[str], timeout: float) -> Run:
    """Run a driver that prints one JSON line; a failure becomes {"error": ...}."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        return {"error": (res.stderr.strip() or f"exit {res.returncode}")[-500:]}
    out: Run = json.loads(lines[-1])
    return out


def read_json_line(p: subprocess.Popen[str], timeout: float) -> Run | None:
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = p.stdout.readline()
        if not line:
            return None
        with contextlib.suppress(json.JSONDecodeError):
            out: Run = json.loads(line)
            return out
    return None


SUMMARY_FIELDS = (
    ("rps", "{:.0f} req/s"),
    ("achieved_rps", "{:.0f} req/s"),
    ("p50_ms", "p50 {:.2f} ms"),
    ("p99_ms", "p99 {:.2f} ms"),
    ("mb_per_s", "{:.0f} MB/s"),
    ("peak_rss_mib", "peak RSS {:.0f} MiB"),
    ("rss_mib", "RSS {:.1f} MiB"),
    ("kib_per_conn", "{:.1f} KiB/conn"),
    ("proxy_cpu_pct", "proxy CPU {:.0f}%"),
    ("upstream_conns_opened", "upstream conns {}"),
    ("errors", "errors {}"),
    ("connections", "{} conns"),
    ("closed_by_server", "closed {}"),
)


def summarize(out: Run) -> str:
    if out.get("error") and out.get("complete") is None:
        return f"ERROR {out['error']}"
    parts = [fmt.format(out[k]) for k, fmt in SUMMARY_FIELDS if out.get(k) is not None]
    if out.get("complete") is False:
        parts.append(f"INCOMPLETE http={out.get('http_code')} {out.get('error', '')}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------- machine


def _cmd(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip()


def _field(text: str, prefix: str, sep: str = ":") -> str:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line.split(sep, 1)[1].strip().strip('"')
    return ""


GATEWAY_VERSIONS = (
    "import sys, twisted, OpenSSL, cryptography; from OpenSSL import SSL; "
    "print(f'Python {sys.version.split()[0]}, Twisted {twisted.__version__}, "
    "pyOpenSSL {OpenSSL.__version__}, cryptography {cryptography.__version__}, '"
    " + SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode())"
)


def machine_info(b: Bench) -> dict[str, Any]:
    cpuinfo = read_text("/proc/cpuinfo")
    mem_kib = int((_field(read_text("/proc/meminfo"), "MemTotal") or "0 kB").split()[0])
    nginx_v = _cmd([shutil.which("nginx") or "/usr/sbin/nginx", "-V"]).splitlines()
    commit = _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "twisted"])
    curl = _cmd(["curl", "--version"]).splitlines()
    return {
        "cpu": _field(cpuinfo, "model name"),
        "cores": os.cpu_count(),
        "virtualized": " hypervisor" in _field(cpuinfo, "flags"),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": _field(read_text("/etc/os-release"), "PRETTY_NAME", "="),
        "kernel": platform.release(),
        "gateway_stack": _cmd([sys.executable, "-c", GATEWAY_VERSIONS]),
        "nginx": " / ".join(x for x in nginx_v if x.startswith(("nginx version", "built with"))),
        "go": _cmd(["go", "version"]),
        "curl": curl[0] if curl else "",
        "mtlsgw_commit": (commit if commit and "fatal" not in commit else "none yet")
        + (", with uncommitted changes" if dirty and "fatal" not in dirty else ""),
        "open_files_limit": b.fd_limit,
    }


# ---------------------------------------------------------------------------------------- summary


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{max(digits, 1)}f}"


def runs_of(res: dict[str, Any], scen: str, target: str) -> list[Run]:
    runs: list[Run] = res["scenarios"].get(scen, {}).get("runs", [])
    return [r for r in runs if r["target"] == target]


def scen_median(
    res: dict[str, Any], scen: str, target: str, key: str, complete: bool = False
) -> float | None:
    """The median of `key` over a scenario's runs of one target, leaving out noisy rounds."""
    runs = [r for r in runs_of(res, scen, target) if not r.get("error") or complete]
    runs = [r for r in runs if not r.get("noisy")]
    if complete:
        runs = [r for r in runs if r.get("complete")]
    return median([r.get(key) for r in runs])


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and a >= 0 and b > 0 else None


# What is measured both one against one and N against N: (scenario, key, label, unit, digits).
# The proxy CPU rows appear only in the N-against-N table of docs/performance.md.
SCALED = (
    ("keepalive", "rps", "keep-alive small GET, {c} connections", "req/s", 0),
    ("keepalive", "p50_ms", "keep-alive small GET: p50 latency", "ms", 2),
    ("keepalive", "p99_ms", "keep-alive small GET: p99 latency", "ms", 2),
    ("keepalive", "rps_per_core", "keep-alive small GET per core of proxy CPU", "req/s", 0),
    ("keepalive", "proxy_cpu_pct", "keep-alive small GET: proxy CPU, all processes", "%", 0),
    ("handshake", "rps", "new mTLS connection per request, {hc} at once", "req/s", 0),
    (
        "handshake",
        "rps_per_core",
        "new mTLS connection per request per core of proxy CPU",
        "req/s",
        0,
    ),
    (
        "handshake",
        "proxy_cpu_pct",
        "new mTLS connection per request: proxy CPU, all processes",
        "%",
        0,
    ),
)


def multi_label(res: dict[str, Any]) -> str:
    n = res["settings"].get("processes") or 0
    return f"{n} processes / {n} workers"


def summary_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: per metric the median over rounds for each target, and mtlsgw / nginx."""
    sc = res["scenarios"]
    s = res["settings"]
    rows: list[dict[str, Any]] = []

    def med(scen: str, target: str, key: str, complete: bool = False) -> float | None:
        return scen_median(res, scen, target, key, complete)

    def add(label: str, scen: str, key: str, unit: str, digits: int = 0, **kw: Any) -> None:
        if scen in sc:
            vals = {t: med(scen, t, key, **kw) for t in TARGETS}
            rows.append({"metric": label, "unit": unit, "digits": digits, **vals})

    add(f"keep-alive small GET, {s['concurrency']} connections", "keepalive", "rps", "req/s")
    add("keep-alive small GET: p50 latency", "keepalive", "p50_ms", "ms", 2)
    add("keep-alive small GET: p99 latency", "keepalive", "p99_ms", "ms", 2)
    add("keep-alive small GET per core of proxy CPU", "keepalive", "rps_per_core", "req/s")
    hc = s["handshake_concurrency"]
    add(f"new mTLS connection per request, {hc} at once", "handshake", "rps", "req/s")
    add(
        "new mTLS connection per request per core of proxy CPU",
        "handshake",
        "rps_per_core",
        "req/s",
    )
    if "latency" in sc:
        rate = s["latency_rate"]
        for q in ("p50", "p99"):
            add(f"latency at {rate:.0f} req/s: {q}", "latency", f"{q}_ms", "ms", 2)
        for q in ("p50", "p99"):
            # each round's proxied value minus the same round's direct value, then the median
            direct = {
                r["round"]: r.get(f"{q}_ms")
                for r in runs_of(res, "latency", "direct")
                if not r.get("noisy")
            }
            vals: dict[str, float | None] = {}
            for t in TARGETS:
                diffs = [
                    r[f"{q}_ms"] - direct[r["round"]]
                    for r in runs_of(res, "latency", t)
                    if r.get(f"{q}_ms") is not None and direct.get(r["round"]) is not None
                ]
                vals[t] = median(diffs)
            label = f"added latency at {rate:.0f} req/s: {q} (proxied − direct, per round)"
            rows.append({"metric": label, "unit": "ms", "digits": 2, **vals})
    size = transfer_size(s["transfer_bytes"])
    add(f"{size} upload", "upload", "mb_per_s", "MB/s", complete=True)
    add(f"{size} upload: peak RSS", "upload", "peak_rss_mib", "MiB", 1)
    add(f"{size} download", "download", "mb_per_s", "MB/s", complete=True)
    add(f"{size} download: peak RSS", "download", "peak_rss_mib", "MiB", 1)
    n = s["idle_conns"]
    add(f"{n:,} idle mTLS connections: RSS", "idle", "rss_mib", "MiB", 1)
    add(f"{n:,} idle mTLS connections: per connection", "idle", "kib_per_conn", "KiB", 1)
    single = len(rows)
    for scen, key, label, unit, digits in SCALED:
        if key != "proxy_cpu_pct":
            text = label.format(c=s["concurrency"], hc=s["handshake_concurrency"])
            add(f"{multi_label(res)}: {text}", f"multi_{scen}", key, unit, digits)
    for r in rows[single:]:
        r["processes"] = s["processes"]
    for r in rows:
        r["ratio"] = ratio(r.get("mtlsgw"), r.get("nginx"))
    return rows


def transfer_size(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / (1 << 20):g} MiB"


def health_rows(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What tells whether a number can be trusted: CPU use, errors, upstream connection reuse."""
    sc = res["scenarios"]
    out: list[tuple[str, str, str]] = []

    def row(label: str, scen: str, f: Callable[[list[Run]], str]) -> None:
        if scen in sc:
            cells = [f(rr) if (rr := runs_of(res, scen, t)) else "—" for t in TARGETS]
            out.append((label, cells[0], cells[1]))

    def cpu(rr: list[Run]) -> str:
        m = median([r.get("proxy_cpu_pct") for r in rr if not r.get("noisy")])
        return f"{m:.0f}%" if m is not None else "—"

    def errors(rr: list[Run]) -> str:
        e = sum((r.get("errors") or 0) + (1 if r.get("error") else 0) for r in rr)
        bad = sum(v for r in rr for k, v in (r.get("status") or {}).items() if k != "200")
        return f"{e}" + (f" (+{bad} non-200)" if bad else "")

    def reuse(rr: list[Run]) -> str:
        req = sum(r.get("upstream_requests") or 0 for r in rr)
        con = sum(r.get("upstream_conns_opened") or 0 for r in rr)
        return f"{1000 * con / req:.1f}" if req else "—"

    def idle(rr: list[Run]) -> str:
        return ", ".join(
            f"{r.get('still_open_at_check')} / {r.get('closed_by_server')}" for r in rr
        )

    def complete(rr: list[Run]) -> str:
        return f"{sum(1 for r in rr if r.get('complete'))} / {len(rr)}"

    def split(rr: list[Run]) -> str:
        # per process, busiest first: the median over rounds of the busiest, the second, …
        each = [
            r["proxy_cpu_pct_each"]
            for r in rr
            if r.get("proxy_cpu_pct_each") and not r.get("noisy")
        ]
        n = res["settings"].get("processes") or 0
        parts = [median([e[i] for e in each if len(e) > i]) for i in range(n)]
        return " + ".join(f"{v:.0f}%" for v in parts if v is not None) or "—"

    m = multi_label(res)
    names = {
        "keepalive": "keep-alive GET",
        "handshake": "new connection per request",
        "latency": "fixed-rate latency",
        "upload": "upload",
        "download": "download",
        "multi_keepalive": f"{m}: keep-alive GET",
        "multi_handshake": f"{m}: new connection per request",
    }
    conn_scens = ("keepalive", "handshake", "latency", "multi_keepalive", "multi_handshake")

    def other(rr: list[Run]) -> str:
        kept = [r for r in rr if not r.get("noisy")]
        o = median([r.get("other_cpu_pct") for r in kept])
        st = median([r.get("steal_pct") for r in kept])
        txt = "—" if o is None else f"{o:.0f}%" + (f" (steal {st:.0f}%)" if st and st >= 1 else "")
        repeated = sum(1 for r in rr if r.get("noisy"))
        return txt + (f"; {repeated} disturbed run(s) repeated" if repeated else "")

    for scen, label in names.items():
        row(f"{label}: proxy CPU (100% = one core)", scen, cpu)
    for scen, label in names.items():
        row(f"{label}: CPU used outside the benchmark", scen, other)
    for scen in ("multi_keepalive", "multi_handshake"):
        label = f"{names[scen]}: proxy CPU per process, busiest first (nginx: workers)"
        row(label, scen, split)
    for scen in conn_scens:
        row(f"{names[scen]}: upstream connections opened per 1,000 requests", scen, reuse)
    for scen in conn_scens:
        row(f"{names[scen]}: errors, all rounds", scen, errors)
    row("idle connections still open / closed by the proxy when checked", "idle", idle)
    row("upload: complete transfers / runs", "upload", complete)
    row("download: complete transfers / runs", "download", complete)
    return out


def table_markdown(res: dict[str, Any]) -> str:
    """The one-against-one rows (the N-against-N ones have their own table)."""
    lines = [
        "| metric | mtlsgw (1 process) | nginx (1 worker) | mtlsgw / nginx |",
        "|---|--:|--:|--:|",
    ]
    for r in summary_rows(res):
        if r.get("processes"):
            continue
        d = r["digits"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
        a, b = fmt_num(r["mtlsgw"], d), fmt_num(r["nginx"], d)
        lines.append(f"| {r['metric']} ({r['unit']}) | {a} | {b} | {ratio} |")
    return "\n".join(lines)


def multi_markdown(res: dict[str, Any]) -> str:
    """One against one beside N against N, and what N processes / workers gave over one."""
    s = res["settings"]
    n = s.get("processes") or 0
    lines = [
        f"| metric | mtlsgw ×1 | nginx ×1 | mtlsgw / nginx ×1 | mtlsgw ×{n} | nginx ×{n} "
        f"| mtlsgw / nginx ×{n} | mtlsgw ×{n} / ×1 | nginx ×{n} / ×1 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def r2(x: float | None) -> str:
        return f"{x:.2f}" if x is not None else "—"

    for scen, key, label, unit, d in SCALED:
        one = {t: scen_median(res, scen, t, key) for t in TARGETS}
        many = {t: scen_median(res, f"multi_{scen}", t, key) for t in TARGETS}
        text = label.format(c=s["concurrency"], hc=s["handshake_concurrency"])
        cells = [
            fmt_num(one["mtlsgw"], d),
            fmt_num(one["nginx"], d),
            r2(ratio(one["mtlsgw"], one["nginx"])),
            fmt_num(many["mtlsgw"], d),
            fmt_num(many["nginx"], d),
            r2(ratio(many["mtlsgw"], many["nginx"])),
            r2(ratio(many["mtlsgw"], one["mtlsgw"])),
            r2(ratio(many["nginx"], one["nginx"])),
        ]
        if unit == "%":
            for i, v in (
                (0, one["mtlsgw"]),
                (1, one["nginx"]),
                (3, many["mtlsgw"]),
                (4, many["nginx"]),
            ):
                cells[i] = f"{v:.0f}%" if v is not None else "—"
            lines.append(f"| {text} (100% = one core) | " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {text} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def health_markdown(res: dict[str, Any]) -> str:
    lines = ["| check | mtlsgw | nginx |", "|---|--:|--:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in health_rows(res)]
    return "\n".join(lines)


def table_text(res: dict[str, Any]) -> str:
    rows = summary_rows(res)
    w = max([len(f"{r['metric']} ({r['unit']})") for r in rows] + [10])
    out = [f"{'metric'.ljust(w)}  {'mtlsgw':>10}  {'nginx':>10}  {'mtlsgw/nginx':>12}"]
    for r in rows:
        d = r["digits"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
        label = f"{r['metric']} ({r['unit']})".ljust(w)
        out.append(
            f"{label}  {fmt_num(r['mtlsgw'], d):>10}  {fmt_num(r['nginx'], d):>10}  {ratio:>12}"
        )
    return "\n".join(out)


def write_docs(res: dict[str, Any], json_path: Path, dest: Path) -> None:
    m = res["machine"]
    s = res["settings"]
    checks = res["checks"]
    lat = [r for r in res["scenarios"]["latency"]["runs"] if r["target"] == "direct"]

    def headers(t: str) -> str:
        h = checks["identity_headers"].get(t, {}).get("identity_headers", {})
        return "<br>".join(f"`{k}: {', '.join(v)}`" for k, v in h.items()) or "—"

    # the access log lines of the single process and of the N processes
    multi_lines = (res.get("multi") or {}).get("log_lines", {})
    gw_lines = res.get("log_lines", {}).get("mtlsgw", 0)
    gw_lines += sum(v for k, v in multi_lines.items() if k.startswith("mtlsgw"))
    values = dict(
        s,
        finished=res["finished"],
        command=res["command"],
        wall_minutes=res["wall_seconds"] / 60,
        json_name=json_path.name,
        table=table_markdown(res),
        multi_table=multi_markdown(res),
        health=health_markdown(res),
        direct_p50=fmt_num(median([r.get("p50_ms") for r in lat]), 2),
        direct_p99=fmt_num(median([r.get("p99_ms") for r in lat]), 2),
        upstream_rps=fmt_num((res.get("upstream_capacity") or {}).get("rps")),
        cpu=f"{m['cpu']}, {m['cores']} cores" + (" (virtual machine)" if m["virtualized"] else ""),
        os=f"{m['os']}, Linux {m['kernel']}",
        headers_mtlsgw=headers("mtlsgw"),
        headers_nginx=headers("nginx"),
        nocert_mtlsgw=checks["no_client_certificate"]["mtlsgw"]["outcome"][:90],
        nocert_nginx=checks["no_client_certificate"]["nginx"]["outcome"][:90],
        log_lines_mtlsgw=f"{gw_lines:,}",
        log_lines_nginx=f"{res.get('log_lines', {}).get('nginx', 0):,}",
        expect_mtlsgw=checks["expect_100_continue_2MiB"]["mtlsgw"]["time_total"],
        expect_nginx=checks["expect_100_continue_2MiB"]["nginx"]["time_total"],
        size=transfer_size(s["transfer_bytes"]),
        background=f"{res.get('background_cpu_pct_at_start', 0):.0f}",
        idle_conns=f"{s['idle_conns']:,}",
        **{k: v for k, v in m.items() if k not in ("cpu", "os", "curl")},
        curl=" ".join(m["curl"].split()[:2]),
    )
    text = (BENCH / "conf/performance.md.in").read_text().format(**values)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--long", action="store_true", help="5 rounds of 30 s runs, 3 idle rounds (~30 minutes)")
    add("--quick", action="store_true", help="smoke test: 1 round of 3 s, 64 MiB, 500 idle")
    add("--rounds", type=int, default=3, help="A B rounds per scenario (3)")
    add("--duration", type=float, default=10.0, help="seconds per loadgen run (10)")
    add("--warmup", type=float, default=2.0, help="seconds of warm-up per proxy (2)")
    add("--concurrency", type=int, default=32, help="keep-alive connections (32)")
    add("--handshake-concurrency", type=int, default=16, help="connections at once (16)")
    add("--latency-rate", type=float, default=250.0, help="req/s of the latency runs (250)")
    add("--latency-duration", type=float, default=10.0, help="seconds per latency run (10)")
    add("--latency-conns", type=int, default=8, help="connections of the latency client (8)")
    add("--transfer-bytes", type=int, default=GIB, help="upload/download size (1 GiB)")
    add("--transfer-timeout", type=float, default=120.0, help="seconds per transfer at most (120)")
    add("--idle-conns", type=int, default=5000, help="idle connections to hold (5000)")
    add("--idle-rounds", type=int, default=1, help="rounds of the idle scenario (1)")
    add("--idle-settle", type=float, default=3.0, help="seconds before reading RSS (3)")
    add("--idle-hold-max", type=float, default=180.0, help=argparse.SUPPRESS)
    add("--wait-quiet", type=float, default=0.0, help="seconds to wait for other load to end (0)")
    add("--quiet-threshold", type=float, default=20.0, help="%% of a core counted as quiet (20)")
    add(
        "--noisy-threshold",
        type=float,
        default=25.0,
        help="%% of a core of other work that "
        "makes a round noisy: repeated, left out of the medians (25)",
    )
    add("--retries", type=int, default=4, help="noisy rounds repeated per run at most (4)")
    add(
        "--processes",
        type=int,
        default=2,
        help="N of the N-against-N runs: N mtlsgw processes with reuse_port = yes on one port "
        "against nginx with N workers, keep-alive and new-connection runs; 0 skips them (2)",
    )
    add("--upstream-procs", type=int, default=1, help="GOMAXPROCS of the upstream (1)")
    add("--targets", default=",".join(TARGETS), help="comma list of mtlsgw,nginx (both)")
    add("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {','.join(SCENARIOS)}")
    add(
        "--gateway-cmd",
        help="runs mtlsgw; {config} becomes the INI path (default: this "
        "Python's twistd --nodaemon --pidfile= mtlsgw --config {config})",
    )
    add("--gateway-timeout", type=float, default=30.0, help="seconds for mtlsgw to come up (30)")
    add("--loadgen-src", help="loadgen source folder (../shared/tools/loadgen)")
    add("--results-dir", default=str(BENCH / "results"))
    add(
        "--docs",
        default=str(REPO / "docs/performance.md"),
        help="written after a full run of "
        "both proxies, every scenario, not --quick (docs/performance.md)",
    )
    add("--no-docs", action="store_true", help="do not write the docs page")
    add("--keep", action="store_true", help="keep the run folder (configs, PKI, logs)")
    add("--compare", nargs="+", metavar="RESULT.json", help="show earlier results side by side")
    a = p.parse_args(argv)
    if a.long:
        a.rounds, a.duration, a.latency_duration, a.idle_rounds = 5, 30.0, 30.0, 3
    if a.quick:
        a.rounds, a.duration, a.latency_duration, a.warmup = 1, 3.0, 3.0, 1.0
        a.transfer_bytes, a.idle_conns = 64 << 20, 500
    a.targets = [t for t in a.targets.split(",") if t]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    for t in a.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}")
    for s in a.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if a.processes < 0:
        p.error("--processes must be 0 (skip) or more")
    if a.processes == 0:
        a.scenarios = [s for s in a.scenarios if s != "multi"]
    return a


def compare(paths: list[str]) -> None:
    """Earlier results side by side: mtlsgw's value and the ratio mtlsgw / nginx of each."""
    tables = [
        {r["metric"]: r for r in summary_rows(json.loads(Path(p).read_text()))} for p in paths
    ]
    metrics = list(dict.fromkeys(m for t in tables for m in t))
    print("| metric | " + " | ".join(f"{Path(p).stem}: mtlsgw | ratio" for p in paths) + " |")
    print("|---|" + "--:|--:|" * len(paths))
    for m in metrics:
        cells = []
        for t in tables:
            r = t.get(m)
            if r is None:
                cells.append("— | —")
                continue
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "—"
            cells.append(f"{fmt_num(r.get('mtlsgw'), r['digits'])} | {ratio}")
        print(f"| {m} | " + " | ".join(cells) + " |")


def main() -> int:
    args = parse_args(sys.argv[1:])
    if args.compare:
        compare(args.compare)
        return 0

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        res = Bench(args).run()
    except StartupError as exc:
        log(f"FAILED: {exc}")
        if str(exc).startswith("mtlsgw-"):
            log("`bench/run --processes 0` skips the N-against-N runs meanwhile.")
        elif str(exc).startswith("mtlsgw"):
            log("`bench/run --targets nginx` benchmarks nginx alone meanwhile.")
        return 3
    res["wall_seconds"] = round(time.monotonic() - t0, 1)
    res["table"] = summary_rows(res)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    label = (
        "-".join(args.targets) + ("-quick" if args.quick else "") + ("-long" if args.long else "")
    )
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stamp}-{label}.json"
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    print()
    print(table_text(res))
    print()
    for a, b, c in health_rows(res):
        print(f"  {a}: mtlsgw {b}, nginx {c}")
    print(f"\nresults: {json_path} ({res['wall_seconds']:.0f} s)")
    full = set(args.targets) == set(TARGETS) and set(args.scenarios) == set(SCENARIOS)
    if full and not args.quick and not args.no_docs:
        write_docs(res, json_path, Path(args.docs))
        print(f"table written to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
