"""Fixtures: the shipped models, and feature frames from the real simulator + FeaturePipeline."""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from edgetwin.inference.registry import default_models_dir
from edgetwin.types import FeatureFrame

MODELS = default_models_dir()


@cache
def _sim_frames(seed: int, minutes: float) -> tuple[FeatureFrame, ...]:
    from edgetwin.features.pipeline import FeaturePipeline
    from edgetwin.sources.simulator import SimulatedPerson, simulate

    pipe = FeaturePipeline(5.0)
    frames: list[FeatureFrame] = []
    person = SimulatedPerson.from_seed(seed)
    for batch in simulate(
        person,
        1_700_000_000.0,
        minutes * 60.0,
        chunk_s=10.0,
        modalities=("rr", "vitals", "accel"),
        dropouts=False,
    ):
        frames.extend(pipe.push(batch))
    frames.extend(pipe.flush())
    return tuple(frames)


@pytest.fixture
def sim_frames():  # type: ignore[no-untyped-def]
    """``sim_frames(seed, minutes)``: wristband frames of a simulated person, without dropouts."""
    return lambda seed=1, minutes=10.0: list(_sim_frames(seed, minutes))


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped models directory, safe to tamper with."""
    dst = tmp_path / "models"
    shutil.copytree(MODELS, dst)
    return dst


def blank(frame: FeatureFrame, idx: list[int]) -> FeatureFrame:
    """The frame with features ``idx`` missing (NaN), as a sensor dropout leaves it."""
    v = frame.values.copy()
    v[idx] = np.nan
    return replace(frame, values=v)
