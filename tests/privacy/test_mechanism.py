"""The noise is what it claims: OpenDP Laplace at scale (upper - lower) / epsilon."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgetwin.privacy.mechanism import LaplaceMechanism, mechanism_for
from edgetwin.privacy.metrics import METRICS, bounds_for, summarize
from tests.sync.helpers import make_release

# OpenDP draws from the OS's cryptographic RNG and cannot be seeded, so the verdict
# rests on sample size: 4000 draws give the KS test power to see a 30 % scale error,
# and p > 1e-4 keeps a false alarm to one run in ten thousand.
N = 4000
ALPHA = 1e-4


def test_scale_follows_sensitivity_and_epsilon() -> None:
    mech = LaplaceMechanism(50.0, 110.0, 0.5)
    assert mech.sensitivity == 60.0
    assert mech.scale == pytest.approx(120.0)
    # OpenDP's own privacy map: moving the input across the whole domain costs epsilon.
    assert mech._measurement.map(60.0) <= 0.5


def test_releases_over_a_fixed_dataset_are_laplace_with_the_declared_scale() -> None:
    summary = 71.0
    releases = [make_release(summary, epsilon=0.5) for _ in range(N)]
    scale = releases[0].scale
    assert all(r.scale == scale and r.sensitivity == 60.0 for r in releases)
    noise = np.array([r.value - summary for r in releases])
    fit = stats.kstest(noise, stats.laplace(loc=0.0, scale=scale).cdf)
    assert fit.pvalue > ALPHA, fit
    # Power check: the same data clearly rejects a scale 30 % off, and Gaussian noise.
    assert stats.kstest(noise, stats.laplace(scale=scale * 1.3).cdf).pvalue < ALPHA
    assert stats.kstest(noise, stats.norm(scale=scale * np.sqrt(2)).cdf).pvalue < ALPHA


def test_noise_is_not_seeded_by_numpy() -> None:
    np.random.seed(1)
    a = make_release(70.0).value
    np.random.seed(1)
    b = make_release(70.0).value
    assert a != b


def test_summary_outside_the_domain_is_refused() -> None:
    mech = mechanism_for(50.0, 110.0, 0.5)
    with pytest.raises(ValueError, match="outside"):
        mech(120.0)


def test_summaries_clip_to_bounds() -> None:
    hr = METRICS["hr_mean"]
    b = bounds_for(hr, {}, "day")
    assert b == (50.0, 110.0)
    values = np.array([30.0, 60.0, 200.0])  # clipped to 50, 60, 110
    assert summarize(hr, values, b, step_s=5, active_motion_g=0.1) == pytest.approx(220 / 3)
    rest = METRICS["hr_resting"]
    rb = bounds_for(rest, {"hr_resting": [40.0, 90.0]}, "day")
    assert rb == (40.0, 90.0)
    assert summarize(rest, np.full(10, 20.0), rb, step_s=5, active_motion_g=0.1) == 40.0
    active = METRICS["active_minutes"]
    motion = np.array([0.0] * 100 + [0.5] * 24)  # 24 active 5-s steps = 2 minutes
    assert summarize(active, motion, bounds_for(active, {}, "day"), step_s=5,
                     active_motion_g=0.1) == pytest.approx(2.0)
    # An hour holds at most 60 active minutes: the bound (and sensitivity) follow.
    assert bounds_for(active, {}, "hour") == (0.0, 60.0)
