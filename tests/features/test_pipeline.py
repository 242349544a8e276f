"""FeaturePipeline: step grid, lateness, flush, gaps, masking, units, bounded state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetwin.errors import MalformedInput
from edgetwin.features import vitals
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX, LOCATION, NAMES, QUALITY_THRESHOLD, SCHEMA_VERSION
from edgetwin.sources.simulator import SimulatedPerson, simulate
from edgetwin.types import SampleBatch

T0 = 1_700_000_000.0  # on the 5 s grid


def _vitals(t: np.ndarray, spo2: np.ndarray, stream: str = "ox.vitals") -> SampleBatch:
    return SampleBatch.build(stream, ["spo2"], t, spo2[:, None], meta={"sampling_rate_hz": 4.0})


def test_steps_are_epoch_aligned_and_wait_for_lateness() -> None:
    pipe = FeaturePipeline(step_s=5.0)  # lateness defaults to one step
    t = T0 + 0.3 + np.arange(0, 12.0, 0.25)
    spo2 = 95.0 + (t - T0) // 5  # 95 in step 0, 96 in step 1, 97 in step 2
    frames = pipe.push(_vitals(t[t < T0 + 9.9], spo2[t < T0 + 9.9]))
    assert frames == []  # newest 9.8 s: step 0 needs 10 s (end 5 + lateness 5)
    frames = pipe.push(_vitals(t[t >= T0 + 9.9], spo2[t >= T0 + 9.9]))
    assert [f.t for f in frames] == [T0 + 5.0]  # newest 12.05 s: step 1 not until 15 s
    f = frames[0]
    assert f.schema_version == SCHEMA_VERSION
    assert f.values.shape == f.quality.shape == f.imputed.shape == (len(NAMES),)
    assert not f.imputed.any()
    assert f.values[INDEX["spo2"]] == 95.0
    assert f.quality[INDEX["spo2"]] == pytest.approx(19 / 20)  # step 0 starts at 0.3 s
    assert np.isnan(f.values[INDEX["hr"]]) and f.quality[INDEX["hr"]] == 0.0
    rest = pipe.flush()
    assert [g.t for g in rest] == [T0 + 10.0, T0 + 15.0]
    assert [g.values[INDEX["spo2"]] for g in rest] == [96.0, 97.0]
    assert pipe.flush() == []


def test_custom_step_and_zero_lateness() -> None:
    pipe = FeaturePipeline(step_s=2.0, lateness_s=0.0)
    t = T0 + np.arange(0, 6.0, 0.25)
    frames = pipe.push(_vitals(t, np.full(t.size, 98.0)))
    assert [f.t for f in frames] == [T0 + 2.0, T0 + 4.0]
    with pytest.raises(ValueError, match="step_s"):
        FeaturePipeline(step_s=0.0)


def test_late_and_out_of_order_samples_are_dropped_and_counted() -> None:
    pipe = FeaturePipeline(step_s=5.0, lateness_s=0.0)
    t = T0 + np.arange(0, 11.0, 0.25)
    pipe.push(_vitals(t, np.full(t.size, 97.0)))
    # Another stream delivers samples for the emitted steps 0 and 1: too late.
    late = T0 + np.arange(0, 10.0, 1.0)
    pipe.push(SampleBatch.build("thermo", ["temp"], late, np.full((10, 1), 33.0)))
    assert pipe.counters["late_samples"] == 10
    # The same stream repeating timestamps it already sent (the newest one may repeat).
    pipe.push(_vitals(t[-4:], np.full(4, 50.0)))
    assert pipe.counters["out_of_order"] == 3
    f = pipe.flush()[-1]
    assert f.values[INDEX["spo2"]] == pytest.approx((4 * 97.0 + 50.0) / 5)  # 10..10.75 s + repeat


def test_nan_and_inf_are_masked_never_propagated() -> None:
    pipe = FeaturePipeline()
    t = T0 + np.arange(0, 10.0, 0.25)
    spo2 = np.full(t.size, 96.0)
    spo2[[1, 5, 7]] = np.nan
    spo2[[2, 9]] = [np.inf, -np.inf]
    spo2[25:] = np.nan  # the whole second step is missing
    frames = pipe.push(_vitals(t, spo2)) + pipe.flush()
    assert frames[0].values[INDEX["spo2"]] == 96.0
    assert frames[0].quality[INDEX["spo2"]] == pytest.approx(15 / 20)
    # Step 1 has five finite samples, then nothing.
    assert frames[1].values[INDEX["spo2"]] == 96.0
    assert frames[1].quality[INDEX["spo2"]] == pytest.approx(5 / 20)
    assert pipe.counters["masked_values"] == 5 + 15
    for f in frames:
        ok = ~np.isnan(f.values)
        assert np.isfinite(f.values[ok]).all()
        assert (f.quality[~ok] == 0).all()


def test_unknown_channels_are_ignored_and_counted() -> None:
    pipe = FeaturePipeline()
    t = T0 + np.arange(0, 10.0, 0.5)
    batch = SampleBatch.build(
        "watch", ["spo2", "gyro_x", "battery", "banana", "fnirs_bad"], t, np.full((t.size, 5), 97.0)
    )
    frames = pipe.push(batch) + pipe.flush()
    assert pipe.ignored_channels == {"gyro_x", "battery", "banana", "fnirs_bad"}
    assert pipe.counters["ignored_channels"] == 4
    assert frames[0].values[INDEX["spo2"]] == 97.0
    pipe.push(SampleBatch.build("watch", batch.channels, t + 20, batch.values))
    assert pipe.counters["ignored_channels"] == 4  # counted once per channel
    assert pipe.stats()["ignored"] == ["banana", "battery", "fnirs_bad", "gyro_x"]


def test_units_are_converted_or_rejected_precisely() -> None:
    pipe = FeaturePipeline()
    t = T0 + np.arange(0, 10.0, 1.0)
    batch = SampleBatch.build(
        "thermo",
        ["temp", "accel_x", "accel_y", "accel_z"],
        t,
        np.column_stack([np.full(10, 91.4), np.zeros(10), np.zeros(10), np.full(10, 9.80665)]),
        units=["degF", "m/s^2", "m/s^2", "m/s^2"],
    )
    f = (pipe.push(batch) + pipe.flush())[0]
    assert f.values[INDEX["skin_temp"]] == pytest.approx(33.0)
    assert f.values[INDEX["motion"]] == pytest.approx(0.0)
    bad = SampleBatch.build("thermo2", ["temp"], t, np.full((10, 1), 33.0), units=["mV"])
    with pytest.raises(MalformedInput) as info:
        FeaturePipeline().push(bad)
    msg = str(info.value)
    assert "thermo2" in msg and "'temp'" in msg and "'mV'" in msg and "degC" in msg
    assert info.value.exit_code == 4


def test_short_gaps_become_missing_frames_long_ones_are_skipped() -> None:
    pipe = FeaturePipeline(max_gap_s=60.0)
    frames: list = []
    for start in (0.0, 40.0, 3600.0):  # 30 s silence, then an hour
        t = T0 + start + np.arange(0, 10.0, 0.25)
        frames += pipe.push(_vitals(t, np.full(t.size, 97.0)))
    frames += pipe.flush()
    ts = [round(f.t - T0) for f in frames]
    assert ts[:8] == [5, 10, 15, 20, 25, 30, 35, 40]  # the 30 s hole is on the grid
    assert all(np.isnan(f.values).all() for f in frames[2:8])
    assert all((f.quality == 0).all() for f in frames[2:8])
    assert ts[8:10] == [45, 50]
    assert ts[10:] == [3605, 3610]  # the hour is not filled


def test_vitals_motion_and_eda_tonic() -> None:
    fs = 32.0
    t = np.arange(0, 10.0, 1 / fs)
    mag = 1.0 + 0.2 * np.sin(2 * np.pi * 2.0 * t)
    xyz = np.column_stack([0.6 * mag, 0.0 * mag, 0.8 * mag])
    value, cov = vitals.motion(xyz, fs, 10.0)
    assert value == pytest.approx(0.2 / math.sqrt(2), rel=1e-3)
    assert cov == pytest.approx(1.0)
    # Tonic EDA is the level under sparse phasic responses.
    eda = np.full(40, 4.0)
    eda[10:14] += [0.3, 0.5, 0.4, 0.2]
    assert vitals.eda_tonic(eda, 4.0, 10.0) == (4.0, 1.0)
    assert vitals.eda_tonic(np.full(10, np.nan), 4.0, 10.0) == (
        pytest.approx(math.nan, nan_ok=True),
        0.0,
    )


def test_state_stays_bounded_over_a_long_run() -> None:
    pipe = FeaturePipeline()
    person = SimulatedPerson.from_seed(5)
    sizes = []
    for batch in simulate(person, T0, 240.0, 1.0, ["eeg", "fnirs", "rr"], dropouts=False):
        pipe.push(batch)
        sizes.append(max(st.times().size for st in pipe._streams.values()))
    keep = pipe.keep_s + pipe.step_s + pipe.lateness_s + 1.0
    assert max(sizes) <= keep * 256
    assert max(sizes[-100:]) <= keep * 256


def test_a_stream_that_changes_channels_starts_afresh() -> None:
    pipe = FeaturePipeline()
    t = T0 + np.arange(0, 5.0, 0.5)
    pipe.push(SampleBatch.build("w", ["spo2"], t, np.full((10, 1), 97.0)))
    pipe.push(SampleBatch.build("w", ["spo2", "temp"], t + 5, np.full((10, 2), 33.0)))
    frames = pipe.flush()
    assert frames[-1].values[INDEX["skin_temp"]] == 33.0
    assert frames[0].values[INDEX["spo2"]] == 97.0  # emitted from the old buffer first? no:
    # the old buffer was replaced; step 0 only sees what the new layout holds.


def test_simulated_person_fills_every_feature_with_good_quality() -> None:
    pipe = FeaturePipeline()
    person = SimulatedPerson.from_seed(21)
    frames = []
    for batch in simulate(person, T0, 300.0, 1.0, dropouts=False):
        frames += pipe.push(batch)
    frames += pipe.flush()
    assert len(frames) == 60
    # every feature but where the person is: the simulator has no location
    body_and_room = [INDEX[n] for n in NAMES if n not in LOCATION]
    vals = np.array([f.values[body_and_room] for f in frames[6:]])
    qual = np.array([f.quality[body_and_room] for f in frames[6:]])
    assert np.isfinite(vals).all()
    assert (qual >= QUALITY_THRESHOLD).mean(axis=0).min() > 0.9
    hr = vals[:, INDEX["hr"]]
    assert 40 < hr.mean() < 120
    rel = vals[
        :, [INDEX[n] for n in ("eeg_delta", "eeg_theta", "eeg_alpha", "eeg_beta", "eeg_gamma")]
    ]
    np.testing.assert_allclose(rel.sum(axis=1), 1.0)
    assert pipe.counters["late_samples"] == 0


def test_ppg_stream_yields_heart_rate_close_to_the_simulated_beats() -> None:
    pipe = FeaturePipeline()
    person = SimulatedPerson.from_seed(4)
    frames, beats = [], []
    for batch in simulate(person, T0, 120.0, 1.0, ["ppg", "rr"], dropouts=False):
        if batch.stream == "sim.rr":
            beats.append(batch)
            continue
        frames += pipe.push(batch)
    frames += pipe.flush()
    bt = np.concatenate([b.t for b in beats])
    rr = np.concatenate([b.values[:, 0] for b in beats])
    checked = 0
    for f in frames[2:-1]:
        sel = (bt >= f.t - 5) & (bt < f.t)
        assert f.values[INDEX["hr"]] == pytest.approx(60000 / rr[sel].mean(), abs=3.0)
        checked += 1
    assert checked >= 18


def test_reported_rr_wins_over_detected_beats() -> None:
    """A wristband's RR intervals beat a headset's PPG, however many peaks the PPG shows."""
    pipe = FeaturePipeline()
    fs = 64.0
    t = T0 + np.arange(0, 30.0, 1 / fs)
    ppg = np.sin(2 * np.pi * 2.0 * t)  # 120 "bpm" of clean pulses
    beats = T0 + np.arange(0.5, 30.0, 1.0)  # 60 bpm of reported RR
    frames = []
    for sec in range(30):  # both arrive second by second
        sl = (t >= T0 + sec) & (t < T0 + sec + 1)
        meta = {"sampling_rate_hz": fs}
        frames += pipe.push(SampleBatch.build("hs.ppg", ["ppg"], t[sl], ppg[sl, None], meta=meta))
        b = (beats >= T0 + sec) & (beats < T0 + sec + 1)
        frames += pipe.push(SampleBatch.build("band.rr", ["rr"], beats[b], np.full((1, 1), 1e3)))
    frames += pipe.flush()
    hr = np.array([f.values[INDEX["hr"]] for f in frames[1:]])
    np.testing.assert_allclose(hr, 60.0)
    # Without the band, the PPG's beats give the rate.
    solo = FeaturePipeline()
    frames = solo.push(
        SampleBatch.build("hs.ppg", ["ppg"], t, ppg[:, None], meta={"sampling_rate_hz": fs})
    )
    frames += solo.flush()
    hr = np.array([f.values[INDEX["hr"]] for f in frames[2:-1]])
    np.testing.assert_allclose(hr, 120.0, atol=1.0)
