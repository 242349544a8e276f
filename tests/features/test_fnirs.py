"""fNIRS: the modified Beer-Lambert law against MNE-Python, the extinction table, SCI."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetwin.features import fnirs
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX
from edgetwin.types import SampleBatch


def _mne_table() -> np.ndarray:
    import mne
    from scipy.io import loadmat

    path = Path(mne.__file__).parent / "data" / "extinction_coef.mat"
    return np.asarray(loadmat(path)["extinct_coef"])


def test_extinction_table_is_prahls_as_mne_ships_it() -> None:
    table = _mne_table()
    rows = table[(table[:, 0] >= 650) & (table[:, 0] <= 950)]
    assert rows.shape[0] == 151
    for nm, hbo, hbr in rows:
        assert fnirs.extinction(nm) == (pytest.approx(hbo), pytest.approx(hbr))
    # Interpolates between rows and refuses wavelengths it has no data for.
    assert fnirs.extinction(761.0)[1] == pytest.approx(
        (fnirs.extinction(760)[1] + fnirs.extinction(762)[1]) / 2
    )
    with pytest.raises(ValueError, match="outside"):
        fnirs.extinction(1200)


def test_scholkmann_dpf_matches_the_published_formula_values() -> None:
    # Worked by hand from eq. 1 of Scholkmann & Wolf 2013 for a 30-year-old:
    # 223.3 + 0.05624*30^0.8493 - 5.723e-7*760^3 + 0.001245*760^2 - 0.9025*760 = 6.297
    assert fnirs.scholkmann_dpf(760, 30) == pytest.approx(6.297, abs=0.001)
    assert fnirs.scholkmann_dpf(850, 30) == pytest.approx(5.234, abs=0.001)
    assert fnirs.scholkmann_dpf(760, 60) > fnirs.scholkmann_dpf(760, 20)  # longer paths with age


def _mne_raw(intensity: np.ndarray, fs: float, distance_m: float, wavelengths: tuple[int, ...]):
    import mne

    names = [f"S1_D1 {nm}" for nm in wavelengths]
    info = mne.create_info(names, fs, ch_types="fnirs_cw_amplitude")
    for ch, nm in zip(info["chs"], wavelengths, strict=True):
        ch["loc"][3:6] = (0.0, 0.0, 0.0)  # source
        ch["loc"][6:9] = (distance_m, 0.0, 0.0)  # detector
        ch["loc"][9] = nm
    return mne.io.RawArray(intensity, info, verbose="error")


@pytest.mark.parametrize(("wavelengths", "distance_cm"), [((760, 850), 3.0), ((730, 850), 1.0)])
def test_mbll_agrees_with_mne_beer_lambert_law(
    wavelengths: tuple[int, int], distance_cm: float
) -> None:
    import mne

    rng = np.random.default_rng(4)
    fs, n = 10.0, 600
    t = np.arange(n) / fs
    intensity = np.stack(
        [
            2e4 * (1 + 0.03 * np.sin(2 * np.pi * 0.1 * t) + 0.01 * rng.standard_normal(n)),
            3e4 * (1 + 0.02 * np.sin(2 * np.pi * 0.1 * t + 1.0) + 0.01 * rng.standard_normal(n)),
        ]
    )
    dpf = tuple(fnirs.scholkmann_dpf(nm, 40.0) for nm in wavelengths)
    raw = _mne_raw(intensity, fs, distance_cm / 100.0, wavelengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MNE's notes about montage-less data
        od_raw = mne.preprocessing.nirs.optical_density(raw, verbose="error")
        hb = mne.preprocessing.nirs.beer_lambert_law(od_raw, ppf=dpf)
    # mol/L: [HbO, HbR]. MNE rounds ln(10)/10 to 0.2303; undo that rounding to compare exactly.
    ref = hb.get_data() * (0.2303 / (math.log(10) / 10))
    od = fnirs.optical_density(intensity.T, intensity.mean(axis=1)).T
    np.testing.assert_allclose(od, od_raw.get_data(), rtol=1e-10, atol=1e-12)
    hbo, hbr = fnirs.mbll(od, tuple(float(w) for w in wavelengths), distance_cm, dpf)
    np.testing.assert_allclose(hbo, ref[0] * 1e6, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hbr, ref[1] * 1e6, rtol=1e-9, atol=1e-9)


def test_scalp_coupling_index_separates_good_and_loose_optodes() -> None:
    rng = np.random.default_rng(0)
    fs = 10.0
    t = np.arange(200) / fs
    pulse = np.sin(2 * np.pi * 1.2 * t)
    a = 1e4 * (1 + 0.01 * pulse + 0.001 * rng.standard_normal(t.size))
    b = 2e4 * (1 + 0.008 * pulse + 0.001 * rng.standard_normal(t.size))
    good = fnirs.scalp_coupling_index(a, b, fs)
    assert good is not None and good > 0.9
    c = 1e4 * (1 + 0.01 * rng.standard_normal(t.size))
    d = 2e4 * (1 + 0.01 * rng.standard_normal(t.size))
    loose = fnirs.scalp_coupling_index(c, d, fs)
    assert loose is not None and abs(loose) < 0.35
    assert fnirs.scalp_coupling_index(a, b, 4.0) is None  # no cardiac band at 4 Hz


def test_pipeline_recovers_known_haemoglobin_changes() -> None:
    """Forward-model intensities with MNE's coefficient table, recover them with the pipeline."""
    table = _mne_table()
    eps = {nm: table[table[:, 0] == nm][0, 1:] for nm in (760, 850)}
    fs, n = 10.0, 1200
    t0 = 1_700_000_000.0
    t = t0 + np.arange(n) / fs
    rel = t - t0
    # An activation from 40 s to 80 s: HbO +2 µM, HbR -0.6 µM; a 1.1 Hz pulse for the SCI.
    box = ((rel >= 40) & (rel < 80)).astype(float)
    hbo = 2.0 * box + 0.3 * np.sin(2 * np.pi * 1.1 * rel)
    hbr = -0.6 * box + 0.05 * np.sin(2 * np.pi * 1.1 * rel)
    age = 35.0
    chans, cols = [], []
    for nm in (760, 850):
        dpf = fnirs.scholkmann_dpf(nm, age)
        od = math.log(10) * (eps[nm][0] * hbo + eps[nm][1] * hbr) * 1e-6 * 3.0 * dpf
        chans.append(f"fnirs_s1_d1_{nm}")
        cols.append(2e4 * np.exp(-od))
    values = np.stack(cols, axis=1)
    pipe = FeaturePipeline(fnirs_baseline_tau_s=math.inf)
    frames = []
    meta = {
        "distance_cm": 3.0,
        "wavelengths_nm": [760, 850],
        "age_years": age,
        "sampling_rate_hz": fs,
    }
    for i in range(0, n, 10):
        frames += pipe.push(
            SampleBatch.build("cap.fnirs", chans, t[i : i + 10], values[i : i + 10], meta=meta)
        )
    frames += pipe.flush()
    assert len(frames) == 24
    for f in frames:
        mid = f.t - 2.5 - t0
        inside = 40 <= mid < 80
        assert f.values[INDEX["fnirs_hbo"]] == pytest.approx(2.0 if inside else 0.0, abs=0.1)
        assert f.values[INDEX["fnirs_hbr"]] == pytest.approx(-0.6 if inside else 0.0, abs=0.05)
    q = np.array([f.quality[INDEX["fnirs_hbo"]] for f in frames[2:]])
    # The box's abrupt edges leak into the cardiac band for a step or two; elsewhere SCI ~ 1.
    assert q.min() > 0.8
    assert np.median(q) > 0.95


def test_bad_wavelength_is_a_precise_error() -> None:
    from edgetwin.errors import MalformedInput

    pipe = FeaturePipeline()
    batch = SampleBatch.build(
        "cap.fnirs", ["fnirs_s1_d1_1300", "fnirs_s1_d1_850"], [1.0], [[1.0, 1.0]]
    )
    with pytest.raises(MalformedInput, match=r"cap\.fnirs.*s1_d1.*1300"):
        pipe.push(batch)
