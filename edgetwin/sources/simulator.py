"""A seeded, multi-modal physiology simulator: a generator and a real-time ``Source``.

One simulated person (``SimulatedPerson.from_seed``) lives through a day
(``sim.schedule``: circadian rhythm, sleep, activity bouts, stress episodes,
eyes-closed rest, short cognitive tasks, sensor dropouts). Their heart beats
from an IPFM oscillator with realistic HRV (``sim.heart``), and each sensor
stream is generated from the same latent states (``sim.modalities``, where
the physiology and its sources are documented).

Streams (channel names follow the CSV contract in ``edgetwin.types``)::

    <name>.rr      one row per beat            rr (ms)
    <name>.vitals  4 Hz                        hr, spo2, temp, eda
    <name>.accel   32 Hz                       accel_x, accel_y, accel_z
    <name>.eeg     256 Hz                      eeg_af7, eeg_af8, eeg_tp9, eeg_tp10
    <name>.fnirs   10 Hz                       fnirs_<s>_<d>_<760|850> (4 pairs)
    <name>.ppg     64 Hz (opt-in)              ppg
    <name>.climate every 10 s                  temp (°C), humidity (%), pressure (hPa), co2 (ppm)
    <name>.air     1 Hz                        pm1_0, pm2_5, pm10 (µg/m³)

``climate`` and ``air`` are the person's bedroom (``sim.environment``): the
channels of a BTHome/ESS room sensor and a PMS5003, with a home/away schedule
that changes them (CO2, humidity and warmth build up overnight in the closed
bedroom, cooking raises PM2.5 only when someone is home, the empty room cools).

Dropouts: vitals, accel, rr, ppg, climate and air lose their rows (missing batches or
holes); eeg and fnirs keep their rows with NaN values, as a headset whose
electrode lifts still streams frames.

Two ways to run: ``simulate()`` on a simulated clock as fast as numpy goes
(deterministic for a person, start and chunk size), and ``SimulatorSource``
which paces the same chunks by the wall clock for the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import numpy as np

import edgetwin.clock as twin_clock
from edgetwin.errors import UsageError
from edgetwin.sources.base import Source
from edgetwin.sources.sim.environment import (
    AIR_CHANNELS,
    AIR_RATE_HZ,
    AIR_UNITS,
    CLIMATE_CHANNELS,
    CLIMATE_PERIOD_S,
    CLIMATE_UNITS,
    Room,
)
from edgetwin.sources.sim.heart import Heart
from edgetwin.sources.sim.modalities import (
    FNIRS_WAVELENGTHS,
    Accel,
    Eeg,
    Fnirs,
    Ppg,
    Vitals,
)
from edgetwin.sources.sim.person import SimulatedPerson
from edgetwin.sources.sim.schedule import Schedule, States
from edgetwin.types import SampleBatch

__all__ = [
    "ALL_MODALITIES",
    "DEFAULT_MODALITIES",
    "RATES_HZ",
    "SimulatedPerson",
    "SimulatorSource",
    "history",
    "simulate",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODALITIES: tuple[str, ...] = ("rr", "vitals", "accel", "eeg", "fnirs", "climate", "air")
ALL_MODALITIES: tuple[str, ...] = (*DEFAULT_MODALITIES, "ppg")
RATES_HZ: dict[str, float] = {
    "vitals": 4.0,
    "accel": 32.0,
    "eeg": 256.0,
    "fnirs": 10.0,
    "ppg": 64.0,
    "climate": 1.0 / CLIMATE_PERIOD_S,
    "air": AIR_RATE_HZ,
}
_ROOM = {"climate": (CLIMATE_CHANNELS, CLIMATE_UNITS), "air": (AIR_CHANNELS, AIR_UNITS)}
_NAN_DROPOUT = frozenset({"eeg", "fnirs"})  # these keep their rows and go NaN
_STATE_GRID_HZ = 4.0  # latent states are smooth: evaluate coarsely, interpolate
# A paired (live) simulator hands over what it simulated every quarter second, as a wearable
# sends a beat or a reading as it comes: whole-second chunks held each sample up to a second
# before the daemon saw it, which a SIGKILL then lost on top of the unflushed second.
LIVE_CHUNK_S = 0.25


def simulate(
    person: SimulatedPerson,
    start_t: float,
    duration_s: float | None,
    chunk_s: float = 1.0,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    *,
    name: str = "sim",
    dropouts: bool = True,
) -> Iterator[SampleBatch]:
    """Batches of ``person``'s streams from ``start_t`` for ``duration_s`` (None: forever).

    Chunk ``k`` covers ``[start_t + k*chunk_s, start_t + (k+1)*chunk_s)``; each
    chunk yields one batch per modality that has samples in it, in the order
    of ``modalities``. The same arguments always give the same batches.
    """
    body = _Body(person, start_t, modalities, name=name, dropouts=dropouts)
    k = 0
    while duration_s is None or k * chunk_s < duration_s - 1e-9:
        t1 = start_t + (k + 1) * chunk_s
        if duration_s is not None:
            t1 = min(t1, start_t + duration_s)
        yield from body.chunk(t1)
        k += 1


def history(
    person: SimulatedPerson,
    hours: float,
    end_t: float | None = None,
    modalities: Sequence[str] = ("rr", "vitals", "accel"),
    *,
    name: str = "sim",
    chunk_s: float = 60.0,
    dropouts: bool = True,
) -> Iterator[SampleBatch]:
    """The last ``hours`` before ``end_t`` (default now), fast, to seed a twin with a past.

    Defaults to the cheap modalities and one-minute chunks: a day of rr,
    vitals and accel takes seconds; add "eeg"/"fnirs" when the past needs them.
    """
    end = time.time() if end_t is None else end_t
    duration = hours * 3600.0
    return simulate(
        person, end - duration, duration, chunk_s, modalities, name=name, dropouts=dropouts
    )


class SimulatorSource(Source):
    """The simulator behind the ``Source`` contract, paced by the wall clock or flat out.

    In real time, chunk ``k`` is released once ``(k+1)*chunk_s/speed`` seconds
    of the monotonic clock have passed since ``connect``; timestamps run from
    ``start_t`` (default: wall-clock now) at ``speed`` simulated seconds per
    second. ``clock`` and ``sleep`` are injectable so tests can drive time.
    """

    kind = "simulator"

    def __init__(
        self,
        name: str,
        seed: int,
        realtime: bool = True,
        speed: float = 1.0,
        start_t: float | None = None,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        *,
        chunk_s: float = 1.0,
        duration_s: float | None = None,
        dropouts: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = twin_clock.now,
    ) -> None:
        super().__init__(name)
        _check_modalities(modalities, where=f"simulator {name!r}")
        if not speed > 0 or not math.isfinite(speed):
            raise UsageError(f"simulator {name!r}: speed {speed!r} must be a positive number")
        if not chunk_s > 0:
            raise UsageError(f"simulator {name!r}: chunk_s {chunk_s!r} must be positive")
        self.seed = int(seed)
        self.person = SimulatedPerson.from_seed(self.seed)
        self.realtime = realtime
        self.speed = float(speed)
        self.start_t = start_t
        self.modalities = tuple(modalities)
        self.chunk_s = float(chunk_s)
        self.duration_s = duration_s
        self.dropouts = dropouts
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._body: _Body | None = None
        self._origin = 0.0  # simulated time of the first connect
        self._resume_t: float | None = None  # where the last chunk ended
        self._t0_sim = 0.0
        self._t0_clock = 0.0
        self._chunks = 0

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> SimulatorSource:
        """Build from a pairing record such as ``{"kind": "simulator", "seed": 7}``."""
        allowed = {"kind", "seed", "modalities", "speed", "realtime", "chunk_s", "dropouts"}
        unknown = sorted(set(record) - allowed)
        if unknown:
            raise UsageError(
                f"simulator {name!r}: unknown setting(s) {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(allowed))}",
            )
        if record.get("kind", "simulator") != "simulator":
            raise UsageError(f"simulator {name!r}: record kind is {record.get('kind')!r}")
        seed = record.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UsageError(f"simulator {name!r}: seed {seed!r} must be an integer")
        modalities = record.get("modalities", list(DEFAULT_MODALITIES))
        if not isinstance(modalities, list | tuple) or not all(
            isinstance(m, str) for m in modalities
        ):
            raise UsageError(f"simulator {name!r}: modalities must be a list of names")
        return cls(
            name,
            seed,
            realtime=bool(record.get("realtime", True)),
            speed=float(record.get("speed", 1.0)),
            modalities=tuple(modalities),
            chunk_s=float(record.get("chunk_s", LIVE_CHUNK_S)),
            dropouts=bool(record.get("dropouts", True)),
        )

    async def connect(self) -> None:
        """Start (or, after a close, resume) the simulated clock; nothing can fail here."""
        if self._resume_t is None:
            start = self._wall() if self.start_t is None else self.start_t
            self._origin = start
        elif self.start_t is None and self.realtime:
            # A live sensor that was away misses what happened meanwhile.
            start = max(self._wall(), self._resume_t)
        else:
            start = self._resume_t
        self._body = _Body(
            self.person, start, self.modalities, name=self.name, dropouts=self.dropouts
        )
        self._t0_sim = start
        self._t0_clock = self._clock()
        self._chunks = 0
        _LOGGER.debug("simulator %s: person seed %d from t=%.3f", self.name, self.seed, start)

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Yield chunk after chunk; paced by the clock when ``realtime``."""
        if self._body is None:
            await self.connect()
        body = self._body
        assert body is not None
        end_t = None if self.duration_s is None else self._origin + self.duration_s
        while True:
            k = self._chunks
            t0 = self._t0_sim + k * self.chunk_s
            t1 = t0 + self.chunk_s
            if end_t is not None:
                if t0 >= end_t - 1e-9:
                    return
                t1 = min(t1, end_t)
            if self.realtime:
                due = self._t0_clock + (t1 - self._t0_sim) / self.speed
                wait = due - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            else:
                await self._sleep(0)  # stay cooperative when running flat out
            gaps_before = body.gaps
            batches = body.chunk(t1)
            self._chunks = k + 1
            self._resume_t = t1
            self.counters.gaps += body.gaps - gaps_before
            self.counters.extra["sim_t"] = t1
            for batch in batches:
                self.counters.count(batch)
                yield batch

    async def close(self) -> None:
        """Drop the simulated state; safe to call twice."""
        self._body = None

    def describe(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "modalities": list(self.modalities),
            "realtime": self.realtime,
            "speed": self.speed,
        }


# -- internals -------------------------------------------------------------------------


def _check_modalities(modalities: Sequence[str], *, where: str) -> None:
    bad = [m for m in modalities if m not in ALL_MODALITIES]
    if bad or not modalities:
        raise UsageError(
            f"{where}: unknown modality {', '.join(map(repr, bad)) or '(none given)'}",
            hint=f"choose from {', '.join(ALL_MODALITIES)}",
        )


class _Body:
    """The person's simulated state, advanced chunk by chunk."""

    def __init__(
        self,
        person: SimulatedPerson,
        start_t: float,
        modalities: Sequence[str],
        *,
        name: str,
        dropouts: bool,
    ) -> None:
        _check_modalities(modalities, where=f"simulator {name!r}")
        self.person = person
        self.name = name
        self.modalities = tuple(dict.fromkeys(modalities))
        self.start_t = float(start_t)
        self.t = self.start_t
        self.schedule = Schedule(person, dropout_per_h=0.12 if dropouts else 0.0)
        self.heart = Heart(person, self.schedule, self.start_t)
        self.index = dict.fromkeys(RATES_HZ, 0)  # next sample index per modality
        self.gaps = 0  # dropout episodes begun so far, all modalities
        self._was_off: dict[str, bool] = {}
        self.vitals = Vitals(person, RATES_HZ["vitals"])
        self.accel = Accel(person, RATES_HZ["accel"])
        self.eeg = Eeg(person, RATES_HZ["eeg"])
        self.fnirs = Fnirs(person, RATES_HZ["fnirs"])
        self.ppg = Ppg(person, RATES_HZ["ppg"])
        self.room = Room(person, self.schedule, self.start_t) if (
            {"climate", "air"} & set(self.modalities)) else None
        self._meta = {
            "fnirs": {
                "distance_cm": dict(self.fnirs.distance_cm),
                "wavelengths_nm": list(FNIRS_WAVELENGTHS),
                "age_years": person.age_years,
                "sampling_rate_hz": RATES_HZ["fnirs"],
            }
        }

    def chunk(self, t1: float) -> list[SampleBatch]:
        """Every modality's samples in ``[self.t, t1)``."""
        t0 = self.t
        beat_t, rr = self.heart.advance(t1)
        out: list[SampleBatch] = []
        grid: np.ndarray | None = None
        grid_states = None
        for modality in self.modalities:
            if modality == "rr":
                keep = ~self.schedule.dropout_mask("rr", beat_t)
                self._count_gaps("rr", ~keep)
                if np.any(keep):
                    out.append(
                        SampleBatch.build(f"{self.name}.rr", ("rr",), beat_t[keep], rr[keep, None])
                    )
                continue
            fs = RATES_HZ[modality]
            i0 = self.index[modality]
            i1 = math.ceil((t1 - self.start_t) * fs - 1e-6)
            self.index[modality] = max(i0, i1)
            if i1 <= i0:
                continue
            t = self.start_t + np.arange(i0, i1) / fs
            if modality in _ROOM:
                assert self.room is not None
                off = self.schedule.dropout_mask(modality, t)
                self._count_gaps(modality, off)
                t = t[~off]
                if t.size:
                    room = self.room.climate(t) if modality == "climate" else self.room.air(t)
                    room_channels, room_units = _ROOM[modality]
                    out.append(SampleBatch.build(
                        f"{self.name}.{modality}", room_channels, t, room, units=room_units,
                        meta={"sampling_rate_hz": fs, "simulated": "room"},
                    ))
                continue
            if grid is None:
                grid = np.arange(t0, t1 + 0.5 / _STATE_GRID_HZ, 1.0 / _STATE_GRID_HZ)
                grid_states = self.schedule.states(grid)
            assert grid_states is not None
            states = _interp_states(t, grid, grid_states)
            if modality == "vitals":
                values = self.vitals(t, states, self.heart)
                channels: tuple[str, ...] = Vitals.channels
            elif modality == "accel":
                values = self.accel(t, states, self.heart)
                channels = Accel.channels
            elif modality == "eeg":
                values = self.eeg(t, states, self.heart)
                channels = Eeg.channels
            elif modality == "ppg":
                values = self.ppg(t, states, self.heart)
                channels = Ppg.channels
            else:
                hrf_n = len(self.fnirs.hrf)
                t_hist = t[0] + np.arange(-hrf_n, 0) / fs
                full_t = np.concatenate([t_hist, t])
                drive = Fnirs.neural_drive(self.schedule.states(full_t))
                values = self.fnirs(t, states, self.heart, drive)
                channels = Fnirs.channels
            off = self.schedule.dropout_mask(modality, t)
            self._count_gaps(modality, off)
            if modality in _NAN_DROPOUT:
                values[off] = np.nan
            elif np.any(off):
                t, values = t[~off], values[~off]
            if t.size:
                meta: dict[str, Any] = dict(self._meta.get(modality, {}))
                meta.setdefault("sampling_rate_hz", fs)
                out.append(
                    SampleBatch.build(f"{self.name}.{modality}", channels, t, values, meta=meta)
                )
        self.t = t1
        return out

    def _count_gaps(self, modality: str, off: np.ndarray) -> None:
        """Count dropouts that begin in this chunk (an off run not continuing the last chunk's)."""
        if off.size == 0:
            return
        prev = self._was_off.get(modality, False)
        starts = np.flatnonzero(off[1:] & ~off[:-1]).size + int(bool(off[0]) and not prev)
        self.gaps += starts
        self._was_off[modality] = bool(off[-1])


def _interp_states(t: np.ndarray, grid: np.ndarray, s: States) -> States:
    return States(*(np.interp(t, grid, getattr(s, f)) for f in States.__dataclass_fields__))
