"""ingest -> timeline / predictions through the real CLI, store and feature pipeline."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgetwin.cli.data import parse_time
from edgetwin.errors import UsageError
from edgetwin.features.schema import NAMES

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _write_csv(path: Path, minutes: float = 4.0) -> int:
    """A recording with 1 Hz heart rate, SpO2 and temperature, and RR rows."""
    rng = np.random.default_rng(0)
    rows = []
    n = int(minutes * 60)
    for i in range(n):
        t = T0 + i
        rows.append([f"{t:.3f}", f"{62 + 3 * np.sin(i / 30):.2f}", f"{97 + rng.normal(0, .3):.2f}",
                     "33.1", ""])
    t = T0 + 0.2
    while t < T0 + n:
        rr = 950 + rng.normal(0, 30)
        rows.append([f"{t:.3f}", "", "", "", f"{rr:.1f}"])
        t += rr / 1000
    rows.sort(key=lambda r: float(r[0]))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "hr", "spo2", "temp", "rr"])
        w.writerows(rows)
    return len(rows)


def test_ingest_then_timeline_json_and_csv(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("init").exit_code == 0
    rec = tmp_path / "rec.csv"
    _write_csv(rec)
    result = run_cli("ingest", str(rec), "--stream", "strap", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["samples"] > 0
    assert report["frames"] >= 40  # 4 minutes at 5 s steps
    assert report["streams"] == ["strap"]

    timeline = json.loads(run_cli("timeline", "--json").output)
    assert len(timeline) == report["frames"]
    frame = timeline[10]
    assert set(frame["features"]) == set(NAMES)
    assert 55 < frame["features"]["hr"] < 70
    assert 96 < frame["features"]["spo2"] < 98.5  # 1 Hz column beside one-row-per-beat rr
    assert frame["features"]["skin_temp"] == pytest.approx(33.1)
    assert frame["features"]["eeg_alpha"] is None  # no EEG in this recording: masked
    assert frame["quality"]["eeg_alpha"] == 0
    ts = [f["t"] for f in timeline]
    assert ts == sorted(ts)
    assert all(abs((t - T0) % 5.0) < 1e-6 or abs((t - T0) % 5.0 - 5.0) < 1e-6 for t in ts)

    window = json.loads(run_cli("timeline", "--json", "--from", str(T0 + 60),
                                "--to", str(T0 + 120)).output)
    assert window
    assert all(T0 + 60 <= f["t"] <= T0 + 120 for f in window)

    text = run_cli("timeline", "--csv").output
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["timestamp", "hr", "rmssd"]
    assert len(rows) == len(timeline) + 1

    table = run_cli("timeline", "--last", "3").output
    assert "missing or poor quality" in table
    # names, units, 3 frames, the legend, the features this recording never fed
    assert len(table.splitlines()) == 2 + 3 + 1 + 1
    assert "no usable values here: eda_tonic, motion, eeg_delta" in table

    status = json.loads(run_cli("status", "--json").output)
    assert status["daemon"]["running"] is False
    (stream,) = status["store"]["streams"]
    assert stream["name"] == "strap"
    assert stream["samples"] == report["samples"]


def test_ingest_bad_csv_names_the_line_and_stores_nothing(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_cli("init")
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,hr\n1767225600,60\n1767225599,61\n")
    result = run_cli("ingest", str(bad), "--stream", "x")
    assert result.exit_code == 4
    assert "bad.csv:3" in result.output
    assert "earlier than the row before" in result.output
    status = json.loads(run_cli("status", "--json").output)
    assert status["store"]["streams"] == []


def test_ingest_rejects_a_bad_stream_name(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_cli("init")
    rec = tmp_path / "r.csv"
    rec.write_text("timestamp,hr\n1767225600,60\n")
    result = run_cli("ingest", str(rec), "--stream", "Bad.Name")
    assert result.exit_code == 2
    assert "not allowed" in result.output


def test_predictions_when_there_are_none(run_cli) -> None:  # type: ignore[no-untyped-def]
    run_cli("init")
    assert json.loads(run_cli("predictions", "--json").output) == []
    assert "no predictions yet" in run_cli("predictions").output


def test_parse_time_accepts_epoch_iso_and_relative() -> None:
    assert parse_time("1767225600", option="--from") == 1767225600.0
    assert parse_time("2026-01-01T00:00:00+00:00", option="--from") == 1767225600.0
    rel = parse_time("-2h", option="--from")
    assert rel is not None
    with pytest.raises(UsageError, match="--to 'yesterday' is not a time"):
        parse_time("yesterday", option="--to")
    with pytest.raises(UsageError):
        parse_time("nan", option="--to")
