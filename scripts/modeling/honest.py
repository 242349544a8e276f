"""Evaluation on real people: identical windows for model and baselines, block-bootstrap CIs.

Windows end at every ``stride``-th step of a person's timeline that has a full
context and at least one observed target step ahead. Every method is scored on
the same (window, horizon step) cells: those where the target was observed.

Baselines (raw units, from the observed context only):
persistence (last observed value), mean of the last 3 observed steps, the
context mean, a least-squares linear trend over the context extrapolated, and
a ridge AR on the last 12 steps of the engine's filled context, fitted on the
training people (direct multi-horizon, on differences to the last value).

Confidence intervals: windows overlap and neighbouring errors are correlated,
so a naive interval is too narrow. Each person's windows are grouped in blocks
of ``BLOCK_S`` of time; a bootstrap replicate draws blocks with replacement
within each person (pooled: within every person at once, so each person keeps
their own weight) and recomputes the MAE (ratio) from the blocks' error sums.
"""

from __future__ import annotations

import warnings

import numpy as np

from .spec import CONTEXT, HORIZON, STEP_S

BLOCK_S = 1800.0  # 30 min blocks
N_BOOT = 1000
AR_LAGS = 12


def simple_baselines(ctx_obs: np.ndarray) -> dict[str, np.ndarray]:
    """(n, T) raw observed context (NaN missing) -> method -> (n,) forecast, flat over the horizon.

    Linear trend is returned (n, H).
    """
    n, t = ctx_obs.shape
    ok = np.isfinite(ctx_obs)
    idx = np.where(ok, np.arange(t)[None, :], -1)
    last = idx.max(axis=1)
    pers = np.where(last >= 0, ctx_obs[np.arange(n), np.clip(last, 0, None)], np.nan)
    # mean of the last 3 observed steps
    order = np.argsort(np.where(ok, -np.arange(t)[None, :], t), axis=1)[:, :3]
    last3 = np.take_along_axis(np.where(ok, ctx_obs, np.nan), order, axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # windows without a value give NaN
        mean3 = np.nanmean(last3, axis=1)
        cmean = np.nanmean(np.where(ok, ctx_obs, np.nan), axis=1)
        # OLS trend via closed form on observed cells
        g = np.arange(t, dtype=np.float64)[None, :]
        w = ok.astype(np.float64)
        sw = w.sum(1)
        mx = (w * g).sum(1) / sw
        my = (w * np.where(ok, ctx_obs, 0)).sum(1) / sw
        sxx = (w * (g - mx[:, None]) ** 2).sum(1)
        sxy = (w * (g - mx[:, None]) * (np.where(ok, ctx_obs, 0) - my[:, None])).sum(1)
        slope = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1), 0.0)
    fut = t - 1 + 1 + np.arange(HORIZON)[None, :]
    trend = my[:, None] + slope[:, None] * (fut - mx[:, None])
    return {"persistence": pers, "last3_mean": mean3, "context_mean": cmean, "linear_trend": trend}


def ar_features(ctx_filled: np.ndarray, pers: np.ndarray) -> np.ndarray:
    """Last AR_LAGS steps of the filled context relative to the last observed value."""
    lag = ctx_filled[:, -AR_LAGS:]
    lag = np.where(np.isfinite(lag), lag, pers[:, None])
    return np.concatenate([lag - pers[:, None], np.ones((len(lag), 1))], axis=1)


def fit_ridge_ar(
    ctx_filled: np.ndarray, pers: np.ndarray, y: np.ndarray, ym: np.ndarray, alpha: float
) -> np.ndarray:
    """Ridge weights (AR_LAGS+1, H) for y - persistence; one column per horizon step."""
    x = ar_features(ctx_filled, pers)
    w = np.zeros((x.shape[1], HORIZON))
    for h in range(HORIZON):
        sel = ym[:, h] & np.isfinite(pers)
        a = x[sel]
        b = y[sel, h] - pers[sel]
        reg = alpha * np.eye(a.shape[1])
        reg[-1, -1] = 0.0
        w[:, h] = np.linalg.solve(a.T @ a + reg, a.T @ b)
    return w


def ridge_ar(ctx_filled: np.ndarray, pers: np.ndarray, w: np.ndarray) -> np.ndarray:
    return pers[:, None] + ar_features(ctx_filled, pers) @ w


def abs_errors(pred: np.ndarray, y: np.ndarray, ym: np.ndarray) -> np.ndarray:
    """(n, H) |pred - y| on observed cells, 0 elsewhere (pred may be (n,) flat)."""
    p = pred if pred.ndim == 2 else np.repeat(pred[:, None], y.shape[1], axis=1)
    return np.where(ym, np.abs(np.nan_to_num(p) - np.nan_to_num(y)), 0.0)


def block_sums(ends: np.ndarray, err: dict[str, np.ndarray], ym: np.ndarray):  # type: ignore[no-untyped-def]
    """Per 30-min block: error sums per method and cell counts."""
    blk = (ends * STEP_S // BLOCK_S).astype(np.int64)
    uniq, inv = np.unique(blk, return_inverse=True)
    cnt = np.bincount(inv, weights=ym.sum(1), minlength=len(uniq))
    sums = {k: np.bincount(inv, weights=v.sum(1), minlength=len(uniq)) for k, v in err.items()}
    return sums, cnt


def bootstrap(
    people: list[tuple[dict[str, np.ndarray], np.ndarray]], ref: str, rng: np.random.Generator
) -> dict:
    """MAE per method with 95 % CI and ratio to every other method, blocks resampled per person.

    ``people``: [(method -> block error sums, block counts)].
    """
    methods = list(people[0][0])
    reps_sum = {k: np.zeros(N_BOOT) for k in methods}
    reps_cnt = np.zeros(N_BOOT)
    for sums, cnt in people:
        nb = len(cnt)
        draw = rng.integers(0, nb, (N_BOOT, nb))
        reps_cnt += cnt[draw].sum(1)
        for k in methods:
            reps_sum[k] += sums[k][draw].sum(1)
    tot_cnt = sum(c.sum() for _, c in people)
    out: dict = {"cells": int(tot_cnt), "mae": {}, "ratio_to": {}}
    for k in methods:
        point = sum(s[k].sum() for s, _ in people) / tot_cnt
        boot = reps_sum[k] / reps_cnt
        out["mae"][k] = [float(point), *np.percentile(boot, [2.5, 97.5]).tolist()]
    for base in methods:
        if base == ref:
            continue
        point = sum(s[ref].sum() for s, _ in people) / sum(s[base].sum() for s, _ in people)
        boot = reps_sum[ref] / reps_sum[base]
        out["ratio_to"][base] = [float(point), *np.percentile(boot, [2.5, 97.5]).tolist()]
    return out


def coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray, ym: np.ndarray) -> float:
    inside = (y >= lo) & (y <= hi) & ym
    return float(inside.sum() / max(ym.sum(), 1))


def window_ends(n: int, stride: int, offset: int = 0) -> np.ndarray:
    return np.arange(CONTEXT - 1 + offset, n - HORIZON, stride)
