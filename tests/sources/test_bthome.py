"""BTHomeSource through bleak's real BlueZ backend, against the emulated BlueZ's adverts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgetwin.errors import PairingRefused
from edgetwin.sources.bthome import BTHomeSource, parse_bind_key, shared_scanner
from edgetwin.types import SampleBatch
from tests.sources import ble_harness
from tests.sources.ble_harness import collect
from tests.sources.bluez_emulator import (
    BTHOME_V2_UUID,
    BlueZEmulator,
    BTHomeSensor,
    EmulatorProcess,
    bthome_objects,
    encode_bthome_v2,
)

pytestmark = pytest.mark.timeout(120)

private_bus = ble_harness.private_bus
bluez = ble_harness.bluez

KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"
KEY = bytes.fromhex(KEY_HEX)
PLAIN = "A4:C1:38:00:00:01"
SEALED = "A4:C1:38:00:00:02"


def values(batches: list[SampleBatch]) -> list[dict[str, float]]:
    return [dict(zip(b.channels, (float(v) for v in b.values[i]), strict=True))
            for b in batches for i in range(len(b))]


def n_rows(batches: list[SampleBatch]) -> int:
    return sum(len(b) for b in batches)


async def test_plain_bthome_decoded_with_battery_and_rssi(bluez: BlueZEmulator) -> None:
    bluez.add(BTHomeSensor(PLAIN, "ATC_0001", celsius=22.37, humidity=51.2, hpa=1008.4,
                           co2=640, rate_hz=2))
    src = BTHomeSource("bedroom", PLAIN)
    await src.connect()
    try:
        got = await collect(src, lambda b: n_rows(b) >= 3)
    finally:
        await src.close()
    assert {b.stream for b in got} == {"bedroom.climate"}
    assert got[0].channels == ("temp", "humidity", "pressure", "co2", "battery", "rssi")
    for row in values(got):
        assert row["temp"] == pytest.approx(22.37)
        assert row["humidity"] == pytest.approx(51.2)
        assert row["pressure"] == pytest.approx(1008.4)
        assert row["co2"] == 640
        assert row["battery"] == 87
        assert -95 <= row["rssi"] <= -35
    d = src.describe()
    assert d["scan_mode"] in ("passive", "active") and d["battery"] == 87
    # BlueZ re-reports the same advert on every RSSI change: those repeats were dropped
    assert d["dropped"].get("duplicate", 0) > 0
    assert d["device"] == "ATC_0001"


async def test_encrypted_bthome_decoded_with_the_bind_key(bluez: BlueZEmulator) -> None:
    bluez.add(BTHomeSensor(SEALED, celsius=-4.5, humidity=80.0, bind_key=KEY, rate_hz=5))
    src = BTHomeSource.from_record("porch", {"kind": "bthome", "address": SEALED,
                                            "bind_key": KEY_HEX})
    await src.connect()
    try:
        got = await collect(src, lambda b: n_rows(b) >= 2)
    finally:
        await src.close()
    assert got[0].channels == ("temp", "humidity", "battery", "rssi")
    assert all(r["temp"] == pytest.approx(-4.5) and r["humidity"] == 80.0 for r in values(got))
    assert KEY_HEX not in repr(src) and KEY_HEX not in str(src.describe())


async def test_wrong_bind_key_is_refused_naming_the_device(
    bluez: BlueZEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bluez.add(BTHomeSensor(SEALED, bind_key=KEY, rate_hz=5))
    wrong = "00" * 16
    src = BTHomeSource.from_record("porch", {"kind": "bthome", "address": SEALED,
                                            "bind_key": wrong})
    await src.connect()
    got: list[SampleBatch] = []
    try:
        with pytest.raises(PairingRefused, match=f"{SEALED} \\(porch\\).*cannot decrypt"):
            await collect(src, lambda b: got.extend(b) or False, within=15)
    finally:
        await src.close()
    assert got == []  # no garbage values
    assert SEALED in (src.describe()["error"] or "")
    # neither key reaches the logs
    assert KEY_HEX not in caplog.text and wrong not in caplog.text


async def test_encrypted_adverts_without_a_key_are_refused(bluez: BlueZEmulator) -> None:
    bluez.add(BTHomeSensor(SEALED, bind_key=KEY, rate_hz=5))
    src = BTHomeSource("porch", SEALED)
    await src.connect()
    try:
        with pytest.raises(PairingRefused, match="without a bind key"):
            await collect(src, lambda b: False, within=15)
    finally:
        await src.close()


async def test_replayed_packet_ids_and_counters_are_dropped(bluez: BlueZEmulator) -> None:
    plain = bluez.add(BTHomeSensor(PLAIN, celsius=20.0, rate_hz=2))
    sealed = bluez.add(BTHomeSensor(SEALED, celsius=30.0, bind_key=KEY, rate_hz=2))
    assert isinstance(plain, BTHomeSensor) and isinstance(sealed, BTHomeSensor)
    a = BTHomeSource("a", PLAIN)
    b = BTHomeSource("b", SEALED, bind_key=KEY)
    await a.connect()
    await b.connect()
    try:
        await collect(a, lambda got: n_rows(got) >= 2)
        await collect(b, lambda got: n_rows(got) >= 2)
        # an attacker (or a proxy) replays an old packet, with different values, same id
        old_pid = plain.packet_id
        replay = encode_bthome_v2(bthome_objects(packet_id=old_pid, celsius=99.0))
        bluez.set_service_data(PLAIN, {BTHOME_V2_UUID: replay})
        older = encode_bthome_v2(bthome_objects(packet_id=(old_pid - 3) % 256, celsius=98.0))
        bluez.set_service_data(PLAIN, {BTHOME_V2_UUID: older})
        bluez.set_service_data(SEALED, {BTHOME_V2_UUID: sealed.adverts[0]})
        got_a = await collect(a, lambda got: n_rows(got) >= 2)
        got_b = await collect(b, lambda got: n_rows(got) >= 2)
    finally:
        await a.close()
        await b.close()
    assert all(r["temp"] == 20.0 for r in values(got_a))
    assert all(r["temp"] == 30.0 for r in values(got_b))
    assert a.describe()["dropped"]["replayed_packet_id"] >= 2
    assert b.describe()["dropped"]["replayed_counter"] >= 1


async def test_twenty_devices_through_one_scanner(bluez: BlueZEmulator) -> None:
    addresses = [f"A4:C1:38:00:01:{i:02X}" for i in range(20)]
    for i, addr in enumerate(addresses):
        bluez.add(BTHomeSensor(addr, f"T{i}", celsius=15.0 + i, rate_hz=2,
                               bind_key=KEY if i % 2 else None, seed=i))
    sources = [BTHomeSource(f"room{i}", addr, bind_key=KEY if i % 2 else None)
               for i, addr in enumerate(addresses)]
    for src in sources:
        await src.connect()
    try:
        assert bluez.stats["start_discovery"] == 1  # one discovery session for all 20
        results = await asyncio.gather(*(collect(s, lambda b: n_rows(b) >= 2, within=40)
                                         for s in sources))
    finally:
        for src in sources:
            await src.close()
    for i, got in enumerate(results):
        assert {r["temp"] for r in values(got)} == {15.0 + i}
        assert {b.stream for b in got} == {f"room{i}.climate"}
    assert not bluez.adapter.discovering  # the last source out stopped the scanner


async def test_device_vanishing_and_reappearing(bluez: BlueZEmulator) -> None:
    sensor = bluez.add(BTHomeSensor(PLAIN, celsius=19.0, rate_hz=5))
    src = BTHomeSource("hall", PLAIN)
    await src.connect()
    try:
        await collect(src, lambda b: n_rows(b) >= 2)
        bluez.vanish(PLAIN)
        with contextlib.suppress(TimeoutError):  # adverts already on their way
            await collect(src, lambda b: False, within=0.5)
        quiet: list[SampleBatch] = []
        with contextlib.suppress(TimeoutError):
            await collect(src, lambda b: quiet.extend(b) or False, within=1.5)
        assert quiet == []
        assert isinstance(sensor, BTHomeSensor)
        sensor.celsius = 24.0
        bluez.appear(PLAIN)
        back = await collect(src, lambda b: any(r["temp"] == 24.0 for r in values(b)))
    finally:
        await src.close()
    assert values(back)[-1]["temp"] == 24.0
    assert shared_scanner().mode is None or not bluez.adapter.discovering


def test_bind_key_validation_is_precise() -> None:
    with pytest.raises(ValueError, match=r"32 hex characters.*has 30"):
        parse_bind_key(KEY_HEX[:30])
    with pytest.raises(ValueError, match="character 5 is not"):
        parse_bind_key(KEY_HEX[:4] + "zz" + KEY_HEX[6:])
    assert parse_bind_key(KEY_HEX.upper()) == KEY


# -- end to end: the real CLI and daemon as processes, the emulator in its own process --------

EXE = [sys.executable, "-m", "edgetwin"]
WRONG_KEY_HEX = "0f" * 16
OTHER = "A4:C1:38:00:00:03"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def ok(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run(env, *args)
    assert result.returncode == 0, f"edgetwin {' '.join(args)}: {result.stderr}"
    return result


def key_forms(key_hex: str) -> list[bytes]:
    raw = bytes.fromhex(key_hex)
    return [key_hex.encode(), key_hex.upper().encode(), raw, base64.b64encode(raw)]


def test_pair_bthome_cli_daemon_and_the_key_never_in_clear(private_bus, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("bthome e2e passphrase\n")
    pw.chmod(0o600)
    home = tmp_path / "home"
    env = {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw),
           "EDGETWIN_KDF_PROFILE": "test", "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address}
    devices = [f"bthome:{PLAIN}:ATC_PLAIN", f"bthome:{SEALED}:ATC_SEALED",
               f"bthome:{OTHER}:ATC_OTHER"]
    keys = {SEALED: KEY_HEX, OTHER: KEY_HEX}
    with EmulatorProcess(private_bus.address, devices, rate_hz=2.0, bthome_keys=keys):
        ok(env, "init")
        scan = json.loads(ok(env, "pair", "scan", "--timeout", "1", "--no-ble", "--json").stdout)
        assert not [d for d in scan["devices"] if d["transport"] == "ble"]
        scan = json.loads(ok(env, "pair", "scan", "--timeout", "1.5", "--json").stdout)
        found = {d["address"]: d for d in scan["devices"] if d["transport"] == "ble"}
        assert found[PLAIN]["profiles"] == ["bthome"]
        assert found[PLAIN]["measures"] == ["temp", "humidity", "battery"]
        assert found[SEALED]["encrypted"] is True and found[SEALED]["measures"] == []
        table = ok(env, "pair", "scan", "--timeout", "1.5").stdout
        (plain_row,) = [line for line in table.splitlines() if PLAIN in line]
        assert "bthome: temp, humidity, battery" in plain_row
        assert f"edgetwin pair add ble {PLAIN} --profile bthome" in plain_row
        (sealed_row,) = [line for line in table.splitlines() if SEALED in line]
        assert "encrypted: needs --bind-key" in sealed_row

        # validation through the real CLI: exit 2, what is wrong, nothing stored
        short = run(env, "pair", "add", "ble", SEALED, "--profile", "bthome",
                    "--bind-key", KEY_HEX[:31])
        assert short.returncode == 2
        assert "--bind-key: a BTHome bind key is 32 hex characters" in short.stderr
        assert "has 31" in short.stderr and KEY_HEX[:31] not in short.stderr
        nonhex = run(env, "pair", "add", "ble", SEALED, "--profile", "bthome",
                     "--bind-key", "g" + KEY_HEX[1:])
        assert nonhex.returncode == 2 and "character 1 is not" in nonhex.stderr
        wrong_profile = run(env, "pair", "add", "ble", SEALED, "--profile", "heart_rate",
                            "--bind-key", KEY_HEX)
        assert wrong_profile.returncode == 2
        assert "--bind-key is for --profile bthome" in wrong_profile.stderr
        assert json.loads(ok(env, "pair", "list", "--json").stdout) == []

        added = ok(env, "pair", "add", "ble", SEALED, "--profile", "bthome",
                   "--bind-key", KEY_HEX, "--name", "porch")
        assert "porch.climate" in added.stdout and KEY_HEX not in added.stdout
        ok(env, "pair", "add", "ble", PLAIN, "--profile", "bthome", "--name", "bedroom")
        listed = {r["name"]: r for r in json.loads(ok(env, "pair", "list", "--json").stdout)}
        assert listed["porch"]["profile"] == "bthome"
        assert listed["porch"]["bind_key"] == "(hidden)" and "bind_key" not in listed["bedroom"]
        listings = ok(env, "pair", "list").stdout + json.dumps(listed)
        ok(env, "pair", "add", "ble", OTHER, "--profile", "bthome", "--bind-key",
           WRONG_KEY_HEX, "--name", "attic")

        (home / "config.toml").write_text(
            "[twin]\nstep_s = 2.0\n[daemon]\nflush_interval_s = 0.2\n"
            "backoff_initial_s = 0.5\nbackoff_max_s = 1.0\n")
        log = tmp_path / "daemon.log"
        with log.open("w") as err:
            daemon = subprocess.Popen([*EXE, "-v", "daemon", "run", "--duration", "60"],
                                      env=env, stderr=err, stdout=err)
        try:
            status = wait_sources(env, lambda s: s["porch"]["samples"] >= 3
                                  and s["bedroom"]["samples"] >= 3
                                  and bool(s["attic"]["last_error"]))
            status_text = json.dumps(status)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=30)

    by_name = {s["name"]: s for s in status["sources"]}
    assert by_name["porch"]["encrypted"] is True and by_name["porch"]["battery"] == 87
    # this emulated BlueZ has no advertisement monitors: active, and status says why
    assert by_name["porch"]["scan_mode"] == "active"
    assert "passive scanning unavailable" in by_name["porch"]["scan_note"]
    assert by_name["attic"]["samples"] == 0
    assert OTHER in by_name["attic"]["last_error"]
    assert "cannot decrypt" in by_name["attic"]["last_error"]
    streams = {s["name"] for s in status["store"]["streams"]}
    assert {"porch.climate", "bedroom.climate"} <= streams and "attic.climate" not in streams
    logs = log.read_text()
    assert "attic" in logs  # the daemon did log, with the devices' names
    for key_hex in (KEY_HEX, WRONG_KEY_HEX):
        for form in key_forms(key_hex):
            assert form.decode("latin-1") not in status_text
            assert form.decode("latin-1") not in logs
            assert form.decode("latin-1") not in listings
            for path in home.rglob("*"):
                if path.is_file():
                    assert form not in path.read_bytes(), f"{path} holds the bind key"


def wait_sources(env: dict[str, str], until: Callable[[dict[str, Any]], bool],
                 within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = run(env, "status", "--json")
        if result.returncode == 0:
            last = json.loads(result.stdout)
            by_name = {s["name"]: s for s in last.get("sources", [])}
            if len(by_name) == 3 and until(by_name):
                return last
        time.sleep(0.3)
    raise AssertionError(f"status never got there; last: {last}")


async def test_passive_scan_where_bluez_has_advertisement_monitors(
    private_bus: ble_harness.PrivateBus,
) -> None:
    emu = await BlueZEmulator(private_bus.address, advertisement_monitor=True).start()
    try:
        emu.add(BTHomeSensor(PLAIN, celsius=18.25, rate_hz=5))
        src = BTHomeSource("cellar", PLAIN)
        await src.connect()
        try:
            got = await collect(src, lambda b: n_rows(b) >= 2)
            assert emu.stats["register_monitor"] == 1
            assert emu.stats["start_discovery"] == 0 and not emu.adapter.discovering
        finally:
            await src.close()
        assert all(r["temp"] == 18.25 for r in values(got))
        assert src.describe()["scan_mode"] == "passive" and src.describe()["scan_note"] == ""
        assert emu.monitor_manager is not None and not emu.monitor_manager.monitors
    finally:
        await ble_harness.release_bleak()
        await emu.stop()


def test_bthome_v1_adverts_decode() -> None:
    from edgetwin.sources.bthome import Advert, BTHomeDecoder

    # v1 (UUID 0x181C): control byte (length | format << 5), object id, value
    raw = bytes([0x23, 0x02]) + (2150).to_bytes(2, "little", signed=True) + bytes(
        [0x03, 0x03]) + (5000).to_bytes(2, "little")
    decoder = BTHomeDecoder(PLAIN, None)
    reading = decoder.decode(Advert(0.0, PLAIN, "v1", -50,
                                    {"0000181c-0000-1000-8000-00805f9b34fb": raw}))
    assert reading is not None
    assert reading.values == {"temp": 21.5, "humidity": 50.0}


def test_without_the_bthome_extra_a_pairing_says_which_extra_and_a_scan_still_lists_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from edgetwin.errors import DriverMissing
    from edgetwin.sources.bthome import BTHOME_V2_UUID, BTHomeDecoder, decode_for_scan

    monkeypatch.setitem(sys.modules, "bthome_ble", None)  # as if not installed
    with pytest.raises(DriverMissing) as err:
        BTHomeDecoder("A4:C1:38:00:00:01", None)
    assert err.value.hint == "pip install 'edgetwin[bthome]'"
    found = decode_for_scan({BTHOME_V2_UUID: bytes([0x40, 0x02, 0xCA, 0x09])})
    assert found is not None and found["measures"] == [] and "edgetwin[bthome]" in found["note"]
