"""The running baseline: Welford with a prior, equal to the vectorised training version."""

from __future__ import annotations

import numpy as np
import pytest

from edgetwin.errors import DataCorrupt
from edgetwin.inference.baseline import Prior, RunningBaseline, running_stats


def _prior(k: int = 3) -> Prior:
    return Prior(
        mean=np.array([70.0, 40.0, 97.0])[:k],
        std=np.array([12.0, 20.0, 1.5])[:k],
        count=20.0,
        min_std=np.array([1.0, 2.0, 0.2])[:k],
    )


def test_incremental_equals_vectorised_training_stats() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal([60.0, 55.0, 98.0], [5.0, 15.0, 0.5], size=(500, 3))
    m = rng.random((500, 3)) > 0.3
    m[:100, 2] = False  # a feature that starts late
    base = RunningBaseline(_prior())
    means, stds = running_stats(v, m, _prior())
    for i in range(len(v)):
        base.update(v[i], m[i])
        mean, std = base.stats()
        np.testing.assert_allclose(mean, means[i], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(std, stds[i], rtol=1e-7, atol=1e-9)


def test_prior_dominates_early_and_the_person_later() -> None:
    base = RunningBaseline(_prior())
    mean0, std0 = base.stats()
    np.testing.assert_allclose(mean0, [70.0, 40.0, 97.0])
    np.testing.assert_allclose(std0, [12.0, 20.0, 1.5])
    for _ in range(2000):
        base.update(np.array([55.0, 80.0, np.nan]), np.array([True, True, False]))
    mean, std = base.stats()
    assert abs(mean[0] - 55.0) < 0.3 and abs(mean[1] - 80.0) < 0.5
    assert mean[2] == 97.0  # never observed: the prior
    # a constant signal's spread shrinks to the floor, never to zero
    assert std[0] < 3.0 and std[0] >= 1.0


def test_std_floor() -> None:
    p = Prior(mean=np.array([0.0]), std=np.array([1.0]), count=1.0, min_std=np.array([0.5]))
    base = RunningBaseline(p)
    for _ in range(10000):
        base.update(np.array([0.0]), np.array([True]))
    assert base.stats()[1][0] == 0.5


def test_state_roundtrip_and_bad_state() -> None:
    base = RunningBaseline(_prior())
    rng = np.random.default_rng(0)
    for _ in range(50):
        base.update(rng.normal(size=3), np.array([True, False, True]))
    other = RunningBaseline(_prior())
    other.restore(base.state())
    np.testing.assert_array_equal(other.stats()[0], base.stats()[0])
    np.testing.assert_array_equal(other.counts, base.counts)
    with pytest.raises(DataCorrupt, match="3 finite numbers"):
        other.restore({"n": [1, 2], "mean": [0, 0], "m2": [0, 0]})
    with pytest.raises(DataCorrupt, match="malformed"):
        other.restore({"n": [1, 2, 3]})
    with pytest.raises(DataCorrupt, match="negative"):
        other.restore({"n": [1, -2, 3], "mean": [0, 0, 0], "m2": [0, 0, 0]})


def test_prior_from_json_rejects_bad_shapes() -> None:
    good = _prior().to_json()
    assert Prior.from_json(good, 3).count == 20.0
    with pytest.raises(DataCorrupt, match=r"baseline_prior\.std"):
        Prior.from_json({**good, "std": [1.0, 2.0]}, 3)
    with pytest.raises(DataCorrupt, match="non-positive"):
        Prior.from_json({**good, "count": 0}, 3)
    with pytest.raises(DataCorrupt, match="malformed"):
        Prior.from_json({"mean": [1, 2, 3]}, 3)
