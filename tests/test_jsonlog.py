"""Unit tests of the JSON log (gateway/jsonlog.py), request ids (gateway/requestid.py) and their
configuration: no reactor, no process. The end-to-end tests are in test_e2e_jsonlog.py."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from test_config import config_error, minimal, write_config
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from gateway.authz.interfaces import Decision
from gateway.config import HeaderSettings, load
from gateway.headers import is_owned, upstream_request_headers
from gateway.jsonlog import (
    JSONLogObserver,
    handshake_record,
    json_line,
    reload_record,
    request_members,
    rfc3339,
)
from gateway.pki import make_ca, make_leaf
from gateway.requestid import new_request_id, trusted_request_id
from gateway.tls import VerifyError
from gateway.worker import PipeLogObserver
from gateway.workers import worker_event

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "log-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(("when", "text"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1796126400.1234, "2026-12-01T12:00:00.123Z"),
    (1796126400.9999, "2026-12-01T12:00:00.999Z"),
    (1796126401.5, "2026-12-01T12:00:01.500Z"),
])
def test_time_is_rfc3339_utc_with_milliseconds(when, text):
    assert rfc3339(when) == text


def _lines(emit) -> list[str]:
    out = io.StringIO()
    emit(Logger(namespace="mtlsgw.test", observer=JSONLogObserver(out)))
    return out.getvalue().splitlines()


def test_any_event_is_one_ascii_json_line_valid_against_the_schema():
    def emit(log):
        log.info("client said {what}", what="caf\u00e9\n\x1b[31m\x00\x7f\u202e")
        log.warn("plain")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("it broke")
    lines = _lines(emit)
    assert len(lines) == 3
    for line in lines:
        assert line.isascii() and not re.search(r"[\x00-\x1f\x7f]", line)
        VALIDATOR.validate(json.loads(line))
    first, second, third = (json.loads(line) for line in lines)
    assert first["text"] == "client said caf\u00e9\n\x1b[31m\x00\x7f\u202e"
    assert first["namespace"] == "mtlsgw.test" and first["event"] == "log"
    assert (second["level"], third["level"]) == ("warn", "critical")
    assert "ZeroDivisionError" in third["text"] and "Traceback" in third["text"]


def test_a_record_keeps_its_fields_and_gets_time_and_level_from_the_event():
    line = json_line({"log_time": 1796126400.25, "log_level": LogLevel.error,
                      "log_namespace": "mtlsgw", "log_format": "x",
                      "mtlsgw_record": reload_record("refused", "/etc/gw.ini", "bad \"key\"")})
    record = json.loads(line)
    VALIDATOR.validate(record)
    assert record == {"time": "2026-12-01T12:00:00.250Z", "event": "reload", "level": "error",
                      "result": "refused", "path": "/etc/gw.ini", "error": 'bad "key"'}
    assert list(record)[:3] == ["time", "event", "level"]


def test_request_lines_wait_for_the_flush_and_others_flush_them_first():
    out = io.StringIO()
    observer = JSONLogObserver(out)

    class Clock:
        def callLater(self, delay, f):
            pass
    observer.clock = Clock()
    Logger(namespace="mtlsgw.access", observer=observer).info("{access}", access="one")
    assert out.getvalue() == ""
    Logger(namespace="mtlsgw", observer=observer).info("other")
    kinds = [json.loads(x)["text"] for x in out.getvalue().splitlines()]
    assert kinds == ["one", "other"]  # the order of events is kept


HOSTILE = "q\"b\\s\n\r\t\x00\x1b[31m\x7f\u00e9\u202e\ud800"  # quote, backslash, controls


class _Peer:
    host, port = "192.0.2.7", 50123


class _Transport:
    def getPeer(self):
        return _Peer()


def _exchange(**changes):
    """A finished exchange as request_members reads it: the fields Exchange sets."""
    route = SimpleNamespace(name=f"r{HOSTILE}",
                            upstream=SimpleNamespace(settings=SimpleNamespace(
                                url=f"http://127.0.0.1:1/{HOSTILE}")))
    fields = dict(
        head=SimpleNamespace(method=b"G\x00ET\xff", target=b'/a"b\\c\n\xe9?q=\x01&x=1',
                             version=b"HTTP/1.1"),
        decision=Decision(allowed=True, reason=f"ok{HOSTILE}", authorizer=f"a{HOSTILE}"),
        route=route, listener=SimpleNamespace(name=f"l{HOSTILE}"), request_id="0" * 32,
        local_reason=None, upstream_status=200, status=200, received_bytes=3, sent_bytes=7,
        upstream=SimpleNamespace(created_at=10.0, attached_at=10.0015, head_at=10.25),
        connection=SimpleNamespace(log_parts=None, transport=_Transport(), tls=False,
                                   identity=None))
    fields.update(changes)
    return SimpleNamespace(**fields)


def _record(exchange, duration_ms=12.3456, query=False):
    line = json_line({"log_time": 1796126400.25, "log_level": LogLevel.info,
                      "log_namespace": "mtlsgw.access", "log_format": "{access}",
                      "mtlsgw_request": request_members(exchange, duration_ms, query)})
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.isascii() and not re.search(r"[\x00-\x1f\x7f]", line[:-1])
    record = json.loads(line)
    VALIDATOR.validate(record)
    return record


def test_a_request_record_escapes_every_value_and_keeps_every_byte():
    record = _record(_exchange())
    assert record == {
        "time": "2026-12-01T12:00:00.250Z", "event": "request", "level": "info",
        "request_id": "0" * 32, "listener": f"l{HOSTILE}", "route": f"r{HOSTILE}",
        "decision": "allow", "reason": f"ok{HOSTILE}", "authorizer": f"a{HOSTILE}",
        "method": "G\x00ET\xff", "target": '/a"b\\c\n\xe9', "version": "HTTP/1.1",
        "status": 200,
        "upstream": {"url": f"http://127.0.0.1:1/{HOSTILE}", "status": 200,
                     "connect_ms": 1.5, "response_ms": 248.5},
        "bytes_in": 3, "bytes_out": 7, "duration_ms": 12.346,
        "client": {"address": "192.0.2.7", "port": 50123}, "tls": None, "identity": None}
    # each byte the client sent is one ISO 8859-1 character: the bytes come back exactly
    assert record["method"].encode("latin-1") == b"G\x00ET\xff"
    assert _record(_exchange(), query=True)["target"] == '/a"b\\c\n\xe9?q=\x01&x=1'


@pytest.mark.parametrize(("changes", "expected"), [
    ({"decision": None, "route": None, "local_reason": "no-route", "status": 404,
      "upstream_status": "-", "upstream": None},
     {"decision": None, "reason": "no-route", "authorizer": None, "route": None,
      "upstream": None, "status": 404}),
    ({"decision": Decision(allowed=False, reason="not-listed", authorizer="x"),
      "status": 403, "upstream_status": "-", "upstream": None},
     {"decision": "deny", "reason": "not-listed", "upstream": None, "status": 403}),
    ({"upstream_status": "upstream-unreachable", "status": 502,
      "upstream": SimpleNamespace(created_at=1.0, attached_at=None, head_at=None)},
     {"upstream": {"url": f"http://127.0.0.1:1/{HOSTILE}", "status": "upstream-unreachable",
                   "connect_ms": None, "response_ms": None}, "status": 502}),
    ({"upstream_status": "-", "status": None, "upstream": None},
     {"upstream": {"url": f"http://127.0.0.1:1/{HOSTILE}", "status": None,
                   "connect_ms": None, "response_ms": None}, "status": None}),
])
def test_a_request_record_says_null_for_what_did_not_happen(changes, expected):
    record = _record(_exchange(**changes))
    assert {key: record[key] for key in expected} == expected


def test_a_request_records_method_and_target_are_cut_to_4_kib_so_journald_keeps_the_line():
    # An HTTP/2 :path may be ~64 KiB (answered 431, still logged): journald's LineMax (48 KiB)
    # would split the line into two entries, neither of them JSON.
    head = SimpleNamespace(method=b"M" * 10_000, target=b"/" + b"\xe9" * 60_000 + b"?q=1",
                           version=b"HTTP/2")
    for query in (False, True):
        line = json_line({"log_time": 1.0, "log_level": LogLevel.info,
                          "log_namespace": "mtlsgw.access", "log_format": "{access}",
                          "mtlsgw_request": request_members(_exchange(head=head), 1.0, query)})
        assert len(line) < 48 * 1024
        record = json.loads(line)
        VALIDATOR.validate(record)
        assert record["target"] == "/" + "\xe9" * 4095 + "..."
        assert record["method"] == "M" * 4096 + "..."
    assert _record(_exchange())["target"] == '/a"b\\c\n\xe9'  # a short one is whole


def test_a_request_record_encodes_a_connections_members_once():
    connection = _exchange().connection
    first = _record(_exchange(connection=connection))
    assert connection.log_parts is not None
    connection.transport = None  # a second request of the connection does not read it again
    assert _record(_exchange(connection=connection))["client"] == first["client"]


def test_handshake_record_names_the_failing_certificate():
    ca = make_ca("Some CA")
    leaf = make_leaf(ca, "m\u00fcller")
    der = leaf.certificate.public_bytes(Encoding.DER)

    class Peer:
        host, port = "192.0.2.1", 4433

    class Transport:
        def getPeer(self):
            return Peer()

        def getHandle(self):
            raise AttributeError("no TLS here")
    record = handshake_record("main", Transport(),
                              VerifyError(0, 10, "certificate has expired", der), "verify failed")
    record.update(time="2026-12-01T12:00:00.000Z", level="info")
    VALIDATOR.validate(record)
    # RFC 4514 as OpenSSL prints it (as the identity's subject): UTF-8 bytes escaped.
    assert record["subject"] == "CN=m\\C3\\BCller" and record["issuer"] == "CN=Some CA"
    assert record["depth"] == 0 and record["verify_code"] == 10
    assert record["client"] == {"address": "192.0.2.1", "port": 4433}
    unreadable = handshake_record("main", Transport(), VerifyError(1, 20, "x", b"junk"), "r")
    assert unreadable["subject"] is None and unreadable["issuer"] is None
    assert handshake_record("main", Transport(), None, "timed out")["verify_error"] is None


def test_a_workers_request_record_crosses_the_pipe_intact():
    out = io.BytesIO()
    pipe = PipeLogObserver(out)
    members = '"target":"/caf\\u00e9\\n","client":{"address":"192.0.2.1","port":1}'
    Logger(namespace="mtlsgw.access", observer=pipe).info(
        "{access}", access='request path="/caf%C3%A9%0A"', mtlsgw_request=members)
    [line] = out.getvalue().splitlines()
    assert line.startswith(b"R ") and line.isascii()
    event = worker_event(2, line, stderr=False, now=0.0)
    assert event["mtlsgw_request"] == members and event["mtlsgw_worker"] == 2
    assert event["access"] == 'worker=2 request path="/caf%C3%A9%0A"'
    relayed = json.loads(json_line(event))
    assert relayed["worker"] == 2 and relayed["target"] == "/caf\u00e9\n"
    assert relayed["client"] == {"address": "192.0.2.1", "port": 1}
    assert relayed["event"] == "request" and relayed["level"] == "info"


@pytest.mark.parametrize("members", ['"target":"/\n"', '"target":"\x1b[31m"', '"t":"\u00e9"'])
def test_a_stray_request_line_with_raw_control_characters_stays_a_plain_line(members):
    line = b"R " + json.dumps([0.0, "info", "request", members]).encode()
    event = worker_event(3, line, stderr=False, now=0.0)
    assert "mtlsgw_request" not in event
    written = json_line(event)
    assert written.isascii() and not re.search(r"[\x00-\x1f\x7f]", written[:-1])
    VALIDATOR.validate(json.loads(written))


def test_a_workers_other_events_keep_their_record_and_text():
    out = io.BytesIO()
    pipe = PipeLogObserver(out)
    Logger(namespace="mtlsgw", observer=pipe).info(
        "reloaded", mtlsgw_record=reload_record("ok", "/gw.ini", None))
    Logger(namespace="mtlsgw", observer=pipe).failure("broke", Failure(ValueError("bad")))
    first, second = (json.loads(json_line(worker_event(1, line, False, 0.0)))
                     for line in out.getvalue().splitlines())
    assert first["event"] == "reload" and first["worker"] == 1
    assert second["event"] == "log" and second["text"].startswith("broke")
    assert second["worker"] == 1 and "ValueError" in second["text"]


# -- request ids ------------------------------------------------------------------------------


def test_new_request_ids_are_128_random_bits_in_hex():
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize(("headers", "kept"), [
    ([(b"X-Request-Id", b"abc-123")], "abc-123"),
    ([(b"x-request-id", b"A.b_c:d-1")], "A.b_c:d-1"),
    ([(b"X-Request-Id", b"a" * 128)], "a" * 128),
    ([(b"X-Request-Id", b"a" * 129)], None),
    ([(b"X-Request-Id", b"abc \t")], "abc"),  # whitespace around a value is not part of it
    ([(b"X-Request-Id", b" a b ")], None),
    ([(b"X-Request-Id", b"")], None),
    ([(b"X-Request-Id", b"a b")], None),
    ([(b"X-Request-Id", b"a\x01")], None),
    ([(b"X-Request-Id", b"caf\xc3\xa9")], None),
    ([(b"X-Request-Id", b"a/b")], None),
    ([(b"X-Request-Id", b"one"), (b"X-Request-Id", b"two")], None),
    ([(b"X_Request_Id", b"abc")], None),
    ([], None),
])
def test_a_trusted_client_id_must_be_one_well_formed_header(headers, kept):
    assert trusted_request_id(headers) == kept


@pytest.mark.parametrize("name", [b"X-Request-Id", b"x-request-id", b"X_Request_Id",
                                  b"x.request.id", b"X-REQUEST_ID"])
def test_request_id_is_a_gateway_owned_header_in_every_spelling(name):
    settings = HeaderSettings("X-Client-", False)
    assert is_owned(name, settings)
    sent = upstream_request_headers([(name, b"client"), (b"X-Other", b"1")], None, settings,
                                    "127.0.0.1", b"localhost")
    assert [n for n, _ in sent if b"equest" in n] == []


# -- configuration ----------------------------------------------------------------------------


def test_log_section_defaults_and_values(tmp_path):
    assert load(write_config(tmp_path / "a", minimal())).log.format == "text"
    sections = minimal()
    sections["log"] = {"format": "JSON", "query": "yes"}
    settings = load(write_config(tmp_path / "b", sections))
    assert (settings.log.format, settings.log.query) == ("json", True)
    assert settings.listeners[0].trust_request_id is False
    sections["gateway"]["trust_request_id"] = "yes"
    assert load(write_config(tmp_path / "c", sections)).listeners[0].trust_request_id


@pytest.mark.parametrize(("section", "key", "value", "problem"), [
    ("log", "format", "xml", "[log] format = 'xml': must be one of text, json"),
    ("log", "query", "maybe", "[log] query = 'maybe':"),
    ("log", "colour", "yes", "[log] colour = 'yes': unknown key"),
    ("gateway", "trust_request_id", "sure", "[gateway] trust_request_id = 'sure':"),
])
def test_bad_log_settings_are_one_line_errors(tmp_path, section, key, value, problem):
    sections = minimal()
    sections.setdefault(section, {})[key] = value
    path = write_config(tmp_path, sections)
    assert problem in config_error(load, path)
