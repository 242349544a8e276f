"""The simulated person's surroundings: a bedroom's climate and air, and when they are away.

One room sensor pair, as a person would place it: a room climate sensor with
CO2 (a BTHome or Environmental Sensing device, ``<name>.climate``: ``temp`` °C,
``humidity`` %, ``pressure`` hPa, ``co2`` ppm, one reading every
``CLIMATE_PERIOD_S``) and a particulate sensor (a PMS5003 on serial,
``<name>.air``: ``pm1_0``, ``pm2_5``, ``pm10`` µg/m³, integers, 1 Hz) in the
bedroom. Channel names and units are those of the real sources.

- Home or away (:meth:`Room.away`): on most workdays the person leaves in the
  morning and comes back in the evening; on other days an outing of a few
  hours, sometimes an evening out. Never away while asleep. Each local day draws
  its plan from ``numpy.random.default_rng([seed, day, ...])``, so the plan is
  a pure function of time.
- Occupancy drives the room: awake at home the door is open and the heating
  holds its setpoint (CO2 settles near 700-800 ppm); asleep the bedroom is
  closed with a breathing person in it, so CO2 climbs toward ~1800 ppm,
  humidity toward ~60 % and the temperature by about a degree over the night;
  away, CO2 decays to the outdoor 420 ppm, the thermostat sets back and the
  room cools. Each is a first-order approach to the occupancy's level (a
  single-zone mass balance, dC/dt = G/V - ACH (C - C_out); Persily & de Jonge
  2017, Indoor Air 27:868 for the CO2 generation of a sleeping adult).
- PM2.5 is outdoor air let in (an urban background that drifts over days, with
  occasional smoggy days) plus indoor episodes: cooking at breakfast and dinner
  and a candle on some evenings, only when someone is home and awake; particles
  settle and are ventilated away (~1.2 per hour, less in the closed bedroom).
  PM10 adds coarse dust stirred up by people moving about; PM1.0 is ~70 % of
  PM2.5 (combustion particles are fine).
- Pressure follows the weather: a sum of slow swings of a few hPa over days
  and the 12-hour atmospheric tide (~1 hPa), below sea level's by the
  person's altitude. The same everywhere, home or away (the sensor is at home).

The room's state is integrated on a fixed 10 s grid from a day before the
start, so the same person and start time give the same readings whatever the
chunking. Sensor noise is drawn per UTC hour from the seed.
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.sources.sim.person import SimulatedPerson
from edgetwin.sources.sim.schedule import Schedule
from edgetwin.types import FloatArray

CLIMATE_CHANNELS: tuple[str, ...] = ("temp", "humidity", "pressure", "co2")
CLIMATE_UNITS: tuple[str, ...] = ("degC", "%", "hPa", "ppm")
AIR_CHANNELS: tuple[str, ...] = ("pm1_0", "pm2_5", "pm10")
AIR_UNITS: tuple[str, ...] = ("µg/m³", "µg/m³", "µg/m³")
CLIMATE_PERIOD_S = 10.0  # a BTHome thermometer advertises every few seconds to a minute
AIR_RATE_HZ = 1.0  # a PMS5003 in active mode

OUTDOOR_CO2_PPM = 420.0
_HOUR = 3600.0
_DAY = 86400.0
_DT = 10.0  # integration grid (s)
_WARMUP_S = _DAY
# occupancy codes
AWAY, HOME, ASLEEP = 0, 1, 2
# per occupancy: (air changes per hour, CO2 generation as ppm/h in the room's volume)
_VENT = {AWAY: (0.6, 0.0), HOME: (1.0, 330.0), ASLEEP: (0.4, 560.0)}
# time constants (h) of temperature and humidity toward their occupancy's level
_TAU_T = {AWAY: 4.0, HOME: 1.0, ASLEEP: 3.0}
_TAU_RH = {AWAY: 3.0, HOME: 1.5, ASLEEP: 3.0}
# particles: loss rate (1/h) and the share of outdoor PM2.5 that gets in
_PM_LOSS = {AWAY: 1.0, HOME: 1.2, ASLEEP: 0.5}
_PM_INFILTRATION = 0.6


class Room:
    """The bedroom of one simulated person, advanced forward in time from ``start_t``."""

    def __init__(self, person: SimulatedPerson, schedule: Schedule, start_t: float) -> None:
        self.person = person
        self.schedule = schedule
        rng = np.random.default_rng([0xE17, person.seed])
        self.setpoint_c = float(rng.uniform(19.5, 22.5))
        self.setback_c = self.setpoint_c - float(rng.uniform(2.0, 4.0))
        self.night_rise_c = float(rng.uniform(0.7, 1.6))
        self.volume_factor = float(rng.uniform(0.75, 1.3))  # small rooms fill faster
        self.humidity_home = float(rng.uniform(38.0, 50.0))
        self.outdoor_pm25 = float(rng.uniform(4.0, 14.0))
        self.altitude_hpa = float(rng.uniform(0.0, 40.0))
        self.works_away = float(rng.uniform(0.6, 0.9))  # share of workdays spent away
        self._weather = [
            (float(rng.uniform(1.8, 7.5)) * _DAY, float(rng.uniform(1.5, 5.0)),
             float(rng.uniform(0.0, 2 * math.pi)))
            for _ in range(3)
        ]
        self._noise_cache: dict[tuple[str, int], FloatArray] = {}
        self._plans: dict[int, tuple[list[tuple[float, float]], list[tuple[float, float, float]],
                                     tuple[float, float] | None]] = {}
        # integrated state on the grid: times and rows (temp, humidity, co2, pm2_5 indoor)
        g0 = math.floor((start_t - _WARMUP_S) / _DT) * _DT
        self._grid_t: list[float] = [g0]
        self._grid_x: list[tuple[float, float, float, float]] = [
            (self.setpoint_c, self.humidity_home, 700.0, _PM_INFILTRATION * self.outdoor_pm25)
        ]
        self._grid_occ: list[int] = [HOME]  # occupancy of the step ending at each grid time

    # -- public ------------------------------------------------------------------

    def away(self, t: FloatArray) -> np.ndarray:
        """True where the person is away from home at ``t`` (never while asleep)."""
        out = np.zeros(t.shape, dtype=bool)
        if t.size == 0:
            return out
        local = t + self.person.utc_offset_h * _HOUR
        for day in range(int(np.min(local) // _DAY) - 1, int(np.max(local) // _DAY) + 1):
            for a, b in self._plan(day)[0]:
                out |= (local >= a) & (local < b)
        return out & ~(self.schedule.sleep_level(t) >= 0.5)

    def occupancy(self, t: FloatArray) -> np.ndarray:
        """``AWAY``, ``HOME`` (awake) or ``ASLEEP`` at each ``t``."""
        asleep = self.schedule.sleep_level(t) >= 0.5
        occ = np.where(asleep, ASLEEP, HOME)
        return np.where(self.away(t), AWAY, occ)

    def pressure(self, t: FloatArray) -> FloatArray:
        """Barometric pressure (hPa) at the person's home."""
        p = np.full(t.shape, 1013.25 - self.altitude_hpa)
        for period, amp, phase in self._weather:
            p += amp * np.sin(2 * math.pi * t / period + phase)
        hour = np.mod(t / _HOUR + self.person.utc_offset_h, 24.0)
        p += 0.8 * np.cos(2 * math.pi * (hour - 10.0) / 12.0)  # semidiurnal tide, peaks ~10/22 h
        return p

    def climate(self, t: FloatArray) -> FloatArray:
        """Rows of ``CLIMATE_CHANNELS`` at ``t`` (ascending), as a room sensor reports them."""
        x = self._state(t)
        noise = self._noise("climate", t, 4)
        out = np.empty((t.size, 4))
        out[:, 0] = np.round(x[:, 0] + 0.05 * noise[:, 0], 2)
        out[:, 1] = np.round(np.clip(x[:, 1] + 0.4 * noise[:, 1], 0.0, 100.0), 2)
        out[:, 2] = np.round(self.pressure(t) + 0.05 * noise[:, 2], 2)
        out[:, 3] = np.round(np.maximum(x[:, 2] + 15.0 * noise[:, 3], 380.0))
        return out

    def air(self, t: FloatArray) -> FloatArray:
        """Rows of ``AIR_CHANNELS`` at ``t`` (ascending), integers as a PMS5003 reports them."""
        x = self._state(t)
        noise = self._noise("air", t, 3)
        pm25 = np.maximum(0.0, x[:, 3] * (1.0 + 0.08 * noise[:, 1]) + 0.6 * noise[:, 1])
        occ = x[:, 4]
        coarse = np.where(occ == HOME, 7.0, np.where(occ == ASLEEP, 1.5, 0.8))
        pm10 = pm25 * 1.25 + coarse * (1.0 + 0.2 * noise[:, 2])
        pm1 = 0.7 * pm25 * (1.0 + 0.05 * noise[:, 0])
        rows = np.stack([pm1, pm25, np.maximum(pm10, pm25)], axis=1)
        out: FloatArray = np.round(np.maximum(rows, 0.0))
        return out

    # -- the room's state ---------------------------------------------------------

    def _state(self, t: FloatArray) -> FloatArray:
        """(temp, humidity, co2, pm2_5, occupancy) at ``t``: linear between grid points, the
        occupancy of the grid step ``t`` falls in."""
        if t.size == 0:
            return np.zeros((0, 5))
        self._advance(float(t[-1]))
        gt = np.asarray(self._grid_t)
        gx = np.asarray(self._grid_x)
        out = np.empty((t.size, 5))
        for j in range(4):
            out[:, j] = np.interp(t, gt, gx[:, j])
        step = np.clip(np.searchsorted(gt, t, side="right"), 1, gt.size - 1)
        out[:, 4] = np.asarray(self._grid_occ)[step]
        # keep the grid from a little before these times on: the next chunk starts later
        keep = max(0, int(np.searchsorted(gt, float(t[0]) - 4 * _DT)) - 1)
        if keep > 1000:
            del self._grid_t[:keep]
            del self._grid_x[:keep]
            del self._grid_occ[:keep]
        return out

    def _advance(self, t_end: float) -> None:
        """Integrate the grid past ``t_end`` (exact first-order steps, inputs held per step)."""
        last = self._grid_t[-1]
        if last >= t_end:
            return
        n = math.ceil((t_end - last) / _DT)
        # step k runs from gt[k] to gt[k] + _DT
        gt: FloatArray = last + _DT * np.arange(n, dtype=np.float64)
        occ = self.occupancy(gt)
        hour = np.mod(gt / _HOUR + self.person.utc_offset_h, 24.0)
        outdoor_swing = 0.4 * np.cos(2 * math.pi * (hour - 15.0) / 24.0)
        emission = self._emission(gt, occ)
        outdoor_pm = self._outdoor_pm25(gt)
        temp, rh, co2, pm = self._grid_x[-1]
        h = _DT / _HOUR
        for k in range(n):
            o = int(occ[k])
            ach, gen = _VENT[o]
            gen *= self.volume_factor
            co2_level = OUTDOOR_CO2_PPM + gen / ach
            co2 = co2_level + (co2 - co2_level) * math.exp(-ach * h)
            if o == AWAY:
                t_level, rh_level = self.setback_c, self.humidity_home - 5.0
            elif o == ASLEEP:
                t_level, rh_level = self.setpoint_c + self.night_rise_c, self.humidity_home + 15.0
            else:
                t_level, rh_level = self.setpoint_c, self.humidity_home
            t_level += float(outdoor_swing[k])
            temp = t_level + (temp - t_level) * math.exp(-h / _TAU_T[o])
            rh = rh_level + (rh - rh_level) * math.exp(-h / _TAU_RH[o])
            loss = _PM_LOSS[o]
            pm_level = _PM_INFILTRATION * float(outdoor_pm[k]) + float(emission[k]) / loss
            pm = pm_level + (pm - pm_level) * math.exp(-loss * h)
            self._grid_t.append(float(gt[k]) + _DT)
            self._grid_x.append((temp, rh, co2, pm))
            self._grid_occ.append(o)

    def _outdoor_pm25(self, t: FloatArray) -> FloatArray:
        """Urban background PM2.5 (µg/m³): slow swings, and smoggy days several times higher."""
        base = self.outdoor_pm25 * (1.0 + 0.4 * np.sin(2 * math.pi * t / (3.3 * _DAY)))
        local = t + self.person.utc_offset_h * _HOUR
        for day in range(int(np.min(local) // _DAY) - 1, int(np.max(local) // _DAY) + 1):
            smog = self._plan(day)[2]
            if smog is not None:
                a, b = day * _DAY + 6 * _HOUR, day * _DAY + 22 * _HOUR
                base = np.where((local >= a) & (local < b), base * smog[0], base)
        return base

    def _emission(self, t: FloatArray, occ: np.ndarray) -> FloatArray:
        """Indoor PM2.5 emission (µg/m³ per hour) of cooking and candles, only when home awake."""
        out = np.zeros(t.shape)
        local = t + self.person.utc_offset_h * _HOUR
        for day in range(int(np.min(local) // _DAY) - 1, int(np.max(local) // _DAY) + 1):
            for a, b, rate in self._plan(day)[1]:
                out = np.where((local >= a) & (local < b), out + rate, out)
        return np.where(occ == HOME, out, 0.0)

    def _plan(
        self, day: int
    ) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]],
               tuple[float, float] | None]:
        """Local day ``day``: away spans, PM episodes (start, end, rate), smog (factor, _)."""
        got = self._plans.get(day)
        if got is not None:
            return got
        rng = np.random.default_rng([self.person.seed, day + 10**7, 0xA1])
        d0 = day * _DAY
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
        away: list[tuple[float, float]] = []
        if weekday < 5 and rng.random() < self.works_away:
            leave = 8.0 + rng.normal(0.0, 0.3)
            back = 17.5 + rng.normal(0.0, 0.7)
            away.append((d0 + leave * _HOUR, d0 + back * _HOUR))
        elif rng.random() < 0.6:
            start = rng.uniform(10.0, 15.0)
            away.append((d0 + start * _HOUR, d0 + (start + rng.uniform(1.5, 5.0)) * _HOUR))
        if rng.random() < 0.2:
            start = rng.uniform(19.0, 20.5)
            away.append((d0 + start * _HOUR, d0 + (start + rng.uniform(1.5, 3.0)) * _HOUR))
        episodes: list[tuple[float, float, float]] = []
        breakfast = 7.2 + rng.normal(0.0, 0.3)
        episodes.append((d0 + breakfast * _HOUR, d0 + breakfast * _HOUR + 900.0,
                         float(rng.uniform(80.0, 300.0))))
        dinner = 18.8 + rng.normal(0.0, 0.5)
        episodes.append((d0 + dinner * _HOUR, d0 + dinner * _HOUR + 2100.0,
                         float(rng.uniform(120.0, 500.0))))
        if rng.random() < 0.15:
            candle = rng.uniform(20.0, 22.0)
            episodes.append((d0 + candle * _HOUR, d0 + (candle + 1.0) * _HOUR,
                             float(rng.uniform(20.0, 60.0))))
        smog = (float(rng.uniform(3.0, 6.0)), 0.0) if rng.random() < 0.12 else None
        plan = (away, episodes, smog)
        if len(self._plans) > 64:
            self._plans.clear()
        self._plans[day] = plan
        return plan

    def _noise(self, kind: str, t: FloatArray, width: int) -> FloatArray:
        """Standard normal noise per sample, a pure function of the sample's time and seed."""
        out = np.empty((t.size, width))
        if t.size == 0:
            return out
        period = CLIMATE_PERIOD_S if kind == "climate" else 1.0 / AIR_RATE_HZ
        per_hour = round(_HOUR / period)
        slot = np.floor(t / period + 1e-6).astype(np.int64)
        hours = slot // per_hour
        for h in np.unique(hours):
            block = self._noise_cache.get((kind, int(h)))
            if block is None:
                rng = np.random.default_rng([self.person.seed, int(h) + 10**7, 0xA2,
                                             0 if kind == "climate" else 1])
                block = rng.standard_normal((per_hour, width))
                if len(self._noise_cache) > 8:
                    self._noise_cache.clear()
                self._noise_cache[(kind, int(h))] = block
            sel = hours == h
            out[sel] = block[slot[sel] - int(h) * per_hour]
        return out
