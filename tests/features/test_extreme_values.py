"""Extreme but finite sample values (accepted by ingest) never overflow a feature computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.types import SampleBatch

T0 = 1_700_000_000.0

# One stream per channel kind the pipeline reads, at a plausible rate.
KINDS = [
    ("eeg", ["eeg_fz", "eeg_cz"], 256.0),
    ("ppg", ["ppg"], 64.0),
    ("ecg", ["ecg_i"], 256.0),
    ("accel", ["accel_x", "accel_y", "accel_z"], 32.0),
    ("vitals", ["hr", "spo2", "temp", "eda"], 4.0),
    ("fnirs", ["fnirs_s1_d1_730", "fnirs_s1_d1_850"], 10.0),
]


@pytest.mark.parametrize("value", [1e308, -1e308, 1e300, np.finfo(np.float64).max])
@pytest.mark.parametrize(("kind", "channels", "rate"), KINDS, ids=[k[0] for k in KINDS])
def test_extreme_finite_values_give_no_overflow_and_no_feature_from_them(
    kind: str, channels: list[str], rate: float, value: float
) -> None:
    t = T0 + np.arange(0.0, 40.0, 1.0 / rate)
    rng = np.random.default_rng(0)
    x = rng.normal(10.0, 1.0, (t.size, len(channels)))
    x[t.size // 2 :, 0] = value  # the second half of the first channel is the hostile value
    pipe = FeaturePipeline(step_s=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        batch = SampleBatch.build(f"x.{kind}", channels, t, x, meta={"sampling_rate_hz": rate})
        frames = pipe.push(batch)
        frames += pipe.flush()
    assert frames, "the pipeline made no frames at all"
    for f in frames:
        finite = f.values[np.isfinite(f.values)]
        # No feature carries the hostile magnitude through (a mean with 1e308 is garbage).
        assert np.all(np.abs(finite) < 1e12), (kind, f.t, f.values)
