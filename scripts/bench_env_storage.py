"""Bytes the twin stores per day for each kind of surroundings sensor (issue 15's figure).

Each sensor gets its own fresh store and the simulated bedroom's readings
(``edgetwin/sources/sim/environment.py``) at the sensor's real rate, committed as the daemon
commits (every ``flush_interval_s`` = 1 s that brought data, so a 10 s BTHome sensor makes a
chunk every 10 s). The figure is the growth of the database (page count x page size after a
checkpoint) over the simulated span, scaled to a day. ``synchronous`` is turned off for the
bench only: it changes how long a commit waits for the disk, not what is written.

Usage: python scripts/bench_env_storage.py [--hours H]   (JSON on stdout)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgetwin.sources.sim.environment import (  # noqa: E402
    AIR_CHANNELS,
    AIR_UNITS,
    CLIMATE_CHANNELS,
    CLIMATE_UNITS,
    Room,
)
from edgetwin.sources.sim.person import SimulatedPerson  # noqa: E402
from edgetwin.sources.sim.schedule import Schedule  # noqa: E402
from edgetwin.store import KdfParams, Secret, TwinStore  # noqa: E402
from edgetwin.types import SampleBatch  # noqa: E402

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC: a night, a morning and a day at home/away


def _size(store: TwinStore) -> int:
    conn = store._conn  # a bench reading the file size
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * conn.execute("PRAGMA page_size").fetchone()[0])


def _sensor_rows(kind: str, room: Room, t: np.ndarray) -> tuple[tuple[str, ...],
                                                                   tuple[str, ...], np.ndarray]:
    if kind == "bthome_climate":  # temp, humidity, pressure, co2 every 10 s, battery, rssi
        v = room.climate(t)
        extra = np.column_stack([np.full(len(t), 87.0), -60.0 - np.round(5 * np.sin(t / 300))])
        return (*CLIMATE_CHANNELS, "battery", "rssi"), (*CLIMATE_UNITS, "%", "dBm"), \
            np.column_stack([v, extra])
    if kind == "pms5003_air":  # pm1_0, pm2_5, pm10 at 1 Hz
        return AIR_CHANNELS, AIR_UNITS, room.air(t)
    if kind == "sds011_air":  # pm2_5, pm10 once a minute (its working period)
        return AIR_CHANNELS[1:], AIR_UNITS[1:], room.air(t)[:, 1:]
    if kind == "gpsd_location":  # 1 fix/s snapped to a 1 km grid; place code and km from home
        away = room.away(t)
        lat = np.where(away, 52.5250, 52.5160)
        lon = np.where(away, 13.4100, 13.3880)
        place = np.where(away, 1.0, 0.0)
        dist = np.where(away, 1.77, 0.0)
        return ("lat", "lon", "place", "homedist"), ("deg", "deg", "1", "km"), \
            np.column_stack([lat, lon, place, dist])
    raise ValueError(kind)


PERIOD_S = {"bthome_climate": 10.0, "pms5003_air": 1.0, "sds011_air": 60.0,
            "gpsd_location": 1.0}
STREAM = {"bthome_climate": "room.climate", "pms5003_air": "pm.air", "sds011_air": "sds.air",
          "gpsd_location": "gps.location"}


def measure(kind: str, hours: float) -> dict[str, float]:
    person = SimulatedPerson.from_seed(7)
    room = Room(person, Schedule(person), T0)
    period = PERIOD_S[kind]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "twin"
        with TwinStore.create(home, Secret.passphrase("bench"), kdf=KdfParams.for_tests()) as st:
            st._conn.execute("PRAGMA synchronous=OFF")  # see the docstring
            st.commit()
            before = _size(st)
            t_all = T0 + np.arange(0.0, hours * 3600.0, period)
            commit_every = max(1, round(1.0 / period))  # one commit per second of data
            for i in range(0, len(t_all), commit_every):
                t = t_all[i:i + commit_every]
                channels, units, rows = _sensor_rows(kind, room, t)
                st.append_samples(SampleBatch.build(STREAM[kind], channels, t, rows, units))
                st.commit()
            after = _size(st)
            samples = len(t_all)
    per_day = (after - before) * 24.0 / hours
    return {"bytes_per_day": round(per_day), "mib_per_day": round(per_day / 2**20, 3),
            "samples_per_day": round(samples * 24.0 / hours),
            "bytes_per_sample": round((after - before) / samples, 1),
            "period_s": period, "channels": len(_sensor_rows(kind, room, t_all[:1])[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    args = ap.parse_args()
    out = {kind: measure(kind, args.hours) for kind in PERIOD_S}
    print(json.dumps({"simulated_hours": args.hours, "sensors": out}, indent=2))


if __name__ == "__main__":
    main()
