"""``pair add brainflow``: the record it builds, and what it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import serial
from click.testing import CliRunner
from serial.tools import list_ports
from serial.tools.list_ports_linux import SysFS

from edgetwin.cli.common import AppContext
from edgetwin.cli.pair_brainflow import (
    brainflow_add,
    build_brainflow_record,
    default_name,
    scan_dongles,
)
from edgetwin.errors import DeviceNotFound, UsageError
from edgetwin.sources.brainflow import BrainFlowSource


def test_record_for_a_ble_board_round_trips_into_a_source() -> None:
    record = build_brainflow_record("muse_s_athena_board", mac_address="00:55:DA:B9:FA:20",
                                    other_info="p1035", timeout=10)
    assert record == {
        "kind": "brainflow",
        "board": "MUSE_S_ATHENA_BOARD",
        "params": {"mac_address": "00:55:DA:B9:FA:20", "other_info": "p1035", "timeout": 10},
    }
    assert default_name(record) == "muse_s_athena"
    source = BrainFlowSource.from_record("muse", record)
    assert source.board_id == 67
    assert source.params["timeout"] == 10


def test_playback_record_needs_master_and_an_existing_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "rec.csv"
    f.write_text("0\t1\n")
    monkeypatch.chdir(tmp_path)
    record = build_brainflow_record("PLAYBACK_FILE_BOARD", file="rec.csv",
                                    master_board="synthetic")
    assert record["params"] == {"file": str(f), "master_board": "SYNTHETIC_BOARD"}
    assert default_name(record) == "synthetic"
    with pytest.raises(UsageError, match="needs --master-board"):
        build_brainflow_record("PLAYBACK_FILE_BOARD", file=f)
    with pytest.raises(UsageError, match="needs --file"):
        build_brainflow_record("PLAYBACK_FILE_BOARD", master_board="SYNTHETIC_BOARD")
    with pytest.raises(DeviceNotFound, match="does not exist"):
        build_brainflow_record("PLAYBACK_FILE_BOARD", file=tmp_path / "nope.csv",
                               master_board="SYNTHETIC_BOARD")


def test_unknown_board_is_a_usage_error_with_did_you_mean() -> None:
    app = AppContext(home_option=None, passphrase_file=None, keyfile=None, as_json=False,
                     verbose=0)
    result = CliRunner().invoke(brainflow_add, ["--board", "CYTON_BORD"], obj=app)
    assert isinstance(result.exception, UsageError)
    assert result.exception.exit_code == 2
    assert "did you mean CYTON_BOARD" in str(result.exception)
    with pytest.raises(UsageError, match="unknown BrainFlow board 'MUSE_S_ATENA'"):
        build_brainflow_record("MUSE_S_ATENA", master_board=None)


def test_check_reports_brainflows_meaning_before_anything_is_saved() -> None:
    app = AppContext(home_option=None, passphrase_file=None, keyfile=None, as_json=False,
                     verbose=0)
    result = CliRunner().invoke(
        brainflow_add,
        ["--board", "CYTON_BOARD", "--serial-port", "/dev/edgetwin-no-such-port", "--check"],
        obj=app,
    )
    assert isinstance(result.exception, DeviceNotFound)
    assert "UNABLE_TO_OPEN_PORT_ERROR" in str(result.exception)


def _pty_port(vid: int | None, pid: int | None, serial_number: str | None = None) -> tuple[
        SysFS, int, int]:
    """pyserial's own port record for a real pseudo-terminal, with the USB ids a dongle's
    FTDI/BLED112 chip reports through sysfs (a pty has none; radios are not on CI)."""
    master, slave = os.openpty()
    port = SysFS(os.ttyname(slave))
    assert port.vid is None  # sysfs gives a pty no USB id: the test sets the dongle's
    port.vid, port.pid, port.serial_number = vid, pid, serial_number
    return port, master, slave


def test_scan_dongles_finds_the_openbci_dongle_among_real_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = scan_dongles()  # this machine's ports go through the same filter without error
    assert all(d["kind"] == "brainflow" for d in real)
    dongle, m1, s1 = _pty_port(0x0403, 0x6015, "DM00ABCD")
    other_usb, m2, s2 = _pty_port(0x1A86, 0x7523)  # a CH340 Arduino: not a BrainFlow dongle
    plain, m3, s3 = _pty_port(None, None)
    try:
        monkeypatch.setattr(list_ports, "comports", lambda: [plain, other_usb, dongle])
        found = scan_dongles()
        assert found == [{
            "kind": "brainflow",
            "port": dongle.device,
            "usb_id": "0403:6015",
            "description": "FTDI FT231X: the OpenBCI USB dongle",
            "boards": ["CYTON_BOARD", "CYTON_DAISY_BOARD"],
            "serial_number": "DM00ABCD",
        }]
        # The port it names is a real device that opens as a serial port.
        with serial.Serial(found[0]["port"], 115200, timeout=0.2) as ser:
            ser.write(b"v")
            assert os.read(m1, 1) == b"v"
    finally:
        for fd in (m1, s1, m2, s2, m3, s3):
            os.close(fd)
