"""What a forget removes besides the raw rows: everything computed from them.

Policy: **shred, never recompute.** The raw data a recomputation would need may
itself be gone (raw retention is shorter than feature retention), and forecasts
would need the models at forget time. So, for the data being forgotten (a
:class:`Taint`: which features it could feed, over which time spans):

- feature frames lose the values of those features at every step whose windows
  read the forgotten samples (a step around each span edge plus the feature's
  memory, :data:`edgetwin.features.schema.MEMORY_S`), and lose every imputed
  value whose imputer window reached such a step; a frame left with no value at
  all goes (its timing alone came from the forgotten data);
- forecasts whose inputs (context, the imputer window before it) reached such a
  step are deleted;
- records computed from the timeline (:data:`DERIVED_RECORD_KINDS`) are deleted
  when the data they were computed from overlaps: DP summaries of the features'
  periods in the outbox (pending ones are never sent), the daemon's inference
  state (running baseline, context, last forecasts) and personal heads.

Retention is per tier (features are the summary meant to outlive raw samples);
derived records without a tier of their own go with the feature days they were
computed from (:func:`stale_record`).

A frame does not record which stream fed a feature when several could, so a
stream's forget shreds every feature it *could* feed over its spans.

Frames stored at an older feature schema (v1: 13 features) stay as they were
written; ``TwinStore.read_frames`` and ``iter_frame_columns`` read them as the
current schema (:func:`upgraded_frames`) (the features v1 lacks missing, quality 0), and
a forget shreds them by their own layout (``schema.LAYOUTS``).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgetwin.errors import DataCorrupt
from edgetwin.features.schema import (
    LAYOUTS,
    MEMORY_S,
    NAMES,
    SCHEMA_VERSION,
    fed_by,
    fed_by_stream,
    upgrade_columns,
    upgrade_frame,
)
from edgetwin.store import codec
from edgetwin.types import FeatureFrame, FloatArray, Prediction, channel_kind

_LOGGER = logging.getLogger(__name__)

# A frame reads samples up to one step (and its lateness) beyond its own step: enough
# for steps up to a minute.
PAD_S = 120.0
# Imputed cells of a frame come from the frames of the imputer window before it
# (shipped models: 24 steps of 5 s); a forecast's context is extended by this too.
IMPUTE_REACH_S = 600.0
_MAX_MEMORY_S = max(MEMORY_S.values())

Span = tuple[float, float]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
# What one record was computed from: the features (None: any) and the time span.
RecordSource = tuple[tuple[str, ...] | None, Span]


@dataclass(frozen=True)
class Taint:
    """Data being forgotten: the features it could feed (None: all) over merged time spans.

    ``hits`` are the times of stored frames that held a value fed by this data
    (found by :meth:`fed_values` in a first pass): the imputer and the forecaster
    read those frames, so what they computed from them goes too. With
    ``frames_gone`` the frames of the spans themselves are being deleted (forget
    --before), so any model input reaching into a span read forgotten data.
    """

    features: tuple[str, ...] | None
    spans: tuple[Span, ...]
    hits: tuple[float, ...] = ()
    frames_gone: bool = False
    _starts: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [a for a, _ in self.spans])

    @classmethod
    def of(
        cls, features: Iterable[str] | None, spans: Iterable[Span], *, frames_gone: bool = False
    ) -> Taint:
        merged: list[list[float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        feats = None if features is None else tuple(n for n in NAMES if n in set(features))
        return cls(feats, tuple((a, b) for a, b in merged), frames_gone=frames_gone)

    @classmethod
    def of_stream(
        cls, channels: Iterable[str] | None, spans: Iterable[Span], stream: str | None = None
    ) -> Taint:
        """A stream's taint from its channel names (None: unknown, so every feature); with
        the stream's name, a room's ``temp`` taints the room's temperature only, not skin's."""
        if channels is None:
            return cls.of(None, spans)
        if stream is not None:
            return cls.of(fed_by_stream(stream, set(channels)), spans)
        return cls.of(fed_by({channel_kind(c) for c in channels}), spans)

    def with_hits(self, hits: Iterable[float]) -> Taint:
        return replace(self, hits=tuple(sorted(set(hits))))

    @property
    def empty(self) -> bool:
        return not self.spans or self.features == ()

    def names(self) -> tuple[str, ...]:
        return NAMES if self.features is None else self.features

    def memory(self) -> float:
        return max((MEMORY_S[n] for n in self.names()), default=0.0)

    def reach(self) -> Span:
        """The time range frames fed by this data can lie in (to choose stored days)."""
        if self.empty:
            return (math.inf, -math.inf)
        return (self.spans[0][0] - PAD_S, self.spans[-1][1] + PAD_S + self.memory())

    def overlaps(self, lo: float, hi: float, *, after: float) -> bool:
        """Whether [lo, hi] meets a span widened by PAD_S, and by ``after`` past its end."""
        i = bisect.bisect_right(self._starts, hi + PAD_S) - 1
        # spans are disjoint and sorted, so the last one starting in time ends latest
        return i >= 0 and self.spans[i][1] + PAD_S + after >= lo

    def _hit_within(self, lo: float, hi: float) -> bool:
        i = bisect.bisect_left(self.hits, lo)
        return i < len(self.hits) and self.hits[i] <= hi

    # -- the same over arrays (a day of 5 s steps is 17,280 frames and as many forecasts) --

    def _near(self, lo: FloatArray, hi: FloatArray, after: float) -> BoolArray:
        """:meth:`overlaps` of each [lo[k], hi[k]]."""
        if not self.spans:
            return np.zeros(lo.shape, dtype=bool)
        starts = np.asarray(self._starts)
        ends = np.asarray([b for _, b in self.spans])
        i = np.searchsorted(starts, hi + PAD_S, side="right") - 1
        return (i >= 0) & (ends[np.maximum(i, 0)] + PAD_S + after >= lo)

    def _hits_within(self, lo: FloatArray, hi: FloatArray) -> BoolArray:
        hits = np.asarray(self.hits)
        if not hits.size:
            return np.zeros(lo.shape, dtype=bool)
        i = np.searchsorted(hits, lo, side="left")
        return (i < hits.size) & (hits[np.minimum(i, hits.size - 1)] <= hi)

    def read_by_model(self, lo: float, hi: float) -> bool:
        """Whether a model input spanning [lo, hi] held forgotten data or values fed by it."""
        if self.empty:
            return False
        return self._hit_within(lo, hi) or (self.frames_gone and self.overlaps(lo, hi, after=0.0))

    def _read_by_models(self, lo: FloatArray, hi: FloatArray) -> BoolArray:
        if self.empty:
            return np.zeros(lo.shape, dtype=bool)
        out = self._hits_within(lo, hi)
        if self.frames_gone:
            out |= self._near(lo, hi, 0.0)
        return out

    def feeds_every_forecast(self, lo: float, hi: float) -> bool:
        """Whether every forecast made at a time in [lo, hi] read this data, whatever its
        context length: a whole stored chunk can then go without being decoded."""
        if self.empty:
            return False
        r = IMPUTE_REACH_S
        if self.frames_gone:
            i = bisect.bisect_right(self._starts, lo + PAD_S) - 1
            if i >= 0 and self.spans[i][1] + PAD_S >= hi - r:
                return True
        hits = np.asarray(self.hits)
        seg = hits[np.searchsorted(hits, lo - r, "left"):np.searchsorted(hits, hi, "right")]
        return bool(
            seg.size
            and seg[0] <= lo
            and hi - seg[-1] <= r
            and (seg.size < 2 or float(np.diff(seg).max()) <= r)
        )

    # -- frames and forecasts ----------------------------------------------------------

    def fed_values(self, frame: FeatureFrame) -> BoolArray:
        """Cells of ``frame`` that this data fed (and that hold something)."""
        fed: BoolArray = self._fed([frame])[0]
        return fed

    def fed_times(self, frames: list[FeatureFrame]) -> list[float]:
        """Times of the frames holding a value this data fed."""
        return [f.t for f, fed in zip(frames, self._fed_rows(frames), strict=True) if fed.any()]

    def _fed_rows(self, frames: list[FeatureFrame]) -> list[BoolArray]:
        if len({f.values.shape[0] for f in frames}) > 1:
            return [self._fed([f])[0] for f in frames]
        return list(self._fed(frames)) if frames else []

    def _fed(self, frames: list[FeatureFrame]) -> BoolArray:
        """(frames, cells) fed by this data and holding something; frames of one width."""
        t = np.array([f.t for f in frames])
        values = np.stack([f.values for f in frames])
        drop = np.zeros(values.shape, dtype=bool)
        if self.empty:
            return drop
        versions = {f.schema_version for f in frames}
        layout = LAYOUTS.get(versions.pop()) if len(versions) == 1 else None
        if layout is not None and values.shape[1] == len(layout):
            # frames of this or an older schema: each feature in its own column
            column = {name: j for j, name in enumerate(layout)}
            for name in self.names():
                if name in column:
                    drop[:, column[name]] = self._near(t, t, MEMORY_S[name])
        else:  # a layout this code does not know: cannot tell the features apart
            drop[:] = self._near(t, t, self.memory())[:, None]
        quality = np.stack([f.quality for f in frames])
        imputed = np.stack([f.imputed for f in frames])
        return drop & (np.isfinite(values) | (quality > 0) | imputed)

    def shred_frames(self, frames: list[FeatureFrame]) -> list[FeatureFrame]:
        """``frames`` without the values this data fed; the same list when nothing changed."""
        if not frames or self.empty:
            return frames
        if len({f.values.shape[0] for f in frames}) > 1:
            parts = [self.shred_frames([f]) for f in frames]
            same = all(len(p) == 1 and p[0] is f for p, f in zip(parts, frames, strict=True))
            return frames if same else [f for part in parts for f in part]
        t = np.array([f.t for f in frames])
        imputed = np.stack([f.imputed for f in frames])
        drop = self._fed(frames)
        # imputed values whose imputer window read forgotten values go too
        drop |= imputed & self._read_by_models(t - IMPUTE_REACH_S, t)[:, None]
        rows = np.flatnonzero(drop.any(axis=1))
        if not rows.size:
            return frames
        values = np.stack([frames[r].values for r in rows])
        values[drop[rows]] = np.nan
        quality = np.stack([frames[r].quality for r in rows])
        quality[drop[rows]] = 0.0
        imp = imputed[rows] & ~drop[rows]
        # a frame left with no value goes: nothing but the step's time would be left
        left = [bool(x) for x in np.isfinite(values).sum(axis=1) > 0]
        out: list[FeatureFrame | None] = list(frames)
        for k, r in enumerate(rows.tolist()):
            f = frames[r]
            out[r] = (
                FeatureFrame(f.t, values[k], quality[k], imp[k], f.schema_version)
                if left[k] else None
            )
        return [f for f in out if f is not None]

    def drop_forecasts(self, preds: list[Prediction]) -> list[Prediction]:
        """``preds`` without the forecasts whose inputs reached this data; same list if none."""
        if not preds or self.empty:
            return preds
        t = np.array([p.t for p in preds])
        context = np.array([len(p.attention) * p.step_s for p in preds])
        context = np.where(np.isfinite(context), context, np.inf)
        fed = self._read_by_models(t - context - IMPUTE_REACH_S, t)
        if not fed.any():
            return preds
        return [p for p, gone in zip(preds, fed, strict=True) if not gone]

    # -- records ---------------------------------------------------------------------------

    def fed_record(self, kind: str, value: dict[str, Any]) -> bool:
        """Whether a record of a :data:`DERIVED_RECORD_KINDS` kind was computed from this data."""
        source_of = DERIVED_RECORD_KINDS.get(kind)
        if source_of is None or self.empty:
            return False
        features, (lo, hi) = source_of(value)
        names = self.names() if features is None else [n for n in features if n in self.names()]
        if not names:
            return False
        return self.overlaps(lo, hi, after=max(MEMORY_S.get(n, _MAX_MEMORY_S) for n in names))


def upgraded_frames(frames: Iterable[FeatureFrame], on_corrupt: str) -> Iterator[FeatureFrame]:
    """Stored frames as the current feature schema, whatever schema each was written at
    (:func:`edgetwin.features.schema.upgrade_frame`). One this code cannot map (a newer
    schema) raises DataCorrupt saying so, or is skipped (logged) with ``on_corrupt="skip"``."""
    for frame in frames:
        try:
            yield upgrade_frame(frame)
        except ValueError as exc:
            _unmappable(f"the feature frame at t={frame.t}", exc, on_corrupt)


def upgraded_columns(
    blocks: Iterable[codec.FrameColumns], on_corrupt: str
) -> Iterator[codec.FrameColumns]:
    """:func:`upgraded_frames` over blocks of columns (``TwinStore.iter_frame_columns``)."""
    for cols in blocks:
        try:
            v, q, m = upgrade_columns(cols.schema_version, cols.values, cols.quality,
                                      cols.imputed)
        except ValueError as exc:
            _unmappable(f"{cols.t.shape[0]} feature frames from t={cols.t[:1]}", exc, on_corrupt)
            continue
        yield cols if v is cols.values else codec.FrameColumns(cols.t, v, q, m, SCHEMA_VERSION)


def _unmappable(what: str, exc: ValueError, on_corrupt: str) -> None:
    err = DataCorrupt(f"{what} cannot be read: {exc}",
                      hint="open this twin with the edgetwin that wrote it")
    if on_corrupt == "raise":
        raise err from exc
    _LOGGER.warning("%s; skipped", err.message)


def whole_timeline(value: dict[str, Any]) -> RecordSource:
    """A record computed from the whole timeline (e.g. a personal model): any forget of
    stored data drops it; retention keeps it (it is an aggregate of every day)."""
    return None, (-math.inf, math.inf)


def _inference_record(value: dict[str, Any]) -> RecordSource:
    """Kind ``inference``: the engine state (baseline over all time, context and forecasts
    up to ``last_t``) and personal heads and policy (fitted on forecasts, which read every
    feature, from ``derived_from.t0`` on)."""
    lo, hi = -math.inf, math.inf
    last = value.get("last_t")
    if isinstance(last, int | float) and math.isfinite(last):
        hi = float(last)
    since = value.get("derived_from")
    t0 = since.get("t0") if isinstance(since, dict) else None
    if isinstance(t0, int | float) and math.isfinite(t0):
        lo = float(t0)
    return None, (lo, hi)


def _outbox_entry(value: dict[str, Any]) -> RecordSource:
    release = value.get("release")
    if not isinstance(release, dict):
        return None, (-math.inf, math.inf)
    try:
        lo, hi = float(release["period_start"]), float(release["period_end"])
    except (KeyError, TypeError, ValueError):
        return None, (-math.inf, math.inf)
    from edgetwin.privacy.metrics import METRICS  # pure catalogue (numpy and the schema)

    metric = METRICS.get(str(release.get("metric")))
    return ((metric.feature,) if metric is not None else None), (lo, hi)


def _place_memory(value: dict[str, Any]) -> RecordSource:
    """A gpsd source's learned places (``sources.gpsd.PLACE_RECORD``): drawn from its whole
    stored location history, so any forget of location data drops it whole (the source
    learns afresh from what comes next; retention trims it in the source instead)."""
    del value
    return ("place", "home_distance"), (-math.inf, math.inf)


# Record kinds computed from the timeline -> what one record was computed from. A new
# kind of derived record (a personal model, a cache) adds itself here, e.g. with
# whole_timeline, and forget and retention drop it with the data it came from.
DERIVED_RECORD_KINDS: dict[str, Callable[[dict[str, Any]], RecordSource]] = {
    "inference": _inference_record,  # engine state (ENGINE_STATE_RECORD), personal heads
    "outbox": _outbox_entry,  # DP summaries waiting for, or done with, their upload
    "place": _place_memory,  # learned home and regular places (location never outlives a forget)
}


def stale_record(kind: str, value: dict[str, Any], cutoff: float) -> bool:
    """Whether retention drops a derived record: all it was computed from is older
    than the feature timeline's ``cutoff``."""
    source_of = DERIVED_RECORD_KINDS.get(kind)
    if source_of is None:
        return False
    _, (_, hi) = source_of(value)
    return hi < cutoff


def stream_spans(
    hours: Sequence[tuple[int, int]], periods: dict[int, list[float]] | None
) -> list[Span]:
    """Time spans of a stream from its chunks' clear hour buckets, narrowed to each day's
    first and last sample when the stream's description could be read."""
    out: list[Span] = []
    for b0, b1 in hours:
        lo, hi = b0 * 3600.0, (b1 + 1) * 3600.0
        if periods is not None:
            stats = periods.get(b0 // 24)
            if stats is not None and stats[1]:
                lo, hi = max(lo, float(stats[2])), min(hi, float(stats[3]))
        out.append((lo, max(lo, hi)))
    return out
