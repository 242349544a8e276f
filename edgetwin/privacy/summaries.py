"""Usable feature values of one window of the timeline, for the metric summaries."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgetwin.arrays import Growing
from edgetwin.features.schema import NAMES, QUALITY_THRESHOLD, SCHEMA_VERSION
from edgetwin.privacy.metrics import is_location
from edgetwin.types import FeatureFrame

if TYPE_CHECKING:
    from edgetwin.store.codec import FrameColumns

_LOGGER = logging.getLogger(__name__)


def usable_values(
    frames: Iterable[FeatureFrame], start: float, end: float
) -> dict[str, npt.NDArray[np.float64]]:
    """Per feature, the values of frames in ``(start, end]`` that a sensor measured well.

    A frame's ``t`` is the end of its step, so the frame ending exactly at
    ``end`` belongs to the window. Imputed values are model output, not the
    person's measurement, and are left out; so are values below the schema's
    quality threshold and frames of another schema version. Location features (place,
    home_distance) are never among them: nothing summarised for release says where
    the person is.
    """
    rows = Growing((len(NAMES),))
    skipped = 0
    for frame in frames:
        if not start < frame.t <= end:
            continue
        if frame.schema_version != SCHEMA_VERSION:
            skipped += 1
            continue
        ok = np.isfinite(frame.values) & (frame.quality >= QUALITY_THRESHOLD) & ~frame.imputed
        rows.append(np.where(ok, frame.values, np.nan))
    return _by_feature(rows, skipped)


def usable_values_of_columns(
    blocks: Iterable[FrameColumns], start: float, end: float
) -> dict[str, npt.NDArray[np.float64]]:
    """:func:`usable_values` of stored frames read as blocks of columns
    (``TwinStore.iter_frame_columns``): a day is a few arrays, not 17,280 frame objects."""
    rows = Growing((len(NAMES),))
    skipped = 0
    for cols in blocks:
        inside = (cols.t > start) & (cols.t <= end)
        if not inside.any():
            continue
        if cols.schema_version != SCHEMA_VERSION or cols.values.shape[1] != len(NAMES):
            skipped += int(inside.sum())
            continue
        v, q, imputed = cols.values[inside], cols.quality[inside], cols.imputed[inside]
        rows.extend(np.where(np.isfinite(v) & (q >= QUALITY_THRESHOLD) & ~imputed, v, np.nan))
    return _by_feature(rows, skipped)


def _by_feature(rows: Growing, skipped: int) -> dict[str, npt.NDArray[np.float64]]:
    if skipped:
        _LOGGER.warning("ignored %d frames of another feature schema version", skipped)
    table = rows.array()
    out = {}
    for k, name in enumerate(NAMES):
        if is_location(name):
            continue
        col = table[:, k]
        out[name] = np.ascontiguousarray(col[np.isfinite(col)])
    return out
