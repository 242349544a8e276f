"""``edgetwin pair add serial``: the record, the stable path, the probe over a real pty."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from edgetwin.cli.common import AppContext
from edgetwin.cli.pair_serial import (
    build_serial_record,
    default_serial_name,
    serial_add,
    serial_stream_name,
    stable_port_path,
)
from edgetwin.errors import UsageError
from edgetwin.sources.bridge_emulator import BridgeEmulator
from edgetwin.sources.serial import SerialSource


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[BridgeEmulator]:
    emu = BridgeEmulator(seed=21, rate_hz=10.0, link_dir=tmp_path, autostart=False)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Stand-in for the lead's ``edgetwin.cli.pair`` storage: records what would be saved."""
    calls: list[tuple[str, dict[str, Any]]] = []
    module = types.ModuleType("edgetwin.cli.pair")

    def save_pairing(app: AppContext, name: str, record: dict[str, Any]) -> None:
        assert isinstance(app, AppContext)
        calls.append((name, record))

    module.save_pairing = save_pairing  # type: ignore[attr-defined]
    module.paired_names = lambda app: {"bridge"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edgetwin.cli.pair", module)
    return calls


def _invoke(*args: str) -> Any:
    @click.group()
    @click.pass_context
    def root(ctx: click.Context) -> None:
        ctx.obj = AppContext(None, None, None, False, 0)

    root.add_command(serial_add)
    return CliRunner().invoke(root, ["serial", *args], catch_exceptions=False)


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


def test_pair_add_serial_probes_the_device(
    emulator: BridgeEmulator, saved: list[tuple[str, dict[str, Any]]]
) -> None:
    result = _invoke(emulator.path, "--baud", "230400")
    assert result.exit_code == 0, result.output
    assert "bridge-2.fnirs" in result.output  # "bridge" is taken
    (name, record), = saved
    assert name == "bridge-2"
    assert record["port"] == emulator.path
    assert record["baud"] == 230400
    assert record["model"] == "edgetwin-emulator-fnirs"


def test_pair_add_serial_refuses_a_silent_port_unless_no_probe(
    saved: list[tuple[str, dict[str, Any]]]
) -> None:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        with pytest.raises(Exception) as info:  # DeviceNotFound; the root group maps it
            _invoke(path, "--timeout", "0.2", "--name", "head")
        assert type(info.value).__name__ == "DeviceNotFound"
        assert "--no-probe" in str(info.value)
        assert saved == []
        result = _invoke(path, "--no-probe", "--name", "head")
        assert result.exit_code == 0
        assert saved == [("head", {"kind": "serial", "port": path, "baud": 115200})]
    finally:
        os.close(master)
        os.close(slave)
