"""``[gateway] watch_files = yes``: reload when a file the configuration names has changed.

Every ``watch_interval`` seconds the gateway looks at each file :func:`watched_files` lists (the
INI file itself, the server certificate and key, the client CA bundle, the CRL, and every
upstream's CA, certificate and key) and reloads, exactly as on ``SIGHUP``, when one changed.
How files really change decides how this looks:

* A file is looked at through its path, symlinks followed (``os.stat``): a Kubernetes Secret
  volume replaces ``..data``, a symlink to a timestamped folder, in one rename, and every
  ``cert.pem -> ..data/cert.pem`` then leads to the new content at once.
* The ``(st_dev, st_ino, st_mtime_ns, st_size)`` of the file reached is compared first; only
  when it changed is the content read and its SHA-256 compared. A file rewritten with the same
  bytes (``touch``, a Secret update that changed another key) triggers nothing.
* A reload is tried once per new set of file states. cert-manager and ACME clients write the
  certificate and the key one after the other: the reload after the first write is refused (the
  key does not match), logged once, and the old configuration stays in force; the next change
  (the key) is a new set of states, and that reload succeeds. Nothing is retried while nothing
  changes, so a broken file is logged once, not every interval.

:func:`take` and :func:`changed` are the pure-ish core (a snapshot, and a comparison of two);
:class:`FileWatcher` drives them from a reactor timer. An authorizer that owns a file (an
allowlist) re-reads it itself and is not watched here.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_module
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import config

log = Logger(namespace="mtlsgw")

StatKey = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size


@attrs.frozen
class FileState:
    """One file as last seen: its :data:`StatKey` and the SHA-256 of its content, both ``None``
    while it cannot be read (missing, a dangling symlink, no permission)."""

    key: StatKey | None
    digest: bytes | None


Snapshot = Mapping[Path, FileState]


def watched_files(settings: config.GatewaySettings) -> tuple[Path, ...]:
    """Every file *settings* names, in order, each once: the INI file, ``[tls]`` certificate,
    private key, client CA and CRL, each route's upstream CA, certificate and key, and the CA,
    certificate and key of each ``type = http`` authorizer."""
    found: list[Path | None] = [settings.path]
    if settings.tls is not None:
        tls = settings.tls
        found += [tls.certificate, tls.private_key, tls.client_ca, tls.crl]
    for route in settings.routes:
        upstream = route.upstream
        found += [upstream.ca, upstream.certificate, upstream.private_key]
    base = settings.path.parent
    for section in settings.authorizer_sections.values():
        if section.type == "http":  # its own TLS files; a `file` allowlist re-reads itself
            found += [base / Path(section.options[key].strip()).expanduser()
                      for key in _HTTP_AUTHORIZER_FILES if section.options.get(key, "").strip()]
    return tuple(dict.fromkeys(path for path in found if path is not None))


_HTTP_AUTHORIZER_FILES = ("ca", "certificate", "private_key")


def _state(path: Path, previous: FileState | None) -> FileState:
    try:
        stat = os.stat(path)  # follows symlinks: the file the gateway would read
    except OSError:
        return FileState(None, None)
    key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if previous is not None and previous.key == key:
        return previous
    if not stat_module.S_ISREG(stat.st_mode):  # a directory, a FIFO (opening it would block)
        return FileState(None, None)
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").digest()
    except OSError:
        return FileState(None, None)
    return FileState(key, digest)


def take(paths: Iterable[Path], previous: Snapshot) -> dict[Path, FileState]:
    """The state of each of *paths* now; a file whose stat key is the one in *previous* keeps
    its digest unread."""
    return {path: _state(path, previous.get(path)) for path in paths}


def changed(old: Snapshot, new: Snapshot) -> list[Path]:
    """The paths of *new* whose content differs from *old*'s (appeared, disappeared, other
    bytes); a stat change with the same content is no change."""
    return [path for path, state in new.items()
            if path not in old or old[path].digest != state.digest]


class FileWatcher:
    """Every *interval* seconds on *clock*, compare the files *files* lists now with the states
    at the last reload attempt, and call *reload* (which returns whether the new configuration
    is in force) once for each new set of states."""

    def __init__(self, clock: Any, interval: float,
                 files: Callable[[], Iterable[Path]], reload: Callable[[], bool]) -> None:
        self._files = files
        self._reload = reload
        self._seen: dict[Path, FileState] = take(files(), {})
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._interval = interval

    def start(self) -> None:
        """Start checking (the first check one interval from now)."""
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        """Stop checking."""
        if self._loop.running:
            self._loop.stop()

    def reloaded(self) -> None:
        """A reload was tried (SIGHUP too): the files as they are now are the ones it read, so
        a change the reload already saw is not reloaded again at the next check."""
        self._seen = take(self._files(), self._seen)

    def check(self) -> bool | None:
        """One check: the reload's result if files changed, else ``None``."""
        now = take(self._files(), self._seen)
        different = changed(self._seen, now)
        self._seen = now  # states seen (new stat keys too): this set is not tried again
        if not different:
            return None
        log.info("watch_files: {files} changed; reloading",
                 files=", ".join(str(path) for path in different))
        try:
            ok = self._reload()
        except Exception:  # a bug must not end the watching: log it, keep the running state
            log.failure("watch_files: the reload failed")
            return False
        if ok:  # the new configuration may name other files
            self._seen = take(self._files(), now)
        return ok
