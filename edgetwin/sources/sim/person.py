"""A simulated person: the baselines that make one twin differ from another.

Ranges are drawn from healthy-adult norms:

- resting heart rate 50-80 bpm and RMSSD 20-80 ms at rest (Task Force of the
  ESC/NASPE 1996, Circulation 93:1043; Nunan et al. 2010, PACE 33:1407 give a
  normal short-term RMSSD of 42 +/- 15 ms); RMSSD falls with age
  (Umetani et al. 1998, JACC 31:593), so the draw is age-skewed;
- breathing 12-20 breaths/min (0.2-0.33 Hz), which sets the respiratory sinus
  arrhythmia frequency;
- SpO2 95-99 % at sea level; distal (wrist) skin temperature 32-35 degC;
- skin conductance level 1-10 uS, log-normally spread (Boucsein 2012,
  *Electrodermal Activity*, 2nd ed.);
- individual alpha frequency 8.5-11.5 Hz and an aperiodic EEG exponent of
  1.2-2.0 (Klimesch 1999, Brain Res Rev 29:169; Donoghue et al. 2020,
  Nat Neurosci 23:1655);
- habitual bedtime 21:30-00:30 and 6-9 h of sleep; a circadian heart-rate
  acrophase in the afternoon (Vandewalle et al. 2007, J Sleep Res 16:148).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimulatedPerson:
    """Baselines of one simulated person; ``from_seed`` draws a plausible adult."""

    seed: int
    age_years: float = 35.0
    resting_hr: float = 65.0  # bpm, awake at rest, daily mean
    rmssd_ms: float = 42.0  # awake at rest
    resp_hz: float = 0.25
    spo2_pct: float = 97.5
    skin_temp_c: float = 33.5
    eda_us: float = 4.0  # tonic skin conductance level at rest
    eda_reactivity: float = 1.0  # scales SCR amplitude and rate
    hr_activity_gain: float = 45.0  # bpm added at full activity intensity
    hr_stress_gain: float = 14.0  # bpm added at full stress
    hr_circadian_amp: float = 4.0  # bpm, half peak-to-trough
    acrophase_h: float = 16.0  # local hour of the circadian HR peak
    alpha_hz: float = 10.0
    alpha_uv: float = 12.0  # RMS of the alpha rhythm, eyes open at rest
    eeg_exponent: float = 1.6
    eeg_background_uv: float = 10.0  # RMS of the aperiodic background
    bedtime_h: float = 23.0
    sleep_h: float = 7.5
    activity_per_h: float = 0.5  # mean activity bouts per waking hour
    stress_per_h: float = 0.3  # mean stress episodes per waking hour
    hbo_gain_um: float = 1.5  # peak HbO change for a unit neural drive
    utc_offset_h: float = 0.0  # the person's local time = UTC + this

    @classmethod
    def from_seed(cls, seed: int) -> SimulatedPerson:
        """A reproducible person: the same seed always gives the same baselines."""
        rng = np.random.default_rng([0x5EED, int(seed)])
        age = float(rng.uniform(20.0, 65.0))
        # Younger people tend to higher RMSSD; keep the 20-80 ms band.
        rmssd_centre = 62.0 - 0.6 * (age - 20.0)
        rmssd = float(np.clip(rng.normal(rmssd_centre, 10.0), 20.0, 80.0))
        resting = float(np.clip(rng.normal(65.0, 7.0), 50.0, 80.0))
        return cls(
            seed=int(seed),
            age_years=round(age, 1),
            resting_hr=resting,
            rmssd_ms=rmssd,
            resp_hz=float(rng.uniform(0.2, 0.33)),
            spo2_pct=float(rng.uniform(95.5, 98.8)),
            skin_temp_c=float(rng.uniform(32.3, 34.8)),
            eda_us=float(np.clip(math.exp(rng.normal(math.log(3.5), 0.5)), 1.0, 10.0)),
            eda_reactivity=float(rng.uniform(0.5, 1.5)),
            hr_activity_gain=float(rng.uniform(30.0, 60.0)),
            hr_stress_gain=float(rng.uniform(8.0, 20.0)),
            hr_circadian_amp=float(rng.uniform(2.5, 6.0)),
            acrophase_h=float(rng.uniform(14.0, 18.0)),
            alpha_hz=float(rng.uniform(8.5, 11.5)),
            alpha_uv=float(rng.uniform(7.0, 18.0)),
            eeg_exponent=float(rng.uniform(1.2, 2.0)),
            eeg_background_uv=float(rng.uniform(7.0, 14.0)),
            bedtime_h=float(rng.uniform(21.5, 24.5)),
            sleep_h=float(rng.uniform(6.0, 9.0)),
            activity_per_h=float(rng.uniform(0.3, 0.9)),
            stress_per_h=float(rng.uniform(0.15, 0.5)),
            hbo_gain_um=float(rng.uniform(1.0, 2.5)),
        )
