"""The evaluation behind models/metrics.md: baselines and the block bootstrap over time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _honest() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from modeling import honest
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return honest


def test_simple_baselines_match_their_definitions() -> None:
    honest = _honest()
    ctx = np.array([[1.0, np.nan, 3.0, 5.0, np.nan], [2.0, 2.0, 2.0, 2.0, 2.0]])
    b = honest.simple_baselines(ctx)
    np.testing.assert_allclose(b["persistence"], [5.0, 2.0])
    np.testing.assert_allclose(b["last3_mean"], [3.0, 2.0])
    np.testing.assert_allclose(b["context_mean"], [3.0, 2.0])
    # trend through (0,1), (2,3), (3,5): least squares slope 9/7, extrapolated from step 5 on
    slope = 9 / 7
    np.testing.assert_allclose(b["linear_trend"][0, :2], 3.0 + slope * (np.array([5, 6]) - 5 / 3))
    np.testing.assert_allclose(b["linear_trend"][1], 2.0)


def test_block_bootstrap_point_is_the_plain_mae_and_its_ci_widens_for_correlated_errors() -> None:
    """Errors that drift slowly over hours: resampling 30-min blocks gives the honest, wider CI."""
    honest = _honest()
    rng = np.random.default_rng(0)
    n, h = 3600, 12  # 3600 windows 30 s apart = 30 h, 60 windows per 30-min block
    ends = np.arange(n) * 6
    drift = np.repeat(rng.gamma(2.0, 1.0, n // 60), 60)[:n]  # a level per 30 min
    err_model = drift[:, None] * np.ones((n, h))
    err_base = 2 * drift[:, None] * np.ones((n, h))
    ym = rng.random((n, h)) > 0.1
    errs = {"model": err_model * ym, "base": err_base * ym}
    sums, cnt = honest.block_sums(ends, errs, ym)
    assert len(cnt) == n * 6 * 5 // 1800
    res = honest.bootstrap([(sums, cnt)], "model", np.random.default_rng(1))
    assert np.isclose(res["mae"]["model"][0], errs["model"].sum() / ym.sum())
    assert np.isclose(res["ratio_to"]["base"][0], 0.5)
    lo, hi = res["mae"]["model"][1:]
    # a naive bootstrap over windows treats 3600 windows as independent: far too narrow
    per_window = errs["model"].sum(1) / np.maximum(ym.sum(1), 1)
    naive = [per_window[rng.integers(0, n, n)].mean() for _ in range(300)]
    assert (hi - lo) > 3 * (np.percentile(naive, 97.5) - np.percentile(naive, 2.5))
    assert lo < res["mae"]["model"][0] < hi
