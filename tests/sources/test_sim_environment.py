"""The simulated bedroom: the real sources' channel names, plausible ranges, and the
home/away schedule's effect (CO2 and humidity build up in the closed bedroom overnight and
fall in the empty flat; cooking raises PM2.5 only when someone is home)."""

from __future__ import annotations

from functools import cache

import numpy as np

from edgetwin.features.schema import INDEX
from edgetwin.sources import particulate
from edgetwin.sources.bthome import CHANNEL_ORDER
from edgetwin.sources.sim.environment import ASLEEP, AWAY, HOME, Room
from edgetwin.sources.sim.schedule import Schedule
from edgetwin.sources.simulator import DEFAULT_MODALITIES, SimulatedPerson, simulate
from edgetwin.types import SampleBatch

T0 = 1_767_225_600.0  # Thursday 2026-01-01 00:00Z
DAYS = 4


@cache
def _days(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(t, climate rows), (t, air rows) of ``DAYS`` days of the person's bedroom."""
    batches = list(simulate(SimulatedPerson.from_seed(seed), T0, DAYS * 86400.0, 600.0,
                            modalities=("climate", "air"), dropouts=False))
    out = []
    for stream in ("sim.climate", "sim.air"):
        mine = [b for b in batches if b.stream == stream]
        out.append((np.concatenate([b.t for b in mine]),
                    np.concatenate([b.values for b in mine])))
    return out[0], out[1]


def test_streams_carry_the_real_sources_channels_and_units() -> None:
    batches = list(simulate(SimulatedPerson.from_seed(1), T0, 60.0, 10.0))
    assert {"climate", "air"} <= set(DEFAULT_MODALITIES)  # the demo shows them
    by = {b.stream: b for b in batches}
    climate: SampleBatch = by["sim.climate"]
    air: SampleBatch = by["sim.air"]
    assert climate.channels == CHANNEL_ORDER  # as a BTHome CO2 monitor's advert
    assert climate.units == ("degC", "%", "hPa", "ppm")
    pms_channels, pms_units = particulate.channels_of("pms5003")
    assert air.channels == pms_channels[:3] and air.units == pms_units[:3]
    assert sum(len(b) for b in batches if b.stream == "sim.air") == 60  # 1 Hz
    assert sum(len(b) for b in batches if b.stream == "sim.climate") == 6  # every 10 s


def test_ranges_are_plausible_for_a_lived_in_bedroom() -> None:
    for seed in (2, 5, 9):
        (_, c), (_, a) = _days(seed)
        temp, rh, p, co2 = c.T
        assert temp.min() > 15.0 and temp.max() < 28.0
        assert rh.min() > 25.0 and rh.max() < 80.0
        assert p.min() > 940.0 and p.max() < 1040.0 and np.ptp(p) > 3.0  # weather moves it
        assert co2.min() >= 380.0 and co2.max() < 3500.0
        pm1, pm25, pm10 = a.T
        assert (a >= 0).all() and (a == np.round(a)).all()  # µg/m³ integers, as a PMS5003
        assert (pm1 <= pm25 + 1).all() and (pm25 <= pm10).all()
        assert 1.0 < np.median(pm25) < 25.0 and pm25.max() > 35.0  # episodes over a calm base


def test_home_away_and_sleep_change_the_room() -> None:
    person = SimulatedPerson.from_seed(2)
    room = Room(person, Schedule(person), T0)
    (tc, c), (ta, a) = _days(2)
    occ = room.occupancy(tc)
    assert {AWAY, HOME, ASLEEP} <= set(np.unique(occ).tolist())
    assert 0.1 < (occ == AWAY).mean() < 0.5  # days out, never the whole time
    asleep = occ == ASLEEP
    assert not (room.away(tc) & (room.schedule.sleep_level(tc) >= 0.5)).any()
    co2, rh, temp = c[:, 3], c[:, 1], c[:, 0]
    # the closed bedroom overnight: CO2 and humidity well above the empty flat's
    assert np.median(co2[asleep]) > np.median(co2[occ == HOME]) + 300
    assert np.median(co2[occ == AWAY]) < np.median(co2[occ == HOME])
    assert np.median(rh[asleep]) > np.median(rh[occ == AWAY]) + 5
    # CO2 and warmth rise through each night: the last sleeping hour beats the first
    runs = np.flatnonzero(np.diff(asleep.astype(int)))
    nights = [(runs[i] + 1, runs[i + 1]) for i in range(len(runs) - 1) if asleep[runs[i] + 1]]
    assert len(nights) >= DAYS - 2
    for s, e in nights:
        first, last = slice(s, s + 360), slice(e - 360, e)  # hours at one reading per 10 s
        assert co2[last].mean() > co2[first].mean() + 200
        assert temp[last].mean() > temp[first].mean()
    # the empty flat cools toward the thermostat's setback
    assert np.median(temp[occ == AWAY]) < np.median(temp[occ == HOME])
    # cooking happens only at home: PM2.5 peaks never while away
    occ_air = room.occupancy(ta)
    pm25 = a[:, 1]
    assert np.percentile(pm25[occ_air == HOME], 99) > 2 * np.percentile(pm25[occ_air == AWAY], 99)


def test_same_readings_whatever_the_chunking() -> None:
    person = SimulatedPerson.from_seed(3)
    start = T0 + 12_345.6
    runs = []
    for chunk in (1.0, 7.0, 300.0):
        got = list(simulate(person, start, 900.0, chunk, modalities=("climate", "air")))
        runs.append({s: np.concatenate([b.values for b in got if b.stream == s])
                     for s in ("sim.climate", "sim.air")})
    for s in ("sim.climate", "sim.air"):
        np.testing.assert_array_equal(runs[0][s], runs[1][s])
        np.testing.assert_array_equal(runs[0][s], runs[2][s])


def test_the_pipeline_reads_the_simulated_room() -> None:
    from edgetwin.features.pipeline import FeaturePipeline

    pipe = FeaturePipeline()
    frames = []
    for b in simulate(SimulatedPerson.from_seed(4), T0, 120.0, 5.0, dropouts=False):
        frames += pipe.push(b)
    frames += pipe.flush()
    last = frames[-1]
    for name in ("ambient_temp", "humidity", "pressure", "co2", "pm2_5", "pm10"):
        assert np.isfinite(last.values[INDEX[name]]) and last.quality[INDEX[name]] == 1.0
    assert 25.0 < last.values[INDEX["skin_temp"]] < 40.0  # the wrist's, not the room's
    assert abs(last.values[INDEX["skin_temp"]] - last.values[INDEX["ambient_temp"]]) > 5.0
