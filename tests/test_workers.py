"""Unit tests of the pure parts of ``[gateway] workers``: parsing the value, ``auto`` from the
affinity mask and cgroup v2 ``cpu.max``, the restart back-off, and relaying worker log lines."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel, eventAsJSON, formatEvent, formatEventAsClassicLogText

from gateway.config import ConfigError, load
from gateway.worker import PipeLogObserver
from gateway.workers import (
    MAX_WORKERS,
    Backoff,
    auto_workers,
    cgroup_cpu_max,
    cpu_quota,
    worker_event,
)


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000\n", None),
    ("max", None),
    ("200000 100000\n", 2),
    ("150000 100000", 2),  # 1.5 CPUs: ceil
    ("50000 100000", 1),  # half a CPU is still one worker
    ("100000", 1),  # the period defaults to 100000
    ("", None),
    ("garbage here", None),
    ("0 100000", None),
    ("-1 100000", None),
])
def test_cpu_quota_reads_cgroup_v2_cpu_max(text, cpus):
    assert cpu_quota(text) == cpus


@pytest.mark.parametrize(("affinity", "cpu_max", "expected"), [
    (8, [], 8),  # no cgroup file: the affinity mask
    (8, ["max 100000"], 8),  # no quota
    (8, ["200000 100000"], 2),  # a pod limited to 2 CPUs on an 8-CPU node
    (2, ["400000 100000"], 2),  # a quota above the affinity: the affinity
    (8, ["max 100000", "300000 100000"], 3),  # a quota further up the tree applies
    (8, ["300000 100000", "150000 100000"], 2),  # the smallest quota wins
    (1, ["10000 100000"], 1),
    (1000, [], MAX_WORKERS),
])
def test_auto_workers_is_the_affinity_bounded_by_the_quota(affinity, cpu_max, expected):
    assert auto_workers(affinity, cpu_max) == expected


def test_cgroup_cpu_max_reads_this_cgroup_and_its_ancestors(tmp_path):
    root = tmp_path / "cgroup"
    service = root / "system.slice" / "mtlsgw.service"
    service.mkdir(parents=True)
    (service / "cpu.max").write_text("150000 100000\n")
    (root / "system.slice" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/system.slice/mtlsgw.service\n")
    assert cgroup_cpu_max(root, proc) == ["150000 100000\n", "max 100000\n"]
    # A namespaced container sees its own cgroup as the root.
    (root / "cpu.max").write_text("200000 100000\n")
    proc.write_text("0::/\n")
    assert cgroup_cpu_max(root, proc) == ["200000 100000\n"]
    # cgroup v1 only, or no /proc: nothing.
    assert cgroup_cpu_max(tmp_path / "nowhere", tmp_path / "missing") == []


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run():
    backoff = Backoff(first=0.5, cap=30.0, stable_after=30.0)
    delays = [backoff.next_delay(uptime=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.next_delay(uptime=30.0) == 0.5  # it had stayed up: start over
    assert backoff.next_delay(uptime=2.0) == 1.0


def test_a_worker_event_keeps_its_namespace_level_and_time_and_is_tagged():
    events = []
    Logger(namespace="mtlsgw.access", observer=events.append).info(
        "{access}", access='request peer=127.0.0.1 path="/x" status=200')
    line = eventAsJSON(events[0]).encode()
    relayed = worker_event(2, line, stderr=False, now=0.0)
    assert relayed["log_namespace"] == "mtlsgw.access"
    assert relayed["log_level"] == LogLevel.info
    assert relayed["log_time"] == events[0]["log_time"]
    assert formatEvent(relayed) == 'worker=2 request peer=127.0.0.1 path="/x" status=200'
    # Still an access event (format {access}): a buffering observer recognises it.
    assert relayed["log_format"] == "{access}"
    assert relayed["access"] == 'worker=2 request peer=127.0.0.1 path="/x" status=200'


class _Clock:
    def __init__(self) -> None:
        self.calls: list[object] = []

    def callLater(self, delay, f):
        self.calls.append(f)


def test_the_pipe_observer_buffers_a_reactor_iteration_and_the_supervisor_reads_it_back():
    out = io.BytesIO()
    observer = PipeLogObserver(out)
    log = Logger(namespace="mtlsgw.access", observer=observer)
    log.info("{access}", access='request peer=127.0.0.1 path="/a" status=200')  # no clock: now
    assert out.getvalue().startswith(b"A ")
    observer.clock = clock = _Clock()
    log.info("{access}", access='request peer=127.0.0.1 path="/b" status=403')
    Logger(namespace="mtlsgw", observer=observer).warn("reload refused: {why}", why="x")
    assert out.getvalue().count(b"\n") == 1 and len(clock.calls) == 1  # one flush scheduled
    observer.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    relayed = [worker_event(2, line, stderr=False, now=0.0) for line in lines]
    assert [formatEvent(e) for e in relayed] == [
        'worker=2 request peer=127.0.0.1 path="/a" status=200',
        'worker=2 request peer=127.0.0.1 path="/b" status=403',
        "worker=2 reload refused: x"]
    assert [e["log_namespace"] for e in relayed] == ["mtlsgw.access", "mtlsgw.access", "mtlsgw"]
    assert [e["log_level"] for e in relayed] == [LogLevel.info, LogLevel.info, LogLevel.warn]
    assert relayed[0]["log_format"] == "{access}"  # an access event: buffered by twistd's observer
    assert abs(relayed[0]["log_time"] - time.time()) < 60
    assert worker_event(1, b"A nonsense", stderr=False, now=1.0)["log_namespace"] == (
        "mtlsgw.worker")


def test_other_worker_output_is_relayed_as_a_tagged_line():
    line = "mtlsgw: /etc/gw.ini: [tls] certificate = 'x': file not found"
    err = worker_event(1, line.encode(), stderr=True, now=5.0)
    assert (err["log_namespace"], err["log_level"], err["log_time"]) == (
        "mtlsgw.worker", LogLevel.error, 5.0)
    assert formatEvent(err) == f"worker=1 {line}"
    stray = worker_event(1, json.dumps([1, 2]).encode(), stderr=False, now=5.0)
    assert formatEvent(stray) == "worker=1 [1, 2]"
    assert stray["log_level"] == LogLevel.info


# -- the config key -----------------------------------------------------------------------------


def _write(tmp_path: Path, gateway: str, extra: str = "") -> Path:
    path = tmp_path / "gw.ini"
    path.write_text("[gateway]\ntls = off\nallow_non_loopback = yes\n"
                    f"upstream = http://127.0.0.1:3000\n{gateway}\n{extra}")
    return path


@pytest.mark.parametrize(("value", "count"), [("1", 1), ("2", 2), (" 4 ", 4), ("256", 256)])
def test_workers_accepts_counts(tmp_path, value, count):
    settings = load(_write(tmp_path, f"listen = tcp:8080:interface=127.0.0.1\nworkers = {value}"))
    assert settings.workers == count
    assert settings.supervised is (count > 1)


def test_workers_auto_counts_the_cpus_and_is_always_supervised(tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.workers.available_cpus", lambda: 1)
    settings = load(_write(tmp_path, "listen = tcp:8080:interface=127.0.0.1\nworkers = auto"))
    assert (settings.workers, settings.workers_auto, settings.supervised) == (1, True, True)
    monkeypatch.setattr("gateway.workers.available_cpus", lambda: 3)
    settings = load(_write(tmp_path, "listen = tcp:8080:interface=127.0.0.1\nworkers = AUTO"))
    assert settings.workers == 3


def test_workers_default_is_one_process(tmp_path):
    settings = load(_write(tmp_path, "listen = tcp:8080:interface=127.0.0.1"))
    assert (settings.workers, settings.supervised) == (1, False)


@pytest.mark.parametrize("value", ["0", "-1", "many", "257", "1.5", "2x"])
def test_bad_workers_values_are_one_line_errors(tmp_path, value):
    path = _write(tmp_path, f"listen = tcp:8080:interface=127.0.0.1\nworkers = {value}")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: [gateway] workers = {value!r}: must be auto or an "
                                 f"integer between 1 and {MAX_WORKERS}")


def test_workers_with_reuse_port_is_an_error(tmp_path):
    path = _write(tmp_path, "listen = tcp:8080:interface=127.0.0.1\nworkers = 2",
                  "[listener:b]\nlisten = tcp:8081:interface=127.0.0.1\ntls = off\n"
                  "reuse_port = yes\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: [gateway] workers = '2': cannot be combined with "
                              "reuse_port = yes ([listener:b])")
    assert "\n" not in message


@pytest.mark.parametrize("listen", ["unix:/run/mtlsgw/gw.sock", "tcp6:8080:interface=\\:\\:1",
                                    "systemd:domain=INET:index=0",
                                    "haproxy:tcp:8080:interface=127.0.0.1",
                                    "haproxy:unix:/run/mtlsgw/gw.sock"])
def test_workers_share_tcp_unix_and_systemd_listeners(tmp_path, listen):
    assert load(_write(tmp_path, f"listen = {listen}\nworkers = 2")).workers == 2


def test_workers_refuse_a_listener_they_cannot_share(tmp_path):
    listen = "stdio:"  # an endpoint the supervisor cannot bind
    path = _write(tmp_path, f"listen = {listen}\nworkers = 2")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == (
        f"{path}: [gateway] workers = '2': the listener in [gateway] ({listen}) cannot be shared "
        "by workers: only tcp:, tcp6:, unix: and systemd: listeners (also behind haproxy:) can")
    assert load(_write(tmp_path, f"listen = {listen}")).workers == 1


def test_a_worker_failure_keeps_its_traceback():
    events = []
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        Logger(namespace="mtlsgw", observer=events.append).failure("authorizer x failed")
    relayed = worker_event(3, eventAsJSON(events[0]).encode(), stderr=False, now=0.0)
    text = formatEventAsClassicLogText(relayed)
    assert "[mtlsgw#critical] worker=3 authorizer x failed" in text
    assert "Traceback (most recent call last)" in text
    assert "ZeroDivisionError" in text
