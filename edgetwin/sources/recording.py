"""Recordings on disk: the DESIGN.md CSV and BrainFlow's ``DataFilter.write_file`` files.

``read_recording`` streams a file as ``SampleBatch`` chunks in constant memory
(``edgetwin ingest`` pushes them through the pipeline as fast as it can);
``ReplaySource`` plays one as a live source, in real time or faster.

CSV (DESIGN.md): a header row whose first column is ``timestamp`` (seconds
since the Unix epoch), then one column per channel named by type (see
``edgetwin.types``). A header cell may carry its unit, ``hr [bpm]`` or
``hr (bpm)``; it must then be the canonical one. Empty cells (and ``nan``) are
missing; ``inf`` becomes missing too. ``rr`` holds one beat per row, so its
rows usually leave the other cells empty. Errors name the line and column:
an unknown column name, a wrong unit, a cell that is not a number, a value far
outside its unit's range (e.g. °F in ``temp``, seconds in ``rr``), a
timestamp that is missing, not epoch seconds, or earlier than the row above.

Hostile files are refused with ``MalformedInput`` (exit 4), never a traceback,
in memory bounded by the limits below: text that is not UTF-8 (the line and
character of the first bad byte), a header of more than ``MAX_COLUMNS``
columns, a line longer than its limit, a cell over the csv field limit, and a
timestamp outside the window ``EPOCH_MIN`` (1973) .. now + ``FUTURE_SLACK_S``
(a day of clock skew) unless the caller widens it (``latest``, up to
``EPOCH_MAX``, year 5138, past which a timestamp is milliseconds).

BrainFlow files have no header: one sample per line, tab-separated, one field
per row of the board's preset (``num_rows``), so the board is needed to read
them (``board``, default ``SYNTHETIC_BOARD``; the preset is found from the
line width). A line of the wrong width is a "playback file of the wrong
shape". Samples whose timestamp goes backwards (BrainFlow's BLE boards do
that) are dropped, as the live source does.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import datetime as dt
import difflib
import itertools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgetwin.errors import MalformedInput, UsageError
from edgetwin.sources.base import Source
from edgetwin.types import CHANNEL_UNITS, FloatArray, SampleBatch, channel_kind

_LOGGER = logging.getLogger(__name__)

FORMATS = ("csv", "brainflow")
DEFAULT_BOARD = "SYNTHETIC_BOARD"

# Channel names the CSV accepts (lower case); the first group is the DESIGN.md contract,
# the second the extra channels BrainFlow boards carry (kept in the store, not interpreted).
_CHANNEL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"(hr|rr|spo2|temp|eda|ppg|battery|resp|marker)(_[a-z0-9]+)?",
    r"(ecg|eeg|emg|eog)_[a-z0-9]+",
    r"(accel|gyro|mag)_[xyz]",
    r"fnirs_[a-z0-9]+_[a-z0-9]+_[0-9]{3,4}",
    r"(optical|other|analog|rotation|resistance)_[a-z0-9_]+",
))
_EXAMPLES = ("timestamp", "hr", "rr", "spo2", "temp", "eda", "ppg", "ecg_i", "eeg_af7",
             "accel_x", "accel_y", "accel_z", "gyro_x", "fnirs_left_outer_730", "battery")
# Names people use for our columns, for the did-you-mean of an unknown column.
_ALIASES: dict[str, str] = {
    "heartrate": "hr", "heart_rate": "hr", "pulse": "hr", "bpm": "hr", "pulse_rate": "hr",
    "ibi": "rr", "rri": "rr", "rr_interval": "rr", "nn": "rr",
    "oxygen": "spo2", "sao2": "spo2", "spo2_pct": "spo2",
    "temperature": "temp", "skin_temp": "temp", "skin_temperature": "temp",
    "gsr": "eda", "scl": "eda", "skin_conductance": "eda", "bvp": "ppg",
    "acc_x": "accel_x", "acc_y": "accel_y", "acc_z": "accel_z",
    "ax": "accel_x", "ay": "accel_y", "az": "accel_z", "time": "timestamp", "t": "timestamp",
}
# Plausible range per channel kind in its canonical unit; outside it a unit is likely wrong.
_RANGES: dict[str, tuple[float, float, str]] = {
    "hr": (15.0, 300.0, "beats per minute"),
    "rr": (150.0, 3000.0, "milliseconds (not seconds)"),
    "spo2": (30.0, 100.0, "percent (not a 0-1 fraction)"),
    "temp": (10.0, 46.0, "degrees Celsius (not Fahrenheit)"),
    "eda": (0.0, 200.0, "microsiemens"),
    "battery": (0.0, 100.0, "percent"),
    "accel": (-64.0, 64.0, "g (not m/s²)"),
}
_UNIT_ALIASES: dict[str, str] = {
    "µs": "uS", "μs": "uS", "us": "uS", "°c": "degC", "degc": "degC", "c": "degC",
    "µv": "uV", "μv": "uV", "uv": "uV", "au": "a.u.", "a.u.": "a.u.", "a.u": "a.u.",
    "bpm": "bpm", "ms": "ms", "%": "%", "g": "g", "deg/s": "deg/s", "dps": "deg/s",
    "ohm": "ohm", "": "",
}
_HEADER_UNIT = re.compile(r"^\s*([^\[\(]+?)\s*(?:[\[\(]\s*([^\]\)]*?)\s*[\]\)])?\s*$")
# Seconds since the epoch, not relative seconds (below) and not milliseconds (above).
EPOCH_MIN, EPOCH_MAX = 1e8, 1e11  # 1973-03-03 .. year 5138
FUTURE_SLACK_S = 86_400.0  # timestamps up to a day ahead of this machine's clock are skew
# The widest real montages (high-density EEG, fNIRS) have a few hundred channels.
MAX_COLUMNS = 4096
_MAX_HEADER_CHARS = MAX_COLUMNS * 128
_CELL_CHARS = 256  # per column of a data line: generous for a number and its quotes
_MIN_LINE_CHARS = 1 << 16
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a non-UTF-8 byte


def read_recording(
    path: Path,
    stream: str,
    fmt: str | None = None,
    chunk_rows: int = 4096,
    *,
    board: int | str | None = None,
    preset: int | None = None,
    latest: float | None = None,
) -> Iterator[SampleBatch]:
    """Yield the recording at ``path`` as batches of at most ``chunk_rows`` samples.

    Timestamps after ``latest`` (default: now + ``FUTURE_SLACK_S``) are refused.
    """
    path = Path(path)
    if chunk_rows < 1:
        raise UsageError(f"chunk_rows must be positive, not {chunk_rows}")
    if not path.is_file():
        if path.exists():
            raise UsageError(f"recording {path} is not a regular file",
                             hint="ingest reads a file twice; copy a pipe or device to a file")
        raise UsageError(f"recording {path} does not exist", hint="check the path")
    fmt = detect_format(path) if fmt is None else fmt.lower()
    if fmt == "csv":
        if board is not None:
            raise UsageError("--board only applies to BrainFlow files",
                             hint="drop --board or pass --format brainflow")
        return _decoded(path, _read_csv(path, stream, chunk_rows, _latest(latest)))
    if fmt == "brainflow":
        return _decoded(
            path, _read_brainflow(path, stream, chunk_rows, board, preset, _latest(latest))
        )
    close = difflib.get_close_matches(fmt, FORMATS, n=1)
    raise UsageError(f"unknown recording format {fmt!r}",
                     hint=f"did you mean {close[0]!r}?" if close else f"use one of {FORMATS}")


def detect_format(path: Path) -> str:
    """``csv`` when the first line is a header, ``brainflow`` when it is tab-separated numbers."""
    line = _first_line(path)
    if line is None:
        raise MalformedInput(f"{path} is empty")
    first = line.strip().split(",")[0].split("\t")[0].strip().strip('"').lower()
    if first.startswith("timestamp"):
        return "csv"
    if "\t" in line and _is_number(first):
        return "brainflow"
    if "," in line and not _is_number(first):
        return "csv"  # a header, just not a valid one: the CSV reader says what is wrong
    raise MalformedInput(
        f"{path}:1: cannot tell the format: neither a CSV header starting with 'timestamp' "
        "nor BrainFlow's tab-separated numbers",
        hint="pass --format csv|brainflow",
    )


def parse_channel_header(name: str, *, line: int = 1, where: str = "") -> tuple[str, str]:
    """The channel name and canonical unit of one CSV header cell, or ``MalformedInput``."""
    match = _HEADER_UNIT.match(name)
    raw, unit_text = (match.group(1), match.group(2)) if match else (name, None)
    channel = raw.strip().lower()
    if not any(p.fullmatch(channel) for p in _CHANNEL_PATTERNS):
        close = [_ALIASES[channel]] if channel in _ALIASES else difflib.get_close_matches(
            channel, _EXAMPLES, n=1, cutoff=0.5)
        raise MalformedInput(
            f"{where}:{line}: unknown column {name!r}",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + "columns are named by type: hr, rr, spo2, temp, eda, ppg, ecg_<lead>, "
            "eeg_<site>, accel_x|y|z, gyro_x|y|z, fnirs_<source>_<detector>_<nm>, battery",
        )
    unit = _canonical_unit(channel)
    if unit_text is not None:
        given = _UNIT_ALIASES.get(unit_text.strip().lower(), unit_text.strip())
        if given != unit:
            raise MalformedInput(
                f"{where}:{line}: column {name!r} is in {unit_text!r} but {channel} must be in "
                f"{unit or 'no unit'}",
                hint="convert the column to the canonical unit of DESIGN.md",
            )
    return channel, unit


class ReplaySource(Source):
    """A recording played as a live source, at ``speed`` x real time (0: as fast as possible).

    In real time the timestamps are shifted so the first sample is 'now'; as
    fast as possible they are kept. The stream ends (cleanly) at the end of the
    file unless ``loop`` is set.
    """

    kind = "replay"

    def __init__(
        self,
        name: str,
        path: Path,
        fmt: str | None = None,
        *,
        stream: str | None = None,
        speed: float = 1.0,
        loop: bool = False,
        board: int | str | None = None,
        preset: int | None = None,
        chunk_rows: int = 4096,
        batch_s: float = 0.25,
    ) -> None:
        super().__init__(name)
        if speed < 0:
            raise UsageError(f"replay speed must be >= 0, not {speed}")
        if loop and speed == 0:
            raise UsageError("a looping replay needs a speed > 0",
                             hint="as fast as possible would repeat timestamps")
        self.path = Path(path)
        self.fmt = fmt
        self.stream_name = stream or name
        self.speed = speed
        self.loop = loop
        self.board = board
        self.preset = preset
        self.chunk_rows = chunk_rows
        self.batch_s = batch_s
        self._connected = False

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> ReplaySource:
        """A replay from ``{"kind": "replay", "path", "format"?, "speed"?, "loop"?, "board"?}``."""
        if "path" not in record:
            raise UsageError(f"replay {name!r} has no 'path'", hint="name the recording to play")
        speed = record.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(
                speed):
            raise UsageError(f"replay {name!r}: speed {speed!r} is not a number",
                             hint="0 plays as fast as possible, 1 in real time")
        preset = record.get("preset")
        if preset is not None and (isinstance(preset, bool) or not isinstance(preset, int)):
            raise UsageError(f"replay {name!r}: preset {preset!r} is not a whole number")
        fmt, stream = record.get("format"), record.get("stream")
        for key, value in (("format", fmt), ("stream", stream)):
            if value is not None and not isinstance(value, str):
                raise UsageError(f"replay {name!r}: {key} {value!r} is not text")
        return cls(
            name,
            Path(str(record["path"])),
            fmt,
            stream=stream,
            speed=float(speed),
            loop=record.get("loop", False) is True,
            board=record.get("board"),
            preset=preset,
        )

    def describe(self) -> dict[str, Any]:
        return {"file": self.path.name, "speed": self.speed}

    async def connect(self) -> None:
        """Check the file opens and has the right shape (reads its first chunk)."""
        it = read_recording(self.path, self.stream_name, self.fmt, 1, board=self.board,
                            preset=self.preset)
        await asyncio.to_thread(next, it, None)
        self._connected = True

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Yield the recording's batches, paced by their timestamps."""
        if not self._connected:
            raise UsageError(f"replay {self.name!r} is not connected")
        offset: float | None = None
        start_wall = time.time()
        first_t: float | None = None
        while True:
            it = read_recording(self.path, self.stream_name, self.fmt, self.chunk_rows,
                                board=self.board, preset=self.preset)
            last_t = -math.inf
            while (chunk := await asyncio.to_thread(next, it, None)) is not None:
                for batch in self._slices(chunk):
                    if self.speed > 0:
                        if offset is None:
                            first_t = batch.first_t
                            offset = start_wall - first_t
                        assert first_t is not None
                        due = start_wall + (batch.last_t - first_t) / self.speed
                        delay = due - time.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        out = _shifted(batch, offset)
                    else:
                        out = batch
                    last_t = out.last_t
                    self.counters.count(out)
                    yield out
            if not self.loop:
                return
            if offset is not None and math.isfinite(last_t):
                # Next lap continues right after this one, keeping time monotonic.
                start_wall = time.time()
                offset = None
                first_t = None

    async def close(self) -> None:
        self._connected = False

    def _slices(self, chunk: SampleBatch) -> Iterator[SampleBatch]:
        if self.speed == 0 or len(chunk) == 0:
            yield chunk
            return
        edges = np.searchsorted(
            chunk.t, np.arange(chunk.first_t, chunk.last_t, self.batch_s * self.speed)[1:]
        )
        for lo, hi in itertools.pairwise([0, *edges.tolist(), len(chunk)]):
            if hi > lo:
                yield SampleBatch(chunk.stream, chunk.channels, chunk.units, chunk.t[lo:hi],
                                  chunk.values[lo:hi], chunk.meta)


# -- CSV ---------------------------------------------------------------------------------


def _read_csv(path: Path, stream: str, chunk_rows: int, latest: float) -> Iterator[SampleBatch]:
    where = str(path)
    with _open_text(path) as fh:
        lines = _Lines(fh, where, _MAX_HEADER_CHARS, "the header")
        reader = csv.reader(lines)
        header = _first_row(_rows(reader, where))
        if header is None:
            raise MalformedInput(f"{where} is empty", hint="a CSV needs a header row")
        header_line = reader.line_num
        if len(header) > MAX_COLUMNS:
            raise MalformedInput(
                f"{where}:{header_line}: the header has {len(header)} columns, more than the "
                f"{MAX_COLUMNS} a recording may have",
                hint="split the channels over several files, one --stream each",
            )
        if not header or header[0].strip().strip("\ufeff").lower() != "timestamp":
            raise MalformedInput(
                f"{where}:{header_line}: the first column must be 'timestamp', "
                f"not {header[0] if header else ''!r}",
                hint="seconds since the Unix epoch, as a float",
            )
        parsed = [parse_channel_header(h, line=header_line, where=where) for h in header[1:]]
        channels = tuple(c for c, _ in parsed)
        units = tuple(u for _, u in parsed)
        seen: set[str] = set()
        for c in channels:  # linear: a set, not list.count per column
            if c in seen:
                raise MalformedInput(f"{where}:{header_line}: duplicate column {c!r}",
                                     hint="every channel may appear once")
            seen.add(c)
        width = len(header)
        lines.limit = max(_MIN_LINE_CHARS, width * _CELL_CHARS)
        lines.what = f"a row of {width} cells"
        checks = [(j, _RANGES[channel_kind(c)]) for j, c in enumerate(channels)
                  if channel_kind(c) in _RANGES]
        last_t = -math.inf
        rows: list[list[str]] = []
        numbers: list[int] = []
        for row in _rows(reader, where):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise MalformedInput(
                    f"{where}:{reader.line_num}: {len(row)} cells but the header has {width}",
                    hint="every row needs one cell per column (empty for missing)",
                )
            rows.append(row)
            numbers.append(reader.line_num)
            if len(rows) >= chunk_rows:
                batch = _csv_chunk(rows, numbers, where, stream, channels, units, checks, last_t,
                                   latest)
                last_t = batch.last_t
                rows, numbers = [], []
                yield batch
        if rows:
            yield _csv_chunk(rows, numbers, where, stream, channels, units, checks, last_t,
                             latest)


def _csv_chunk(
    rows: list[list[str]],
    lines: list[int],
    where: str,
    stream: str,
    channels: tuple[str, ...],
    units: tuple[str, ...],
    checks: list[tuple[int, tuple[float, float, str]]],
    last_t: float,
    latest: float,
) -> SampleBatch:
    data = _to_floats(rows, lines, where, len(channels) + 1, ("timestamp", *channels))
    t = np.ascontiguousarray(data[:, 0])
    values = np.ascontiguousarray(data[:, 1:])
    _check_timestamps(t, lines, where, last_t, latest)
    values[np.isinf(values)] = np.nan
    for j, (lo, hi, unit) in checks:
        col = values[:, j]
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero((col < lo) | (col > hi))
        if bad.size:
            i = int(bad[0])
            raise MalformedInput(
                f"{where}:{lines[i]}: {channels[j]} = {col[i]:g} is outside {lo:g}..{hi:g}",
                hint=f"{channels[j]} must be in {unit}",
            )
    return SampleBatch(stream, channels, units, t, values)


def _check_timestamps(
    t: FloatArray, lines: list[int], where: str, last_t: float, latest: float
) -> None:
    _check_window(t, lines, where, latest)
    prev = np.concatenate(([last_t], t[:-1]))
    back = np.flatnonzero(t < prev)
    if back.size:
        i = int(back[0])
        raise MalformedInput(
            f"{where}:{lines[i]}: timestamp {t[i]:.17g} is earlier than the row before "
            f"({prev[i]:.17g})",
            hint="sort the file by timestamp",
        )


def _check_window(t: FloatArray, lines: list[int], where: str, latest: float) -> None:
    """Every timestamp present, in epoch seconds, and not after ``latest``."""
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise MalformedInput(f"{where}:{lines[int(bad[0])]}: the timestamp is missing",
                             hint="every row needs a timestamp")
    out = np.flatnonzero((t < EPOCH_MIN) | (t > EPOCH_MAX))
    if out.size:
        i = int(out[0])
        unit = "milliseconds" if t[i] > EPOCH_MAX else "relative seconds"
        raise MalformedInput(
            f"{where}:{lines[i]}: timestamp {t[i]:.17g} looks like {unit}",
            hint="timestamps are seconds since the Unix epoch (e.g. 1700000000.25)",
        )
    future = np.flatnonzero(t > latest)
    if future.size:
        i = int(future[0])
        raise MalformedInput(
            f"{where}:{lines[i]}: timestamp {t[i]:.17g} is {_utc(float(t[i]))}, after "
            f"{_utc(latest)} (a day past this machine's clock)",
            hint="check the recorder's clock; pass --allow-future to ingest it as it is",
        )


def _to_floats(
    rows: list[list[str]], lines: list[int], where: str, width: int,
    names: tuple[str, ...] = (),
) -> FloatArray:
    """Parse a chunk of string cells; empty cells are NaN. Errors name line and column."""
    flat = [c if c.strip() else "nan" for c in itertools.chain.from_iterable(rows)]
    try:
        return np.array(flat, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        pass
    for row, line in zip(rows, lines, strict=True):
        for j, cell in enumerate(row):
            if cell.strip() and not _is_number(cell):
                col = repr(names[j]) if j < len(names) else str(j + 1)
                raise MalformedInput(f"{where}:{line}: column {col}: {cell!r} is not a number",
                                     hint="use a plain decimal number, or leave it empty")
    raise MalformedInput(f"{where}:{lines[0]}: unreadable numbers")  # pragma: no cover


# -- BrainFlow files ---------------------------------------------------------------------


def _read_brainflow(
    path: Path,
    stream: str,
    chunk_rows: int,
    board: int | str | None,
    preset: int | None,
    latest: float,
) -> Iterator[SampleBatch]:
    from edgetwin.sources.brainflow import board_presets, preset_layout, resolve_board

    where = str(path)
    board_id = resolve_board(board if board is not None else DEFAULT_BOARD)
    first = _first_line(path)
    if first is None:
        raise MalformedInput(f"{where} is empty")
    width = len(first.rstrip("\r\n").split("\t"))
    layouts = [preset_layout(board_id, p) for p in board_presets(board_id)]
    if preset is not None:
        layouts = [lay for lay in layouts if lay.preset == preset]
        if not layouts:
            raise UsageError(f"board {_board_name(board_id)} has no preset {preset}")
    matching = [lay for lay in layouts if lay.num_rows == width]
    if not matching:
        raise MalformedInput(
            f"playback file of the wrong shape: {where}:1 has {width} columns but "
            f"{_board_name(board_id)} has "
            + " / ".join(f"{lay.num_rows} ({lay.preset_name})" for lay in layouts),
            hint=_boards_with_width(width),
        )
    layout = matching[0]
    last_t = -math.inf
    dropped = 0
    with _open_text(path) as fh:
        source = _Lines(fh, where, max(_MIN_LINE_CHARS, width * _CELL_CHARS),
                        f"a line of {width} fields")
        reader = csv.reader(source, delimiter="\t")
        rows: list[list[str]] = []
        lines: list[int] = []

        def flush() -> SampleBatch:
            nonlocal last_t, dropped
            data = _to_floats(rows, lines, where, width).T
            _check_window(data[layout.timestamp_row], lines, where, latest)
            batch, n = layout.batch(stream, data, last_t)
            dropped += n
            if len(batch):
                last_t = batch.last_t
            return batch

        for raw in _rows(reader, where):
            if not raw:
                continue
            row = raw[:-1] if raw[-1] == "" else raw  # a trailing tab
            if len(row) != width:
                raise MalformedInput(
                    f"playback file of the wrong shape: {where}:{reader.line_num} has "
                    f"{len(row)} columns, the lines before {width}",
                )
            rows.append(row)
            lines.append(reader.line_num)
            if len(rows) >= chunk_rows:
                batch = flush()
                rows, lines = [], []
                if len(batch):
                    yield batch
        if rows:
            batch = flush()
            if len(batch):
                yield batch
    if dropped:
        _LOGGER.warning("%s: dropped %d samples whose timestamp went backwards", where, dropped)


def _boards_with_width(width: int) -> str:
    from edgetwin.sources.brainflow import board_presets, preset_layout, resolve_board

    names = []
    for name in ("SYNTHETIC_BOARD", "CYTON_BOARD", "CYTON_DAISY_BOARD", "GANGLION_BOARD",
                 "MUSE_S_BOARD", "MUSE_2_BOARD", "MUSE_S_ATHENA_BOARD"):
        bid = resolve_board(name)
        for p in board_presets(bid):
            lay = preset_layout(bid, p)
            if lay.num_rows == width:
                names.append(f"{name} ({lay.preset_name})")
    if names:
        return f"pass --board: {width} columns fit {', '.join(names)}"
    return "pass --board NAME with the board that recorded it"


def _board_name(board_id: int) -> str:
    from edgetwin.sources.brainflow import board_name

    return board_name(board_id)


# -- helpers -----------------------------------------------------------------------------


def _canonical_unit(channel: str) -> str:
    kind = channel_kind(channel)
    if kind in CHANNEL_UNITS:
        return CHANNEL_UNITS[kind]
    return {"emg": "uV", "eog": "uV", "resistance": "ohm"}.get(kind, "a.u." if kind in (
        "mag", "optical") else "")


def _open_text(path: Path) -> TextIO:
    return path.open("r", encoding="utf-8-sig", newline="")


def _latest(latest: float | None) -> float:
    return time.time() + FUTURE_SLACK_S if latest is None else latest


def _utc(t: float) -> str:
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{t:.17g} s after the epoch"


class _Lines:
    """The physical lines of a text file, none longer than ``limit`` (bounded memory).

    ``csv.reader`` reads from it; a longer line is refused before it is read whole.
    """

    def __init__(self, fh: TextIO, where: str, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.line = 0
        self._where = where
        self._readline = fh.readline

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.line += 1
        if len(line) > self.limit:
            raise MalformedInput(
                f"{self._where}:{self.line}: line longer than {self.limit:,} characters, "
                f"too long for {self.what}",
                hint=f"a recording has at most {MAX_COLUMNS} columns of numbers; "
                "is this the right file?",
            )
        return line


def _rows(reader: Any, where: str) -> Iterator[list[str]]:
    """The reader's rows; a CSV syntax error (a cell over the field limit) names its line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedInput(
                f"{where}:{reader.line_num}: not readable as CSV: {exc}",
                hint="cells hold numbers (at most "
                f"{csv.field_size_limit():,} characters) with balanced quotes",
            ) from None
        yield row


def _decoded(path: Path, batches: Iterator[SampleBatch]) -> Iterator[SampleBatch]:
    """``batches``, with text that is not UTF-8 reported by line and character."""
    try:
        yield from batches
    except UnicodeDecodeError:
        raise _undecodable(path) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _first_line(path: Path) -> str | None:
    """The first line that is not blank, read within the header's bound; None if none."""
    try:
        with _open_text(path) as fh:
            return next((ln for ln in _Lines(fh, str(path), _MAX_HEADER_CHARS, "the header")
                         if ln.strip()), None)
    except UnicodeDecodeError:
        raise _undecodable(path) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _undecodable(path: Path) -> MalformedInput:
    """Where the first byte that is not UTF-8 sits (the text decoder reads ahead in blocks,
    so its own error does not say): one pass over the file in constant memory."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    line, col = 1, 0
    hint = "save it as UTF-8, e.g. 'iconv -f latin1 -t utf-8 FILE > FILE.utf8.csv'"
    with path.open("rb") as fh:
        while True:
            block = fh.read(1 << 16)
            text = decoder.decode(block, final=not block)
            bad = _BAD_BYTE.search(text)
            ok = text if bad is None else text[: bad.start()]
            newlines = ok.count("\n")
            line += newlines
            col = len(ok) - ok.rfind("\n") - 1 if newlines else col + len(ok)
            if bad is not None:
                byte = ord(bad.group()) - 0xDC00
                return MalformedInput(
                    f"{path}:{line}:{col + 1}: byte 0x{byte:02x} is not UTF-8 text "
                    "(Latin-1 or binary?)",
                    hint=hint,
                )
            if not block:
                break
    return MalformedInput(f"{path}: not UTF-8 text", hint=hint)  # pragma: no cover


def _first_row(reader: Any) -> list[str] | None:
    for row in reader:
        if row and any(c.strip() for c in row):
            return list(row)
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shifted(batch: SampleBatch, offset: float) -> SampleBatch:
    return SampleBatch(batch.stream, batch.channels, batch.units, batch.t + offset, batch.values,
                       batch.meta)
