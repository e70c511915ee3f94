"""``[gateway] workers = N``: a supervisor and N worker processes behind one listening socket,
through the real ``twistd mtlsgw`` process, a real upstream and real TLS clients.

Which worker served a request is read from the access log: the supervisor relays every worker's
log lines prefixed ``worker=N``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_sections
from harness import (
    DEADLINE,
    client_context,
    curl,
    https_request,
    refused_start,
    render_ini,
    run_twistd,
    wait_for,
)

ACCESS = re.compile(r"\[mtlsgw\.access#info\] worker=(\d+) request .* status=(\S+) ")


def alive(pid: int) -> bool:
    """Whether process *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def workers_of(supervisor: int) -> set[int]:
    """The live ``gateway.worker`` processes whose parent is *supervisor*."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == supervisor and fields[0] != "Z" and b"gateway.worker" in cmdline:
            found.add(int(entry.name))
    return found


def served_by(log: str, status: str | None = None) -> set[str]:
    """The worker numbers in the access lines of *log* (with *status*, if given)."""
    return {m[1] for m in ACCESS.finditer(log) if status is None or m[2] == status}


def status_of(gateway, pki, who) -> int:
    files = getattr(pki, who)()
    return https_request(gateway.port, client_context(pki.ca, files.cert, files.key))[0]


def until_both_served(gateway, pki, who: str, expected: int, since: int = 0) -> None:
    """Requests on new connections until both workers have answered one after log offset
    *since*; every answer must be *expected*."""
    def both() -> bool:
        assert status_of(gateway, pki, who) == expected
        return served_by(gateway.log()[since:], str(expected)) == {"1", "2"}
    wait_for(both, f"both workers to answer {who} with {expected}")


def wait_serving(gateway, count: int) -> None:
    """Until *count* workers run and have read the file (``serving pid=...``): a test may change
    it from then on. (A worker that starts later reads the file as it is then.)"""
    wait_for(lambda: len(workers_of(gateway.process.pid)) == count
             and gateway.log().count(" serving pid=") >= count,
             f"{count} workers serving")


@pytest.fixture
def two_workers(start_gateway):
    gateway = start_gateway({"gateway": {"workers": "2", "drain_timeout": "10"}})
    wait_serving(gateway, 2)
    yield gateway
    gateway.stop()


def test_two_workers_serve_the_port(two_workers, pki):
    gateway = two_workers
    pids = workers_of(gateway.process.pid)
    # The supervisor's reactor: twistd's default, or the one the suite runs on.
    reactor = os.environ.get("MTLSGW_TEST_REACTOR") or "epoll"
    for pid in pids:
        assert b"--reactor\x00%s\x00" % reactor.encode() in Path(
            f"/proc/{pid}/cmdline").read_bytes()
    assert len(pids) == 2
    until_both_served(gateway, pki, "alice", 200)
    log = gateway.log()
    assert "mtlsgw supervisor pid=" in log
    for pid in pids:
        assert f"serving pid={pid}" in log
    assert len(re.findall(r"worker=\d mtlsgw listening on tcp:", log)) == 2


def test_workers_run_the_supervisors_reactor(tmp_path, pki, upstream):
    from harness import Gateway

    sections = base_sections(pki, upstream.url)
    sections["gateway"]["workers"] = "2"
    gateway = Gateway(tmp_path / "gw", sections, reactor="mtlsgw")
    try:
        wait_serving(gateway, 2)
        for pid in workers_of(gateway.process.pid):
            assert b"--reactor\x00mtlsgw\x00" in Path(f"/proc/{pid}/cmdline").read_bytes()
        until_both_served(gateway, pki, "alice", 200)
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0


def test_sigusr1_for_log_rotation_leaves_the_workers_running(two_workers, pki):
    gateway = two_workers
    pids = workers_of(gateway.process.pid)
    for pid in pids:  # as `systemctl kill -s USR1` does: every process of the service
        os.kill(pid, signal.SIGUSR1)
    gateway.process.send_signal(signal.SIGUSR1)
    rotated = gateway.log_path.with_name(gateway.log_path.name + ".1")
    wait_for(rotated.exists, "the supervisor to rotate its log file")
    until_both_served(gateway, pki, "alice", 200)  # into the new file, from both workers
    assert workers_of(gateway.process.pid) == pids


def test_a_killed_worker_is_replaced_while_the_other_serves(two_workers, pki):
    gateway = two_workers
    before = workers_of(gateway.process.pid)
    victim = min(before)
    number = re.search(rf"started worker (\d) pid={victim}\b", gateway.log())[1]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        assert status_of(gateway, pki, "alice") == 200  # the port answers throughout
        now = workers_of(gateway.process.pid)
        return len(now) == 2 and victim not in now
    wait_for(replaced, "the killed worker to be replaced")
    (new,) = workers_of(gateway.process.pid) - before
    log = gateway.wait_log(f"started worker {number} pid={new}")
    assert (f"worker {number} pid={victim} exited (signal SIGKILL); restarting it in 0.5 s"
            in log)
    until_both_served(gateway, pki, "alice", 200, since=log.index(f"pid={new}"))


def test_sighup_reloads_every_worker_and_a_broken_file_none(two_workers, pki):
    gateway = two_workers
    until_both_served(gateway, pki, "alice", 200)
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("allow = alice", "allow = bob"))
    mark = len(gateway.log())
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: all(f"worker={n} reloaded configuration" in gateway.log()[mark:]
                         for n in (1, 2)), "both workers to reload")
    assert "reload: " in gateway.log()[mark:] and "is valid; reloading 2 worker(s)" in gateway.log()
    mark = len(gateway.log())
    until_both_served(gateway, pki, "alice", 403, since=mark)  # denied by every worker
    until_both_served(gateway, pki, "bob", 200, since=mark)

    gateway.config.write_text(text.replace("type = cn", "type = nope"))
    mark = len(gateway.log())
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reload refused, keeping the running configuration")
    until_both_served(gateway, pki, "bob", 200, since=mark)  # the old configuration, everywhere
    assert status_of(gateway, pki, "alice") == 403
    after = gateway.log()[mark:]
    refused = [line for line in after.splitlines() if "reload refused" in line]
    assert len(refused) == 1, refused
    assert "[mtlsgw.workers#error] reload refused, keeping the running configuration: " in (
        refused[0])
    assert "[authorizer:team] type = 'nope'" in refused[0]
    assert "reloaded configuration" not in after


def test_the_supervisor_refuses_a_listener_change_for_every_worker(two_workers, pki):
    gateway = two_workers
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("[gateway]\n", "[gateway]\ntls = off\n", 1))
    mark = len(gateway.log())
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_log("reload refused: listeners changed (listen, tls); restart to apply")
    until_both_served(gateway, pki, "alice", 200, since=mark)  # still mTLS in every worker
    after = gateway.log()[mark:]
    assert after.count("reload refused") == 1
    assert "[mtlsgw.workers#error] reload refused: listeners changed" in after
    assert "reloaded configuration" not in after


def test_sigterm_drains_every_worker_and_exits_0(two_workers, pki):
    gateway = two_workers
    pids = workers_of(gateway.process.pid)
    alice = pki.alice()
    context = client_context(pki.ca, alice.cert, alice.key)
    # A slow reader: the response is in flight when SIGTERM arrives.
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"GET /download/20000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first = tls.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    gateway.process.send_signal(signal.SIGTERM)
    log = gateway.wait_log("draining 1 connection(s) for up to 10.0 s")
    assert re.search(r"worker=\d draining 1 connection", log)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False
    wait_for(refused, "new connections to be refused while the workers drain")
    received = len(first.split(b"\r\n\r\n", 1)[1])
    while chunk := tls.recv(1 << 20):
        received += len(chunk)
    tls.close()
    assert received == 20_000_000
    assert gateway.process.wait(DEADLINE) == 0
    assert not [pid for pid in pids if alive(pid)]
    assert "stopping 2 worker(s), waiting up to 15.0 s" in gateway.log()


def test_a_worker_that_does_not_stop_is_killed_after_drain_timeout_and_grace(start_gateway):
    gateway = start_gateway({"gateway": {"workers": "2", "drain_timeout": "0"}})
    wait_serving(gateway, 2)
    stuck = min(workers_of(gateway.process.pid))
    os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM; SIGKILL still works
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(DEADLINE) == 0
    assert f"pid={stuck} still running 5.0 s after SIGTERM; killing it" in gateway.log()
    assert f"pid={stuck} exited (signal SIGKILL)" in gateway.log()
    assert not alive(stuck)


def test_workers_stop_when_the_supervisor_dies(two_workers, pki):
    gateway = two_workers
    pids = workers_of(gateway.process.pid)
    gateway.process.kill()
    gateway.process.wait(DEADLINE)
    wait_for(lambda: not [pid for pid in pids if alive(pid)], "the workers to stop")


def test_a_unix_listener_survives_a_worker_restart(start_gateway, pki, upstream, tmp_path):
    path = tmp_path / "gw.sock"
    gateway = start_gateway({"gateway": {"workers": "2"},
                             "listener:local": {"listen": f"unix:{path}"},
                             "route:local": {"listener": "local", "upstream": upstream.url}})
    alice = pki.alice()

    def over_unix() -> str:
        result = curl("--unix-socket", str(path), "--cacert", str(pki.ca), "--cert",
                      str(alice.cert), "--key", str(alice.key), "-o", "/dev/null", "-w",
                      "%{http_code}", "https://localhost/")
        return result.stdout

    wait_serving(gateway, 2)
    wait_for(lambda: over_unix() == "200", "the unix listener to answer")
    # A worker stopped on its own (SIGTERM) leaves the socket file, which the supervisor owns.
    victim = min(workers_of(gateway.process.pid))
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: not alive(victim), "the worker to exit")
    wait_for(lambda: len(workers_of(gateway.process.pid)) == 2, "the worker to be replaced")
    assert path.exists()
    for _ in range(10):
        assert over_unix() == "200"
    gateway.stop()
    assert gateway.process.returncode == 0
    assert not path.exists()  # the supervisor removes it when it stops


# -- configuration errors -----------------------------------------------------------------------


def _bad(tmp_path, pki, upstream, **gateway):
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = "tcp:0:interface=127.0.0.1"
    sections["gateway"].update(gateway)
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    return path


BAD = [
    ({"workers": "0"}, "[gateway] workers = '0': must be auto or an integer between 1 and 256"),
    ({"workers": "-1"}, "[gateway] workers = '-1': must be auto or an integer between 1 and 256"),
    ({"workers": "many"},
     "[gateway] workers = 'many': must be auto or an integer between 1 and 256"),
    ({"workers": "257"}, "[gateway] workers = '257': must be auto or an integer between 1 and 256"),
    ({"workers": "2", "reuse_port": "yes"},
     "[gateway] workers = '2': cannot be combined with reuse_port = yes ([gateway])"),
]


@pytest.mark.parametrize(("gateway", "expected"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_workers_stop_twistd_and_check_config_with_one_line(tmp_path, pki, upstream,
                                                                 gateway, expected):
    path = _bad(tmp_path, pki, upstream, **gateway)
    line = refused_start(path)
    assert line.startswith(f"mtlsgw: {path}: {expected}"), line


def test_a_port_in_use_stops_the_supervisor_with_one_line(tmp_path, pki, upstream):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = _bad(tmp_path, pki, upstream, workers="2",
                    listen=f"tcp:{port}:interface=127.0.0.1")
        process = run_twistd(path, None)
        out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1
    assert f"[gateway] listen = 'tcp:{port}:interface=127.0.0.1': cannot listen" in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(("value", "shown"), [
    ("3", "3"),
    ("auto", f"{min(len(os.sched_getaffinity(0)), 256)} (auto)"),  # no cgroup quota here
])
def test_check_config_shows_the_workers(tmp_path, pki, upstream, value, shown):
    from gateway.workers import cgroup_cpu_max, cpu_quota

    if value == "auto" and any(cpu_quota(text) for text in cgroup_cpu_max()):
        pytest.skip("this machine has a cgroup CPU quota; the unit tests cover it")
    path = _bad(tmp_path, pki, upstream, workers=value)
    check = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                           capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert check.returncode == 0, check.stderr
    assert f"  workers: {shown}\n" in check.stdout


def test_workers_auto_starts_one_worker_per_cpu(start_gateway, pki):
    from gateway.workers import available_cpus

    gateway = start_gateway({"gateway": {"workers": "auto"}})
    count = available_cpus()
    wait_serving(gateway, count)
    assert f"mtlsgw supervisor pid={gateway.process.pid}: {count} worker(s) (auto)" in (
        gateway.log())
    assert status_of(gateway, pki, "alice") == 200
    gateway.stop()
    assert gateway.process.returncode == 0



def test_a_systemd_socket_is_shared_by_the_workers(tmp_path, pki, upstream):
    # Socket activation as systemd does it: the listening socket is descriptor 3, LISTEN_FDS=1,
    # LISTEN_FDNAMES, and LISTEN_PID the gateway's pid (set before exec, which keeps the pid).
    from harness import twistd_command

    launch = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ.update(LISTEN_PID="
              "str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='https'); "
              "os.execv(sys.argv[2], sys.argv[2:])")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        sections = base_sections(pki, upstream.url)
        sections["gateway"].update({"listen": "systemd:domain=INET:index=0", "workers": "2"})
        config = tmp_path / "gw.ini"
        config.write_text(render_ini(sections))
        log_path = tmp_path / "gw.log"
        fd = listening.fileno()
        process = subprocess.Popen(
            [sys.executable, "-c", launch, str(fd), *twistd_command(config, log_path)],
            pass_fds=[fd], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
    try:  # the test's copy is closed: only the gateway holds the socket now
        def started() -> bool:
            assert process.poll() is None, process.communicate()
            return len(workers_of(process.pid)) == 2
        wait_for(started, "two worker processes")
        alice = pki.alice()
        context = client_context(pki.ca, alice.cert, alice.key)

        def both() -> bool:
            assert https_request(port, context)[0] == 200
            return served_by(log_path.read_text(), "200") == {"1", "2"}
        wait_for(both, "both workers to answer on the systemd socket")
        assert "LISTEN_FDS" not in Path(f"/proc/{min(workers_of(process.pid))}/environ"
                                        ).read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err
