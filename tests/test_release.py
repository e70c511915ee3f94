"""The release: ``python -m build`` makes an sdist and a wheel with complete metadata that
``twine check`` accepts (what scripts/release runs), and the wheel, installed into a fresh
virtual environment, runs: ``mtlsgw --version``, ``twistd mtlsgw --version`` and ``--help``, and
``mtlsgw check-config etc/gw.ini`` (its /etc/mtlsgw/ files pointed at a development PKI)."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from test_example_config import local_copy

from gateway import __version__
from gateway.pki import write_dev_pki

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def wheel(dist: Path) -> Path:
    (found,) = dist.glob(f"mtlsgw-{__version__}-py3-none-any.whl")
    return found


def test_release_script_builds_and_checks() -> None:
    script = (ROOT / "scripts" / "release").read_text()
    assert "-m build --outdir dist" in script and "twine\" check --strict dist/*" in script


def test_twine_check_passes(dist: Path) -> None:
    checked = run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2


def test_metadata_is_complete(dist: Path) -> None:
    with zipfile.ZipFile(wheel(dist)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(name))
        names = archive.namelist()
    assert metadata["Name"] == "mtlsgw" and metadata["Version"] == __version__
    assert metadata["License"] == "MIT" or metadata["License-Expression"] == "MIT"
    assert any(n.endswith("licenses/LICENSE") for n in names)
    classifiers = metadata.get_all("Classifier") or []
    assert "Framework :: Twisted" in classifiers
    assert "Topic :: Internet :: Proxy Servers" in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Documentation", "Source", "Changelog", "Issues"} <= set(urls)
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "# mtlsgw" in metadata.get_payload()  # the README as the long description
    assert metadata["Requires-Python"] == ">=3.11"
    assert "twisted/plugins/mtlsgw_plugin.py" in names  # twistd finds the plugin
    assert not [n for n in names if n.endswith("dropin.cache")]


def test_sdist_holds_docs_and_examples(dist: Path) -> None:
    (sdist,) = dist.glob(f"mtlsgw-{__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for expected in ("README.md", "CHANGELOG.md", "LICENSE", "etc/gw.ini",
                     "etc/mtlsgw.service", "docs/install.md", "deploy/Containerfile",
                     "deploy/kubernetes/deployment.yaml", "gateway/__init__.py"):
        assert expected in names, expected
    assert not [n for n in names if "node_modules" in n]


def test_changelog_has_an_entry_for_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"(?m)^## {re.escape(__version__)}\b", text), (
        f"CHANGELOG.md has no '## {__version__}' section")


def test_wheel_runs_from_a_fresh_environment(dist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    installed = run(bin_dir / "pip", "install", "-q", wheel(dist))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"  # not the source tree: only the installed files count
    elsewhere.mkdir()

    version = run(bin_dir / "mtlsgw", "--version", cwd=elsewhere)
    assert version.returncode == 0 and version.stdout.strip() == f"mtlsgw {__version__}"
    version = run(bin_dir / "twistd", "mtlsgw", "--version", cwd=elsewhere)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"mtlsgw {__version__} (Twisted "), version.stdout
    helped = run(bin_dir / "twistd", "mtlsgw", "--help", cwd=elsewhere)
    assert helped.returncode == 0, helped.stderr
    assert "--config" in helped.stdout and "Mutual-TLS gateway" in helped.stdout

    config = local_copy(tmp_path, write_dev_pki(tmp_path / "pki"))  # etc/gw.ini, local files
    checked = run(bin_dir / "mtlsgw", "check-config", config, cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: OK")
