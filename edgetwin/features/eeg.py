"""Relative EEG band powers with BrainFlow's Welch PSD.

Bands (Hz): delta 1-4, theta 4-8, alpha 8-13, beta 13-30, gamma 30-45, the
conventional clinical bands (IFCN glossary; Babiloni et al. 2020, Clin
Neurophysiol 131:285) with gamma capped at 45 Hz to stay below mains hum.
Each channel's window is linearly detrended, its PSD estimated by Welch's
method (Hann window, 50 % overlap, ``nfft`` the power of two at or above
``2*fs`` when the window holds it, so bins are <= 0.5 Hz wide from a 4 s
window on), and each band's power integrated with
``DataFilter.get_band_power``. Relative power is band / sum of the five bands;
the feature is the mean over usable channels.

A channel is usable when its longest run of finite samples is at least
``MIN_WINDOW_S`` long and it is neither flat (< 0.1 µV std: disconnected) nor
railed (> 500 µV std). Quality is the mean over channels of (usable run /
window), 0 for unusable channels.
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.features import dsp
from edgetwin.features.windows import longest_finite_run
from edgetwin.types import FloatArray

BANDS: tuple[tuple[str, float, float], ...] = (
    ("eeg_delta", 1.0, 4.0),
    ("eeg_theta", 4.0, 8.0),
    ("eeg_alpha", 8.0, 13.0),
    ("eeg_beta", 13.0, 30.0),
    ("eeg_gamma", 30.0, 45.0),
)
MIN_WINDOW_S = 2.0
FLAT_UV = 0.1
RAILED_UV = 500.0


def band_powers(x: FloatArray, fs: float) -> FloatArray | None:
    """Absolute power of each band in ``BANDS`` for one finite channel, or None if too short."""
    n = x.size
    rate = round(fs)
    if n < MIN_WINDOW_S * fs or rate < 20:
        return None
    # <= 0.5 Hz bins when the window allows, so the Hann main lobe stays inside a band.
    nfft = min(2 ** math.ceil(math.log2(2.0 * fs)), 2 ** math.floor(math.log2(n)))
    usable = tuple((lo, hi) for _, lo, hi in BANDS if hi <= rate / 2.0)
    out = np.full(len(BANDS), np.nan)
    out[: len(usable)] = dsp.welch_band_powers(x, fs, nfft, usable)
    return out


def relative_band_powers(window: FloatArray, fs: float) -> tuple[FloatArray, float]:
    """Mean relative band powers over the columns of ``window`` (samples x channels) and quality."""
    n, nch = window.shape
    rel = []
    quality = 0.0
    for j in range(nch):
        run = longest_finite_run(window[:, j])
        x = window[run, j]
        if x.size < MIN_WINDOW_S * fs:
            continue
        sd = float(np.std(x))
        if sd < FLAT_UV or sd > RAILED_UV:
            continue
        bp = band_powers(x, fs)
        if bp is None:
            continue
        total = float(np.nansum(bp))
        if not total > 0:
            continue
        rel.append(bp / total)
        quality += x.size / max(n, 1)
    if not rel:
        return np.full(len(BANDS), np.nan), 0.0
    return np.nanmean(np.stack(rel), axis=0), quality / max(nch, 1)
