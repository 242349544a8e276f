"""End to end with real processes: scan -> pair -> daemon ingests the emulated strap -> drop ->
the daemon reconnects -> the gap is in the timeline and in status.

bleak runs unmodified inside ``edgetwin daemon run``; the emulated BlueZ runs in its own
process on a private dbus-daemon and is steered over D-Bus.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.sources import ble_harness
from tests.sources.bluez_emulator import EmulatorProcess, control

pytestmark = pytest.mark.timeout(180)

private_bus = ble_harness.private_bus
EXE = [sys.executable, "-m", "edgetwin"]
STRAP = "C0:FF:EE:00:00:01"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"edgetwin {' '.join(args)}: {result.stderr}"
    return result


def wait_status(env: dict[str, str], until: Callable[[dict[str, Any]], bool],
                within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = subprocess.run([*EXE, "status", "--json"], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        if result.returncode == 0:
            last = json.loads(result.stdout)
            if last["sources"] and until(last["sources"][0]):
                return last
        time.sleep(0.3)
    raise AssertionError(f"status never got there; last: {last}")


def test_pair_run_drop_reconnect_and_the_gap(private_bus, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("ble e2e passphrase\n")
    pw.chmod(0o600)
    env = {
        **os.environ,
        "EDGETWIN_HOME": str(tmp_path / "home"),
        "EDGETWIN_PASSPHRASE_FILE": str(pw),
        "EDGETWIN_KDF_PROFILE": "test",
        "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
    }
    # 120 bpm: enough beats within a few seconds for the 30 s RMSSD window's quality
    with EmulatorProcess(private_bus.address, [f"heart_rate:{STRAP}:Polar H10 E2E"],
                         rate_hz=1.0, bpm=120) as emu:
        cli(env, "init")
        scan = json.loads(cli(env, "pair", "scan", "--timeout", "1", "--json").stdout)
        (found,) = [d for d in scan["devices"] if d["transport"] == "ble"]
        assert (found["address"], found["name"], found["profiles"]) == (
            STRAP, "Polar H10 E2E", ["heart_rate"])

        added = cli(env, "pair", "add", "ble", STRAP, "--name", "chest")
        assert "chest.hr, chest.rr" in added.stdout
        (paired,) = json.loads(cli(env, "pair", "list", "--json").stdout)
        assert paired["name"] == "chest" and paired["profile"] == "heart_rate"
        assert paired["device"] == "Polar H10 E2E"

        (Path(env["EDGETWIN_HOME"]) / "config.toml").write_text(
            "[twin]\nstep_s = 2.0\n"
            "[daemon]\nflush_interval_s = 0.2\nbackoff_initial_s = 0.5\nbackoff_max_s = 1.0\n"
        )
        daemon = subprocess.Popen([*EXE, "daemon", "run", "--duration", "120"], env=env,
                                  stderr=subprocess.DEVNULL)
        try:
            # enough beats for RMSSD before the drop
            wait_status(env, lambda s: s["state"] == "streaming" and s["samples"] >= 60)
            # the strap drops and refuses to come back for a while (out of range)
            asyncio.run(control(emu.bus_address, "Refuse", STRAP, "org.bluez.Error.Failed"))
            dropped_at = time.time()
            asyncio.run(control(emu.bus_address, "DropLink", STRAP))
            during = wait_status(env, lambda s: s["failures"] >= 1 and s["state"] != "streaming")
            time.sleep(max(0.0, dropped_at + 6.0 - time.time()))
            asyncio.run(control(emu.bus_address, "Refuse", STRAP, ""))
            back_at = time.time()
            after = wait_status(
                env, lambda s: s["state"] == "streaming" and s["connects"] >= 2
                and s["last_sample_t"] is not None and s["last_sample_t"] > back_at + 3,
            )
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=30)
        stats = asyncio.run(control(emu.bus_address, "Stats", STRAP))

    assert stats["drops"] == 1 and stats["refused"] >= 1
    # status said what happened: a lost link, failed reconnects, then streaming again
    assert "lost" in during["sources"][0]["last_error"] or "refused" in str(
        during["sources"][0]["last_error"])
    src = after["sources"][0]
    assert src["kind"] == "ble" and src["profile"] == "heart_rate"
    assert src["gaps"] == 1
    gap = src["last_gap"]
    assert dropped_at - 1 < gap["from"] < dropped_at + 1
    assert gap["to"] > back_at
    assert src["bad_packets"] == 0 and src["battery"] == 87

    frames = json.loads(cli(env, "timeline", "--json").stdout)
    hr_at = [(f["t"], f["features"]["hr"]) for f in frames]
    before = [hr for t, hr in hr_at if t <= gap["from"]]
    inside = [hr for t, hr in hr_at if gap["from"] + 2 < t <= gap["to"]]
    later = [hr for t, hr in hr_at if t > gap["to"] + 2]
    assert before and later and inside
    assert all(hr is not None and 100 < hr < 140 for hr in before[-3:])
    assert all(hr is None for hr in inside)  # the gap is marked: missing, not invented
    assert any(hr is not None and 100 < hr < 140 for hr in later)
    assert any(f["features"]["rmssd"] is not None for f in frames if f["t"] <= gap["from"])
