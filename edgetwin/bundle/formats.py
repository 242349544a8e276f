"""Open formats for a stream's samples: EDF+ (regular biosignals), SNIRF (fNIRS), CSV (the rest).

Which format a stream gets is decided by :func:`plan_stream` from one pass
over its samples:

* **SNIRF** when every channel is ``fnirs_<source>_<detector>_<nm>`` and the
  layout never changed: SNIRF keeps every timestamp and float64 values, so it
  is lossless.
* **EDF+** when the samples sit on a fixed-rate grid (within half a sample
  period, split into continuous segments at gaps): 16-bit values over each
  channel's own range, timestamps rebuilt as ``t0 + k / rate``. NaN is the
  reserved digital value -32768.
* **CSV** (the DESIGN.md format: ``timestamp`` first, one column per channel)
  for everything irregular: RR intervals (one row per beat), heart rate
  notifications, streams whose layout changed or that break into many
  segments. Lossless (shortest round-trip float text).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetwin.errors import DataCorrupt
from edgetwin.types import FloatArray, SampleBatch

FNIRS = re.compile(r"^fnirs_([A-Za-z0-9]+)_([A-Za-z0-9]+)_(\d+(?:\.\d+)?)$")
EDF_NAN = -32768
_DMIN, _DMAX = -32768, 32767
_RECORD_CHOICES = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50)
_MAX_SEGMENTS = 1000
_MIN_SEGMENT_S = 60.0  # on average: more fragmented streams go to CSV
_CSV_BLOCK = 8192
_READ_BLOCK = 65536


@dataclass
class Segment:
    """A run of samples on one fixed-rate grid: rows [start, stop) of the stream in read order."""

    start: int
    stop: int
    t0: float

    @property
    def samples(self) -> int:
        return self.stop - self.start


@dataclass
class StreamPlan:
    """How one stream goes into the bundle, decided from a scan of its samples."""

    name: str
    stem: str
    format: str  # "edf" | "snirf" | "csv"
    reason: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    samples: int
    first_t: float | None
    last_t: float | None
    meta: dict[str, Any]
    rate_hz: float | None = None
    record_s: float | None = None
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


class _Scan:
    """Running facts about a stream: layouts, ranges, grid segments."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.layouts: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.n = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.lo: FloatArray | None = None
        self.hi: FloatArray | None = None
        self.segments: list[Segment] = []
        self.grid_ok = True
        self.meta: dict[str, Any] = {}

    def add(self, b: SampleBatch) -> None:
        layout = (b.channels, b.units)
        if layout not in self.layouts:
            self.layouts.append(layout)
        self.meta = dict(b.meta)
        if len(b) == 0:
            return
        if self.first_t is None:
            self.first_t = b.first_t
        self.last_t = b.last_t if self.last_t is None else max(self.last_t, b.last_t)
        if len(self.layouts) == 1:
            finite = np.isfinite(b.values)
            lo = np.where(finite, b.values, np.inf).min(axis=0)
            hi = np.where(finite, b.values, -np.inf).max(axis=0)
            self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        if self.grid_ok:
            self._grid(b.t)
        self.n += len(b)

    def _grid(self, t: FloatArray) -> None:
        if self.rate is None:
            if len(t) < 3:
                self.grid_ok = False
                return
            dt_med = float(np.median(np.diff(t)))
            if not dt_med > 0:
                self.grid_ok = False
                return
            self.rate = _nice_rate(1.0 / dt_med)
            if self.rate is None:
                self.grid_ok = False
                return
        period = 1.0 / self.rate
        i = 0
        n = len(t)
        while i < n:
            if not self.segments:
                self.segments.append(Segment(self.n + i, self.n + i, float(t[i])))
            seg = self.segments[-1]
            expect = seg.t0 + (seg.samples + np.arange(n - i)) * period
            bad = np.flatnonzero(np.abs(t[i:] - expect) > 0.5 * period)
            good = int(bad[0]) if bad.size else n - i
            seg.stop += good
            i += good
            if i < n:
                # a gap, a jump or drift past half a sample: a new segment starts here
                self.segments.append(Segment(self.n + i, self.n + i, float(t[i])))
                if len(self.segments) > _MAX_SEGMENTS:
                    self.grid_ok = False
                    return


def safe_stem(name: str, index: int) -> str:
    """A file name stem for a stream: its name when plain, else ``stream-<index>``."""
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name) and ".." not in name:
        return name
    return f"stream-{index}"


def plan_stream(
    name: str, stem: str, batches: Iterator[SampleBatch], rate_hint: float | None
) -> StreamPlan:
    """Scan a stream once and decide its format."""
    scan = _Scan(rate_hint)
    for b in batches:
        scan.add(b)
    channels, units = scan.layouts[-1] if scan.layouts else ((), ())
    plan = StreamPlan(
        name=name, stem=stem, format="csv", reason="", channels=channels, units=units,
        samples=scan.n, first_t=scan.first_t, last_t=scan.last_t, meta=scan.meta,
    )
    if len(scan.layouts) > 1:
        plan.reason = "its channel layout changed over time"
        plan.channels = tuple(dict.fromkeys(c for lay in scan.layouts for c in lay[0]))
        unit_of = {c: u for lay in scan.layouts for c, u in zip(*lay, strict=True)}
        plan.units = tuple(unit_of[c] for c in plan.channels)
        return plan
    if scan.n == 0:
        plan.reason = "it holds no samples in the range"
        return plan
    if channels and all(FNIRS.match(c) for c in channels):
        plan.format, plan.reason = "snirf", "fNIRS intensities: SNIRF keeps every timestamp"
        return plan
    span = (scan.last_t or 0.0) - (scan.first_t or 0.0)
    fragmented = len(scan.segments) > 8 and span / len(scan.segments) < _MIN_SEGMENT_S
    record = _record_for(scan.rate) if scan.rate else None
    if not scan.grid_ok or scan.rate is None or record is None or fragmented:
        plan.reason = "irregular timestamps (no fixed sample rate)"
        return plan
    assert scan.lo is not None
    assert scan.hi is not None
    plan.format, plan.reason = "edf", f"regular {scan.rate:g} Hz samples"
    plan.rate_hz = scan.rate
    plan.record_s = float(record)
    plan.segments = scan.segments
    plan.lo = [float(x) for x in scan.lo]
    plan.hi = [float(x) for x in scan.hi]
    return plan


# ======================================================================================
# EDF+
# ======================================================================================


def edf_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Header physical min/max (8 characters each) that leave -32768 free for NaN."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        lo, hi = -1.0, 1.0
    if hi - lo < 1e-9 * max(1.0, abs(hi)):
        lo, hi = lo - 1.0, hi + 1.0
    step = (hi - lo) / 65533.0
    pmin = _fit8(lo - 2 * step, up=False)
    pmax = _fit8(hi + step, up=True)
    return pmin, pmax


def edf_quantize(x: FloatArray, pmin: float, pmax: float) -> np.ndarray[Any, np.dtype[np.int32]]:
    """Physical values to digital ones; NaN to the reserved -32768."""
    scale = (_DMAX - _DMIN) / (pmax - pmin)
    d = np.rint((x - pmin) * scale) + _DMIN
    d = np.clip(d, _DMIN + 1, _DMAX)
    out = np.where(np.isfinite(x), d, EDF_NAN)
    return out.astype(np.int32)


def edf_dequantize(d: np.ndarray[Any, Any], pmin: float, pmax: float) -> FloatArray:
    """Digital values back to physical ones; -32768 to NaN."""
    scale = (pmax - pmin) / (_DMAX - _DMIN)
    x = (d.astype(np.float64) - _DMIN) * scale + pmin
    return np.where(d == EDF_NAN, np.nan, x)


class EdfSegmentWriter:
    """One EDF+ file for one grid segment, written record by record."""

    def __init__(self, path: Path, plan: StreamPlan, seg: Segment) -> None:
        import pyedflib

        assert plan.rate_hz is not None
        self.path = path
        n_ch = len(plan.channels)
        self.bounds = [edf_bounds(lo, hi) for lo, hi in zip(plan.lo, plan.hi, strict=True)]
        self._w = pyedflib.EdfWriter(str(path), n_ch, file_type=pyedflib.FILETYPE_EDFPLUS)
        labels = edf_labels(plan.channels)
        headers: list[dict[str, str | int | float | None]] = [
            {
                "label": labels[i],
                "dimension": plan.units[i][:8],
                "sample_frequency": plan.rate_hz,
                "physical_min": self.bounds[i][0],
                "physical_max": self.bounds[i][1],
                "digital_min": _DMIN,
                "digital_max": _DMAX,
                "transducer": "",
                "prefilter": "",
            }
            for i in range(n_ch)
        ]
        self._w.setSignalHeaders(headers)
        # pyedflib picks the record duration that holds whole samples (1 s for integer rates)
        self.per_record = int(self._w.get_smp_per_record(0))
        self.record_s = float(self._w.record_duration)
        self._w.setPatientCode("X")
        self._w.setPatientName("X")
        self._w.setEquipment("edgetwin")
        self._w.setRecordingAdditional(f"stream_{plan.stem[:40]}")
        start = dt.datetime.fromtimestamp(seg.t0, tz=dt.UTC).replace(tzinfo=None)
        self._w.setStartdatetime(start)
        self._pending: list[np.ndarray[Any, Any]] = []
        self._pending_n = 0
        self.samples = 0

    def add(self, values: FloatArray) -> None:
        """Append rows (samples x channels) of physical values."""
        d = np.empty(values.shape, dtype=np.int32)
        for i, (pmin, pmax) in enumerate(self.bounds):
            d[:, i] = edf_quantize(values[:, i], pmin, pmax)
        self._pending.append(d)
        self._pending_n += len(d)
        self.samples += len(d)
        if self._pending_n >= self.per_record:
            self._flush(final=False)

    def close(self) -> None:
        """Write the last (padded) record and close the file."""
        self._flush(final=True)
        self._w.close()

    def _flush(self, *, final: bool) -> None:
        if not self._pending:
            if final and self.samples == 0:
                self._pending = [np.full((self.per_record, len(self.bounds)), EDF_NAN, np.int32)]
            else:
                return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        full = (len(block) // self.per_record) * self.per_record
        if final and full < len(block):
            pad = self.per_record - (len(block) - full)
            block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
            full = len(block)
        for r in range(0, full, self.per_record):
            rec = np.ascontiguousarray(block[r : r + self.per_record].T).reshape(-1)
            if self._w.blockWriteDigitalSamples(rec) < 0:
                raise OSError(f"writing {self.path} failed")
        rest = block[full:]
        self._pending = [rest] if len(rest) else []
        self._pending_n = len(rest)


def edf_labels(channels: tuple[str, ...]) -> list[str]:
    """EDF labels (16 characters, unique): the channel name, shortened when needed."""
    out = []
    for i, c in enumerate(channels):
        out.append(c if len(c) <= 16 else f"{c[:12]}~{i:03d}")
    return out


def read_edf(
    path: Path, stream: str, channels: tuple[str, ...], units: tuple[str, ...],
    t0: float, rate: float, samples: int, meta: dict[str, Any],
) -> Iterator[SampleBatch]:
    """Batches of an EDF+ segment written by :class:`EdfSegmentWriter` (exactly ``samples``)."""
    import pyedflib

    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as exc:
        raise DataCorrupt(f"{path.name} is not a readable EDF+ file: {exc}") from exc
    try:
        if reader.signals_in_file != len(channels):
            raise DataCorrupt(
                f"{path.name} holds {reader.signals_in_file} signals; the manifest lists "
                f"{len(channels)} channels"
            )
        have = int(min(reader.getNSamples()))
        if have < samples:
            raise DataCorrupt(f"{path.name} holds {have} samples; the manifest says {samples}")
        bounds = [
            (float(reader.getPhysicalMinimum(i)), float(reader.getPhysicalMaximum(i)))
            for i in range(len(channels))
        ]
        for start in range(0, samples, _READ_BLOCK):
            n = min(_READ_BLOCK, samples - start)
            cols = [
                edf_dequantize(reader.readSignal(i, start, n, digital=True), *bounds[i])
                for i in range(len(channels))
            ]
            t = t0 + (start + np.arange(n, dtype=np.float64)) / rate
            yield SampleBatch(stream, channels, units, t, np.column_stack(cols), dict(meta))
    finally:
        reader.close()


# ======================================================================================
# SNIRF
# ======================================================================================


class SnirfWriter:
    """A SNIRF 1.1 file for one fNIRS stream; rows appended to resizable datasets."""

    def __init__(self, path: Path, plan: StreamPlan) -> None:
        import h5py

        self.path = path
        self.t_ref = plan.first_t or 0.0
        self.samples = 0
        n_ch = len(plan.channels)
        parsed = [FNIRS.match(c) for c in plan.channels]
        sources = list(dict.fromkeys(m.group(1) for m in parsed if m))
        detectors = list(dict.fromkeys(m.group(2) for m in parsed if m))
        wavelengths = list(dict.fromkeys(float(m.group(3)) for m in parsed if m))
        # through a Python file: HDF5 cannot resolve the path of a staged member (no name)
        self._raw = path.open("w+b")
        self._f = h5py.File(self._raw, "w")
        s = h5py.string_dtype("utf-8")
        f = self._f
        f.create_dataset("formatVersion", data="1.1", dtype=s)
        nirs = f.create_group("nirs")
        tags = nirs.create_group("metaDataTags")
        start = dt.datetime.fromtimestamp(self.t_ref, tz=dt.UTC)
        for key, value in (
            ("SubjectID", "anonymous"),
            ("MeasurementDate", start.strftime("%Y-%m-%d")),
            ("MeasurementTime", start.strftime("%H:%M:%S.%fZ")),
            ("LengthUnit", "cm"),
            ("TimeUnit", "s"),
            ("FrequencyUnit", "Hz"),
            ("edgetwinStream", plan.name),
        ):
            tags.create_dataset(key, data=value, dtype=s)
        tags.create_dataset("edgetwinStartEpoch", data=np.float64(self.t_ref))
        data = nirs.create_group("data1")
        chunk_rows = max(1, 65536 // max(1, n_ch))
        self._series = data.create_dataset(
            "dataTimeSeries", shape=(0, n_ch), maxshape=(None, n_ch), dtype="f8",
            chunks=(chunk_rows, n_ch),
        )
        self._time = data.create_dataset(
            "time", shape=(0,), maxshape=(None,), dtype="f8", chunks=(chunk_rows,)
        )
        for i, m in enumerate(parsed, start=1):
            assert m is not None
            ml = data.create_group(f"measurementList{i}")
            ml.create_dataset("sourceIndex", data=np.int32(sources.index(m.group(1)) + 1))
            ml.create_dataset("detectorIndex", data=np.int32(detectors.index(m.group(2)) + 1))
            ml.create_dataset(
                "wavelengthIndex", data=np.int32(wavelengths.index(float(m.group(3))) + 1)
            )
            ml.create_dataset("dataType", data=np.int32(1))  # continuous-wave amplitude
            ml.create_dataset("dataTypeIndex", data=np.int32(1))
            # no dataUnit: raw intensity is arbitrary units, which SNIRF readers reject as a unit
        probe = nirs.create_group("probe")
        probe.create_dataset("wavelengths", data=np.asarray(wavelengths, dtype=np.float64))
        # positions are unknown to the twin: spread on a line so no two optodes coincide
        distance = float(plan.meta.get("distance_cm", 3.0) or 3.0)
        src_pos = np.array([[i * 2 * distance, 0.0, 0.0] for i in range(len(sources))])
        det_pos = np.array([[i * 2 * distance + distance, 0.0, 0.0] for i in range(len(detectors))])
        probe.create_dataset("sourcePos3D", data=src_pos)
        probe.create_dataset("detectorPos3D", data=det_pos)
        probe.create_dataset("sourcePos2D", data=src_pos[:, :2])
        probe.create_dataset("detectorPos2D", data=det_pos[:, :2])
        probe.create_dataset("sourceLabels", data=[f"S{x}" for x in sources], dtype=s)
        probe.create_dataset("detectorLabels", data=[f"D{x}" for x in detectors], dtype=s)

    def add(self, t: FloatArray, values: FloatArray) -> None:
        n0 = self.samples
        n1 = n0 + len(t)
        self._series.resize((n1, self._series.shape[1]))
        self._series[n0:n1] = values
        self._time.resize((n1,))
        self._time[n0:n1] = t - self.t_ref
        self.samples = n1

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            self._raw.close()


def read_snirf(
    path: Path, stream: str, channels: tuple[str, ...], units: tuple[str, ...],
    t_ref: float, samples: int, meta: dict[str, Any],
) -> Iterator[SampleBatch]:
    """Batches of a SNIRF file written by :class:`SnirfWriter`."""
    import h5py

    raw = path.open("rb")  # a Python file: HDF5 cannot resolve a staged member's path
    try:
        f = h5py.File(raw, "r")
    except OSError as exc:
        raw.close()
        raise DataCorrupt(f"{path.name} is not a readable SNIRF (HDF5) file: {exc}") from exc
    with raw, f:
        try:
            series = f["nirs/data1/dataTimeSeries"]
            time = f["nirs/data1/time"]
        except KeyError as exc:
            raise DataCorrupt(f"{path.name} lacks nirs/data1 (not a SNIRF file)") from exc
        if series.shape != (samples, len(channels)) or time.shape != (samples,):
            raise DataCorrupt(
                f"{path.name} holds {series.shape} values; the manifest says "
                f"{samples} x {len(channels)}"
            )
        for start in range(0, samples, _READ_BLOCK):
            stop = min(samples, start + _READ_BLOCK)
            t = np.asarray(time[start:stop], dtype=np.float64) + t_ref
            v = np.asarray(series[start:stop], dtype=np.float64)
            yield SampleBatch(stream, channels, units, t, v, dict(meta))


# ======================================================================================
# CSV
# ======================================================================================


def fmt(x: float) -> str:
    """A float as the shortest text that reads back exactly; '' for NaN."""
    return "" if math.isnan(x) else repr(float(x))


class CsvStreamWriter:
    """``timestamp`` then one column per channel; batches with fewer channels leave cells empty."""

    def __init__(self, path: Path, channels: tuple[str, ...]) -> None:
        self._f = path.open("w", encoding="utf-8", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(["timestamp", *channels])
        self._col = {c: i for i, c in enumerate(channels)}
        self.samples = 0

    def add(self, b: SampleBatch) -> None:
        idx = [self._col[c] for c in b.channels]
        width = len(self._col)
        rows = []
        for k in range(len(b)):
            cells = [""] * width
            for j, i in enumerate(idx):
                cells[i] = fmt(b.values[k, j])
            rows.append([fmt(b.t[k]), *cells])
        self._w.writerows(rows)
        self.samples += len(b)

    def close(self) -> None:
        self._f.close()


def read_csv(
    path: Path, stream: str, channels: tuple[str, ...], units: tuple[str, ...],
    meta: dict[str, Any],
) -> Iterator[SampleBatch]:
    """Batches of a stream CSV; DataCorrupt names the line of a bad cell."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["timestamp", *channels]:
            raise DataCorrupt(f"{path.name}: its header does not match the manifest's channels")
        t_buf: list[float] = []
        v_buf: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(channels) + 1:
                raise DataCorrupt(f"{path.name}, line {line_no}: {len(row)} cells")
            try:
                t_buf.append(float(row[0]))
                v_buf.append([float(c) if c else math.nan for c in row[1:]])
            except ValueError as exc:
                raise DataCorrupt(f"{path.name}, line {line_no}: not a number ({exc})") from exc
            if len(t_buf) >= _CSV_BLOCK:
                yield _batch(stream, channels, units, t_buf, v_buf, meta)
                t_buf, v_buf = [], []
        if t_buf:
            yield _batch(stream, channels, units, t_buf, v_buf, meta)


def _batch(
    stream: str, channels: tuple[str, ...], units: tuple[str, ...], t: list[float],
    v: list[list[float]], meta: dict[str, Any],
) -> SampleBatch:
    values = np.asarray(v, dtype=np.float64).reshape(len(t), len(channels))
    t_arr = np.asarray(t, dtype=np.float64)
    if not np.isfinite(t_arr).all():
        raise DataCorrupt(f"stream {stream!r}: a CSV row has a non-finite timestamp")
    return SampleBatch(stream, channels, units, t_arr, values, dict(meta))


# ======================================================================================
# helpers
# ======================================================================================


def _nice_rate(rate: float) -> float | None:
    """A measured rate snapped to the value a device declares (250.0001 -> 250)."""
    for digits in (0, 1, 2, 3):
        snapped = round(rate, digits)
        if snapped > 0 and abs(snapped - rate) <= 1e-4 * rate:
            return float(snapped)
    return None


def _record_for(rate: float) -> int | None:
    """A data-record duration (s) that holds a whole number of samples at ``rate``."""
    for d in _RECORD_CHOICES:
        n = rate * d
        if abs(n - round(n)) < 1e-9 and round(n) >= 1:
            return d
    return None


def _fit8(x: float, *, up: bool) -> float:
    """``x`` rounded outward to a number whose text fits EDF's 8-character field."""
    for digits in range(7, -1, -1):
        scale = 10.0**digits
        v = (math.ceil(x * scale) if up else math.floor(x * scale)) / scale
        text = f"{v:.{digits}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if len(text) <= 8:
            return float(text)
    raise DataCorrupt(f"value {x} does not fit an EDF header field")
