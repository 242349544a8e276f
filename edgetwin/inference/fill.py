"""The imputer's starting point: linear interpolation inside each window, vectorised.

The GAIN generator refines this fill (it learns a residual on top), so the
runtime and training must compute it identically; both call :func:`linear_fill`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def linear_fill(z: npt.NDArray[Any], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Missing cells of ``z`` (n, W, F) filled by interpolating along W between observed cells.

    Before the first / after the last observation the nearest observed value is
    carried; a feature with no observation in its window is 0 (the baseline mean).
    """
    w = z.shape[1]
    idx = np.arange(w)[None, :, None]
    prev = np.maximum.accumulate(np.where(mask, idx, -1), axis=1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(mask, idx, w), axis=1), axis=1), axis=1)
    has_prev, has_next = prev >= 0, nxt < w
    zv = np.where(mask, z, 0.0)
    v_prev = np.take_along_axis(zv, np.clip(prev, 0, w - 1), axis=1)
    v_next = np.take_along_axis(zv, np.clip(nxt, 0, w - 1), axis=1)
    span = np.maximum(nxt - prev, 1)
    frac = (idx - prev) / span
    both = v_prev + (v_next - v_prev) * frac
    out = np.where(
        has_prev & has_next, both, np.where(has_prev, v_prev, np.where(has_next, v_next, 0.0))
    )
    return np.where(mask, zv, out).astype(np.float32)
