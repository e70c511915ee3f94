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
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
BEFORE = "mtlsgw-before"  # the gateway built from --before REF, in its own virtualenv
# every target, in the order of the columns and of the A B C rounds
TARGETS = (BEFORE, "mtlsgw", "nginx")
TELEMETRY = "mtlsgw-observed"  # the telemetry scenario's mtlsgw with metrics and the JSON log on
GATEWAYS = (BEFORE, "mtlsgw")
# the order they run in; "h2" restarts the proxies with HTTP/2 enabled, "multi" with N processes
# (--processes; mtlsgw with `workers = N` under --multi-mode workers), "profile" runs mtlsgw alone
# under cProfile
SCENARIOS = (
    "keepalive",
    "handshake",
    "latency",
    "transfer",
    "idle",
    "telemetry",
    "h2",
    "multi",
    "profile",
)
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


def git(*argv: str) -> str:
    res = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"git {' '.join(argv)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


def build_before(ref: str) -> tuple[Path, dict[str, str]]:
    """The gateway of commit `ref` installed in its own virtualenv,
    bench/.build/venv-<commit>-<dependencies> (made once, then reused): the tree from
    `git archive`, `pip install`ed (not editable, no PYTHONPATH) with the same versions of every
    dependency as this Python has, so that only the gateway's code differs. Returns (its python,
    a description for the results)."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    short = sha[:12]
    # the same dependency versions as the gateway's own Python (not the gateway itself)
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    pins = sorted(ln for ln in freeze if "==" in ln and not ln.lower().startswith("mtlsgw"))
    deps = hashlib.sha256("\n".join([sys.version, *pins]).encode()).hexdigest()[:8]
    build = BENCH / ".build"
    src, venv = build / f"src-{short}", build / f"venv-{short}-{deps}"
    python = venv / "bin" / "python"
    ready = venv / ".bench-ready"
    info = {"ref": ref, "commit": sha, "subject": git("log", "-1", "--format=%s", sha)[:200]}
    info["venv"] = str(venv)
    if ready.exists() and python.exists():
        log(f"{BEFORE}: {ref} = {short}, reusing {venv}")
        return python, info
    build.mkdir(exist_ok=True)
    t0 = time.monotonic()
    log(f"{BEFORE}: building {ref} = {short} into {venv} (once; later runs reuse it)")
    if not src.exists():
        tmp = build / f"src-{short}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True
        )
        if archive.returncode:
            raise SystemExit(f"git archive {sha} failed: {archive.stderr.decode()[-500:]}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        tmp.rename(src)
    base = getattr(sys, "_base_executable", None) or sys.executable
    res = subprocess.run([base, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(
            f"making the virtualenv {venv} with {base} failed (Debian: apt-get install -y "
            f"python3-venv):\n{res.stderr[-1000:]}"
        )
    constraints = venv / "bench-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    argv = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), str(src)]
    res = subprocess.run(argv, capture_output=True, text=True, cwd=str(build))
    if res.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{(res.stdout + res.stderr)[-2000:]}")
    # it must import its own copy, and an HTTP/2 stack must be there for the h2 scenario: h2
    # (the gateway's own engine, or Twisted's twisted.web._http2 in commits before it, whose
    # extra also brings `priority`: importing that module here would refuse every later commit)
    probe = "import gateway, h2; print(gateway.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=str(build), env=env
    )
    if res.returncode or not res.stdout.strip().startswith(str(venv)):
        raise SystemExit(f"{venv} does not import its own gateway: {res.stdout}{res.stderr}")
    ready.write_text(sha + "\n")
    log(f"{BEFORE}: built in {time.monotonic() - t0:.0f} s")
    return python, info


def after_source_check() -> dict[str, str]:
    """Which files the working tree's gateway runs from. The gateway package comes from the
    working tree (PYTHONPATH), but Twisted looks up the `mtlsgw` twistd plugin in its own
    twisted/plugins first: if this Python has an older mtlsgw installed, its plugin file wins.
    Warn when that file differs from the working tree's."""
    probe = (
        "import gateway, twisted.plugins.mtlsgw_plugin as p; print(gateway.__file__); "
        "print(p.__file__)"
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(REPO), env=env
    )
    lines = res.stdout.split()
    if res.returncode or len(lines) < 2:
        return {"error": (res.stderr or res.stdout)[-500:]}
    gw, plugin = lines[0], lines[1]
    ours = REPO / "twisted/plugins/mtlsgw_plugin.py"
    out = {"gateway": gw, "plugin": plugin}
    if not gw.startswith(str(REPO)):
        log(f"WARNING: mtlsgw imports gateway from {gw}, not from the working tree {REPO}")
        out["warning"] = "gateway package not from the working tree"
    if Path(plugin).resolve() != ours.resolve() and Path(plugin).read_bytes() != ours.read_bytes():
        log(
            f"WARNING: twistd loads the mtlsgw plugin from {plugin}, which differs from {ours}: "
            f"reinstall the gateway into {sys.prefix} (pip install -e .) or remove that file"
        )
        out["warning"] = "twistd plugin file differs from the working tree's"
    return out


def startup_reason(exc: StartupError) -> str:
    """The line of a start-up failure that says why: the gateway's own one-line config error if
    its log has one, else the first line."""
    lines = str(exc).splitlines()
    for ln in lines:
        if ln.startswith("mtlsgw: "):
            return ln[:400]
    return (lines[0] if lines else str(exc))[:400]


def nginx_h2_syntax() -> tuple[str, str]:
    """How this nginx turns HTTP/2 on: (listen-line suffix, directive). `listen ... ssl http2`
    up to 1.25.0 (Debian 12 has 1.22), `http2 on;` from 1.25.1 (the old form is deprecated)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    except OSError:
        return " http2", ""
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    if "http_v2_module" not in out:
        log("warning: this nginx is built without http_v2_module: the h2 scenario will fail")
    return ("", "http2 on;") if version >= (1, 25, 1) else (" http2", "")


# ------------------------------------------------------------------------------------------ bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[Proc] = []
        self.phases: list[Proc] = []  # every proxy process started, for the logs at the end
        self.active: dict[str, list[Proc]] = {}  # the processes measured now, per target
        self.run_dir = Path(tempfile.mkdtemp(prefix="mtlsgw-bench-"))
        self.fd_limit = 0
        self.retries_left = args.retries
        self.before_python: Path | None = None
        settings = {k: v for k, v in vars(args).items() if k not in ("compare", "render")}
        self.results: dict[str, Any] = {
            "schema": 2,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["bench/run", *sys.argv[1:]]),
            "settings": settings,
            "targets": list(args.targets),
            "checks": {},
            "scenarios": {},
            "skipped": {},
        }

    # ---- processes -----------------------------------------------------------------------------

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None
    ) -> Proc:
        p = Proc(name, argv, self.run_dir / f"{name}.log", env=env, cwd=cwd or str(REPO))
        self.procs.append(p)
        return p

    def stop_proc(self, p: Proc) -> None:
        p.stop()
        self.procs.remove(p)

    def proxy_pids(self, target: str) -> list[int]:
        """The measured proxy's processes: every mtlsgw process (a supervisor and its workers),
        nginx's master and workers."""
        return [pid for p in self.active.get(target, []) for pid in p.pids()]

    def measured_targets(self) -> list[str]:
        """The targets of the current phase, in --targets order (one may have been skipped)."""
        return [t for t in self.args.targets if t in self.active]

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
        if BEFORE in a.targets:
            self.before_python, self.results["before"] = build_before(a.before)
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
        self.nginx_h2 = nginx_h2_syntax()

        self.ports = {"upstream": procs.free_port()}
        self.values = {
            "RUN": str(self.run_dir),
            "PKI": self.pki["dir"],
            "UPSTREAM_PORT": str(self.ports["upstream"]),
            "USER": "user root;" if os.geteuid() == 0 else "",
            "EXTRA_SECTIONS": "",
        }

        up = self.start(
            "upstream",
            [str(self.upstream_bin), "-listen", f"127.0.0.1:{self.ports['upstream']}"],
            env=dict(os.environ, GOMAXPROCS=str(a.upstream_procs)),
        )
        procs.wait_ready(up, lambda: self.upstream_stats() is not None, 15, "the upstream")
        self.upstream = up
        if "mtlsgw" in a.targets:
            self.results["after_source"] = after_source_check()
        self.start_phase("single")

    def start_phase(self, phase: str) -> None:
        """Stop the proxies measured so far and start every target for `phase` on new ports:
        "single" (one mtlsgw process, nginx with one worker), "h2" (the same with HTTP/2 offered
        in ALPN) or "multi" (N processes / workers). In "multi", a target that fails to start
        under a mode it may not know yet (mtlsgw with `workers = N`) is skipped with a message;
        every other failure ends the run."""
        a = self.args
        for ps in self.active.values():
            for p in ps:
                self.stop_proc(p)
        self.active = {}
        self.ports.update({t: procs.free_port() for t in a.targets})
        for t in a.targets:
            try:
                self.active[t] = self.start_target(t, phase)
            except StartupError as exc:
                # the single-process phase must work; a gateway that cannot run a later phase
                # (`workers = N` or `http2 = yes` not supported yet) is left out of that one
                if phase == "single" or t == "nginx":
                    raise
                reason = startup_reason(exc)
                what = {"h2": "with `http2 = yes`", "multi": "N against N"}[phase]
                if phase == "multi" and t == "mtlsgw" and a.multi_mode == "workers":
                    what = f"with `workers = {a.processes}`"
                log(
                    f"SKIPPED: {t} {what} did not start: {reason}. The {phase} scenario goes on "
                    "without it"
                    + (
                        " (`--multi-mode reuse_port` measures it as reuse_port processes)."
                        if "workers" in what
                        else "."
                    )
                )
                log("its log ends:\n    " + "\n    ".join(str(exc).splitlines()[-8:]))
                self.results["skipped"][f"{phase}:{t}"] = f"{t} {what} did not start: {reason}"
                self.results.setdefault("skipped_detail", {})[f"{phase}:{t}"] = str(exc)[-3000:]
                # stop what it left (a supervisor that forked, the reuse_port processes so far)
                for p in [p for p in self.procs if p.name.startswith(f"{t}-") and p in self.phases]:
                    if not any(p in ps for ps in self.active.values()):
                        self.stop_proc(p)

    def start_target(self, t: str, phase: str) -> list[Proc]:
        a = self.args
        n = a.processes if phase == "multi" else 1
        suffix = {"single": "", "h2": "-h2"}.get(phase, "")
        if t == "nginx":
            listen_h2, http2 = self.nginx_h2 if phase == "h2" else ("", "")
            values = dict(self.values, PORT=str(self.ports[t]), LISTEN_H2=listen_h2, HTTP2=http2)
            return [self.start_nginx(values, workers=n, suffix=suffix)]
        gateway_extra, tls_extra = "", "http2 = yes" if phase == "h2" else ""
        count, stem = 1, f"{t}{suffix}"
        workers = phase == "multi" and t == "mtlsgw" and a.multi_mode == "workers"
        if workers:
            gateway_extra, stem = f"workers = {n}", f"{t}-{n}w"
        elif phase == "multi":
            gateway_extra, count, stem = "reuse_port = yes", n, f"{t}-{n}p"
        values = dict(
            self.values, PORT=str(self.ports[t]), GATEWAY_EXTRA=gateway_extra, TLS_EXTRA=tls_extra
        )
        ini = fill(BENCH / "conf/mtlsgw.ini", self.run_dir / f"{stem}.ini", values)
        if count == 1:
            return [self.start_mtlsgw(ini, t, stem, workers=n if workers else 0)]
        return [self.start_mtlsgw(ini, t, f"{stem}-{i}", listeners=i) for i in range(1, n + 1)]

    def start_nginx(self, values: dict[str, str], workers: int = 1, suffix: str = "") -> Proc:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise SystemExit(
                "nginx is missing: apt-get install -y nginx (bench/run does it as root)"
            )
        name = ("nginx" if workers == 1 else f"nginx-{workers}w") + suffix
        stem = ("nginx-edge" if workers == 1 else f"nginx-edge-{workers}w") + suffix
        values = dict(values, WORKERS=str(workers), NAME=stem)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / f"{stem}-tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = fill(BENCH / "conf/nginx-edge.conf", self.run_dir / f"{stem}.conf", values)
        errlog = self.run_dir / f"{stem}.error.log"
        argv = [nginx, "-p", str(self.run_dir), "-c", str(conf), "-e", str(errlog)]
        p = self.start(name, argv)
        self.phases.append(p)

        def ready() -> bool:  # answers, and the master has forked all its workers
            return self._ready("nginx") and len(p.pids()) >= workers + 1

        took = procs.wait_ready(p, ready, 20, name)
        log(f"{name} is up on 127.0.0.1:{self.ports['nginx']} ({took:.1f} s)")
        return p

    def gateway_argv(self, target: str, ini: Path, extra: list[str] | None = None) -> list[str]:
        """twistd mtlsgw: the working tree with this Python, or the --before build."""
        a = self.args
        if target == "mtlsgw" and a.gateway_cmd and not extra:
            return [part.replace("{config}", str(ini)) for part in a.gateway_cmd.split()]
        python = str(self.before_python) if target == BEFORE else sys.executable
        # what the twistd script does, with that Python (no need to find the script)
        twistd = "import sys; from twisted.scripts.twistd import run; "
        twistd += "sys.argv[0] = 'twistd'; run()"
        reactor = [f"--reactor={a.reactor}"] if a.reactor and target != BEFORE else []
        argv = [python, "-c", twistd, "--nodaemon", "--pidfile=", *reactor, *(extra or [])]
        return [*argv, "mtlsgw", "--config", str(ini)]

    def gateway_env(self, target: str) -> tuple[dict[str, str], str]:
        """(environment, working directory): the working tree on PYTHONPATH for mtlsgw; for the
        --before build nothing of the working tree (no PYTHONPATH, and a working directory
        outside the repository, as `python -c` puts it first on sys.path)."""
        env = dict(os.environ)
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        if target == BEFORE:
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
            return env, str(self.run_dir)
        path = [str(REPO), os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        return env, str(REPO)

    def start_mtlsgw(
        self,
        ini: Path,
        target: str = "mtlsgw",
        name: str = "mtlsgw",
        listeners: int = 1,
        workers: int = 0,
        extra: list[str] | None = None,
    ) -> Proc:
        """Start one mtlsgw process; ready once it answers and `listeners` sockets listen on the
        port (with reuse_port each process has its own, so the i-th process makes i); with
        `workers = N`, once it answers and has N child processes."""
        a = self.args
        argv = self.gateway_argv(target, ini, extra)
        env, cwd = self.gateway_env(target)
        p = self.start(name, argv, env=env, cwd=cwd)
        self.phases.append(p)
        port = self.ports[target]

        def ready() -> bool:
            if workers and len(p.pids()) < workers + 1:
                return False
            return procs.listening_sockets(port) >= listeners and self._ready(target)

        took = procs.wait_ready(p, ready, a.gateway_timeout, name)
        if workers:  # a worker may still be importing; give every one time to take connections
            time.sleep(1)
            procs.wait_ready(p, lambda: self._ready(target), a.gateway_timeout, name)
        how = f", {len(p.pids()) - 1} child processes" if workers else ""
        log(f"{name} is up on 127.0.0.1:{port} ({took:.1f} s{how}): {' '.join(argv)}")
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

    def loadgen_argv(
        self, target: str, conc: int, seconds: float, keepalive: bool = True, h2: bool = False
    ) -> list[str]:
        """loadgen's command line: `conc` connections for `seconds` of `GET /small`, presenting
        the client certificate."""
        p = self.pki
        argv = [str(self.loadgen), "-url", self.url(target, "/small"), "-cert", p["client_crt"]]
        argv += ["-key", p["client_key"], "-cacert", p["server_ca"], "-c", str(conc)]
        argv += ["-d", f"{seconds}s", f"-keepalive={'true' if keepalive else 'false'}"]
        if h2:
            argv.append("-h2")
        return argv

    def loadgen_run(
        self, target: str, conc: int, seconds: float, keepalive: bool = True, h2: bool = False
    ) -> Run:
        argv = self.loadgen_argv(target, conc, seconds, keepalive, h2)
        out = self.measured(target, lambda: json_cmd(argv, seconds + 60))
        protos = out.get("protocols") or {}
        want = "HTTP/2.0" if h2 else "HTTP/1.1"
        if not out.get("error") and set(protos) - {want}:
            # e.g. a proxy that did not negotiate h2: not the measurement asked for
            out["error"] = f"protocols {protos}, expected {want} only"
        return out

    def side_by_side_run(self, targets: list[str], conc: int, seconds: float) -> dict[str, Run]:
        """Keep-alive small GET against every target at the same time, one loadgen of `conc`
        connections each: the targets share the machine's cores, and whatever else slows the
        machine down, at the same moments. Each run gets its target's own proxy CPU use."""
        argvs = {t: self.loadgen_argv(t, conc, seconds) for t in targets}
        pids = {t: self.proxy_pids(t) for t in targets}
        before = {t: procs.cpu_seconds(pids[t]) for t in targets}
        outs: dict[str, Run] = {}
        t0 = time.monotonic()
        every = [pid for t in targets for pid in pids[t]]
        with procs.CpuAccount(every, self.upstream.pids()) as cpu:
            threads = [
                threading.Thread(
                    target=lambda t=t: outs.__setitem__(t, json_cmd(argvs[t], seconds + 60))
                )
                for t in targets
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        wall = max(time.monotonic() - t0, 1e-6)
        for t in targets:
            out = outs[t]
            out["other_cpu_pct"] = cpu.result["other_cpu_pct"]
            out["steal_pct"] = cpu.result["steal_pct"]
            out["proxy_cpu_pct"] = 100 * (procs.cpu_seconds(pids[t]) - before[t]) / wall
            add_per_core(out)
        return {t: outs[t] for t in targets}  # in the order given, not the order they ended

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
        add_per_core(out)
        return out

    # ---- scenarios -----------------------------------------------------------------------------

    def alternate(
        self,
        name: str,
        fn: Callable[[str], Run] | None,
        targets: list[str] | None = None,
        rounds: int | None = None,
        together: Callable[[list[str]], dict[str, Run]] | None = None,
    ) -> None:
        """Run fn(target) as A B, B A, A B ... (each round in the other order, so that neither
        target always runs first, after the same neighbour), keeping every run; with
        `together`, each round is one together(targets) that runs them at the same time.

        A round during which other work on the machine used more than --noisy-threshold of a core
        is marked noisy (left out of the medians) and repeated, while --retries lasts."""
        a = self.args
        runs: list[Run] = []
        r = clean = 0
        while clean < (rounds or a.rounds):
            r += 1
            batch = []
            order = list(targets or self.measured_targets())
            order = order if r % 2 else order[::-1]
            if together is not None:
                outs = together(order)
            else:
                assert fn is not None
                outs = {t: fn(t) for t in order}  # one after the other, in order
            for t, out in outs.items():
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

    def warmup(self, h2: bool = False) -> None:
        for t in self.measured_targets():
            out = self.loadgen_run(t, self.args.concurrency, self.args.warmup, h2=h2)
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
        self.alternate("latency", self.rate_run, targets=["direct", *self.measured_targets()])

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

    def sc_telemetry(self) -> None:
        """The cost of observability: the working tree's mtlsgw as configured for the other
        scenarios ("mtlsgw", metrics and the JSON log off) against a second process of it with
        a `[status]` listener serving Prometheus metrics and `[log] format = json` (TELEMETRY),
        keep-alive small GET, alternated with nginx in the same rounds. After each run of the
        observed gateway its /metrics is scraped once, and the requests it counted are recorded
        (a check that the metrics were really on)."""
        a = self.args
        if "mtlsgw" not in self.active:
            log("telemetry: needs the mtlsgw target; skipped")
            return
        self.check_alive()
        status_port = procs.free_port()
        self.ports[TELEMETRY] = procs.free_port()
        extra = (
            f"[status]\nlisten = tcp:{status_port}:interface=127.0.0.1\n\n[log]\nformat = json\n"
        )
        values = dict(
            self.values,
            PORT=str(self.ports[TELEMETRY]),
            GATEWAY_EXTRA="",
            TLS_EXTRA="",
            EXTRA_SECTIONS=extra,
        )
        ini = fill(BENCH / "conf/mtlsgw.ini", self.run_dir / f"{TELEMETRY}.ini", values)
        try:
            p = self.start_mtlsgw(ini, TELEMETRY, TELEMETRY)
        except StartupError as exc:
            reason = startup_reason(exc)
            log(f"SKIPPED: telemetry: mtlsgw with [status] and [log] format = json: {reason}")
            self.results["skipped"]["telemetry"] = reason
            return
        self.active[TELEMETRY] = [p]
        self.loadgen_run(TELEMETRY, a.concurrency, a.warmup)

        def run(t: str) -> Run:
            out = self.loadgen_run(t, a.concurrency, a.duration)
            if t == TELEMETRY:
                out["metrics_requests_total"] = scrape_requests(status_port)
            return out

        order = [t for t in ("mtlsgw", TELEMETRY, "nginx") if t in self.active]
        try:
            self.alternate("telemetry", run, targets=order)
            self.telemetry_side_by_side()
        finally:
            self.stop_proc(p)
            del self.active[TELEMETRY]
        self.check_alive()

    def telemetry_side_by_side(self) -> None:
        """The telemetry scenario's second part ("telemetry-side-by-side"): both gateways loaded
        at the same time, half of --concurrency each, --rounds times. Alternated runs on this
        kind of machine vary by ±20 % from one to the next, more than the cost measured; run at
        the same moments, both see the same machine, and the on/off ratio of each round is the
        cost of the work one does and the other does not."""
        a = self.args
        self.alternate(
            "telemetry-side-by-side",
            None,
            targets=["mtlsgw", TELEMETRY],
            together=lambda ts: self.side_by_side_run(ts, max(a.concurrency // 2, 1), a.duration),
        )

    def sc_h2(self) -> None:
        """HTTP/2 keep-alive small GET: the proxies restarted with h2 offered in ALPN (mtlsgw
        `[tls] http2 = yes`, nginx `listen ... ssl http2` / `http2 on`), loadgen -h2: one h2
        connection per worker, one request at a time on it, the client certificate presented."""
        a = self.args
        self.check_alive()
        self.start_phase("h2")
        self.warmup(h2=True)
        self.alternate("h2", lambda t: self.loadgen_run(t, a.concurrency, a.duration, h2=True))
        self.check_alive()

    def sc_multi(self) -> None:
        """N against N: nginx with worker_processes N; mtlsgw with `workers = N` (one twistd: a
        supervisor and N workers; --multi-mode workers) or N processes with reuse_port = yes on
        one port (--multi-mode reuse_port); the --before build always as N reuse_port processes
        (it has no workers key). Keep-alive and new-connection runs; RSS and CPU are summed over
        all the processes of a target (supervisor and workers, nginx's master and workers)."""
        a = self.args
        self.check_alive()
        self.start_phase("multi")
        if not self.active:
            log("no target started for the N-against-N runs; skipped")
            return
        self.warmup()
        conc, hconc = a.concurrency, a.handshake_concurrency
        self.alternate("multi_keepalive", lambda t: self.loadgen_run(t, conc, a.duration))
        self.alternate("multi_handshake", lambda t: self.loadgen_run(t, hconc, a.duration, False))
        self.check_alive()

    def sc_profile(self) -> None:
        """The working tree's mtlsgw alone, one process under cProfile (twistd --profile), for
        one keep-alive and one new-connection-per-request run: where its time goes. Not a
        measurement (the profiler slows it down), so it runs last and on its own."""
        a = self.args
        if "mtlsgw" not in a.targets:
            return
        self.check_alive()
        for ps in self.active.values():
            for p in ps:
                self.stop_proc(p)
        self.active = {}
        profiles: dict[str, Any] = {}
        runs = (
            ("keepalive", "keep-alive small GET", a.concurrency, True),
            ("handshake", "new connection per request", a.handshake_concurrency, False),
        )
        for key, what, conc, keep in runs:
            self.ports["mtlsgw"] = procs.free_port()
            values = dict(
                self.values, PORT=str(self.ports["mtlsgw"]), GATEWAY_EXTRA="", TLS_EXTRA=""
            )
            ini = fill(BENCH / "conf/mtlsgw.ini", self.run_dir / f"mtlsgw-prof-{key}.ini", values)
            stats = self.run_dir / f"profile-{key}.pstats"
            extra = [f"--profile={stats}", "--profiler=cprofile", "--savestats"]
            p = self.start_mtlsgw(ini, "mtlsgw", f"mtlsgw-prof-{key}", extra=extra)
            self.active = {"mtlsgw": [p]}
            self.loadgen_run("mtlsgw", conc, min(a.warmup, 1.0), keep)  # imports, caches
            out = self.loadgen_run("mtlsgw", conc, a.duration, keep)
            log(f"profile {key}: {summarize(out)} (under the profiler)")
            self.stop_proc(p)  # twistd writes the stats as it exits
            self.active = {}
            prof = profile_summary(stats, a.profile_top)
            prof.update(what=what, run={k: out.get(k) for k in ("rps", "proxy_cpu_pct", "errors")})
            profiles[key] = prof
            for area, pct in prof.get("areas", [])[:6]:
                log(f"profile {key}: {pct:5.1f}% {area}")
        self.results["profile"] = profiles

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
            self.stop_all()  # first: logs are complete once the processes have exited
            # every proxy process of every phase, by its name (the single-process phase's
            # processes are named after their target)
            for p in self.phases:
                self.results.setdefault("logs", {})[p.name] = p.log_tail(15)
                self.results.setdefault("log_lines", {})[p.name] = count_lines(p.log)
            if "multi" in self.args.scenarios:
                self.results["multi"] = {
                    "processes": self.args.processes,
                    "mode": self.args.multi_mode,
                }
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


def add_per_core(out: Run) -> None:
    """`rps_per_core`: throughput per core the proxy really used, comparable even when the
    client, not the proxy, was the bottleneck (they share this machine's cores)."""
    if out.get("rps") and out.get("proxy_cpu_pct"):
        out["rps_per_core"] = out["rps"] / (out["proxy_cpu_pct"] / 100)


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
        "gateway_stack_before": (
            _cmd([str(b.before_python), "-c", GATEWAY_VERSIONS]) if b.before_python else ""
        ),
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


def paired_ratios(res: dict[str, Any], scen: str, a: str, b: str, key: str) -> list[float]:
    """`key` of target b over target a, round by round (rounds where both ran cleanly)."""

    def by_round(target: str) -> dict[int, float]:
        return {
            r["round"]: r[key]
            for r in runs_of(res, scen, target)
            if not r.get("error") and not r.get("noisy") and r.get(key)
        }

    first, second = by_round(a), by_round(b)
    return [second[n] / first[n] for n in sorted(first.keys() & second.keys())]


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


def present(res: dict[str, Any]) -> list[str]:
    """The targets of a result, in column order (older results have no mtlsgw-before)."""
    return [t for t in TARGETS if t in res.get("targets", ("mtlsgw", "nginx"))]


def multi_label(res: dict[str, Any]) -> str:
    n = res["settings"].get("processes") or 0
    return f"{n} against {n}"


def multi_how(res: dict[str, Any]) -> dict[str, str]:
    """What each target ran as in the N-against-N runs."""
    s = res["settings"]
    n = s.get("processes") or 0
    workers = s.get("multi_mode", "reuse_port") == "workers"
    return {
        BEFORE: f"{n} reuse_port processes",
        "mtlsgw": f"workers = {n} (a supervisor + {n})" if workers else f"{n} reuse_port processes",
        "nginx": f"worker_processes {n}",
    }


def summary_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: per metric the median over rounds for each target, mtlsgw / nginx ("ratio")
    and mtlsgw / mtlsgw-before ("ratio_before")."""
    sc = res["scenarios"]
    s = res["settings"]
    rows: list[dict[str, Any]] = []

    def med(scen: str, target: str, key: str, complete: bool = False) -> float | None:
        return scen_median(res, scen, target, key, complete)

    def add(label: str, scen: str, key: str, unit: str, digits: int = 0, **kw: Any) -> None:
        if scen in sc:
            vals = {t: med(scen, t, key, **kw) for t in TARGETS}
            rows.append(
                {"id": f"{scen}.{key}", "metric": label, "unit": unit, "digits": digits, **vals}
            )

    c, hc = s["concurrency"], s["handshake_concurrency"]
    add(f"keep-alive small GET, {c} connections", "keepalive", "rps", "req/s")
    add("keep-alive small GET: p50 latency", "keepalive", "p50_ms", "ms", 2)
    add("keep-alive small GET: p99 latency", "keepalive", "p99_ms", "ms", 2)
    add("keep-alive small GET per core of proxy CPU", "keepalive", "rps_per_core", "req/s")
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
            rows.append(
                {"id": f"latency.added_{q}", "metric": label, "unit": "ms", "digits": 2, **vals}
            )
    size = transfer_size(s["transfer_bytes"])
    add(f"{size} upload", "upload", "mb_per_s", "MB/s", complete=True)
    add(f"{size} upload: peak RSS", "upload", "peak_rss_mib", "MiB", 1)
    add(f"{size} download", "download", "mb_per_s", "MB/s", complete=True)
    add(f"{size} download: peak RSS", "download", "peak_rss_mib", "MiB", 1)
    n = s["idle_conns"]
    add(f"{n:,} idle mTLS connections: RSS", "idle", "rss_mib", "MiB", 1)
    add(f"{n:,} idle mTLS connections: per connection", "idle", "kib_per_conn", "KiB", 1)
    add(f"HTTP/2 keep-alive small GET, {c} connections", "h2", "rps", "req/s")
    add("HTTP/2 keep-alive small GET: p50 latency", "h2", "p50_ms", "ms", 2)
    add("HTTP/2 keep-alive small GET: p99 latency", "h2", "p99_ms", "ms", 2)
    add("HTTP/2 keep-alive small GET per core of proxy CPU", "h2", "rps_per_core", "req/s")
    single = len(rows)
    for scen, key, label, unit, digits in SCALED:
        if key != "proxy_cpu_pct":
            text = label.format(c=c, hc=hc)
            add(f"{multi_label(res)}: {text}", f"multi_{scen}", key, unit, digits)
    add(
        f"{multi_label(res)}: keep-alive small GET: RSS",
        "multi_keepalive",
        "proxy_rss_mib",
        "MiB",
        1,
    )
    for r in rows[single:]:
        r["processes"] = s["processes"]
    for r in rows:
        r["ratio"] = ratio(r.get("mtlsgw"), r.get("nginx"))
        r["ratio_before"] = ratio(r.get("mtlsgw"), r.get(BEFORE))
    return rows


# The targets: (goal, row ids, how: "ratio" = mtlsgw / nginx, "value" = mtlsgw's own,
# "max" = the largest of the rows' values; the bound; ">=" or "<="; the stretch bound or None)
GOALS = (
    ("keep-alive small GET, 1 process vs 1 worker", ("keepalive.rps",), "ratio", 0.6, ">=", 0.8),
    ("full mTLS handshake per request", ("handshake.rps",), "ratio", 0.85, ">=", None),
    ("added p99 latency at the fixed rate (ms)", ("latency.added_p99",), "value", 1.0, "<=", None),
    ("upload, MB/s", ("upload.mb_per_s",), "ratio", 1.0, ">=", None),
    ("download, MB/s", ("download.mb_per_s",), "ratio", 1.0, ">=", None),
    (
        "peak RSS while transferring (MiB)",
        ("upload.peak_rss_mib", "download.peak_rss_mib"),
        "max",
        64.0,
        "<=",
        None,
    ),
    ("idle mTLS connections: RSS", ("idle.rss_mib",), "ratio", 1.5, "<=", None),
    ("HTTP/2 keep-alive small GET", ("h2.rps",), "ratio", 0.5, ">=", None),
    ("N against N: keep-alive small GET", ("multi_keepalive.rps",), "ratio", None, ">=", None),
    (
        "N against N: keep-alive small GET per core of proxy CPU",
        ("multi_keepalive.rps_per_core",),
        "ratio",
        None,
        ">=",
        None,
    ),
    (
        "N against N: new connection per request per core of proxy CPU",
        ("multi_handshake.rps_per_core",),
        "ratio",
        None,
        ">=",
        None,
    ),
)


def goal_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of the issue's targets with the before and after values and whether it is met."""
    rows = {r["id"]: r for r in summary_rows(res)}
    out = []
    n = res["settings"].get("processes") or 0
    for goal, ids, how, bound, op, stretch in GOALS:
        got = [rows[i] for i in ids if i in rows]
        if not got:
            continue
        vals: dict[str, float | None] = {}
        for t in GATEWAYS:
            if how == "ratio":
                vals[t] = ratio(got[0].get(t), got[0].get("nginx"))
            elif how == "value":
                vals[t] = got[0].get(t)
            else:
                present_: list[float] = [r[t] for r in got if r.get(t) is not None]
                vals[t] = max(present_) if present_ else None

        def met(v: float | None, b: float | None, op: str = op) -> bool | None:
            if v is None or b is None:
                return None
            return v >= b if op == ">=" else v <= b

        after = vals["mtlsgw"]
        verdict = met(after, bound)
        text = {True: "yes", False: "no", None: "—"}[verdict]
        if verdict and stretch is not None and met(after, stretch):
            text = "yes, and the stretch goal"
        if bound is None:
            want = "reported"
        else:
            want = f"{op.replace('>=', '≥').replace('<=', '≤')} {bound:g}"
            want += f" (stretch {stretch:g})" if stretch else ""
            want += " × nginx" if how == "ratio" and "MiB" not in goal else ""
        label = goal.replace("N against N", f"{n} against {n}")
        if goal.startswith("idle"):
            label = f"{res['settings']['idle_conns']:,} {goal}"
        if goal.startswith(("upload", "download")):
            label = f"{transfer_size(res['settings']['transfer_bytes'])} {goal}"
        out.append({"goal": label, "how": how, "want": want, "met": text, **vals})
    return out


def goals_markdown(res: dict[str, Any]) -> str:
    before = BEFORE in present(res)
    head = "| target (ratios: mtlsgw / nginx in this run) | wanted |"
    head += " before |" if before else ""
    head += " after | met |"
    lines = [head, "|---|--:|" + ("--:|" if before else "") + "--:|:--|"]
    for g in goal_rows(res):
        d = 1 if "MiB" in g["goal"] else 2
        cells = [g["goal"], g["want"]]
        if before:
            cells.append(fmt_num(g[BEFORE], d))
        cells += [fmt_num(g["mtlsgw"], d), g["met"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transfer_size(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / (1 << 20):g} MiB"


def health_rows(res: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """What tells whether a number can be trusted: CPU use, errors, upstream connection reuse.
    One cell per target of present(res)."""
    sc = res["scenarios"]
    targets = present(res)
    out: list[tuple[str, list[str]]] = []

    def row(label: str, scen: str, f: Callable[[list[Run]], str]) -> None:
        if scen in sc:
            out.append((label, [f(rr) if (rr := runs_of(res, scen, t)) else "—" for t in targets]))

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
        n = max((len(e) for e in each), default=0)
        parts = [median([e[i] for e in each if len(e) > i]) for i in range(n)]
        return " + ".join(f"{v:.0f}%" for v in parts if v is not None) or "—"

    def protocols(rr: list[Run]) -> str:
        seen: dict[str, int] = {}
        for r in rr:
            for k, v in (r.get("protocols") or {}).items():
                seen[k] = seen.get(k, 0) + v
        return ", ".join(f"{k} {v:,}" for k, v in sorted(seen.items())) or "—"

    m = multi_label(res)
    names = {
        "keepalive": "keep-alive GET",
        "handshake": "new connection per request",
        "latency": "fixed-rate latency",
        "upload": "upload",
        "download": "download",
        "h2": "HTTP/2 keep-alive GET",
        "multi_keepalive": f"{m}: keep-alive GET",
        "multi_handshake": f"{m}: new connection per request",
    }
    conn_scens = ("keepalive", "handshake", "latency", "h2", "multi_keepalive", "multi_handshake")

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
        label = (
            f"{names[scen]}: proxy CPU per process, busiest first (supervisor, nginx master ≈ 0)"
        )
        row(label, scen, split)
    for scen in conn_scens:
        row(f"{names[scen]}: upstream connections opened per 1,000 requests", scen, reuse)
    for scen in conn_scens:
        row(f"{names[scen]}: errors, all rounds", scen, errors)
    row("HTTP/2 keep-alive GET: responses by protocol", "h2", protocols)
    row("idle connections still open / closed by the proxy when checked", "idle", idle)
    row("upload: complete transfers / runs", "upload", complete)
    row("download: complete transfers / runs", "download", complete)
    return out


TITLES = {BEFORE: "before", "mtlsgw": "after", "nginx": "nginx"}


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " …"


def r2(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "—"


def table_markdown(res: dict[str, Any], multi: bool = False) -> str:
    """The one-against-one rows (multi: the N-against-N ones) with the ratios."""
    targets = present(res)
    before = BEFORE in targets
    if multi:
        how = multi_how(res)
        titles = [f"{TITLES[t]}: {how[t]}" for t in targets]
    else:
        titles = [TITLES[t] + (" (1 worker)" if t == "nginx" else " (1 process)") for t in targets]
    head = "| metric | " + " | ".join(titles) + " | after / nginx |"
    head += " after / before |" if before else ""
    lines = [head, "|---|" + "--:|" * (len(targets) + 1 + before)]
    for r in summary_rows(res):
        if bool(r.get("processes")) != multi:
            continue
        d = r["digits"]
        cells = [fmt_num(r.get(t), d) for t in targets] + [r2(r["ratio"])]
        if before:
            cells.append(r2(r["ratio_before"]))
        lines.append(f"| {r['metric']} ({r['unit']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def multi_markdown(res: dict[str, Any]) -> str:
    """N against N, and what N processes / workers gave over one (from the same run)."""
    if not any(k.startswith("multi_") for k in res["scenarios"]):
        return "(not measured in this run)"
    n = res["settings"].get("processes") or 0
    lines = [table_markdown(res, multi=True), ""]
    lines.append(f"What {n} processes / workers gave over one, in the same run:")
    lines.append("")
    targets = present(res)
    lines.append("| metric | " + " | ".join(f"{TITLES[t]} ×{n} / ×1" for t in targets) + " |")
    lines.append("|---|" + "--:|" * len(targets))
    s = res["settings"]
    for scen, key, label, unit, _d in SCALED:
        cells = [
            r2(ratio(scen_median(res, f"multi_{scen}", t, key), scen_median(res, scen, t, key)))
            for t in targets
        ]
        text = label.format(c=s["concurrency"], hc=s["handshake_concurrency"])
        lines.append(f"| {text}{' (CPU)' if unit == '%' else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def health_markdown(res: dict[str, Any]) -> str:
    targets = present(res)
    lines = ["| check | " + " | ".join(TITLES[t] for t in targets) + " |"]
    lines.append("|---|" + "--:|" * len(targets))
    lines += [f"| {a} | " + " | ".join(cells) + " |" for a, cells in health_rows(res)]
    return "\n".join(lines)


def table_text(res: dict[str, Any]) -> str:
    rows = summary_rows(res)
    targets = present(res)
    before = BEFORE in targets
    w = max([len(f"{r['metric']} ({r['unit']})") for r in rows] + [10])
    cols = [{BEFORE: "before", "mtlsgw": "after", "nginx": "nginx"}[t] for t in targets]
    cols += ["after/nginx"] + (["after/before"] if before else [])
    out = ["metric".ljust(w) + "".join(f"  {c:>12}" for c in cols)]
    for r in rows:
        d = r["digits"]
        cells = [fmt_num(r.get(t), d) for t in targets] + [r2(r["ratio"])]
        if before:
            cells.append(r2(r["ratio_before"]))
        out.append(f"{r['metric']} ({r['unit']})".ljust(w) + "".join(f"  {c:>12}" for c in cells))
    return "\n".join(out)


def goals_text(res: dict[str, Any]) -> str:
    out = []
    for g in goal_rows(res):
        b = f"before {fmt_num(g[BEFORE], 2)}, " if g.get(BEFORE) is not None else ""
        out.append(
            f"  {g['goal']}: wanted {g['want']}; {b}after {fmt_num(g['mtlsgw'], 2)}: {g['met']}"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- profile


def profile_area(filename: str, func: str) -> str:
    """Which part of the stack a profiled function belongs to."""
    if filename == "~":  # a built-in: by what it calls
        if "_lib." in func or "_openssl" in func or "OpenSSL" in func or "_cffi" in func:
            return "OpenSSL calls (pyOpenSSL's cffi: TLS records, handshakes)"
        if "socket" in func or func.endswith(("'send'>", "'recv'>", "'recv_into'>")):
            return "socket system calls"
        if "epoll" in func or "poll" in func or "select" in func:
            return "waiting in the reactor's poll"
        if "httptools" in func or "llhttp" in func:
            return "httptools (llhttp)"
        return "other built-ins (isinstance, str, bytes, dict methods, …)"
    path = filename.replace("\\", "/")
    for marker, area in (
        ("/gateway/", "gateway."),
        ("/twisted/", "twisted."),
        ("/OpenSSL/", "pyOpenSSL (Python side)"),
        ("/cryptography/", "cryptography"),
        ("/service_identity/", "service_identity"),
        ("/h2/", "h2 (HTTP/2 state machine)"),
        ("/hpack/", "hpack"),
        ("/hyperframe/", "hyperframe"),
        ("/httptools/", "httptools"),
        ("/zope/", "zope.interface"),
    ):
        if marker in path:
            if area.endswith("."):  # gateway.<module>, twisted.<package>
                rest = path.split(marker, 1)[1].removesuffix(".py").split("/")
                depth = 2 if area == "twisted." and len(rest) > 2 else 1
                return area + ".".join(rest[:depth]).removesuffix("/__init__")
            return area
    if "/lib/python" in path:
        return "Python standard library"
    return "other"


def profile_summary(stats_path: Path, top: int) -> dict[str, Any]:
    """The share of the profile's own time (tottime) per area and the top functions."""
    import pstats

    if not stats_path.exists():
        return {"error": f"no profile written ({stats_path.name})"}
    try:
        st = pstats.Stats(str(stats_path))
    except Exception as exc:  # a profile cut short
        return {"error": f"{type(exc).__name__}: {exc}"}
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    idle = 0.0
    total = 0.0
    areas: dict[str, float] = {}
    funcs = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        area = profile_area(filename, func)
        if area == "waiting in the reactor's poll":
            idle += tottime
            continue
        total += tottime
        areas[area] = areas.get(area, 0.0) + tottime
        where = func if filename == "~" else f"{Path(filename).name}:{line}({func})"
        funcs.append((tottime, cumtime, ncalls, where, area))
    total = total or 1e-9
    funcs.sort(reverse=True)
    return {
        "busy_seconds": round(total, 3),
        "poll_seconds": round(idle, 3),
        "areas": sorted(((a, 100 * v / total) for a, v in areas.items()), key=lambda x: -x[1]),
        "top": [
            {
                "function": w,
                "area": a,
                "calls": n,
                "self_pct": 100 * tt / total,
                "cumulative_pct": 100 * ct / total,
            }
            for tt, ct, n, w, a in funcs[:top]
        ],
    }


def profile_markdown(res: dict[str, Any]) -> str:
    profiles = res.get("profile") or {}
    if not profiles:
        return "(no profile in this run: `--scenarios ...,profile`)"
    out = []
    for prof in profiles.values():
        run = prof.get("run") or {}
        out.append(
            f"**{prof.get('what')}** (under the profiler: {fmt_num(run.get('rps'))} req/s, "
            f"{fmt_num(prof.get('busy_seconds'), 1)} s of CPU profiled, the reactor's poll "
            "left out):"
        )
        out.append("")
        if prof.get("error"):
            out += [f"no profile: {prof['error']}", ""]
            continue
        areas = prof["areas"]
        own = sum(p for a, p in areas if a.startswith("gateway."))
        twisted = sum(p for a, p in areas if a.startswith("twisted."))
        biggest = ", ".join(f"{a} {p:.0f}%" for a, p in areas[:4])
        out.append(
            f"The gateway's own modules take {own:.0f}% of the CPU time, Twisted {twisted:.0f}%; "
            f"the largest areas: {biggest}."
        )
        out.append("")
        out += ["| where the time goes | share of CPU time |", "|---|--:|"]
        out += [f"| {a} | {p:.1f}% |" for a, p in prof["areas"][:12]]
        out.append("")
        out += [
            "| function (own time) | area | calls | own | with callees |",
            "|---|---|--:|--:|--:|",
        ]
        out += [
            f"| `{f['function']}` | {f['area']} | {f['calls']:,} | {f['self_pct']:.1f}% "
            f"| {f['cumulative_pct']:.1f}% |"
            for f in prof["top"]
        ]
        out.append("")
    return "\n".join(out).rstrip()


def scrape_requests(port: int) -> float | None:
    """The sum of mtlsgw_requests_total in one scrape of /metrics on the status port."""
    try:
        status, body, _ = procs.http_get("127.0.0.1", port, "/metrics", timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    total = 0.0
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("mtlsgw_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def telemetry_markdown(res: dict[str, Any]) -> str:
    """Keep-alive req/s with metrics and the JSON log off and on: alternated with nginx (the
    table), and side by side (the cost)."""
    if "telemetry" not in res["scenarios"]:
        return "(not measured in this run: `--scenarios ...,telemetry`)"
    off = scen_median(res, "telemetry", "mtlsgw", "rps")
    on = scen_median(res, "telemetry", TELEMETRY, "rps")
    nginx = scen_median(res, "telemetry", "nginx", "rps")
    off_core = scen_median(res, "telemetry", "mtlsgw", "rps_per_core")
    on_core = scen_median(res, "telemetry", TELEMETRY, "rps_per_core")
    counted = scen_median(res, "telemetry", TELEMETRY, "metrics_requests_total")
    cost = None if not off or on is None else 100 * (1 - on / off)
    cost_core = None if not off_core or on_core is None else 100 * (1 - on_core / off_core)
    paired = paired_ratios(res, "telemetry-side-by-side", "mtlsgw", TELEMETRY, "rps")
    paired_core = paired_ratios(res, "telemetry-side-by-side", "mtlsgw", TELEMETRY, "rps_per_core")
    side = None if not paired else 100 * (1 - (median(paired) or 0))
    side_core = None if not paired_core else 100 * (1 - (median(paired_core) or 0))
    spread = f"{min(paired):.2f} to {max(paired):.2f}" if paired else "—"
    rows = [
        "| keep-alive small GET, alternated runs | req/s | per core of proxy CPU | / nginx |",
        "|---|--:|--:|--:|",
        f"| mtlsgw, metrics and JSON log off | {fmt_num(off)} | {fmt_num(off_core)} "
        f"| {r2(ratio(off, nginx))} |",
        f"| mtlsgw, `[status]` (Prometheus) and `[log] format = json` on | {fmt_num(on)} "
        f"| {fmt_num(on_core)} | {r2(ratio(on, nginx))} |",
        f"| nginx (1 worker) | {fmt_num(nginx)} | | 1.00 |",
        "",
        f"Cost of metrics and the JSON log, both gateways loaded side by side (at the same time, "
        f"{(res['settings'].get('concurrency') or 32) // 2} connections each), median "
        f"of the {len(paired)} rounds' on/off ratios: **{fmt_num(side, 1)} %** of req/s, "
        f"{fmt_num(side_core, 1)} % per core of proxy CPU (goal: under 10 %); the req/s ratio "
        f"ran from {spread}. From the alternated runs of the table (each run on its own, "
        f"medians): {fmt_num(cost, 1)} % of req/s, {fmt_num(cost_core, 1)} % per core. The "
        f"observed gateway's last scrape of a round counted {fmt_num(counted)} requests in "
        "mtlsgw_requests_total (cumulative over its rounds).",
    ]
    return "\n".join(rows)


def write_docs(res: dict[str, Any], json_path: Path, dest: Path) -> None:
    m = res["machine"]
    s = res["settings"]
    checks = res["checks"]
    lat = [r for r in res["scenarios"]["latency"]["runs"] if r["target"] == "direct"]
    before = res.get("before") or {}

    def headers(t: str) -> str:
        h = checks["identity_headers"].get(t, {}).get("identity_headers", {})
        return "<br>".join(f"`{k}: {', '.join(v)}`" for k, v in h.items()) or "—"

    def lines_of(t: str) -> int:  # the access log lines of every process of a target
        return sum(
            v
            for k, v in res.get("log_lines", {}).items()
            if k == t or k.startswith(f"{t}-")
            if not (t == "mtlsgw" and k.startswith(BEFORE))
        )

    def check(name: str, t: str, key: str, width: int = 90) -> str:
        v = checks[name].get(t, {}).get(key)
        return "—" if v is None else str(v)[:width]

    how = multi_how(res)
    skipped = res.get("skipped") or {}
    values = dict(
        s,
        finished=res["finished"],
        command=res["command"],
        wall_minutes=res["wall_seconds"] / 60,
        json_name=json_path.name,
        goals=goals_markdown(res),
        table=table_markdown(res),
        multi_table=multi_markdown(res),
        multi_skipped=(
            "**Not measured:** "
            + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in skipped.items())
            if skipped
            else ""
        ),
        multi_before=how[BEFORE],
        multi_after=(
            f"one `twistd mtlsgw` with `workers = {s['processes']}` in `[gateway]` (a supervisor "
            f"and {s['processes']} workers)"
            if s.get("multi_mode") == "workers"
            else f"{s['processes']} `twistd mtlsgw` processes with `reuse_port = yes`"
        ),
        profile=profile_markdown(res),
        telemetry=telemetry_markdown(res),
        health=health_markdown(res),
        direct_p50=fmt_num(median([r.get("p50_ms") for r in lat]), 2),
        direct_p99=fmt_num(median([r.get("p99_ms") for r in lat]), 2),
        upstream_rps=fmt_num((res.get("upstream_capacity") or {}).get("rps")),
        cpu=f"{m['cpu']}, {m['cores']} cores" + (" (virtual machine)" if m["virtualized"] else ""),
        os=f"{m['os']}, Linux {m['kernel']}",
        before_ref=before.get("ref", "—"),
        before_commit=(before.get("commit") or "—")[:12],
        before_subject=shorten(before.get("subject", "not measured in this run"), 90),
        before_stack=m.get("gateway_stack_before") or "—",
        headers_before=headers(BEFORE),
        headers_mtlsgw=headers("mtlsgw"),
        headers_nginx=headers("nginx"),
        nocert_before=check("no_client_certificate", BEFORE, "outcome"),
        nocert_mtlsgw=check("no_client_certificate", "mtlsgw", "outcome"),
        nocert_nginx=check("no_client_certificate", "nginx", "outcome"),
        log_lines_before=f"{lines_of(BEFORE):,}",
        log_lines_mtlsgw=f"{lines_of('mtlsgw'):,}",
        expect_before=check("expect_100_continue_2MiB", BEFORE, "time_total"),
        expect_mtlsgw=check("expect_100_continue_2MiB", "mtlsgw", "time_total"),
        expect_nginx=check("expect_100_continue_2MiB", "nginx", "time_total"),
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
    add("--long", action="store_true", help="5 rounds of 30 s runs, 3 idle rounds (~45 minutes)")
    add("--quick", action="store_true", help="smoke test: 1 round of 3 s, 64 MiB, 500 idle")
    add(
        "--before",
        metavar="REF",
        help="also run the gateway of git commit REF (e.g. ce9a976) as a third target, "
        "mtlsgw-before, in the same rounds; built once into bench/.build/venv-<commit>-<deps>",
    )
    add("--rounds", type=int, default=3, help="A B (C) rounds per scenario (3)")
    add("--duration", type=float, default=10.0, help="seconds per loadgen run (10)")
    add("--warmup", type=float, default=2.0, help="seconds of warm-up per proxy (2)")
    add("--concurrency", type=int, default=32, help="keep-alive connections, HTTP/1.1 and h2 (32)")
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
        help="N of the N-against-N runs (multi) against nginx with N workers, keep-alive and "
        "new-connection runs; 0 skips them (2)",
    )
    add(
        "--multi-mode",
        choices=("workers", "reuse_port"),
        default="workers",
        help="how mtlsgw (the working tree) runs N against N: one twistd with `workers = N` in "
        "[gateway] (a supervisor and N workers), or N twistd processes with reuse_port = yes; "
        "mtlsgw-before always runs as reuse_port processes (workers)",
    )
    add(
        "--reactor",
        default="mtlsgw",
        help="twistd --reactor for mtlsgw (the working tree), as the shipped systemd unit selects; "
        "'' for Twisted's default (mtlsgw-before always runs on Twisted's default) (mtlsgw)",
    )
    add("--profile-top", type=int, default=15, help="functions listed per profile (15)")
    add("--upstream-procs", type=int, default=1, help="GOMAXPROCS of the upstream (1)")
    add(
        "--targets",
        default="mtlsgw,nginx",
        help="comma list of mtlsgw,nginx (both; --before adds mtlsgw-before)",
    )
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
        "mtlsgw and nginx, every scenario, not --quick (docs/performance.md)",
    )
    add("--no-docs", action="store_true", help="do not write the docs page")
    add("--keep", action="store_true", help="keep the run folder (configs, PKI, logs)")
    add("--compare", nargs="+", metavar="RESULT.json", help="show earlier results side by side")
    add(
        "--render",
        metavar="RESULT.json",
        help="write --docs again from a results file, measuring nothing (after editing "
        "conf/performance.md.in, e.g. the paragraph on the profile)",
    )
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
    if a.before and BEFORE not in a.targets:
        a.targets.insert(0, BEFORE)
    if BEFORE in a.targets and not a.before:
        p.error(f"{BEFORE} needs --before REF")
    a.targets = [t for t in TARGETS if t in a.targets]  # column order: before, after, nginx
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
    if args.render:
        write_docs(json.loads(Path(args.render).read_text()), Path(args.render), Path(args.docs))
        print(f"{args.docs} written from {args.render}")
        return 0

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        res = Bench(args).run()
    except StartupError as exc:
        log(f"FAILED: {exc}")
        if str(exc).startswith(BEFORE):
            log(
                f"the --before build did not start; without --before the run measures {TARGETS[1:]}"
            )
        elif str(exc).startswith("mtlsgw"):
            log("`bench/run --targets nginx` benchmarks nginx alone meanwhile.")
        return 3
    res["wall_seconds"] = round(time.monotonic() - t0, 1)
    res["table"] = summary_rows(res)
    res["goals"] = goal_rows(res)
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
    targets = present(res)
    for a, cells in health_rows(res):
        print(
            f"  {a}: " + ", ".join(f"{TITLES[t]} {c}" for t, c in zip(targets, cells, strict=True))
        )
    print("\nthe issue's targets:")
    print(goals_text(res))
    for k, v in (res.get("skipped") or {}).items():
        print(f"\nSKIPPED {k}: {v.splitlines()[0]}")
    for prof in (res.get("profile") or {}).values():
        areas = ", ".join(f"{a} {p:.0f}%" for a, p in (prof.get("areas") or [])[:5])
        print(f"\nprofile of mtlsgw, {prof.get('what')}: {areas or prof.get('error')}")
    print(f"\nresults: {json_path} ({res['wall_seconds']:.0f} s)")
    full = {"mtlsgw", "nginx"} <= set(args.targets) and set(args.scenarios) == set(SCENARIOS)
    if full and not args.quick and not args.no_docs:
        write_docs(res, json_path, Path(args.docs))
        print(f"table written to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
