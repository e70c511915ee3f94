"""etc/examples/*.ini, the deployments of docs/deployments.md, are valid and do what it says.

Each example names its certificate files with paths relative to itself (``pki/server.crt``).
The test copies the example unchanged into a temporary folder, writes development PKI files
(:func:`gateway.pki.write_dev_pki`) at exactly the paths it names, and runs ``mtlsgw
check-config`` on it as an operator would (a subprocess, from another working directory). The
listeners and routes it prints must be the ones docs/deployments.md shows, and the document must
show the example file as it is.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config
from gateway.pki import write_dev_pki

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "etc" / "examples"
DOC = ROOT / "docs" / "deployments.md"
NAMES = sorted(path.name for path in EXAMPLES.glob("*.ini"))

# Which file of a development PKI stands in for each file key: (which PKI, which file).
# "clients" is the PKI of the gateway's clients and its own server certificate; "upstream" is a
# separate one for https upstreams and the certificate the gateway presents to them.
ROLES = {
    "certificate": ("clients", "server_cert"),
    "private_key": ("clients", "server_key"),
    "client_ca": ("clients", "ca"),
    "upstream_ca": ("upstream", "ca"),
    "upstream_certificate": ("upstream", "client_cert"),
    "upstream_private_key": ("upstream", "client_key"),
}
FILE_KEYS = {*ROLES, "crl"}


def read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                       default_section="\x00none", strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser


def referenced_files(path: Path) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every file path the INI file at *path* names."""
    parser = read_ini(path)
    return [(section, key, value) for section in parser.sections()
            for key, value in parser[section].items() if key in FILE_KEYS and value]


def write_referenced_pki(ini: Path) -> None:
    """Write a development PKI file at every path *ini* names, by the role of its key."""
    scratch = ini.parent / ".dev-pki"
    pkis = {"clients": write_dev_pki(scratch / "clients"),
            "upstream": write_dev_pki(scratch / "upstream", client_cn="mtlsgw-gateway")}
    written: dict[Path, Path] = {}
    for section, key, value in referenced_files(ini):
        assert key in ROLES, f"[{section}] {key}: the test has no file for this key"
        which, field = ROLES[key]
        source = getattr(pkis[which], field)
        target = ini.parent / value
        assert written.setdefault(target, source) == source, f"{value} has two roles"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def check_config(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


def documented_check_output(name: str) -> list[str]:
    """The lines docs/deployments.md shows for ``$ mtlsgw check-config NAME``."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"```\n\$ mtlsgw check-config {re.escape(name)}\n(.*?)```", text, re.S)
    assert match, f"{DOC.name} shows no `$ mtlsgw check-config {name}` block"
    return match.group(1).splitlines()


def documented_file(name: str) -> str:
    """The ```ini block that follows the link to etc/examples/NAME in docs/deployments.md."""
    text = DOC.read_text(encoding="utf-8")
    marker = f"[`etc/examples/{name}`](../etc/examples/{name}):\n\n```ini\n"
    assert marker in text, f"{DOC.name} does not show {name} after a link to it"
    return text.split(marker, 1)[1].split("```\n", 1)[0]


def prepared(tmp_path: Path, name: str) -> Path:
    """A copy of example *name*, unchanged, with development PKI files at the paths it names."""
    copy = tmp_path / "gw" / name
    copy.parent.mkdir()
    shutil.copyfile(EXAMPLES / name, copy)
    write_referenced_pki(copy)
    return copy


@pytest.fixture(params=NAMES)
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return prepared(tmp_path, request.param)


def test_the_deployments_have_examples() -> None:
    assert NAMES == ["behind-haproxy.ini", "egress.ini", "internal-mtls-api.ini",
                     "managed-host.ini", "multi-route.ini"]


def test_example_names_only_relative_files() -> None:
    for name in NAMES:
        for section, key, value in referenced_files(EXAMPLES / name):
            assert not Path(value).is_absolute() and not value.startswith("~"), (
                f"{name}: [{section}] {key} = {value}: give a path relative to the file")


def test_example_passes_check_config_and_prints_what_the_doc_shows(
    example: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"  # relative paths resolve against the file, not the cwd
    elsewhere.mkdir()
    result = check_config(example, elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    first, *printed = result.stdout.splitlines()
    assert first == f"{example}: OK"
    documented_first, *documented = documented_check_output(example.name)
    assert documented_first.endswith(f"/{example.name}: OK"), documented_first
    assert printed == documented


@pytest.mark.parametrize("name", NAMES)
def test_doc_shows_the_example_file_as_it_is(name: str) -> None:
    assert documented_file(name) == (EXAMPLES / name).read_text(encoding="utf-8")


# What each deployment is about, beyond the printed summary.

def load(tmp_path: Path, name: str) -> config.GatewaySettings:
    return config.load(prepared(tmp_path, name))


def test_managed_host_sends_the_platform_its_own_name(tmp_path: Path) -> None:
    settings = load(tmp_path, "managed-host.ini")
    (route,) = settings.routes
    assert route.upstream.scheme == "https"
    assert route.upstream.host_header == "upstream"
    assert route.upstream.ca is None  # the system trust store
    assert route.upstream.certificate is None


def test_internal_api_gets_the_gateways_certificate(tmp_path: Path) -> None:
    settings = load(tmp_path, "internal-mtls-api.ini")
    (route,) = settings.routes
    upstream = route.upstream
    assert upstream.ca is not None and upstream.certificate is not None
    assert upstream.private_key is not None
    assert upstream.server_name == "api.internal"
    assert upstream.host_header == "api.internal"
    assert settings.listeners[0].tls


def test_egress_is_plain_loopback_open_and_uses_the_gateways_certificate(
    tmp_path: Path,
) -> None:
    settings = load(tmp_path, "egress.ini")
    (listener,) = settings.listeners
    assert not listener.tls
    assert "interface=127.0.0.1" in listener.listen
    assert settings.tls is None
    (route,) = settings.routes
    assert route.policy == "open" and route.authorizers == ()
    assert route.upstream.url == "https://api.internal"
    assert route.upstream.certificate is not None
    assert route.upstream.host_header == "upstream"


def test_multi_route_has_no_default_and_its_own_authorizers_per_route(tmp_path: Path) -> None:
    settings = load(tmp_path, "multi-route.ini")
    routes = {route.name: route for route in settings.routes}
    assert "default" not in routes
    assert len({route.listener for route in settings.routes}) == 1
    assert {name: [a.name for a in route.authorizers] for name, route in routes.items()} == {
        "shop": ["staff", "partners"], "admin": ["ops"], "api": ["workloads", "staff"],
        "status": ["anyone"]}
    assert routes["admin"].strip_prefix and routes["api"].strip_prefix
    assert not routes["shop"].strip_prefix
    assert routes["api"].headers.prefix == "X-SSL-Client-"
    assert routes["api"].headers.forward_certificate
    assert routes["status"].host == "status.example.com"


def test_behind_haproxy_reads_proxy_headers_from_the_balancer_only(tmp_path: Path) -> None:
    settings = load(tmp_path, "behind-haproxy.ini")
    (listener,) = settings.listeners
    assert listener.tls and listener.proxy_protocol
    assert listener.socket_listen == "tcp:8443:interface=10.0.0.11"
    assert [str(n) for n in listener.trusted_proxies] == ["10.0.0.5/32"]
    # The balancer's configuration sends PROXY v2 to the gateways, on their port.
    haproxy = (EXAMPLES / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in haproxy and "option redispatch" in haproxy
    assert re.search(r"(?m)^\s*bind 10\.0\.0\.5:", haproxy)
    assert re.search(r"(?m)^\s*server gw1 10\.0\.0\.11:8443$", haproxy)
