"""``[log] format = json`` and request ids, through the real ``twistd mtlsgw`` process.

Every line the process writes (twistd's and Twisted's own included) is validated against
``docs/log-schema.json`` with ``jsonschema`` each time a test reads the log; request records are
cross-checked against what the upstream received (the ``X-Request-Id`` it got is the record's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
from pathlib import Path

import h2.events
import jsonschema
import pytest
from conftest import base_sections
from cryptography.hazmat.primitives import hashes
from harness import (
    DEADLINE,
    Refused,
    client_context,
    free_port,
    https_request,
    parse_responses,
    raw_exchange,
    render_ini,
    run_twistd,
    wait_for,
)
from test_e2e_http2_engine import client

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "log-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
HEX_ID = r"^[0-9a-f]{32}$"


def validated(text: str) -> list[dict]:
    """Every line of *text* as a record; each must be one ASCII JSON object valid against the
    schema."""
    records = []
    for line in text.splitlines():
        assert line.isascii(), line
        record = json.loads(line)
        VALIDATOR.validate(record)
        records.append(record)
    return records


def records(gateway, event: str | None = None) -> list[dict]:
    # While the gateway runs, its last line may be half written (a log shipper waits for the
    # line feed as well): only complete lines count.
    text = gateway.log()
    found = validated(text[: text.rfind("\n") + 1])
    return [r for r in found if event is None or r["event"] == event]


def record_for(gateway, request_id: str) -> dict:
    def find():
        return next((r for r in records(gateway, "request") if r["request_id"] == request_id),
                    None)
    return wait_for(find, f"the request record {request_id}")


def _context(pki, who="alice"):
    files = getattr(pki, who)()
    return client_context(pki.ca, files.cert, files.key)


def _seen(body: bytes) -> dict:
    """What the upstream received (the test upstream answers with its record of the request)."""
    return json.loads(body)


def _ids(seen: dict) -> list[str]:
    return [v for k, v in seen["headers"] if k.lower().replace("_", "-") == "x-request-id"]


@pytest.fixture(scope="module")
def trusted_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gateway(start_gateway, trusted_port, upstream):
    return start_gateway({
        "log": {"format": "json"},
        "tls": {"http2": "yes", "handshake_timeout": "1"},
        "listener:trusted": {"listen": f"tcp:{trusted_port}:interface=127.0.0.1",
                             "trust_request_id": "yes"},
        "route:trusted": {"listener": "trusted", "prefix": "/t",
                          "upstream": upstream.url},
        "route:dead": {"prefix": "/dead", "upstream": f"http://127.0.0.1:{free_port()}",
                       "upstream_connect_timeout": "2"},
    })


@pytest.fixture(scope="module")
def trusted(gateway, trusted_port):
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", trusted_port)) == 0,
             "the trusted listener")
    return trusted_port


def test_request_record_matches_what_the_upstream_received(gateway, pki):
    status, _, body = https_request(gateway.port, _context(pki), "POST", "/echo?secret=1",
                                    body=b"x" * 1000)
    assert status == 200
    seen = _seen(body)
    [request_id] = _ids(seen)
    assert re.match(HEX_ID, request_id)
    record = record_for(gateway, request_id)
    alice = pki.alice().issued.certificate
    assert record["event"] == "request" and record["level"] == "info"
    assert record["listener"] == "main" and record["route"] == "default"
    assert record["method"] == "POST" and record["target"] == "/echo"  # no query by default
    assert seen["path"] == "/echo?secret=1"
    assert record["status"] == 200 and record["decision"] == "allow"
    assert record["reason"] == "cn-allowed" and record["authorizer"] == "team"
    assert record["client"]["address"] == "127.0.0.1" and record["client"]["port"] > 0
    assert record["tls"]["version"] in ("TLSv1.2", "TLSv1.3") and record["tls"]["cipher"]
    assert record["tls"]["sni"] == "localhost" and record["tls"]["resumed"] is False
    identity = record["identity"]
    assert identity["common_names"] == ["alice"]
    assert identity["fingerprint_sha256"] == alice.fingerprint(hashes.SHA256()).hex()
    assert int(identity["serial"], 16) == alice.serial_number
    assert identity["subject"] == "CN=alice,C=DE,O=Example\\, Inc."
    upstream = record["upstream"]
    assert upstream["url"].startswith("http://127.0.0.1:") and upstream["status"] == 200
    assert upstream["connect_ms"] is not None and upstream["response_ms"] is not None
    assert record["bytes_in"] == 1000 == seen["body_length"]
    assert record["bytes_out"] == len(body)
    assert record["duration_ms"] >= upstream["response_ms"]
    assert "x" * 10 not in gateway.log()  # no body bytes in the log
    assert "PRIVATE KEY" not in gateway.log()


@pytest.mark.parametrize("spelling", ["X-Request-Id", "x-request-id", "X_Request_Id",
                                      "X.Request.Id", "X-REQUEST-ID"])
def test_client_request_id_is_replaced_in_every_spelling(gateway, pki, spelling):
    status, _, body = https_request(gateway.port, _context(pki), path="/spelling",
                                    headers=[(spelling, "client-chosen")])
    assert status == 200
    seen = _seen(body)
    ids = _ids(seen)
    assert len(ids) == 1 and ids[0] != "client-chosen", seen["headers"]
    assert [k for k, _ in seen["headers"] if "equest" in k] == ["X-Request-Id"]
    assert record_for(gateway, ids[0])["target"] == "/spelling"


@pytest.mark.parametrize(("sent", "kept"), [
    pytest.param([("X-Request-Id", "trace-1.2:3_x")], True, id="well-formed"),
    pytest.param([("X-Request-Id", "a" * 128)], True, id="128-chars"),
    pytest.param([("X-Request-Id", "a" * 129)], False, id="too-long"),
    pytest.param([("X-Request-Id", "has space")], False, id="space"),
    pytest.param([("X-Request-Id", "semi;colon")], False, id="semicolon"),
    pytest.param([("X-Request-Id", "one"), ("X-Request-Id", "two")], False, id="two-copies"),
    pytest.param([("X_Request_Id", "underscored")], False, id="underscore-spelling"),
])
def test_trusted_listener_keeps_only_a_well_formed_client_id(gateway, pki, trusted, sent, kept):
    status, _, body = https_request(trusted, _context(pki), path="/t/trust", headers=sent)
    assert status == 200
    ids = _ids(_seen(body))
    assert len(ids) == 1
    if kept:
        assert ids[0] == sent[0][1]
    else:
        assert ids[0] not in [v for _, v in sent]
        assert len(ids[0]) == 32
    record = record_for(gateway, ids[0])
    assert record["listener"] == "trusted" and record["route"] == "trusted"


@pytest.mark.parametrize(("who", "path", "port", "status", "body"), [
    pytest.param("bob", "/denied", "main", 403, b"403 Forbidden: cn-not-allowed\n", id="403"),
    pytest.param("alice", "/nowhere", "trusted", 404, b"404 Not Found: no-route\n", id="404"),
    pytest.param("alice", "/dead/x", "main", 502, b"502 Bad Gateway: upstream-unreachable\n",
                 id="502"),
])
def test_local_responses_carry_the_records_request_id(gateway, pki, trusted, who, path, port,
                                                      status, body):
    got, headers, text = https_request(gateway.port if port == "main" else trusted,
                                       _context(pki, who), path=path,
                                       headers=[("X-Request-Id", "client-id")])
    assert (got, text) == (status, body)
    [request_id] = [v for k, v in headers if k.lower() == "x-request-id"]
    record = record_for(gateway, request_id)
    assert record["status"] == status and record["target"] == path
    if port == "trusted":
        assert request_id == "client-id"  # trusted and well-formed: the client's own
    else:
        assert request_id != "client-id"


def test_misdirected_request_is_a_record_with_its_id(gateway, pki):
    data = raw_exchange(gateway.port, _context(pki),
                        b"GET /misdirected HTTP/1.1\r\nHost: other.example\r\n\r\n", 5)
    [response], _ = parse_responses(data)
    assert response.status == 421
    [request_id] = response.header("X-Request-Id")
    assert record_for(gateway, request_id)["reason"] == "misdirected-request"


@pytest.mark.parametrize(("who", "error", "depth", "subject", "issuer"), [
    pytest.param("expired", "certificate has expired", 0, "CN=alice",
                 "CN=mtlsgw test root,O=mtlsgw tests", id="expired"),
    pytest.param("untrusted", "unable to get local issuer certificate", 0, "CN=alice",
                 None, id="untrusted"),
])
def test_refused_handshake_record(gateway, pki, who, error, depth, subject, issuer):
    with pytest.raises(Refused):
        https_request(gateway.port, _context(pki, who), path="/")

    def find():
        return [r for r in records(gateway, "handshake-refused") if r["verify_error"] == error]
    [record, *_] = wait_for(find, f"the handshake-refused record for {who}")
    assert record["depth"] == depth and record["subject"] == subject
    assert record["listener"] == "main" and record["client"]["address"] == "127.0.0.1"
    assert record["sni"] == "localhost" and record["verify_code"] > 0
    if issuer is not None:
        assert record["issuer"] == issuer
    else:
        assert record["issuer"] and "mtlsgw test root" not in record["issuer"]


def test_refused_handshake_without_certificate(gateway, pki):
    with pytest.raises(Refused):
        https_request(gateway.port, client_context(pki.ca), path="/")

    def find():
        return [r for r in records(gateway, "handshake-refused")
                if r["verify_error"] is None and "certificate" in r["reason"]]
    [record, *_] = wait_for(find, "the handshake-refused record without certificate")
    assert record["subject"] is None and record["depth"] is None


def test_handshake_timeout_is_a_refused_handshake_record(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as silent:
        port = silent.getsockname()[1]
        [record] = wait_for(lambda: [r for r in records(gateway, "handshake-refused")
                                     if r["client"]["port"] == port], "the timeout record")
    assert record["reason"] == "handshake timed out" and record["verify_error"] is None


def test_control_characters_and_non_ascii_give_single_line_json(gateway, pki):
    """HTTP/2 carries bytes HTTP/1.1's parser refuses: the 400 for them is a request record whose
    target keeps every byte (ISO 8859-1), escaped by the JSON encoder, on one line."""
    target = b"/caf\xc3\xa9/\x01\x1b[31m\x7f\xff\"\\"
    with client(gateway, pki) as c:
        c.conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                                (b":authority", b"localhost:%d" % gateway.port),
                                (b":path", target), (b"x-note", b"\xc3\xa9\x01"),
                                (b"x-request-id", b"\xc3\xa9")], end_stream=True)
        c.flush()
        c.until(lambda: c.ended(1), "the response")
        assert c.status(1) == b"400"
        [request_id] = [v for e in c.events if isinstance(e, h2.events.ResponseReceived)
                        for k, v in e.headers if k == b"x-request-id"]
    record = record_for(gateway, request_id.decode())
    assert record["target"].encode("latin-1") == target
    assert record["version"] == "HTTP/2" and record["tls"]["alpn"] == "h2"
    utf8 = pki.leaf("zoe-utf8", "Zo\u00eb \u202e")
    status, _, _ = https_request(gateway.port, client_context(pki.ca, utf8.cert, utf8.key),
                                 path="/zoe")
    assert status == 403
    [zoe] = wait_for(lambda: [r for r in records(gateway, "request") if r["identity"]
                              and r["identity"]["common_names"] == ["Zo\u00eb \u202e"]],
                     "the record of the UTF-8 subject")
    assert zoe["decision"] == "deny"
    raw_exchange(gateway.port, _context(pki),
                 b"GET /ctl\x01\x1b[31m HTTP/1.1\r\nHost: localhost\r\n\r\n", 5)
    wait_for(lambda: [r for r in records(gateway, "log") if "request rejected" in r["text"]],
             "the rejected request's line")
    log = gateway.log()
    assert "\x1b" not in log and "\x01" not in log and "\x7f" not in log
    assert all(line.startswith("{") and line.endswith("}") for line in log.splitlines())


def test_parser_refusal_carries_a_request_id(gateway, pki):
    data = raw_exchange(gateway.port, _context(pki),
                        b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x7f\r\n\r\n", 5)
    [response], _ = parse_responses(data)
    assert response.status == 400 and response.body == b"400 Bad Request: malformed-request\n"
    [request_id] = response.header("X-Request-Id")
    assert re.match(HEX_ID, request_id)
    wait_for(lambda: [r for r in records(gateway, "log")
                      if r["text"].endswith(f"request_id={request_id}")], "the rejected line")


def test_reload_records(gateway, pki):
    pid = gateway.process.pid
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: [r for r in records(gateway, "reload") if r["result"] == "ok"],
             "the reload ok record")
    good = gateway.config.read_text()
    gateway.config.write_text(good + "\n[gateway]\nidle_timeout = soon\n"
                              if "[gateway]" not in good else
                              good.replace("[gateway]\n", "[gateway]\nidle_timeout = soon\n"))
    try:
        os.kill(pid, signal.SIGHUP)
        [refused] = wait_for(lambda: [r for r in records(gateway, "reload")
                                      if r["result"] == "refused"], "the reload refused record")
        assert "idle_timeout" in refused["error"] and refused["level"] == "error"
        assert refused["path"] == str(gateway.config)
    finally:
        gateway.config.write_text(good)
    assert https_request(gateway.port, _context(pki), path="/after-reload")[0] == 200


def test_twistd_and_twisted_lines_are_log_records(gateway):
    logs = records(gateway, "log")
    assert any("starting up" in r["text"] for r in logs), logs[:5]
    assert any(r["namespace"] == "mtlsgw" and "listening on" in r["text"] for r in logs)


# -- standard output, query = yes, access_log = problems --------------------------------------


def test_json_on_standard_output_with_query_and_problems_only(tmp_path, pki, upstream):
    port = free_port()
    sections = base_sections(pki, upstream.url)
    sections["gateway"]["listen"] = f"tcp:{port}:interface=127.0.0.1"
    sections["gateway"]["access_log"] = "problems"
    sections["log"] = {"format": "json", "query": "yes"}
    config = tmp_path / "gw.ini"
    config.write_text(render_ini(sections))
    process = run_twistd(config, None)  # --nodaemon without --logfile: standard output
    try:
        def listening():
            assert process.poll() is None, process.communicate()
            return socket.socket().connect_ex(("127.0.0.1", port)) == 0
        wait_for(listening, "the gateway to listen")
        status, _, body = https_request(port, _context(pki), path="/fine?a=1")
        assert status == 200
        [fine_id] = _ids(_seen(body))
        status, headers, _ = https_request(port, _context(pki, "bob"), path="/q?a=1&b=%22")
        assert status == 403
        [denied_id] = [v for k, v in headers if k.lower() == "x-request-id"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err
    found = validated(out)
    # access_log = problems: the allowed 200 has no record, the denial has.
    [record] = [r for r in found if r["event"] == "request"]
    assert record["request_id"] == denied_id != fine_id
    assert record["target"] == "/q?a=1&b=%22" and record["decision"] == "deny"
    texts = [r["text"] for r in found if r["event"] == "log"]
    assert any("starting up" in t for t in texts) and any("Server Shut Down" in t for t in texts)


# -- text format: the id at the end of the access line ------------------------------------------


def test_text_access_line_ends_with_the_request_id(start_gateway, pki):
    text = start_gateway()
    status, _, body = https_request(text.port, _context(pki), path="/text-line")
    assert status == 200
    [request_id] = _ids(_seen(body))
    assert len(request_id) == 32
    line = wait_for(lambda: next((ln for ln in text.log().splitlines()
                                  if 'path="/text-line"' in ln), None), "the access line")
    assert line.endswith(f" duration_ms={line.split('duration_ms=')[1].split()[0]} "
                         f"request_id={request_id}"), line
    assert "[mtlsgw.access#info] request peer=127.0.0.1 " in line
    assert not text.log().lstrip().startswith("{")


# -- workers = 2 ------------------------------------------------------------------------------


def test_workers_write_intact_json_records(start_gateway, pki):
    gateway = start_gateway({"gateway": {"workers": "2"}, "log": {"format": "json"}})
    ids = set()

    def both_workers():
        status, _, body = https_request(gateway.port, _context(pki), path="/w?x=1")
        assert status == 200
        ids.add(_ids(_seen(body))[0])
        workers = {r.get("worker") for r in records(gateway, "request")}
        return workers >= {1, 2}
    wait_for(both_workers, "requests served by both workers")
    with pytest.raises((Refused, ssl.SSLError)):
        https_request(gateway.port, _context(pki, "expired"), path="/")
    wait_for(lambda: [r for r in records(gateway, "handshake-refused")
                      if r["verify_error"] == "certificate has expired"
                      and r.get("worker") in (1, 2)], "a worker's handshake-refused record")
    found = wait_for(lambda: len({r["request_id"] for r in records(gateway, "request")} & ids)
                     == len(ids) and records(gateway, "request"), "every request's record")
    for record in found:
        assert record["worker"] in (1, 2) and record["target"] == "/w"
    assert any(r["event"] == "log" and r.get("worker") for r in records(gateway))
    assert any(r["event"] == "log" and "worker" not in r for r in records(gateway))
