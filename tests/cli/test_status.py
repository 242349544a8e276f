"""``edgetwin status`` tells the truth: wrong key exit 3, bad config exit 2, locked is locked."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetwin.cli.main import cli


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _invoke(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


@pytest.fixture
def wrong_passphrase(tmp_path: Path) -> Path:
    p = tmp_path / "wrong"
    p.write_text("not the passphrase\n")
    p.chmod(0o600)
    return p


def test_status_with_a_wrong_passphrase_exits_3_with_the_same_message_as_other_commands(
    run_cli, home: Path, wrong_passphrase: Path  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    status = _invoke(home, "--passphrase-file", str(wrong_passphrase), "status")
    timeline = _invoke(home, "--passphrase-file", str(wrong_passphrase), "timeline")
    assert status.exit_code == 3, status.output
    assert timeline.exit_code == 3
    assert status.stderr == timeline.stderr
    assert "nothing is paired" not in status.output and "none paired" not in status.output


def test_status_with_a_bad_config_exits_2_naming_the_key_and_the_file(
    run_cli, home: Path  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    (home / "config.toml").write_text("[privacy]\nperiod = 'week'\n")
    result = run_cli("status")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert str(home / "config.toml") in line and "privacy.period" in line


def test_every_command_reports_a_bad_config_with_the_same_line(
    run_cli, home: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    (home / "config.toml").write_text("[daemon]\nflush_intervall_s = 1\n")
    rec = tmp_path / "r.csv"
    rec.write_text("timestamp,hr\n1767225600,60\n")
    errors = {
        args[0]: run_cli(*args)
        for args in (("status",), ("sync", "budget"), ("consent", "list"),
                     ("ingest", str(rec), "--stream", "s"), ("daemon", "run", "--duration", "1"))
    }
    assert {r.exit_code for r in errors.values()} == {2}
    lines = {r.stderr for r in errors.values()}
    assert len(lines) == 1, lines
    (line,) = lines
    assert "daemon.flush_intervall_s" in line and str(home / "config.toml") in line


def test_status_without_a_key_says_the_store_is_locked_not_that_nothing_is_paired(
    run_cli, home: Path  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    assert run_cli("pair", "add", "simulator").exit_code == 0
    result = _invoke(home, "status")
    assert result.exit_code == 0, result.output
    assert "none paired" not in result.output
    assert "locked" in result.output and "--passphrase-file" in result.output
    unlocked = run_cli("status")
    assert unlocked.exit_code == 0
    assert "simulator" in unlocked.output


def test_status_shows_the_room_on_the_twins_disk_even_locked(
    run_cli, home: Path  # type: ignore[no-untyped-def]
) -> None:
    import json
    import os

    assert run_cli("init").exit_code == 0
    (home / "config.toml").write_text("[retention]\nmin_free_mib = 2048\n")
    st = os.statvfs(home)
    doc = json.loads(_invoke(home, "status", "--json").output)  # no key: the store stays locked
    disk = doc["disk"]
    assert disk["total_bytes"] == st.f_blocks * st.f_frsize
    assert abs(disk["free_bytes"] - st.f_bavail * st.f_frsize) < 64 * 2**20
    assert disk["twin_db_bytes"] == (home / "twin.db").stat().st_size + (
        (home / "twin.db-wal").stat().st_size if (home / "twin.db-wal").exists() else 0)
    assert disk["min_free_bytes"] == 2048 * 2**20
    assert disk["twin_db_free_bytes"] == 0  # a new twin's file has no free pages yet
    text = _invoke(home, "status").output
    assert "below 2.0 GiB free the oldest raw days go (retention.min_free_mib)" in text
    (home / "config.toml").write_text("[retention]\nmin_free_mib = 0\n")
    assert "no room floor (retention.min_free_mib = 0)" in _invoke(home, "status").output
