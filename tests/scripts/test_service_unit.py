"""The systemd unit keeps its hardening: a regression here would widen the daemon's reach."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripts import load_script

UNIT = Path(__file__).resolve().parents[2] / "scripts" / "edgetwin.service"


def _service(which: str = "Service") -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == which:
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _seconds(span: str) -> float:
    """A systemd time span, read as the soak reads the unit's RestartSec."""
    seconds: float = load_script("bench_soak").systemd_seconds(span)
    return seconds


def test_a_crash_is_restarted_at_once_and_a_crash_loop_stops() -> None:
    """Sensors keep sending while the daemon is down: the restart after a crash or an OOM
    kill must come well inside the 2 s a SIGKILL may cost (the soak restarts after this very
    delay); a loop of crashes must not restart forever."""
    svc, unit = _service(), _service("Unit")
    assert svc["Restart"] == ["on-failure"]  # SIGKILL and a crash count; a clean stop does not
    assert _seconds(svc["RestartSec"][0]) <= 0.5
    burst, interval = int(unit["StartLimitBurst"][0]), _seconds(unit["StartLimitIntervalSec"][0])
    # quick restarts of a crash at start-up (~1 s each) fill the burst inside the interval
    assert interval > burst * (1.0 + _seconds(svc["RestartSec"][0]))


def test_runs_as_a_dedicated_unprivileged_user() -> None:
    svc = _service()
    assert svc["User"] == ["edgetwin"]
    assert svc["NoNewPrivileges"] == ["yes"]
    assert svc["CapabilityBoundingSet"] == [""]
    assert svc["UMask"] == ["0077"]


def test_file_system_is_read_only_but_for_the_twin_home() -> None:
    svc = _service()
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["PrivateTmp"] == ["yes"]
    assert svc["ProtectHome"] == ["yes"]
    assert svc["ReadWritePaths"] == ["/var/lib/edgetwin"]
    assert svc["Environment"][0] == "EDGETWIN_HOME=/var/lib/edgetwin"


def test_device_access_is_only_usb_serial() -> None:
    svc = _service()
    assert svc["DevicePolicy"] == ["closed"]
    assert sorted(svc["DeviceAllow"]) == ["char-ttyACM rw", "char-ttyUSB rw"]


def test_key_comes_from_an_encrypted_credential_not_a_file() -> None:
    svc = _service()
    assert svc["LoadCredentialEncrypted"] == ["edgetwin-key"]
    assert "EDGETWIN_KEYFILE=%d/edgetwin-key" in svc["Environment"]
    assert svc["KillSignal"] == ["SIGTERM"]  # orderly shutdown flushes the store


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    assert "Unknown key" not in result.stderr


def test_groups_give_serial_and_bluez_access_only() -> None:
    assert _service()["SupplementaryGroups"] == ["dialout bluetooth"]


def test_udev_rules_give_bridges_to_dialout_with_stable_names() -> None:
    rules = (UNIT.parent / "99-edgetwin-bridges.rules").read_text().splitlines()
    active = [r for r in rules if r.strip() and not r.startswith("#")]
    assert len(active) >= 5
    for rule in active:
        assert 'SUBSYSTEM=="tty"' in rule
        assert 'MODE="0660"' in rule
        assert 'GROUP="dialout"' in rule
        assert 'SYMLINK+="edgetwin/' in rule
