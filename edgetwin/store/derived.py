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
  state (running baseline, context, last forecasts).

A frame does not record which stream fed a feature when several could, so a
stream's forget shreds every feature it *could* feed over its spans.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgetwin.features.schema import MEMORY_S, NAMES, SCHEMA_VERSION, fed_by
from edgetwin.types import FeatureFrame, Prediction, channel_kind

# A frame reads samples up to one step (and its lateness) beyond its own step: enough
# for steps up to a minute.
PAD_S = 120.0
# Imputed cells of a frame come from the frames of the imputer window before it
# (shipped models: 24 steps of 5 s); a forecast's context is extended by this too.
IMPUTE_REACH_S = 600.0
_MAX_MEMORY_S = max(MEMORY_S.values())

Span = tuple[float, float]
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
    def of_stream(cls, channels: Iterable[str] | None, spans: Iterable[Span]) -> Taint:
        """A stream's taint from its channel names (None: unknown, so every feature)."""
        if channels is None:
            return cls.of(None, spans)
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

    def forecast_reach(self, context_s: float) -> Span:
        """The time range forecasts (and imputed values) computed from it can lie in."""
        lo, hi = self.reach()
        if self.hits:
            hi = max(hi, self.hits[-1])
        return (lo, hi + context_s + IMPUTE_REACH_S)

    def overlaps(self, lo: float, hi: float, *, after: float) -> bool:
        """Whether [lo, hi] meets a span widened by PAD_S, and by ``after`` past its end."""
        i = bisect.bisect_right(self._starts, hi + PAD_S) - 1
        # spans are disjoint and sorted, so the last one starting in time ends latest
        return i >= 0 and self.spans[i][1] + PAD_S + after >= lo

    def _hit_within(self, lo: float, hi: float) -> bool:
        i = bisect.bisect_left(self.hits, lo)
        return i < len(self.hits) and self.hits[i] <= hi

    # -- frames and forecasts ----------------------------------------------------------

    def fed_values(self, frame: FeatureFrame) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Cells of ``frame`` that this data fed (and that hold something)."""
        t, n = frame.t, frame.values.shape[0]
        drop = np.zeros(n, dtype=bool)
        if self.empty or not self.overlaps(t, t, after=self.memory()):
            return drop
        if frame.schema_version == SCHEMA_VERSION and n == len(NAMES):
            for name in self.names():
                if self.overlaps(t, t, after=MEMORY_S[name]):
                    drop[NAMES.index(name)] = True
        else:
            drop[:] = True  # a layout this code does not know: cannot tell the features apart
        return drop & (np.isfinite(frame.values) | (frame.quality > 0) | frame.imputed)

    def shred_frames(self, frames: list[FeatureFrame]) -> list[FeatureFrame]:
        """``frames`` without the values this data fed; the same list when nothing changed."""
        out: list[FeatureFrame] = []
        changed = False
        for frame in frames:
            new = self._shred_frame(frame)
            changed |= new is not frame
            if new is not None:
                out.append(new)
        return out if changed else frames

    def _shred_frame(self, frame: FeatureFrame) -> FeatureFrame | None:
        drop = self.fed_values(frame)
        if frame.imputed.any() and self.read_by_model(frame.t - IMPUTE_REACH_S, frame.t):
            drop |= frame.imputed  # the imputer read forgotten values within its window
        if not drop.any():
            return frame
        values = np.where(drop, np.nan, frame.values)
        if not np.isfinite(values).any():
            return None  # nothing left but the step's time, which came from this data
        return replace(
            frame,
            values=values,
            quality=np.where(drop, 0.0, frame.quality),
            imputed=frame.imputed & ~drop,
        )

    def read_by_model(self, lo: float, hi: float) -> bool:
        """Whether a model input spanning [lo, hi] held forgotten data or values fed by it."""
        if self.empty:
            return False
        return self._hit_within(lo, hi) or (self.frames_gone and self.overlaps(lo, hi, after=0.0))

    def drop_forecasts(self, preds: list[Prediction]) -> list[Prediction]:
        """``preds`` without the forecasts whose inputs reached this data; same list if none."""
        kept = [p for p in preds if not self.fed_forecast(p)]
        return preds if len(kept) == len(preds) else kept

    def fed_forecast(self, pred: Prediction) -> bool:
        context = len(pred.attention) * pred.step_s if math.isfinite(pred.step_s) else math.inf
        return self.read_by_model(pred.t - context - IMPUTE_REACH_S, pred.t)

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


# Record kinds computed from the timeline -> what one record was computed from. A new
# kind of derived record (a personal model, a cache) adds itself here, e.g. with
# whole_timeline, and forget and retention drop it with the data it came from.
DERIVED_RECORD_KINDS: dict[str, Callable[[dict[str, Any]], RecordSource]] = {
    "inference": _inference_record,  # engine state (ENGINE_STATE_RECORD), personal heads
    "outbox": _outbox_entry,  # DP summaries waiting for, or done with, their upload
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
