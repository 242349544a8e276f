"""The imputer's starting point: linear interpolation inside each window, vectorised.

The GAIN generator refines this fill (it learns a residual on top), so the
runtime and training must compute it identically; both call :func:`linear_fill`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


# Floor on a window's own spread (z units) before dividing by it: a flat signal
# must not be blown up into noise.
MIN_SCALE = 0.25
# Normalised values are clipped here (a lone spike in a flat window is large).
CLIP = 5.0


def center(
    z: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Normalise windows (n, T, F) per feature by their observed mean and spread.

    Instance normalisation (RevIN, Kim et al., ICLR 2022) on top of the
    person's baseline: the models see shapes, not levels or scales, so a person
    (or sensor) far from the training population looks like anyone else.
    Returns ``(zn, offset, scale)``; ``offset`` and ``scale`` ``(n, 1, F)`` undo
    it: ``z = zn * scale + offset``. Non-finite cells come back as 0.
    """
    zt = np.where(mask, z, 0.0)
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    offset = zt.sum(axis=1, keepdims=True) / count
    var = (np.where(mask, z - offset, 0.0) ** 2).sum(axis=1, keepdims=True) / count
    scale = np.maximum(np.sqrt(var), MIN_SCALE)
    zn = np.where(np.isfinite(z), np.clip((z - offset) / scale, -CLIP, CLIP), 0.0)
    return zn.astype(np.float32), offset.astype(np.float32), scale.astype(np.float32)


def imputer_feeds(
    z: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
) -> tuple[dict[str, npt.NDArray[np.float32]], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The imputer's inputs for windows (n, W, F), and (offset, scale) to undo on its output."""
    n = z.shape[0]
    zn, offset, scale = center(np.where(mask, z, np.nan), mask)
    feeds = {
        "z": linear_fill(zn, mask).reshape(n, -1),
        "mask": mask.reshape(n, -1).astype(np.float32),
    }
    return feeds, offset, scale


def impute(
    run: Callable[[dict[str, npt.NDArray[np.float32]]], npt.NDArray[Any]],
    z: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_],
    interpolate: Sequence[int] = (),
) -> npt.NDArray[Any]:
    """Filled windows (n, W, F) in z units: the imputer's output, or plain interpolation.

    ``run(feeds) -> g`` calls the imputer. Features in ``interpolate`` (indices;
    the manifest's ``imputer.interpolate``) take the linear fill the imputer
    starts from instead of its output: where the imputer lost to interpolation
    on the validation people, the runtime does not use it. Training and the
    engine both call this, so they fill alike.
    """
    feeds, offset, scale = imputer_feeds(z, mask)
    g = np.asarray(run(feeds)).reshape(z.shape)
    if len(interpolate):
        cols = np.asarray(interpolate, dtype=np.int64)
        g = g.copy()
        g[:, :, cols] = feeds["z"].reshape(z.shape)[:, :, cols]
    return g * scale + offset
