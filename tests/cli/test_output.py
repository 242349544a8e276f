"""What a user notices first: tables, widths, zones, hints, warnings and the demo's last words."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgetwin.cli.main import cli
from edgetwin.types import Prediction
from tests.cli.test_data import _write_csv

PASSPHRASE = "correct horse battery staple"
ROOT = Path(__file__).resolve().parents[2]
ANOMALY = "the value just observed left the band forecast for it"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def zone() -> Iterator[str]:
    """The process runs in India's zone (+05:30, no DST) so that any time lacking it shows."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield "+05:30"
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _pred(t: float, *, anomaly: bool = False) -> Prediction:
    horizon = tuple(70.0 + k * 0.5 for k in range(12))
    return Prediction(
        t=t, target="hr", step_s=5.0, horizon=horizon,
        band=tuple((h - 5.0, h + 6.0) for h in horizon),
        attention=tuple([1 / 60] * 60),
        imputed=((t - 200.0, t - 100.0),),
        model="lstm-attn/int8/test", anomaly=anomaly,
        influence=tuple([0.5 / 52] * 52 + [0.5 / 8] * 8),
    )


def _store_predictions(home: Path, preds: list[Prediction]) -> None:
    from edgetwin.store import Secret, TwinStore

    store = TwinStore.open(home, Secret.passphrase(PASSPHRASE))
    try:
        store.append_predictions(preds)
        store.commit()
    finally:
        store.close()


# -- the root command ------------------------------------------------------------------


def test_an_unknown_command_gets_a_did_you_mean() -> None:
    result = CliRunner().invoke(cli, ["statu"])
    assert result.exit_code == 2
    assert "Did you mean 'status'?" in result.output
    sub = CliRunner().invoke(cli, ["sync", "bugdet"])
    assert sub.exit_code == 2 and "Did you mean 'budget'?" in sub.output


def test_verbose_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    home = tmp_path / "none"
    result = CliRunner().invoke(cli, ["--home", str(home), "timeline", "-v"])
    assert "No such option" not in result.output
    assert result.exit_code == 2 and "holds no twin" in result.output
    nested = CliRunner().invoke(cli, ["--home", str(home), "sync", "budget", "--verbose"])
    assert "No such option" not in nested.output and "holds no twin" in nested.output


# -- predictions -------------------------------------------------------------------------


def test_predictions_follow_prints_the_header_and_legend_once(
    run_cli, home: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    t0 = time.time()

    def follow(_home: Path) -> Iterator[dict[str, Any]]:
        for k in range(3):
            yield _pred(t0 + 5 * k, anomaly=k == 1).to_json()
        yield {"end": True}

    monkeypatch.setattr("edgetwin.daemon.control.follow", follow)
    out = run_cli("predictions", "--follow").output
    lines = out.splitlines()
    assert sum(ln.startswith("time ") for ln in lines) == 1
    assert sum(ln.startswith("forecast:") for ln in lines) == 1
    assert sum(" hr bpm " in ln for ln in lines) == 3
    assert ANOMALY in " ".join(ln.strip() for ln in lines)


def test_the_anomaly_text_is_not_cut_at_80_columns_in_a_pipe(
    run_cli, home: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    _store_predictions(home, [_pred(time.time() - 60, anomaly=True)])
    monkeypatch.setenv("COLUMNS", "80")
    out = run_cli("predictions").output
    lines = out.splitlines()
    assert all(len(ln) <= 80 for ln in lines), [len(ln) for ln in lines]
    assert "…" not in out
    assert ANOMALY in " ".join(ln.strip() for ln in lines)


# -- timeline ------------------------------------------------------------------------------


def test_timeline_table_has_a_default_limit_full_names_units_and_aligned_rounded_columns(
    run_cli, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    rec = tmp_path / "rec.csv"
    _write_csv(rec, minutes=6.0)  # 72 frames at 5 s
    assert run_cli("ingest", str(rec), "--stream", "strap").exit_code == 0
    total = len(json.loads(run_cli("timeline", "--json").output))
    assert total > 40

    lines = run_cli("timeline").output.splitlines()
    header, units, *rows = lines
    rows = [r for r in rows if re.match(r"\d{4}-\d\d-\d\d ", r)]
    assert len(rows) == 30
    assert f"the last 30 of {total} frames" in lines[-1] or any(
        f"the last 30 of {total} frames" in ln for ln in lines)
    names = header.split()[2:]  # after "time (UTC+..)"
    assert {"hr", "rmssd", "spo2", "skin_temp"} <= set(names)
    # right edges of name, unit and every value line up
    for name, unit in (("hr", "bpm"), ("spo2", "%"), ("skin_temp", "degC")):
        edge = header.index(f" {name}") + 1 + len(name)
        assert units[:edge].rstrip().endswith(unit), (name, units)
        for row in rows:
            cell = row[:edge].split()[-1]
            if cell != "·":
                assert re.fullmatch(r"-?\d+\.\d{1,3}", cell), (name, cell)
    hr_edge = header.index(" hr") + 3
    assert all(re.fullmatch(r"\d+\.\d", r[:hr_edge].split()[-1]) for r in rows
               if r[:hr_edge].split()[-1] != "·")  # heart rate to 0.1 bpm
    assert len(run_cli("timeline", "--all").output.splitlines()) > total


def test_times_carry_their_zone_in_status_timeline_predictions_and_audit(
    run_cli, home: Path, tmp_path: Path, zone: str  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    rec = tmp_path / "rec.csv"
    _write_csv(rec, minutes=2.0)
    assert run_cli("ingest", str(rec), "--stream", "strap").exit_code == 0
    _store_predictions(home, [_pred(time.time() - 60)])
    status = run_cli("status").output
    stamps = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?", status)
    assert stamps and all(s.endswith(zone) for s in stamps), stamps
    assert f"time (UTC{zone})" in run_cli("timeline").output
    assert f"times in UTC{zone}" in run_cli("predictions").output
    audit = run_cli("audit").output.splitlines()
    assert audit and all(zone in ln for ln in audit)


# -- pairing -------------------------------------------------------------------------------


def test_pair_scan_prints_a_table_not_a_record_repr(
    run_cli, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    bridge = {"device_id": 7, "model": "fnirs-8", "firmware": "1.2.0", "channels": 16,
              "rate_hz": 10.0, "channel_names": ["fnirs_s1_d1_760", "fnirs_s1_d1_850"]}
    monkeypatch.setattr("edgetwin.sources.serial.scan_ports", lambda: [
        {"port": "/dev/ttyACM0", "vid_pid": "2e8a:000a", "description": "Pico",
         "manufacturer": "Raspberry Pi", "serial_number": "E66", "bridge": bridge},
        {"port": "/dev/ttyS0", "vid_pid": None, "description": "n/a", "manufacturer": None,
         "serial_number": None, "bridge": None},
    ])
    monkeypatch.setattr("edgetwin.sources.brainflow.scan_dongles", lambda: [])
    result = run_cli("pair", "scan", "--no-ble")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["transport", "address", "name"]
    assert not any(c in result.stdout for c in "{}[]'")
    acm = next(ln for ln in lines if "/dev/ttyACM0" in ln)
    assert "16 channels at 10 Hz" in acm and "edgetwin pair add serial /dev/ttyACM0" in acm
    # columns line up: every row's address starts where the header's does
    col = lines[0].index("address")
    assert all(ln[col - 2:col] == "  " and ln[col] != " " for ln in lines[1:])


def test_pair_add_serial_of_a_missing_device_says_there_is_no_such_device(
    run_cli, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("init").exit_code == 0
    missing = tmp_path / "ttyNOPE"
    result = run_cli("pair", "add", "serial", str(missing))
    assert result.exit_code == 6
    assert f"no such device: {missing}" in result.stderr
    assert "answered" not in result.stderr
    later = run_cli("pair", "add", "serial", str(missing), "--no-probe")
    assert later.exit_code == 0 and "does not exist now" in later.stderr


# -- unlocking without a terminal, the audit log --------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["timeline"], "--passphrase-file"),  # the twin's passphrase
        (["--passphrase-file", "{pf}", "keys", "change-passphrase"], "--new-passphrase-file"),
        (["--passphrase-file", "{pf}", "export", "-o", "{out}", "--passphrase"],
         "--bundle-passphrase-file"),
    ],
)
def test_no_getpass_warning_leaks_when_there_is_no_terminal(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    home = tmp_path / "home"
    pf = tmp_path / "pf"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test", "EDGETWIN_HOME": str(home)}
    for name in ("EDGETWIN_PASSPHRASE_FILE", "EDGETWIN_KEYFILE",
                 "EDGETWIN_BUNDLE_PASSPHRASE_FILE"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-m", "edgetwin", "--passphrase-file", str(pf), "init"],
                   env=env, cwd=ROOT, check=True, capture_output=True)
    argv = [a.format(pf=pf, out=tmp_path / "b.age") for a in args]
    # a new session has no controlling terminal: getpass cannot open /dev/tty
    result = subprocess.run([sys.executable, "-m", "edgetwin", *argv], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            start_new_session=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "Warning" not in result.stderr and "echoed" not in result.stderr
    assert result.stderr.count("\n") == 1 and "no terminal" in result.stderr
    assert flag in result.stderr


def test_pair_list_prints_values_not_python_reprs(run_cli) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("init").exit_code == 0
    assert run_cli("pair", "add", "simulator", "--speed", "2.5").exit_code == 0
    assert run_cli("pair", "add", "brainflow", "--board", "SYNTHETIC_BOARD").exit_code == 0
    out = run_cli("pair", "list").output
    assert "speed=2.5" in out and "board=SYNTHETIC_BOARD" in out
    assert not any(c in out for c in "{}[]'"), out


def test_the_audit_log_prints_values_not_python_reprs(run_cli) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("init").exit_code == 0
    assert run_cli("consent", "grant", "hr_mean").exit_code == 0
    out = run_cli("audit").output
    assert "kdf=(" in out  # the KDF parameters of init, a table in the record
    assert not any(c in out for c in "{}[]'"), out
    assert "None" not in out and "True" not in out


# -- the demo ------------------------------------------------------------------------------


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test"}
    return subprocess.run(
        [sys.executable, "-m", "edgetwin", *args, "demo", "--duration", "3", "--history-min",
         "2", "--no-brainflow", "--no-serial"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )


def test_the_demo_ends_with_what_to_try_next_and_never_names_the_home_it_deletes() -> None:
    result = _demo()
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    assert "edgetwin-demo-" not in both  # the temporary home is never named
    assert "daemon run'" not in both  # no advice about a twin that no longer exists
    tail = result.stdout.rstrip().splitlines()[-5:]
    assert "try next" in tail[0] and any("edgetwin init" in ln for ln in tail)


def test_a_kept_demo_twin_can_be_opened_with_the_commands_it_suggests(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    result = _demo("--home", str(home))
    assert result.returncode == 0, result.stderr
    assert f"kept at {home}" in result.stdout
    (export,) = [ln for ln in result.stdout.splitlines() if "export EDGETWIN_HOME" in ln]
    env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test"}
    env.update(dict(kv.split("=", 1) for kv in export.split()[1:]))
    timeline = subprocess.run([sys.executable, "-m", "edgetwin", "timeline", "--json"],
                              env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert timeline.returncode == 0, timeline.stderr
    assert json.loads(timeline.stdout), "the kept demo twin holds frames"
    assert (home / "demo-passphrase").stat().st_mode & 0o077 == 0


