"""The few BrainFlow ``DataFilter`` operations the features use, loaded lazily and once.

BrainFlow is already a runtime dependency (the headset source needs it), so
its native filters and Welch PSD do the signal processing here instead of
adding scipy to the daemon. The import is deferred to the first feature that
needs it, silences the pkg_resources deprecation warning brainflow 5.23
triggers on Python 3.11, and turns a missing native library into
``DriverMissing``. Arrays are copied before BrainFlow filters them in place.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from edgetwin.errors import DriverMissing
from edgetwin.types import FloatArray


@functools.cache
def _bf() -> Any:
    """BrainFlow's ``data_filter`` module with its native library loaded."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*pkg_resources.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pkg_resources")
            from brainflow import data_filter

            data_filter.DataHandlerDLL.get_instance()
    except (ImportError, OSError) as exc:
        raise DriverMissing(
            f"BrainFlow's signal-processing library cannot be loaded: {type(exc).__name__}: {exc}",
            hint="reinstall brainflow, or build its native library for this CPU",
        ) from exc
    return data_filter


def detrended(x: FloatArray) -> FloatArray:
    """A linearly detrended copy of ``x``."""
    bf = _bf()
    y = np.array(x, dtype=np.float64, copy=True, order="C")
    bf.DataFilter.detrend(y, bf.DetrendOperations.LINEAR.value)
    return y


def bandpassed(x: FloatArray, fs: float, lo: float, hi: float, order: int = 2) -> FloatArray:
    """A detrended, zero-phase Butterworth band-passed copy of ``x``."""
    bf = _bf()
    y = detrended(x)
    bf.DataFilter.perform_bandpass(
        y, round(fs), lo, hi, order, bf.FilterTypes.BUTTERWORTH_ZERO_PHASE.value, 0.0
    )
    return y


def welch_band_powers(
    x: FloatArray, fs: float, nfft: int, bands: tuple[tuple[float, float], ...]
) -> FloatArray:
    """Welch PSD (Hann, 50 % overlap) of detrended ``x``, integrated over each band."""
    bf = _bf()
    y = detrended(x)
    psd = bf.DataFilter.get_psd_welch(
        y, nfft, nfft // 2, round(fs), bf.WindowOperations.HANNING.value
    )
    return np.array([bf.DataFilter.get_band_power(psd, lo, hi) for lo, hi in bands])
