"""The numpy fallback (a Pi without BrainFlow's native library) agrees with BrainFlow."""

from __future__ import annotations

import numpy as np
import pytest

from edgetwin.errors import DriverMissing
from edgetwin.features import dsp
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX
from edgetwin.sources.simulator import SimulatedPerson, simulate

BANDS = ((1.0, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 45.0))


def _signal(fs: float, seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    return (
        20 * np.sin(2 * np.pi * 10 * t) + 8 * np.sin(2 * np.pi * 6 * t)
        + 5 * np.sin(2 * np.pi * 20 * t) + 3 * t + rng.normal(0, 2, t.size)
    )


@pytest.mark.parametrize("fs", [250.0, 256.0])
def test_relative_band_powers_match_brainflow(fs: float) -> None:
    x = _signal(fs)
    nfft = 512 if fs == 256.0 else 256
    native = dsp.welch_band_powers(x, fs, nfft, BANDS)
    fallback = dsp._np_band_powers(dsp._np_detrended(x.copy()), fs, nfft, BANDS)
    # Same method; window and edge-bin details differ, so shares agree to a few percent.
    np.testing.assert_allclose(fallback / fallback.sum(), native / native.sum(), atol=0.04)


def test_bandpass_matches_brainflow_away_from_the_edges() -> None:
    fs = 64.0
    x = _signal(fs, seconds=20)
    native = dsp.bandpassed(x, fs, 5.0, 15.0, order=2)
    fallback = dsp._np_bandpassed(dsp._np_detrended(x.copy()), fs, 5.0, 15.0, order=2)
    mid = slice(int(2 * fs), int(-2 * fs))
    err = np.sqrt(np.mean((native[mid] - fallback[mid]) ** 2)) / np.std(native[mid])
    assert err < 0.05
    # The 10 Hz component passes, the 20 Hz one is attenuated.
    spec = np.abs(np.fft.rfft(fallback))
    f = np.fft.rfftfreq(fallback.size, 1 / fs)
    assert spec[np.argmin(abs(f - 10))] > 10 * spec[np.argmin(abs(f - 20))]


def test_detrend_removes_a_line() -> None:
    t = np.arange(100, dtype=float)
    assert np.allclose(dsp._np_detrended(3 * t + 7), 0, atol=1e-9)


def test_features_survive_a_missing_native_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise DriverMissing("BrainFlow's native library is missing for this CPU")

    monkeypatch.setattr(dsp, "_bf", missing)
    dsp.native.cache_clear()
    try:
        person = SimulatedPerson.from_seed(2)
        pipe = FeaturePipeline(step_s=5.0)
        frames = []
        for batch in simulate(person, 1_767_225_600.0, 60.0, modalities=("rr", "vitals", "eeg")):
            frames += pipe.push(batch)
        frames += pipe.flush()
        assert dsp.native() is None
    finally:
        dsp.native.cache_clear()
    usable = [f for f in frames if np.isfinite(f.values[INDEX["eeg_alpha"]])]
    assert len(usable) >= 8
    assert all(np.isfinite(f.values[INDEX["hr"]]) for f in frames[2:])
    shares = np.array([[f.values[INDEX[b]] for b in ("eeg_delta", "eeg_theta", "eeg_alpha",
                                                       "eeg_beta", "eeg_gamma")] for f in usable])
    assert np.allclose(shares.sum(axis=1), 1.0, atol=0.05)
