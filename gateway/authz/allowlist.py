"""Allowlist files: the entries (pure parsing and matching) and the ``file`` authorizer type.

An allowlist file holds one entry a line (UTF-8; a BOM is ignored):

* ``sha256:HEX`` — the SHA-256 fingerprint of the leaf certificate's DER (64 hex digits, colons
  and case free), as the ``fingerprint`` type's ``sha256``;
* ``spki:HEX`` — the SHA-256 of the leaf's DER ``SubjectPublicKeyInfo`` (RFC 5280 §4.1.2.7): a
  pin on the key, so a renewed certificate with the same key still matches;
* ``spiffe://TRUST-DOMAIN/PATH`` — a SPIFFE ID, compared exactly with the certificate's URI SAN;
  only a certificate with exactly one URI SAN (an X.509-SVID) matches;
* ``dn:NAME`` — a subject distinguished name as an RFC 4514 string (``dn:CN=alice,O=Example``),
  compared after parsing (see :func:`parse_dn`);
* a line whose first non-blank character is ``#`` is a comment; blank lines are ignored.

:func:`parse_allowlist` is pure; :class:`FileAuthorizer` re-reads its file when it changes (its
modification time, size or inode, checked at most once a second, then its SHA-256), keeps the
previous entries when the new version does not parse or the file vanished, and reports what it
did in :attr:`FileAuthorizer.status`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import attrs
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway import dn
from gateway.authz.builtin import NO_CERTIFICATE, parse_fingerprint
from gateway.authz.interfaces import (
    ClientIdentity,
    Decision,
    IAuthorizer,
    IAuthorizerType,
    OptionError,
    Options,
    RequestInfo,
)
from gateway.authz.registry import BuildContext
from gateway.identity import decode_value, read_certificate

log = Logger(namespace="mtlsgw.authz")

CHECK_INTERVAL = 1.0  # seconds between two looks at the file (a stat)

# One RDN as compared: the set of its (attribute OID, normalised value) pairs.
RDNKey = frozenset[tuple[str, str]]
DNKey = tuple[RDNKey, ...]  # RDNs in encoding order (the reverse of an RFC 4514 string)

_SPIFFE_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SPIFFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# Attribute type names RFC 4514 strings may use: OpenSSL's short names (gateway.dn), in any case
# where that is unambiguous (OpenSSL's "UID" is userId, its "uid" uniqueIdentifier).
_TYPE_NAMES = {
    spelling: ObjectIdentifier(oid)
    for oid, short in dn._SHORT_NAMES.items()
    for spelling in (short.lower(), short.upper())
} | {short: ObjectIdentifier(oid) for oid, short in dn._SHORT_NAMES.items()}


class AllowlistError(ValueError):
    """An allowlist that does not parse: ``line`` (1-based) and ``problem``."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@attrs.frozen
class Allowlist:
    """The parsed entries of one allowlist file, by kind. Empty: nothing matches."""

    sha256: frozenset[str] = frozenset()
    spki: frozenset[str] = frozenset()
    spiffe: frozenset[str] = frozenset()
    dns: frozenset[DNKey] = frozenset()

    def __len__(self) -> int:
        return len(self.sha256) + len(self.spki) + len(self.spiffe) + len(self.dns)

    def match(self, identity: ClientIdentity) -> str | None:
        """The allowing reason id for *identity* (``allowlist-sha256``, ``allowlist-spki``,
        ``allowlist-spiffe``, ``allowlist-dn``), or ``None`` when no entry matches."""
        if identity.fingerprint_sha256 in self.sha256:
            return "allowlist-sha256"
        if self.spiffe and len(identity.uris) == 1 and identity.uris[0] in self.spiffe:
            return "allowlist-spiffe"
        if self.spki and spki_sha256(identity.pem) in self.spki:
            return "allowlist-spki"
        if self.dns and subject_key(identity.pem) in self.dns:
            return "allowlist-dn"
        return None


def parse_allowlist(data: bytes) -> Allowlist:
    """Parse the bytes of an allowlist file (see the module docstring).

    Raises :class:`AllowlistError` naming the first bad line: text that is not UTF-8, an entry of
    no known kind, a malformed fingerprint, SPIFFE ID or distinguished name.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    sha256: set[str] = set()
    spki: set[str] = set()
    spiffe: set[str] = set()
    dns: set[DNKey] = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AllowlistError(number, "not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in line):
            raise AllowlistError(number, "a control character in the entry")
        kind, colon, value = line.partition(":")
        kind = kind.lower()
        try:
            if colon and kind == "sha256":
                sha256.add(parse_fingerprint(value))
            elif colon and kind == "spki":
                spki.add(_parse_spki(value))
            elif colon and kind == "spiffe":
                spiffe.add(parse_spiffe_id(line))
            elif colon and kind == "dn":
                dns.add(parse_dn(value))
            else:
                raise ValueError(
                    f"{_short(line)} is not an entry (sha256:HEX, spki:HEX, spiffe://ID or "
                    "dn:NAME)")
        except ValueError as exc:
            raise AllowlistError(number, str(exc)) from None
    return Allowlist(frozenset(sha256), frozenset(spki), frozenset(spiffe), frozenset(dns))


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _parse_spki(text: str) -> str:
    digits = text.replace(":", "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"spki:{_short(text)[1:-1]} is not a SHA-256 digest (64 hex digits, "
                         "colons optional)")
    return digits


def parse_spiffe_id(text: str) -> str:
    """Check SPIFFE ID *text* (SPIFFE-ID §2: ``spiffe`` scheme, a lowercase trust domain of
    ``[a-z0-9._-]``, path segments of ``[A-Za-z0-9._-]``, none empty, ``.`` or ``..``; no port,
    user info, query or fragment) and return it. Raises ``ValueError`` naming the problem."""
    if not text.startswith("spiffe://"):
        raise ValueError(f"{_short(text)}: a SPIFFE ID starts with spiffe:// (lowercase)")
    domain, slash, path = text[len("spiffe://"):].partition("/")
    if not _SPIFFE_TRUST_DOMAIN.fullmatch(domain):
        raise ValueError(f"{_short(text)}: the trust domain must be lowercase letters, digits, "
                         "'.', '_' or '-' (no port, no user info)")
    if slash:
        for segment in path.split("/"):
            if segment in ("", ".", "..") or not _SPIFFE_SEGMENT.fullmatch(segment):
                raise ValueError(f"{_short(text)}: path segments are letters, digits, '.', '_' "
                                 "or '-', not empty, '.' or '..' (no query or fragment)")
    return text


def parse_dn(text: str) -> DNKey:
    """The comparison key of RFC 4514 string *text*.

    Attribute types are OpenSSL's short names (``CN``, ``emailAddress``; other cases where
    unambiguous: ``cn``, ``EMAILADDRESS``, but ``UID`` is userId and ``uid`` uniqueIdentifier) or
    dotted OIDs; values use RFC 4514 escapes (``\\,``, ``\\2C``, ``#`` + hex BER). Two names are
    equal when they have the same RDNs in the same order, each with the same set of attribute
    types and values (the order inside a multi-valued RDN does not count); values compare
    case-insensitively, with leading and trailing spaces ignored and inner runs of spaces read
    as one (RFC 4518 §2.6.1, insignificant space handling). Spaces around ``,``, ``+`` and ``=``
    are not allowed (RFC 4514 has none). Raises ``ValueError``.
    """
    try:
        name = x509.Name.from_rfc4514_string(text, _TYPE_NAMES)
    except ValueError:
        name = None
    if name is None or not text or not name.rdns:
        raise ValueError(f"dn:{_short(text)[1:-1]} is not an RFC 4514 distinguished name "
                         "(TYPE=value pairs joined by ',' or '+', special characters escaped "
                         "with '\\')")
    return tuple(
        frozenset((attribute.oid.dotted_string, _fold(_text(attribute.value)))
                  for attribute in rdn)
        for rdn in name.rdns
    )


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _fold(value: str) -> str:
    return " ".join(part for part in value.split(" ") if part).casefold()


@functools.lru_cache(maxsize=4096)
def subject_key(pem: str) -> DNKey:
    """The :func:`parse_dn` key of the subject of PEM certificate *pem*, read leniently from the
    DER as the identity is. A value that does not decode as text never equals an entry."""
    rdns = read_certificate(_der(pem)).subject
    return tuple(
        frozenset((oid, _fold(text) if (text := decode_value(tag, content)) is not None
                   else "\x00undecoded:" + tlv.hex()) for oid, tag, content, tlv in rdn)
        for rdn in rdns
    )


@functools.lru_cache(maxsize=4096)
def spki_sha256(pem: str) -> str:
    """SHA-256 (64 lowercase hex digits) of the DER ``SubjectPublicKeyInfo`` of PEM
    certificate *pem*, as ``openssl x509 -pubkey | openssl pkey -pubin -outform DER |
    sha256sum`` computes it (the HPKP / RFC 7469 pin input)."""
    certificate = asn1_x509.Certificate.load(_der(pem))
    spki = certificate["tbs_certificate"]["subject_public_key_info"]
    return hashlib.sha256(spki.dump()).hexdigest()


def _der(pem: str) -> bytes:
    import base64

    body = pem.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    return base64.b64decode("".join(body.split()))


@attrs.define
class AllowlistStatus:
    """What a :class:`FileAuthorizer` did with its file, for the metrics and the operator.

    ``entries``: entries in force; ``sha256``: SHA-256 (hex) of the file version in force;
    ``loads``: versions loaded (1 after the start); ``errors``: versions refused (malformed or
    unreadable; each bad version counts once) and times the file vanished; ``last_error``: the
    last such problem, one line, or ``None``; ``loaded_at``: wall-clock time (Unix seconds) the
    version in force was read.
    """

    path: Path
    entries: int = 0
    sha256: str = ""
    loads: int = 0
    errors: int = 0
    last_error: str | None = None
    loaded_at: float = 0.0


def read_allowlist(path: Path) -> tuple[Allowlist, str]:
    """Read and parse the file at *path*: ``(allowlist, SHA-256 hex of its bytes)``. Raises
    ``OSError`` or :class:`AllowlistError`."""
    data = path.read_bytes()
    return parse_allowlist(data), hashlib.sha256(data).hexdigest()


@implementer(IAuthorizer)
class FileAuthorizer:
    """Allows a certificate listed in an allowlist file (see the module docstring).

    Reasons: ``allowlist-sha256`` / ``-spki`` / ``-spiffe`` / ``-dn`` (allowed), ``allowlist-
    not-listed``, ``allowlist-empty`` (a file without entries denies everything),
    ``no-certificate``. The file is looked at on a request at most every *interval* seconds
    (*clock*: monotonic seconds); a change (modification time, size or inode, then content) is
    read and parsed; a version that does not parse, or a vanished file, keeps the entries in
    force and is logged once (file and line) and counted in :attr:`status`. Raises ``OSError``
    or :class:`AllowlistError` when the file cannot be read or parsed at construction.
    """

    def __init__(self, path: Path, *, interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._interval = interval
        self._clock = clock
        self.status = AllowlistStatus(path)
        self._signature = self._stat()
        self.allowlist, digest = read_allowlist(path)
        self._accept(self.allowlist, digest)
        self._bad = ""  # SHA-256 of the last refused version (logged once), or "gone"
        self._next_check = clock() + interval

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _accept(self, allowlist: Allowlist, digest: str) -> None:
        self.allowlist = allowlist
        status = self.status
        status.entries, status.sha256 = len(allowlist), digest
        status.loads += 1
        status.loaded_at = time.time()

    def _refuse(self, key: str, problem: str) -> None:
        if key == self._bad:
            return  # this version was refused and logged already
        self._bad = key
        status = self.status
        status.errors += 1
        status.last_error = f"{self.path}: {problem}"
        log.error("allowlist {path}: {problem}; keeping the previous {entries} entries",
                  path=str(self.path), problem=problem, entries=status.entries)

    def refresh(self) -> bool:
        """Look at the file now; return ``True`` when a new version came into force."""
        signature = self._stat()
        if signature is None:
            self._signature = None
            self._refuse("gone", "cannot read the file (vanished?)")
            return False
        if signature == self._signature:
            return False
        if not self.path.is_file():  # a FIFO: reading it would block the reactor
            self._signature = None
            self._refuse("gone", "not a regular file")
            return False
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self._refuse("gone", f"cannot read the file ({exc.strerror})")
            return False
        self._signature = signature
        digest = hashlib.sha256(data).hexdigest()
        if digest == self.status.sha256:
            self._bad = ""
            return False
        try:
            allowlist = parse_allowlist(data)
        except AllowlistError as exc:
            self._refuse(digest, str(exc))
            return False
        self._bad = ""
        self._accept(allowlist, digest)
        log.info("allowlist {path}: loaded {entries} entries", path=str(self.path),
                 entries=len(allowlist))
        return True

    def authorize(self, identity: ClientIdentity | None, request: RequestInfo) -> Decision:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self.refresh()
        if identity is None:
            return NO_CERTIFICATE
        allowlist = self.allowlist
        if not allowlist:
            return _EMPTY
        reason = allowlist.match(identity)
        return _ALLOWED[reason] if reason is not None else _NOT_LISTED


_EMPTY = Decision.deny("allowlist-empty")
_NOT_LISTED = Decision.deny("allowlist-not-listed")
_ALLOWED = {reason: Decision.allow(reason) for reason in (
    "allowlist-sha256", "allowlist-spki", "allowlist-spiffe", "allowlist-dn")}


@implementer(IPlugin, IAuthorizerType)
class _FileType:
    name = "file"
    keys = frozenset({"path"})

    def build(self, name: str, options: Options) -> FileAuthorizer:
        return self.build_in(name, options, BuildContext(Path.cwd()))

    def build_in(self, name: str, options: Options, context: BuildContext) -> FileAuthorizer:
        raw = options.get("path", "").strip()
        if not raw:
            raise OptionError("path", "required: the allowlist file")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = context.config_dir / path
        if path.exists() and not path.is_dir() and not path.is_file():
            raise OptionError("path", f"not a regular file: {path}")  # a FIFO would block
        try:
            return FileAuthorizer(path)
        except AllowlistError as exc:
            raise OptionError("path", f"{path}: {exc}") from None
        except FileNotFoundError:
            raise OptionError("path", f"file not found: {path}") from None
        except IsADirectoryError:
            raise OptionError("path", f"is a directory: {path}") from None
        except OSError as exc:
            raise OptionError("path", f"cannot read {path}: {exc.strerror}") from None


file_type = _FileType()
