"""Schema v2's surroundings through the feature pipeline: room climate, particulate matter
and place, with their quality and masks; a room's temperature never becomes skin
temperature; ``lat``/``lon`` feed nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edgetwin.emulators.particulate import ParticulateEmulator
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import (
    ENV_FRESH_S,
    ENV_HOLD_S,
    INDEX,
    MEMORY_S,
    NAMES,
    QUALITY_THRESHOLD,
    SOURCES,
    fed_by_stream,
    input_kind,
)
from edgetwin.sources.particulate import ParticulateSource
from edgetwin.types import FeatureFrame, SampleBatch

T0 = 1_767_225_600.0
CLIMATE = ("temp", "humidity", "pressure", "co2", "battery", "rssi")


def _climate(t: np.ndarray, temp: float = 22.0, co2: float = 950.0,
             stream: str = "bedroom.climate") -> SampleBatch:
    """A batch as ``edgetwin.sources.bthome`` builds it (units from edgetwin.types: the room
    channels other than temp carry none)."""
    n = t.size
    rows = np.column_stack([np.full(n, temp), np.full(n, 48.0), np.full(n, 1012.5),
                            np.full(n, co2), np.full(n, 90.0), np.full(n, -64.0)])
    return SampleBatch.build(stream, CLIMATE, t, rows, meta={"profile": "bthome"})


def _run(*batches: SampleBatch, lateness: float = 3600.0) -> list[FeatureFrame]:
    pipe = FeaturePipeline(lateness_s=lateness)
    frames: list[FeatureFrame] = []
    for b in batches:
        frames += pipe.push(b)
    return frames + pipe.flush()


def _at(frames: list[FeatureFrame], t: float) -> FeatureFrame:
    return next(f for f in frames if f.t == t)


def test_room_climate_features_quality_and_masks() -> None:
    # a reading every 30 s for 5 minutes, then silence for 10 minutes (a battery died),
    # while a wristband keeps the timeline going
    wrist = SampleBatch.build("wrist.vitals", ("spo2",), T0 + np.arange(960.0),
                              np.full((960, 1), 97.0))
    frames = _run(_climate(T0 + 30.0 * np.arange(10)), _climate(np.array([T0 + 900.0])), wrist)
    f = _at(frames, T0 + 60.0)
    assert f.schema_version == 2 and f.values.shape == (len(NAMES),)
    for name, want in (("ambient_temp", 22.0), ("humidity", 48.0), ("pressure", 1012.5),
                       ("co2", 950.0)):
        assert f.values[INDEX[name]] == want and f.quality[INDEX[name]] == 1.0
    assert not f.imputed.any()
    # steps between readings hold the last one; quality stays 1 while it is fresh
    assert _at(frames, T0 + 290.0).values[INDEX["co2"]] == 950.0
    last = T0 + 270.0  # the last reading before the silence
    held = [x for x in frames if last + ENV_FRESH_S < x.t <= last + ENV_HOLD_S]
    q = np.array([x.quality[INDEX["co2"]] for x in held])
    assert np.all(np.diff(q) < 0) and q[0] < 1.0  # fading with age
    masked = [x for x in held if x.quality[INDEX["co2"]] < QUALITY_THRESHOLD]
    assert masked and masked[0].t - last > (ENV_FRESH_S + ENV_HOLD_S) / 2 - 5.0
    gone = [x for x in frames if last + ENV_HOLD_S < x.t < T0 + 900.0]
    assert gone and all(np.isnan(x.values[INDEX["co2"]]) for x in gone)
    assert all(x.quality[INDEX["co2"]] == 0.0 for x in gone)


def test_a_rooms_temperature_never_feeds_skin_temperature() -> None:
    room = _climate(T0 + 10.0 * np.arange(30), temp=30.0)  # a warm room, in the skin range
    alone = _run(room)
    assert all(np.isnan(f.values[INDEX["skin_temp"]]) for f in alone)
    assert all(f.quality[INDEX["skin_temp"]] == 0 for f in alone)
    assert all(f.values[INDEX["ambient_temp"]] == 30.0 for f in alone)
    wrist = SampleBatch.build("wrist.vitals", ("temp",), T0 + np.arange(300.0),
                              np.full((300, 1), 33.25))
    both = _run(room, wrist)
    assert all(f.values[INDEX["skin_temp"]] == 33.25 for f in both)
    assert all(f.values[INDEX["ambient_temp"]] == 30.0 for f in both)
    # provenance agrees: forgetting the room touches the room only, the wrist the skin only
    assert "skin_temp" not in fed_by_stream("bedroom.climate", set(CLIMATE))
    assert fed_by_stream("wrist.vitals", {"temp"}) == ("skin_temp",)
    assert input_kind("bedroom.climate", "temp") == "ambient"
    assert input_kind("wrist.vitals", "temp") == "temp"


def test_place_is_the_steps_mode_and_coordinates_feed_nothing() -> None:
    t = T0 + np.arange(0.0, 20.0)  # 1 Hz fixes over four 5 s steps
    place = np.array([0, 0, 2, 2, 2,  1, 1, 0, 0, 2,  2, 2, 2, 2, 2,  0, 0, 0, 1, 1], float)
    home = np.where(place == 0, 0.05, 3.0)
    lat, lon = np.full(20, 52.5200066), np.full(20, 13.4049540)
    loc = SampleBatch.build("phone.location", ("lat", "lon", "place", "homedist"), t,
                            np.column_stack([lat, lon, place, home]))
    pipe = FeaturePipeline(lateness_s=60.0)
    frames = pipe.push(loc) + pipe.flush()
    by_t = {f.t: f for f in frames}
    # step 2 holds 1, 1, 0, 0, 2: a tie of 1 and 0 goes to the latest, 0
    assert [by_t[T0 + 5 * (k + 1)].values[INDEX["place"]] for k in range(4)] == [2.0, 0.0, 2.0,
                                                                               0.0]
    assert by_t[T0 + 5.0].values[INDEX["home_distance"]] == pytest.approx((0.1 + 9.0) / 5)
    assert {"lat", "lon"} <= pipe.ignored_channels
    for f in frames:  # no feature anywhere holds a coordinate
        assert not np.any(np.isclose(f.values, 52.5200066)) and not np.any(
            np.isclose(f.values, 13.404954))
    assert not any(k in s for s in SOURCES.values() for k in ("lat", "lon"))


def test_a_tie_in_place_goes_to_the_latest_value() -> None:
    t = T0 + np.arange(0.0, 5.0)
    loc = SampleBatch.build("phone.location", ("place",), t, np.array([[1], [1], [0], [0], [9]]))
    frames = _run(loc, lateness=60.0)
    assert frames[0].values[INDEX["place"]] == 0.0  # 9 is no place code: ignored


def test_memory_covers_the_hold() -> None:
    for name in ("ambient_temp", "co2", "pm2_5", "place"):
        assert MEMORY_S[name] == ENV_HOLD_S


@pytest.mark.parametrize("sensor", ["pms5003", "sps30"])
async def test_particulate_stream_from_the_real_source(sensor: str, tmp_path: Path) -> None:
    """The real ParticulateSource over an emulated sensor on a pty: pm2_5 and pm10 reach the
    features at the values sent; PM1.0, PM4.0, counts and sizes feed nothing."""
    emu = ParticulateEmulator(sensor, link_dir=tmp_path, interval_s=0.05)
    emu.start()
    src = ParticulateSource("room", emu.path, sensor, working_period_min=0, poll_s=0.05)
    batches: list[SampleBatch] = []
    try:
        await src.connect()

        async def collect() -> None:
            async for b in src.stream():
                batches.append(b)
                if sum(len(x) for x in batches) >= 20:
                    return

        await asyncio.wait_for(collect(), 30.0)
    finally:
        await src.close()
        emu.stop()
    assert {b.stream for b in batches} == {"room.air"}
    pipe = FeaturePipeline(step_s=5.0, lateness_s=3600.0)
    frames = [f for b in batches for f in pipe.push(b)] + pipe.flush()
    rows = np.concatenate([b.values for b in batches])
    ts = np.concatenate([b.t for b in batches])
    chans = batches[0].channels
    for f in frames:
        step = (ts >= f.t - 5.0) & (ts < f.t)
        if not step.any():
            continue
        for name in ("pm2_5", "pm10"):
            want = np.nanmean(rows[step, chans.index(name)])
            assert f.values[INDEX[name]] == pytest.approx(want)
            assert f.quality[INDEX[name]] == 1.0
    ignored = set(pipe.ignored_channels)
    assert "pm1_0" in ignored and "pm2_5" not in ignored and "pm10" not in ignored
    if sensor == "sps30":
        assert {"pm4_0", "nc0_5", "typical_size"} <= ignored
