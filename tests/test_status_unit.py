"""Unit tests of the pure parts of ``[status]``: the configuration, the handshake failure classes,
readiness, and the metrics objects fed by hand (no reactor, no process)."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from OpenSSL import crypto
from OpenSSL._util import lib
from test_config import changed, config_error, minimal, write_config
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from gateway.authz.interfaces import Decision, RequestInfo
from gateway.authz.policy import Policy
from gateway.authz.registry import NamedAuthorizer
from gateway.config import load
from gateway.handshake_failure import REASONS, failure_reason
from gateway.metrics import GatewayMetrics, certificate_expiries, upstream_failure
from gateway.pki import make_ca
from gateway.status import Readiness, RouteCheck, probe_interval

# -- configuration ------------------------------------------------------------------------------


def test_status_is_off_without_the_section(tmp_path: Path) -> None:
    assert load(write_config(tmp_path, minimal())).status is None


@pytest.mark.parametrize("listen", ["tcp:9100:interface=127.0.0.1", "tcp6:9100:interface=\\:\\:1",
                                    "unix:/run/mtlsgw/status.sock", "tcp:0:interface=127.0.0.1"])
def test_status_on_loopback_or_a_unix_socket(tmp_path: Path, listen: str) -> None:
    settings = load(write_config(tmp_path, changed({("status", "listen"): listen})))
    assert settings.status is not None and settings.status.listen == listen


@pytest.mark.parametrize("listen", ["tcp:9100", "tcp:9100:interface=0.0.0.0",
                                    "tcp:9100:interface=10.0.0.5", "systemd:domain=INET:index=0"])
def test_status_beyond_loopback_needs_allow_non_loopback(tmp_path: Path, listen: str) -> None:
    path = write_config(tmp_path, changed({("status", "listen"): listen}))
    message = config_error(load, path)
    assert message == (f"{path}: [status] listen = {listen!r}: the status listener must listen "
                       "on loopback (interface=127.0.0.1 or ::1) or a unix socket; set "
                       "allow_non_loopback = yes to override")
    path = write_config(tmp_path, changed({("status", "listen"): listen,
                                           ("status", "allow_non_loopback"): "yes"}))
    assert load(path).status.listen == listen


@pytest.mark.parametrize(("changes", "problem"), [
    ({("status", "allow_non_loopback"): "no"},
     "[status] listen: required key is missing or empty"),
    ({("status", "listen"): "ssl:9100:interface=127.0.0.1"},
     "the status listener speaks plain HTTP"),
    ({("status", "listen"): "haproxy:tcp:9100:interface=127.0.0.1"},
     "the status listener speaks plain HTTP"),
    ({("status", "listen"): "tcp:http:interface=127.0.0.1"},
     "not a Twisted server endpoint description"),
    ({("status", "listen"): "tcp:70000:interface=127.0.0.1"},
     "the port must be between 0 and 65535"),
    ({("status", "listen"): "nonsense:1"}, "not a Twisted server endpoint description"),
    ({("status", "listen"): "tcp:9100:interface=127.0.0.1", ("status", "port"): "1"},
     "[status] port = '1': unknown key (known keys: allow_non_loopback, listen)"),
    ({("gateway", "ready_check"): "maybe"}, "[gateway] ready_check = 'maybe': must be yes or no"),
    ({("gateway", "ready_check_window"): "0"},
     "[gateway] ready_check_window = '0': must be more than 0"),
])
def test_status_mistakes_are_one_line(tmp_path: Path, changes: dict, problem: str) -> None:
    assert problem in config_error(load, write_config(tmp_path, changed(changes)))


def test_ready_check_keys_per_route(tmp_path: Path) -> None:
    sections = minimal()
    sections["status"] = {"listen": "tcp:9100:interface=127.0.0.1"}  # ready_check needs it
    sections["route:api"] = {"prefix": "/api/", "upstream": "http://127.0.0.1:9000",
                             "ready_check": "yes", "ready_check_window": "2.5"}
    routes = {r.name: r.upstream for r in load(write_config(tmp_path, sections)).routes}
    assert (routes["api"].ready_check, routes["api"].ready_check_window) == (True, 2.5)
    assert (routes["default"].ready_check, routes["default"].ready_check_window) == (False, 10.0)


@pytest.mark.parametrize("section", ["gateway", "route:api"])
def test_ready_check_without_a_status_listener_is_one_line(tmp_path: Path, section: str) -> None:
    sections = minimal()
    sections["route:api"] = {"prefix": "/api/", "upstream": "http://127.0.0.1:9000"}
    sections[section]["ready_check"] = "on"
    path = write_config(tmp_path, sections)
    assert config_error(load, path) == (
        f"{path}: [{section}] ready_check = 'on': needs a [status] section: readiness is "
        "reported on its /readyz")


# -- handshake failure classes ------------------------------------------------------------------

@pytest.mark.parametrize(("name", "reason"), [
    ("CERT_HAS_EXPIRED", "expired"),
    ("CERT_NOT_YET_VALID", "not-yet-valid"),
    ("UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "unknown-ca"),
    ("UNABLE_TO_GET_ISSUER_CERT", "unknown-ca"),
    ("UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unknown-ca"),
    ("DEPTH_ZERO_SELF_SIGNED_CERT", "unknown-ca"),
    ("SELF_SIGNED_CERT_IN_CHAIN", "unknown-ca"),
    ("INVALID_CA", "unknown-ca"),
    ("CERT_UNTRUSTED", "unknown-ca"),
    ("CERT_REJECTED", "unknown-ca"),
    ("CERT_REVOKED", "revoked"),
    ("UNABLE_TO_GET_CRL", "crl-problem"),
    ("CRL_HAS_EXPIRED", "crl-problem"),
    ("CRL_NOT_YET_VALID", "crl-problem"),
    ("CRL_SIGNATURE_FAILURE", "crl-problem"),
    ("UNABLE_TO_DECRYPT_CRL_SIGNATURE", "crl-problem"),
    ("ERROR_IN_CRL_LAST_UPDATE_FIELD", "crl-problem"),
    ("ERROR_IN_CRL_NEXT_UPDATE_FIELD", "crl-problem"),
    ("UNABLE_TO_GET_CRL_ISSUER", "crl-problem"),
    ("KEYUSAGE_NO_CRL_SIGN", "crl-problem"),
    ("UNHANDLED_CRITICAL_CRL_EXTENSION", "crl-problem"),
    ("DIFFERENT_CRL_SCOPE", "crl-problem"),
    ("CRL_PATH_VALIDATION_ERROR", "crl-problem"),
    ("INVALID_PURPOSE", "eku"),
    ("CERT_CHAIN_TOO_LONG", "depth"),
    ("PATH_LENGTH_EXCEEDED", "depth"),
    ("PERMITTED_VIOLATION", "bad-names"),
    ("EXCLUDED_VIOLATION", "bad-names"),
    ("UNSUPPORTED_NAME_SYNTAX", "bad-names"),
    ("CERT_SIGNATURE_FAILURE", "other"),
    ("UNHANDLED_CRITICAL_EXTENSION", "other"),
])
def test_openssl_verify_codes_map_to_their_class(name: str, reason: str) -> None:
    # The numbers in gateway/handshake_failure.py are OpenSSL's, checked against its headers.
    code = getattr(lib, f"X509_V_ERR_{name}")
    assert failure_reason(code, "any text", "certificate verify failed", True) == reason


@pytest.mark.parametrize(("verify_text", "reason"), [
    ("extended key usage does not allow clientAuth", "eku"),
    ("extended key usage could not be read: bad DER", "eku"),
    ("certificate names could not be read: bad DER", "bad-names"),
    ("subject has a control character", "bad-names"),
])
def test_the_gateways_own_leaf_checks(verify_text: str, reason: str) -> None:
    assert failure_reason(-1, verify_text, "certificate verify failed", True) == reason


@pytest.mark.parametrize(("ssl_text", "ssl_error", "reason"), [
    ("peer did not return a certificate", True, "no-certificate"),
    ("tlsv13 alert certificate required", True, "no-certificate"),
    ("wrong version number", True, "protocol"),
    ("no shared cipher", True, "protocol"),
    ("unsupported protocol", True, "protocol"),
    ("Connection was closed cleanly.", False, "other"),
    ("Connection lost.", False, "other"),
])
def test_handshake_errors_without_a_verify_error(ssl_text: str, ssl_error: bool,
                                                 reason: str) -> None:
    assert failure_reason(None, None, ssl_text, ssl_error) == reason


def test_every_class_is_documented() -> None:
    documented = Path(__file__).parent.parent.joinpath("docs", "operations.md").read_text()
    for reason in REASONS:
        assert f"`{reason}`" in documented, reason


# -- readiness ----------------------------------------------------------------------------------

def test_readiness_states() -> None:
    readiness = Readiness()
    assert readiness.report(0) == (False, "starting")
    readiness.state = "ready"
    assert readiness.report(0) == (True, "ready")
    readiness.reload_error = "gw.ini: [tls] crl = 'x': file not found: x"
    assert readiness.report(0) == (True, "ready; last reload failed: gw.ini: [tls] crl = 'x': "
                                         "file not found: x")
    readiness.workers = lambda: "workers starting: 1 of 2 up"
    assert readiness.report(0) == (False, "workers starting: 1 of 2 up")
    readiness.state = "draining"
    assert readiness.report(0) == (False, "draining")


def test_route_check_fails_only_after_a_whole_window_of_failures() -> None:
    check = RouteCheck("api", "http://10.0.0.1:80", window=10)
    readiness = Readiness(state="ready", checks=[check])
    check.record(False, 100.0)
    assert readiness.report(109.9) == (True, "ready")
    check.record(False, 105.0)  # still failing since 100
    assert readiness.report(110.0) == (
        False, "route api: upstream http://10.0.0.1:80 refused connections for the last 10 s")
    check.record(True, 111.0)
    check.record(False, 112.0)
    assert readiness.report(121.0) == (True, "ready")


@pytest.mark.parametrize(("window", "interval"), [(10, 2.0), (1, 0.2), (0.1, 0.1), (60, 2.0)])
def test_probe_interval(window: float, interval: float) -> None:
    assert probe_interval(window) == interval


# -- metrics, fed by hand -----------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [
    ("-", None), ("client-gone", None), ("200-client-gone", None),
    ("upstream-unreachable", "upstream-unreachable"), ("upstream-error", "upstream-error"),
    ("timeout", "timeout"), ("upstream-head-too-large", "upstream-head-too-large"),
    ("200-aborted", "aborted"), ("--client-gone", None),
    ("drain-timeout", None), ("200-drain-timeout", None), ("200-aborted-drain-timeout", "aborted"),
])
def test_upstream_failure_kinds(status: str, kind: str | None) -> None:
    assert upstream_failure(status) == kind


def _exchange(route: str | None, status: int | None, decision: Decision | None,
              upstream_status: int | str = 200, **extra: float) -> SimpleNamespace:
    fields = {"received_bytes": 0, "sent_bytes": 0, "upstream_sent": 0.0, "upstream_headed": 0.0,
              "started": 0.0, **extra}
    return SimpleNamespace(route=SimpleNamespace(name=route) if route else None, status=status,
                           decision=decision, upstream_status=upstream_status, **fields)


def test_request_counters() -> None:
    metrics = GatewayMetrics("single")
    listener = metrics.listener("main")
    assert metrics.listener("main") is listener
    allow, deny = Decision(True, "cn-allowed", "team"), Decision(False, "cn-not-allowed", "team")
    listener.request(_exchange("api", 200, allow, received_bytes=10, sent_bytes=20,
                               upstream_sent=1.0, upstream_headed=1.5))
    listener.request(_exchange("api", 200, allow, sent_bytes=5))
    listener.request(_exchange("api", 403, deny, "-"))
    listener.request(_exchange(None, 404, None, "-"))
    listener.request(_exchange("api", None, allow, "client-gone"))
    listener.request(_exchange("api", 502, allow, "upstream-unreachable"))
    get = metrics.registry.get_sample_value
    for labels, count in [(("api", "200", "allow"), 2), (("api", "403", "deny"), 1),
                          (("-", "404", "-"), 1), (("api", "-", "allow"), 1),
                          (("api", "502", "allow"), 1)]:
        route, code, decision = labels
        assert get("mtlsgw_requests_total", {"listener": "main", "route": route, "code": code,
                                             "decision": decision}) == count
    assert get("mtlsgw_denials_total", {"route": "api", "reason": "cn-not-allowed"}) == 1
    assert get("mtlsgw_upstream_failures_total",
               {"route": "api", "kind": "upstream-unreachable"}) == 1
    assert get("mtlsgw_request_bytes_total", {"route": "api"}) == 10
    assert get("mtlsgw_response_bytes_total", {"route": "api"}) == 25
    assert get("mtlsgw_upstream_response_seconds_count", {"route": "api"}) == 1
    assert get("mtlsgw_upstream_response_seconds_sum", {"route": "api"}) == 0.5
    assert get("mtlsgw_request_duration_seconds_count", {"route": "api"}) == 5


def test_denial_reasons_stay_bounded_whatever_authorizers_answer() -> None:
    metrics = GatewayMetrics("single")
    listener = metrics.listener("main")
    for i in range(200):  # an authorization service inventing a reason per request
        listener.request(_exchange("api", 403, Decision(False, f"reason-{i}", "remote"), "-"))
    families = {f.name: f for f in metrics.registry.collect()}
    samples = [s for s in families["mtlsgw_denials"].samples if s.name.endswith("_total")]
    assert len(samples) == 65  # 64 distinct reasons and "other"
    get = metrics.registry.get_sample_value
    assert get("mtlsgw_denials_total", {"route": "api", "reason": "reason-0"}) == 1
    assert get("mtlsgw_denials_total", {"route": "api", "reason": "other"}) == 136


def test_handshake_counters() -> None:
    metrics = GatewayMetrics("single")
    listener = metrics.listener("main")
    listener.handshake_completed(0.002)
    listener.handshake_failed("expired")
    get = metrics.registry.get_sample_value
    assert get("mtlsgw_handshakes_total", {"listener": "main", "result": "success"}) == 1
    assert get("mtlsgw_handshakes_total", {"listener": "main", "result": "failure"}) == 1
    assert get("mtlsgw_handshake_failures_total", {"listener": "main", "reason": "expired"}) == 1
    assert get("mtlsgw_handshake_failures_total", {"listener": "main", "reason": "depth"}) == 0
    assert get("mtlsgw_handshake_seconds_sum", {"listener": "main"}) == 0.002


class _Authorizer:
    def __init__(self, result: object) -> None:
        self.result = result

    def authorize(self, identity: object, request: object) -> object:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result() if callable(self.result) else self.result


REQUEST = RequestInfo("GET", "/", None, None, "127.0.0.1")


@pytest.mark.parametrize(("result", "errors", "timeouts"), [
    (Decision.allow("ok"), 0, 0),
    (RuntimeError("boom"), 1, 0),
    ("not a decision", 1, 0),
    (lambda: fail(RuntimeError("boom")), 1, 0),
    (Deferred, 0, 1),  # never fires: the policy's timeout cancels it
])
def test_timed_authorizers(result: object, errors: int, timeouts: int) -> None:
    metrics = GatewayMetrics("single")
    clock = Clock()
    timed = metrics.authorizer("team", _Authorizer(result))
    policy = Policy("any", (NamedAuthorizer("team", timed),), timeout=1.0, clock=clock)
    decisions: list[Decision] = []
    outcome = policy.decide_now(None, REQUEST)
    if isinstance(outcome, Deferred):
        outcome.addCallback(decisions.append)
        clock.advance(2)
    else:
        decisions.append(outcome)
    assert decisions[0].allowed == (errors + timeouts == 0)
    get = metrics.registry.get_sample_value
    assert get("mtlsgw_authorizer_seconds_count", {"authorizer": "team"}) == 1
    assert get("mtlsgw_authorizer_errors_total", {"authorizer": "team", "kind": "error"}) == errors
    assert get("mtlsgw_authorizer_errors_total",
               {"authorizer": "team", "kind": "timeout"}) == timeouts


def test_certificate_expiries_read_every_certificate_of_each_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    second = make_ca("second CA")
    clients = tmp_path / "clients-ca.pem"
    clients.write_bytes(clients.read_bytes() + second.cert_pem())
    found = {(e.role, Path(e.file).name, e.index): e.not_after
             for e in certificate_expiries(load(path))}
    server = crypto.load_certificate(crypto.FILETYPE_PEM, (tmp_path / "server.pem").read_bytes())
    not_after = datetime.datetime.strptime(server.get_notAfter().decode(), "%Y%m%d%H%M%SZ")
    assert found == {
        ("server", "server.pem", 0): not_after.replace(tzinfo=datetime.UTC).timestamp(),
        ("client-ca", "clients-ca.pem", 0): found[("client-ca", "clients-ca.pem", 0)],
        ("client-ca", "clients-ca.pem", 1): second.certificate.not_valid_after_utc.timestamp(),
    }


def test_check_config_shows_the_status_listener(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write_config(tmp_path, changed({("status", "listen"): "tcp:9100:interface=127.0.0.1"}))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "  status: tcp:9100:interface=127.0.0.1 (plain HTTP: /healthz, /readyz, /metrics)\n" \
        in result.stdout
    path = write_config(tmp_path, changed({("status", "listen"): "tcp:9100"}))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == (f"mtlsgw: {path}: [status] listen = 'tcp:9100': the status "
                             "listener must listen on loopback (interface=127.0.0.1 or ::1) or a "
                             "unix socket; set allow_non_loopback = yes to override\n")


def test_worker_snapshots_add_up_in_the_supervisor(tmp_path: Path, monkeypatch) -> None:
    import os

    supervisor = GatewayMetrics("supervisor")
    supervisor.read_workers(str(tmp_path))
    allow = Decision(True, "cn-allowed", "team")
    for pid, requests in ((101, 3), (102, 2)):
        worker = GatewayMetrics("worker")
        listener = worker.listener("main")
        for _ in range(requests):
            listener.request(_exchange("api", 200, allow, started=0.0))
        listener.handshake_completed(0.01)
        worker.sample_from(lambda: [(("main", "h1"), 1.0)], list)
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        worker.write_snapshot(str(tmp_path))
    get = supervisor.registry.get_sample_value
    labels = {"listener": "main", "route": "api", "code": "200", "decision": "allow"}
    assert get("mtlsgw_requests_total", labels) == 5
    assert get("mtlsgw_request_duration_seconds_count", {"route": "api"}) == 5
    assert get("mtlsgw_request_duration_seconds_bucket", {"route": "api", "le": "+Inf"}) == 5
    assert get("mtlsgw_handshake_seconds_bucket", {"listener": "main", "le": "0.01"}) == 2
    assert get("mtlsgw_handshake_seconds_bucket", {"listener": "main", "le": "0.005"}) == 0
    assert get("mtlsgw_connections_open", {"listener": "main", "protocol": "h1"}) == 2
    supervisor.retire(101)  # exited: its counts stay, its gauges go
    assert not (tmp_path / "worker-101.json").exists()
    assert get("mtlsgw_requests_total", labels) == 5
    assert get("mtlsgw_connections_open", {"listener": "main", "protocol": "h1"}) == 1
    assert get("mtlsgw_handshakes_total", {"listener": "main", "result": "success"}) == 2
    # The worker's own registry exposes nothing: the supervisor's does.
    assert list(GatewayMetrics("worker").registry.collect()) == []


def test_denial_reasons_stay_bounded_across_workers_and_their_restarts(tmp_path: Path,
                                                                        monkeypatch) -> None:
    import os

    supervisor = GatewayMetrics("supervisor")
    supervisor.read_workers(str(tmp_path))
    get = supervisor.registry.get_sample_value

    def worker(pid: int, first: int) -> None:  # 100 denials, each with a reason of its own
        metrics = GatewayMetrics("worker")
        listener = metrics.listener("main")
        for i in range(first, first + 100):
            listener.request(_exchange("api", 403, Decision(False, f"r-{i}", "remote"), "-"))
        monkeypatch.setattr(os, "getpid", lambda: pid)
        metrics.write_snapshot(str(tmp_path))

    def reasons() -> dict[str, float]:
        families = {f.name: f for f in supervisor.registry.collect()}
        return {s.labels["reason"]: s.value for s in families["mtlsgw_denials"].samples
                if s.name.endswith("_total")}

    worker(101, 0)
    worker(102, 1000)
    first = reasons()
    assert len(first) == 65 and sum(first.values()) == 200  # 64 reasons and "other"
    supervisor.retire(101)  # a restart: its replacement invents new reasons
    worker(103, 2000)
    later = reasons()
    assert len(later) == 65 and sum(later.values()) == 300
    # Every series shown before only grew (a counter), and the same reasons are shown.
    assert set(later) == set(first)
    assert all(later[r] >= v for r, v in first.items())
    assert get("mtlsgw_denials_total", {"route": "api", "reason": "other"}) == 300 - 64


def test_reload_and_crl_gauges(tmp_path: Path) -> None:
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes

    ca = make_ca("CRL issuer")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    crl = (cx509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
           .last_update(now).next_update(now + datetime.timedelta(days=7))
           .sign(ca.key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    sections = changed({("tls", "crl"): "clients.crl"})
    path = write_config(tmp_path, sections)
    (tmp_path / "clients.crl").write_bytes(crl.public_bytes(Encoding.PEM))
    settings = load(path)
    metrics = GatewayMetrics("single")
    metrics.configured(settings, None)
    get = metrics.registry.get_sample_value
    assert get("mtlsgw_crl_next_update_timestamp_seconds",
               {"file": str(tmp_path / "clients.crl"), "index": "0"}) == (
        now + datetime.timedelta(days=7)).timestamp()
    assert get("mtlsgw_config_generation", {}) == 1
    metrics.configured(None, False)
    assert (get("mtlsgw_config_generation", {}), get("mtlsgw_config_last_reload_successful", {}),
            get("mtlsgw_reloads_total", {"result": "failure"})) == (1, 0, 1)
    metrics.configured(settings, True)
    assert (get("mtlsgw_config_generation", {}), get("mtlsgw_config_last_reload_successful", {}),
            get("mtlsgw_reloads_total", {"result": "success"})) == (2, 1, 1)


def test_upstream_certificates_have_their_roles(tmp_path: Path) -> None:
    from gateway.pki import make_leaf

    upstream_ca = make_ca("upstream CA")
    client = make_leaf(upstream_ca, "gateway")
    (tmp_path / "upstream-ca.pem").write_bytes(upstream_ca.cert_pem())
    client.write(tmp_path / "gw-client.crt", tmp_path / "gw-client.key")
    sections = minimal()
    for name in ("a", "b"):  # the same files twice: listed once
        sections[f"route:{name}"] = {
            "prefix": f"/{name}/", "upstream": "https://api.example:443",
            "upstream_ca": "upstream-ca.pem", "upstream_certificate": "gw-client.crt",
            "upstream_private_key": "gw-client.key"}
    found = [(e.role, Path(e.file).name, e.index, e.not_after)
             for e in certificate_expiries(load(write_config(tmp_path, sections)))]
    assert [f for f in found if f[0].startswith("upstream")] == [
        ("upstream-client", "gw-client.crt", 0,
         client.certificate.not_valid_after_utc.timestamp()),
        ("upstream-ca", "upstream-ca.pem", 0,
         upstream_ca.certificate.not_valid_after_utc.timestamp())]


def _status_connection() -> tuple[object, object]:
    from twisted.internet.testing import StringTransport

    from gateway.status import StatusFactory

    operations = SimpleNamespace(reactor=Clock(), pages={
        b"/healthz": lambda: (200, b"text/plain", b"ok\n")})
    protocol = StatusFactory(operations).buildProtocol(None)  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_status_answers_once_whatever_follows_the_request() -> None:
    """Bytes after the request (pipelined garbage) in the same segment get no second answer on
    a connection already answered with Connection: close."""
    protocol, transport = _status_connection()
    protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\x00\r\n\r\n")
    written = transport.value()
    assert written.count(b"HTTP/1.1 ") == 1
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
