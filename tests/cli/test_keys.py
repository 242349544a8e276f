"""CLI: init, keys, forget, audit and verify, through click's runner against real twins."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetwin.cli.main import cli
from edgetwin.config import default_config_text
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch

T0 = 1_699_923_600.0  # 2023-11-14 01:00:00Z
PASS = "correct horse battery staple"  # the root conftest's passphrase file


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def twin(run_cli, home: Path) -> Path:  # type: ignore[no-untyped-def]
    assert run_cli("init").exit_code == 0
    with TwinStore.open(home, Secret.passphrase(PASS)) as s:
        for name in ("hr", "eda"):
            t = T0 + np.arange(7200.0)
            s.append_samples(SampleBatch.build(name, [name], t, np.ones((7200, 1))))
        s.commit()
        s.put_record("pairing", "strap", {"address": "AA:BB"})
    return home


def test_init_creates_a_private_home_with_config(run_cli, home: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("init", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["slots"] == ["passphrase"] and info["kdf"]["name"] == "argon2id"
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "config.toml").read_text() == default_config_text()
    for name in ("twin.db", "keystore.json", "config.toml"):
        assert (home / name).stat().st_mode & 0o077 == 0
    again = run_cli("init")
    assert again.exit_code == 2 and "already exists" in again.output


def test_init_prompts_twice_for_a_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "h"
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(home), "init"], input="s3cret words\ns3cret words\n")
    assert result.exit_code == 0, result.output
    TwinStore.open(home, Secret.passphrase("s3cret words")).close()


def test_init_with_a_new_keyfile_then_unlock_with_it(tmp_path: Path) -> None:
    home, key = tmp_path / "h", tmp_path / "media" / "twin.key"
    key.parent.mkdir()
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(home), "init", "--keyfile-new", str(key)])
    assert result.exit_code == 0, result.output
    assert key.stat().st_mode & 0o777 == 0o600
    args = ["--home", str(home), "--keyfile", str(key), "keys", "info", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["slots"] == ["keyfile"]


def test_init_in_an_unusable_home_is_exit_2(tmp_path: Path, passphrase_file: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        cli, ["--home", str(blocker / "h"), "--passphrase-file", str(passphrase_file), "init"]
    )
    assert result.exit_code == 2 and "cannot use" in result.output


def test_wrong_passphrase_is_exit_3_and_audited(twin: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    bad.write_text("nope\n")
    bad.chmod(0o600)
    result = CliRunner().invoke(cli, ["--home", str(twin), "--passphrase-file", str(bad), "verify"])
    assert result.exit_code == 3
    assert "does not unlock" in result.output
    audit = json.loads(run_cli("audit", "--json").stdout)
    assert [e["event"] for e in audit["entries"]][-1] == "unlock_failed"


def test_no_twin_is_exit_2(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("verify")
    assert result.exit_code == 2 and "holds no twin" in result.output


def test_forget_stream_asks_first(twin: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("forget", "--stream", "hr")
    assert result.exit_code == 2 and "nothing was forgotten" in result.output
    result = run_cli("forget", "--stream", "hr", input="y\n")
    assert result.exit_code == 0, result.output
    assert "destroyed" in result.output
    with TwinStore.open(twin, Secret.passphrase(PASS)) as s:
        assert [i.name for i in s.streams()] == ["eda"]


def test_forget_before_and_all_json(twin: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("forget", "--before", "2023-11-14T02:00:00Z", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples_deleted"] == 2 * 3600
    result = run_cli("forget", "--all", "-y", "--json")
    report = json.loads(result.stdout)
    assert report["records_deleted"] == 1 and sorted(report["streams_removed"]) == ["eda", "hr"]
    assert run_cli("forget", "--before", "yesterday-ish", "-y").exit_code == 2
    assert run_cli("forget", "-y").exit_code == 2
    assert run_cli("forget", "--stream", "gone", "-y").exit_code == 2


def test_audit_and_verify_detect_tampering(twin: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("verify").exit_code == 0
    result = run_cli("audit", "--verify")
    assert result.exit_code == 0 and "intact" in result.output
    conn = sqlite3.connect(twin / "twin.db", isolation_level=None)
    try:
        conn.execute("DELETE FROM audit WHERE seq = 1")
        conn.execute("UPDATE chunk SET sealed = zeroblob(64) WHERE seq = 0")
    finally:
        conn.close()
    result = run_cli("audit", "--verify", "--json")
    assert result.exit_code == 4
    assert json.loads(result.stdout)["verified"] is False
    result = run_cli("verify")
    assert result.exit_code == 4
    assert "stream 'hr'" in result.output and "stream 'eda'" in result.output
    assert "2023-11-14 01:00:00Z" in result.output
    report = json.loads(run_cli("verify", "--json").stdout)
    assert report["ok"] is False and {p["stream"] for p in report["problems"]} >= {"hr", "eda"}


def test_change_passphrase_and_rotate(twin: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    new = tmp_path / "new"
    new.write_text("another passphrase\n")
    new.chmod(0o600)
    result = run_cli("keys", "change-passphrase", "--new-passphrase-file", str(new))
    assert result.exit_code == 0, result.output
    assert run_cli("verify").exit_code == 3
    runner = CliRunner()
    base = ["--home", str(twin), "--passphrase-file", str(new)]
    result = runner.invoke(cli, [*base, "keys", "rotate", "--reencrypt", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chunks_reencrypted"] == 2  # one per stream
    assert runner.invoke(cli, [*base, "verify"]).exit_code == 0
    events = json.loads(runner.invoke(cli, [*base, "audit", "--json"]).stdout)["entries"]
    actions = [e["details"].get("action") for e in events if e["event"] == "key_change"]
    assert actions == ["set_passphrase", "rotate"]


def test_newer_schema_is_exit_4(twin: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(twin / "twin.db", isolation_level=None)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    result = run_cli("verify")
    assert result.exit_code == 4 and "upgrade edgetwin" in result.output
