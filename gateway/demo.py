"""The demo upstream for the quickstart: answers every request with what it received, as JSON.

``{"method": ..., "path": ..., "headers": [[name, value], ...], "body_bytes": N}`` — so a user can
see exactly which identity headers the gateway added.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web import http


class EchoRequest(http.Request):
    """Replies 200 with a JSON description of the request (headers in arrival order)."""

    def process(self) -> None:
        body = self.content.read() if self.content is not None else b""
        report = {
            "method": self.method.decode("latin-1"),
            "path": self.uri.decode("latin-1"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, values in self.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body_bytes": len(body),
        }
        data = json.dumps(report, indent=2).encode() + b"\n"
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", b"%d" % len(data))
        self.write(data)
        self.finish()


def echo_factory() -> Any:
    """An ``HTTPFactory`` serving :class:`EchoRequest` (listen on it with any endpoint)."""
    factory = http.HTTPFactory()
    factory.protocol = _channel  # type: ignore[assignment]  # plain HTTP/1.1 channel
    return factory


def _channel() -> http.HTTPChannel:
    channel = http.HTTPChannel()
    channel.requestFactory = EchoRequest
    return channel
