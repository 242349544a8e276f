"""EEG relative band powers on sine mixtures whose answer is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from edgetwin.features import eeg
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX
from edgetwin.types import SampleBatch

# One sine per band, each >= 1 Hz from a band edge: power of a sine is A^2 / 2.
FREQS = np.array([2.5, 6.0, 10.5, 21.0, 37.5])
AMPS = np.array([10.0, 5.0, 20.0, 8.0, 3.0])
EXPECTED = AMPS**2 / np.sum(AMPS**2)


def _mixture(fs: float, seconds: float, phase_seed: int = 0) -> np.ndarray:
    t = np.arange(int(fs * seconds)) / fs
    phases = np.random.default_rng(phase_seed).uniform(0, 2 * np.pi, FREQS.size)
    return np.sum(AMPS[:, None] * np.sin(2 * np.pi * FREQS[:, None] * t + phases[:, None]), axis=0)


@pytest.mark.parametrize("fs", [250.0, 256.0, 500.0])
def test_relative_band_powers_of_a_sine_mixture(fs: float) -> None:
    x = _mixture(fs, 4.0)
    rel, q = eeg.relative_band_powers(np.stack([x, 0.5 * x], axis=1), fs)
    assert q == pytest.approx(1.0)
    np.testing.assert_allclose(rel, EXPECTED, atol=0.01)
    assert rel.sum() == pytest.approx(1.0)


def test_single_band_sines_land_in_their_band() -> None:
    fs = 256.0
    t = np.arange(1024) / fs
    for k, f in enumerate(FREQS):
        rel, _ = eeg.relative_band_powers(np.sin(2 * np.pi * f * t)[:, None], fs)
        assert rel[k] > 0.97, (f, rel)


def test_nan_samples_are_skipped_and_lower_quality() -> None:
    fs = 256.0
    x = _mixture(fs, 4.0)
    y = x.copy()
    y[100:110] = np.nan
    y[200] = np.inf
    both = np.stack([x, y], axis=1)
    rel, q = eeg.relative_band_powers(np.where(np.isfinite(both), both, np.nan), fs)
    assert np.isfinite(rel).all()
    np.testing.assert_allclose(rel, EXPECTED, atol=0.02)
    assert 0.5 < q < 1.0


def test_flat_railed_and_short_channels_are_unusable() -> None:
    fs = 256.0
    x = _mixture(fs, 4.0)
    flat = np.zeros_like(x)
    railed = 5000.0 * np.sign(np.sin(np.arange(x.size)))
    rel, q = eeg.relative_band_powers(np.stack([x, flat, railed], axis=1), fs)
    np.testing.assert_allclose(rel, EXPECTED, atol=0.01)
    assert q == pytest.approx(1 / 3)
    short = x.copy()
    short[::300] = np.nan  # no finite run reaches 2 s
    rel2, q2 = eeg.relative_band_powers(short[:, None], fs)
    assert np.isnan(rel2).all()
    assert q2 == 0.0


def test_pipeline_emits_band_powers_for_an_eeg_stream() -> None:
    fs = 250.0
    t0 = 1_700_000_000.0
    n = int(30 * fs)
    x = _mixture(fs, 30.0)
    t = t0 + np.arange(n) / fs
    values = np.stack([x, x * 0.8, x * 1.2, x], axis=1)
    values[1000:1200, 2] = np.nan  # a lifted electrode for 0.8 s
    pipe = FeaturePipeline()
    frames = []
    for i in range(0, n, 125):
        frames += pipe.push(
            SampleBatch.build(
                "hs.default",
                ["eeg_af7", "eeg_af8", "eeg_tp9", "eeg_tp10"],
                t[i : i + 125],
                values[i : i + 125],
                meta={"sampling_rate_hz": fs},
            )
        )
    frames += pipe.flush()
    assert len(frames) == 6
    for f in frames[1:]:
        got = [f.values[INDEX[name]] for name, _, _ in eeg.BANDS]
        np.testing.assert_allclose(got, EXPECTED, atol=0.015)
        assert f.quality[INDEX["eeg_alpha"]] > 0.8
    assert pipe.counters["masked_values"] == 200
