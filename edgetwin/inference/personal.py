"""Personal adaptation on the device: a small ridge head over the global model's forecast.

For each target the head predicts the global model's error at every horizon
step ``h`` from what the twin already has when it forecasts at ``t``:

    x = [1, g_h - y_t, y_{t-1} - y_t, ..., y_{t-11} - y_t, context mean - y_t]
    served_h = g_h + w_h . x

``g_h`` is the global forecast, ``y`` the person's observed values (gaps carry
the last value forward), all in the target's own unit. The head is solved in
numpy (no torch) from the person's stored forecasts and frames once there are
:data:`MIN_HISTORY_S` of them; the ridge penalty (never on the intercept) is
chosen on the last quarter of the training part. It is *adopted* only when it
beats the global model on the person's most recent held-back hour (forecasts
whose outcomes reach into that hour are left out of training), and then
refitted on everything for serving. The head lives in an encrypted record of
kind ``inference`` (so bundles carry it) that names the streams and the time
span it was derived from, so ``forget`` of those streams, of that time, or of
everything destroys it with the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetwin.features import schema
from edgetwin.inference.scoring import Cells, ObservedSeries, Outcomes
from edgetwin.types import FloatArray, channel_kind

RECORD_KIND = "inference"
KEY_PREFIX = "personal:"
LAGS = 12
N_FEATURES = LAGS + 2
MIN_HISTORY_S = 2 * 3600.0
HOLDOUT_S = 3600.0
# The head must beat the global model by this share of its MAE on the held-back hour.
# Chosen on the validation people (scripts/eval_personal.py --split val --min-gain 0.01/0.03/
# 0.05): pooled next-hour MAE vs global, RMSSD after 24 h 1.006 / 1.002 / 1.000, HR after
# 6 h 0.997 / 0.997 / 0.999; 3 % keeps most of the gain and little of the loss.
MIN_GAIN = 0.03
# Held-back cells needed to judge (an hour of 5 s forecasts, half of them scored).
MIN_HOLDOUT_CELLS = 3000
# Bounded work: at most this many of the newest forecasts are used.
MAX_FORECASTS = 20_000
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
# Which channel kinds feed a target (forget provenance); the schema's map when present.
_FEEDS: dict[str, frozenset[str]] = getattr(
    schema,
    "SOURCES",
    {
        "hr": frozenset({"rr", "ecg", "ppg", "hr"}),
        "rmssd": frozenset({"rr", "ecg", "ppg"}),
        "spo2": frozenset({"spo2"}),
        "skin_temp": frozenset({"temp"}),
        "eda_tonic": frozenset({"eda"}),
    },
)


def record_key(target: str) -> str:
    return KEY_PREFIX + target


@dataclass
class PersonalHead:
    """A fitted correction for one target (adopted or not, with the evidence)."""

    target: str
    weights: FloatArray  # (H, N_FEATURES)
    adopted: bool
    holdout: dict[str, Any]
    trained: dict[str, Any]
    derived_from: dict[str, Any] = field(default_factory=dict)
    fitted_at: float = 0.0

    def correct(self, global_h: FloatArray, recent: FloatArray, context_mean: float) -> FloatArray:
        """The personal forecast (H,) from the global one, the last LAGS values and the mean."""
        x = design(global_h[None, :], recent[None, :], np.array([context_mean]))[0]
        if not np.isfinite(x).all():
            return global_h
        return np.asarray(global_h + np.einsum("hf,hf->h", x, self.weights), dtype=np.float64)

    def fill_outcomes(self, o: Outcomes, series: ObservedSeries) -> None:
        """Give past forecasts without a personal value the one this head gives them, so the
        choice of what to serve compares what the twin would serve now with the baselines."""
        data = TrainingSet.build(o, series)
        corrected = o.global_ + np.einsum("nhf,hf->nh", data.x, self.weights)
        missing = ~np.isfinite(o.personal) & np.isfinite(o.persistence)[:, None]
        o.personal = np.where(missing, corrected, o.personal).astype(o.personal.dtype)

    def to_record(self) -> dict[str, Any]:
        return {
            "version": 1,
            "target": self.target,
            "weights": self.weights.tolist(),
            "adopted": self.adopted,
            "holdout": self.holdout,
            "trained": self.trained,
            "derived_from": self.derived_from,
            "fitted_at": self.fitted_at,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> PersonalHead:
        w = np.asarray(rec["weights"], dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != N_FEATURES or not np.isfinite(w).all():
            raise ValueError(f"personal head weights of shape {w.shape}")
        return cls(
            target=str(rec["target"]),
            weights=w,
            adopted=bool(rec["adopted"]),
            holdout=dict(rec.get("holdout", {})),
            trained=dict(rec.get("trained", {})),
            derived_from=dict(rec.get("derived_from", {})),
            fitted_at=float(rec.get("fitted_at", 0.0)),
        )


def design(
    global_h: Cells,
    recent: FloatArray,
    context_mean: FloatArray,
    dtype: npt.DTypeLike = np.float64,
) -> Cells:
    """Features (n, H, N_FEATURES) from global forecasts (n, H), recent values (n, LAGS), means."""
    n, h = global_h.shape
    y = recent[:, -1]
    lagdiff = np.nan_to_num(recent[:, :-1] - y[:, None])  # a lag with no value: no change
    x = np.empty((n, h, N_FEATURES), dtype=dtype)
    x[..., 0] = 1.0
    x[..., 1] = global_h - y[:, None]
    x[..., 2 : 2 + LAGS - 1] = lagdiff[:, None, ::-1]  # y_{t-1} first
    x[..., -1] = (context_mean - y)[:, None]
    return x


def solve(x: Cells, r: Cells, ok: Any, alpha: float) -> FloatArray:
    """Ridge weights (H, F) per horizon step on the cells ``ok``; the intercept is not penalised."""
    h, f = x.shape[1], x.shape[2]
    w = np.zeros((h, f))
    pen = np.full(f, alpha)
    pen[0] = 1e-9
    for k in range(h):
        rows = ok[:, k]
        if rows.sum() < 2 * f:
            continue
        xk, rk = x[rows, k].astype(np.float64), r[rows, k].astype(np.float64)
        w[k] = np.linalg.solve(xk.T @ xk + np.diag(pen), xk.T @ rk)
    return w


def _mae(x: Cells, r: Cells, ok: Any, w: FloatArray) -> float:
    """MAE of the corrected forecast (residual minus predicted residual) on cells ``ok``."""
    pred = np.einsum("nhf,hf->nh", x, w)
    cells = int(ok.sum())
    return float(np.abs(r - pred)[ok].sum() / cells) if cells else math.nan


@dataclass
class TrainingSet:
    """One target's scored forecasts as regression arrays."""

    t: FloatArray  # (n,)
    x: Cells  # (n, H, F), float32
    r: Cells  # (n, H) observed minus global; 0 where not observed
    ok: Any  # (n, H) bool: usable cells

    @classmethod
    def build(cls, o: Outcomes, series: ObservedSeries) -> TrainingSet:
        step = series.step_s
        keys = np.round(o.t / step).astype(np.int64)
        recent = series.recent(keys, LAGS)
        # float32: x is the largest array of a refit (a day: 17,280 x 12 x 14 cells); the
        # solves take each step's rows in float64
        x = design(o.global_, recent, o.context_mean, np.float32)
        r = o.actual - o.global_
        ok = np.isfinite(r) & np.isfinite(x).all(axis=2)
        # in place, for the same reason
        return cls(o.t, np.nan_to_num(x, copy=False), np.nan_to_num(r, copy=False), ok)

    def rows(self, sel: Any) -> TrainingSet:
        if isinstance(sel, np.ndarray) and sel.dtype == bool:
            # forecasts are in time order, so a cut is a run of rows: a view, not a copy of x
            idx = np.flatnonzero(sel)
            if not idx.size or idx[-1] - idx[0] + 1 == idx.size:
                sel = slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)
        return TrainingSet(self.t[sel], self.x[sel], self.r[sel], self.ok[sel])


def fit_head(
    data: TrainingSet,
    target: str,
    *,
    step_s: float,
    now: float,
    derived_from: dict[str, Any] | None = None,
) -> PersonalHead | None:
    """Fit, judge on the held-back last hour, refit on everything; None below the history bar."""
    if data.t.size > MAX_FORECASTS:
        data = data.rows(slice(-MAX_FORECASTS, None))
    usable = data.ok.any(axis=1)
    if not usable.any():
        return None
    t_first, t_last = float(data.t[usable].min()), float(data.t[usable].max())
    if t_last - t_first < MIN_HISTORY_S:
        return None
    horizon_s = data.x.shape[1] * step_s
    cut = t_last - HOLDOUT_S
    train = data.rows(data.t + horizon_s <= cut)  # no outcome inside the held-back hour
    held = data.rows(data.t > cut)
    alpha = _choose_alpha(train)
    w = solve(train.x, train.r, train.ok, alpha)
    g_mae = float(np.abs(held.r)[held.ok].mean()) if held.ok.any() else math.nan
    p_mae = _mae(held.x, held.r, held.ok, w)
    cells = int(held.ok.sum())
    adopted = bool(
        cells >= MIN_HOLDOUT_CELLS
        and math.isfinite(p_mae)
        and p_mae <= (1.0 - MIN_GAIN) * g_mae
    )
    final = solve(data.x, data.r, data.ok, alpha) if adopted else w
    return PersonalHead(
        target=target,
        weights=final,
        adopted=adopted,
        holdout={
            "global_mae": _round(g_mae),
            "personal_mae": _round(p_mae),
            "cells": cells,
            "from": cut,
            "to": t_last,
        },
        trained={
            "forecasts": int(train.t.size),
            "cells": int(train.ok.sum()),
            "alpha": alpha,
            "from": t_first,
        },
        derived_from=dict(derived_from or {}),
        fitted_at=now,
    )


def _choose_alpha(train: TrainingSet) -> float:
    """The ridge penalty with the lowest MAE on the last quarter of the training part."""
    n = train.t.size
    if n < 8:
        return ALPHAS[-1]
    q = int(n * 0.75)
    horizon_steps = train.x.shape[1]
    fit = train.rows(slice(0, max(1, q - horizon_steps)))
    val = train.rows(slice(q, None))
    best, best_mae = ALPHAS[-1], math.inf
    for a in ALPHAS:
        mae = _mae(val.x, val.r, val.ok, solve(fit.x, fit.r, fit.ok, a))
        if mae < best_mae:
            best, best_mae = a, mae
    return best


def feeding_streams(target: str, streams: Iterable[Any]) -> list[str]:
    """Names of stored streams with a channel that can feed ``target``."""
    kinds = _FEEDS.get(target, frozenset())
    return sorted(
        s.name for s in streams if any(channel_kind(c) in kinds for c in getattr(s, "channels", ()))
    )


def load_heads(store: Any, targets: Sequence[str]) -> dict[str, PersonalHead]:
    """Adopted heads stored in the twin; a malformed record is ignored (refitted later)."""
    out: dict[str, PersonalHead] = {}
    for target in targets:
        rec = store.get_record(RECORD_KIND, record_key(target))
        if not rec:
            continue
        try:
            head = PersonalHead.from_record(rec)
        except (KeyError, TypeError, ValueError):
            continue
        if head.adopted:
            out[target] = head
    return out


def _round(v: float) -> float | None:
    return None if not math.isfinite(v) else round(v, 6)
