"""Usable feature values of one window of the timeline, for the metric summaries."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from edgetwin.features.schema import NAMES, QUALITY_THRESHOLD, SCHEMA_VERSION
from edgetwin.privacy.metrics import is_location
from edgetwin.types import FeatureFrame

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
    rows: list[npt.NDArray[np.float64]] = []
    skipped = 0
    for frame in frames:
        if not start < frame.t <= end:
            continue
        if frame.schema_version != SCHEMA_VERSION:
            skipped += 1
            continue
        ok = np.isfinite(frame.values) & (frame.quality >= QUALITY_THRESHOLD) & ~frame.imputed
        rows.append(np.where(ok, frame.values, np.nan))
    if skipped:
        _LOGGER.warning("ignored %d frames of another feature schema version", skipped)
    if not rows:
        return {name: np.empty(0) for name in NAMES if not is_location(name)}
    table = np.vstack(rows)
    out = {}
    for k, name in enumerate(NAMES):
        if is_location(name):
            continue
        col = table[:, k]
        out[name] = np.ascontiguousarray(col[np.isfinite(col)])
    return out
