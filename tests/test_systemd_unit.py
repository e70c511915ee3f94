"""etc/mtlsgw.service is a unit systemd accepts, and runs what the docs say it runs.

``systemd-analyze verify`` refuses a unit whose Exec*= programs do not exist, so the test copies
the unit and points its /opt/mtlsgw/bin/ programs at this interpreter's virtualenv (twistd and
python sit next to ``sys.executable``). ``User=mtlsgw`` is kept as it is: verify does not look
users up (they only have to exist when the service starts).

verify exits 0 even for unknown keys and unparsable values (it only warns), so the test also
requires that no output line mentions the unit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "etc" / "mtlsgw.service"
INSTALLED_BIN = "/opt/mtlsgw/bin/"


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines (comments skipped), all values of each key in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_runs_twistd_as_documented() -> None:
    unit = directives(UNIT.read_text(encoding="utf-8"))
    assert unit["ExecStart"] == [
        "/opt/mtlsgw/bin/twistd --nodaemon --pidfile= --reactor=mtlsgw mtlsgw "
        "--config /etc/mtlsgw/gw.ini"]
    assert unit["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert unit["Restart"] == ["on-failure"]
    # sd_notify(3) from the main process (gateway/notify.py), watchdog pinged by the reactor.
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["User"] == ["mtlsgw"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    # pyOpenSSL's verify callback needs W+X memory from cffi (see the comment in the unit).
    assert "MemoryDenyWriteExecute" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    twistd = bin_dir / "twistd"
    assert twistd.exists(), f"Twisted's twistd script is missing next to {sys.executable}"
    text = UNIT.read_text(encoding="utf-8")
    assert f"{INSTALLED_BIN}twistd " in text
    # Every program the unit runs from the install location must exist in this virtualenv too.
    local = text.replace(INSTALLED_BIN, f"{bin_dir}/")
    unit = tmp_path / "mtlsgw.service"
    unit.write_text(local, encoding="utf-8")

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if "mtlsgw.service" in line]
    assert result.returncode == 0, output
    assert complaints == [], output
