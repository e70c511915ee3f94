"""systemd integration of the real ``twistd mtlsgw`` process: ``Type=notify`` (READY, RELOADING,
STOPPING, WATCHDOG) against a real datagram socket standing in for systemd (tests/sdsocket.py),
socket activation through ``systemd-socket-activate``, and ``drain_delay`` on ``SIGTERM``."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import base_sections
from harness import (
    DEADLINE,
    Refused,
    client_context,
    free_port,
    https_request,
    render_ini,
    run_twistd,
    twistd_command,
    wait_for,
)
from sdsocket import NotifySocket

from gateway.notify import monotonic_usec


@pytest.fixture
def notify():
    sock = NotifySocket()
    yield sock
    sock.close()


def start(tmp_path: Path, pki, upstream, env: dict[str, str], **gateway: str):
    """twistd with *env*, not waited for: ``(process, port, config, log path)``."""
    port = free_port()
    sections = base_sections(pki, upstream.url)
    sections["gateway"].update({"listen": f"tcp:{port}:interface=127.0.0.1", **gateway})
    config = tmp_path / "gw.ini"
    config.write_text(render_ini(sections))
    log_path = tmp_path / "gw.log"
    return run_twistd(config, log_path, env), port, config, log_path


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def alice_status(pki, port: int) -> int:
    alice = pki.alice()
    return https_request(port, client_context(pki.ca, alice.cert, alice.key))[0]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_is_sent_once_the_port_accepts(tmp_path, pki, upstream, abstract):
    notify = NotifySocket(abstract=abstract)
    process, port, _, _ = start(tmp_path, pki, upstream, notify.env)
    try:
        ready = notify.wait("READY")
        assert accepts(port), "READY=1 before the listener accepts connections"
        fields = notify.fields(ready)
        assert fields["READY"] == "1"
        assert fields["STATUS"] == f"serving on tcp:{port}:interface=127.0.0.1"
        assert notify.received()[ready][1] == process.pid
        assert alice_status(pki, port) == 200
        assert not any("WATCHDOG" in m[2] for m in notify.received())  # no WATCHDOG_USEC
    finally:
        err = stop(process)
        notify.close()
    assert process.returncode == 0, err


def test_reloading_and_ready_around_a_good_and_a_refused_reload(tmp_path, pki, upstream, notify):
    process, port, config, _ = start(tmp_path, pki, upstream, notify.env)
    try:
        ready = notify.wait("READY")
        text = config.read_text()
        config.write_text(text.replace("allow = alice", "allow = alice, bob"))
        before = monotonic_usec()
        process.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING", ready + 1)
        fields = notify.fields(reloading)
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()
        done = notify.wait("READY", reloading + 1)
        assert notify.fields(done)["STATUS"] == "reloaded the configuration"
        bob = pki.bob()
        assert https_request(port, client_context(pki.ca, bob.cert, bob.key))[0] == 200

        config.write_text(text.replace("type = cn", "type = nope"))
        process.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING", done + 1)
        refused = notify.wait("READY", reloading + 1)
        assert notify.fields(refused)["STATUS"] == (
            "reload refused: running the previous configuration (see the log)")
        assert alice_status(pki, port) == 200
    finally:
        err = stop(process)
    assert process.returncode == 0, err


def test_stopping_is_sent_on_sigterm(tmp_path, pki, upstream, notify):
    process, _, _, _ = start(tmp_path, pki, upstream, notify.env)
    ready = notify.wait("READY")
    process.send_signal(signal.SIGTERM)
    stopping = notify.wait("STOPPING", ready + 1)
    assert notify.fields(stopping)["STOPPING"] == "1"
    assert "draining" in notify.fields(stopping)["STATUS"]
    _, err = process.communicate(timeout=DEADLINE)  # one SIGTERM, as systemd sends
    assert process.returncode == 0, err


def test_watchdog_pings_twice_per_watchdog_usec(tmp_path, pki, upstream, notify):
    process, _, _, _ = start(tmp_path, pki, upstream,
                             {**notify.env, "WATCHDOG_USEC": "1000000"})
    try:
        ready = notify.wait("READY")
        start_time = notify.received()[ready][0]
        time.sleep(3.0)  # the window the pings are counted in
        pings = [m for m in notify.received()
                 if "WATCHDOG" in m[2] and start_time <= m[0] <= start_time + 3.0]
        assert 4 <= len(pings) <= 8, pings  # every 0.5 s: 6 in 3 s
        assert all(m[1] == process.pid and m[2] == {"WATCHDOG": "1"} for m in pings)
    finally:
        err = stop(process)
    assert process.returncode == 0, err


def test_no_watchdog_for_another_watchdog_pid(tmp_path, pki, upstream, notify):
    process, _, _, _ = start(tmp_path, pki, upstream,
                             {**notify.env, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    try:
        notify.wait("READY")
        time.sleep(0.5)  # two pings' worth, had it pinged
        assert not any("WATCHDOG" in m[2] for m in notify.received())
    finally:
        stop(process)


def test_with_workers_only_the_supervisor_notifies(tmp_path, pki, upstream, notify):
    from test_e2e_workers import workers_of

    process, port, _, log_path = start(tmp_path, pki, upstream,
                                       {**notify.env, "WATCHDOG_USEC": "1000000"}, workers="2")
    try:
        ready = notify.wait("READY")
        assert notify.fields(ready)["STATUS"] == "serving with 2 worker(s)"
        wait_for(lambda: log_path.read_text().count(" serving pid=") == 2, "workers' lines")
        workers = workers_of(process.pid)
        assert len(workers) == 2
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"NOTIFY_SOCKET=" not in environ and b"WATCHDOG_USEC=" not in environ
        assert alice_status(pki, port) == 200
        process.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING", ready + 1)
        notify.wait("READY", reloading + 1)
        wait_for(lambda: sum("WATCHDOG" in m[2] for m in notify.received()) >= 3, "pings")
    finally:
        err = stop(process)
    assert process.returncode == 0, err
    messages = notify.received()
    assert {m[1] for m in messages} == {process.pid}  # nothing from a worker
    assert sum(m[2].get("READY") == "1" and "RELOADING" not in m[2] for m in messages) == 2
    assert sum("STOPPING" in m[2] for m in messages) == 1


# -- socket activation --------------------------------------------------------------------------


def test_a_systemd_listener_without_the_socket_is_a_one_line_error(tmp_path, pki, upstream):
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = "systemd:domain=INET:index=0"
    config = tmp_path / "gw.ini"
    config.write_text(render_ini(sections))
    process = run_twistd(config, None, {"LISTEN_FDS": "", "LISTEN_PID": ""})
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1
    assert err == (f"mtlsgw: {config}: [gateway] listen = 'systemd:domain=INET:index=0': no "
                   "passed socket at index 0; no socket was passed (LISTEN_FDS, LISTEN_PID and "
                   "LISTEN_FDNAMES must all be set for this process, as a .socket unit sets "
                   "them; Twisted takes no socket without its name, so systemd-socket-activate "
                   "needs --fdname): start it through its .socket unit\n")
    assert "Traceback" not in out


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/lib/systemd/systemd-socket-activate"


@pytest.mark.skipif(not Path(SOCKET_ACTIVATE).exists(),
                    reason="systemd-socket-activate is not installed (.ci/run installs systemd)")
def test_socket_activation_with_systemd_socket_activate(tmp_path, pki, upstream, notify):
    port = free_port()
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = "systemd:domain=INET:name=https"
    config = tmp_path / "gw.ini"
    config.write_text(render_ini(sections))
    log_path = tmp_path / "gw.log"
    # systemd-socket-activate binds the port, waits for the first connection, then execs twistd
    # (same pid) with LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES=https; -E passes NOTIFY_SOCKET.
    process = subprocess.Popen(
        [SOCKET_ACTIVATE, f"--listen=127.0.0.1:{port}", "--fdname=https",
         f"--setenv=NOTIFY_SOCKET={notify.name}",
         *twistd_command(config, log_path)],
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: accepts(port), "systemd-socket-activate to listen")
        assert notify.received() == []  # the gateway is not running yet
        assert alice_status(pki, port) == 200  # this connection starts it
        ready = notify.wait("READY")
        assert notify.received()[ready][1] == process.pid  # exec'd in place
        assert notify.fields(ready)["STATUS"] == "serving on systemd:domain=INET:name=https"
        assert alice_status(pki, port) == 200
        assert "mtlsgw listening on systemd:domain=INET:name=https (mTLS)" in log_path.read_text()
    finally:
        err = stop(process)
    assert process.returncode == 0, err


# -- drain_delay --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_drain_delay_keeps_accepting_then_exits_0(tmp_path, pki, upstream, notify, workers):
    delay = 2.0
    process, port, _, log_path = start(tmp_path, pki, upstream, notify.env,
                                       drain_delay=str(delay), workers=workers)
    try:
        notify.wait("READY")
        assert alice_status(pki, port) == 200
        sigterm = time.monotonic()
        process.send_signal(signal.SIGTERM)
        served = 0
        while time.monotonic() - sigterm < delay - 0.7:  # new connections, during the delay
            assert alice_status(pki, port) == 200
            served += 1
        assert served >= 1
        stopping = notify.wait("STOPPING")
        assert notify.received()[stopping][0] - sigterm < 0.7  # at once, not after the delay
        process.wait(DEADLINE)
        elapsed = time.monotonic() - sigterm
    finally:
        err = stop(process)
    assert process.returncode == 0, err
    assert elapsed >= delay - 0.1
    assert elapsed < 2 * delay - 0.1  # once, not once in the supervisor and again per worker
    with pytest.raises((ConnectionRefusedError, Refused, OSError)):
        alice_status(pki, port)
    assert "drain_delay: accepting for 2.0 s more before draining" in log_path.read_text()
