"""``edgetwin pair add serial``: the record, the stable path, the probe over a real pty."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgetwin.cli.pair_serial import (
    build_serial_record,
    default_serial_name,
    serial_stream_name,
    stable_port_path,
)
from edgetwin.emulators.bridge import BridgeEmulator
from edgetwin.errors import UsageError
from edgetwin.sources.serial import SerialSource


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[BridgeEmulator]:
    emu = BridgeEmulator(seed=21, rate_hz=10.0, link_dir=tmp_path, autostart=False)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def test_record_round_trips_into_the_source() -> None:
    record = build_serial_record("/dev/ttyACM0", 921600, {"model": "m", "device_id": "d"})
    assert record == {"kind": "serial", "port": "/dev/ttyACM0", "baud": 921600,
                      "model": "m", "device_id": "d"}
    src = SerialSource.from_record("rig", record)
    assert (src.port, src.baud) == ("/dev/ttyACM0", 921600)
    assert build_serial_record("socket://127.0.0.1:7000")["baud"] == 115200


@pytest.mark.parametrize(("port", "baud"), [("", 115200), ("ttyACM0", 115200),
                                            ("http://x", 115200), ("/dev/ttyACM0", 0),
                                            ("/dev/ttyACM0", 10**9)])
def test_bad_port_or_baud_is_a_usage_error(port: str, baud: int) -> None:
    with pytest.raises(UsageError):
        build_serial_record(port, baud)


def test_stable_path_prefers_the_by_id_alias(tmp_path: Path) -> None:
    dev = tmp_path / "ttyACM0"
    dev.touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-edgetwin_probe-if00").symlink_to(dev)
    assert stable_port_path(str(dev), by_id) == str(by_id / "usb-edgetwin_probe-if00")
    assert stable_port_path(str(tmp_path / "other"), by_id) == str(tmp_path / "other")
    assert stable_port_path("socket://h:1", by_id) == "socket://h:1"
    assert stable_port_path(str(dev), tmp_path / "missing") == str(dev)


def test_default_names_and_stream_name() -> None:
    assert default_serial_name() == "bridge"
    assert default_serial_name({"bridge", "bridge-2"}) == "bridge-3"
    assert serial_stream_name("head", ["fnirs_s1_d1_760", "fnirs_s1_d1_850"]) == "head.fnirs"
    assert serial_stream_name("rig", ["ppg", "eda"]) == "rig.bridge"


def test_pair_add_serial_probes_the_device_and_stores_the_record(
    emulator: BridgeEmulator, run_cli: Any
) -> None:
    assert run_cli("init").exit_code == 0
    result = run_cli("pair", "add", "serial", emulator.path, "--baud", "230400")
    assert result.exit_code == 0, result.output
    assert "bridge.fnirs" in result.output
    again = run_cli("pair", "add", "serial", emulator.path)
    assert again.exit_code == 0, again.output
    assert "bridge-2.fnirs" in again.output  # "bridge" is taken
    listed = {r["name"]: r for r in json.loads(run_cli("pair", "list", "--json").output)}
    record = listed["bridge"]
    assert record["kind"] == "serial"
    assert record["port"] == emulator.path
    assert record["baud"] == 230400
    assert record["model"] == "edgetwin-emulator-fnirs"
    src = SerialSource.from_record("bridge", record)
    assert (src.port, src.baud) == (emulator.path, 230400)


def test_pair_add_serial_refuses_a_silent_port_unless_no_probe(run_cli: Any) -> None:
    assert run_cli("init").exit_code == 0
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        refused = run_cli("pair", "add", "serial", path, "--timeout", "0.2", "--name", "head")
        assert refused.exit_code == 6
        assert "--no-probe" in refused.output
        assert json.loads(run_cli("pair", "list", "--json").output) == []
        result = run_cli("pair", "add", "serial", path, "--no-probe", "--name", "head")
        assert result.exit_code == 0, result.output
        listed = json.loads(run_cli("pair", "list", "--json").output)
        assert [(r["name"], r["port"], r["baud"]) for r in listed] == [("head", path, 115200)]
    finally:
        os.close(master)
        os.close(slave)


def test_pair_scan_marks_the_bridge(
    emulator: BridgeEmulator, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serial.tools import list_ports, list_ports_common

    usb = list_ports_common.ListPortInfo(emulator.path, skip_link_detection=True)
    usb.vid, usb.pid = 0x2E8A, 0x000A
    # The outermost edge: this machine has no USB serial devices to enumerate.
    monkeypatch.setattr(list_ports, "comports", lambda: [usb])
    result = run_cli("pair", "scan", "--no-ble", "--json")
    assert result.exit_code == 0, result.output
    serial_devices = [d for d in json.loads(result.output)["devices"]
                      if d["transport"] == "serial"]
    assert serial_devices[0]["vid_pid"] == "2e8a:000a"
    assert serial_devices[0]["bridge"]["model"] == "edgetwin-emulator-fnirs"
