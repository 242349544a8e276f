"""SpO2, skin temperature, EDA tonic level and motion over one step.

- SpO2: mean of plausible readings (50-100 %).
- Skin temperature: mean of plausible readings (20-45 degC).
- EDA tonic level: the median over the last ``EDA_WINDOW_S`` seconds. Phasic
  skin-conductance responses are brief (a few seconds) and sparse at rest, so
  a running median follows the slow skin-conductance level and ignores them
  (Boucsein 2012, ch. 2.3; the same idea as the median "SCL" of Ledalab).
- Motion: standard deviation of the acceleration magnitude ``|a|`` in g over
  the step; gravity adds a constant to ``|a|`` whatever the orientation, so
  this measures movement only (van Hees et al. 2013, PLoS ONE 8:e61691 use
  the same magnitude signal for activity counts).

Each returns ``(value, coverage)`` where coverage is the share of the
expected samples that were present and plausible.
"""

from __future__ import annotations

import numpy as np

from edgetwin.types import FloatArray

EDA_WINDOW_S = 10.0
SPO2_RANGE = (50.0, 100.0)
TEMP_RANGE = (20.0, 45.0)
EDA_RANGE = (0.01, 100.0)


def coverage(n_valid: int, fs: float | None, span_s: float) -> float:
    """Share of the expected samples present, 0..1 (1 when the rate is unknown and any came)."""
    if n_valid == 0:
        return 0.0
    if fs is None or fs <= 0:
        return 1.0
    return float(min(1.0, n_valid / max(1.0, fs * span_s)))


def bounded_mean(
    x: FloatArray, lo: float, hi: float, fs: float | None, span_s: float
) -> tuple[float, float]:
    """Mean of the values in ``[lo, hi]`` and the coverage."""
    ok = x[np.isfinite(x) & (x >= lo) & (x <= hi)]
    if ok.size == 0:
        return float("nan"), 0.0
    return float(np.mean(ok)), coverage(ok.size, fs, span_s)


def eda_tonic(x: FloatArray, fs: float | None, span_s: float) -> tuple[float, float]:
    """Median skin conductance (µS) of the plausible values in the window."""
    ok = x[np.isfinite(x) & (x >= EDA_RANGE[0]) & (x <= EDA_RANGE[1])]
    if ok.size == 0:
        return float("nan"), 0.0
    return float(np.median(ok)), coverage(ok.size, fs, span_s)


def motion(xyz: FloatArray, fs: float | None, span_s: float) -> tuple[float, float]:
    """Std of the acceleration magnitude (g) over rows with all three axes finite."""
    ok = np.all(np.isfinite(xyz), axis=1)
    a = xyz[ok]
    if a.shape[0] < 2:
        return float("nan"), 0.0
    mag = np.sqrt(np.sum(a * a, axis=1))
    return float(np.std(mag)), coverage(a.shape[0], fs, span_s)
