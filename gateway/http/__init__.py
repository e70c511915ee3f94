"""The request engine: how a request travels from the client to the upstream and back.

Read in the order a request takes:

* :mod:`~gateway.http.server` — one client connection: TLS handshake outcome and identity,
  timeouts (one sweep per process), then HTTP/1.1 or HTTP/2 on it;
* :mod:`~gateway.http.h1` — the HTTP/1.1 request parser (``httptools``) and response framing;
* :mod:`~gateway.http.h2` — HTTP/2 on the ``h2`` library's state machine, one stream per request;
* :mod:`~gateway.http.stream` — the contract between those codecs and the exchange;
* :mod:`~gateway.http.exchange` — one request: checks, route, authorization, relay, access line;
* :mod:`~gateway.http.pool` and :mod:`~gateway.http.client` — the upstream: keep-alive pool,
  safe retries, one HTTP/1.1 client connection;
* :mod:`~gateway.http.websocket` — WebSocket upgrades, relayed over a connection of their own.

The codecs are state machines without a reactor; everything that touches sockets uses Twisted's
public interfaces (``Protocol``, transports, endpoints, ``IPushProducer``).
"""
