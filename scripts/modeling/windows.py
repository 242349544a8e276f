"""Numpy side of training: prior, standardisation, windows, the engine's fill rule, baselines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgetwin.inference.baseline import Prior, running_stats
from edgetwin.inference.fill import center

from .data import Recording
from .spec import CONTEXT, HORIZON, IMPUTE_WINDOW, N_FEATURES, TARGET_INDEX, Z_CLIP

PRIOR_COUNT = 60.0  # 5 minutes of steps before the person outweighs the population
MIN_STD_FRACTION = 0.1


def fit_prior(recs: list[Recording]) -> Prior:
    """Population mean/std per feature over the training recordings."""
    v = np.concatenate([r.values for r in recs])
    m = np.concatenate([r.mask for r in recs])
    mean = np.zeros(N_FEATURES)
    std = np.ones(N_FEATURES)
    for k in range(N_FEATURES):
        col = v[m[:, k], k]
        if len(col) > 10:
            mean[k], std[k] = float(col.mean()), float(max(col.std(), 1e-3))
    return Prior(mean=mean, std=std, count=PRIOR_COUNT, min_std=std * MIN_STD_FRACTION)


def stats(rec: Recording, prior: Prior) -> tuple[np.ndarray, np.ndarray]:
    """Running (mean, std) after each step, exactly as RunningBaseline reports them."""
    return running_stats(rec.values, rec.mask, prior)


def padded(rec: Recording, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Values/mask with ``pad`` all-missing rows in front (a context before the first frame)."""
    v = np.concatenate([np.full((pad, N_FEATURES), np.nan), rec.values])
    m = np.concatenate([np.zeros((pad, N_FEATURES), bool), rec.mask])
    return v, m


def imputer_windows(
    rec: Recording, prior: Prior, ends: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """z-windows (n, W, F) and masks ending at each step in ``ends`` (default: every step).

    Window ending at step e is standardised with the baseline at e; missing
    cells are 0 — exactly what the engine feeds the imputer.
    """
    w = IMPUTE_WINDOW
    mean, std = stats(rec, prior)
    v, m = padded(rec, w - 1)
    if ends is None:
        ends = np.arange(len(rec))
    idx = ends[:, None] + np.arange(w)[None, :]  # rows in padded arrays
    xv, xm = v[idx], m[idx]
    z = (xv - mean[ends][:, None, :]) / std[ends][:, None, :]
    z = np.where(xm, np.clip(z, -Z_CLIP, Z_CLIP), 0.0)
    return z.astype(np.float32), xm


def fill_contexts(
    rec: Recording, prior: Prior, impute: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """The raw-unit values the engine's context holds, per step: observed, imputed or NaN.

    ``impute(z (n,W,F), mask (n,W,F)) -> z (n,W,F)``. Returns ``(N, W, F)``:
    ``out[e]`` is the imputer's view of rows ``e-W+1..e`` after step ``e``
    (a feature is filled only where it was observed somewhere in that window).
    """
    w = IMPUTE_WINDOW
    mean, std = stats(rec, prior)
    z, m = imputer_windows(rec, prior)
    g = impute(z, m)
    raw = g * std[:, None, :] + mean[:, None, :]
    v, _ = padded(rec, w - 1)
    idx = np.arange(len(rec))[:, None] + np.arange(w)[None, :]
    obs = v[idx]
    active = m.any(axis=1, keepdims=True)
    return np.where(m, obs, np.where(active, raw, np.nan))


def context_values(windows: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """Raw-unit contexts (len(ends), CONTEXT, F) from :func:`fill_contexts` output.

    Steps older than the imputer window keep the value from the last window
    that held them (row 0 of the window ending W-1 steps later), as the
    engine's ring buffer does; steps before the recording are NaN.
    """
    w = IMPUTE_WINDOW
    final = np.full((n + CONTEXT, N_FEATURES), np.nan)  # padded by CONTEXT in front
    # final value of step s: row 0 of the window ending at s+W-1 (if it exists)
    s = np.arange(n - w + 1)
    final[CONTEXT + s] = windows[s + w - 1, 0]
    out = np.empty((len(ends), CONTEXT, N_FEATURES))
    for i, e in enumerate(ends):
        out[i] = final[e + 1 : e + 1 + CONTEXT]  # steps e-CONTEXT+1..e (padded index +CONTEXT)
        k = min(w, e + 1)
        out[i, CONTEXT - k :] = windows[e, w - k :]
    return out


def forecaster_samples(
    rec: Recording,
    prior: Prior,
    windows: np.ndarray,
    min_context: int,
    stride: int = 1,
    full_only: bool = False,
    ends: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Inputs (n, T, 2F), targets (n, H, K) in z units with masks, and raw-unit references.

    ``ends`` (default: every ``stride``-th step with a context) picks the windows.
    """
    n = len(rec)
    mean, std = stats(rec, prior)
    first = CONTEXT - 1 if full_only else min_context - 1
    if ends is None:
        ends = np.arange(first, n - HORIZON, stride)
    if len(ends) == 0:
        return {}
    ctx_raw = context_values(windows, ends, n)
    mu, sd = mean[ends][:, None, :], std[ends][:, None, :]
    z = np.clip((ctx_raw - mu) / sd, -Z_CLIP, Z_CLIP)
    v_pad, m_pad = padded(rec, CONTEXT - 1)
    rows = ends[:, None] + np.arange(CONTEXT)[None, :]
    obs_mask = m_pad[rows]
    zn, offset, scale = center(z, obs_mask)
    x = np.concatenate([zn, obs_mask.astype(np.float32)], axis=2)
    tidx = np.array(TARGET_INDEX)
    anchor, tscale = offset[:, 0, tidx], scale[:, 0, tidx]
    fut = ends[:, None] + 1 + np.arange(HORIZON)[None, :]
    y_raw = rec.values[fut][:, :, tidx]
    y_mask = rec.mask[fut][:, :, tidx]
    # targets in the context's own normalised units (see edgetwin.inference.fill.center)
    y = (
        (y_raw - mean[ends][:, None, tidx]) / std[ends][:, None, tidx] - anchor[:, None, :]
    ) / tscale[:, None, :]
    return {
        "x": x.astype(np.float32),
        "anchor": anchor,
        "scale": tscale,
        "y": np.where(y_mask, y, 0.0).astype(np.float32),
        "y_mask": y_mask,
        "y_raw": y_raw,
        "ctx_raw_obs": np.where(obs_mask, v_pad[rows], np.nan),
        "ctx_raw": ctx_raw,
        "obs_mask": obs_mask,
        "ends": ends,
        "mean": mean[ends],
        "std": std[ends],
    }


# --------------------------------------------------------------------------- baselines


def locf(z: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Last observation carried forward along axis 1 (next observation back-filled at the start)."""
    out = np.zeros_like(z)
    n, w, f = z.shape
    for i in range(n):
        for k in range(f):
            obs = np.flatnonzero(m[i, :, k])
            if len(obs) == 0:
                continue
            pos = np.searchsorted(obs, np.arange(w), side="right") - 1
            pos = np.where(pos < 0, 0, pos)
            out[i, :, k] = z[i, obs[pos], k]
    return out


def linear_interp(z: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 1 between observed cells, flat beyond the ends."""
    out = np.zeros_like(z)
    n, w, f = z.shape
    grid = np.arange(w)
    for i in range(n):
        for k in range(f):
            obs = np.flatnonzero(m[i, :, k])
            if len(obs):
                out[i, :, k] = np.interp(grid, obs, z[i, obs, k])
    return out


def forecast_baselines(ctx_obs: np.ndarray) -> dict[str, np.ndarray]:
    """Persistence, context mean, linear trend from raw observed contexts (n, T, K) -> (n, H, K)."""
    n, t, k = ctx_obs.shape
    pers = np.full((n, k), np.nan)
    mean = (
        np.nanmean(np.where(np.isfinite(ctx_obs), ctx_obs, np.nan), axis=1)
        if n
        else np.zeros((0, k))
    )
    trend = np.full((n, HORIZON, k), np.nan)
    grid = np.arange(t, dtype=np.float64)
    fut = t - 1 + 1 + np.arange(HORIZON, dtype=np.float64)
    for i in range(n):
        for j in range(k):
            col = ctx_obs[i, :, j]
            ok = np.isfinite(col)
            if ok.sum() == 0:
                continue
            pers[i, j] = col[np.flatnonzero(ok)[-1]]
            if ok.sum() >= 2:
                slope, icpt = np.polyfit(grid[ok], col[ok], 1)
                trend[i, :, j] = icpt + slope * fut
            else:
                trend[i, :, j] = col[ok][0]
    return {
        "persistence": np.repeat(pers[:, None, :], HORIZON, axis=1),
        "context_mean": np.repeat(mean[:, None, :], HORIZON, axis=1),
        "linear_trend": trend,
    }
