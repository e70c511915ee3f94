"""The pure parts of systemd notification (gateway/notify.py), file watching (gateway/watch.py),
the passed-socket check (gateway/activation.py) and their configuration keys, without a reactor
(a Clock drives the timers)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import base_sections
from harness import render_ini
from twisted.internet.task import Clock
from twisted.python.systemd import ListenFDs

from gateway import config
from gateway.activation import check_passed_sockets
from gateway.notify import SystemdNotifier, encode, socket_address, watchdog_interval
from gateway.watch import FileState, FileWatcher, changed, take, watched_files

# -- notify -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "address"), [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@/org/freedesktop/systemd1/notify/123", b"\0/org/freedesktop/systemd1/notify/123"),
    ("", None), (None, None), ("vsock:2:1234", None), ("relative", None),
])
def test_socket_address(value, address):
    assert socket_address(value) == address


def test_encode_keeps_each_value_on_one_line():
    assert encode({"READY": "1", "STATUS": "a\nMAINPID=1\x00\x7f"}) == (
        b"READY=1\nSTATUS=a MAINPID=1  \n")


@pytest.mark.parametrize(("environ", "interval"), [
    ({"WATCHDOG_USEC": "1000000"}, 0.5),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "43"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "x"}, None), ({}, None),
])
def test_watchdog_interval(environ, interval):
    assert watchdog_interval(environ, 42) == interval


def receiver(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n"))
    sock.settimeout(5)
    return sock


def test_notifier_sends_and_pings_on_the_clock(tmp_path):
    sock = receiver(tmp_path)
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "2000000"}, pid=1)
    notifier.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving\n"
    notifier.reloading()
    fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
    assert fields["RELOADING"] == "1" and int(fields["MONOTONIC_USEC"]) > 0
    notifier.reloaded(False)
    assert b"READY=1\nSTATUS=reload refused" in sock.recv(4096)
    clock = Clock()
    notifier.start_watchdog(clock)
    assert sock.recv(4096) == b"WATCHDOG=1\n"  # at once
    clock.advance(1.0)
    assert sock.recv(4096) == b"WATCHDOG=1\n"


def test_without_notify_socket_nothing_happens():
    notifier = SystemdNotifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert notifier.watchdog is None
    clock = Clock()
    notifier.ready("x")
    notifier.start_watchdog(clock)
    assert clock.getDelayedCalls() == []


def test_a_manager_that_is_gone_is_logged_once_and_never_raises(tmp_path):
    notifier = SystemdNotifier(str(tmp_path / "nobody"))
    notifier.ready("x")
    notifier.stopping("y")  # no exception; the warning was logged the first time only
    assert notifier._failed


# -- watch --------------------------------------------------------------------------------------


def test_changed_compares_content_not_stat(tmp_path):
    path = tmp_path / "a.pem"
    path.write_bytes(b"one")
    first = take([path], {})
    os.utime(path, ns=(1, 1))  # same bytes, another mtime
    second = take([path], first)
    assert second[path].key != first[path].key
    assert changed(first, second) == []
    path.write_bytes(b"two")
    assert changed(second, take([path], second)) == [path]
    path.unlink()
    gone = take([path], second)
    assert gone[path] == FileState(None, None)
    assert changed(second, gone) == [path]


def test_symlinks_are_followed(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "tls.crt").write_bytes(b"one")
    (tmp_path / "..data").symlink_to("v1")
    link = tmp_path / "tls.crt"
    link.symlink_to("..data/tls.crt")
    before = take([link], {})
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "tls.crt").write_bytes(b"two")
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert changed(before, take([link], before)) == [link]


def test_watched_files_lists_every_file_once(tmp_path, pki):
    sections = base_sections(pki, "https://127.0.0.1:1")
    sections["gateway"]["listen"] = "tcp:8443"
    sections["gateway"]["upstream_ca"] = str(pki.ca)  # also the client CA: listed once
    sections["gateway"]["upstream_certificate"] = str(pki.alice().cert)
    sections["gateway"]["upstream_private_key"] = str(pki.alice().key)
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    assert watched_files(config.load(path)) == (
        path, pki.server.cert, pki.server.key, pki.ca, pki.alice().cert, pki.alice().key)


def test_watched_files_include_an_http_authorizers_tls_files(tmp_path, pki):
    sections = base_sections(pki, "http://127.0.0.1:1")
    sections["gateway"]["listen"] = "tcp:8443"
    (tmp_path / "authz-ca.pem").write_bytes(pki.ca.read_bytes())
    sections["authorize"] = {"authorizers": "central"}
    sections["authorizer:central"] = {
        "type": "http", "url": "https://127.0.0.1:1/check", "ca": "authz-ca.pem",
        "certificate": str(pki.alice().cert), "private_key": str(pki.alice().key)}
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    assert watched_files(config.load(path)) == (
        path, pki.server.cert, pki.server.key, pki.ca, tmp_path / "authz-ca.pem",
        pki.alice().cert, pki.alice().key)


def test_watcher_tries_each_new_set_of_states_once(tmp_path):
    cert, key = tmp_path / "c", tmp_path / "k"
    cert.write_bytes(b"c1")
    key.write_bytes(b"k1")
    results = [False, True]
    calls = []

    def reload() -> bool:
        calls.append((cert.read_bytes(), key.read_bytes()))
        return results[len(calls) - 1]

    clock = Clock()
    watcher = FileWatcher(clock, 5.0, lambda: [cert, key], reload)
    watcher.start()
    clock.advance(5)
    assert calls == []
    cert.write_bytes(b"c2")
    clock.advance(5)
    assert calls == [(b"c2", b"k1")]  # refused: the pair is incomplete
    clock.advance(5)
    clock.advance(5)
    assert len(calls) == 1  # not retried while nothing changes
    key.write_bytes(b"k2")
    clock.advance(5)
    assert calls[1:] == [(b"c2", b"k2")]
    watcher.stop()
    assert clock.getDelayedCalls() == []


# -- configuration ------------------------------------------------------------------------------


def load(tmp_path, pki, **gateway):
    sections = base_sections(pki, "http://127.0.0.1:1")
    sections["gateway"].update({"listen": "tcp:8443", **gateway})
    path = tmp_path / "gw.ini"
    path.write_text(render_ini(sections))
    return config.load(path)


def test_defaults(tmp_path, pki):
    settings = load(tmp_path, pki)
    assert (settings.watch_interval, settings.limits.drain_delay) == (0.0, 0.0)
    assert load(tmp_path, pki, watch_files="yes").watch_interval == 5.0
    assert load(tmp_path, pki, watch_interval="2").watch_interval == 0.0  # watch_files = no
    settings = load(tmp_path, pki, watch_files="yes", watch_interval="0.5", drain_delay="5")
    assert (settings.watch_interval, settings.limits.drain_delay) == (0.5, 5.0)


@pytest.mark.parametrize(("values", "problem"), [
    ({"watch_files": "yes", "watch_interval": "0"},
     "[gateway] watch_interval = '0': must be more than 0 and at most 86400 seconds"),
    ({"watch_files": "maybe"}, "[gateway] watch_files = 'maybe': must be yes or no"),
    ({"drain_delay": "-1"},
     "[gateway] drain_delay = '-1': must be at least 0 and at most 86400 seconds"),
])
def test_mistakes_are_one_line(tmp_path, pki, values, problem):
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, pki, **values)
    assert str(caught.value) == f"{tmp_path / 'gw.ini'}: {problem}"


# -- socket activation --------------------------------------------------------------------------


@pytest.mark.parametrize(("listen", "passed", "problem"), [
    ("systemd:domain=INET:index=0", ListenFDs([], ()),
     "no passed socket at index 0; no socket was passed (LISTEN_FDS, LISTEN_PID and "
     "LISTEN_FDNAMES must all be set for this process, as a .socket unit sets them; Twisted takes "
     "no socket without its name, so systemd-socket-activate needs --fdname): start it through "
     "its .socket unit"),
    ("systemd:domain=INET:index=1", ListenFDs([3], ("https",)),
     "no passed socket at index 1; systemd passed 1 socket(s)"),
    ("systemd:domain=INET6:name=web", ListenFDs([3], ("https",)),
     "no passed socket named 'web' (names: https); systemd passed 1 socket(s)"),
    ("systemd:domain=INETX:index=0", ListenFDs([3], ("https",)),
     "domain=INETX is not an address family (INET, INET6, UNIX)"),
    ("systemd:domain=INET", ListenFDs([3], ("https",)),
     "give index= or name= (FileDescriptorName=) of the passed socket"),
])
def test_a_systemd_listener_needs_its_passed_socket(tmp_path, pki, listen, passed, problem):
    settings = load(tmp_path, pki, listen=listen)
    with pytest.raises(config.ConfigError) as caught:
        check_passed_sockets(settings, passed)
    assert str(caught.value) == f"{tmp_path / 'gw.ini'}: [gateway] listen = {listen!r}: {problem}"


@pytest.mark.parametrize("listen", ["systemd:domain=INET:index=0", "systemd:domain=INET:name=https",
                                    "haproxy:systemd:domain=INET6:name=https", "tcp:8443"])
def test_a_passed_socket_is_accepted(tmp_path, pki, listen):
    check_passed_sockets(load(tmp_path, pki, listen=listen), ListenFDs([3], ("https",)))


def test_a_change_a_sighup_reload_read_is_not_reloaded_again(tmp_path):
    # an operator edits the file and sends SIGHUP: one reload, one log line, +1 in the metrics
    path = tmp_path / "gw.ini"
    path.write_bytes(b"1")
    calls = []
    clock = Clock()
    watcher = FileWatcher(clock, 1.0, lambda: [path], lambda: calls.append(1) or False)
    watcher.start()
    path.write_bytes(b"2")
    watcher.reloaded()  # what the SIGHUP handler's reload tells it
    clock.advance(1)
    assert calls == []
    path.write_bytes(b"3")  # a later change is still seen
    clock.advance(1)
    assert calls == [1]
    watcher.stop()


def test_a_reload_that_raises_does_not_end_the_watching(tmp_path):
    path = tmp_path / "gw.ini"
    path.write_bytes(b"1")
    calls = []

    def reload() -> bool:
        calls.append(path.read_bytes())
        raise RuntimeError("a bug")

    clock = Clock()
    watcher = FileWatcher(clock, 1.0, lambda: [path], reload)
    watcher.start()
    path.write_bytes(b"2")
    clock.advance(1)
    path.write_bytes(b"3")
    clock.advance(1)
    assert calls == [b"2", b"3"]
    watcher.stop()


def test_a_file_that_is_not_a_regular_file_is_not_read(tmp_path):
    """A FIFO (or a device) put where a watched file was is never opened: opening a FIFO
    without a writer would block the reactor. It counts as a file that cannot be read."""
    path = tmp_path / "ca.pem"
    path.write_bytes(b"one")
    before = take([path], {})
    path.unlink()
    os.mkfifo(path)
    after = take([path], before)  # returns at once instead of waiting for a writer
    assert after[path] == FileState(None, None)
    assert changed(before, after) == [path]


def test_a_reload_that_fails_with_an_unexpected_error_keeps_the_running_state(
        tmp_path, pki, monkeypatch):
    # Not a ConfigError (a bug, or a library raising something else): refused all the same,
    # so that systemd gets READY=1 again and the old routes keep serving.
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    from gateway import service as service_module

    settings = load(tmp_path, pki)
    gateway = service_module.build(settings.path, MemoryReactorClock())
    running = gateway.generation

    def broken(*args, **kwargs):
        raise UnicodeError("label too long")

    monkeypatch.setattr(service_module, "load_generation", broken)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert gateway.reload() is False
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert gateway.generation is running
    refused = [e for e in events if "reload refused" in e.get("log_format", "")]
    assert len(refused) == 1 and "UnicodeError: label too long" in refused[0]["error"]
