"""``pair add brainflow``: the record it builds, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

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


def test_scan_dongles_lists_real_ports_without_crashing() -> None:
    found = scan_dongles()  # this machine's real serial ports (usually none match)
    assert all(d["kind"] == "brainflow" and d["port"] for d in found)
