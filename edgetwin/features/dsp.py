"""The few BrainFlow ``DataFilter`` operations the features use, loaded lazily and once.

BrainFlow is already a runtime dependency (the headset source needs it), so
its native filters and Welch PSD do the signal processing here instead of
adding scipy to the daemon. The import is deferred to the first feature that
needs it, silences the pkg_resources deprecation warning brainflow 5.23
triggers on Python 3.11, and turns a missing native library into
``DriverMissing``. Arrays are copied before BrainFlow filters them in place.

Where BrainFlow's native library is missing (its PyPI wheel carries x86-64
libraries only, so a Raspberry Pi has none until it is built), the same three
operations fall back to numpy: a least-squares detrend, a zero-phase FFT filter
with the Butterworth filtfilt magnitude, and Welch's method with a Hann window.
The features stay available and agree with BrainFlow's (tests/features/test_dsp.py);
only BrainFlow's headset source is lost.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import numpy as np

from edgetwin.errors import DriverMissing
from edgetwin.types import FloatArray

_LOGGER = logging.getLogger(__name__)


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


@functools.cache
def native() -> Any | None:
    """BrainFlow's data_filter, or None (logged once) when its native library is missing."""
    try:
        return _bf()
    except DriverMissing as exc:
        _LOGGER.warning("%s; features use the numpy fallback", exc)
        return None


def detrended(x: FloatArray) -> FloatArray:
    """A linearly detrended copy of ``x``."""
    bf = native()
    y = np.array(x, dtype=np.float64, copy=True, order="C")
    if bf is None:
        return _np_detrended(y)
    bf.DataFilter.detrend(y, bf.DetrendOperations.LINEAR.value)
    return y


def bandpassed(x: FloatArray, fs: float, lo: float, hi: float, order: int = 2) -> FloatArray:
    """A detrended, zero-phase Butterworth band-passed copy of ``x``."""
    bf = native()
    y = detrended(x)
    if bf is None:
        return _np_bandpassed(y, fs, lo, hi, order)
    bf.DataFilter.perform_bandpass(
        y, round(fs), lo, hi, order, bf.FilterTypes.BUTTERWORTH_ZERO_PHASE.value, 0.0
    )
    return y


def welch_band_powers(
    x: FloatArray, fs: float, nfft: int, bands: tuple[tuple[float, float], ...]
) -> FloatArray:
    """Welch PSD (Hann, 50 % overlap) of detrended ``x``, integrated over each band."""
    bf = native()
    y = detrended(x)
    if bf is None:
        return _np_band_powers(y, fs, nfft, bands)
    psd = bf.DataFilter.get_psd_welch(
        y, nfft, nfft // 2, round(fs), bf.WindowOperations.HANNING.value
    )
    return np.array([bf.DataFilter.get_band_power(psd, lo, hi) for lo, hi in bands])


# -- numpy fallbacks -----------------------------------------------------------


def _np_detrended(y: FloatArray) -> FloatArray:
    if y.size < 2:
        return y - y.mean() if y.size else y
    t = np.arange(y.size, dtype=np.float64)
    slope, intercept = np.polyfit(t, y, 1)
    return np.asarray(y - (slope * t + intercept), dtype=np.float64)


def _np_bandpassed(y: FloatArray, fs: float, lo: float, hi: float, order: int) -> FloatArray:
    """Zero-phase band-pass with the gain of a Butterworth band-pass run forward and back.

    A band-pass Butterworth of order n (the low-pass prototype mapped onto [lo, hi]) has
    |H(f)|^2 = 1 / (1 + ((f^2 - f0^2) / (f * (hi - lo)))^(2n)), f0 = sqrt(lo * hi); running it
    forward and backward (BrainFlow's BUTTERWORTH_ZERO_PHASE) applies |H|^2 with no phase.
    """
    n = y.size
    spectrum = np.fft.rfft(y)
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / fs), np.finfo(float).tiny)
    f0_sq = lo * hi
    with np.errstate(over="ignore"):  # at DC the ratio overflows: gain 0, as it should be
        gain = 1.0 / (1.0 + ((f * f - f0_sq) / (f * (hi - lo))) ** (2 * order))
    return np.asarray(np.fft.irfft(spectrum * gain, n), dtype=np.float64)


def _np_band_powers(
    y: FloatArray, fs: float, nfft: int, bands: tuple[tuple[float, float], ...]
) -> FloatArray:
    """Welch's one-sided PSD (Hann, 50 % overlap), integrated over each band (trapezoid)."""
    step = max(1, nfft // 2)
    window = np.hanning(nfft)
    starts = range(0, max(1, y.size - nfft + 1), step)
    full = [y[s : s + nfft] for s in starts if y[s : s + nfft].size == nfft]
    segs = np.stack(full) if full else np.pad(y, (0, nfft - y.size))[None, :]
    psd = (np.abs(np.fft.rfft(segs * window, axis=1)) ** 2).mean(axis=0)
    psd /= fs * float((window**2).sum())
    psd[1:-1] *= 2.0
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    out = []
    for lo, hi in bands:
        sel = (f >= lo) & (f <= hi)
        out.append(float(np.trapezoid(psd[sel], f[sel])) if sel.sum() > 1 else 0.0)
    return np.array(out)
