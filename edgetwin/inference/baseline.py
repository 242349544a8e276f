"""The person's own running baseline: per-feature mean and spread, with a prior.

Models see features in standardised units, ``z = (x - mean) / std``, where
``mean`` and ``std`` describe *this person so far*: a Welford accumulator over
every observed (not imputed) value, merged with a prior of ``prior_count``
pseudo-observations drawn from the training population. Early on the prior
dominates; after a few hundred steps the person does. Training runs the same
arithmetic (:func:`running_stats`) over each recording, so the models are fed
exactly what they were trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetwin.errors import DataCorrupt
from edgetwin.types import FloatArray


@dataclass(frozen=True, slots=True)
class Prior:
    """Population mean/std per feature, its weight, and a floor on each std."""

    mean: FloatArray
    std: FloatArray
    count: float
    min_std: FloatArray

    @classmethod
    def from_json(cls, obj: dict[str, Any], n_features: int) -> Prior:
        """Read the manifest's ``baseline_prior`` object; DataCorrupt when it does not fit."""
        try:
            mean = np.asarray(obj["mean"], dtype=np.float64)
            std = np.asarray(obj["std"], dtype=np.float64)
            min_std = np.asarray(obj["min_std"], dtype=np.float64)
            count = float(obj["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataCorrupt(
                f"model manifest: baseline_prior is malformed ({exc})",
                hint="re-install the models directory (scripts/train rebuilds it)",
            ) from exc
        for name, arr in (("mean", mean), ("std", std), ("min_std", min_std)):
            if arr.shape != (n_features,) or not np.all(np.isfinite(arr)):
                raise DataCorrupt(
                    f"model manifest: baseline_prior.{name} must be {n_features} finite numbers",
                    hint="re-install the models directory (scripts/train rebuilds it)",
                )
        if not (count > 0 and math.isfinite(count)) or np.any(std <= 0) or np.any(min_std <= 0):
            raise DataCorrupt("model manifest: baseline_prior has a non-positive count or std")
        return cls(mean, std, count, min_std)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "count": self.count,
            "min_std": [float(x) for x in self.min_std],
        }


class RunningBaseline:
    """Welford mean/variance per feature over observed values, merged with a prior."""

    __slots__ = ("_m2", "_mean", "_n", "prior")

    def __init__(self, prior: Prior) -> None:
        self.prior = prior
        k = prior.mean.shape[0]
        self._n = np.zeros(k, dtype=np.float64)
        self._mean = np.zeros(k, dtype=np.float64)
        self._m2 = np.zeros(k, dtype=np.float64)

    @property
    def counts(self) -> FloatArray:
        """Observed values seen per feature (the prior not included)."""
        return self._n.copy()

    def update(self, values: FloatArray, mask: np.ndarray[Any, np.dtype[np.bool_]]) -> None:
        """Add one step: ``values[k]`` counts only where ``mask[k]`` is true."""
        if not mask.any():
            return
        x = np.where(mask, values, 0.0)
        n_new = self._n + mask
        delta = x - self._mean
        mean_new = np.where(mask, self._mean + delta / np.maximum(n_new, 1.0), self._mean)
        self._m2 = np.where(mask, self._m2 + delta * (x - mean_new), self._m2)
        self._mean = mean_new
        self._n = n_new

    def stats(self) -> tuple[FloatArray, FloatArray]:
        """The merged (mean, std) per feature, std floored at the prior's ``min_std``."""
        p = self.prior
        n0, n = p.count, self._n
        total = n0 + n
        delta = self._mean - p.mean
        mean = p.mean + delta * n / total
        m2 = n0 * p.std**2 + self._m2 + delta**2 * n0 * n / total
        std = np.maximum(np.sqrt(np.maximum(m2 / total, 0.0)), p.min_std)
        return mean, std

    def state(self) -> dict[str, Any]:
        """JSON-serialisable accumulator state."""
        return {
            "n": [float(x) for x in self._n],
            "mean": [float(x) for x in self._mean],
            "m2": [float(x) for x in self._m2],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`state` output; DataCorrupt when it does not fit this schema."""
        k = self.prior.mean.shape[0]
        try:
            arrs = [np.asarray(state[key], dtype=np.float64) for key in ("n", "mean", "m2")]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataCorrupt(f"twin state: baseline is malformed ({exc})") from exc
        if any(a.shape != (k,) or not np.all(np.isfinite(a)) for a in arrs):
            raise DataCorrupt(f"twin state: baseline must hold {k} finite numbers per field")
        if np.any(arrs[0] < 0) or np.any(arrs[2] < 0):
            raise DataCorrupt("twin state: baseline has a negative count or sum of squares")
        self._n, self._mean, self._m2 = arrs


def running_stats(
    values: FloatArray, mask: np.ndarray[Any, np.dtype[np.bool_]], prior: Prior
) -> tuple[FloatArray, FloatArray]:
    """Vectorised :class:`RunningBaseline`: (mean, std) after each of ``len(values)`` steps.

    ``values`` and ``mask`` are ``(steps, features)``; row ``i`` of the result
    is what the baseline reports after updating with steps ``0..i``.
    """
    x = np.where(mask, values, 0.0)
    n = np.cumsum(mask, axis=0, dtype=np.float64)
    s1 = np.cumsum(x, axis=0)
    s2 = np.cumsum(x * x, axis=0)
    n0 = prior.count
    total = n0 + n
    mean = (n0 * prior.mean + s1) / total
    ex2 = (n0 * (prior.std**2 + prior.mean**2) + s2) / total
    std = np.maximum(np.sqrt(np.maximum(ex2 - mean**2, 0.0)), prior.min_std)
    return mean, std
