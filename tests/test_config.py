"""Unit tests for gateway.config.load, and gateway.service.validate for the checks that need the
TLS and authorizer layers.

Every bad configuration must raise ConfigError with a one-line message of the documented form
``FILE: [SECTION] KEY = 'VALUE': PROBLEM``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load
from gateway.pki import Issued, make_ca, make_leaf, new_key
from gateway.service import validate

CLIENT_CA = make_ca("Clients CA")
SERVER = make_leaf(make_ca("Server CA"), "localhost", sans=["localhost"])


def new_key_pem(kind: str) -> bytes:
    return Issued(SERVER.certificate, new_key(kind)).key_pem()

Sections = dict[str, dict[str, str]]


def minimal() -> Sections:
    """The smallest valid configuration, as ``{section: {key: value}}``."""
    return {
        "gateway": {"listen": "tcp:8443", "upstream": "http://127.0.0.1:8080"},
        "tls": {
            "certificate": "server.pem",
            "private_key": "server.key",
            "client_ca": "clients-ca.pem",
        },
        "authorize": {"authorizers": "people"},
        "authorizer:people": {"type": "cn", "allow": "alice, bob"},
    }


def changed(changes: dict[tuple[str, str], str | None]) -> Sections:
    """:func:`minimal` with ``(section, key)`` set to a value, or removed for ``None``."""
    sections = minimal()
    for (section, key), value in changes.items():
        if value is None:
            sections[section].pop(key, None)
        else:
            sections.setdefault(section, {})[key] = value
    return sections


def write_pki(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    SERVER.write(directory / "server.pem", directory / "server.key")
    (directory / "clients-ca.pem").write_bytes(CLIENT_CA.cert_pem())


def write_config(directory: Path, sections: Sections, *, pki: bool = True) -> Path:
    """Write the PKI files (unless told not to) and ``gw.ini`` into *directory*."""
    if pki:
        write_pki(directory)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    path = directory / "gw.ini"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def config_error(call, path: Path) -> str:
    """The one-line message of the ConfigError that ``call(path)`` raises."""
    with pytest.raises(ConfigError) as caught:
        call(path)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# --------------------------------------------------------------------------
# valid configurations
# --------------------------------------------------------------------------

def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    settings = load(write_config(tmp_path, minimal()))
    assert settings.path == tmp_path / "gw.ini"
    assert settings.listen == "tcp:8443"
    assert settings.limits.idle_timeout == 60.0
    upstream = settings.routes[0].upstream
    assert (upstream.scheme, upstream.host, upstream.port) == ("http", "127.0.0.1", 8080)
    assert settings.routes[0].upstream.base_path == ""
    assert settings.routes[0].upstream.pool_size == 32
    assert settings.routes[0].upstream.connect_timeout == 5.0
    assert settings.routes[0].upstream.response_timeout == 60.0
    assert settings.tls.client_auth == "require"
    assert settings.tls.verify_depth == 2
    assert settings.tls.min_version == "TLSv1.2"
    assert settings.tls.crl is None
    assert settings.tls.handshake_timeout == 10.0
    assert settings.routes[0].policy == "any"
    assert settings.routes[0].headers.prefix == "X-Client-"
    assert settings.routes[0].headers.forward_certificate is False


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc" / "mtlsgw"
    write_pki(config_dir / "pki")
    sections = changed({
        ("tls", "certificate"): "pki/server.pem",
        ("tls", "private_key"): "./pki/server.key",
        ("tls", "client_ca"): "pki/clients-ca.pem",
    })
    path = write_config(config_dir, sections, pki=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tls = load(path).tls
    assert tls.certificate == config_dir / "pki" / "server.pem"
    assert tls.private_key == config_dir / "pki" / "server.key"
    assert tls.client_ca == config_dir / "pki" / "clients-ca.pem"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    write_pki(pki_dir)
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    path = write_config(config_dir, changed({
        ("tls", "certificate"): str(pki_dir / "server.pem"),
        ("tls", "private_key"): str(pki_dir / "server.key"),
        ("tls", "client_ca"): str(pki_dir / "clients-ca.pem"),
    }), pki=False)
    assert load(path).tls.certificate == pki_dir / "server.pem"


def test_a_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, minimal())
    monkeypatch.chdir(tmp_path)
    settings = load("gw.ini")
    assert settings.path == tmp_path / "gw.ini"
    assert settings.tls.certificate == tmp_path / "server.pem"


def test_authorizer_sections_come_in_listed_order_without_their_type(tmp_path: Path) -> None:
    sections = changed({
        ("authorize", "authorizers"): "everyone, people",
        ("authorize", "policy"): "all",
        ("authorizer:everyone", "type"): "any",
    })
    settings = load(write_config(tmp_path, sections))
    assert settings.routes[0].policy == "all"
    assert [(a.name, a.type, dict(a.options)) for a in settings.routes[0].authorizers] == [
        ("everyone", "any", {}),
        ("people", "cn", {"allow": "alice, bob"}),
    ]
    assert settings.routes[0].authorizers[1].location.section == "authorizer:people"


def test_an_authorizer_section_that_is_not_listed_is_ignored(tmp_path: Path) -> None:
    sections = changed({("authorizer:spare", "type"): "any"})
    routes = load(write_config(tmp_path, sections)).routes
    assert [a.name for a in routes[0].authorizers] == ["people"]


@pytest.mark.parametrize(
    ("section", "key", "raw", "attribute", "expected"),
    [
        ("tls", "client_auth", "Optional", "client_auth", "optional"),
        ("tls", "min_version", "tlsv1.3", "min_version", "TLSv1.3"),
        ("tls", "verify_depth", "16", "verify_depth", 16),
        ("tls", "handshake_timeout", "2.5", "handshake_timeout", 2.5),
        ("authorize", "policy", "ALL", "policy", "all"),
        ("gateway", "idle_timeout", "0.5", "idle_timeout", 0.5),
        ("gateway", "header_timeout", "3", "header_timeout", 3.0),
        ("gateway", "max_head_size", "8192", "max_head_size", 8192),
        ("gateway", "max_body_size", "1048576", "max_body_size", 1048576),
        ("gateway", "max_connections", "5", "max_connections", 5),
        ("headers", "prefix", "X-SSL-", "prefix", "X-SSL-"),
        ("headers", "forward_certificate", "yes", "forward_certificate", True),
        ("headers", "forward_certificate", "On", "forward_certificate", True),
        ("headers", "forward_certificate", "1", "forward_certificate", True),
        ("headers", "forward_certificate", "false", "forward_certificate", False),
        ("headers", "forward_certificate", "NO", "forward_certificate", False),
    ],
)
def test_values_are_parsed(
    tmp_path: Path, section: str, key: str, raw: str, attribute: str, expected: object
) -> None:
    settings = load(write_config(tmp_path, changed({(section, key): raw})))
    holder = {"tls": settings.tls, "headers": settings.routes[0].headers,
              "gateway": settings.limits}.get(section, settings.routes[0])
    assert getattr(holder, attribute) == expected


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "base_path"),
    [
        ("http://127.0.0.1:8080", "http", "127.0.0.1", 8080, ""),
        ("http://backend", "http", "backend", 80, ""),
        ("https://backend", "https", "backend", 443, ""),
        ("https://backend:8443/api/", "https", "backend", 8443, "/api"),
        ("http://[::1]:9000/v1/x", "http", "::1", 9000, "/v1/x"),
    ],
)
def test_upstream_url_is_split(
    tmp_path: Path, url: str, scheme: str, host: str, port: int, base_path: str
) -> None:
    settings = load(write_config(tmp_path, changed({("gateway", "upstream"): url})))
    upstream = settings.routes[0].upstream
    assert (upstream.url, upstream.scheme, upstream.host, upstream.port, upstream.base_path) == (
        url, scheme, host, port, base_path)


def test_inline_comments_and_empty_values_mean_defaults(tmp_path: Path) -> None:
    sections = changed({
        ("gateway", "listen"): "tcp:8443  ; the public port",
        ("tls", "client_auth"): "",
        ("tls", "crl"): "",
    })
    settings = load(write_config(tmp_path, sections))
    assert settings.listen == "tcp:8443"
    assert settings.tls.client_auth == "require"
    assert settings.tls.crl is None


# --------------------------------------------------------------------------
# bad configurations: config.load
# --------------------------------------------------------------------------

BAD = [
    # (changes, section, key, value or None, problem)
    pytest.param({("tls", "certificate"): "nope.pem"},
                 "tls", "certificate", "nope.pem", "file not found", id="missing-file"),
    pytest.param({("tls", "client_ca"): "."},
                 "tls", "client_ca", ".", "is a directory", id="directory-for-file"),
    pytest.param({("gateway", "listen"): None, ("gateway", "lisen"): "tcp:8443"},
                 "gateway", "lisen", "tcp:8443", "unknown key", id="unknown-key-typo"),
    pytest.param({("tls", "Certificate"): "server.pem"},
                 "tls", "Certificate", "server.pem", "unknown key", id="keys-are-case-sensitive"),
    pytest.param({("gateway", "listen"): None},
                 "gateway", "listen", None, "required key is missing", id="missing-listen"),
    pytest.param({("gateway", "listen"): "tcpp:8443"},
                 "gateway", "listen", "tcpp:8443", "not a Twisted server endpoint",
                 id="bad-endpoint-type"),
    pytest.param({("gateway", "listen"): "tcp:port"},
                 "gateway", "listen", "tcp:port", "not a Twisted server endpoint",
                 id="bad-endpoint-port"),
    pytest.param({("gateway", "upstream"): "ftp://backend/"},
                 "gateway", "upstream", "ftp://backend/", "http:// or https://", id="ftp-url"),
    pytest.param({("gateway", "upstream"): "backend:8080"},
                 "gateway", "upstream", "backend:8080", "http:// or https://",
                 id="url-without-scheme"),
    pytest.param({("gateway", "upstream"): "http://"},
                 "gateway", "upstream", "http://", "has no host", id="url-no-host"),
    pytest.param({("gateway", "upstream"): "http://:8080/x"},
                 "gateway", "upstream", "http://:8080/x", "has no host", id="url-port-no-host"),
    pytest.param({("gateway", "upstream"): "http://backend:99999"},
                 "gateway", "upstream", "http://backend:99999", "not a URL", id="url-bad-port"),
    pytest.param({("gateway", "upstream"): "http://backend/?x=1"},
                 "gateway", "upstream", "http://backend/?x=1", "query", id="url-with-query"),
    pytest.param({("gateway", "upstream"): "http://user:pw@backend/"},
                 "gateway", "upstream", "http://user:pw@backend/", "user info",
                 id="url-with-user-info"),
    pytest.param({("gateway", "upstream"): "http://@backend/"},
                 "gateway", "upstream", "http://@backend/", "user info", id="url-empty-user"),
    pytest.param({("gateway", "upstream"): "http://backend/x?"},
                 "gateway", "upstream", "http://backend/x?", "query", id="url-empty-query"),
    # the path goes into request lines as it is; a name into DNS as IDNA
    pytest.param({("gateway", "upstream"): "http://backend/a b"},
                 "gateway", "upstream", "http://backend/a b", "printable ASCII without spaces",
                 id="url-space"),
    pytest.param({("gateway", "upstream"): "http://backend/\x07"},
                 "gateway", "upstream", "http://backend/\x07",
                 "printable ASCII without spaces", id="url-control-character"),
    pytest.param({("gateway", "upstream"): "http://127.0.0.1/café"},
                 "gateway", "upstream", "http://127.0.0.1/café", "percent-encode the path",
                 id="url-non-ascii-path"),
    pytest.param({("gateway", "upstream"): "http://bücher.example/"},
                 "gateway", "upstream", "http://bücher.example/", "IDNA", id="url-non-ascii-host"),
    pytest.param({("gateway", "upstream"): f"http://{'a' * 79}.example/"},
                 "gateway", "upstream", f"http://{'a' * 79}.example/",
                 "is not a valid host name", id="url-label-too-long"),
    pytest.param({("gateway", "idle_timeout"): "-1"},
                 "gateway", "idle_timeout", "-1", "more than 0", id="negative-timeout"),
    pytest.param({("gateway", "idle_timeout"): "nan"},
                 "gateway", "idle_timeout", "nan", "more than 0", id="nan-timeout"),
    # Python's float() and int() take these; a config file should say what it means
    pytest.param({("gateway", "idle_timeout"): "１０"},
                 "gateway", "idle_timeout", "１０", "must be a number of seconds",
                 id="full-width-digits"),
    pytest.param({("gateway", "idle_timeout"): "1_0"},
                 "gateway", "idle_timeout", "1_0", "must be a number of seconds",
                 id="underscore-in-seconds"),
    pytest.param({("gateway", "upstream_pool_size"): "3_2"},
                 "gateway", "upstream_pool_size", "3_2", "must be an integer",
                 id="underscore-in-integer"),
    pytest.param({("gateway", "listen"): "tcp:８４４３"},
                 "gateway", "listen", "tcp:８４４３", "the port must be a number",
                 id="full-width-port"),
    pytest.param({("gateway", "upstream_pool_size"): "0"},
                 "gateway", "upstream_pool_size", "0", "between 1 and 10000", id="pool-zero"),
    pytest.param({("tls", "client_auth"): "maybe"},
                 "tls", "client_auth", "maybe", "must be one of require, optional",
                 id="client-auth-maybe"),
    pytest.param({("tls", "verify_depth"): "abc"},
                 "tls", "verify_depth", "abc", "must be an integer", id="verify-depth-abc"),
    pytest.param({("tls", "verify_depth"): "0"},
                 "tls", "verify_depth", "0", "between 1 and 16", id="verify-depth-0"),
    pytest.param({("tls", "verify_depth"): "17"},
                 "tls", "verify_depth", "17", "between 1 and 16", id="verify-depth-17"),
    pytest.param({("tls", "min_version"): "TLSv1.0"},
                 "tls", "min_version", "TLSv1.0", "must be TLSv1.2 or TLSv1.3",
                 id="min-version-tls10"),
    pytest.param({("authorize", "policy"): "some"},
                 "authorize", "policy", "some", "must be one of any, all", id="bad-policy"),
    pytest.param({("authorize", "authorizers"): None},
                 "authorize", "authorizers", None, "required key is missing",
                 id="no-authorizers-key"),
    pytest.param({("authorize", "authorizers"): "people, robots"},
                 "authorize", "authorizers", "people, robots",
                 "'robots' is listed but there is no [authorizer:robots] section",
                 id="authorizer-not-defined"),
    pytest.param({("authorize", "authorizers"): "people, people"},
                 "authorize", "authorizers", "people, people", "'people' is listed twice",
                 id="authorizer-listed-twice"),
    pytest.param({("authorizer:people", "type"): None},
                 "authorizer:people", "type", None, "required key is missing",
                 id="authorizer-without-type"),
    pytest.param({("headers", "forward_certificate"): "maybe"},
                 "headers", "forward_certificate", "maybe", "must be yes or no",
                 id="bad-boolean"),
    pytest.param({("headers", "prefix"): "X Client-"},
                 "headers", "prefix", "X Client-", "token characters", id="prefix-with-space"),
    pytest.param({("headers", "prefix"): "X-Client:"},
                 "headers", "prefix", "X-Client:", "token characters", id="prefix-with-colon"),
]


@pytest.mark.parametrize(("changes", "section", "key", "value", "problem"), BAD)
def test_bad_config_is_a_one_line_error_naming_file_section_key_and_value(
    tmp_path: Path, changes: dict, section: str, key: str, value: str | None, problem: str
) -> None:
    path = write_config(tmp_path, changed(changes))
    message = config_error(load, path)
    where = f"{path}: [{section}] {key}"
    if value is not None:
        where += f" = {value!r}"
    assert message.startswith(where + ": "), message
    assert problem in message


def test_missing_file_error_names_the_resolved_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, changed({("tls", "certificate"): "sub/nope.pem"}))
    assert str(tmp_path / "sub" / "nope.pem") in config_error(load, path)


@pytest.mark.parametrize(
    ("section_name", "values"),
    [
        pytest.param("gatway", {"listen": "tcp:8443"}, id="typo"),
        pytest.param("DEFAULT", {"listen": "tcp:8443"}, id="default-section"),
        pytest.param("authorizer:", {"type": "any"}, id="authorizer-without-name"),
        pytest.param("authorizer:a b", {"type": "any"}, id="authorizer-name-with-space"),
        pytest.param("Authorizer:x", {"type": "any"}, id="case-sensitive"),
    ],
)
def test_unknown_section_is_a_one_line_error(
    tmp_path: Path, section_name: str, values: dict[str, str]
) -> None:
    sections = minimal()
    sections[section_name] = values
    path = write_config(tmp_path, sections)
    message = config_error(load, path)
    assert message.startswith(f"{path}: [{section_name}]: unknown section"), message


def test_missing_required_section(tmp_path: Path) -> None:
    sections = minimal()
    del sections["tls"]
    path = write_config(tmp_path, sections)
    assert config_error(load, path) == f"{path}: [tls]: required section is missing"


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.ini"
    assert config_error(load, path) == f"{path}: config file not found"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("[gateway]\nlisten = a\nlisten = b\n", "the key is given twice",
                     id="duplicate-key"),
        pytest.param("[gateway]\n[gateway]\n", "the section is given twice",
                     id="duplicate-section"),
        pytest.param("listen = tcp:8443\n", "a key before any [section]", id="no-section-header"),
    ],
)
def test_ini_syntax_errors_are_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "gw.ini"
    path.write_text(text, encoding="utf-8")
    assert problem in config_error(load, path)


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gw.ini"
    path.write_bytes(b"[gateway]\nlisten = \xff\n")
    assert config_error(load, path) == f"{path}: config file is not UTF-8 text"


def test_multi_line_value_is_reported_on_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, changed({("tls", "client_auth"): "maybe\n  perhaps"}))
    message = config_error(load, path)
    assert message.startswith(f"{path}: [tls] client_auth = 'maybe\\nperhaps': ")


def test_an_empty_authorizer_list_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, changed({("authorize", "authorizers"): " , "}))
    message = config_error(load, path)
    assert message.startswith(f"{path}: [authorize] authorizers = ',': ")


def test_two_sections_for_the_same_authorizer_are_refused(tmp_path: Path) -> None:
    sections = minimal()
    sections["authorizer: people"] = {"type": "any"}
    path = write_config(tmp_path, sections)
    assert "people" in config_error(load, path)


# --------------------------------------------------------------------------
# bad configurations found by service.validate (TLS material, authorizer types)
# --------------------------------------------------------------------------

def test_validate_accepts_the_minimal_config(tmp_path: Path) -> None:
    checked = validate(write_config(tmp_path, minimal()))
    assert checked.settings.listen == "tcp:8443"
    assert checked.context is not None
    policy = checked.policies["default"]
    assert policy.mode == "any"
    assert [a.name for a in policy.authorizers] == ["people"]


def test_validate_key_not_matching_the_certificate(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    (tmp_path / "server.key").write_bytes(new_key_pem("ec"))  # EC like the certificate's
    message = config_error(validate, path)
    assert message.startswith(f"{path}: [tls] private_key = "), message
    assert "server.key" in message
    assert "does not match the certificate" in message


def test_validate_key_of_another_type_than_the_certificate(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    (tmp_path / "server.key").write_bytes(new_key_pem("rsa"))
    message = config_error(validate, path)
    assert message.startswith(f"{path}: [tls] private_key = "), message
    assert "server.key" in message
    assert "does not match the certificate" in message


def test_validate_private_key_file_without_a_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    (tmp_path / "server.key").write_bytes(SERVER.cert_pem())
    message = config_error(validate, path)
    assert message.startswith(f"{path}: [tls] private_key = "), message
    assert "no usable PEM private key" in message


def test_validate_ca_file_without_a_certificate(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    (tmp_path / "clients-ca.pem").write_text("this is not a certificate\n")
    message = config_error(validate, path)
    assert message.startswith(f"{path}: [tls] client_ca = "), message
    assert "clients-ca.pem" in message
    assert "no PEM certificate" in message


def test_validate_certificate_file_holding_a_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    (tmp_path / "server.pem").write_bytes(SERVER.key_pem())
    message = config_error(validate, path)
    assert message.startswith(f"{path}: [tls] certificate = "), message


def test_validate_accepts_an_rsa_key_pair(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    rsa_server = make_leaf(make_ca("RSA CA"), "localhost", key_kind="rsa")
    rsa_server.write(tmp_path / "server.pem", tmp_path / "server.key")
    validate(path)


SHA256 = "ab" * 32

BAD_AUTHORIZERS = [
    pytest.param({"type": "nope"}, "type", "nope",
                 "unknown authorizer type (available: any, cn, ",  # + the other types, plugins
                 id="unknown-type"),
    pytest.param({"type": "fingerprint", "sha256": "ab" * 20}, "sha256", "ab" * 20,
                 "SHA-1 fingerprint", id="sha1-fingerprint"),
    pytest.param({"type": "fingerprint", "sha256": "AB:CD:xyz"}, "sha256", "AB:CD:xyz",
                 "not a SHA-256 fingerprint", id="malformed-fingerprint"),
    pytest.param({"type": "fingerprint", "sha256": SHA256, "sha1": SHA256}, "sha1", SHA256,
                 "unknown key (known keys: sha256, type)", id="unknown-key-in-authorizer"),
    pytest.param({"type": "cn", "allow": "alice", "alow": "bob"}, "alow", "bob",
                 "unknown key (known keys: allow, type)", id="typo-in-authorizer"),
    pytest.param({"type": "cn"}, "allow", "", "required", id="cn-without-allow"),
    pytest.param({"type": "san", "ip": "10.0.0.1/8"}, "ip", "10.0.0.1/8", "host bits",
                 id="san-bad-network"),
    pytest.param({"type": "san", "uri": "spiffe://td/**/x"}, "uri", "spiffe://td/**/x",
                 "only as the last segment", id="san-bad-uri-pattern"),
]


@pytest.mark.parametrize(("options", "key", "value", "problem"), BAD_AUTHORIZERS)
def test_validate_bad_authorizer_section_is_a_one_line_error(
    tmp_path: Path, options: dict[str, str], key: str, value: str, problem: str
) -> None:
    sections = minimal()
    sections["authorizer:people"] = options
    path = write_config(tmp_path, sections)
    message = config_error(validate, path)
    assert message.startswith(f"{path}: [authorizer:people] {key} = {value!r}: "), message
    assert problem in message


def test_a_fifo_for_a_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO named as a certificate or CA file is refused at once (opening it would wait for a
    writer, and a reload, a watch_files reload included, would hang the reactor)."""
    import os

    os.mkfifo(tmp_path / "fifo.pem")
    path = write_config(tmp_path, changed({("tls", "client_ca"): "fifo.pem"}))
    message = config_error(load, path)
    assert message.startswith(f"{path}: [tls] client_ca = 'fifo.pem': "), message
    assert "not a regular file" in message


def test_a_fifo_for_the_config_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """The INI file replaced by a FIFO (a watch_files reload, a SIGHUP) is refused at once."""
    import os

    path = tmp_path / "gw.ini"
    os.mkfifo(path)
    assert config_error(load, path) == f"{path}: config file is not a regular file"



@pytest.mark.parametrize(("prefix", "taken"), [
    ("Content-", "content-encoding"), ("Host", "host"), ("Authorization", "authorization"),
    ("X-", "X-*"), ("x_", "X-*"), ("X-Forwarded-", "x-forwarded-client-cert"),
    ("Client-", "client-cert"), ("X-Request", "x-request-id"),
])
def test_an_identity_prefix_that_would_own_ordinary_headers_is_refused(
        tmp_path: Path, prefix: str, taken: str) -> None:
    # the gateway removes every client header with its prefix: Content- took Content-Type
    for section, key in (("headers", "prefix"), ("route:api", "header_prefix")):
        sections = changed({(section, key): prefix})
        if section == "route:api":
            sections[section].update({"prefix": "/api/", "upstream": "http://127.0.0.1:9000"})
        path = write_config(tmp_path, sections)
        assert config_error(load, path) == (
            f"{path}: [{section}] {key} = {prefix!r}: would own the client's {taken} headers: "
            "choose a prefix of its own, such as X-Client-")


@pytest.mark.parametrize("prefix", ["X-Client-", "X-SSL-", "X-Id-", "SSL_Client_", "X-Mtls-"])
def test_prefixes_of_their_own_are_accepted(tmp_path: Path, prefix: str) -> None:
    settings = load(write_config(tmp_path, changed({("headers", "prefix"): prefix})))
    assert {route.headers.prefix for route in settings.routes} == {prefix}
