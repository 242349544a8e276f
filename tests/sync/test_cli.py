"""The consent, sync and collector commands, end to end (collector as a real process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from edgetwin.config import PrivacyConfig
from edgetwin.privacy.metrics import METRICS, window_start
from tests.sync.helpers import DAY, Broker, free_port, make_twin, open_twin, write_days

Run = Callable[..., Result]
ROOT = Path(__file__).resolve().parents[2]


def _today() -> float:
    """The start of the UTC day after the fixture's three: today, except in the first
    minutes after midnight, while yesterday's release still waits ``release_delay_s``
    (the days then end a day earlier, so three are due, whatever the time of day: these
    tests failed from 00:00 to 00:15 UTC)."""
    return window_start(time.time() - PrivacyConfig().release_delay_s - 120.0, "day")


@pytest.fixture
def twin_home(home: Path) -> Path:
    """A twin with three complete UTC days of data, due for release, just behind the clock."""
    store = make_twin(home)
    write_days(store, _today() - 3 * DAY, 3)
    store.close()
    return home


class CollectorProcess:
    """``edgetwin collector`` running as its own process."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "collector", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"collector exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            self.lines.append(line)
            if "listening on" in line or "subscribed to" in line:
                break

    @property
    def url(self) -> str:
        (line,) = [x for x in self.lines if "listening on" in x]
        return line.split("listening on ", 1)[1].strip()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return out


@pytest.fixture
def device_pubkey(twin_home: Path, run_cli: Run) -> str:
    result = run_cli("sync", "device-key")
    assert result.exit_code == 0, result.output
    return result.output.strip()


@pytest.fixture
def collector_proc(tmp_path: Path, device_pubkey: str) -> Iterator[CollectorProcess]:
    p = CollectorProcess(["--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db"),
                          "--enroll", device_pubkey])
    yield p
    if p.proc.poll() is None:
        p.stop()


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_consent_list_grant_revoke(twin_home: Path, run_cli: Run) -> None:
    listed = _json(run_cli("consent", "list", "--json"))
    assert [c["metric"] for c in listed] == list(METRICS)
    assert all(set(c) >= {"metric", "granted", "period"} and not c["granted"] for c in listed)
    assert run_cli("consent", "grant", "hr_mean").exit_code == 0
    assert run_cli("consent", "grant", "spo2_mean", "--period", "hour").exit_code == 0
    listed = {c["metric"]: c for c in _json(run_cli("--json", "consent", "list"))}
    assert listed["hr_mean"]["granted"] and listed["hr_mean"]["period"] == "day"
    assert listed["spo2_mean"]["granted"] and listed["spo2_mean"]["period"] == "hour"
    revoked = _json(run_cli("consent", "revoke", "hr_mean", "--json"))
    assert revoked["granted"] is False and revoked["cancelled"] == 0
    text = run_cli("consent", "list").output
    assert "hr_mean" in text and "spo2_mean" in text
    bad = run_cli("consent", "grant", "hr_men")
    assert bad.exit_code == 2 and "did you mean 'hr_mean'" in bad.output
    store = open_twin(twin_home)
    events = [(a["event"], a["details"].get("metric")) for a in store.audit_entries()]
    store.close()
    assert ("consent.grant", "hr_mean") in events and ("consent.revoke", "hr_mean") in events


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://collector.example.org/"], "unencrypted over the network"),
        (["--url", "http://127.0.0.1:8080/"], "--allow-insecure-loopback"),
        (["--mqtt", "mqtts://broker.example.org"], "--topic"),
        (["--mqtt", "mqtts://b.example.org", "--topic", "a/#"], "without wildcards"),
        (["--url", "https://x.example.org", "--mqtt", "mqtts://y.example.org"], "exactly one"),
        ([], "exactly one"),
        (["--url", "https://x.example.org", "--ca", "/nonexistent/ca.pem"], "does not exist"),
    ],
)
def test_sync_configure_refuses_bad_targets(
    twin_home: Path, run_cli: Run, args: list[str], message: str
) -> None:
    result = run_cli("sync", "configure", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_sync_run_status_budget_and_collector_aggregate(
    tmp_path: Path, twin_home: Path, run_cli: Run, collector_proc: CollectorProcess
) -> None:
    assert _json(run_cli("sync", "status", "--json"))["target"] is None
    for m in ("hr_mean", "hr_resting", "rmssd_mean", "spo2_mean", "active_minutes"):
        assert run_cli("consent", "grant", m).exit_code == 0
    assert run_cli("sync", "configure", "--url", collector_proc.url + "/v1/releases",
                   "--allow-insecure-loopback").exit_code == 0
    result = run_cli("--json", "sync", "run")
    # Four of five metrics fit in each day's budget: the refusals exit 5, uploads still happen.
    assert result.exit_code == 5
    doc = json.loads(result.output.splitlines()[0])
    assert len(doc["released"]) == 12 and len(doc["refused"]) == 3
    assert doc["upload"]["sent"] == 12 and doc["pending"] == 0
    assert "privacy budget" in result.output and "exhausted" in result.output
    status = _json(run_cli("sync", "status", "--json"))
    assert (status["pending"], status["sent"], status["failed"]) == (0, 12, 0)
    budget = _json(run_cli("sync", "budget", "--json"))
    assert set(budget) >= {"period", "epsilon_spent", "epsilon_remaining", "lifetime_spent",
                           "lifetime_remaining"}
    assert budget["period"] == "day" and budget["lifetime_spent"] == pytest.approx(6.0)
    assert budget["lifetime_remaining"] == pytest.approx(94.0)
    again = run_cli("sync", "run")
    assert again.exit_code == 0 and "released 0" in again.output
    collector_proc.stop()
    agg = subprocess.run(
        [sys.executable, "-m", "edgetwin", "--json", "collector", "--db",
         str(tmp_path / "c.db"), "--aggregate"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    rows = json.loads(agg.stdout)["aggregates"]
    assert {r["metric"] for r in rows} == {"hr_mean", "hr_resting", "rmssd_mean", "spo2_mean"}
    assert sum(r["releases"] for r in rows) == 12


def test_sync_run_with_the_collector_down_then_up(
    tmp_path: Path, twin_home: Path, run_cli: Run, device_pubkey: str
) -> None:
    port = free_port()
    run_cli("consent", "grant", "hr_mean")
    run_cli("sync", "configure", "--url", f"http://127.0.0.1:{port}/",
            "--allow-insecure-loopback")
    down = run_cli("sync", "run")
    assert down.exit_code == 6
    assert "unreachable" in down.output and "stay in the outbox" in down.output
    st = _json(run_cli("sync", "status", "--json"))
    assert st["pending"] == 3 and st["sent"] == 0
    assert all(e["attempts"] <= 1 and e["last_error"] for e in st["entries"])
    proc = CollectorProcess(["--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "c.db"),
                             "--enroll", device_pubkey])
    try:
        assert run_cli("sync", "run").exit_code == 0  # backing off: not retried yet
        assert _json(run_cli("sync", "status", "--json"))["pending"] == 3
        up = run_cli("sync", "run", "--retry-now")
        assert up.exit_code == 0, up.output
        assert _json(run_cli("sync", "status", "--json"))["sent"] == 3
    finally:
        proc.stop()


def test_collector_and_sync_over_mqtt(
    tmp_path: Path, twin_home: Path, run_cli: Run, device_pubkey: str, broker: Broker
) -> None:
    proc = CollectorProcess(["--mqtt", broker.url, "--topic", "fleet/releases",
                             "--db", str(tmp_path / "c.db"), "--enroll", device_pubkey])
    try:
        time.sleep(0.5)  # let the subscription settle before the first publish
        run_cli("consent", "grant", "rmssd_mean")
        assert run_cli("sync", "configure", "--mqtt", broker.url, "--topic", "fleet/releases",
                       "--allow-insecure-loopback").exit_code == 0
        result = run_cli("sync", "run", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["upload"]["sent"] == 3
    finally:
        time.sleep(0.5)
        proc.stop()
    agg = subprocess.run(
        [sys.executable, "-m", "edgetwin", "--json", "collector", "--db",
         str(tmp_path / "c.db"), "--aggregate"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(agg.stdout)["counts"]["releases"] == 3


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[privacy]\nbounds = { hr_mean = [110, 50] }",
         "privacy.bounds.hr_mean lower 110.0 must be below upper 50.0"),
        ("[privacy]\nepsilon_per_release = 0", "privacy.epsilon_per_release is 0.0"),
        ("[privacy]\nepsilon_lifetime = -3", "privacy.epsilon_lifetime is -3.0"),
    ],
)
def test_bad_privacy_config_stops_sync_before_anything_is_released(
    twin_home: Path, run_cli: Run, toml: str, message: str
) -> None:
    assert run_cli("consent", "grant", "hr_mean").exit_code == 0
    (twin_home / "config.toml").write_text(toml + "\n")
    result = run_cli("sync", "run")
    assert result.exit_code == 2
    assert message in result.output and "config.toml" in result.output
    (twin_home / "config.toml").unlink()
    assert _json(run_cli("sync", "status", "--json"))["pending"] == 0
    assert _json(run_cli("sync", "budget", "--json"))["lifetime_spent"] == 0.0


# -- sync run says why nothing (more) happened; sync budget names the charged periods ------


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def test_sync_run_without_consent_says_no_metric_may_leave(twin_home: Path, run_cli: Run) -> None:
    result = run_cli("sync", "run")
    assert result.exit_code == 0, result.output
    assert "no metric has consent" in result.output
    assert "edgetwin consent grant" in result.output
    doc = json.loads(run_cli("sync", "run", "--json").output)
    assert doc["metrics"] == [] and doc["next_due"] is None


def test_sync_run_says_per_metric_which_periods_lacked_data_and_when_the_next_is_due(
    twin_home: Path, run_cli: Run
) -> None:
    assert run_cli("consent", "grant", "hr_mean").exit_code == 0
    before = time.time()
    doc = json.loads(run_cli("sync", "run", "--json", "--no-upload").output)
    (m,) = doc["metrics"]
    assert m["metric"] == "hr_mean" and m["period"] == "day"
    # a week of backfill, data only in the last three days: four days are too thin
    thin = {_day(d["period_start"]) for d in m["too_little_data"]}
    today = _today()
    assert {_day(today - k * DAY) for k in (4, 5, 6)} <= thin
    assert all(d["usable_frames"] < m["min_frames"] for d in m["too_little_data"])
    # the next release waits for a period to end, plus the late-frame delay
    assert m["next_due"] > before
    assert m["next_due"] == pytest.approx(m["waiting_period_end"] + 900.0)
    assert doc["next_due"] == m["next_due"]

    text = run_cli("sync", "run", "--no-upload").output  # nothing new: still says why
    assert "hr_mean (per day):" in text
    assert "not complete until" in text and "next release due" in text


def test_sync_run_text_names_thin_periods_and_the_budget_refusals(
    twin_home: Path, run_cli: Run
) -> None:
    for m in ("hr_mean", "hr_resting", "rmssd_mean", "spo2_mean", "active_minutes"):
        assert run_cli("consent", "grant", m).exit_code == 0
    result = run_cli("sync", "run", "--no-upload")
    assert result.exit_code == 5  # one metric a day does not fit the budget
    text = result.output
    assert "not enough usable data" in text and "usable frames, 12 needed" in text
    assert "refused: the privacy budget is spent" in text
    day = _day(_today() - 2 * DAY)
    assert "budget charged to the UTC day" in text and f"the UTC day {day}" in text


def test_sync_budget_shows_the_period_a_release_was_charged_to(
    twin_home: Path, run_cli: Run
) -> None:
    assert run_cli("consent", "grant", "hr_mean").exit_code == 0
    assert run_cli("sync", "run", "--no-upload").exit_code == 0
    released_day = _today() - 2 * DAY  # complete long ago: released
    doc = _json(run_cli("sync", "budget", "--json"))
    charged = {c["period_start"]: c for c in doc["charged"]}
    assert charged[released_day]["period"] == "day"
    assert charged[released_day]["spent"] == pytest.approx(doc["lifetime_spent"] / len(charged))
    assert charged[released_day]["remaining"] < doc["epsilon_per_period"]
    text = run_cli("sync", "budget").output
    assert f"the UTC day {_day(released_day)}" in text


def test_consent_list_columns_line_up_with_their_header(twin_home: Path, run_cli: Run) -> None:
    assert run_cli("consent", "grant", "hr_mean").exit_code == 0
    header, *rows = run_cli("consent", "list").output.splitlines()
    for title in ("unit", "granted", "period", "since"):
        col = header.index(title)
        assert all(r[col - 1] == " " and r[col] != " " for r in rows), (title, rows)
    assert "fraction" in next(r for r in rows if r.startswith("eeg_alpha_share"))
