"""Raw ``SampleBatch`` streams in, one ``FeatureFrame`` per completed step out.

Timing. Step ``k`` covers ``[k*step_s, (k+1)*step_s)`` of epoch time and its
frame is stamped with the step's end. A step is complete once the newest
timestamp seen on any stream has passed its end by ``lateness_s`` (default:
one step), so a stream that lags the others by up to that much still lands
in the right frame; samples for a step that was already emitted are dropped
and counted (``counters["late_samples"]``). ``flush()`` emits every step up
to the newest sample. A step in which no stream had any sample is emitted as
an all-missing frame while the silence lasts at most ``max_gap_s`` (default
300 s), so short holes stay on the regular grid the imputer fills; longer
silences (the device was off) are skipped.

Bounded state. Each stream keeps a buffer of its last
``max(rr_window_s, eeg_window_s, beat_window_s, 10 s) + step_s + 9 s``
seconds of samples (about 2.5 MB for 16 channels at 250 Hz with the
defaults), plus, for fNIRS, one baseline intensity per channel, and for ECG
or PPG, the beat times of the RR window.

Windows (per feature, ending at the step's end):
``hr`` the step; ``rmssd`` the last ``rr_window_s`` (30 s; short-term HRV
needs >= ~30 s, Munoz et al. 2015 PLoS ONE 10:e0138921); beat detection the
last ``beat_window_s`` (10 s) for filter settling; EEG the last
``eeg_window_s`` (4 s, >= 2 s of finite samples required); EDA tonic the last
10 s; SCI the last 10 s; everything else the step.

Surroundings (schema v2). Room sensors report every few seconds to minutes,
so ``ambient_temp``, ``humidity``, ``pressure``, ``co2``, ``pm2_5``, ``pm10``
and ``home_distance`` are the mean of the step's readings, else the last
reading of the previous ``schema.ENV_HOLD_S`` (600 s); ``place`` is the
step's most frequent value (ties: the latest), else the last one. Quality is
the freshness of the newest reading: 1 up to ``ENV_FRESH_S`` (120 s) old,
fading linearly to 0 at ``ENV_HOLD_S``. A stream feeding them keeps that much
history (a few hundred rows at the rates of room sensors). Which channel
feeds what is ``schema.input_kind``: a ``temp`` channel of a room stream
(``<name>.climate``) is the room's temperature, never ``skin_temp``; ``lat``
and ``lon`` feed nothing.

Bad input. NaN and inf samples, and finite values outside the physically
plausible range of their channel type (``units.PLAUSIBLE``), are masked
(``counters["masked_values"]``) and never reach a feature; channels the
features do not read are ignored (``counters["ignored_channels"]``, names
in ``ignored_channels``); a unit that cannot be converted exactly raises
``MalformedInput`` naming the stream, channel and unit. Quality is per
feature in 0..1 (coverage of the window, accepted-beat share, scalp coupling
for fNIRS); ``imputed`` is all False.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetwin.errors import MalformedInput
from edgetwin.features import cardiac, eeg, fnirs, vitals
from edgetwin.features.schema import (
    ENV_FRESH_S,
    ENV_HOLD_S,
    INDEX,
    NAMES,
    QUALITY_THRESHOLD,
    SCHEMA_VERSION,
    input_kind,
)
from edgetwin.features.units import PLAUSIBLE, conversion, known_kind
from edgetwin.features.windows import (
    estimate_rate,
    longest_finite_run,
    select,
    step_bounds,
    step_index,
)
from edgetwin.types import FeatureFrame, FloatArray, SampleBatch

_LOGGER = logging.getLogger(__name__)

HR_RANGE = (25.0, 250.0)
# input kind -> the surroundings feature it feeds (schema v2)
_ENV_FEATURES: dict[str, str] = {
    "ambient": "ambient_temp",
    "humidity": "humidity",
    "pressure": "pressure",
    "co2": "co2",
    "pm2": "pm2_5",  # channel_kind("pm2_5") is "pm2" (of pm1_0 "pm1", read by nothing)
    "pm10": "pm10",
    "place": "place",
    "homedist": "home_distance",
}
_PLACES = (0.0, 1.0, 2.0)  # home, a regular place, elsewhere
_RR_CONTEXT_S = 6.0  # beats before the RMSSD window that inform artefact rejection


class FeaturePipeline:
    """Turns pushed batches into feature frames on the twin's step grid."""

    def __init__(
        self,
        step_s: float = 5.0,
        lateness_s: float | None = None,
        *,
        rr_window_s: float = 30.0,
        eeg_window_s: float = 4.0,
        beat_window_s: float = 10.0,
        max_gap_s: float = 300.0,
        fnirs_baseline_tau_s: float = fnirs.BASELINE_TAU_S,
        age_years: float | None = None,
    ) -> None:
        if not step_s > 0 or not math.isfinite(step_s):
            raise ValueError(f"step_s must be a positive number, not {step_s!r}")
        self.step_s = float(step_s)
        self.lateness_s = self.step_s if lateness_s is None else float(lateness_s)
        if self.lateness_s < 0:
            raise ValueError(f"lateness_s must be >= 0, not {lateness_s!r}")
        self.rr_window_s = rr_window_s
        self.eeg_window_s = eeg_window_s
        self.beat_window_s = beat_window_s
        self.max_gap_s = max_gap_s
        self.fnirs_baseline_tau_s = fnirs_baseline_tau_s
        self.age_years = age_years
        self.keep_s = (
            max(rr_window_s, eeg_window_s, beat_window_s, fnirs.SCI_WINDOW_S, vitals.EDA_WINDOW_S)
            + self.step_s
            + _RR_CONTEXT_S
            + 3.0  # the beat-detection look-back before the RR context
        )
        self.counters: dict[str, int] = {
            "batches": 0,
            "samples": 0,
            "masked_values": 0,
            "late_samples": 0,
            "out_of_order": 0,
            "ignored_channels": 0,
            "frames": 0,
            "rejected_beats": 0,
        }
        self.ignored_channels: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._watermark = -math.inf
        self._next: int | None = None  # first step not yet emitted
        self._last_data_end = -math.inf
        self._retired = 0

    # -- public -----------------------------------------------------------------

    def push(self, batch: SampleBatch) -> list[FeatureFrame]:
        """Take one batch; return the frames of the steps it completed."""
        if len(batch) == 0:
            return []
        st = self._streams.get(batch.stream)
        if st is None or st.channels != batch.channels or st.units != batch.units:
            st = self._new_stream(batch)
        self.counters["batches"] += 1
        t = batch.t
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is masked just below
            v = batch.values[:, st.cols] * st.scale + st.offset
            bad = ~((v >= st.low) & (v <= st.high))  # NaN fails both comparisons
        if bad.any():
            self.counters["masked_values"] += int(bad.sum())
            v = np.where(bad, np.nan, v)
        keep = np.ones(t.size, dtype=bool)
        if st.last_t is not None:
            keep &= t >= st.last_t  # equal stamps happen (packed samples); older ones are replays
            self.counters["out_of_order"] += int((~keep).sum())
        if self._next is not None:
            late = t < self._next * self.step_s
            self.counters["late_samples"] += int((late & keep).sum())
            keep &= ~late
        if not keep.all():
            t, v = t[keep], v[keep]
        if t.size == 0:
            return []
        self.counters["samples"] += int(t.size)
        st.append(t, v)
        if self._next is None:
            self._next = step_index(float(t[0]), self.step_s)
        self._watermark = max(self._watermark, float(t[-1]))
        return self._emit(self._watermark - self.lateness_s)

    def flush(self) -> list[FeatureFrame]:
        """Emit every remaining step up to and including the newest sample's."""
        if self._next is None or not math.isfinite(self._watermark):
            return []
        last = step_index(self._watermark, self.step_s)
        return self._emit(step_bounds(last, self.step_s)[1])

    def drop_buffers(self, stream: str | None = None) -> None:
        """Drop the buffered samples (and beats, fNIRS baselines) of ``stream`` (None: all),
        after a forget: frames still to come must not be computed from forgotten samples.
        The step grid and the counters stay, so no step is emitted twice."""
        for key in list(self._streams):
            if stream is None or key == stream or key.startswith(stream + "\x00"):
                del self._streams[key]

    def stats(self) -> dict[str, Any]:
        """Counters and the ignored channel names, for ``status``."""
        return {**self.counters, "ignored": sorted(self.ignored_channels)}

    # -- stepping ----------------------------------------------------------------

    def _emit(self, horizon: float) -> list[FeatureFrame]:
        """Frames for every step whose end is at or before ``horizon``."""
        frames: list[FeatureFrame] = []
        while self._next is not None and step_bounds(self._next, self.step_s)[1] <= horizon:
            k = self._next
            start, end = step_bounds(k, self.step_s)
            if self._has_data(start, end):
                frames.append(self._frame(k))
                self._last_data_end = end
                self._next = k + 1
            else:
                nxt = self._earliest_at_or_after(end)
                gap_end = nxt if nxt is not None else self._watermark
                if gap_end - self._last_data_end <= self.max_gap_s:
                    frames.append(self._frame(k))
                    self._next = k + 1
                elif nxt is not None:
                    # A long silence (device off): resume at the step of the next sample.
                    self._next = max(k + 1, step_index(nxt, self.step_s))
                else:
                    self._next = k + 1
            self._trim()
        self.counters["frames"] += len(frames)
        return frames

    def _has_data(self, start: float, end: float) -> bool:
        for st in self._streams.values():
            sl = select(st.times(), start, end)
            if sl.stop > sl.start:
                return True
        return False

    def _earliest_at_or_after(self, t0: float) -> float | None:
        best: float | None = None
        for st in self._streams.values():
            t = st.times()
            i = int(np.searchsorted(t, t0, side="left"))
            if i < t.size and (best is None or t[i] < best):
                best = float(t[i])
        return best

    def _trim(self) -> None:
        if self._next is None:
            return
        cutoff = self._next * self.step_s - self.keep_s
        for key, st in list(self._streams.items()):
            st.trim(cutoff - st.hold_s)
            if "\x00" in key and st.times().size == 0:
                del self._streams[key]  # a retired layout whose samples all aged out

    # -- one frame ---------------------------------------------------------------

    def _frame(self, k: int) -> FeatureFrame:
        start, end = step_bounds(k, self.step_s)
        values = np.full(len(NAMES), np.nan)
        quality = np.zeros(len(NAMES))

        def put(name: str, value: float, q: float) -> None:
            if math.isfinite(value):
                values[INDEX[name]] = value
                quality[INDEX[name]] = float(np.clip(q, 0.0, 1.0))

        # Beat detection runs every step so the RR window stays filled.
        for st in self._streams.values():
            if st.beat_cols:
                self._detect_beats(st, start, end)
        self._cardiac(start, end, put)
        self._vitals(start, end, put)
        self._eeg(end, put)
        self._fnirs(start, end, put)
        self._environment(start, end, put)
        return FeatureFrame(
            t=end,
            values=values,
            quality=quality,
            imputed=np.zeros(len(NAMES), dtype=bool),
            schema_version=SCHEMA_VERSION,
        )

    def _cardiac(self, start: float, end: float, put: _Put) -> None:
        w0 = end - self.rr_window_s
        # Artefact rejection looks at neighbouring beats on both sides, so it sees a
        # little before the window and the beats already buffered after the step.
        c0, c1 = w0 - _RR_CONTEXT_S, end + self.lateness_s
        # (tier, beat times, RR ms): reported RR first, then ECG, then PPG beats.
        candidates: list[tuple[int, FloatArray, FloatArray]] = []
        for st in self._streams.values():
            if "rr" in st.groups:
                t, v = st.window(c0, c1)
                rr = v[:, st.groups["rr"][0]]
                ok = np.isfinite(rr)
                candidates.append((0, t[ok], rr[ok]))
        # Beats recovered from ECG (preferred) or PPG, as RR intervals at the later beat.
        for tier, kind in ((1, "ecg"), (2, "ppg")):
            for st in self._streams.values():
                if st.beat_kind == kind and st.beats.size >= 2:
                    bt = st.beats[st.beats >= c0 - 2.5]
                    if bt.size >= 2:
                        rr = np.diff(bt) * 1000.0
                        candidates.append((tier, bt[1:], rr))
        best: tuple[FloatArray, FloatArray] | None = None
        best_key = (3, 0)
        for tier, bt, rr in candidates:
            n = int(np.sum((bt >= start) & (bt < end)))
            # The best tier that has beats in the step; within it, the most beats.
            if n and (tier, -n) < best_key:
                best, best_key = (bt, rr), (tier, -n)
        if best is not None:
            bt_all, rr_all = best
            ok_all = cardiac.accept_rr(rr_all)
            win = (bt_all >= w0) & (bt_all < end)
            bt, rr, ok = bt_all[win], rr_all[win], ok_all[win]
            in_step = bt >= start
            self.counters["rejected_beats"] += int(np.sum(in_step & ~ok))
            step_ok = rr[in_step & ok]
            if step_ok.size:
                accept_share = step_ok.size / max(1, int(in_step.sum()))
                cover = min(1.0, float(np.sum(step_ok)) / 1000.0 / self.step_s)
                # A step holds whole beats only: one beat less than the step is full coverage.
                cover = min(1.0, cover + float(np.mean(step_ok)) / 1000.0 / self.step_s)
                put("hr", cardiac.mean_hr(step_ok), cover * accept_share)
            diffs = cardiac.successive_differences(bt, rr, ok)
            if diffs.size >= 3 and ok.any():
                expected = self.rr_window_s / (float(np.mean(rr[ok])) / 1000.0) - 1.0
                q = min(1.0, diffs.size / max(expected, 1.0)) * float(ok.mean())
                put("rmssd", cardiac.rmssd(diffs), q)
            if step_ok.size:
                return
        # Fallback: a reported heart rate channel (e.g. a BLE strap's hr without RR).
        best_hr: tuple[float, float] | None = None
        for st in self._streams.values():
            if "hr" in st.groups:
                _, v = st.window(start, end)
                mean, cov = vitals.bounded_mean(
                    v[:, st.groups["hr"][0]], *HR_RANGE, st.rate(), self.step_s
                )
                if math.isfinite(mean) and (best_hr is None or cov > best_hr[1]):
                    best_hr = (mean, cov)
        if best_hr is not None:
            put("hr", *best_hr)

    def _vitals(self, start: float, end: float, put: _Put) -> None:
        picks: dict[str, tuple[float, float]] = {}

        def offer(name: str, value: float, q: float) -> None:
            if math.isfinite(value) and (name not in picks or q > picks[name][1]):
                picks[name] = (value, q)

        eda_span = max(self.step_s, vitals.EDA_WINDOW_S)
        for st in self._streams.values():
            g = st.groups
            if not ({"spo2", "temp", "eda", "accel"} & g.keys()):
                continue
            _, v = st.window(start, end)
            if "spo2" in g:
                col = g["spo2"][0]
                offer("spo2", *vitals.bounded_mean(
                    v[:, col], *vitals.SPO2_RANGE, st.column_rate(col), self.step_s))
            if "temp" in g:
                col = g["temp"][0]
                offer("skin_temp", *vitals.bounded_mean(
                    v[:, col], *vitals.TEMP_RANGE, st.column_rate(col), self.step_s))
            if "accel" in g and len(g["accel"]) == 3:
                fs = st.column_rate(g["accel"][0])
                offer("motion", *vitals.motion(v[:, g["accel"]], fs, self.step_s))
            if "eda" in g:
                col = g["eda"][0]
                _, ve = st.window(end - eda_span, end)
                offer("eda_tonic", *vitals.eda_tonic(ve[:, col], st.column_rate(col), eda_span))
        for name, (value, q) in picks.items():
            put(name, value, q)

    def _environment(self, start: float, end: float, put: _Put) -> None:
        """Room climate, particulate matter and place: the step's readings, else the last
        one held; of several streams, the freshest."""
        picks: dict[str, tuple[float, float]] = {}
        for st in self._streams.values():
            kinds = [k for k in _ENV_FEATURES if k in st.groups]
            if not kinds:
                continue
            t, v = st.window(end - ENV_HOLD_S, end)
            if t.size == 0:
                continue
            for kind in kinds:
                x = v[:, st.groups[kind][0]]
                ok = np.isfinite(x)
                if kind == "place":
                    ok &= np.isin(x, _PLACES)
                if not ok.any():
                    continue
                tk, xk = t[ok], x[ok]
                q = _freshness(end - float(tk[-1]))
                now = xk[tk >= start]
                if now.size == 0:
                    value = float(xk[-1])
                elif kind == "place":
                    value = _mode_latest(now)
                else:
                    value = float(np.mean(now))
                name = _ENV_FEATURES[kind]
                if name not in picks or q > picks[name][1]:
                    picks[name] = (value, q)
        for name, (value, q) in picks.items():
            put(name, value, q)

    def _eeg(self, end: float, put: _Put) -> None:
        best: tuple[FloatArray, float] | None = None
        for st in self._streams.values():
            cols = st.groups.get("eeg")
            if not cols:
                continue
            fs = st.rate()
            if fs is None:
                continue
            t, v = st.window(end - self.eeg_window_s, end)
            if t.size < 2:
                continue
            window = _break_gaps(t, v[:, cols], fs)
            rel, q = eeg.relative_band_powers(window, fs)
            q *= min(1.0, t.size / (fs * self.eeg_window_s))
            if np.isfinite(rel).any() and (best is None or q > best[1]):
                best = (rel, q)
        if best is not None:
            rel, q = best
            for (name, _, _), value in zip(eeg.BANDS, rel, strict=True):
                put(name, float(value), q)

    def _fnirs(self, start: float, end: float, put: _Put) -> None:
        hbo_all: list[tuple[float, float, float]] = []  # (hbo, hbr, quality) of long pairs
        for st in self._streams.values():
            for pair in st.pairs:
                res = self._fnirs_pair(st, pair, start, end)
                if res is not None and pair.distance_cm >= fnirs.SHORT_CHANNEL_CM:
                    hbo_all.append(res)
        if not hbo_all:
            return
        good = [r for r in hbo_all if r[2] >= QUALITY_THRESHOLD]
        use = good or hbo_all
        q = float(np.mean([r[2] for r in use])) if good else max(r[2] for r in use)
        put("fnirs_hbo", float(np.mean([r[0] for r in use])), q)
        put("fnirs_hbr", float(np.mean([r[1] for r in use])), q)

    def _fnirs_pair(
        self, st: _Stream, pair: _Pair, start: float, end: float
    ) -> tuple[float, float, float] | None:
        _, v = st.window(start, end)
        x = v[:, pair.cols]
        ok = np.all(np.isfinite(x) & (x > 0), axis=1)
        if not ok.any():
            return None
        step_mean = np.mean(x[ok], axis=0)
        if pair.baseline is None:
            pair.baseline = step_mean
        od = fnirs.optical_density(x[ok], pair.baseline)  # (n, n_wl)
        conc = pair.inverse @ od.T  # (2, n)
        hbo, hbr = float(np.mean(conc[0])), float(np.mean(conc[1]))
        alpha = min(1.0, self.step_s / self.fnirs_baseline_tau_s)
        pair.baseline = pair.baseline + alpha * (step_mean - pair.baseline)
        fs = st.rate()
        cover = vitals.coverage(int(ok.sum()), fs, self.step_s)
        tw, vw = st.window(end - fnirs.SCI_WINDOW_S, end)
        sci: float | None = None
        if fs is not None and tw.size:
            w = _break_gaps(tw, vw[:, [pair.cols[0], pair.cols[-1]]], fs)
            both = np.where(np.all(np.isfinite(w) & (w > 0), axis=1)[:, None], w, np.nan)
            run = longest_finite_run(both[:, 0])
            if run.stop - run.start >= 4 * fs:
                sci = fnirs.scalp_coupling_index(both[run, 0], both[run, 1], fs)
        q = cover if sci is None else cover * max(0.0, sci)
        return hbo, hbr, q

    def _detect_beats(self, st: _Stream, start: float, end: float) -> None:
        fs = st.rate()
        if fs is None:
            return
        # Filters ring at the window's edges: look past the step end into the buffered
        # lateness margin so the step's last beats sit well inside the window.
        t, v = st.window(end - self.beat_window_s, end + min(self.lateness_s, 2.0))
        if t.size < 2 * fs:
            return
        x = _break_gaps(t, v[:, st.beat_cols[:1]], fs)[:, 0]
        tt = _break_gaps(t, t[:, None], fs)[:, 0]
        run = longest_finite_run(np.where(np.isfinite(tt), x, np.nan))
        seg, seg_t = x[run], tt[run]
        if seg.size < 2 * fs:
            return
        pos = cardiac.detect_beats(seg, fs, st.beat_kind)
        if pos.size == 0:
            return
        bt = np.interp(pos, np.arange(seg.size), seg_t)
        # Keep beats of this step only; earlier steps already contributed theirs.
        new = bt[(bt >= start) & (bt < end)]
        if st.beats.size:
            new = new[new > st.beats[-1] + 0.2]
        st.beats = np.concatenate([st.beats[st.beats >= end - self.keep_s], new])

    # -- stream setup ------------------------------------------------------------

    def _new_stream(self, batch: SampleBatch) -> _Stream:
        cols: list[int] = []
        kinds: list[str] = []
        scale: list[float] = []
        offset: list[float] = []
        for j, (name, unit) in enumerate(zip(batch.channels, batch.units, strict=True)):
            kind = input_kind(batch.stream, name)
            if not known_kind(kind) or (kind == "fnirs" and fnirs.parse_channel(name) is None):
                if name not in self.ignored_channels:
                    self.ignored_channels.add(name)
                    self.counters["ignored_channels"] += 1
                continue
            s, o = conversion(batch.stream, name, kind, unit)
            cols.append(j)
            kinds.append(kind)
            scale.append(s)
            offset.append(o)
        names = [batch.channels[j] for j in cols]
        st = _Stream(
            name=batch.stream,
            channels=batch.channels,
            units=batch.units,
            cols=np.asarray(cols, dtype=np.int64),
            scale=np.asarray(scale),
            offset=np.asarray(offset),
            low=np.asarray([PLAUSIBLE[k][0] for k in kinds]),
            high=np.asarray([PLAUSIBLE[k][1] for k in kinds]),
            meta=dict(batch.meta),
        )
        for i, kind in enumerate(kinds):
            st.groups.setdefault(kind, []).append(i)
        if _ENV_FEATURES.keys() & st.groups.keys():
            st.hold_s = ENV_HOLD_S
        if "accel" in st.groups:
            order = {"accel_x": 0, "accel_y": 1, "accel_z": 2}
            st.groups["accel"] = sorted(
                (i for i in st.groups["accel"] if names[i] in order), key=lambda i: order[names[i]]
            )
        if "ecg" in st.groups:
            st.beat_kind, st.beat_cols = "ecg", st.groups["ecg"]
        elif "ppg" in st.groups:
            # Infrared shows the pulse best; an ambient (LED off) reading shows none.
            rank = {"ppg_ir": 0, "ppg": 1, "ppg_green": 2, "ppg_red": 3}
            usable = [i for i in st.groups["ppg"] if "amb" not in names[i]]
            if usable:
                usable.sort(key=lambda i: rank.get(names[i], 4))
                st.beat_kind, st.beat_cols = "ppg", usable
        st.pairs = self._pairs(batch, names, st.groups.get("fnirs", []))
        old = self._streams.pop(batch.stream, None)
        if old is not None:
            # Keep the old layout's samples until they age out: earlier steps still need them.
            _LOGGER.info("features: stream %s changed its channels", batch.stream)
            self._retired += 1
            self._streams[f"{batch.stream}\x00{self._retired}"] = old
        self._streams[batch.stream] = st
        return st

    def _pairs(self, batch: SampleBatch, names: list[str], idx: list[int]) -> list[_Pair]:
        by_pair: dict[str, list[tuple[float, int]]] = {}
        for i in idx:
            parsed = fnirs.parse_channel(names[i])
            assert parsed is not None
            by_pair.setdefault(parsed[0], []).append((parsed[1], i))
        meta = batch.meta
        age = float(meta.get("age_years", self.age_years or fnirs.DEFAULT_AGE_YEARS))
        pairs = []
        for pair, members in sorted(by_pair.items()):
            members.sort()
            if len(members) < 2:
                continue
            wl = tuple(nm for nm, _ in members)
            chans = [names[i] for _, i in members]
            dist = _distance(meta.get("distance_cm"), pair, chans)
            dpf = _dpf(meta.get("dpf"), wl, age)
            try:
                inverse = fnirs.mbll_matrix(wl, dist, dpf)
            except ValueError as exc:
                raise MalformedInput(
                    f"stream {batch.stream!r}, fNIRS pair {pair}: {exc}",
                    hint="fNIRS channels must be named fnirs_<source>_<detector>_<nm>",
                ) from exc
            pairs.append(_Pair(pair, [i for _, i in members], wl, dist, inverse))
        return pairs


# -- internals ---------------------------------------------------------------------

_Put = Callable[[str, float, float], None]  # stores one feature's value and quality


@dataclass
class _Pair:
    name: str
    cols: list[int]  # positions in the stream's used columns, by wavelength
    wavelengths: tuple[float, ...]
    distance_cm: float
    inverse: FloatArray  # (2, n_wl): OD -> (dHbO, dHbR) µM
    baseline: FloatArray | None = None


@dataclass
class _Stream:
    name: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    cols: npt.NDArray[np.int64]  # batch columns the features read
    scale: FloatArray
    offset: FloatArray
    low: FloatArray  # plausible range per column, canonical unit
    high: FloatArray
    meta: dict[str, Any]
    groups: dict[str, list[int]] = field(default_factory=dict)
    pairs: list[_Pair] = field(default_factory=list)
    beat_kind: str = ""
    beat_cols: list[int] = field(default_factory=list)
    beats: FloatArray = field(default_factory=lambda: np.zeros(0))
    hold_s: float = 0.0  # history kept beyond the pipeline's (room readings are held)
    last_t: float | None = None
    _t: FloatArray = field(default_factory=lambda: np.zeros(0))
    _v: FloatArray | None = None
    _pending: list[tuple[FloatArray, FloatArray]] = field(default_factory=list)
    _fs: float | None = None
    _col_fs: dict[int, float] = field(default_factory=dict)

    def append(self, t: FloatArray, v: FloatArray) -> None:
        self._pending.append((t, v))
        self.last_t = float(t[-1])

    def _consolidate(self) -> None:
        if self._pending:
            ts = [self._t, *(p[0] for p in self._pending)]
            vs = ([self._v] if self._v is not None else []) + [p[1] for p in self._pending]
            self._t = np.concatenate(ts)
            self._v = np.concatenate(vs)
            self._pending = []

    def times(self) -> FloatArray:
        self._consolidate()
        return self._t

    def window(self, t0: float, t1: float) -> tuple[FloatArray, FloatArray]:
        self._consolidate()
        if self._v is None:
            return np.zeros(0), np.zeros((0, self.cols.size))
        s = select(self._t, t0, t1)
        return self._t[s], self._v[s]

    def trim(self, cutoff: float) -> None:
        self._consolidate()
        i = int(np.searchsorted(self._t, cutoff, side="left"))
        if i and self._v is not None:
            self._t, self._v = self._t[i:], self._v[i:]

    def column_rate(self, col: int) -> float | None:
        """Rate of one channel: in a mixed-rate recording (a CSV with 1 Hz ``spo2`` beside
        one-row-per-beat ``rr``) each column has its own rows, so the stream's rate misleads."""
        declared = self.meta.get("sampling_rate_hz", self.meta.get("rate_hz"))
        if isinstance(declared, int | float) and declared > 0:
            return float(declared)
        if col in self._col_fs:
            return self._col_fs[col]
        self._consolidate()
        if self._v is None:
            return None
        t = self._t[np.isfinite(self._v[:, col])]
        est = estimate_rate(t)
        if est is not None and t.size >= 16:
            self._col_fs[col] = est
        return est

    def rate(self) -> float | None:
        """Sampling rate: ``sampling_rate_hz`` (or ``rate_hz``) meta, else from the timestamps."""
        if self._fs is None:
            declared = self.meta.get("sampling_rate_hz", self.meta.get("rate_hz"))
            if isinstance(declared, int | float) and declared > 0:
                self._fs = float(declared)
            else:
                est = estimate_rate(self.times())
                if est is not None and self.times().size >= 16:
                    self._fs = est
                return est
        return self._fs


def _freshness(age_s: float) -> float:
    """Quality of a room reading ``age_s`` old: 1 until ENV_FRESH_S, 0 at ENV_HOLD_S."""
    if age_s <= ENV_FRESH_S:
        return 1.0
    return max(0.0, 1.0 - (age_s - ENV_FRESH_S) / (ENV_HOLD_S - ENV_FRESH_S))


def _mode_latest(x: FloatArray) -> float:
    """The most frequent value of ``x``; of tied ones, the one seen last."""
    values, counts = np.unique(x, return_counts=True)
    tied = set(values[counts == counts.max()].tolist())
    for value in x[::-1]:
        if float(value) in tied:
            return float(value)
    return float(x[-1])  # unreachable: x holds a tied value


def _break_gaps(t: FloatArray, x: FloatArray, fs: float) -> FloatArray:
    """``x`` with a NaN row inserted wherever samples are missing, so runs never span a gap."""
    if t.size < 2:
        return x.astype(np.float64)
    gaps = np.nonzero(np.diff(t) > 1.5 / fs)[0]
    if gaps.size == 0:
        return x.astype(np.float64)
    return np.insert(x.astype(np.float64), gaps + 1, np.nan, axis=0)


def _distance(spec: Any, pair: str, chans: list[str]) -> float:
    """Source-detector distance (cm) from a stream's ``distance_cm`` meta."""
    if isinstance(spec, int | float) and spec > 0:
        return float(spec)
    if isinstance(spec, dict):
        for key in (*chans, pair, "default"):
            val = spec.get(key)
            if isinstance(val, int | float) and val > 0:
                return float(val)
    return fnirs.DEFAULT_DISTANCE_CM


def _dpf(spec: Any, wavelengths: tuple[float, ...], age: float) -> tuple[float, ...]:
    """DPF per wavelength: the stream's ``dpf`` meta (number or {nm: dpf}) else Scholkmann-Wolf."""
    out = []
    for nm in wavelengths:
        val: Any = None
        if isinstance(spec, int | float):
            val = spec
        elif isinstance(spec, dict):
            val = spec.get(str(int(nm)), spec.get(int(nm)))
        out.append(
            float(val)
            if isinstance(val, int | float) and val > 0
            else fnirs.scholkmann_dpf(nm, age)
        )
    return tuple(out)
