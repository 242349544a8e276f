"""Accuracy of the shipped ONNX models against simple baselines, and the int8 gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgetwin.inference.fill import impute

from .data import Recording
from .spec import (
    CONTEXT,
    FEATURES,
    HORIZON,
    IMPUTE_WINDOW,
    N_FEATURES,
    QUANTILES,
    TARGET_INDEX,
    TARGETS,
)
from .windows import forecast_baselines, imputer_windows, linear_interp, locf, stats

ImputeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # z (n,W,F), mask -> z (n,W,F)
TIDX = np.array(TARGET_INDEX)
ForecastFn = Callable[
    [np.ndarray], tuple[np.ndarray, np.ndarray]
]  # x (n,T,2F) -> q (n,H,K,Q), attn (n,T)


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_imputer(path: Path, interpolate: tuple[int, ...] = ()) -> ImputeFn:
    """The imputer file as the engine runs it (fill.impute, with its interpolation fallback)."""
    sess = session(path)

    def g(feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = feeds["z"].shape[0]
        return np.concatenate(
            [
                sess.run(None, {k: v[i : i + 4096] for k, v in feeds.items()})[0]
                for i in range(0, n, 4096)
            ]
        )

    def run(z: np.ndarray, m: np.ndarray) -> np.ndarray:
        return impute(g, z, m, interpolate)

    return run


def onnx_forecaster(path: Path) -> ForecastFn:
    sess = session(path)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qs, attns = [], []
        for i in range(0, x.shape[0], 1024):
            xt = np.ascontiguousarray(x[i : i + 1024].transpose(1, 0, 2))
            q, a = sess.run(None, {"x": xt})
            qs.append(q.reshape(xt.shape[1], HORIZON, len(TARGETS), len(QUANTILES)))
            attns.append(a[:, 0, :, 0].T)
        return np.concatenate(qs), np.concatenate(attns)

    return run


def spans_removed(recs: list[Recording], prior, seed: int, stride: int = 3):  # type: ignore[no-untyped-def]
    """Held-out windows with one span (1..12 steps; a feature or the whole sensor) hidden."""
    rng = np.random.default_rng(seed)
    zs, ms, m_in, sds, kinds = [], [], [], [], []
    for rec in recs:
        if len(rec) < IMPUTE_WINDOW:
            continue
        ends = np.arange(IMPUTE_WINDOW - 1, len(rec), stride)
        z, m = imputer_windows(rec, prior, ends)
        _, std = stats(rec, prior)
        for i in range(len(ends)):
            observed = np.flatnonzero(m[i].sum(axis=0) >= IMPUTE_WINDOW // 2)
            if len(observed) == 0:
                continue
            length = int(rng.integers(1, 13))
            start = (
                IMPUTE_WINDOW - length
                if rng.random() < 1 / 3
                else int(rng.integers(0, IMPUTE_WINDOW - length + 1))
            )
            keep = m[i].copy()
            if rng.random() < 0.5:
                keep[start : start + length, rng.choice(observed)] = False
            else:
                keep[start : start + length, :] = False
            if (m[i] & ~keep).sum() == 0:
                continue
            (
                zs.append(z[i]),
                ms.append(m[i]),
                m_in.append(keep),
                sds.append(std[ends[i]]),
                kinds.append(rec.kind),
            )
    return np.stack(zs), np.stack(ms), np.stack(m_in), np.stack(sds)


def eval_imputer(
    recs: list[Recording],
    prior,  # type: ignore[no-untyped-def]
    fill: ImputeFn,
    seed: int,
    stride: int = 3,
    extra: dict[str, ImputeFn] | None = None,
    windows: tuple[np.ndarray, ...] | None = None,
) -> dict:
    """RMSE on hidden cells: per feature in its unit, and aggregate in baseline-std units.

    ``fill`` is scored as "gain"; ``extra`` adds other imputers; ``windows``
    (z, m, m_in, sd) replaces the spans removed on purpose (e.g. real dropouts).
    """
    z, m, m_in, sd = windows if windows is not None else spans_removed(recs, prior, seed, stride)
    z_in = np.where(m_in, z, 0.0).astype(np.float32)
    preds = {
        "gain": fill(z_in, m_in),
        **{k: f(z_in, m_in) for k, f in (extra or {}).items()},
        "locf": locf(z_in, m_in),
        "linear": linear_interp(z_in, m_in),
    }
    hidden = m & ~m_in
    out: dict = {
        "windows": int(z.shape[0]),
        "cells": int(hidden.sum()),
        "per_feature": {},
        "aggregate_z": {},
    }
    for name, p in preds.items():
        err_z = (p - z) * hidden
        out["aggregate_z"][name] = float(np.sqrt((err_z**2).sum() / hidden.sum()))
        raw = err_z * sd[:, None, :]
        for k in range(N_FEATURES):
            cnt = hidden[:, :, k].sum()
            if cnt >= 20:
                out["per_feature"].setdefault(FEATURES[k], {"cells": int(cnt)})[name] = float(
                    np.sqrt((raw[:, :, k] ** 2).sum() / cnt)
                )
    return out


def real_dropouts(
    truth: list[Recording], patterns: list[Recording], prior, seed: int, stride: int = 37
):  # type: ignore[no-untyped-def]
    """Windows of ``truth`` whose hr/rmssd were all observed, given the real dropout pattern of
    a window of ``patterns`` (MMASH's strap): the cells its pattern misses are hidden.

    The truth is known (the Holter saw those beats) and the gaps are real ones.
    """
    rng = np.random.default_rng(seed)
    cols = [FEATURES.index("hr"), FEATURES.index("rmssd")]
    pats = []
    for rec in patterns:
        ends = np.arange(IMPUTE_WINDOW - 1, len(rec))
        _, m = imputer_windows(rec, prior, ends)
        pm = m[:, :, cols]
        gappy = (~pm).any(axis=(1, 2)) & pm.any(axis=1).all(axis=1)
        pats.append(pm[gappy])
    pat = np.concatenate(pats)
    zs, ms, m_in, sds = [], [], [], []
    for rec in truth:
        ends = np.arange(IMPUTE_WINDOW - 1, len(rec), stride)
        z, m = imputer_windows(rec, prior, ends)
        _, std = stats(rec, prior)
        full = m[:, :, cols].all(axis=(1, 2))
        for i in np.flatnonzero(full):
            keep = m[i].copy()
            keep[:, cols] &= pat[rng.integers(len(pat))]
            zs.append(z[i]), ms.append(m[i]), m_in.append(keep), sds.append(std[ends[i]])
    return np.stack(zs), np.stack(ms), np.stack(m_in), np.stack(sds)


def eval_forecaster(samples: dict[str, np.ndarray], forecast: ForecastFn) -> dict:
    """MAE per horizon step per target (target units) vs persistence, context mean, linear trend."""
    q, _ = forecast(samples["x"])
    # the model forecasts in the context's own normalised units
    q = q * samples["scale"][:, None, :, None] + samples["anchor"][:, None, :, None]
    tidx = np.array(TARGET_INDEX)
    mean, std = samples["mean"][:, None, tidx], samples["std"][:, None, tidx]
    med = q[..., QUANTILES.index(0.5)] * std + mean
    lo = q[..., 0] * std + mean
    hi = q[..., -1] * std + mean
    base = forecast_baselines(samples["ctx_raw_obs"][:, :, tidx])
    preds = {"model": med, **base}
    y, ym = samples["y_raw"], samples["y_mask"]
    # score a window for a target only if the target was observed in its context
    has_ctx = np.isfinite(samples["ctx_raw_obs"][:, :, tidx]).any(axis=1)  # (n,K)
    ym = ym & has_ctx[:, None, :]
    out: dict = {"windows": int(y.shape[0]), "targets": {}}
    agg_z: dict[str, list[float]] = {k: [] for k in preds}
    for j, name in enumerate(TARGETS):
        mask = ym[:, :, j]
        if mask.sum() < 50:
            continue
        entry: dict = {"windows": int(mask.any(axis=1).sum())}
        inside = ((y[:, :, j] >= lo[:, :, j]) & (y[:, :, j] <= hi[:, :, j]))[mask]
        entry["band_coverage"] = float(inside.mean())
        for pname, p in preds.items():
            err = np.abs(np.where(mask, p[:, :, j] - y[:, :, j], 0.0))
            per_h = err.sum(axis=0) / np.maximum(mask.sum(axis=0), 1)
            entry[pname] = {
                "mae_per_step": [round(float(v), 4) for v in per_h],
                "mae": float(err.sum() / mask.sum()),
            }
            agg_z[pname].append(float((err / std[:, :, j]).sum() / mask.sum()))
        out["targets"][name] = entry
    out["aggregate_mae_z"] = {k: float(np.mean(v)) for k, v in agg_z.items() if v}
    return out


def imputer_gate(fp32: ImputeFn, int8: ImputeFn, z: np.ndarray, m: np.ndarray) -> dict:
    """Max |int8 - fp32| over imputed cells (z units); passes at <= 0.05."""
    err = float(np.abs((fp32(z, m) - int8(z, m)) * ~m).max())
    return {"max_abs_err_z": err, "windows": int(z.shape[0]), "passed": err <= 0.05}


def forecaster_gate(fp32: ForecastFn, int8: ForecastFn, x: np.ndarray, scale: np.ndarray) -> dict:
    """Max |int8 - fp32| of the quantiles (z units) <= 0.05 and attention relative L2 <= 1 %.

    The models output in the window's normalised units; ``scale`` (n, K) maps
    a difference back to the person's standardised (z) units.
    """
    qa, att_a = fp32(x)
    qb, att_b = int8(x)
    err = float((np.abs(qa - qb) * scale[:, None, :, None]).max())
    rel = np.linalg.norm(att_a - att_b, axis=1) / np.linalg.norm(att_a, axis=1)
    return {
        "max_abs_err_z": err,
        "attention_rel_l2_max": float(rel.max()),
        "attention_rel_l2_mean": float(rel.mean()),
        "windows": int(x.shape[0]),
        "passed": bool(err <= 0.05 and rel.max() <= 0.01),
    }


__all__ = ["CONTEXT", "eval_forecaster", "eval_imputer", "forecaster_gate", "imputer_gate"]
