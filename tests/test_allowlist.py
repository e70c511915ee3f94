"""Unit tests for gateway.authz.allowlist: parsing allowlist files, matching entries, the ``file``
authorizer's re-reading (no reactor: its clock is a variable)."""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from twisted.logger import globalLogPublisher

from gateway.authz.allowlist import (
    AllowlistError,
    FileAuthorizer,
    file_type,
    parse_allowlist,
    parse_dn,
    parse_spiffe_id,
    spki_sha256,
)
from gateway.authz.interfaces import OptionError
from gateway.authz.registry import BuildContext, build_authorizers
from gateway.authz.testing import decide, identity_from_pem, request_info
from gateway.config import AuthorizerSection, ConfigError, Location
from gateway.pki import Issued, make_ca, make_leaf, name

CA = make_ca(name("Allowlist CA"))
ALICE = make_leaf(CA, name("alice", organization_name="Example, Inc.", country_name="DE"),
                  sans=["uri:spiffe://example.org/ns/prod/sa/web"])
BOB = make_leaf(CA, "bob", sans=["uri:spiffe://example.org/a", "uri:spiffe://example.org/b"])
REQUEST = request_info()


def ident(issued: Issued):  # type: ignore[no-untyped-def]
    return identity_from_pem(issued.cert_pem())


def renewed(issued: Issued) -> Issued:
    """Another certificate for the same key (a renewal)."""
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(issued.certificate.subject)
                   .issuer_name(CA.certificate.subject)
                   .public_key(issued.certificate.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .sign(CA.key, hashes.SHA256()))
    return Issued(certificate, issued.key)


def spki_hex(issued: Issued) -> str:
    der = issued.certificate.public_key().public_bytes(Encoding.DER,
                                                       PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


# -- parsing -----------------------------------------------------------------------------------


def test_parse_every_kind_comments_and_blank_lines() -> None:
    fingerprint = ident(ALICE).fingerprint_sha256
    colons = ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    text = (f"\ufeff# the team\n\n  sha256:{colons}  \r\nspki:{spki_hex(BOB)}\n"
            "spiffe://example.org/ns/prod/sa/web\n   # indented comment\n"
            "dn:CN=alice,O=Example\\, Inc.,C=DE\n")
    allowlist = parse_allowlist(text.encode())
    assert allowlist.sha256 == {fingerprint}
    assert allowlist.spki == {spki_hex(BOB)}
    assert allowlist.spiffe == {"spiffe://example.org/ns/prod/sa/web"}
    assert len(allowlist.dns) == 1
    assert len(allowlist) == 4


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("sha256:abc\n", 1, "not a SHA-256 fingerprint"),
    ("# ok\nsha256:" + "a" * 40 + "\n", 2, "SHA-1 fingerprint"),
    ("\n\nspki:zz\n", 3, "not a SHA-256 digest"),
    ("alice\n", 1, "is not an entry"),
    ("cn:alice\n", 1, "is not an entry"),
    ("spiffe://Example.org/x\n", 1, "trust domain must be lowercase"),
    ("spiffe://example.org:8443/x\n", 1, "trust domain"),
    ("spiffe://example.org/a//b\n", 1, "path segments"),
    ("spiffe://example.org/a/../b\n", 1, "path segments"),
    ("spiffe://example.org/a?x=1\n", 1, "path segments"),
    ("SPIFFE://example.org/a\n", 1, "starts with spiffe://"),
    ("dn:CN\n", 1, "not an RFC 4514"),
    ("dn:CN=a,,O=b\n", 1, "not an RFC 4514"),
    ("dn:\n", 1, "not an RFC 4514"),
    ("dn:CN=a\x01\n", 1, "control character"),
    ("sha256:" + "a" * 64 + "\n\xff\n", 2, "not UTF-8"),
])
def test_parse_errors_name_the_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(AllowlistError) as caught:
        parse_allowlist(text.encode("latin-1") if "\xff" in text else text.encode())
    assert caught.value.line == line
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"line {line}: ")


def test_empty_file_parses_to_an_empty_list() -> None:
    assert len(parse_allowlist(b"# nobody yet\n\n")) == 0


def test_spiffe_id_rules() -> None:
    assert parse_spiffe_id("spiffe://example.org") == "spiffe://example.org"
    assert parse_spiffe_id("spiffe://a-b.c_d/x.y/Z-9") == "spiffe://a-b.c_d/x.y/Z-9"
    with pytest.raises(ValueError, match="path segments"):
        parse_spiffe_id("spiffe://example.org/")


# -- distinguished names -----------------------------------------------------------------------


@pytest.mark.parametrize(("one", "other", "equal"), [
    ("CN=alice,O=Example", "cn=ALICE,o=example", True),  # type names and values: any case
    ("CN=alice,O=Example", "2.5.4.3=alice,2.5.4.10=Example", True),  # OIDs for names
    ("CN=alice  smith", "CN=alice smith", True),  # inner runs of spaces are one
    ("CN=\\ alice\\ ", "CN=alice", True),  # leading and trailing spaces do not count
    ("CN=alice+UID=a1,O=x", "UID=a1+CN=alice,O=x", True),  # AVA order inside an RDN is free
    ("CN=alice,O=x", "O=x,CN=alice", False),  # RDN order counts
    ("CN=alice,O=x", "CN=alice", False),  # a subset is not the name
    ("CN=alice+UID=a1", "CN=alice,UID=a1", False),  # multi-valued RDN is not two RDNs
    ("CN=caf\\C3\\A9", "CN=CAFÉ", True),  # hex escapes are UTF-8
    ("emailAddress=a@example.com", "EMAILADDRESS=A@example.com", True),
])
def test_dn_comparison_rules(one: str, other: str, equal: bool) -> None:
    assert (parse_dn(one) == parse_dn(other)) is equal


def test_dn_entry_matches_the_certificate_subject_read_from_der() -> None:
    allowlist = parse_allowlist(b"dn:cn=Alice,c=de,o=example\\2C inc.\n")
    assert allowlist.match(ident(ALICE)) == "allowlist-dn"
    assert allowlist.match(ident(BOB)) is None


def test_dn_entry_and_a_multi_valued_rdn_certificate() -> None:
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "svc"),
                                        x509.NameAttribute(NameOID.USER_ID, "42")]),
    ])
    who = ident(make_leaf(CA, subject))
    assert parse_allowlist(b"dn:UID=42+CN=svc,O=x\n").match(who) == "allowlist-dn"
    assert parse_allowlist(b"dn:CN=svc,O=x\n").match(who) is None


# -- matching ----------------------------------------------------------------------------------


def test_sha256_entry_pins_one_certificate() -> None:
    allowlist = parse_allowlist(f"sha256:{ident(ALICE).fingerprint_sha256}\n".encode())
    assert allowlist.match(ident(ALICE)) == "allowlist-sha256"
    assert allowlist.match(ident(renewed(ALICE))) is None


def test_spki_entry_survives_a_renewal_with_the_same_key() -> None:
    assert spki_sha256(ident(ALICE).pem) == spki_hex(ALICE)  # openssl's SPKI DER, hashed
    allowlist = parse_allowlist(f"spki:{spki_hex(ALICE)}\n".encode())
    assert allowlist.match(ident(ALICE)) == "allowlist-spki"
    assert allowlist.match(ident(renewed(ALICE))) == "allowlist-spki"
    other_key = make_leaf(CA, name("alice", organization_name="Example, Inc.",
                                   country_name="DE"))
    assert allowlist.match(ident(other_key)) is None


def test_spiffe_entry_needs_exactly_one_uri_san() -> None:
    allowlist = parse_allowlist(b"spiffe://example.org/ns/prod/sa/web\nspiffe://example.org/a\n")
    assert allowlist.match(ident(ALICE)) == "allowlist-spiffe"
    assert allowlist.match(ident(BOB)) is None  # two URI SANs: not an X.509-SVID


# -- the file authorizer -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def logged() -> list[str]:
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "mtlsgw.authz":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    if bump:  # a distinct modification time, as an editor's later save has
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_file_authorizer_rereads_a_changed_file_at_most_once_a_second(
        tmp_path: Path, logged: list[str]) -> None:
    path = tmp_path / "allow.txt"
    write(path, f"sha256:{ident(ALICE).fingerprint_sha256}\n")
    clock = Clock()
    authorizer = FileAuthorizer(path, clock=clock)
    assert decide(authorizer, ident(ALICE), REQUEST).reason == "allowlist-sha256"
    assert decide(authorizer, ident(BOB), REQUEST).reason == "allowlist-not-listed"
    write(path, f"sha256:{ident(BOB).fingerprint_sha256}\n", bump=1)
    clock.now += 0.5  # not yet looked at again
    assert decide(authorizer, ident(ALICE), REQUEST).allowed
    clock.now += 0.6
    assert decide(authorizer, ident(ALICE), REQUEST).reason == "allowlist-not-listed"
    assert decide(authorizer, ident(BOB), REQUEST).allowed
    assert authorizer.status.loads == 2
    assert authorizer.status.entries == 1
    assert authorizer.status.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert any("loaded 1 entries" in line for line in logged)


def test_malformed_version_keeps_the_previous_list_and_is_logged_once(
        tmp_path: Path, logged: list[str]) -> None:
    path = tmp_path / "allow.txt"
    write(path, f"sha256:{ident(ALICE).fingerprint_sha256}\n")
    clock = Clock()
    authorizer = FileAuthorizer(path, clock=clock)
    write(path, f"# fine\nsha256:{ident(BOB).fingerprint_sha256}\nbogus\n", bump=1)
    for _ in range(3):
        clock.now += 1.1
        assert decide(authorizer, ident(ALICE), REQUEST).allowed  # the previous list holds
        assert not decide(authorizer, ident(BOB), REQUEST).allowed
    errors = [line for line in logged if "keeping the previous" in line]
    assert len(errors) == 1
    assert f"allowlist {path}: line 3: 'bogus' is not an entry" in errors[0]
    assert authorizer.status.errors == 1
    assert authorizer.status.last_error is not None and "line 3" in authorizer.status.last_error
    # Another bad version counts again; a good one comes into force.
    write(path, "sha256:xyz\n", bump=2)
    clock.now += 1.1
    decide(authorizer, ident(ALICE), REQUEST)
    assert authorizer.status.errors == 2
    write(path, f"sha256:{ident(BOB).fingerprint_sha256}\n", bump=3)
    clock.now += 1.1
    assert decide(authorizer, ident(BOB), REQUEST).allowed
    assert authorizer.status.loads == 2


def test_vanished_file_keeps_the_list(tmp_path: Path, logged: list[str]) -> None:
    path = tmp_path / "allow.txt"
    write(path, f"sha256:{ident(ALICE).fingerprint_sha256}\n")
    clock = Clock()
    authorizer = FileAuthorizer(path, clock=clock)
    path.unlink()
    for _ in range(2):
        clock.now += 1.1
        assert decide(authorizer, ident(ALICE), REQUEST).allowed
    assert authorizer.status.errors == 1
    assert len([line for line in logged if "vanished" in line]) == 1
    write(path, f"sha256:{ident(BOB).fingerprint_sha256}\n")
    clock.now += 1.1
    assert decide(authorizer, ident(BOB), REQUEST).allowed


def test_a_fifo_in_place_of_the_file_keeps_the_list_without_blocking(
        tmp_path: Path, logged: list[str]) -> None:
    """A FIFO put where the allowlist was is never opened (that would wait for a writer, in
    the reactor, on a request): the list in force stays, the problem is logged once."""
    path = tmp_path / "allow.txt"
    write(path, f"sha256:{ident(ALICE).fingerprint_sha256}\n")
    clock = Clock()
    authorizer = FileAuthorizer(path, clock=clock)
    path.unlink()
    os.mkfifo(path)
    for _ in range(2):
        clock.now += 1.1
        assert decide(authorizer, ident(ALICE), REQUEST).allowed
    assert authorizer.status.errors == 1
    assert len([line for line in logged if "not a regular file" in line]) == 1


def test_empty_file_denies_everything(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    write(path, "# nobody\n")
    authorizer = FileAuthorizer(path)
    assert decide(authorizer, ident(ALICE), REQUEST).reason == "allowlist-empty"
    assert decide(authorizer, None, REQUEST).reason == "no-certificate"


def test_unchanged_content_with_a_new_mtime_is_not_a_new_version(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    write(path, f"sha256:{ident(ALICE).fingerprint_sha256}\n")
    clock = Clock()
    authorizer = FileAuthorizer(path, clock=clock)
    write(path, path.read_text(), bump=5)
    clock.now += 1.1
    decide(authorizer, ident(ALICE), REQUEST)
    assert authorizer.status.loads == 1


# -- building: one-line config errors ----------------------------------------------------------


def _section(tmp_path: Path, **options: str) -> AuthorizerSection:
    return AuthorizerSection("allow", "file", options,
                             Location(tmp_path / "gw.ini", "authorizer:allow"))


def test_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    write(tmp_path / "allow.txt", f"sha256:{ident(ALICE).fingerprint_sha256}\n")
    (built,) = build_authorizers([_section(tmp_path, path="allow.txt")], {"file": file_type})
    assert built.authorizer.path == tmp_path / "allow.txt"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("content", "problem"), [
    (None, "file not found: {dir}/allow.txt"),
    ("sha256:abc\n", "{dir}/allow.txt: line 1: 'abc' is not a SHA-256 fingerprint"),
])
def test_missing_or_malformed_file_is_a_config_error(
        tmp_path: Path, content: str | None, problem: str) -> None:
    if content is not None:
        write(tmp_path / "allow.txt", content)
    with pytest.raises(ConfigError) as caught:
        build_authorizers([_section(tmp_path, path="allow.txt")], {"file": file_type})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/gw.ini: [authorizer:allow] path = 'allow.txt': ")
    assert problem.format(dir=tmp_path) in message
    assert "\n" not in message


def test_a_fifo_for_the_file_is_a_config_error_without_blocking(tmp_path: Path) -> None:
    # reading it would block: check-config, the start, and a reload (the whole reactor) hung
    os.mkfifo(tmp_path / "allow.txt")
    with pytest.raises(ConfigError) as caught:
        build_authorizers([_section(tmp_path, path="allow.txt")], {"file": file_type})
    assert str(caught.value) == (f"{tmp_path}/gw.ini: [authorizer:allow] path = 'allow.txt': "
                                 f"not a regular file: {tmp_path}/allow.txt")


def test_path_is_required(tmp_path: Path) -> None:
    with pytest.raises(OptionError):
        file_type.build_in("allow", {}, BuildContext(tmp_path))
