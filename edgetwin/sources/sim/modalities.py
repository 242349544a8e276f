"""Signal generators, one per simulated sensor stream, vectorised per chunk.

Each generator keeps only the state its noise processes need and turns the
latent states (``schedule.States``) and the heart model into samples.

Vitals (4 Hz: ``hr``, ``spo2``, ``temp``, ``eda``)
    Wearable-style heart rate (integer bpm, beat-averaged); SpO2 95-99 % with
    a small nocturnal dip; distal skin temperature that rises ~1 degC at night
    (heat loss through the extremities gates sleep: Kräuchi 2007, Sleep Med
    Rev 11:439) and falls with sympathetic vasoconstriction under stress;
    EDA as a tonic skin-conductance level plus phasic responses (SCRs) with a
    Bateman shape (rise ~0.75 s, decay ~3.5 s) arriving as a Poisson process
    whose rate climbs with stress (Boucsein 2012; Benedek & Kaernbach 2010,
    J Neurosci Methods 190:80).
Accelerometer (32 Hz, g)
    Gravity along the wrist's orientation (upright awake, posture changes
    every ~40 min asleep), a gait oscillation at 1.6-2.8 steps/s with
    harmonics during activity bouts, fidget noise awake and sensor noise.
EEG (256 Hz, µV; AF7, AF8, TP9, TP10 as on a Muse headband)
    An aperiodic 1/f^chi background (Donoghue et al. 2020) plus resonant
    rhythms: alpha at the individual alpha frequency, strongest over
    temporo-parietal sites and growing with eyes-closed rest (Berger effect;
    Klimesch 1999), beta rising with stress/arousal, theta in drowsiness and
    light sleep, delta slow waves in deep sleep, EMG-like gamma with movement,
    and eye blinks on the frontal sites.
fNIRS (10 Hz; 2 sources x 2 detectors, 760 and 850 nm raw intensity)
    HbO/HbR changes are a neural drive (tasks, stress, activity) convolved
    with the canonical double-gamma haemodynamic response (Friston et al.
    1998; Glover 1999), HbR = -0.3 x HbO for the evoked part (Huppert et al.
    2006, NeuroImage 29:368), plus systemic physiology that every channel
    sees: cardiac pulsation locked to the simulated beats, respiration and
    ~0.1 Hz Mayer waves (Scholkmann et al. 2014, NeuroImage 85:6; Yücel et
    al. 2016). Intensities follow from the modified Beer-Lambert law,
    ``I = I0 * exp(-ln(10) * (eps_HbO dHbO + eps_HbR dHbR) * d * DPF)`` with
    Prahl's extinction coefficients and the age-dependent DPF of Scholkmann &
    Wolf 2013 (J Biomed Opt 18:105004). ``s2_d2`` is a 0.8 cm short-separation
    channel that sees the scalp's systemic signal but hardly any brain.
PPG (64 Hz, optional)
    A pulse wave per simulated beat with respiratory baseline wander.
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.sources.sim.filters import PinkNoise, resonator
from edgetwin.sources.sim.heart import Heart
from edgetwin.sources.sim.person import SimulatedPerson
from edgetwin.sources.sim.schedule import States
from edgetwin.types import FloatArray

# Prahl's tabulation (omlc.org/spectra/hemoglobin/summary.html), molar extinction
# coefficients in cm^-1/M (decadic): wavelength -> (HbO2, Hb).
PRAHL_EXTINCTION: dict[int, tuple[float, float]] = {760: (586.0, 1548.52), 850: (1058.0, 691.32)}

EEG_SITES = ("af7", "af8", "tp9", "tp10")
FNIRS_PAIRS = (("s1", "d1", 3.0), ("s1", "d2", 3.0), ("s2", "d1", 3.0), ("s2", "d2", 0.8))
FNIRS_WAVELENGTHS = (760, 850)


def scholkmann_dpf(wavelength_nm: float, age_years: float) -> float:
    """Differential pathlength factor of the adult head (Scholkmann & Wolf 2013, eq. 1)."""
    lam = float(wavelength_nm)
    return float(
        223.3 + 0.05624 * age_years**0.8493 - 5.723e-7 * lam**3 + 0.001245 * lam**2 - 0.9025 * lam
    )


def canonical_hrf(fs: float, length_s: float = 32.0) -> FloatArray:
    """SPM's double-gamma haemodynamic response (peak 6 s, undershoot 16 s, ratio 1/6).

    Scaled to unit sum, so a sustained unit drive settles at a unit response.
    """
    t = np.arange(0.0, length_s, 1.0 / fs)
    a1, a2 = 6.0, 16.0
    g1 = t ** (a1 - 1) * np.exp(-t) / math.gamma(a1)
    g2 = t ** (a2 - 1) * np.exp(-t) / math.gamma(a2)
    h = g1 - g2 / 6.0
    return np.asarray(h / float(np.sum(h)), dtype=np.float64)


def _bateman(t: FloatArray, rise: float = 0.75, decay: float = 3.5) -> FloatArray:
    """SCR shape with unit peak; zero before onset."""
    tp = math.log(decay / rise) * rise * decay / (decay - rise)
    peak = math.exp(-tp / decay) - math.exp(-tp / rise)
    out = (np.exp(-t / decay) - np.exp(-t / rise)) / peak
    return np.where(t > 0, out, 0.0)


class Vitals:
    """hr, spo2, temp, eda."""

    channels = ("hr", "spo2", "temp", "eda")

    def __init__(self, person: SimulatedPerson, fs: float) -> None:
        self.p = person
        self.fs = fs
        self.rng = np.random.default_rng([person.seed, 0x717A])
        self._noise = PinkNoise(fs, 0.0005, 0.5, 1.5, 3)  # spo2, temp, eda drifts
        self._scr: list[tuple[float, float]] = []  # (onset, amplitude) of live SCRs

    def __call__(self, t: FloatArray, s: States, heart: Heart) -> FloatArray:
        p = self.p
        n = t.size
        drift = self._noise(self.rng, n)
        hr = np.round(heart.hr_at(t))
        spo2 = p.spo2_pct - 0.8 * s.sleep - 0.3 * s.activity + 0.5 * drift[0]
        spo2 = np.clip(np.round(spo2), 85.0, 100.0)
        temp = (
            p.skin_temp_c
            + 0.9 * s.sleep
            - 0.25 * s.circadian
            - 0.5 * s.stress
            - 0.3 * s.activity
            + 0.15 * drift[1]
        )
        tonic = (
            p.eda_us
            * np.exp(0.12 * s.circadian)
            * (1.0 + 0.7 * p.eda_reactivity * s.stress + 0.5 * s.activity)
            * (1.0 - 0.3 * s.sleep)
            * np.exp(0.05 * drift[2])
        )
        # Phasic SCRs: Poisson onsets at a state-dependent rate (per minute).
        if n:
            mid = n // 2
            rate = (1.5 + 8.0 * s.stress[mid] + 3.0 * s.activity[mid]) * p.eda_reactivity
            rate *= 1.0 - 0.7 * s.sleep[mid]
            span = n / self.fs
            k = self.rng.poisson(rate / 60.0 * span)
            onsets = t[0] + self.rng.uniform(0.0, span, k)
            amps = self.rng.exponential(0.12 * p.eda_us / 4.0 * (1 + s.stress[mid]), k)
            self._scr.extend(zip(onsets.tolist(), amps.tolist(), strict=True))
            self._scr = [(o, a) for o, a in self._scr if o > t[0] - 30.0]
        phasic = np.zeros(n)
        for onset, amp in self._scr:
            phasic += amp * _bateman(t - onset)
        eda = tonic + phasic
        return np.stack([hr, spo2, np.round(temp, 2), np.round(eda, 3)], axis=1)


class Accel:
    """accel_x, accel_y, accel_z in g."""

    channels = ("accel_x", "accel_y", "accel_z")

    def __init__(self, person: SimulatedPerson, fs: float) -> None:
        self.p = person
        self.fs = fs
        self.rng = np.random.default_rng([person.seed, 0xACCE])
        self._fidget = PinkNoise(fs, 0.05, 4.0, 1.0, 3)
        self._gait = float(self.rng.uniform(0, 2 * math.pi))

    def _posture(self, t: FloatArray) -> FloatArray:
        """Unit gravity vector of the sleeping posture in force at each ``t``."""
        seg = np.floor(t / 2400.0).astype(np.int64)
        out = np.empty((t.size, 3))
        for u in np.unique(seg):
            r = np.random.default_rng([self.p.seed, 0x9051, int(u)])
            v = r.normal(0.0, 1.0, 3)
            v[2] = abs(v[2]) * 0.5
            out[seg == u] = v / np.linalg.norm(v)
        return out

    def __call__(self, t: FloatArray, s: States, heart: Heart) -> FloatArray:
        n = t.size
        upright = np.array([0.15, -0.25, 0.956])
        g = (1.0 - s.sleep)[:, None] * upright + s.sleep[:, None] * self._posture(t)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        cadence = 1.6 + 1.2 * s.activity
        phase = self._gait + np.cumsum(2 * math.pi * cadence / self.fs)
        if n:
            self._gait = float(phase[-1])
        amp = np.where(s.activity > 0.05, 0.1 + 0.6 * s.activity, 0.0)
        vertical = amp * (np.sin(phase) + 0.35 * np.sin(2 * phase + 0.7))
        lateral = 0.3 * amp * np.sin(0.5 * phase)
        fidget = self._fidget(self.rng, n).T * (0.03 * (1 - s.sleep) + 0.004)[:, None]
        xyz = g * (1.0 + vertical)[:, None] + fidget
        xyz[:, 0] += lateral
        xyz += self.rng.normal(0.0, 0.004, (n, 3))
        return np.asarray(np.round(xyz, 4), dtype=np.float64)


class Eeg:
    """eeg_af7, eeg_af8, eeg_tp9, eeg_tp10 in µV."""

    channels = tuple(f"eeg_{s}" for s in EEG_SITES)

    def __init__(self, person: SimulatedPerson, fs: float) -> None:
        p = self.p = person
        self.fs = fs
        lanes = len(EEG_SITES)
        self.rng = np.random.default_rng([person.seed, 0xEE6])
        self._bg = PinkNoise(fs, 0.3, 100.0, p.eeg_exponent, lanes)
        self._alpha = resonator(p.alpha_hz, 1.6, fs, lanes + 1)  # +1 shared source
        self._beta = resonator(20.0, 9.0, fs, lanes)
        self._theta = resonator(6.0, 2.5, fs, lanes)
        self._delta = resonator(1.2, 1.5, fs, lanes + 1)
        self._gamma = resonator(38.0, 18.0, fs, lanes)
        # Alpha is strongest over temporo-parietal sites, blinks only hit frontal ones.
        self._alpha_w = np.array([0.6, 0.6, 1.0, 1.0])[:, None]
        self._frontal = np.array([1.0, 1.0, 0.1, 0.1])[:, None]
        self._blinks: list[float] = []

    def __call__(self, t: FloatArray, s: States, heart: Heart) -> FloatArray:
        p = self.p
        n = t.size
        lanes = len(EEG_SITES)
        rng = self.rng
        a = self._alpha(rng.standard_normal((lanes + 1, n)))
        alpha = 0.6 * a[-1:] + 0.8 * a[:-1]
        d = self._delta(rng.standard_normal((lanes + 1, n)))
        delta = 0.7 * d[-1:] + 0.7 * d[:-1]
        g_alpha = (1 + 1.8 * s.rest) * (1 - 0.5 * s.stress) * (1 - 0.4 * s.activity)
        g_alpha *= 1 - 0.85 * s.sleep
        g_beta = (1 + 1.5 * s.stress) * (1 + 0.3 * s.activity) * (1 - 0.5 * s.sleep)
        g_theta = 1 + 1.5 * s.sleep * (1 - s.depth) + 0.3 * s.rest
        g_delta = 1 + 10.0 * s.sleep * s.depth
        g_gamma = 1 + 5.0 * s.activity + 1.0 * s.stress
        x = p.eeg_background_uv * self._bg(rng, n)
        x += p.alpha_uv * self._alpha_w * alpha * g_alpha
        x += 0.4 * p.alpha_uv * self._beta(rng.standard_normal((lanes, n))) * g_beta
        x += 0.35 * p.alpha_uv * self._theta(rng.standard_normal((lanes, n))) * g_theta
        x += 0.4 * p.eeg_background_uv * delta * g_delta
        x += 1.5 * self._gamma(rng.standard_normal((lanes, n))) * g_gamma
        if n:
            # Blinks ~15/min awake with eyes open: a 60 µV, ~200 ms bump on frontal sites.
            eyes_open = (1 - s.sleep[n // 2]) * (1 - s.rest[n // 2])
            k = rng.poisson(15.0 / 60.0 * n / self.fs * eyes_open)
            self._blinks.extend((t[0] + rng.uniform(0, n / self.fs, k)).tolist())
            self._blinks = [b for b in self._blinks if b > t[0] - 1.0]
            for b in self._blinks:
                x += self._frontal * 60.0 * np.exp(-0.5 * ((t - b - 0.15) / 0.06) ** 2)
        return np.round(x.T, 3)


class Fnirs:
    """Raw intensities ``fnirs_<src>_<det>_<nm>`` for 4 channels at 760 and 850 nm."""

    channels = tuple(
        f"fnirs_{src}_{det}_{nm}" for src, det, _ in FNIRS_PAIRS for nm in FNIRS_WAVELENGTHS
    )

    def __init__(self, person: SimulatedPerson, fs: float) -> None:
        p = self.p = person
        self.fs = fs
        self.rng = np.random.default_rng([person.seed, 0xF1A5])
        self.hrf = canonical_hrf(fs)
        npair = len(FNIRS_PAIRS)
        self._drift = PinkNoise(fs, 0.002, 0.05, 1.5, npair)
        self._evoked_w = np.array([1.0, 0.8, 0.6, 0.1])  # brain sensitivity per channel
        dist = np.array([d for _, _, d in FNIRS_PAIRS])
        self.distance_cm = {
            f"fnirs_{src}_{det}_{nm}": d for src, det, d in FNIRS_PAIRS for nm in FNIRS_WAVELENGTHS
        }
        # I0 per channel: short channels collect far more light.
        base = np.where(dist < 1.5, 2.0e5, 2.0e4)
        self._i0 = np.repeat(base, 2) * self.rng.uniform(0.6, 1.6, 2 * npair)
        # Optode coupling per pair: 1 = good contact; a loose optode sees little pulse, more noise.
        coupling = np.ones(npair)
        if self.rng.random() < 0.3:
            coupling[int(self.rng.integers(0, npair - 1))] = 0.15
        self._coupling = coupling
        eps = np.array([PRAHL_EXTINCTION[nm] for nm in FNIRS_WAVELENGTHS])  # (wl, 2)
        dpf = np.array([scholkmann_dpf(nm, p.age_years) for nm in FNIRS_WAVELENGTHS])
        # dOD per µM of (HbO, HbR), shape (pair, wl, 2).
        self._k = math.log(10) * 1e-6 * eps[None, :, :] * dist[:, None, None] * dpf[None, :, None]

    def __call__(self, t: FloatArray, s: States, heart: Heart, drive: FloatArray) -> FloatArray:
        """``drive`` is the neural drive on the grid ``t - len(hrf)/fs .. t`` (history first)."""
        n = t.size
        evoked = np.convolve(drive, self.hrf, mode="full")[len(self.hrf) - 1 : len(drive)]
        evoked = evoked[-n:] * self.p.hbo_gain_um if n else evoked[:0]
        pulse_phase = heart.cardiac_phase(t)
        pulse = np.sin(2 * math.pi * pulse_phase) + 0.4 * np.sin(4 * math.pi * pulse_phase)
        mayer = np.sin(heart.lf_phase(t) - 0.6)
        resp = np.sin(heart.resp_phase(t))
        drift = self._drift(self.rng, n)  # (pair, n)
        hbo = (
            self._evoked_w[:, None] * evoked[None, :]
            + 0.35 * mayer[None, :]
            + 0.15 * resp[None, :]
            + 0.4 * self._coupling[:, None] * pulse[None, :]
            + 0.3 * drift
        )
        hbr = (
            -0.3 * self._evoked_w[:, None] * evoked[None, :]
            - 0.08 * mayer[None, :]
            + 0.05 * self._coupling[:, None] * pulse[None, :]
            + 0.1 * drift
        )
        dod = self._k[:, :, 0, None] * hbo[:, None, :] + self._k[:, :, 1, None] * hbr[:, None, :]
        dod = dod.reshape(-1, n)  # (pair*wl, n) in channel order
        noise_sd = np.repeat(0.0008 / self._coupling, 2)[:, None]
        motion = 1.0 + 0.01 * s.activity[None, :] * self.rng.standard_normal((1, n))
        intensity = self._i0[:, None] * np.exp(-dod) * motion
        intensity *= 1.0 + noise_sd * self.rng.standard_normal(dod.shape)
        return np.asarray(np.round(intensity.T, 2), dtype=np.float64)

    @staticmethod
    def neural_drive(s: States) -> FloatArray:
        return s.task + 0.6 * s.stress + 0.3 * s.activity


class Ppg:
    """A single ``ppg`` channel (a.u.) pulsing with the simulated beats."""

    channels = ("ppg",)

    def __init__(self, person: SimulatedPerson, fs: float) -> None:
        self.fs = fs
        self.rng = np.random.default_rng([person.seed, 0x9936])

    def __call__(self, t: FloatArray, s: States, heart: Heart) -> FloatArray:
        ph = heart.cardiac_phase(t)
        # Systolic upstroke ~ 0.15 of the cycle, then a decay with a dicrotic notch.
        wave = np.where(ph < 0.15, np.sin(0.5 * math.pi * ph / 0.15), np.exp(-(ph - 0.15) * 3.5))
        wave += 0.12 * np.exp(-0.5 * ((ph - 0.45) / 0.05) ** 2)
        base = 0.3 * np.sin(heart.resp_phase(t))
        noise = self.rng.normal(0.0, 0.03 + 0.3 * s.activity, t.size)
        return np.round((1000.0 * (wave + base + noise))[:, None], 2)
