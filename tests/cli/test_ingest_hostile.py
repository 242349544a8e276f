"""``edgetwin ingest`` on hostile files: exit 4, one line saying what and where, nothing stored.

And why an ingest made no forecasts, when it made none.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from edgetwin.sources import recording
from edgetwin.sources.recording import MAX_COLUMNS

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _hr_rows(n: int, t0: float = T0) -> list[str]:
    return [f"{t0 + i:.3f},{60 + i % 7}" for i in range(n)]


def _refused(run_cli: Any, path: Path, *args: str) -> str:
    """Ingest ``path``: exit 4, a single stderr line, and the twin as it was (and sound)."""
    before = json.loads(run_cli("status", "--json").output)["store"]["streams"]
    result = run_cli("ingest", str(path), "--stream", "x", *args)
    assert result.exit_code == 4, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert json.loads(run_cli("status", "--json").output)["store"]["streams"] == before
    assert run_cli("verify").exit_code == 0
    return lines[0]


def test_ingest_latin1_file_is_refused_naming_line_and_character(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    bad = tmp_path / "latin.csv"
    # The bad byte sits far past the text decoder's first read-ahead block (8 KiB).
    rows = _hr_rows(3000)
    body = ("timestamp,hr\n" + "\n".join(rows[:2500])).encode() + b"\n"
    body += f"{T0 + 2500:.3f},6".encode() + b"\xe9" + b"0\n"  # 'é' as Latin-1
    bad.write_bytes(body)
    line = _refused(run_cli, bad)
    assert "latin.csv:2502:" in line and "0xe9" in line and "not UTF-8" in line
    assert "iconv" in line  # what to do


def test_ingest_binary_garbage_is_refused_not_a_traceback(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    bad = tmp_path / "blob.csv"
    bad.write_bytes(b"timestamp,hr\n\x00\xff\xfe\x80garbage\n")
    assert "blob.csv:2:" in _refused(run_cli, bad)


def test_ingest_cell_over_the_csv_field_limit_is_refused_with_its_line(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    bad = tmp_path / "field.csv"
    width = 700  # a line may hold 700 * 256 characters, more than one csv field may
    header = ",".join(["timestamp", *(f"eeg_c{i}" for i in range(width - 1))])
    ok = ",".join([f"{T0:.3f}", *("1" for _ in range(width - 1))])
    huge = ",".join([f"{T0 + 1:.3f}", "1" * 140_000, *("1" for _ in range(width - 2))])
    bad.write_text(f"{header}\n{ok}\n{huge}\n")
    line = _refused(run_cli, bad)
    assert "field.csv:3:" in line and "not readable as CSV" in line and "131,072" in line


def test_ingest_line_too_long_for_its_columns_is_refused_before_it_is_read(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    bad = tmp_path / "long.csv"
    bad.write_text(f"timestamp,hr\n{T0},60\n{T0 + 1}," + "1" * 200_000 + "\n")
    line = _refused(run_cli, bad)
    assert "long.csv:3:" in line and "line longer than 65,536 characters" in line


def test_ingest_header_wider_than_the_documented_bound_is_refused(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    wide = tmp_path / "wide.csv"
    n = MAX_COLUMNS  # + timestamp: one column too many
    wide.write_text("timestamp," + ",".join(f"eeg_c{i}" for i in range(n)) + f"\n{T0}"
                    + ",1" * n + "\n")
    line = _refused(run_cli, wide)
    assert f"the header has {n + 1} columns, more than the {MAX_COLUMNS}" in line
    # 100k columns: refused on the header's length, before it is split into cells.
    huge = tmp_path / "huge.csv"
    huge.write_text("timestamp," + ",".join(f"eeg_c{i}" for i in range(100_000)) + "\n")
    assert "huge.csv:1: line longer than" in _refused(run_cli, huge)


def test_ingest_duplicate_column_in_a_wide_header_is_found(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    dup = tmp_path / "dup.csv"
    names = [f"eeg_c{i}" for i in range(MAX_COLUMNS - 2)] + ["eeg_c7"]
    dup.write_text("timestamp," + ",".join(names) + f"\n{T0}" + ",1" * len(names) + "\n")
    assert "duplicate column 'eeg_c7'" in _refused(run_cli, dup)


def test_ingest_far_future_timestamps_are_refused_unless_allowed(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    y3000 = tmp_path / "y3000.csv"
    y3000.write_text("timestamp,hr\n32503680000,60\n32503680001,61\n")  # 3000-01-01
    line = _refused(run_cli, y3000)
    assert "y3000.csv:2:" in line and "3000-01-01" in line and "--allow-future" in line
    y5138 = tmp_path / "y5138.csv"
    y5138.write_text("timestamp,hr\n1767225600000,60\n")  # past year 5138: milliseconds
    assert "looks like milliseconds" in _refused(run_cli, y5138, "--allow-future")
    result = run_cli("ingest", str(y3000), "--stream", "future", "--allow-future", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == 2


def test_ingest_error_past_a_mid_ingest_commit_stores_nothing(
    run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store commits every 256 batches; a bad row after that must still leave no trace."""
    run_cli("init")
    monkeypatch.setattr(recording, "read_recording",
                        functools.partial(recording.read_recording, chunk_rows=1))
    bad = tmp_path / "late.csv"
    rows = _hr_rows(400)
    rows[390] = f"{T0 + 390:.3f},sixty"
    bad.write_text("timestamp,hr\n" + "\n".join(rows) + "\n")
    line = _refused(run_cli, bad)
    assert "late.csv:392: column 'hr': 'sixty' is not a number" in line


def _cardiac(path: Path, t0: float, minutes: float) -> None:
    rows = [f"{t0 + i:.3f},{62 + (i // 20) % 5},{97.5 - (i % 3) * 0.2:.1f}"
            for i in range(int(minutes * 60))]
    path.write_text("timestamp,hr,spo2\n" + "\n".join(rows) + "\n")


def test_ingest_of_data_older_than_the_twin_says_why_it_made_no_forecasts(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    later, earlier = tmp_path / "later.csv", tmp_path / "earlier.csv"
    _cardiac(later, T0 + 86_400, 10)
    _cardiac(earlier, T0, 10)
    first = json.loads(run_cli("ingest", str(later), "--stream", "a", "--json").output)
    assert first["predictions"] > 0 and first["forecast_note"] is None
    result = run_cli("ingest", str(earlier), "--stream", "b")
    assert result.exit_code == 0, result.output
    summary, note = result.output.strip().splitlines()
    assert " 0 predictions" in summary
    assert note.startswith("no forecasts for this recording: it lies before the twin's latest "
                           "frame (2026-01-02 00:10:00Z)")
    assert "forecasts only run forward" in note and "were stored" in note
    doc = json.loads(run_cli("ingest", str(earlier), "--stream", "c", "--json").output)
    assert doc["predictions"] == 0 and "before the twin's latest frame" in doc["forecast_note"]


def test_ingest_too_short_for_a_forecast_says_how_much_context_is_needed(
    run_cli: Any, tmp_path: Path
) -> None:
    run_cli("init")
    short = tmp_path / "short.csv"
    _cardiac(short, T0, 0.5)
    doc = json.loads(run_cli("ingest", str(short), "--stream", "s", "--json").output)
    assert doc["frames"] > 0 and doc["predictions"] == 0
    assert doc["forecast_note"].startswith("no forecasts: the forecaster needs ")
    assert "feature frames of context" in doc["forecast_note"]


def test_ingest_of_a_pipe_is_a_usage_error_not_a_missing_file(
    run_cli: Any, tmp_path: Path
) -> None:
    import os

    run_cli("init")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result = run_cli("ingest", str(fifo), "--stream", "x")
    assert result.exit_code == 2
    assert "pipe.csv is not a regular file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
