"""Unit tests for gateway.pathnorm: the normalisation table and escaped_slashes."""

from __future__ import annotations

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


def test_the_query_is_kept_as_it_is() -> None:
    assert normalize_target(b"/a/../b?x=/../%61&y=%2F") == b"/b?x=/../%61&y=%2F"
    assert normalize_target(b"/b?%2F", "reject") == b"/b?%2F"
    assert normalize_target(b"/a%2Fb?x", "reject") is None


def test_an_unchanged_target_is_returned_itself() -> None:
    target = b"/static/app.js?v=1"
    assert normalize_target(target) is target
    path = b"/api/users/42"
    assert normalize_path(path) is path
