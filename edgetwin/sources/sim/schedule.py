"""The simulated person's day: circadian phase, sleep, activity, stress, rest and dropouts.

Every state is a pure function of absolute time and the person's seed, so a
stretch of time looks the same whether it is simulated in one call or many,
at real time or as fast as possible. Each UTC hour draws its own events from
``numpy.random.default_rng([seed, hour, kind])``; an event may run into the
next hour, so the hour before is consulted too.

- Sleep: one main episode per night from a jittered habitual bedtime, with a
  20-min onset ramp and ~90-min NREM/REM cycles whose slow-wave depth is
  largest early in the night (Carskadon & Dement, *Principles and Practice of
  Sleep Medicine*).
- Activity bouts (walks, runs, chores: 3-40 min, intensity 0.2-1), stress
  episodes (5-30 min) and quiet rest with eyes closed (2-12 min) happen only
  awake, as Poisson arrivals at the person's hourly rates.
- Short cognitive tasks (20-40 s blocks) drive the fNIRS haemodynamic response.
- Sensor dropouts: each modality independently loses 5 s - 10 min with a
  probability per hour, the way a loose strap or a radio hiccup does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgetwin.sources.sim.person import SimulatedPerson
from edgetwin.types import FloatArray

_HOUR = 3600.0
_DAY = 86400.0

# event kinds -> index used in the RNG key
_KINDS = {"activity": 1, "stress": 2, "rest": 3, "task": 4, "night": 5, "dropout": 6}
# (rise_s, fall_s) of each kind's envelope: heart rate recovers slower than it rises.
_ENVELOPES = {"activity": (45.0, 120.0), "stress": (60.0, 180.0), "rest": (30.0, 30.0)}
_MODALITY_KEYS = {"rr": 1, "vitals": 2, "accel": 3, "eeg": 4, "fnirs": 5, "ppg": 6, "climate": 7,
                  "air": 8}


@dataclass(frozen=True)
class States:
    """Latent states at sample times; every array has the shape of ``t``."""

    circadian: FloatArray  # cos of the circadian phase: +1 at the acrophase
    sleep: FloatArray  # 0 awake .. 1 asleep
    depth: FloatArray  # slow-wave depth while asleep, 0..1
    activity: FloatArray  # 0..1 intensity
    stress: FloatArray  # 0..1
    rest: FloatArray  # 0..1 quiet, eyes closed
    task: FloatArray  # 0/1 short cognitive task blocks (neural drive for fNIRS)


class Schedule:
    """The latent timeline of one person, evaluated lazily per hour."""

    def __init__(self, person: SimulatedPerson, dropout_per_h: float = 0.12) -> None:
        self.person = person
        self.dropout_per_h = dropout_per_h
        self._cache: dict[tuple[str, int], FloatArray] = {}

    # -- public -----------------------------------------------------------------

    def states(self, t: FloatArray) -> States:
        """All latent states at times ``t`` (epoch seconds)."""
        p = self.person
        local = t + p.utc_offset_h * _HOUR
        hour = np.mod(local / _HOUR, 24.0)
        circ = np.cos(2.0 * math.pi * (hour - p.acrophase_h) / 24.0)
        sleep, depth = self._sleep(local)
        awake = 1.0 - sleep
        return States(
            circadian=circ,
            sleep=sleep,
            depth=depth,
            activity=self._level(t, "activity") * awake,
            stress=self._level(t, "stress") * awake,
            rest=self._level(t, "rest") * awake,
            task=self._level(t, "task") * awake,
        )

    def sleep_level(self, t: FloatArray) -> FloatArray:
        """``states(t).sleep`` alone (0 awake .. 1 asleep), without the other states' cost."""
        return self._sleep(t + self.person.utc_offset_h * _HOUR)[0]

    def dropout_mask(self, modality: str, t: FloatArray) -> np.ndarray:
        """True where ``modality``'s sensor is off at ``t``."""
        mask = np.zeros(t.shape, dtype=bool)
        if self.dropout_per_h <= 0 or t.size == 0:
            return mask
        key = _MODALITY_KEYS.get(modality, 9)
        for h in range(int(t[0] // _HOUR) - 1, int(t[-1] // _HOUR) + 1):
            ev = self._events(f"dropout{key}", h)
            for start, dur, _ in ev:
                mask |= (t >= start) & (t < start + dur)
        return mask

    # -- internals --------------------------------------------------------------

    def _rng(self, kind: str, index: int) -> np.random.Generator:
        base = kind.rstrip("0123456789")
        extra = int(kind[len(base) :] or 0)
        return np.random.default_rng([self.person.seed, index + 10**7, _KINDS[base], extra])

    def _events(self, kind: str, hour: int) -> FloatArray:
        """Rows of (start, duration, intensity) of events starting in UTC hour ``hour``."""
        key = (kind, hour)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        rng = self._rng(kind, hour)
        p = self.person
        t0 = hour * _HOUR
        if kind == "activity":
            n = rng.poisson(p.activity_per_h)
            dur = rng.uniform(180.0, 2400.0, n)
            inten = rng.uniform(0.2, 1.0, n)
        elif kind == "stress":
            n = rng.poisson(p.stress_per_h)
            dur = rng.uniform(300.0, 1800.0, n)
            inten = rng.uniform(0.3, 1.0, n)
        elif kind == "rest":
            n = rng.poisson(0.35)
            dur = rng.uniform(120.0, 720.0, n)
            inten = rng.uniform(0.6, 1.0, n)
        elif kind == "task":
            n = rng.poisson(4.0)
            dur = rng.uniform(20.0, 40.0, n)
            inten = np.ones(n)
        else:  # dropout<k>
            n = int(rng.random() < self.dropout_per_h)
            dur = np.clip(np.exp(rng.normal(math.log(30.0), 1.0, n)), 5.0, 600.0)
            inten = np.ones(n)
        start = t0 + rng.uniform(0.0, _HOUR, n)
        ev = np.stack([start, dur, inten], axis=1) if n else np.zeros((0, 3))
        if kind in ("activity", "stress", "rest", "task") and n:
            # Nothing starts during sleep.
            sl, _ = self._sleep(start + self.person.utc_offset_h * _HOUR)
            ev = ev[sl < 0.5]
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = ev
        return ev

    def _level(self, t: FloatArray, kind: str) -> FloatArray:
        out = np.zeros(t.shape)
        if t.size == 0:
            return out
        rise, fall = _ENVELOPES.get(kind, (2.0, 2.0))
        for h in range(int(t[0] // _HOUR) - 1, int(t[-1] // _HOUR) + 1):
            for start, dur, inten in self._events(kind, h):
                end = start + dur
                if end + fall < t[0] or start > t[-1]:
                    continue
                up = np.clip((t - start) / rise, 0.0, 1.0)
                down = np.clip(1.0 - (t - end) / fall, 0.0, 1.0)
                env = inten * _smooth(np.minimum(up, down))
                np.maximum(out, env, out=out)
        return out

    def _night(self, day: int) -> tuple[float, float]:
        """(bedtime, wake) in local epoch seconds of the night starting on local day ``day``."""
        rng = self._rng("night", day)
        p = self.person
        bed = day * _DAY + (p.bedtime_h + rng.normal(0.0, 0.4)) * _HOUR
        wake = bed + max(3.0, p.sleep_h + rng.normal(0.0, 0.5)) * _HOUR
        return bed, wake

    def _sleep(self, local: FloatArray) -> tuple[FloatArray, FloatArray]:
        sleep = np.zeros(local.shape)
        depth = np.zeros(local.shape)
        if local.size == 0:
            return sleep, depth
        lo, hi = float(np.min(local)), float(np.max(local))
        for day in range(int(lo // _DAY) - 1, int(hi // _DAY) + 1):
            bed, wake = self._night(day)
            if wake < lo or bed > hi:
                continue
            onset = np.clip((local - bed) / 1200.0, 0.0, 1.0)
            offset = np.clip((wake - local) / 600.0, 0.0, 1.0)
            level = _smooth(np.minimum(onset, offset))
            since = np.clip(local - bed, 0.0, None)
            # ~90-min cycles; slow-wave sleep dominates the first third of the night.
            cycle = 0.5 + 0.5 * np.cos(2.0 * math.pi * since / 5400.0)
            weight = np.exp(-since / (3.5 * _HOUR))
            np.maximum(sleep, level, out=sleep)
            np.maximum(depth, level * cycle * (0.3 + 0.7 * weight), out=depth)
        return sleep, depth


def _smooth(x: FloatArray) -> FloatArray:
    """Smoothstep 0..1 so state changes have no corners."""
    return x * x * (3.0 - 2.0 * x)
