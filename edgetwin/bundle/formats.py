"""Open formats for a stream's samples: EDF+ (regular biosignals), SNIRF (fNIRS), CSV (the rest).

Which format a stream gets is decided by :func:`plan_stream` from one pass
over its samples:

* **SNIRF** when every channel is ``fnirs_<source>_<detector>_<nm>`` and the
  layout never changed: SNIRF keeps every timestamp and float64 values, so it
  is lossless.
* **EDF+** when the stream has a sample rate (declared by its source, else
  measured and snapped to a round value): one EDF+C file per *recording*,
  16-bit values over each channel's own range, NaN as the reserved digital
  value -32768. Timestamp jitter does not split a recording: samples sit on
  the nominal grid one after another. A *gap* is a step of more than
  ``max(5 sample periods, 50 ms)`` that leaves the samples that many seconds
  behind the grid (samples are missing, not merely late or bunched); gaps of
  up to 60 s are filled with -32768 and annotated ``BAD_ACQ_SKIP`` (MNE drops
  such spans with ``reject_by_annotation``); a longer break starts a new
  recording (``<stream>.recNNN.edf``). Each EDF starts on a whole UTC second
  (readers disagree on EDF+ sub-second starts), the time before the first
  sample is filled the same way. Beside each EDF, ``<same>.times.npy`` holds
  the exact Unix time of every EDF sample up to the last real one (NaN where
  the EDF holds filler), so import restores every timestamp exactly.
  pyedflib writes EDF+C only (not EDF+D), hence filled gaps.
* **CSV** (the DESIGN.md format: ``timestamp`` first, one column per channel)
  for everything else, lossless (shortest round-trip float text): RR intervals
  (one row per beat), irregular streams (no rate, e.g. spot checks), streams
  whose layout changed, more than one gap per 2 s on average, more than 512
  channels, times outside the years 1985-2084 an EDF header can date (e.g. a
  recording stamped from 0), and values EDF cannot hold (infinities;
  magnitudes or resolutions beyond its 8-character header fields, e.g. 1e308;
  a spike so far outside a channel's usual 1st-99th percentile range that 16
  bits would keep fewer than 64 steps of it). The manifest's ``why`` says
  which rule applied.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import math
import re
import tokenize
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgetwin.errors import DataCorrupt
from edgetwin.types import FloatArray, SampleBatch, channel_kind

FNIRS = re.compile(r"^fnirs_([A-Za-z0-9]+)_([A-Za-z0-9]+)_(\d+(?:\.\d+)?)$")
EDF_NAN = -32768
GAP_ANNOTATION = "BAD_ACQ_SKIP"
_EDF_NOTE_BYTES = 40  # edflib writes at most this much of an annotation's text
EDF_MAX_CHANNELS = 512  # edflib takes 640 signals, annotation signals included
_DMIN, _DMAX = -32768, 32767
_RECORD_CHOICES = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50)
GAP_PERIODS = 5
MIN_GAP_S = 0.05
RECORDING_BREAK_S = 60.0
_MAX_GAPS = 100_000  # bounds the plan's memory; far past the 1-per-2-s rule anyway
_RATE_PROBE = 2048  # timestamps used to measure a rate the source did not declare
_RATE_HINT_KEYS = ("rate_hz", "sampling_rate_hz")
DEFAULT_DISTANCE_CM = 3.0  # the features' default too
_USUAL_MIN_ROWS = 32
_EDF_FIRST_S = 473_385_600.0  # 1985-01-01: EDF dates are dd.mm.yy for 1985-2084 only
_EDF_END_S = 3_644_697_600.0  # 2085-01-01
_MIN_LEVELS = 64  # 16-bit steps within a channel's usual range, below which EDF loses it
_CSV_BLOCK = 8192
_READ_BLOCK = 65536
_FILL_BLOCK = 65536


class StreamChanged(ValueError):
    """The store held other samples when they were written than when they were planned."""


@dataclass
class Run:
    """Rows [start, stop) of the stream (read order) at EDF samples pos, pos + 1, ..."""

    start: int
    stop: int
    pos: int


@dataclass
class Recording:
    """One EDF file: samples on one grid from a whole-second start, gaps filled."""

    start_s: int
    runs: list[Run] = field(default_factory=list)
    positions: int = 0  # EDF samples up to and including the last real one
    samples: int = 0
    gaps: int = 0  # filled spans after the first sample


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
    bounds: list[tuple[float, float]] = field(default_factory=list)
    recordings: list[Recording] = field(default_factory=list)


def rate_hint(meta: dict[str, Any]) -> float | None:
    """The sample rate a source declared in its stream meta (serial: ``rate_hz``;
    simulator and BrainFlow: ``sampling_rate_hz``), if it is a positive number."""
    for key in _RATE_HINT_KEYS:
        v = meta.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            return float(v)
    return None


def json_meta(obj: Any) -> Any:
    """``obj`` as strict JSON (the manifest allows no NaN): non-finite numbers become null,
    tuples lists, numpy scalars numbers, keys text, anything else its text."""
    if isinstance(obj, dict):
        return {str(k): json_meta(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_meta(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


class _Grid:
    """Places samples on a fixed-rate grid, recording by recording (see the module doc)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.period = 1.0 / rate
        self.gap_s = max(GAP_PERIODS * self.period, MIN_GAP_S)
        # bunched samples run ahead of the grid; only a long lead means a clock off its rate
        self.ahead_s = max(self.gap_s, 1.0)
        self.recordings: list[Recording] = []
        self.gaps = 0
        self.failed = ""
        self._row = 0
        self._next = 0
        self._anchor_t = 0.0
        self._anchor_pos = 0
        self._last_t: float | None = None

    def add(self, t: FloatArray) -> None:
        i, n = 0, len(t)
        while i < n and not self.failed:
            if self._last_t is None or t[i] - self._last_t > RECORDING_BREAK_S:
                self._new_recording(float(t[i]))
            rec = self.recordings[-1]
            rest = t[i:]
            assert self._last_t is not None
            prev = np.concatenate(([self._last_t], rest[:-1]))
            step = rest - prev
            pos = self._next + np.arange(len(rest))
            lag = rest - (self._anchor_t + (pos - self._anchor_pos) * self.period)
            event = ((lag > self.gap_s) | (lag < -self.ahead_s) | (step > RECORDING_BREAK_S)
                     | (step < -self.gap_s))
            hits = np.flatnonzero(event)
            j = int(hits[0]) if hits.size else len(rest)
            if j:
                last = rec.runs[-1] if rec.runs else None
                if last is not None and last.stop == self._row and (
                    last.pos + last.stop - last.start == self._next
                ):
                    last.stop += j
                else:
                    rec.runs.append(Run(self._row, self._row + j, self._next))
                self._row += j
                self._next += j
                rec.samples += j
                rec.positions = self._next
                self._last_t = float(rest[j - 1])
                i += j
            if j == len(rest):
                break
            x, d, late = float(rest[j]), float(step[j]), float(lag[j])
            if d > RECORDING_BREAK_S:
                continue  # the loop's head starts a new recording
            if d < -self.gap_s:
                self.failed = "its timestamps go back in time"
                return
            if late > self.gap_s and d > self.gap_s:
                missing = max(1, round(late * self.rate))
                self._next += missing
                rec.gaps += 1
                self.gaps += 1
                if self.gaps > _MAX_GAPS:
                    self.failed = "it breaks into too many pieces"
                    return
            # a gap, slow drift or a bunch of samples: the grid follows the clock from here
            self._anchor_t, self._anchor_pos = x, self._next

    def _new_recording(self, t: float) -> None:
        start = math.floor(t)
        pos = min(round((t - start) * self.rate), max(0, math.ceil(self.rate) - 1))
        self.recordings.append(Recording(start_s=start, positions=pos))
        self._next = pos
        self._anchor_t, self._anchor_pos = t, pos
        self._last_t = t


class _Scan:
    """Running facts about a stream: layouts, ranges, grid placement."""

    def __init__(self, rate: float | None) -> None:
        self.hint = rate
        self.rate: float | None = None
        self.rate_note = ""
        self.layouts: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.n = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.lo: FloatArray | None = None
        self.hi: FloatArray | None = None
        self.infinite: set[int] = set()
        self.usual_lo: FloatArray | None = None  # per channel: lowest 1st percentile of a batch
        self.usual_hi: FloatArray | None = None  # highest 99th percentile
        self.grid: _Grid | None = None
        self.no_grid = ""
        self.meta: dict[str, Any] = {}
        self._probe: list[SampleBatch] = []
        self._probed = 0

    def add(self, b: SampleBatch) -> None:
        if self.grid is None and not self.no_grid:
            # hold the first batches back until there are enough timestamps to measure a rate
            self._probe.append(b)
            self._probed += len(b)
            if self._probed < _RATE_PROBE:
                return
            self.finish_probe()
            return
        self._add(b)

    def finish_probe(self) -> None:
        if self.grid is not None or self.no_grid:
            return
        held, self._probe = self._probe, []
        t = np.concatenate([b.t for b in held]) if held else np.empty(0)
        self._choose_rate(t)
        for b in held:
            self._add(b)

    def _choose_rate(self, t: FloatArray) -> None:
        steps = np.diff(t)
        measured: float | None = None
        positive = steps[steps > 0]
        if positive.size >= 2:
            # the mean over steps that are not gaps: right for jitter and for bunched samples
            # (a packet's samples stamped alike), where the median step is not
            usual = steps[(steps >= 0) & (steps <= 4 * float(np.median(positive)))]
            total = float(usual.sum())
            measured = usual.size / total if total > 0 else None
        rate = self.hint
        if rate is not None and measured is not None and abs(measured / rate - 1) > 0.05:
            self.rate_note = f" (declared {rate:g} Hz, timestamps say {measured:.4g} Hz)"
            rate = None
        if rate is None and measured is not None:
            rate = _nice_rate(measured)
        if rate is None:
            self.no_grid = "irregular timestamps (no fixed sample rate)" + self.rate_note
            return
        if _record_for(rate) is None:
            self.no_grid = f"its {rate:g} Hz rate fits no whole-sample EDF record"
            return
        self.rate = rate
        self.grid = _Grid(rate)

    def _usual(self, values: FloatArray) -> None:
        """Track each channel's usual range (1st-99th percentile per batch, on a subsample):
        a lone spike must not be what sets EDF's 16-bit scale."""
        if len(values) < _USUAL_MIN_ROWS:
            return
        sub = values[:: max(1, len(values) // 256)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel: NaN, fine
            p1, p99 = np.nanpercentile(np.where(np.isfinite(sub), sub, np.nan), [1, 99], axis=0)
        p1 = np.where(np.isnan(p1), np.inf, p1)
        p99 = np.where(np.isnan(p99), -np.inf, p99)
        self.usual_lo = p1 if self.usual_lo is None else np.minimum(self.usual_lo, p1)
        self.usual_hi = p99 if self.usual_hi is None else np.maximum(self.usual_hi, p99)

    def _add(self, b: SampleBatch) -> None:
        layout = (b.channels, b.units)
        if layout not in self.layouts:
            self.layouts.append(layout)
        if b.meta:
            self.meta = dict(b.meta)
        if len(b) == 0:
            return
        if self.first_t is None:
            self.first_t = b.first_t
        self.last_t = b.last_t if self.last_t is None else max(self.last_t, b.last_t)
        if len(self.layouts) == 1:
            finite = np.isfinite(b.values)
            if not finite.all():
                self.infinite.update(np.flatnonzero(np.isinf(b.values).any(axis=0)).tolist())
            lo = np.where(finite, b.values, np.inf).min(axis=0)
            hi = np.where(finite, b.values, -np.inf).max(axis=0)
            self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
            self._usual(b.values)
        if self.grid is not None and not self.grid.failed:
            self.grid.add(b.t)
        self.n += len(b)


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
    scan.finish_probe()
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
    if any(channel_kind(c) == "rr" for c in channels):
        # one row per beat: however steady a heart, these are events, not a sampled signal
        plan.reason = "RR intervals (one row per beat)"
        return plan
    grid = scan.grid
    if grid is None or scan.rate is None:
        plan.reason = scan.no_grid or "irregular timestamps (no fixed sample rate)"
        return plan
    if grid.failed:
        plan.reason = f"irregular timestamps: {grid.failed} (at {scan.rate:g} Hz)"
        return plan
    span = (scan.last_t or 0.0) - (scan.first_t or 0.0)
    if grid.gaps > 8 + span / 2:
        plan.reason = (f"irregular timestamps: {grid.gaps} gaps in {span:.0f} s at "
                       f"{scan.rate:g} Hz")
        return plan
    first, last = scan.first_t or 0.0, scan.last_t or 0.0
    if first < _EDF_FIRST_S or last >= _EDF_END_S:
        off = first if first < _EDF_FIRST_S else last
        try:
            year = str((dt.datetime.fromtimestamp(0, tz=dt.UTC) + dt.timedelta(seconds=off)).year)
        except OverflowError:
            year = f"t = {off:g} s"
        plan.reason = (f"its samples ({year}) fall outside the years 1985-2084 an EDF "
                       "header can date")
        return plan
    if len(channels) > EDF_MAX_CHANNELS:
        plan.reason = (f"it has {len(channels)} channels; EDF writers take at most "
                       f"{EDF_MAX_CHANNELS}")
        return plan
    if scan.infinite:
        c = channels[min(scan.infinite)]
        plan.reason = f"channel {c!r} holds an infinite value, which EDF cannot store"
        return plan
    assert scan.lo is not None
    assert scan.hi is not None
    bounds = []
    for i, (c, lo, hi) in enumerate(zip(channels, scan.lo, scan.hi, strict=True)):
        fit = edf_fit(float(lo), float(hi))
        if isinstance(fit, str):
            plan.reason = f"channel {c!r} {fit}"
            return plan
        if scan.usual_lo is not None and scan.usual_hi is not None:
            usual = float(scan.usual_hi[i] - scan.usual_lo[i])
            quantum = (fit[1] - fit[0]) / (_DMAX - _DMIN)
            if math.isfinite(usual) and usual > 0 and usual / quantum < _MIN_LEVELS:
                far = float(hi) if abs(hi - scan.usual_hi[i]) >= abs(lo - scan.usual_lo[i]) else lo
                plan.reason = (f"channel {c!r} reaches {far:g}, so far outside its usual "
                               f"{float(scan.usual_lo[i]):g}..{float(scan.usual_hi[i]):g} that "
                               f"16-bit EDF would keep fewer than {_MIN_LEVELS} levels of it")
                return plan
        bounds.append(fit)
    plan.format = "edf"
    plan.reason = f"regular {scan.rate:g} Hz samples{scan.rate_note}"
    plan.rate_hz = scan.rate
    plan.record_s = float(_record_for(scan.rate) or 1)
    plan.recordings = grid.recordings
    plan.lo = [float(x) for x in scan.lo]
    plan.hi = [float(x) for x in scan.hi]
    plan.bounds = bounds
    return plan


# ======================================================================================
# EDF+
# ======================================================================================


def edf_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Header physical min/max (8 characters each) that leave -32768 free for NaN."""
    fit = edf_fit(lo, hi)
    if isinstance(fit, str):
        raise DataCorrupt(f"values from {lo} to {hi} {fit}")
    return fit


def edf_fit(lo: float, hi: float) -> tuple[float, float] | str:
    """EDF header bounds for values in [lo, hi], or why EDF cannot hold them faithfully.

    The bounds must print in 8 characters, and rounding them there must not cost
    the values their resolution (16 bits over the bounds, at most 1/1000 of the
    values' own spread or of their magnitude).
    """
    if not math.isfinite(lo) or not math.isfinite(hi):
        lo, hi = -1.0, 1.0  # no finite value: any bounds do
    spread = hi - lo
    center = (lo + hi) / 2
    if spread < 1e-9 * max(1.0, abs(hi)):
        spread = 0.0
        lo, hi = lo - 1.0, hi + 1.0
    step = (hi - lo) / 65533.0
    try:
        pmin = _fit8(lo - 2 * step, up=False)
        pmax = _fit8(hi + step, up=True)
    except (DataCorrupt, OverflowError):
        return f"reaches {hi if abs(hi) >= abs(lo) else lo:g}, beyond EDF's 8-character header"
    quantum = (pmax - pmin) / (_DMAX - _DMIN)
    # the error a reader sees: half a quantum, against the values' spread (or a constant's size)
    tolerable = spread / 1000.0 if spread else 2e-3 * abs(center)
    if not pmax > pmin or (tolerable and quantum > tolerable):
        return (f"spans {lo:g}..{hi:g}, finer than 16 bits within EDF's 8-character header "
                "bounds can resolve")
    return pmin, pmax


def edf_quantize(x: FloatArray, pmin: float, pmax: float) -> np.ndarray[Any, np.dtype[np.int32]]:
    """Physical values to digital ones; NaN to the reserved -32768."""
    scale = (_DMAX - _DMIN) / (pmax - pmin)
    with np.errstate(invalid="ignore"):
        d = np.rint((x - pmin) * scale) + _DMIN
        d = np.clip(d, _DMIN + 1, _DMAX)
    out = np.where(np.isfinite(x), d, EDF_NAN)
    return out.astype(np.int32)


def edf_dequantize(d: np.ndarray[Any, Any], pmin: float, pmax: float) -> FloatArray:
    """Digital values back to physical ones; -32768 to NaN."""
    scale = (pmax - pmin) / (_DMAX - _DMIN)
    x = (d.astype(np.float64) - _DMIN) * scale + pmin
    return np.where(d == EDF_NAN, np.nan, x)


class EdfRecordingWriter:
    """One EDF+C file for one recording, written record by record, and its ``times.npy``."""

    def __init__(
        self, path: Path, times_path: Path, plan: StreamPlan, rec: Recording,
        markers: Sequence[tuple[float, str]] = (),
    ) -> None:
        import pyedflib

        assert plan.rate_hz is not None
        self.path = path
        self.rec = rec
        self.rate = plan.rate_hz
        n_ch = len(plan.channels)
        self.bounds = plan.bounds
        self._w = pyedflib.EdfWriter(str(path), n_ch, file_type=pyedflib.FILETYPE_EDFPLUS)
        labels = edf_labels(plan.channels)
        headers: list[dict[str, str | int | float | None]] = [
            {
                "label": labels[i],
                "dimension": _ascii(plan.units[i])[:8],
                "sample_frequency": plan.rate_hz,
                "physical_min": _as_edflib_prints(self.bounds[i][0]),
                "physical_max": _as_edflib_prints(self.bounds[i][1]),
                "digital_min": _DMIN,
                "digital_max": _DMAX,
                "transducer": "",
                "prefilter": "",
            }
            for i in range(n_ch)
        ]
        self.per_record = 1
        self.record_s = 1.0
        # the markers within this recording (its EDF span), as EDF+ annotations
        end_s = rec.start_s + rec.positions / self.rate
        self._markers = [(t, text) for t, text in markers if rec.start_s <= t < end_s]
        with warnings.catch_warnings():
            # the nudged bounds print longer than 8 characters in Python; edflib truncates
            # them to exactly the intended text, so pyedflib's warning (at every header
            # update) does not apply
            warnings.filterwarnings("ignore", "Physical (minimum|maximum)", UserWarning)
            self._set_header(plan, rec, headers)
        self._times: IO[bytes] = times_path.open("wb")
        np.lib.format.write_array_header_1_0(
            self._times, {"descr": "<f8", "fortran_order": False, "shape": (rec.positions,)}
        )
        self._pending: list[np.ndarray[Any, Any]] = []
        self._pending_n = 0
        self.pos = 0
        self.samples = 0
        self._gaps: list[tuple[int, int]] = []

    def _set_header(
        self, plan: StreamPlan, rec: Recording, headers: list[dict[str, str | int | float | None]]
    ) -> None:
        self._w.setSignalHeaders(headers)
        # pyedflib picks the record duration that holds whole samples (1 s for integer rates)
        self.per_record = int(self._w.get_smp_per_record(0))
        self.record_s = float(self._w.record_duration)
        records = max(1, math.ceil(rec.positions / self.per_record))
        # edflib keeps one annotation per record and annotation signal (at most 64)
        notes = rec.gaps + len(self._markers)
        self._w.set_number_of_annotation_signals(min(64, 1 + (notes + 1) // records))
        self._w.setPatientCode("X")
        self._w.setPatientName("X")
        self._w.setEquipment("edgetwin")
        self._w.setRecordingAdditional(f"stream_{_ascii(plan.stem)[:40]}")
        # whole seconds: pyedflib 0.1.42 writes EDF+ sub-second starts 10x off, MNE drops them
        self._w.setStartdatetime(
            dt.datetime.fromtimestamp(rec.start_s, tz=dt.UTC).replace(tzinfo=None)
        )

    def fill_to(self, pos: int) -> None:
        """Filler (-32768, NaN time) up to EDF sample ``pos``: a gap, annotated."""
        if pos <= self.pos:
            return
        self._gaps.append((self.pos, pos - self.pos))
        while self.pos < pos:
            n = min(_FILL_BLOCK, pos - self.pos)
            self._put(np.full((n, len(self.bounds)), EDF_NAN, np.int32))
            self._times.write(np.full(n, np.nan, "<f8").tobytes())
            self.pos += n

    def add(self, t: FloatArray, values: FloatArray) -> None:
        """Append rows (samples x channels) of physical values taken at ``t``."""
        d = np.empty(values.shape, dtype=np.int32)
        for i, (pmin, pmax) in enumerate(self.bounds):
            d[:, i] = edf_quantize(values[:, i], pmin, pmax)
        self._put(d)
        self._times.write(np.ascontiguousarray(t, dtype="<f8").tobytes())
        self.pos += len(t)
        self.samples += len(t)

    def close(self) -> None:
        """Pad the last record with filler, annotate the gaps, close both files."""
        try:
            if self._pending_n % self.per_record or not self.pos:
                pad = self.per_record - self._pending_n % self.per_record
                self._put(np.full((pad, len(self.bounds)), EDF_NAN, np.int32))
            self._flush()
            for pos, n in self._gaps:
                self._w.writeAnnotation(pos / self.rate, n / self.rate, GAP_ANNOTATION)
            for t, text in self._markers:  # onset from the file's start, no duration
                self._w.writeAnnotation(t - self.rec.start_s, -1, edf_annotation_text(text))
        finally:
            self._w.close()
            self._times.close()
        if self.pos != self.rec.positions or self.samples != self.rec.samples:
            raise StreamChanged(f"{self.path.name}: wrote {self.pos} EDF samples, planned "
                                f"{self.rec.positions}")

    def _put(self, d: np.ndarray[Any, Any]) -> None:
        self._pending.append(d)
        self._pending_n += len(d)
        if self._pending_n >= self.per_record:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        full = (len(block) // self.per_record) * self.per_record
        for r in range(0, full, self.per_record):
            rec = np.ascontiguousarray(block[r : r + self.per_record].T).reshape(-1)
            if self._w.blockWriteDigitalSamples(rec) < 0:
                raise OSError(f"writing {self.path} failed")
        rest = block[full:]
        self._pending = [rest] if len(rest) else []
        self._pending_n = len(rest)


def edf_annotation_text(text: str) -> str:
    """A marker's text as an EDF+ annotation: at most 40 bytes of UTF-8 (edflib's limit),
    cut on a character boundary, with '...' when cut."""
    raw = text.encode("utf-8")
    if len(raw) <= _EDF_NOTE_BYTES:
        return text
    return raw[: _EDF_NOTE_BYTES - 3].decode("utf-8", "ignore") + "..."


def write_edf_stream(
    plan: StreamPlan, batches: Iterator[SampleBatch], member: Callable[[str], Path],
    done: Callable[[str], None], *, markers: Sequence[tuple[float, str]] = (),
) -> dict[str, Any]:
    """Write an EDF plan's recordings (``member(name)`` gives a new file, ``done(name)``
    seals it), each annotated with the ``markers`` (time, text) within it; the stream's
    manifest fields. :class:`StreamChanged` when the store changed."""
    recs = plan.recordings
    many = len(recs) > 1
    names = [f"signals/{plan.stem}.rec{k:03d}" if many else f"signals/{plan.stem}"
             for k in range(len(recs))]
    runs = [(k, run) for k, rec in enumerate(recs) for run in rec.runs]
    writer: EdfRecordingWriter | None = None
    k_open = -1
    ri = 0
    row = 0

    def seal(w: EdfRecordingWriter, k: int) -> None:
        w.close()
        done(f"{names[k]}.edf")
        done(f"{names[k]}.times.npy")

    try:
        for b in batches:
            at = 0
            while at < len(b):
                if ri >= len(runs):
                    raise StreamChanged("more samples than planned")
                k, run = runs[ri]
                if k != k_open:
                    if writer is not None:
                        w, writer = writer, None
                        seal(w, k_open)
                    writer = EdfRecordingWriter(member(f"{names[k]}.edf"),
                                                member(f"{names[k]}.times.npy"), plan, recs[k],
                                                markers)
                    k_open = k
                    plan.record_s = writer.record_s
                assert writer is not None
                if row == run.start:
                    writer.fill_to(run.pos)
                take = min(len(b) - at, run.stop - row)
                writer.add(b.t[at : at + take], b.values[at : at + take])
                at += take
                row += take
                if row == run.stop:
                    ri += 1
        if writer is not None:
            w, writer = writer, None
            seal(w, k_open)
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):  # already failing: keep that error
                writer.close()
    if ri != len(runs) or k_open != len(recs) - 1 or row != plan.samples:
        raise StreamChanged("fewer samples than planned")
    return {
        "rate_hz": plan.rate_hz,
        "record_s": plan.record_s,
        "edf": {
            "labels": edf_labels(plan.channels),
            "physical_min": [b[0] for b in plan.bounds],
            "physical_max": [b[1] for b in plan.bounds],
            "digital_min": _DMIN,
            "digital_max": _DMAX,
            "nan_digital": EDF_NAN,
            "start_clock": "UTC, whole seconds",
            "gap_annotation": GAP_ANNOTATION,
            "marker_annotations": "onset from the file's start, duration -1, text cut to 40 "
                                  "bytes (markers.csv holds them whole)",
        },
        "recordings": [
            {"member": f"{n}.edf", "timestamps": f"{n}.times.npy", "start": r.start_s,
             "samples": r.samples, "positions": r.positions, "gaps": r.gaps}
            for n, r in zip(names, recs, strict=True)
        ],
    }


def edf_labels(channels: tuple[str, ...]) -> list[str]:
    """EDF labels (16 printable ASCII characters, unique): the channel name, shortened when
    needed."""
    out = []
    for i, c in enumerate(channels):
        a = _ascii(c)
        out.append(a if len(a) <= 16 and a == c else f"{a[:12]}~{i:03d}")
    return out


def read_edf_stream(
    root: Path, doc: dict[str, Any], stream: str, channels: tuple[str, ...],
    units: tuple[str, ...], meta: dict[str, Any],
) -> Iterator[SampleBatch]:
    """Batches of a manifest's EDF stream: recordings with exact timestamps (format 2), or
    grid segments (format 1, timestamps rebuilt as ``t0 + k / rate``)."""
    if "recordings" in doc:
        for rec in doc["recordings"]:
            yield from read_edf_recording(
                root / str(rec["member"]), root / str(rec["timestamps"]), stream, channels,
                units, int(rec["samples"]), int(rec["positions"]), meta,
            )
        return
    rate = float(doc["rate_hz"])
    for seg in doc["segments"]:
        yield from read_edf(root / str(seg["member"]), stream, channels, units,
                            float(seg["t0"]), rate, int(seg["samples"]), meta)


def read_edf_recording(
    path: Path, times_path: Path, stream: str, channels: tuple[str, ...],
    units: tuple[str, ...], samples: int, positions: int, meta: dict[str, Any],
) -> Iterator[SampleBatch]:
    """Batches of an EDF recording written by :class:`EdfRecordingWriter`: the samples whose
    time in ``times_path`` is a number (exactly ``samples`` of them). Both files are read a
    block at a time, so memory stays flat however long the recording."""
    import pyedflib

    with times_path.open("rb") as times:
        _npy_header(times, times_path, positions)
        try:
            reader = pyedflib.EdfReader(str(path))
        except OSError as exc:
            raise DataCorrupt(f"{path.name} is not a readable EDF+ file: {_why(exc)}") from exc
        try:
            _check_edf(reader, path, channels, positions)
            bounds = [
                (float(reader.getPhysicalMinimum(i)), float(reader.getPhysicalMaximum(i)))
                for i in range(len(channels))
            ]
            count = 0
            for start in range(0, positions, _READ_BLOCK):
                n = min(_READ_BLOCK, positions - start)
                raw = times.read(8 * n)
                if len(raw) != 8 * n:
                    raise DataCorrupt(f"{times_path.name} ends before its {positions} times")
                t = np.frombuffer(raw, dtype="<f8").astype(np.float64)
                keep = np.isfinite(t)
                if not keep.any():
                    continue
                cols = [
                    edf_dequantize(reader.readSignal(i, start, n, digital=True), *bounds[i])[keep]
                    for i in range(len(channels))
                ]
                count += int(keep.sum())
                yield SampleBatch(stream, channels, units, t[keep], np.column_stack(cols),
                                  dict(meta))
            if count != samples:
                raise DataCorrupt(f"{times_path.name} times {count} samples; the manifest says "
                                  f"{samples}")
        finally:
            reader.close()


def _why(exc: BaseException) -> str:
    """A library's error as one short line: some of numpy's run to several lines, and a
    refused import says what was wrong in one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _npy_header(f: IO[bytes], path: Path, positions: int) -> None:
    """Check the .npy header of ``f`` (one dimension of ``positions`` little-endian float64)
    and leave ``f`` at the first value."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"version {version}")
    except (OSError, ValueError, EOFError, SyntaxError, TypeError, RecursionError,
            tokenize.TokenError) as exc:
        # numpy parses the header with tokenize and literal_eval (a spliced header raised
        # TokenError, which escaped as a traceback)
        raise DataCorrupt(f"{path.name} is not a readable .npy file: {_why(exc)}",
                          hint="the bundle is damaged: export it again") from exc
    if dtype != np.dtype("<f8") or fortran or shape != (positions,):
        raise DataCorrupt(f"{path.name} is not {positions} float64 timestamps")


def _check_edf(reader: Any, path: Path, channels: tuple[str, ...], samples: int) -> None:
    if reader.signals_in_file != len(channels):
        raise DataCorrupt(
            f"{path.name} holds {reader.signals_in_file} signals; the manifest lists "
            f"{len(channels)} channels"
        )
    have = int(min(reader.getNSamples()))
    if have < samples:
        raise DataCorrupt(f"{path.name} holds {have} samples; the manifest says {samples}")


def read_edf(
    path: Path, stream: str, channels: tuple[str, ...], units: tuple[str, ...],
    t0: float, rate: float, samples: int, meta: dict[str, Any],
) -> Iterator[SampleBatch]:
    """Batches of a format-1 EDF+ segment (exactly ``samples``, on the grid ``t0 + k/rate``)."""
    import pyedflib

    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as exc:
        raise DataCorrupt(f"{path.name} is not a readable EDF+ file: {exc}") from exc
    try:
        _check_edf(reader, path, channels, samples)
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


def _as_edflib_prints(v: float) -> float:
    """``v`` (8 characters as text) nudged so that edflib, which truncates the digits it
    prints into the header, prints exactly ``v`` (21013.16 would come out 21013.15)."""
    if not v:
        return v
    whole = len(str(int(abs(v)))) + (v < 0)  # characters before the point
    decimals = max(0, 8 - whole - 1)  # edflib fills the field: digits up to 8 characters
    return v + math.copysign(0.25 * 10.0**-decimals, v)


def _ascii(text: str) -> str:
    """Printable ASCII (EDF header fields allow nothing else): others become '_'."""
    return "".join(ch if " " <= ch <= "~" else "_" for ch in text)


# ======================================================================================
# SNIRF
# ======================================================================================


class SnirfWriter:
    """A SNIRF 1.1 file for one fNIRS stream; rows appended to resizable datasets."""

    def __init__(
        self, path: Path, plan: StreamPlan, markers: Sequence[tuple[float, str]] = ()
    ) -> None:
        import h5py

        self.path = path
        self.t_ref = plan.first_t or 0.0
        last = plan.last_t if plan.last_t is not None else self.t_ref
        # markers within the stream's span, one SNIRF stim condition per distinct text
        self._stims: dict[str, list[float]] = {}
        for t, text in markers:
            if self.t_ref <= t <= last:
                self._stims.setdefault(text, []).append(t - self.t_ref)
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
        # the twin knows source-detector distances, not positions: place the optodes so that
        # each channel's distance (from the stream's distance_cm meta) comes out as its own
        pairs = {
            (sources.index(m.group(1)), detectors.index(m.group(2))): fnirs_distance(
                plan.meta.get("distance_cm"), c, f"{m.group(1)}_{m.group(2)}"
            )
            for c, m in zip(plan.channels, parsed, strict=True)
            if m
        }
        src_pos, det_pos = optode_positions(len(sources), len(detectors), pairs)
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
            s = h5py_string()
            for k, (text, onsets) in enumerate(self._stims.items(), start=1):
                stim = self._f["nirs"].create_group(f"stim{k}")
                stim.create_dataset("name", data=text, dtype=s)
                # onset (s, on the time axis), duration (unknown: 0), amplitude 1
                data = np.column_stack([onsets, np.zeros(len(onsets)), np.ones(len(onsets))])
                stim.create_dataset("data", data=data.astype(np.float64))
                stim.create_dataset("dataLabels", data=["Onset", "Duration", "Amplitude"],
                                    dtype=s)
            self._f.close()
        finally:
            self._raw.close()


def h5py_string() -> Any:
    """HDF5's variable-length UTF-8 string type."""
    import h5py

    return h5py.string_dtype("utf-8")


def fnirs_distance(spec: Any, channel: str, pair: str) -> float:
    """A channel's source-detector distance (cm) from a stream's ``distance_cm`` meta, which
    sources write as a number or per channel (``{channel: cm}``; also ``pair`` or
    ``default`` keys); 3 cm when it names none."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return float(spec) if math.isfinite(spec) and spec > 0 else DEFAULT_DISTANCE_CM
    if isinstance(spec, dict):
        for key in (channel, pair, "default"):
            v = spec.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (
                v > 0
            ):
                return float(v)
    return DEFAULT_DISTANCE_CM


def optode_positions(
    n_src: int, n_det: int, pairs: dict[tuple[int, int], float]
) -> tuple[FloatArray, FloatArray]:
    """Positions (cm, in a plane) of sources and detectors whose distances match ``pairs``
    as closely as a plane allows (exact for the layouts the sources produce)."""
    rng = np.random.default_rng(0)
    n = n_src + n_det
    pos = np.zeros((n, 3))
    pos[:n_src, 0] = np.arange(n_src) * 4.0
    pos[n_src:, 0] = np.arange(n_det) * 4.0 + 2.0
    pos[n_src:, 1] = 2.0
    pos[:, :2] += rng.uniform(-0.1, 0.1, (n, 2))  # break symmetry
    edges = [(s, n_src + d, float(cm)) for (s, d), cm in sorted(pairs.items())]
    for _ in range(2000):
        worst = 0.0
        for a, b, want in edges:
            v = pos[b] - pos[a]
            have = float(np.linalg.norm(v)) or 1e-9
            err = have - want
            worst = max(worst, abs(err))
            pos[a] += 0.5 * err * v / have
            pos[b] -= 0.5 * err * v / have
        if worst < 1e-6:
            break
    pos -= pos.min(axis=0)
    pos[:, 2] = 0.0
    return pos[:n_src].copy(), pos[n_src:].copy()


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
    """A measured rate snapped to the value a device would declare: the simplest of n, n/2,
    n/4 ... n/32 Hz within 0.5 %/denominator (250.3 -> 250, 62.47 -> 62.5, 7.81 -> 7.8125),
    else a whole number of Hz within 1 % (host-clocked notifications run slow), else a whole
    period in seconds (0.0998 -> 0.1); None when nothing is that close."""
    if not math.isfinite(rate) or rate <= 0:
        return None
    for denominator in (1, 2, 4, 8, 16, 32):
        snapped = round(rate * denominator) / denominator
        if snapped > 0 and abs(snapped - rate) <= 5e-3 / denominator * rate:
            return float(snapped)
    if round(rate) >= 1 and abs(round(rate) - rate) <= 1e-2 * rate:
        return float(round(rate))
    period = round(1.0 / rate)
    if period >= 1 and abs(1.0 / period - rate) <= 1e-2 * rate:
        return 1.0 / period
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
