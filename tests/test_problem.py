"""Unit tests for gateway.http.problem: RFC 9457 bodies and when a client gets one."""

from __future__ import annotations

import json

import pytest

from gateway.http.problem import problem_body, wants_problem_json


@pytest.mark.parametrize(("accept", "wanted"), [
    ([b"application/problem+json"], True),
    ([b"application/json"], True),
    ([b"text/html, Application/JSON;q=0.5"], True),
    ([b"text/html", b"application/json"], True),
    ([b"application/json;q=0"], False),
    ([b"application/json; q=0.0, text/plain"], False),
    ([b"*/*"], False),
    ([b"application/*"], False),
    ([b"text/plain"], False),
    ([b"application/jsonx"], False),
    ([], False),
])
def test_only_an_explicit_json_type_gets_json(accept: list[bytes], wanted: bool) -> None:
    assert wants_problem_json(accept) is wanted


def test_problem_body_names_reason_and_request_id() -> None:
    body = problem_body(403, "cn-not-allowed", "01HF7Q")
    assert json.loads(body) == {
        "type": "about:blank", "title": "Forbidden", "status": 403,
        "detail": "denied by the gateway: cn-not-allowed (request id 01HF7Q)",
        "reason": "cn-not-allowed", "request_id": "01HF7Q",
    }
    assert json.loads(problem_body(403, "x", None)) == {
        "type": "about:blank", "title": "Forbidden", "status": 403,
        "detail": "denied by the gateway: x", "reason": "x",
    }
