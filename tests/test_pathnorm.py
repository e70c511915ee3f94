"""Unit tests for gateway.pathnorm: the normalisation table and escaped_slashes."""

from __future__ import annotations

import random

import pytest

from gateway.pathnorm import normalize_path, normalize_target

REJECT = None
TABLE = [
    # target, keep, reject, unescape
    (b"/api/../admin/x", b"/admin/x", b"/admin/x", b"/admin/x"),
    (b"/%61dmin/x", b"/admin/x", b"/admin/x", b"/admin/x"),
    (b"//admin/x", b"/admin/x", b"/admin/x", b"/admin/x"),
    (b"/admin%2F../x", b"/admin%2F../x", REJECT, b"/x"),
    (b"/admin%2f../x", b"/admin%2F../x", REJECT, b"/x"),
    (b"/a%5Cb", b"/a%5Cb", REJECT, b"/a/b"),
    (b"/a\\..\\b", b"/a\\..\\b", REJECT, b"/b"),
    (b"/%2e%2e/%2E/x", b"/x", b"/x", b"/x"),
    (b"/a/./b/../../c", b"/c", b"/c", b"/c"),
    (b"/../../x", b"/x", b"/x", b"/x"),
    (b"/a/..", b"/", b"/", b"/"),
    (b"/a/.", b"/a/", b"/a/", b"/a/"),
    (b"/a//b///c/", b"/a/b/c/", b"/a/b/c/", b"/a/b/c/"),
    (b"/a//../b", b"/b", b"/b", b"/b"),  # slashes merge first, as nginx
    (b"/%7euser/%41%5a%30%2D%5F", b"/~user/AZ0-_", b"/~user/AZ0-_", b"/~user/AZ0-_"),
    (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9", b"/caf%C3%A9"),  # §6.2.2.1: upper hex
    (b"/100%25/%zz/%4", b"/100%25/%zz/%4", b"/100%25/%zz/%4", b"/100%25/%zz/%4"),
    # A decoded hex digit after a stray "%" would make a new escape ("%%32e" into "%2e"): kept.
    (b"/p/%%32e%%32e/a", b"/p/%%32e%%32e/a", b"/p/%%32e%%32e/a", b"/p/%%32e%%32e/a"),
    (b"/p/%2%65/a", b"/p/%2%65/a", b"/p/%2%65/a", b"/p/%2%65/a"),
    (b"/%%32F", b"/%%32F", b"/%%32F", b"/%%32F"),
    (b"/%%%32%46", b"/%%%32F", b"/%%%32F", b"/%%%32F"),
    (b"/.well-known/x", b"/.well-known/x", b"/.well-known/x", b"/.well-known/x"),
    (b"/a..b/...", b"/a..b/...", b"/a..b/...", b"/a..b/..."),
    (b"/", b"/", b"/", b"/"),
]


@pytest.mark.parametrize(("target", "keep", "reject", "unescape"), TABLE,
                         ids=[row[0].decode() for row in TABLE])
def test_normalisation_table(target: bytes, keep: bytes, reject: bytes | None,
                             unescape: bytes) -> None:
    assert normalize_path(target, "keep") == keep
    assert normalize_path(target, "reject") == reject
    assert normalize_path(target, "unescape") == unescape


def test_normalisation_is_idempotent() -> None:
    # What the gateway routes on is what it forwards: normalising that again changes nothing,
    # so an upstream that normalises too sees the same path (no "%%32e" turning into "..").
    rng = random.Random(9440)
    alphabet = [b"%", b"2", b"e", b"E", b"3", b"F", b"f", b"5", b"c", b"/", b".", b"a", b"\\",
                b"%2", b"%32", b"%2e", b"%2E", b"%2F", b"%5C", b"%25", b"%65", b"%46"]
    for _ in range(20000):
        path = b"/" + b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        for mode in ("keep", "reject", "unescape"):
            once = normalize_path(path, mode)
            if once is not None:
                assert normalize_path(once, mode) == once, (path, mode, once)


def test_the_query_is_kept_as_it_is() -> None:
    assert normalize_target(b"/a/../b?x=/../%61&y=%2F") == b"/b?x=/../%61&y=%2F"
    assert normalize_target(b"/b?%2F", "reject") == b"/b?%2F"
    assert normalize_target(b"/a%2Fb?x", "reject") is None


def test_an_unchanged_target_is_returned_itself() -> None:
    target = b"/static/app.js?v=1"
    assert normalize_target(target) is target
    path = b"/api/users/42"
    assert normalize_path(path) is path
