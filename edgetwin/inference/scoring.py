"""The twin scores itself: every stored forecast against what happened next.

For each stored forecast made at ``t`` and each horizon step ``k`` the outcome
is the target's *observed* value (finite, quality at least the schema's
threshold, not imputed) in the stored frame at ``t + (k + 1) * step``. Four
forecasts are compared on exactly the same cells:

- ``served``: what the twin served (the stored ``horizon``);
- ``global``: the shipped model's own forecast (``alternatives["global"]``
  when the twin served something else);
- ``persistence``: the last observed value at or before ``t`` within the
  context (``context`` steps ending at ``t``);
- ``context_mean``: the mean of the observed values in that context.

Band coverage is the share of outcomes inside the served band. Windows are
the forecasts made in the last hour and the last day before ``now``.

:func:`choose_sources` turns a day of outcomes into what the twin serves per
target and horizon step: the model unless it has not beaten persistence for
this person, else the best of persistence, the context mean and a 50/50 blend
of model and persistence — so the twin is never silently worse than carrying
the last value forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edgetwin.arrays import Growing, as_run
from edgetwin.features.schema import INDEX, QUALITY_THRESHOLD
from edgetwin.types import FeatureFrame, FloatArray, Prediction

if TYPE_CHECKING:
    from edgetwin.store.codec import FrameColumns

WINDOWS: dict[str, float] = {"hour": 3600.0, "day": 86400.0}
IntArray = npt.NDArray[np.int64]
Cells = npt.NDArray[np.floating[Any]]  # (forecast, horizon step): float32 over a day
METHODS = ("served", "global", "persistence", "context_mean")
# What can serve a horizon step. "global"/"personal" are the model; the rest are baselines.
MODEL_SOURCES = ("global", "personal")
BASELINE_SOURCES = ("persistence", "context_mean", "blend")
# Scored cells per horizon step needed before the twin overrides the model for a person.
MIN_CELLS = 360
_RECENT_BATCH = 4096  # forecasts whose outcomes or recent values are looked up at a time
BLEND = 0.5


@dataclass
class Outcomes:
    """One target's forecasts with what happened: arrays over (forecast, horizon step)."""

    target: str
    t: FloatArray  # (n,) forecast times
    actual: Cells  # (n, H), NaN where the outcome was not observed
    served: Cells | None  # None once scored as the day streamed (StreamedDay)
    global_: Cells
    personal: Cells  # NaN where no personal forecast exists
    lo: Cells | None  # the band, as ``served``
    hi: Cells | None
    persistence: FloatArray  # (n,) NaN when nothing was observed in the context
    context_mean: FloatArray

    def method(self, name: str) -> Cells:
        """(n, H) forecasts of a scored method (baselines broadcast over the horizon)."""
        h = self.actual.shape[1]
        if name == "served":
            if self.served is None:
                raise ValueError("these outcomes were scored as they streamed: no served values")
            return self.served
        if name == "global":
            return self.global_
        if name == "personal":
            return self.personal
        if name in ("persistence", "context_mean"):
            col = self.persistence if name == "persistence" else self.context_mean
            return np.broadcast_to(col[:, None], (col.shape[0], h))  # indexing copies
        raise ValueError(f"unknown scoring method {name!r}")

    def model(self) -> Cells:
        """What the model side serves: the personal forecast where there is one, else global."""
        return np.where(np.isfinite(self.personal), self.personal, self.global_)


class ObservedSeries:
    """A target's observed values on the twin's step grid, for lookups by time."""

    def __init__(self, keys: IntArray, values: FloatArray, step_s: float) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.values = values[order]
        self.step_s = step_s
        self._cum = np.concatenate([[0.0], np.cumsum(self.values)])

    @classmethod
    def from_observations(cls, keys: IntArray, values: FloatArray, step_s: float
                          ) -> ObservedSeries:
        """From observations in stored order: a later one for the same step wins
        (duplicates are rare: re-ingested data)."""
        if keys.size:
            last = np.unique(keys[::-1], return_index=True)[1]
            idx = keys.size - 1 - last
            keys, values = keys[idx], values[idx]
        return cls(keys, values, step_s)

    def at(self, keys: IntArray) -> FloatArray:
        """Observed value at each grid key, NaN where none."""
        if self.keys.size == 0:
            return np.full(keys.shape, np.nan)
        i = np.clip(np.searchsorted(self.keys, keys), 0, self.keys.size - 1)
        return np.where(self.keys[i] == keys, self.values[i], np.nan)

    def context(self, keys: IntArray, length: int) -> tuple[FloatArray, FloatArray]:
        """(last observed value, mean of observed values), ``length`` steps ending at each key."""
        lo = np.searchsorted(self.keys, keys - length + 1, side="left")
        hi = np.searchsorted(self.keys, keys, side="right")
        n = hi - lo
        has = n > 0
        vals = self.values if self.keys.size else np.zeros(1)
        last = np.where(has, vals[np.clip(hi - 1, 0, None)], np.nan)
        mean = np.where(has, (self._cum[hi] - self._cum[lo]) / np.maximum(n, 1), np.nan)
        return np.asarray(last, dtype=np.float64), np.asarray(mean, dtype=np.float64)

    def recent(self, keys: IntArray, lags: int) -> FloatArray:
        """(n, lags) observed values at keys-lags+1..keys, oldest first; gaps carry the last
        observed value forward (from up to ``lags`` steps before), NaN when none."""
        out = np.empty((int(keys.shape[0]), lags))
        for a in range(0, out.shape[0], _RECENT_BATCH):  # the temporaries are 4x the output
            b = min(out.shape[0], a + _RECENT_BATCH)
            out[a:b] = self._recent(keys[a:b], lags)
        return out

    def _recent(self, keys: IntArray, lags: int) -> FloatArray:
        n, w = int(keys.shape[0]), 2 * lags
        grid = keys[:, None] - np.arange(w - 1, -1, -1)[None, :]
        vals = self.at(grid.reshape(-1)).reshape(n, w)
        # forward fill along the row
        idx = np.where(np.isfinite(vals), np.arange(w)[None, :], 0)
        np.maximum.accumulate(idx, axis=1, out=idx)
        filled = np.take_along_axis(vals, idx, axis=1)
        return np.asarray(filled[:, -lags:], dtype=np.float64)


def value_of(p: Prediction, name: str) -> FloatArray:
    """Forecast ``name`` ("global", "personal", ...) of a stored prediction, NaN where absent.

    A step comes from the served horizon when ``name`` served it, else from the
    prediction's alternatives. With no ``sources`` the global model served every step.
    """
    h = len(p.horizon)
    sources = p.sources if p.sources else ("global",) * h
    alts = dict(p.alternatives)
    out = np.full(h, np.nan)
    if name in alts and len(alts[name]) == h:
        out[:] = alts[name]
    served = np.array([s == name for s in sources], dtype=bool)
    out[served] = np.asarray(p.horizon, dtype=np.float64)[served]
    return out


# Rows of :class:`ForecastColumns`' (5, H) block per forecast.
_SERVED, _GLOBAL, _PERSONAL, _LO, _HI = range(5)


class ForecastColumns:
    """One target's stored forecasts of one horizon length, as columns."""

    def __init__(self, horizon: int, step_s: float) -> None:
        self.horizon = horizon
        self.step_s = step_s
        self._t = Growing()
        # served, global, personal, band low and high of a forecast as one (5, H) row: one
        # growing array per target, not five (each leaves up to a block unused), float32 (the
        # model's outputs are float32 already; a day of them in float64 is ~40 MB)
        self._rows = Growing((5, horizon), np.float32)

    def __len__(self) -> int:
        return self._t.n

    def add(self, p: Prediction) -> None:
        self._t.append(p.t)
        row = self._rows.next_row()
        row[_SERVED] = p.horizon
        band = p.band
        row[_LO] = [b[0] for b in band]
        row[_HI] = [b[1] for b in band]
        if p.sources or p.alternatives:
            row[_GLOBAL] = value_of(p, "global")
            row[_PERSONAL] = value_of(p, "personal")
        else:  # the global model served every step
            row[_GLOBAL] = p.horizon
            row[_PERSONAL] = math.nan

    def outcomes(self, target: str, obs: ObservedSeries, context: int) -> Outcomes:
        t = self._t.array()
        rows = self._rows.array()  # (n, 5, H); the columns below are views of it
        actual, last, mean = what_happened(t, self.step_s, self.horizon, obs, context)
        return Outcomes(
            target=target,
            t=t,
            actual=actual,
            served=rows[:, _SERVED],
            global_=rows[:, _GLOBAL],
            personal=rows[:, _PERSONAL],
            lo=rows[:, _LO],
            hi=rows[:, _HI],
            persistence=last,
            context_mean=mean,
        )


def what_happened(
    t: FloatArray, step_s: float, horizon: int, obs: ObservedSeries, context: int
) -> tuple[Cells, FloatArray, FloatArray]:
    """For forecasts made at ``t``: the observed outcome of each horizon step (float32, NaN
    where none), and the baselines, the last observed value and the mean over the context."""
    keys = np.round(t / step_s).astype(np.int64)
    actual = np.empty((t.size, horizon), dtype=np.float32)
    ahead = np.arange(1, horizon + 1)[None, :]
    for a in range(0, t.size, _RECENT_BATCH):  # the lookup's temporaries are 5x its output
        future = keys[a : a + _RECENT_BATCH, None] + ahead
        actual[a : a + _RECENT_BATCH] = obs.at(future.reshape(-1)).reshape(future.shape)
    last, mean = obs.context(keys, context)
    return actual, last, mean


class _Collects(Protocol):
    def add(self, p: Prediction) -> None: ...


_C = TypeVar("_C", bound=_Collects)


def _by_target(
    preds: Iterable[Prediction], wanted: Container[str] | None,
    make: Callable[[str, int, float], _C],
) -> dict[str, _C]:
    """Each wanted target's forecasts added to a collector made per (target, horizon length)
    by ``make(target, horizon, step_s)``; where a target's forecasts differ in horizon length
    (a model change) the collector of the longest is returned. The target's first forecast
    sets the step."""
    by_len: dict[tuple[str, int], _C] = {}
    step: dict[str, float] = {}
    for p in preds:
        h = len(p.horizon)
        if not h or (wanted is not None and p.target not in wanted):
            continue
        got = by_len.get((p.target, h))
        if got is None:
            got = by_len[(p.target, h)] = make(p.target, h, step.setdefault(p.target, p.step_s))
        got.add(p)
    # sorted by (target, length): a target's longest horizon comes last and wins
    return {target: by_len[(target, h)] for target, h in sorted(by_len)}


def collect_forecasts(
    preds: Iterable[Prediction], targets: Container[str] | None = None
) -> dict[str, ForecastColumns]:
    """Per target, its forecasts as columns, read in one pass (``preds`` may stream from
    the store chunk by chunk). Where a target's forecasts differ in horizon length (a model
    change) those of the longest horizon are kept; the target's first forecast sets the
    step."""
    return _by_target(preds, targets, lambda _target, h, step_s: ForecastColumns(h, step_s))


def outcomes(
    preds: Iterable[Prediction],
    series: dict[str, ObservedSeries],
    context: int,
) -> dict[str, Outcomes]:
    """Per target, the stored forecasts with their observed outcomes and baselines."""
    return outcomes_of(collect_forecasts(preds, series), series, context)


def outcomes_of(
    forecasts: dict[str, ForecastColumns], series: dict[str, ObservedSeries], context: int
) -> dict[str, Outcomes]:
    """:func:`outcomes` of forecasts already collected (the columns are handed over)."""
    return {
        target: cols.outcomes(target, series[target], context)
        for target, cols in forecasts.items()
        if target in series and len(cols)
    }


def score(
    oc: dict[str, Outcomes], now: float, windows: dict[str, float] | None = None
) -> dict[str, Any]:
    """Rolling MAE per target and horizon step for each method, and band coverage.

    Cells count when the outcome was observed and every method has a value, so
    the methods are compared on identical cells. JSON-ready.
    """
    windows = WINDOWS if windows is None else windows
    result: dict[str, Any] = {"now": now, "methods": list(METHODS), "windows": {}}
    for wname, span in windows.items():
        per_target: dict[str, Any] = {}
        for target, o in sorted(oc.items()):
            sums = WindowSums(o.actual.shape[1])
            sums.add(o, window_rows(o.t, now - span, now))
            per_target[target] = sums.entry()
        result["windows"][wname] = per_target
    return result


class WindowSums:
    """One target's score over one window, summed a block of forecasts at a time (so a day
    can be scored as it is read, and only what the fit needs kept)."""

    def __init__(self, horizon: int) -> None:
        self.forecasts = 0
        self.cells = np.zeros(horizon, dtype=np.int64)
        self.err = {m: np.zeros(horizon) for m in METHODS}
        self.inside = 0

    def add(self, o: Outcomes, rows: slice | npt.NDArray[np.bool_]) -> None:
        """The forecasts ``rows`` of ``o`` (its band and served values must be there)."""
        if o.lo is None or o.hi is None:
            raise ValueError("these outcomes were scored as they streamed: no band")
        actual = o.actual[rows]
        ok = np.isfinite(actual)
        for m in METHODS:
            ok &= np.isfinite(o.method(m)[rows])
        self.forecasts += int(o.t[rows].size)
        self.cells += ok.sum(axis=0)
        for m in METHODS:  # one method's errors at a time: a day's are 1.7 MB each
            self.err[m] += np.where(ok, np.abs(o.method(m)[rows] - actual), 0.0).sum(axis=0)
        inside = (actual >= o.lo[rows]) & (actual <= o.hi[rows])
        self.inside += int(inside[ok].sum())

    def entry(self) -> dict[str, Any]:
        """JSON-ready: forecasts, cells, MAE per method (overall and per step), coverage."""
        total = int(self.cells.sum())
        entry: dict[str, Any] = {
            "forecasts": self.forecasts,
            "cells": total,
            "cells_per_step": [int(c) for c in self.cells],
            "mae": {},
            "mae_per_step": {},
        }
        for m in METHODS:
            entry["mae_per_step"][m] = [
                _num(float(e) / int(c)) if c else None
                for e, c in zip(self.err[m], self.cells, strict=True)
            ]
            entry["mae"][m] = _num(float(self.err[m].sum()) / total) if total else None
        entry["coverage"] = _num(self.inside / total) if total else None
        return entry


class StreamedDay:
    """A target's stored forecasts of one horizon length scored as they are read, with the
    frames read first (their outcomes are known): a block of forecasts at a time is staged,
    scored in every window, and only what the forecasts said that nothing else can tell is
    kept: time, global and personal (float32). What happened (the outcome, the baselines) is
    looked up again from the observed series when the outcomes are asked for; what was served
    and the band, 40 % of a day's columns, are not kept."""

    def __init__(self, target: str, horizon: int, step_s: float, series: ObservedSeries,
                 context: int, now: float, windows: dict[str, float]) -> None:
        self.target, self.horizon, self.step_s = target, horizon, step_s
        self._series, self._context, self._now, self._windows = series, context, now, windows
        self._staged: ForecastColumns | None = ForecastColumns(horizon, step_s)
        self._t = Growing()
        self._kept = Growing((2, horizon), np.float32)  # global, personal
        self._joined: tuple[FloatArray, Cells] | None = None
        self.sums = {w: WindowSums(horizon) for w in windows}

    def add(self, p: Prediction) -> None:
        assert self._staged is not None, "a day is not added to once it was finished"
        self._staged.add(p)
        if len(self._staged) >= _RECENT_BATCH:
            self._settle()

    def _settle(self) -> None:
        if self._staged is None or not len(self._staged):
            return
        o = self._staged.outcomes(self.target, self._series, self._context)
        for wname, span in self._windows.items():
            self.sums[wname].add(o, window_rows(o.t, self._now - span, self._now))
        self._t.extend(o.t)
        self._kept.extend(np.stack([o.global_, o.personal], axis=1))

    def finish(self) -> None:
        """Score the last block and join what was kept (the score is complete after this)."""
        if self._joined is None:
            self._settle()
            self._staged = None
            self._joined = (self._t.array(), self._kept.array())

    def times(self) -> FloatArray:
        """When the day's forecasts were made (no lookup)."""
        self.finish()
        assert self._joined is not None
        return self._joined[0]

    def outcomes(self) -> Outcomes:
        """The day's outcomes without what was served and the band (``score`` has them); the
        outcome and baselines are looked up anew at each call (a day of them is ~1 MB a
        target: a refit holds one target's at a time, not every target's)."""
        self.finish()
        assert self._joined is not None
        t, kept = self._joined
        actual, last, mean = what_happened(t, self.step_s, self.horizon, self._series,
                                           self._context)
        return Outcomes(
            target=self.target, t=t, actual=actual, served=None, global_=kept[:, 0],
            personal=kept[:, 1], lo=None, hi=None, persistence=last, context_mean=mean,
        )


class StreamedOutcomes(Mapping[str, Outcomes]):
    """Each target's :class:`StreamedDay` outcomes, made when asked for and not kept: take
    each once (``for target, o in outcomes.items()``) to hold one target's at a time."""

    def __init__(self, days: dict[str, StreamedDay]) -> None:
        self._days = days

    def __getitem__(self, target: str) -> Outcomes:
        return self._days[target].outcomes()

    def __iter__(self) -> Iterator[str]:
        return iter(self._days)

    def __len__(self) -> int:
        return len(self._days)

    def first_t(self, target: str) -> float:
        """The earliest forecast time of ``target`` (without looking anything up)."""
        t = self._days[target].times()
        return float(t.min()) if t.size else math.inf


def score_streamed(
    preds: Iterable[Prediction], series: dict[str, ObservedSeries], context: int, now: float,
    windows: dict[str, float] | None = None,
) -> tuple[dict[str, Any], StreamedOutcomes]:
    """:func:`score` and the outcomes (without served values and band) of ``preds`` in one
    pass, for the targets in ``series``. As :func:`collect_forecasts`: a target's longest
    horizon wins and its first forecast sets the step."""
    windows = WINDOWS if windows is None else windows
    chosen = _by_target(
        preds, series,
        lambda target, h, step_s: StreamedDay(target, h, step_s, series[target], context, now,
                                              windows),
    )
    for day in chosen.values():
        day.finish()  # the last block scored
    result: dict[str, Any] = {"now": now, "methods": list(METHODS), "windows": {}}
    for wname in windows:
        result["windows"][wname] = {t: d.sums[wname].entry() for t, d in sorted(chosen.items())}
    return result, StreamedOutcomes(chosen)


def window_rows(t: FloatArray, after: float, until: float) -> slice | npt.NDArray[np.bool_]:
    """Rows with ``after < t <= until``: a slice when they are one run (forecasts are
    stored in time order), so the window's columns are views, not copies."""
    return as_run((t > after) & (t <= until))


def choose_sources(o: Outcomes, now: float, span: float = WINDOWS["day"]) -> dict[str, Any]:
    """What to serve per horizon step for one target, from the last day's outcomes.

    The model (personal where fitted, else global) keeps a step unless it has not
    beaten persistence there; then the step goes to whichever of persistence, the
    context mean and a 50/50 model/persistence blend had the lowest MAE. Too few
    scored cells keep the model.
    """
    rows = window_rows(o.t, now - span, now)
    actual = o.actual[rows]
    model = o.model()[rows]
    pers = o.method("persistence")[rows]
    cands = {
        "model": model,
        "persistence": pers,
        "context_mean": o.method("context_mean")[rows],
        "blend": BLEND * model + (1 - BLEND) * pers,
    }
    ok = np.isfinite(actual)
    for v in cands.values():
        ok &= np.isfinite(v)
    h = actual.shape[1]
    steps: list[str] = []
    mae: dict[str, list[float | None]] = {k: [] for k in cands}
    for k in range(h):
        cells = ok[:, k]
        n = int(cells.sum())
        errs = {
            name: float(np.abs(v[cells, k] - actual[cells, k]).mean()) if n else math.nan
            for name, v in cands.items()
        }
        for name, e in errs.items():
            mae[name].append(_num(e) if n else None)
        if n < MIN_CELLS or errs["model"] < errs["persistence"]:
            steps.append("model")
        else:
            steps.append(min(BASELINE_SOURCES, key=lambda s: errs[s]))
    return {"steps": steps, "mae": mae, "cells": [int(c) for c in ok.sum(axis=0)], "now": now}


def summary_line(doc: dict[str, Any], window: str = "day") -> str:
    """One line for ``status``: served MAE vs persistence and coverage, per target."""
    per = doc.get("windows", {}).get(window, {})
    parts = []
    for target, e in sorted(per.items()):
        served, pers = e["mae"].get("served"), e["mae"].get("persistence")
        if served is None or pers is None:
            continue
        ratio = f" ({served / pers:.2f}x)" if pers else ""
        cov = f", band {e['coverage']:.0%}" if e.get("coverage") is not None else ""
        parts.append(f"{target} {_fmt(served)} vs persistence {_fmt(pers)}{ratio}{cov}")
    if not parts:
        return f"score (last {window}): no scored forecasts yet"
    return f"score (last {window}, MAE): " + "; ".join(parts)


def render_score(doc: dict[str, Any]) -> str:
    """The score as a terminal table (``edgetwin predictions --score``)."""
    import datetime as dt

    when = dt.datetime.fromtimestamp(doc["now"]).isoformat(sep=" ", timespec="seconds")
    lines = [
        f"score as of {when}: forecasts made in the last hour / day against what was "
        "observed (MAE in the target's unit; lower is better)",
        f"{'window':6}  {'target':10} {'cells':>7}  {'served':>7} {'global':>7} "
        f"{'persist':>7} {'ctx mean':>8}  {'band':>5}",
    ]
    for wname, per in doc["windows"].items():
        if not per:
            lines.append(f"{wname:6}  no scored forecasts")
        for target, e in per.items():
            m = e["mae"]
            cells = [_cell(m.get(k)) for k in METHODS]
            cov = f"{e['coverage']:.0%}" if e.get("coverage") is not None else "-"
            lines.append(
                f"{wname:6}  {target:10} {e['cells']:>7}  {cells[0]:>7} {cells[1]:>7} "
                f"{cells[2]:>7} {cells[3]:>8}  {cov:>5}"
            )
    for target, steps in sorted(doc.get("serving", {}).items()):
        step = float(doc.get("step_s", 5.0))
        base = [f"+{(k + 1) * step:g}" for k, s in enumerate(steps) if s != "model"]
        if base:
            lines.append(
                f"{target}: the model has not beaten persistence here over the last day; "
                f"steps {', '.join(base)} s serve {', '.join(sorted(set(steps) - {'model'}))}"
            )
    for target, h in sorted(doc.get("personal", {}).items()):
        verdict = "adopted" if h.get("adopted") else "not adopted"
        lines.append(
            f"{target}: personal correction {verdict} (held-back hour MAE "
            f"{_cell(h.get('personal_mae'))} vs global {_cell(h.get('global_mae'))})"
        )
    lines.append("band: share of observed values inside the served 95 % band")
    return "\n".join(lines)


def _cell(v: float | None) -> str:
    return "-" if v is None else _fmt(v)


def observed_series(
    frames: Iterable[FeatureFrame], targets: Sequence[str], step_s: float
) -> dict[str, ObservedSeries]:
    """Per target, its observed values in ``frames`` (one pass, no list of frames kept)."""
    idx = [INDEX[t] for t in targets]
    keys = [Growing() for _ in targets]
    vals = [Growing() for _ in targets]
    for f in frames:
        key = round(f.t / step_s)
        for j, k in enumerate(idx):
            v = float(f.values[k])
            if math.isfinite(v) and f.quality[k] >= QUALITY_THRESHOLD and not f.imputed[k]:
                keys[j].append(key)
                vals[j].append(v)
    return _series_of(targets, keys, vals, step_s)


def observed_series_of_columns(
    blocks: Iterable[FrameColumns], targets: Sequence[str], step_s: float
) -> dict[str, ObservedSeries]:
    """:func:`observed_series` of stored frames read as blocks of columns
    (``TwinStore.iter_frame_columns``): no object per frame."""
    idx = [INDEX[t] for t in targets]
    # one row per frame: its grid key, then each target's value (NaN where not usable); one
    # append per block, not two per target (a day is ~17,000 blocks of one frame each)
    rows = Growing((1 + len(idx),))
    for cols in blocks if idx else ():  # no target: no chunk read
        v = cols.values[:, idx]
        ok = np.isfinite(v) & (cols.quality[:, idx] >= QUALITY_THRESHOLD) & ~cols.imputed[:, idx]
        block = np.empty((v.shape[0], 1 + len(idx)))
        block[:, 0] = np.round(cols.t / step_s)
        block[:, 1:] = np.where(ok, v, np.nan)
        rows.extend(block)
    table = rows.array()
    keys, vals = [], []
    for j in range(len(idx)):
        seen = np.isfinite(table[:, 1 + j])
        keys.append(table[seen, 0].astype(np.int64))
        vals.append(table[seen, 1 + j])
    return {
        t: ObservedSeries.from_observations(keys[j], vals[j], step_s)
        for j, t in enumerate(targets)
    }


def _series_of(
    targets: Sequence[str], keys: list[Growing], vals: list[Growing], step_s: float
) -> dict[str, ObservedSeries]:
    return {
        t: ObservedSeries.from_observations(
            keys[j].array().astype(np.int64), vals[j].array(), step_s
        )
        for j, t in enumerate(targets)
    }


def score_store(
    store: Any, now: float, *, context: int, step_s: float, horizon: int,
    span: float | None = None, targets: Sequence[str] | None = None,
) -> tuple[dict[str, Any], StreamedOutcomes, dict[str, ObservedSeries]]:
    """Score the forecasts of ``targets`` (default: every feature) stored in the last
    ``span`` (default: a day) before ``now``: the score, the outcome arrays (without what
    was served and the band) and the observed series.

    Streamed: the frames are read first, as columns, then the forecasts chunk by chunk,
    each block scored as it arrives; a day (86,400 forecasts at the reference load) never
    exists as objects, nor are its served values and bands kept.
    """
    span = max(WINDOWS.values()) if span is None else span
    t0 = now - span
    wanted = sorted(INDEX if targets is None else (t for t in targets if t in INDEX))
    blocks = store.iter_frame_columns(t0 - context * step_s, now + (horizon + 1) * step_s)
    series = observed_series_of_columns(blocks, wanted, step_s)
    doc, oc = score_streamed(store.iter_predictions(t0, now, explained=False), series, context,
                             now)
    return doc, oc, series


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else round(v, 6)


def _fmt(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}"
