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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetwin.arrays import as_run
from edgetwin.features import schema
from edgetwin.inference.scoring import Cells, IntArray, ObservedSeries, Outcomes
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
# Forecasts whose design rows are built at a time (1,024 x 12 x 14 float64: 1.4 MB).
BATCH_ROWS = 1024
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
        corrected = o.global_ + TrainingSet.build(o, series).corrections(self.weights)
        missing = ~np.isfinite(o.personal) & np.isfinite(o.persistence)[:, None]
        np.copyto(o.personal, corrected, where=missing, casting="same_kind")  # in place

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


@dataclass
class NormalEquations:
    """Per horizon step, ``X'X`` and ``X'r`` over the usable cells of some forecasts: all a
    ridge solve needs, whatever the penalty, summed a batch of rows at a time."""

    gram: FloatArray  # (H, F, F)
    rhs: FloatArray  # (H, F)
    cells: IntArray  # (H,) usable cells per step

    def solve(self, alpha: float) -> FloatArray:
        """Ridge weights (H, F) per horizon step; the intercept is not penalised. A step with
        fewer than two cells per feature keeps zero weights (no correction)."""
        h, f = self.rhs.shape
        w = np.zeros((h, f))
        pen = np.full(f, alpha)
        pen[0] = 1e-9
        for k in range(h):
            if self.cells[k] >= 2 * f:
                w[k] = np.linalg.solve(self.gram[k] + np.diag(pen), self.rhs[k])
        return w


@dataclass
class TrainingSet:
    """One target's scored forecasts as regression inputs. The design matrix (a day is
    17,280 x 12 x 14 cells, the largest array a refit would hold) is built
    :data:`BATCH_ROWS` forecasts at a time, never whole."""

    t: FloatArray  # (n,)
    global_: Cells  # (n, H)
    recent: FloatArray  # (n, LAGS) observed values up to t, gaps carried forward
    context_mean: FloatArray  # (n,)
    r: Cells  # (n, H) observed minus global; 0 where not observed
    ok: Any  # (n, H) bool: usable cells (outcome and every feature finite)

    @classmethod
    def build(cls, o: Outcomes, series: ObservedSeries) -> TrainingSet:
        keys = np.round(o.t / series.step_s).astype(np.int64)
        recent = series.recent(keys, LAGS)
        y = recent[:, -1]
        r = o.actual - o.global_
        # x is finite exactly where its two level differences are (lags missing are zeros)
        level = np.isfinite((o.global_ - y[:, None]).astype(np.float32))
        level &= np.isfinite((o.context_mean - y).astype(np.float32))[:, None]
        ok = np.isfinite(r) & level
        return cls(o.t, o.global_, recent, o.context_mean, np.nan_to_num(r, copy=False), ok)

    @property
    def horizon(self) -> int:
        return int(self.global_.shape[1])

    def rows(self, sel: Any) -> TrainingSet:
        if isinstance(sel, np.ndarray) and sel.dtype == bool:
            sel = as_run(sel)  # forecasts are in time order: a cut is a run of rows, views
        return TrainingSet(
            self.t[sel], self.global_[sel], self.recent[sel], self.context_mean[sel],
            self.r[sel], self.ok[sel],
        )

    def batches(self) -> Iterator[tuple[Cells, Cells, Any]]:
        """``(x, r, ok)`` of :data:`BATCH_ROWS` forecasts at a time; x is float32 with zeros
        where a feature is missing (the cell is then not ``ok``)."""
        for a in range(0, int(self.t.size), BATCH_ROWS):
            b = slice(a, a + BATCH_ROWS)
            x = design(self.global_[b], self.recent[b], self.context_mean[b], np.float32)
            yield np.nan_to_num(x, copy=False), self.r[b], self.ok[b]

    def normal_equations(self) -> NormalEquations:
        h = self.horizon
        gram = np.zeros((h, N_FEATURES, N_FEATURES))
        rhs = np.zeros((h, N_FEATURES))
        for x, r, ok in self.batches():
            xm = x.astype(np.float64)
            xm[~ok] = 0.0  # a cell not usable adds nothing
            xm = xm.transpose(1, 0, 2)  # (H, n, F)
            gram += xm.transpose(0, 2, 1) @ xm
            rhs += np.einsum("hnf,hn->hf", xm, np.where(ok, r, 0).T.astype(np.float64))
        return NormalEquations(gram, rhs, self.ok.sum(axis=0))

    def corrections(self, w: FloatArray) -> Cells:
        """(n, H) residuals the weights ``w`` predict (the personal minus the global forecast)."""
        out = np.empty(self.global_.shape, dtype=np.float64)
        at = 0
        for x, _, _ in self.batches():
            out[at : at + x.shape[0]] = np.einsum("nhf,hf->nh", x, w)
            at += x.shape[0]
        return out

    def maes(self, weights: Sequence[FloatArray]) -> list[float]:
        """MAE of the corrected forecast (residual minus predicted residual) on the usable
        cells, for each of ``weights`` (one pass over the rows)."""
        err = np.zeros(len(weights))
        for x, r, ok in self.batches():
            for i, w in enumerate(weights):
                err[i] += np.abs(r - np.einsum("nhf,hf->nh", x, w))[ok].sum()
        cells = int(self.ok.sum())
        return [float(e / cells) if cells else math.nan for e in err]


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
    horizon_s = data.horizon * step_s
    cut = t_last - HOLDOUT_S
    train = data.rows(data.t + horizon_s <= cut)  # no outcome inside the held-back hour
    held = data.rows(data.t > cut)
    alpha = _choose_alpha(train)
    w = train.normal_equations().solve(alpha)
    g_mae = float(np.abs(held.r)[held.ok].mean()) if held.ok.any() else math.nan
    p_mae = held.maes([w])[0]
    cells = int(held.ok.sum())
    adopted = bool(
        cells >= MIN_HOLDOUT_CELLS
        and math.isfinite(p_mae)
        and p_mae <= (1.0 - MIN_GAIN) * g_mae
    )
    final = data.normal_equations().solve(alpha) if adopted else w
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
    fit = train.rows(slice(0, max(1, q - train.horizon)))
    val = train.rows(slice(q, None))
    equations = fit.normal_equations()  # the same for every penalty
    maes = val.maes([equations.solve(a) for a in ALPHAS])
    best, best_mae = ALPHAS[-1], math.inf
    for a, mae in zip(ALPHAS, maes, strict=True):
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
