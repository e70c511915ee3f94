"""etc/gw.ini, the annotated example configuration, is valid and complete.

The example names production paths under /etc/mtlsgw/; the tests point them at a development PKI,
pin the development client certificate, and run ``mtlsgw check-config`` on the result as an
operator would (a subprocess, exit status and stderr).
"""

from __future__ import annotations

import configparser
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway import config
from gateway.pki import DevPKI, write_dev_pki

EXAMPLE = Path(__file__).resolve().parents[1] / "etc" / "gw.ini"


def fingerprint_sha256(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def set_value(text: str, section: str, key: str, value: str) -> str:
    """*text* with the (uncommented) ``key = ...`` line of ``[section]`` set to *value*."""
    lines = text.splitlines()
    current = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
        elif current == section and line.split("=", 1)[0].strip() == key:
            lines[index] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no [{section}] {key} line in {EXAMPLE}")


def local_copy(directory: Path, pki: DevPKI) -> Path:
    """The example with its /etc/mtlsgw/ files replaced by *pki* and the pin set to its client."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = set_value(text, "tls", "certificate", str(pki.server_cert))
    text = set_value(text, "tls", "private_key", str(pki.server_key))
    text = set_value(text, "tls", "client_ca", str(pki.ca))
    text = set_value(text, "authorizer:pinned", "sha256", fingerprint_sha256(pki.client_cert))
    active = [ln for ln in text.splitlines() if not ln.lstrip().startswith((";", "#"))]
    assert not [ln for ln in active if "/etc/mtlsgw/" in ln], "a path the test does not replace"
    path = directory / "gw.ini"
    path.write_text(text, encoding="utf-8")
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
        cwd=path.parent, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def pki(tmp_path: Path) -> DevPKI:
    return write_dev_pki(tmp_path / "pki")


def test_example_passes_check_config(tmp_path: Path, pki: DevPKI) -> None:
    path = local_copy(tmp_path, pki)
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"{path}: OK"), result.stdout
    assert "(policy any: team, pinned)" in result.stdout


def test_bad_value_is_one_line_naming_file_section_key_value(tmp_path: Path, pki: DevPKI) -> None:
    path = local_copy(tmp_path, pki)
    path.write_text(set_value(path.read_text(encoding="utf-8"), "tls", "verify_depth", "0"),
                    encoding="utf-8")
    result = check_config(path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"mtlsgw: {path}: [tls] verify_depth = '0': must be between 1 and 16"), lines[0]


def test_commented_san_example_is_valid(tmp_path: Path, pki: DevPKI) -> None:
    path = local_copy(tmp_path, pki)
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(";[authorizer:workloads]")
    lines[start] = lines[start][1:]
    end = start + 1
    while end < len(lines) and re.match(r";[a-z_]+ = ", lines[end]):  # ";key = value"
        lines[end] = lines[end][1:]
        end += 1
    assert lines[start + 1 : end][0] == "type = san", lines[start:end]
    assert end - start > 2, "the example has no matching rules"
    text = set_value("\n".join(lines), "authorize", "authorizers", "team, pinned, workloads")
    path.write_text(text, encoding="utf-8")
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "(policy any: team, pinned, workloads)" in result.stdout


def test_example_lists_every_key_of_the_fixed_sections() -> None:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(EXAMPLE, encoding="utf-8")
    for section, keys in config._FIXED_SECTIONS.items():
        assert parser.has_section(section), section
        assert set(parser[section]) == keys, section


def test_example_values_are_the_defaults(tmp_path: Path, pki: DevPKI) -> None:
    # The same file with every optional key removed must load to the same settings.
    example = config.load(local_copy(tmp_path, pki))
    text = (tmp_path / "gw.ini").read_text(encoding="utf-8")
    required = {"listen", "upstream", "certificate", "private_key", "client_ca", "authorizers",
                "type", "allow", "sha256"}
    kept = [ln for ln in text.splitlines()
            if "=" not in ln or ln.lstrip().startswith((";", "#"))
            or ln.split("=", 1)[0].strip() in required]
    minimal = tmp_path / "minimal.ini"
    minimal.write_text("\n".join(kept) + "\n", encoding="utf-8")
    defaults = config.load(minimal)
    assert example.limits == defaults.limits
    for mine, default in zip(example.routes, defaults.routes, strict=True):
        assert (mine.upstream, mine.policy, mine.headers, mine.prefix, mine.strip_prefix) == (
            default.upstream, default.policy, default.headers, default.prefix,
            default.strip_prefix)
    assert attrs.evolve(example.tls, location=None) == attrs.evolve(defaults.tls, location=None)



def test_commented_file_and_http_examples_are_valid(tmp_path: Path, pki: DevPKI) -> None:
    path = local_copy(tmp_path, pki)
    lines = path.read_text(encoding="utf-8").splitlines()
    for section in (";[authorizer:listed]", ";[authorizer:central]"):
        start = lines.index(section)
        lines[start] = lines[start][1:]
        end = start + 1
        while end < len(lines) and re.match(r";[a-z_]+ = ", lines[end]):
            lines[end] = lines[end][1:]
            end += 1
    (path.parent / "allow.txt").write_text("# nobody yet\n", encoding="utf-8")
    text = set_value("\n".join(lines), "authorize", "authorizers", "team, listed, central")
    path.write_text(text, encoding="utf-8")
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "(policy any: team, listed, central)" in result.stdout
