"""Helpers shared by the store tests."""

from __future__ import annotations

import numpy as np

from edgetwin.store import TwinStore
from edgetwin.types import SampleBatch

PASS = "correct horse battery staple"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20Z


def batch(stream: str, t0: float, n: int, channels: tuple[str, ...] = ("hr",), rate: float = 1.0,
          seed: int = 0) -> SampleBatch:
    """A deterministic batch of ``n`` rows starting at ``t0``."""
    rng = np.random.default_rng(seed)
    t = t0 + np.arange(n) / rate
    values = rng.normal(size=(n, len(channels)))
    return SampleBatch.build(stream, list(channels), t, values)


def all_samples(store: TwinStore, stream: str, t0: float | None = None,
                t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    parts = list(store.read_samples(stream, t0, t1))
    if not parts:
        return np.zeros(0), np.zeros((0, 0))
    return np.concatenate([p.t for p in parts]), np.concatenate([p.values for p in parts])
