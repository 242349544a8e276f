"""Beat-to-beat heart timing: an integral pulse frequency modulation (IPFM) generator.

The sinus node is modelled as an integrate-and-fire oscillator (Bayly 1968;
Mateo & Laguna 2000, IEEE TBME 47:985): a beat fires each time the integral
of the instantaneous rate ``r(t)`` crosses the next integer. ``r(t)`` is the
mean rate set by the person's state (circadian rhythm, activity, stress,
sleep) times ``1 + m(t)``, where the modulation ``m(t)`` holds

- respiratory sinus arrhythmia (vagal, high-frequency band 0.15-0.4 Hz)
  at the breathing rate, its amplitude set so that RMSSD matches the
  person's vagal tone (Task Force 1996; for a sinusoid sampled once per beat,
  RMSSD = sqrt(2) * A_rr * sin(pi f_resp RR));
- Mayer waves near 0.1 Hz (low-frequency band, baroreflex; McSharry et al.
  2003, ECGSYN, IEEE TBME 50:289, use the same bimodal LF/HF spectrum);
- a 1/f component for the slow, very-low-frequency wander.

Vagal tone, and so RMSSD, falls with activity and stress and rises in sleep
(Shaffer & Ginsberg 2017, Front Public Health 5:258). Rare premature beats
(about 1 in 1000) are added, as in healthy Holter recordings, so artefact
rejection downstream has something real to reject.
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.sources.sim.filters import PinkNoise
from edgetwin.sources.sim.person import SimulatedPerson
from edgetwin.sources.sim.schedule import Schedule, States
from edgetwin.types import FloatArray

GRID_HZ = 8.0
_LF_HZ = 0.1
_LF_AMP = 0.012  # relative rate modulation of Mayer waves at rest
_VLF_AMP = 0.02  # relative 1/f wander
_ECTOPIC_P = 0.001


def mean_hr(person: SimulatedPerson, s: States) -> FloatArray:
    """The state-driven mean heart rate (bpm) before beat-to-beat modulation."""
    return (
        person.resting_hr
        + person.hr_circadian_amp * s.circadian
        - s.sleep * (6.0 + 4.0 * s.depth)
        + person.hr_activity_gain * s.activity
        + person.hr_stress_gain * s.stress
        - 2.0 * s.rest
    )


def vagal_tone(s: States) -> FloatArray:
    """Relative vagal tone: 1 awake at rest, lower under load, higher asleep."""
    return (1.0 - 0.65 * s.activity) * (1.0 - 0.55 * s.stress) * (1.0 + 0.35 * s.sleep)


class Heart:
    """Advances the IPFM oscillator on an 8 Hz grid and hands out beats and phases."""

    def __init__(self, person: SimulatedPerson, schedule: Schedule, start_t: float) -> None:
        self.person = person
        self.schedule = schedule
        self.rng = np.random.default_rng([person.seed, 0xBEA7])
        self._pink = PinkNoise(GRID_HZ, 0.003, 0.5, 1.0, 1)
        self._dt = 1.0 / GRID_HZ
        self._t = start_t  # time of the last grid point
        self._phi = float(self.rng.random())  # cardiac integral (beats)
        self._resp = float(self.rng.uniform(0, 2 * math.pi))
        self._lf = float(self.rng.uniform(0, 2 * math.pi))
        # the beat before the start, where the phase puts it: the heart did not start with
        # the simulation, so its first beat carries an RR interval, as a strap that connects
        # (or a daemon that restarts) gets one with the first beat it hears
        hr_start = float(np.clip(mean_hr(person, schedule.states(np.array([start_t]))),
                                 35.0, 200.0)[0])
        self._last_beat: float | None = start_t - (self._phi % 1.0) * 60.0 / hr_start
        self._pending: list[float] = []
        # Grid history (kept short): times, cardiac integral, smoothed HR, phases.
        self._hist_t = np.array([start_t])
        self._hist_phi = np.array([self._phi])
        self._hist_hr = np.array([person.resting_hr])
        self._hist_resp = np.array([self._resp])
        self._hist_lf = np.array([self._lf])

    def advance(self, t1: float) -> tuple[FloatArray, FloatArray]:
        """Run to ``t1``; return (beat times, RR in ms) of beats before ``t1``."""
        n = max(0, math.ceil((t1 - self._t) / self._dt) + 1)
        beats: list[float] = list(self._pending)
        self._pending = []
        if n:
            tg = self._t + self._dt * np.arange(1, n + 1, dtype=np.float64)
            s = self.schedule.states(tg)
            p = self.person
            hr0 = np.clip(mean_hr(p, s), 35.0, 200.0)
            period = 60.0 / hr0
            f_resp = p.resp_hz * (1.0 + 0.6 * s.activity + 0.15 * s.stress - 0.1 * s.sleep)
            resp = self._resp + np.cumsum(2 * math.pi * f_resp * self._dt)
            lf = self._lf + 2 * math.pi * _LF_HZ * self._dt * np.arange(1, n + 1)
            target = p.rmssd_ms * vagal_tone(s)
            # Share of RMSSD left for RSA once the LF waves and jitter take theirs.
            lf_part = math.sqrt(2) * _LF_AMP * period * 1000 * np.sin(math.pi * _LF_HZ * period)
            rsa_rmssd = np.sqrt(np.maximum(target**2 - lf_part**2 - 2.0**2, (0.3 * target) ** 2))
            sin_term = np.maximum(np.abs(np.sin(math.pi * f_resp * period)), 0.15)
            a_rsa = np.minimum(rsa_rmssd / (math.sqrt(2) * sin_term * period * 1000), 0.25)
            wander = _VLF_AMP * self._pink(self.rng, n)[0]
            m = a_rsa * np.sin(resp) + _LF_AMP * (1 + 0.6 * s.stress) * np.sin(lf) + wander
            rate = hr0 / 60.0 * (1.0 + m)
            phi = self._phi + np.cumsum(rate * self._dt)
            prev = np.concatenate([[self._phi], phi[:-1]])
            crossed = np.nonzero(np.floor(phi) > np.floor(prev))[0]
            t_prev = tg[crossed] - self._dt
            frac = (np.floor(phi[crossed]) - prev[crossed]) / (phi[crossed] - prev[crossed])
            beats.extend((t_prev + frac * self._dt).tolist())
            self._t, self._phi = float(tg[-1]), float(phi[-1])
            self._resp, self._lf = float(resp[-1]), float(lf[-1])
            keep = self._hist_t >= t1 - 4.0
            self._hist_t = np.concatenate([self._hist_t[keep], tg])
            self._hist_phi = np.concatenate([self._hist_phi[keep], phi])
            self._hist_hr = np.concatenate([self._hist_hr[keep], hr0 * (1 + wander)])
            self._hist_resp = np.concatenate([self._hist_resp[keep], resp])
            self._hist_lf = np.concatenate([self._hist_lf[keep], lf])
        out_t: list[float] = []
        out_rr: list[float] = []
        for bt in beats:
            if bt >= t1:
                self._pending.append(bt)
                continue
            t_beat = bt + float(self.rng.normal(0.0, 0.0012))
            if self._last_beat is not None:
                rr = t_beat - self._last_beat
                if self.rng.random() < _ECTOPIC_P:
                    t_beat -= 0.3 * rr  # premature beat; the next interval is compensatory
                    rr = t_beat - self._last_beat
                out_t.append(t_beat)
                out_rr.append(rr * 1000.0)
            self._last_beat = t_beat
        return np.asarray(out_t), np.asarray(out_rr)

    def hr_at(self, t: FloatArray) -> FloatArray:
        """Smoothed heart rate (bpm) as a wearable reports it, at ``t`` within the last chunk."""
        return np.asarray(np.interp(t, self._hist_t, self._hist_hr), dtype=np.float64)

    def cardiac_phase(self, t: FloatArray) -> FloatArray:
        """Fraction 0..1 of the cardiac cycle at ``t`` (0 at the beat)."""
        return np.asarray(np.mod(np.interp(t, self._hist_t, self._hist_phi), 1.0), dtype=np.float64)

    def resp_phase(self, t: FloatArray) -> FloatArray:
        return np.asarray(np.interp(t, self._hist_t, self._hist_resp), dtype=np.float64)

    def lf_phase(self, t: FloatArray) -> FloatArray:
        return np.asarray(np.interp(t, self._hist_t, self._hist_lf), dtype=np.float64)
