"""The device-clock fit and the frame-to-rows mapper, with synthetic frames (no I/O)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgetwin.sources import bridge_protocol as bp
from edgetwin.sources.serial import BridgeMapper, ClockEstimator, descriptor_meta, stream_name

HOST0 = 1_700_000_000.0


def _descriptor(rate_mhz: int = 10_000) -> bp.Descriptor:
    device = bp.DeviceFrame("dev", "m", (1, 0, 0), rate_mhz, 3)
    channels = [
        bp.ChannelFrame(0, "fnirs_s1_d1_760", "a.u.", bp.SampleFormat.I24, 0.5, 0.0, 760, 300),
        bp.ChannelFrame(1, "fnirs_s1_d1_850", "a.u.", bp.SampleFormat.I24, 0.5, 0.0, 850, 300),
        bp.ChannelFrame(2, "fnirs_s1_d9_850", "a.u.", bp.SampleFormat.I16, 1.0, -3.0, 850, 80),
    ]
    return bp.build_descriptor(device, channels)


def _frame(desc: bp.Descriptor, seq: int, t_us: int, n: int = 1) -> bp.SamplesFrame:
    rows = [[(seq + k) % 1000, -((seq + k) % 1000), (seq + k) % 100] for k in range(n)]
    return bp.SamplesFrame(seq % 2**32, t_us, n, bp.pack_rows(desc, rows))


@pytest.mark.parametrize("drift_ppm", [-120.0, 0.0, 45.0])
def test_clock_recovers_offset_and_drift_under_jittery_latency(drift_ppm: float) -> None:
    rng = random.Random(1)
    clock = ClockEstimator()
    offset = HOST0 - 12.5  # the device booted 12.5 s before HOST0
    errors = []
    for k in range(10 * 150):  # 10 Hz for 150 s
        dev = k / 10.0
        true_host = offset + dev * (1 + drift_ppm * 1e-6)
        # USB latency: 1-4 ms typical, sometimes a 50 ms stall; never negative.
        latency = 0.001 + rng.expovariate(1 / 0.003) + (0.05 if rng.random() < 0.02 else 0.0)
        clock.observe(dev, true_host + latency)
        if k > 600:
            errors.append(float(clock.to_host(dev)) - true_host)
    assert clock.drift_ppm == pytest.approx(drift_ppm, abs=5.0)
    # The fit tracks the lower envelope: error well under the typical latency.
    assert np.max(np.abs(errors)) < 0.002


def test_clock_before_three_windows_uses_the_minimum_offset() -> None:
    clock = ClockEstimator()
    clock.observe(1.0, HOST0 + 1.010)
    clock.observe(1.1, HOST0 + 1.102)
    assert clock.drift_ppm == 0.0
    assert float(clock.to_host(2.0)) == pytest.approx(HOST0 + 2.002)
    clock.reset()
    assert not clock.ready


def test_mapper_scales_and_times_rows() -> None:
    desc = _descriptor()
    mapper = BridgeMapper("head.fnirs", desc, ClockEstimator())
    t, values, gaps = mapper.on_samples(_frame(desc, 10, 1_000_000, n=3), HOST0)
    assert gaps == []
    np.testing.assert_array_equal(values, [[5.0, -5.0, 7.0], [5.5, -5.5, 8.0], [6.0, -6.0, 9.0]])
    np.testing.assert_allclose(np.diff(t), 0.1, atol=1e-6)  # float64 epoch seconds: ~0.2 µs
    assert t[-1] == pytest.approx(HOST0)  # the last row's arrival anchors the first estimate


def test_mapper_fills_gaps_with_nan_rows_and_counts_them() -> None:
    desc = _descriptor()
    mapper = BridgeMapper("head.fnirs", desc, ClockEstimator(), max_fill_s=1.0)
    mapper.on_samples(_frame(desc, 0, 0), HOST0)
    t, values, gaps = mapper.on_samples(_frame(desc, 4, 400_000), HOST0 + 0.4)
    assert len(t) == 4
    assert np.isnan(values[:3]).all()
    assert not np.isnan(values[3]).any()
    assert gaps == [[pytest.approx(t[0]), pytest.approx(t[2])]]
    assert (mapper.gaps, mapper.lost_samples) == (1, 3)
    # A long outage: counted in full, but at most max_fill_s of NaN rows.
    t, values, _ = mapper.on_samples(_frame(desc, 105, 10_500_000), HOST0 + 10.5)
    assert len(t) == 11
    assert (mapper.gaps, mapper.lost_samples) == (2, 103)


def test_mapper_sequence_wraps_without_a_gap_and_detects_reboot() -> None:
    desc = _descriptor()
    clock = ClockEstimator()
    mapper = BridgeMapper("head.fnirs", desc, clock)
    mapper.on_samples(_frame(desc, 2**32 - 1, 5_000_000), HOST0)
    t, _, gaps = mapper.on_samples(_frame(desc, 0, 5_100_000), HOST0 + 0.1)
    assert (gaps, mapper.gaps, mapper.restarts) == ([], 0, 0)
    # Reboot: sequence and device clock start over; no gap, a restart, times stay ordered.
    t2, _, gaps = mapper.on_samples(_frame(desc, 0, 0), HOST0 + 3.0)
    assert (gaps, mapper.gaps, mapper.restarts) == ([], 0, 1)
    assert t2[0] >= t[-1]
    assert t2[0] == pytest.approx(HOST0 + 3.0)


def test_mapper_rejects_a_payload_of_the_wrong_length() -> None:
    desc = _descriptor()
    mapper = BridgeMapper("head.fnirs", desc, ClockEstimator())
    with pytest.raises(bp.BadFrame) as info:
        mapper.on_samples(bp.SamplesFrame(0, 0, 2, b"\x00" * (desc.row_bytes * 2 + 1)), HOST0)
    assert info.value.reason == "length"


def test_meta_and_stream_names() -> None:
    desc = _descriptor()
    meta = descriptor_meta(desc)
    assert meta["wavelength_nm"]["fnirs_s1_d9_850"] == 850
    assert meta["distance_cm"] == {"fnirs_s1_d1_760": 3.0, "fnirs_s1_d1_850": 3.0,
                                   "fnirs_s1_d9_850": 0.8}
    assert meta["rate_hz"] == 10.0
    assert stream_name("head", desc) == "head.fnirs"
    mixed = bp.build_descriptor(
        bp.DeviceFrame("d", "", (0, 0, 1), 1000, 2),
        [bp.ChannelFrame(0, "ppg", "a.u.", bp.SampleFormat.I32, 1.0),
         bp.ChannelFrame(1, "eda", "uS", bp.SampleFormat.I16, 0.001)],
    )
    assert stream_name("rig", mixed) == "rig.bridge"
    assert "wavelength_nm" not in descriptor_meta(mixed)


def test_a_run_of_frames_maps_in_one_pass_exactly_as_frame_by_frame() -> None:
    from edgetwin.sources.serial import _NotARun

    desc = _descriptor()
    one, many = (BridgeMapper("head.fnirs", desc, ClockEstimator()) for _ in range(2))
    for m in (one, many):  # the same settled estimate first
        for k in range(80):
            m.on_samples(_frame(desc, 2 * k, 200_000 * k, n=2), HOST0 + 0.2 * k + 0.1 + 0.003)
    run = [_frame(desc, 160 + 3 * k, 16_000_000 + 300_000 * k, n=3) for k in range(5)]
    host = HOST0 + 17.5
    rows = [one.on_samples(f, host) for f in run]
    t, values, gaps = many.on_run(run, host)
    assert gaps == []
    np.testing.assert_array_equal(values, np.vstack([r[1] for r in rows]))
    np.testing.assert_allclose(t, np.concatenate([r[0] for r in rows]), atol=1e-6)
    assert np.all(np.diff(t) > 0)
    assert (many._next_seq, many._last_dev_s) == (one._next_seq, one._last_dev_s)
    # a gap, a reboot or a bad length inside a run: refused with the mapper unchanged
    before = (many._next_seq, many._last_dev_s, many._last_t)
    for bad in (
        [_frame(desc, 175, 17_500_000), _frame(desc, 180, 18_000_000)],  # rows 176..179 lost
        [_frame(desc, 175, 17_500_000), _frame(desc, 176, 1_000)],  # the device rebooted
        [_frame(desc, 175, 17_500_000), bp.SamplesFrame(176, 17_600_000, 2, b"\x00")],
    ):
        with pytest.raises(_NotARun):
            many.on_run(bad, host + 1)
        assert (many._next_seq, many._last_dev_s, many._last_t) == before
