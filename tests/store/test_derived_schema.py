"""Feature schema v2 in the store: frames stored at v1 still read (as v2), forgets shred
them by their own layout, a room's temp never counts as skin temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import DataCorrupt
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import ENVIRONMENT, INDEX, LAYOUTS, NAMES, SCHEMA_VERSION
from edgetwin.sources.simulator import SimulatedPerson, simulate
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, SampleBatch

T0 = 1_767_225_600.0  # 2026-01-01 00:00Z
V1 = LAYOUTS[1]


def _v1_frames() -> list[FeatureFrame]:
    """Frames as the v1 code wrote them: 13 body features, schema_version 1, from a real
    pipeline run over simulated body sensors (the first 13 columns of v2 are v1's)."""
    pipe = FeaturePipeline()
    frames: list[FeatureFrame] = []
    for b in simulate(SimulatedPerson.from_seed(4), T0, 120.0, 5.0,
                      modalities=("rr", "vitals", "accel", "eeg"), dropouts=False):
        frames += pipe.push(b)
    frames += pipe.flush()
    cols = [INDEX[n] for n in V1]
    return [FeatureFrame(f.t, f.values[cols].copy(), f.quality[cols].copy(),
                         f.imputed[cols].copy(), 1) for f in frames]


def _room(stream: str, t0: float, n: int, temp: float = 19.0) -> SampleBatch:
    t = t0 + 10.0 * np.arange(n)
    v = np.column_stack([np.full(n, temp), np.full(n, 55.0), np.full(n, 1001.0),
                         np.full(n, 1500.0)])
    return SampleBatch.build(stream, ("temp", "humidity", "pressure", "co2"), t, v)


def test_v1_frames_read_as_v2_after_the_upgrade(twin_home: Path, secret: Secret) -> None:
    old = _v1_frames()
    assert old and all(f.values.shape == (13,) for f in old)
    with TwinStore.create(twin_home, secret) as store:  # the twin as v1 left it
        store.append_frames(old)
        store.commit()
    pipe = FeaturePipeline()
    t_new = old[-1].t + 5.0
    new = pipe.push(_room("bedroom.climate", t_new, 30)) + pipe.flush()
    with TwinStore.open(twin_home, secret) as store:  # this code, reading the old twin
        store.append_frames(new)
        store.commit()
        got = list(store.read_frames())
        blocks = list(store.iter_frame_columns())
    assert len(got) == len(old) + len(new)
    assert all(f.schema_version == SCHEMA_VERSION and f.values.shape == (len(NAMES),)
               for f in got)
    for stored, read in zip(old, got, strict=False):
        assert read.t == stored.t
        np.testing.assert_array_equal(read.values[:13], stored.values)
        np.testing.assert_array_equal(read.quality[:13], stored.quality)
        env = [INDEX[n] for n in ENVIRONMENT]
        assert np.isnan(read.values[env]).all() and (read.quality[env] == 0).all()
        assert not read.imputed[env].any()
    assert np.isfinite(got[0].values[INDEX["hr"]])  # the body survived
    assert got[-1].values[INDEX["co2"]] == 1500.0  # and new frames carry the room
    assert {b.values.shape[1] for b in blocks} == {len(NAMES)}
    t_blocks = np.concatenate([b.t for b in blocks])
    np.testing.assert_array_equal(np.sort(t_blocks), [f.t for f in got])


def test_a_forget_shreds_v1_frames_by_their_own_layout(twin_home: Path, secret: Secret) -> None:
    old = _v1_frames()
    with TwinStore.create(twin_home, secret) as store:
        # a wrist's skin temperature stream over the frames' span
        span = old[-1].t - old[0].t
        store.append_samples(SampleBatch.build(
            "wrist.temp", ("temp",), old[0].t - 5 + np.arange(int(span) + 10),
            np.full((int(span) + 10, 1), 33.0)))
        store.append_frames(old)
        store.commit()
    with TwinStore.open(twin_home, secret) as store:
        store.forget(stream="wrist.temp")
        got = list(store.read_frames())
    assert got and all(np.isnan(f.values[INDEX["skin_temp"]]) for f in got)
    # only what a temp channel could feed went: the EEG and heart features stayed
    assert all(np.isfinite(f.values[INDEX["eeg_alpha"]]) for f in got[2:])
    assert sum(np.isfinite(f.values[INDEX["hr"]]) for f in got) >= len(got) - 3


def test_forgetting_a_room_leaves_skin_temperature_and_the_reverse(
    twin_home: Path, secret: Secret
) -> None:
    pipe = FeaturePipeline(lateness_s=400.0)  # both streams land before any step is emitted
    n = 30
    wrist = SampleBatch.build("wrist.vitals", ("temp",), T0 + np.arange(10 * n) * 1.0,
                              np.full((10 * n, 1), 33.5))
    frames = pipe.push(wrist) + pipe.push(_room("bedroom.climate", T0, n)) + pipe.flush()
    usable = [f for f in frames if np.isfinite(f.values[INDEX["skin_temp"]])]
    assert usable and all(f.values[INDEX["skin_temp"]] == 33.5 for f in usable)
    assert all(f.values[INDEX["ambient_temp"]] == 19.0 for f in usable[1:])
    with TwinStore.create(twin_home, secret) as store:
        store.append_samples(wrist)
        store.append_samples(_room("bedroom.climate", T0, n))
        store.append_frames(frames)
        store.commit()
        store.forget(stream="bedroom.climate")
        got = list(store.read_frames())
    assert all(np.isnan(f.values[INDEX["ambient_temp"]]) for f in got)
    assert all(np.isnan(f.values[INDEX["co2"]]) for f in got)
    kept = [f for f in got if np.isfinite(f.values[INDEX["skin_temp"]])]
    assert len(kept) == len(usable)  # skin temperature was not the room's to take


def test_frames_of_a_newer_schema_are_refused_precisely(twin_home: Path, secret: Secret) -> None:
    width = len(NAMES) + 2
    newer = FeatureFrame(T0, np.ones(width), np.ones(width), np.zeros(width, bool),
                         SCHEMA_VERSION + 1)
    with TwinStore.create(twin_home, secret) as store:
        store.append_frames([newer])
        store.commit()
        with pytest.raises(DataCorrupt, match=f"schema v{SCHEMA_VERSION + 1} is newer") as info:
            list(store.read_frames())
        assert "edgetwin that wrote it" in (info.value.hint or "")
        assert list(store.read_frames(on_corrupt="skip")) == []
        assert list(store.iter_frame_columns(on_corrupt="skip")) == []
