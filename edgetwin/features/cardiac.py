"""Heart rate and RMSSD from RR intervals, and beats from ECG or PPG when no RR is given.

RR artefact rejection, in this order:

1. physiological range: 300-2000 ms (200-30 bpm);
2. successive-difference (local median) rule: an interval more than 20 % away
   from the median of its 11 neighbours is an ectopic or a missed/extra beat
   (after Malik et al. 1993 and the Task Force 1996 recommendation to edit
   RR series before time-domain HRV).

RMSSD (Task Force 1996) is the root mean square of differences between
*adjacent accepted* intervals: a pair counts only if both intervals were
accepted and no beat is missing between them (the beat times agree with the
intervals), so a dropout never fakes a huge successive difference.

Beat detection uses BrainFlow's ``DataFilter`` for the zero-phase band-pass
and detrending. ECG follows Pan & Tompkins (1985, IEEE TBME 32:230): 5-20 Hz
band-pass, squared slope, 150 ms moving integration, an adaptive threshold
and a 250 ms refractory period, then the R peak is the band-passed maximum
near the envelope peak. PPG uses a 0.5-5 Hz band-pass and the systolic peaks
with a 300 ms refractory period (Elgendi 2013, PLoS ONE 8:e76585). The peak
pick is a small greedy pass (highest first, honouring the refractory
distance), the same rule as ``scipy.signal.find_peaks(distance=...)``; scipy
would be a 40 MB runtime dependency on a Pi for one function.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgetwin.features import dsp
from edgetwin.types import FloatArray

RR_MIN_MS = 300.0
RR_MAX_MS = 2000.0
MAX_REL_DEVIATION = 0.20
ECG_THRESHOLD = 0.3
PPG_THRESHOLD = 0.3
_MEDIAN_SPAN = 11  # beats in the local median of the successive-difference rule


def accept_rr(rr_ms: FloatArray) -> npt.NDArray[np.bool_]:
    """Mask of the RR intervals that pass the range and local-median rules."""
    ok = np.isfinite(rr_ms) & (rr_ms >= RR_MIN_MS) & (rr_ms <= RR_MAX_MS)
    n = rr_ms.size
    if n < 3 or ok.sum() < 3:
        return ok
    vals = np.where(ok, rr_ms, np.nan)
    half = _MEDIAN_SPAN // 2
    padded = np.concatenate([np.full(half, np.nan), vals, np.full(half, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, _MEDIAN_SPAN)
    # Windows holding at least one accepted value: ok has >= 3 values, the window spans 11.
    with np.errstate(all="ignore"):
        counts = np.sum(np.isfinite(windows), axis=1)
        med = np.where(
            counts > 0, np.nanmedian(np.where(counts[:, None] > 0, windows, 0.0), axis=1), np.nan
        )
    dev = np.abs(rr_ms - med) / med
    return ok & (dev <= MAX_REL_DEVIATION)


def mean_hr(rr_ms: FloatArray) -> float:
    """Mean heart rate in bpm of a run of beats: beats per minute of elapsed time."""
    if rr_ms.size == 0:
        return float("nan")
    return float(60000.0 / np.mean(rr_ms))


def successive_differences(
    beat_t: FloatArray, rr_ms: FloatArray, accepted: npt.NDArray[np.bool_]
) -> FloatArray:
    """Differences (ms) between adjacent accepted intervals with no missing beat between."""
    if rr_ms.size < 2:
        return np.zeros(0)
    d = np.diff(rr_ms)
    both = accepted[1:] & accepted[:-1]
    # The later beat must follow the earlier one by its own interval (no beat lost between).
    gap = np.diff(beat_t) * 1000.0
    contiguous = np.abs(gap - rr_ms[1:]) <= 0.15 * rr_ms[1:] + 50.0
    return np.asarray(d[both & contiguous], dtype=np.float64)


def rmssd(diffs_ms: FloatArray) -> float:
    """Root mean square of successive RR differences (ms); NaN with fewer than 3."""
    if diffs_ms.size < 3:
        return float("nan")
    return float(np.sqrt(np.mean(diffs_ms * diffs_ms)))


def detect_beats(x: FloatArray, fs: float, kind: str) -> FloatArray:
    """Sample positions (float, in samples) of heart beats in a finite ``ecg`` or ``ppg`` trace."""
    n = x.size
    if n < int(2 * fs) or fs < 20:
        return np.zeros(0)
    if kind == "ecg":
        y = dsp.bandpassed(x, fs, 5.0, min(20.0, 0.45 * fs))
        slope = np.diff(y, prepend=y[0])
        width = max(1, round(0.15 * fs))
        env = np.convolve(slope * slope, np.ones(width) / width, mode="same")
        peaks = _pick(env, 0.0, round(0.25 * fs))
        peaks = peaks[env[peaks] > _threshold(env[peaks], ECG_THRESHOLD)]
        # Move each envelope peak to the band-passed R peak close by.
        half = max(1, round(0.1 * fs))
        out = []
        mag = np.abs(y)
        for p in peaks:
            lo, hi = max(0, p - half), min(n, p + half + 1)
            out.append(lo + int(np.argmax(mag[lo:hi])))
        beats = np.unique(np.asarray(out, dtype=np.int64))
        # Two envelope peaks may snap to one R peak; keep the refractory distance.
        beats = _pick_sorted(beats, round(0.25 * fs))
        return beats.astype(np.float64)
    y = dsp.bandpassed(x, fs, 0.5, min(5.0, 0.45 * fs))
    peaks = _pick(y, 0.0, round(0.3 * fs))
    peaks = peaks[y[peaks] > _threshold(y[peaks], PPG_THRESHOLD)]
    return np.asarray(peaks, dtype=np.float64)


def _threshold(heights: FloatArray, frac: float) -> float:
    """A fraction of the median of the taller half of the candidate peaks.

    Beats are the taller half of the local maxima that survive the refractory
    rule; their median is robust to a few huge ectopic or artefact peaks, which
    a plain maximum is not (they would hide every normal beat).
    """
    if heights.size == 0:
        return 0.0
    top = np.sort(heights)[heights.size // 2 :]
    return frac * float(np.median(top))


def _pick(x: FloatArray, height: float, distance: int) -> npt.NDArray[np.int64]:
    """Local maxima above ``height``, at least ``distance`` samples apart, highest first."""
    if x.size < 3:
        return np.zeros(0, dtype=np.int64)
    mid = x[1:-1]
    cand = np.nonzero((mid > x[:-2]) & (mid >= x[2:]) & (mid > height))[0] + 1
    if cand.size == 0:
        return cand.astype(np.int64)
    order = cand[np.argsort(-x[cand], kind="stable")]
    taken = np.zeros(x.size, dtype=bool)
    keep: list[int] = []
    for i in order.tolist():
        lo, hi = max(0, i - distance + 1), min(x.size, i + distance)
        if not taken[lo:hi].any():
            keep.append(i)
            taken[i] = True
    return np.asarray(sorted(keep), dtype=np.int64)


def _pick_sorted(idx: npt.NDArray[np.int64], distance: int) -> npt.NDArray[np.int64]:
    keep: list[int] = []
    for i in idx.tolist():
        if not keep or i - keep[-1] >= distance:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)
