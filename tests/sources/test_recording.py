"""Recording readers: DESIGN.md CSV and BrainFlow files, precise errors, constant memory, replay."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import MalformedInput, UsageError
from edgetwin.sources.recording import (
    ReplaySource,
    detect_format,
    parse_channel_header,
    read_recording,
)
from edgetwin.types import SampleBatch
from tests.sources.bf_helpers import ATHENA, board_shaped, write_board_files

T0 = 1_700_000_000.0


def write(tmp_path: Path, text: str, name: str = "rec.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read_all(path: Path, **kwargs: object) -> list[SampleBatch]:
    return list(read_recording(path, "s", **kwargs))  # type: ignore[arg-type]


def bad(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(MalformedInput) as info:
        read_all(path)
    return str(info.value)


# -- CSV: good input ---------------------------------------------------------------------


def test_csv_reads_channels_units_and_missing_cells(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "timestamp,hr,rr,spo2,temp [degC],eda (uS),eeg_af7,accel_x,fnirs_s1_d1_760\n"
        f"{T0},61,,98,33.5,1.2,10.5,0.01,1500\n"
        f"{T0 + 0.4},,950,,,,,,\n"
        f"{T0 + 1},62.5,,nan,33.6,1.3,-3,inf,1501\n"
    ))
    (batch,) = read_all(path)
    assert batch.stream == "s"
    assert batch.channels == ("hr", "rr", "spo2", "temp", "eda", "eeg_af7", "accel_x",
                              "fnirs_s1_d1_760")
    assert batch.units == ("bpm", "ms", "%", "degC", "uS", "uV", "g", "a.u.")
    np.testing.assert_array_equal(batch.t, [T0, T0 + 0.4, T0 + 1])
    assert batch.values[0, 0] == 61
    assert batch.values[1, 1] == 950  # rr in its own row
    assert np.isnan(batch.values[1, 0]) and np.isnan(batch.values[0, 1])
    assert np.isnan(batch.values[2, 2])  # "nan" is missing
    assert np.isnan(batch.values[2, 6])  # inf is masked as missing, never propagated
    assert batch.values[2, 5] == -3


def test_csv_is_read_in_chunks_and_checks_order_across_them(tmp_path: Path) -> None:
    rows = "".join(f"{T0 + i},{60 + i % 5}\n" for i in range(10))
    batches = read_all(write(tmp_path, "timestamp,hr\n" + rows), chunk_rows=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches[1].first_t == T0 + 4
    # Going back in time right after a chunk boundary is still caught, with its line.
    rows = "".join(f"{T0 + i},60\n" for i in range(4)) + f"{T0 + 2},60\n"
    path = write(tmp_path, "timestamp,hr\n" + rows)
    with pytest.raises(MalformedInput, match=r"rec\.csv:6: timestamp .* earlier than the row"):
        read_all(path, chunk_rows=4)


def test_csv_reading_is_streaming_with_bounded_memory(tmp_path: Path) -> None:
    n = 60_000
    header = "timestamp," + ",".join(f"eeg_{i}" for i in range(16)) + "\n"
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write(header)
        row_tail = "," + ",".join(["12.345678"] * 16) + "\n"
        for i in range(n):
            fh.write(f"{T0 + i / 250:.6f}{row_tail}")
    size = path.stat().st_size
    it = read_recording(path, "s", chunk_rows=1000)
    first = next(it)  # lazy: the first chunk comes before the file is read
    assert len(first) == 1000
    tracemalloc.start()
    total = len(first)
    for batch in it:
        total += len(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == n
    assert peak < size / 4  # a chunk at a time, not the file (~10 MB)


def test_equal_timestamps_are_allowed(tmp_path: Path) -> None:
    (batch,) = read_all(write(tmp_path, f"timestamp,rr,hr\n{T0},800,\n{T0},,60\n"))
    assert len(batch) == 2


# -- CSV: bad input, each with its line ----------------------------------------------------


def test_unknown_column_names_the_column_and_suggests(tmp_path: Path) -> None:
    msg = bad(tmp_path, f"timestamp,hr,heartrate\n{T0},60,60\n")
    assert "rec.csv:1: unknown column 'heartrate'" in msg
    assert "did you mean 'hr'" in msg
    msg = bad(tmp_path, f"timestamp,fnirs_s1_d1\n{T0},1\n")
    assert "unknown column 'fnirs_s1_d1'" in msg


def test_wrong_unit_in_the_header(tmp_path: Path) -> None:
    msg = bad(tmp_path, f"timestamp,temp [degF]\n{T0},98.6\n")
    assert "rec.csv:1: column 'temp [degF]' is in 'degF' but temp must be in degC" in msg
    assert parse_channel_header("eda (µS)") == ("eda", "uS")
    assert parse_channel_header("EEG_AF7") == ("eeg_af7", "uV")


@pytest.mark.parametrize(("column", "value", "expect"), [
    ("temp", "98.6", "Celsius"),
    ("rr", "0.85", "milliseconds"),
    ("spo2", "0.97", "percent"),
    ("hr", "7200", "beats per minute"),
    ("accel_z", "-9810", "not m/s"),
])
def test_values_in_the_wrong_unit_name_the_line(tmp_path: Path, column: str, value: str,
                                                expect: str) -> None:
    ok = {"temp": "33", "rr": "850", "spo2": "97", "hr": "60", "accel_z": "1"}[column]
    msg = bad(tmp_path, f"timestamp,{column}\n{T0},{ok}\n{T0 + 1},{ok}\n{T0 + 2},{value}\n")
    assert f"rec.csv:4: {column} = " in msg
    assert expect in msg


def test_bad_numbers_and_timestamps_name_the_line(tmp_path: Path) -> None:
    assert "rec.csv:3: column 'hr': '6o' is not a number" in bad(
        tmp_path, f"timestamp,hr\n{T0},60\n{T0 + 1},6o\n")
    assert "rec.csv:3: timestamp 1699999999 is earlier than the row before" in bad(
        tmp_path, f"timestamp,hr\n{T0},60\n{T0 - 1},61\n")
    assert "rec.csv:2: the timestamp is missing" in bad(tmp_path, "timestamp,hr\n,60\n")
    assert "looks like milliseconds" in bad(tmp_path, f"timestamp,hr\n{T0 * 1000:.0f},60\n")
    assert "looks like relative seconds" in bad(tmp_path, "timestamp,hr\n12.5,60\n")
    assert "rec.csv:3: 2 cells but the header has 3" in bad(
        tmp_path, f"timestamp,hr,spo2\n{T0},60,97\n{T0 + 1},60\n")
    assert "the first column must be 'timestamp'" in bad(tmp_path, f"time,hr\n{T0},60\n")
    assert "duplicate column 'hr'" in bad(tmp_path, f"timestamp,hr,HR\n{T0},60,60\n")


def test_format_detection_and_usage_errors(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, f"timestamp,hr\n{T0},60\n")) == "csv"
    assert detect_format(write(tmp_path, f"1.0\t2.0\t{T0}\n", "bf.csv")) == "brainflow"
    with pytest.raises(MalformedInput, match="cannot tell the format"):
        detect_format(write(tmp_path, "hello\n", "odd.txt"))
    with pytest.raises(MalformedInput, match="empty"):
        detect_format(write(tmp_path, "\n\n", "empty.csv"))
    with pytest.raises(UsageError, match="did you mean 'csv'"):
        read_all(write(tmp_path, f"timestamp,hr\n{T0},60\n"), fmt="cvs")
    with pytest.raises(UsageError, match="does not exist"):
        read_all(tmp_path / "missing.csv")


# -- BrainFlow files ------------------------------------------------------------------------


def test_brainflow_file_round_trips_through_datafilter(tmp_path: Path) -> None:
    files = write_board_files(tmp_path, "SYNTHETIC_BOARD", seconds=2.0)
    path, data = files[0]
    batches = read_all(path, chunk_rows=128)  # format sniffed, board defaults to synthetic
    assert [len(b) for b in batches] == [128, 128, 128, 116]
    t = np.concatenate([b.t for b in batches])
    values = np.concatenate([b.values for b in batches])
    assert batches[0].channels[0] == "eeg_fz"
    np.testing.assert_allclose(t, data[30], rtol=0, atol=1e-6)
    np.testing.assert_allclose(values[:, 0], data[1], rtol=1e-5, atol=1e-5)
    # The auxiliary file is recognised by its width.
    (aux,) = read_all(files[1][0], fmt="brainflow")
    assert aux.channels[:3] == ("accel_x", "accel_y", "accel_z")
    assert "battery" in aux.channels


def test_athena_optics_file_yields_fnirs_channels(tmp_path: Path) -> None:
    files = write_board_files(tmp_path, ATHENA, seconds=1.0)
    (anc,) = read_all(files[2][0], board=ATHENA)
    assert "fnirs_left_outer_850" in anc.channels
    assert anc.meta["distance_cm"]["fnirs_left_outer_850"] == 3.0
    k = anc.channels.index("fnirs_left_outer_730")
    np.testing.assert_allclose(anc.values[:, k], files[2][1][1], rtol=1e-6)


def test_brainflow_file_of_the_wrong_shape(tmp_path: Path) -> None:
    files = write_board_files(tmp_path, "SYNTHETIC_BOARD", seconds=0.5)
    with pytest.raises(MalformedInput, match="playback file of the wrong shape") as info:
        read_all(files[0][0], board="CYTON_BOARD")
    assert "32 columns" in str(info.value)
    assert "SYNTHETIC_BOARD (default)" in str(info.value)  # the hint names a fitting board
    lines = files[0][0].read_text().splitlines()
    lines[5] = "\t".join(lines[5].split("\t")[:-3])
    cut = write(tmp_path, "\n".join(lines) + "\n", "cut.csv")
    with pytest.raises(MalformedInput, match=r"cut\.csv:6 has 29 columns, the lines before 32"):
        read_all(cut)
    with pytest.raises(UsageError, match="unknown BrainFlow board"):
        read_all(files[0][0], board="SYNTHETIK")
    with pytest.raises(UsageError, match="--board only applies"):
        read_all(files[0][0], fmt="csv", board="SYNTHETIC_BOARD")


def test_brainflow_file_drops_backwards_timestamps(tmp_path: Path) -> None:
    from edgetwin.sources.brainflow import _load_native

    data = board_shaped("SYNTHETIC_BOARD", 1, 0.1, t0=T0)
    data[18, 10] = data[18, 9] - 1.0  # one sample from the past
    path = tmp_path / "back.csv"
    _load_native().DataFilter.write_file(data, str(path), "w")
    (batch,) = read_all(path)
    assert len(batch) == data.shape[1] - 1
    assert np.all(np.diff(batch.t) >= 0)


# -- replay ----------------------------------------------------------------------------------


async def test_replay_as_fast_as_possible_keeps_timestamps(tmp_path: Path) -> None:
    rows = "".join(f"{T0 + i / 10},{60 + i % 3}\n" for i in range(50))
    source = ReplaySource.from_record("rp", {"kind": "replay", "speed": 0,
                                             "path": str(write(tmp_path, "timestamp,hr\n" + rows))})
    await source.connect()
    got = [b async for b in source.stream()]
    await source.close()
    assert sum(len(b) for b in got) == 50
    assert got[0].first_t == T0
    assert got[0].stream == "rp"
    assert source.counters.samples == 50


async def test_replay_in_real_time_is_paced_and_shifted_to_now(tmp_path: Path) -> None:
    rows = "".join(f"{T0 + i / 20},{60}\n" for i in range(12))  # 0.55 s of data
    source = ReplaySource("rp", write(tmp_path, "timestamp,hr\n" + rows), stream="live",
                          speed=1.0, batch_s=0.1)
    await source.connect()
    started = time.time()
    got = [b async for b in source.stream()]
    assert len(got) >= 4  # sliced into ~0.1 s batches, not one lump
    t = np.concatenate([b.t for b in got])
    assert np.all(np.diff(t) > 0)
    assert abs(t[0] - started) < 1.0
    np.testing.assert_allclose(np.diff(t), 0.05, atol=1e-6)  # spacing kept
    assert got[-1].stream == "live"


async def test_replay_refuses_what_it_cannot_play(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="looping replay needs a speed"):
        ReplaySource("rp", tmp_path / "x.csv", speed=0, loop=True)
    source = ReplaySource("rp", write(tmp_path, f"timestamp,pulse\n{T0},60\n"))
    with pytest.raises(MalformedInput, match="unknown column 'pulse'"):
        await source.connect()
    with pytest.raises(UsageError, match="no 'path'"):
        ReplaySource.from_record("rp", {"kind": "replay"})
