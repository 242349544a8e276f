"""Simulated people stored in a real encrypted twin: frames, an RR stream, stored forecasts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.types import FeatureFrame, Prediction, SampleBatch

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STEP = 5.0
H = 12
CONTEXT = 60
STREAM = "strap.rr"


def frame(t: float, hr: float, *, quality: float = 1.0, imputed: bool = False) -> FeatureFrame:
    v = np.full(len(NAMES), np.nan)
    q = np.zeros(len(NAMES))
    imp = np.zeros(len(NAMES), bool)
    v[INDEX["hr"]] = hr
    q[INDEX["hr"]] = quality
    imp[INDEX["hr"]] = imputed
    return FeatureFrame(t, v, q, imp, SCHEMA_VERSION)


def pred(t: float, horizon: Any, *, width: float = 4.0, **kw: Any) -> Prediction:
    h = [float(x) for x in horizon]
    return Prediction(
        t=t,
        target="hr",
        step_s=STEP,
        horizon=tuple(h),
        band=tuple((x - width, x + width) for x in h),
        attention=(1 / CONTEXT,) * CONTEXT,
        imputed=(),
        model="lstm-attn/int8/test",
        **kw,
    )


def store_person(
    store: Any,
    hr: np.ndarray,
    forecast: Callable[[int, np.ndarray], np.ndarray],
    *,
    t0: float = T0,
) -> None:
    """Frames of ``hr`` on the 5 s grid, an RR stream over the same time, and a stored
    forecast ``forecast(k, hr)`` (H values) after every frame from the 12th on."""
    n = hr.size
    t = t0 + STEP * np.arange(n)
    beats = np.arange(t[0], t[-1], 0.8)
    store.append_samples(SampleBatch.build(STREAM, ["rr"], beats, np.full((beats.size, 1), 800.0)))
    store.append_frames([frame(float(t[k]), float(hr[k])) for k in range(n)])
    store.append_predictions([pred(float(t[k]), forecast(k, hr)) for k in range(12, n)])
    store.commit()


LEVELS = {"hr": 70.0, "rmssd": 40.0, "spo2": 97.0, "skin_temp": 33.0, "eda_tonic": 2.0}


def store_as_daemon(store: Any, hours: float, *, t0: float = T0, seed: int = 0) -> float:
    """What the daemon stores: a frame with all five targets every 5 s and a forecast of each
    after it, committed step by step (small chunks, as the writer's flushes make them).
    Returns the newest forecast's time."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / STEP)
    walk = {k: v + np.cumsum(rng.normal(0, 0.1, n)) for k, v in LEVELS.items()}
    t = t0
    for i in range(n):
        t = t0 + i * STEP
        v = np.full(len(NAMES), np.nan)
        q = np.zeros(len(NAMES))
        for k in LEVELS:
            v[INDEX[k]], q[INDEX[k]] = walk[k][i], 1.0
        store.append_frames([FeatureFrame(t, v, q, np.zeros(len(NAMES), bool), SCHEMA_VERSION)])
        if i >= 12:
            store.append_predictions(
                [replace(pred(t, walk[k][i] + rng.normal(0, 0.5, H)), target=k) for k in LEVELS]
            )
        store.commit()
    return t


def rhythm(n: int, seed: int = 0) -> np.ndarray:
    """A person with a strong rhythm of their own: a 90 s oscillation of 8 bpm."""
    rng = np.random.default_rng(seed)
    t = STEP * np.arange(n)
    return np.asarray(70.0 + 8.0 * np.sin(2 * np.pi * t / 90.0) + rng.normal(0, 0.5, n))


def ar1(n: int, phi: float = 0.9, seed: int = 0) -> np.ndarray:
    """A person without a pattern beyond what a good model knows: AR(1) around 70 bpm."""
    rng = np.random.default_rng(seed)
    y = np.empty(n)
    y[0] = 70.0
    for k in range(1, n):
        y[k] = 70.0 + phi * (y[k - 1] - 70.0) + rng.normal(0, 1.0)
    return y


def carry(k: int, hr: np.ndarray) -> np.ndarray:
    """A global model that only carries the last value (knows no rhythm)."""
    return np.full(H, hr[k])


def ar1_optimal(phi: float = 0.9) -> Callable[[int, np.ndarray], np.ndarray]:
    """The best forecast of an AR(1): nothing personal left to learn."""
    powers = phi ** np.arange(1, H + 1)
    return lambda k, hr: 70.0 + powers * (hr[k] - 70.0)


class FakeEngine:
    """The engine's public face, replaying given forecasts (to test what the twin serves)."""

    targets = ("hr",)
    step_s = STEP
    context_len = CONTEXT
    horizon = H
    model_id = "lstm-attn/int8/test"

    def __init__(self) -> None:
        self.queue: list[Prediction] = []

    def state(self) -> dict[str, Any]:
        return {"context": {"t": [], "filled": [], "mask": []}}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def reset(self) -> None:
        self.queue = []

    def observe_many(self, frames: Any) -> list[tuple[FeatureFrame, list[Prediction]]]:
        out = []
        for f in frames:
            preds = [p for p in self.queue if p.t == f.t]
            out.append((f, preds))
        return out
