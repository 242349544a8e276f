"""Step alignment: the twin's timeline is a grid of epoch-aligned steps.

Step ``k`` covers ``[k*step_s, (k+1)*step_s)`` in seconds since the Unix
epoch, so two devices (or a restart) always agree on the grid, and its
frame is stamped with the step's end, ``(k+1)*step_s``.
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.types import FloatArray


def step_index(t: float, step_s: float) -> int:
    """The step that contains time ``t``."""
    return math.floor(t / step_s + 1e-9)


def step_bounds(k: int, step_s: float) -> tuple[float, float]:
    """``(start, end)`` of step ``k``."""
    return k * step_s, (k + 1) * step_s


def select(t: FloatArray, t0: float, t1: float) -> slice:
    """The slice of sorted ``t`` with ``t0 <= t < t1``."""
    i0 = int(np.searchsorted(t, t0, side="left"))
    i1 = int(np.searchsorted(t, t1, side="left"))
    return slice(i0, i1)


def estimate_rate(t: FloatArray) -> float | None:
    """Sampling rate from timestamps (median spacing), None when it cannot be told."""
    if t.size < 3:
        return None
    dt = np.diff(t)
    dt = dt[dt > 0]
    if dt.size == 0:
        return None
    return float(1.0 / np.median(dt))


def longest_finite_run(x: FloatArray) -> slice:
    """The longest stretch of consecutive finite values in ``x`` (latest wins ties)."""
    ok = np.isfinite(x)
    if ok.all():
        return slice(0, x.size)
    if not ok.any():
        return slice(0, 0)
    padded = np.concatenate([[False], ok, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.nonzero(edges == 1)[0]
    ends = np.nonzero(edges == -1)[0]
    lengths = ends - starts
    best = int(np.flatnonzero(lengths == lengths.max())[-1])
    return slice(int(starts[best]), int(ends[best]))
