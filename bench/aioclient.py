#!/usr/bin/env python3
"""The two drivers bench/run needs that loadgen lacks (Python standard library: asyncio + ssl).

    aioclient.py rate --url URL --rate R --duration S [--conns C] [--cert F --key F --cacert F]
        Open-loop load at a fixed request rate over C keep-alive connections. A request's latency
        runs from the moment it was *scheduled* to be sent to the last byte of its response, so a
        stalled server is not hidden by the client waiting for it (no coordinated omission).
        Prints one JSON line.

    aioclient.py idle --url URL -n N [--open-concurrency K] [--hold S] [--cert F --key F --cacert F]
        Opens N connections, completes the (m)TLS handshake and one keep-alive GET on each, prints
        {"event": "established", ...}, then holds them idle until a line arrives on stdin (or
        --hold seconds pass), counts the ones the server has closed meanwhile, probes a sample with
        one more request, prints {"event": "checked", ...} and exits.

Both speak HTTP/1.1 with keep-alive, offer ALPN http/1.1 only, and use no TLS session resumption.
The same code drives every target (mtlsgw, nginx, and the upstream directly over plain HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Target:
    def __init__(self, url: str, cert: str | None, key: str | None, cacert: str | None) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.ctx: ssl.SSLContext | None = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=cacert)
            if cert:
                ctx.load_cert_chain(cert, key)
            ctx.set_alpn_protocols(["http/1.1"])
            self.ctx = ctx
        hostport = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        self.request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: mtlsgw-bench\r\n"
            "Accept: */*\r\n\r\n"
        ).encode()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.ctx,
            server_hostname=self.host if self.ctx else None,
            limit=1 << 20,
        )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return (status, server wants the connection closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    close = lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection":
            close = "close" in value.lower()
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    elif status not in (204, 304) and not 100 <= status < 200:
        await reader.read()  # delimited by close
        close = True
    return status, close


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[int(p * (len(sorted_values) - 1))]


# ---------------------------------------------------------------------------------------------- fix


async def run_rate(args: argparse.Namespace) -> dict[str, Any]:
    target = Target(args.url, args.cert, args.key, args.cacert)
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(args.conns):
        reader, writer = await target.connect()
        writer.write(target.request)  # warm each connection once (not measured)
        await read_response(reader)
        pool.put_nowait((reader, writer))

    latencies: list[float] = []
    lags: list[float] = []
    status: dict[str, int] = {}
    errors = 0
    error_sample = ""
    reconnects = 0

    async def one(scheduled: float) -> None:
        nonlocal errors, error_sample, reconnects
        reader, writer = await pool.get()
        try:
            writer.write(target.request)
            code, close = await read_response(reader)
            latencies.append(loop.time() - scheduled)
            status[str(code)] = status.get(str(code), 0) + 1
        except Exception as exc:
            errors += 1
            error_sample = f"{type(exc).__name__}: {exc}"
            close = True
        if close:
            writer.close()
            reconnects += 1
            try:
                reader, writer = await target.connect()
            except Exception as exc:
                errors += 1
                error_sample = f"reconnect {type(exc).__name__}: {exc}"
                return
        pool.put_nowait((reader, writer))

    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    tasks = []
    start = loop.time() + 0.05
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(loop.time() - scheduled)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    _, pending = await asyncio.wait(tasks, timeout=args.duration + 30)
    for task in pending:
        task.cancel()
    elapsed = loop.time() - start
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    latencies.sort()
    lags.sort()
    ms = 1000.0
    return {
        "requests": len(latencies),
        "scheduled": total,
        "unfinished": len(pending),
        "errors": errors,
        "error_sample": error_sample,
        "status": status,
        "reconnects": reconnects,
        "rate": args.rate,
        "achieved_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "conns": args.conns,
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 0.50) * ms,
        "p90_ms": percentile(latencies, 0.90) * ms,
        "p99_ms": percentile(latencies, 0.99) * ms,
        "max_ms": percentile(latencies, 1.0) * ms,
        "mean_ms": (sum(latencies) / len(latencies) * ms) if latencies else 0.0,
        "scheduler_lag_p99_ms": percentile(lags, 0.99) * ms,
    }


# ---------------------------------------------------------------------------------------- idle conn


async def run_idle(args: argparse.Namespace) -> None:
    target = Target(args.url, args.cert, args.key, args.cacert)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.open_concurrency)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0
    error_sample = ""
    not_200 = 0

    async def open_one() -> None:
        nonlocal errors, error_sample, not_200
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(target.connect(), 30)
                writer.write(target.request)
                code, close = await asyncio.wait_for(read_response(reader), 30)
            except Exception as exc:
                errors += 1
                error_sample = f"{type(exc).__name__}: {exc}"
                return
            if code != 200:
                not_200 += 1
            if close:
                writer.close()
                errors += 1
                error_sample = "server closed the connection after the first request"
                return
            conns.append((reader, writer))

    t0 = loop.time()
    await asyncio.gather(*(open_one() for _ in range(args.n)))
    emit(
        {
            "event": "established",
            "requested": args.n,
            "established": len(conns),
            "errors": errors,
            "error_sample": error_sample,
            "not_200": not_200,
            "seconds": loop.time() - t0,
        }
    )

    # Hold until told to check (a line on stdin) or until --hold passes.
    stdin_line = loop.run_in_executor(None, sys.stdin.readline)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stdin_line), args.hold)
    held = loop.time() - t0
    closed = sum(1 for reader, writer in conns if reader.at_eof() or writer.is_closing())
    probe_ok = 0
    probes = [c for c in conns if not (c[0].at_eof() or c[1].is_closing())][: args.probe]
    for reader, writer in probes:
        try:
            writer.write(target.request)
            code, _ = await asyncio.wait_for(read_response(reader), 10)
            probe_ok += code == 200
        except Exception:  # noqa: S110 - counted as a failed probe
            pass
    emit(
        {
            "event": "checked",
            "held_seconds": held,
            "still_open": len(conns) - closed,
            "closed_by_server": closed,
            "probed": len(probes),
            "probe_ok": probe_ok,
        }
    )
    for _, writer in conns:
        writer.close()
    os._exit(0)  # do not wait for the stdin reader thread or 5,000 graceful TLS shutdowns


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("rate", "idle"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--cert")
        p.add_argument("--key")
        p.add_argument("--cacert")
    rate = sub.choices["rate"]
    rate.add_argument("--rate", type=float, default=250.0, help="requests per second")
    rate.add_argument("--duration", type=float, default=10.0, help="seconds")
    rate.add_argument("--conns", type=int, default=16, help="keep-alive connections in the pool")
    idle = sub.choices["idle"]
    idle.add_argument("-n", type=int, default=5000, help="connections to hold")
    idle.add_argument(
        "--open-concurrency", type=int, default=64, help="handshakes in flight while opening"
    )
    idle.add_argument("--hold", type=float, default=120.0, help="seconds to hold at most")
    idle.add_argument(
        "--probe", type=int, default=100, help="connections to send a second request on"
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.cmd == "rate":
        emit(asyncio.run(run_rate(args)))
    else:
        asyncio.run(run_idle(args))


if __name__ == "__main__":
    main()
