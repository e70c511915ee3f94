"""A datagram socket standing in for systemd's notification socket (``$NOTIFY_SOCKET``).

It binds a real ``AF_UNIX`` ``SOCK_DGRAM`` socket, at a path or in the abstract namespace, with
``SO_PASSCRED`` so that every datagram comes with the sender's pid (as systemd checks for
``NotifyAccess=main``), and records each message as ``(monotonic seconds, pid, fields)``.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import wait_for


class NotifySocket:
    def __init__(self, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._directory: Path | None = None
        if abstract:
            self.name = f"@mtlsgw-test-{os.getpid()}-{secrets.token_hex(6)}"
            self.socket.bind(b"\0" + self.name[1:].encode())
        else:  # a short path: sun_path holds 108 bytes
            self._directory = Path(tempfile.mkdtemp(prefix="sd", dir="/tmp"))
            self.name = str(self._directory / "notify")
            self.socket.bind(self.name)
        self.socket.settimeout(0.2)
        self.messages: list[tuple[float, int, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.name}

    def _receive(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closed:
            try:
                data, ancillary, _flags, _address = self.socket.recvmsg(4096, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", value[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._lock:
                self.messages.append((time.monotonic(), pid, fields))

    def received(self) -> list[tuple[float, int, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait(self, key: str, after: int = 0, what: str | None = None) -> int:
        """Wait for a message carrying *key*, at position *after* or later; its position."""
        def found() -> Any:
            messages = self.received()
            for index in range(after, len(messages)):
                if key in messages[index][2]:
                    return index + 1  # truthy also for 0
            return None
        return int(wait_for(found, what or f"{key} from the gateway")) - 1

    def fields(self, index: int) -> dict[str, str]:
        return self.received()[index][2]

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.socket.close()
        if self._directory is not None:
            (self._directory / "notify").unlink(missing_ok=True)
            self._directory.rmdir()
