"""The feature timeline read once and averaged over fixed windows, for FHIR and Open mHealth.

The statistic is the arithmetic **mean** of the usable frame values in a
window: finite, quality at least ``QUALITY_THRESHOLD`` and *not imputed*
(an imputed value is the imputer's guess, and a clinic file must hold only
what a sensor measured). Frames are one twin step each, so this mean is
also the time-weighted mean over the covered part of the window.

A frame at ``t`` summarises the step ``(t - step_s, t]``; a window of
``every`` seconds is ``(k * every, (k + 1) * every]``, aligned to the Unix
epoch (so 5 min windows start at :00, :05, ... UTC) and a frame belongs to
the window holding its end. ``every=None`` (``--every raw``) gives one value
per frame with its own step as the period.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgetwin.errors import UsageError

if TYPE_CHECKING:
    from edgetwin.store import TwinStore

_LOGGER = logging.getLogger(__name__)

STATISTIC = "mean"  # the one statistic of every aggregated value (FHIR method text, OMH "average")
DEFAULT_EVERY = "5m"
_EVERY = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_EVERY_S = 7 * 86400.0


def iso_utc(t: float) -> str:
    """``t`` (Unix s) as an RFC 3339 / FHIR instant in UTC: whole seconds, else milliseconds."""
    import datetime as dt

    stamp = dt.datetime.fromtimestamp(t, dt.UTC)
    spec = "seconds" if float(t).is_integer() else "milliseconds"
    return stamp.isoformat(timespec=spec).replace("+00:00", "Z")


def parse_every(text: str | None) -> float | None:
    """``--every``: seconds per window (``5m`` -> 300.0), or None for ``raw`` (one per frame)."""
    raw = (text if text is not None else DEFAULT_EVERY).strip().lower()
    if raw == "raw":
        return None
    m = _EVERY.match(raw)
    if m is None:
        raise UsageError(
            f"--every {text!r} is not a window length",
            hint="use raw (one value per feature frame) or a duration such as 30s, 5m, 1h, 1d",
        )
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not 0 < seconds <= MAX_EVERY_S:
        raise UsageError(
            f"--every {text!r} is out of range",
            hint="give a window longer than 0 s and at most 7d, or raw",
        )
    return seconds


@dataclass(frozen=True)
class FrameTable:
    """The frames of a range as arrays: ``values[i, k]`` of feature ``names[k]`` at ``t[i]``."""

    t: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    usable: npt.NDArray[np.bool_]
    names: tuple[str, ...]
    skipped_other_schema: int = 0

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass(frozen=True)
class Aggregate:
    """The mean of one feature over one window ``(start, end]``, from ``count`` frames."""

    feature: str
    start: float
    end: float
    value: float
    count: int


def load_frames(store: TwinStore, t0: float | None, t1: float | None) -> FrameTable:
    """Every committed frame of the current feature schema with ``t0 <= t <= t1``, by time."""
    from edgetwin.features.schema import NAMES, QUALITY_THRESHOLD

    ts: list[float] = []
    rows: list[npt.NDArray[np.float64]] = []
    ok: list[npt.NDArray[np.bool_]] = []
    skipped = 0
    for frame in store.read_frames(t0, t1):
        if frame.values.shape[0] != len(NAMES):
            skipped += 1
            continue
        values = np.asarray(frame.values, dtype=np.float64)
        ts.append(float(frame.t))
        rows.append(values)
        ok.append(np.isfinite(values)
                  & (np.asarray(frame.quality) >= QUALITY_THRESHOLD)
                  & ~np.asarray(frame.imputed, dtype=bool))
    if skipped:
        _LOGGER.warning("left out %d feature frames of another feature schema", skipped)
    n = len(ts)
    t = np.asarray(ts, dtype=np.float64)
    values = np.vstack(rows) if n else np.empty((0, len(NAMES)))
    usable = np.vstack(ok) if n else np.empty((0, len(NAMES)), dtype=bool)
    order = np.argsort(t, kind="stable")
    return FrameTable(t[order], values[order], usable[order], NAMES, skipped)


def aggregate(
    table: FrameTable, features: tuple[str, ...], every: float | None, step_s: float
) -> Iterator[Aggregate]:
    """The usable values of ``features`` per window (``every`` s) or per frame (None).

    Windows come in time order, features in the order given; a window in
    which a feature has no usable frame yields nothing for it.
    """
    index = {name: k for k, name in enumerate(table.names)}
    cols = [(name, index[name]) for name in features if name in index]
    if not len(table) or not cols:
        return
    if every is None:
        for i in range(len(table)):
            t = float(table.t[i])
            for name, k in cols:
                if table.usable[i, k]:
                    yield Aggregate(name, t - step_s, t, float(table.values[i, k]), 1)
        return
    # window k holds (k * every, (k + 1) * every]: ceil(t / every) - 1
    win = np.ceil(table.t / every).astype(np.int64) - 1
    keys, first = np.unique(win, return_index=True)
    bounds = [*first.tolist(), len(table)]
    for j, key in enumerate(keys.tolist()):
        a, b = bounds[j], bounds[j + 1]
        start = key * every
        for name, k in cols:
            mask = table.usable[a:b, k]
            count = int(mask.sum())
            if count:
                mean = float(np.mean(table.values[a:b, k][mask]))
                if math.isfinite(mean):
                    yield Aggregate(name, start, start + every, mean, count)


# Which channel kinds the pipeline prefers for a feature when several could feed it
# (features.pipeline: RR intervals, else ECG beats, else PPG beats, else a reported hr).
_PREFERENCE: dict[str, tuple[str, ...]] = {
    "hr": ("rr", "ecg", "ppg", "hr"),
    "rmssd": ("rr", "ecg", "ppg"),
}


@dataclass(frozen=True)
class Source:
    """A stored stream that can feed features, with its time span (from the store's index)."""

    name: str
    kinds: frozenset[str]
    first_t: float
    last_t: float


def sources_of(store: TwinStore) -> list[Source]:
    """The twin's streams that hold samples, each with the channel kinds it carries."""
    from edgetwin.features.schema import input_kind

    out = []
    for info in store.streams():
        if info.first_t is None or info.last_t is None or not info.samples:
            continue
        # a room stream's temp is the room's ("ambient"), never a device of skin temperature
        kinds = frozenset(input_kind(info.name, c) for c in info.channels)
        out.append(Source(info.name, kinds, float(info.first_t), float(info.last_t)))
    return out


def feeding_source(
    feature: str, start: float, end: float, sources: list[Source]
) -> Source | None:
    """The one stream that fed ``feature`` over ``(start, end]``, or None when not one.

    A frame does not record which stream fed it, so this is inferred: the
    streams whose channel kinds feed the feature and whose stored span
    overlaps the window, narrowed to the kind the pipeline prefers. Two
    candidates of that kind (two straps at once) give None: the caller then
    names the twin itself as the device that made the value.
    """
    from edgetwin.features.schema import SOURCES

    kinds = SOURCES.get(feature, frozenset())
    live = [s for s in sources if s.kinds & kinds and s.first_t <= end and s.last_t > start]
    for kind in _PREFERENCE.get(feature, ()):
        best = [s for s in live if kind in s.kinds]
        if best:
            live = best
            break
    return live[0] if len(live) == 1 else None
