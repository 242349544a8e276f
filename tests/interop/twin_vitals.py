"""A twin with known vital-sign frames, streams and forecasts, for the FHIR and Open mHealth tests.

Frames every 5 s for 30 min from T0 (aligned to 5 min); hr, rmssd, spo2 and
skin_temp take values whose per-window means the tests compute themselves
from ``Vitals``. Some frames are imputed or of poor quality: the exports
must leave those out.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from edgetwin.cli.main import cli
from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, Prediction, SampleBatch

PASS = "correct horse battery staple"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STEP = 5.0
N_FRAMES = 360  # 30 min
EXPORTED = ("hr", "rmssd", "spo2", "skin_temp")


@dataclass
class Vitals:
    home: Path
    pass_file: Path
    t: np.ndarray
    values: dict[str, np.ndarray]
    usable: dict[str, np.ndarray]
    rr_t: np.ndarray
    rr: np.ndarray
    preds: list[Prediction] = field(default_factory=list)

    def cli(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(
            cli, ["--home", str(self.home), "--passphrase-file", str(self.pass_file), *args],
            input=input, catch_exceptions=False,
        )

    def window_means(self, feature: str, every: float) -> dict[float, float]:
        """Window start -> mean of the usable values in (start, start + every]."""
        out: dict[float, list[float]] = {}
        for t, v, ok in zip(self.t, self.values[feature], self.usable[feature], strict=True):
            if ok:
                start = (math.ceil(t / every) - 1) * every
                out.setdefault(start, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in out.items()}


def make_twin(tmp: Path, *, forecasts: bool = True) -> Vitals:
    rng = np.random.default_rng(7)
    home = tmp / "home"
    pass_file = tmp / "pass"
    pass_file.write_text(PASS + "\n")
    pass_file.chmod(0o600)
    t = T0 + STEP * np.arange(1, N_FRAMES + 1)
    values = {
        "hr": 60.0 + 20.0 * rng.random(N_FRAMES),
        "rmssd": 20.0 + 40.0 * rng.random(N_FRAMES),
        "spo2": 94.0 + 5.0 * rng.random(N_FRAMES),
        "skin_temp": 32.0 + 2.0 * rng.random(N_FRAMES),
    }
    usable = {k: np.ones(N_FRAMES, dtype=bool) for k in values}
    frames = []
    for i in range(N_FRAMES):
        v = np.full(len(NAMES), np.nan)
        q = np.ones(len(NAMES))
        imp = np.zeros(len(NAMES), dtype=bool)
        v[INDEX["eeg_alpha"]] = 0.3
        for name, series in values.items():
            v[INDEX[name]] = series[i]
        if i % 11 == 3:  # the imputer filled hr here: not a measurement
            imp[INDEX["hr"]] = True
            usable["hr"][i] = False
        if i % 13 == 5:  # poor spo2 contact
            q[INDEX["spo2"]] = 0.2
            usable["spo2"][i] = False
        if 120 <= i < 140:  # the thermometer was off: NaN
            v[INDEX["skin_temp"]] = np.nan
            usable["skin_temp"][i] = False
        frames.append(FeatureFrame(float(t[i]), v, q, imp, SCHEMA_VERSION))
    rr_t = T0 + np.cumsum(rng.uniform(0.7, 1.0, 2000))
    rr_t = rr_t[rr_t <= t[-1]]
    rr = rng.uniform(700.0, 1000.0, (rr_t.size, 1))
    preds = []
    if forecasts:
        for i in range(60, N_FRAMES, 30):
            preds.append(Prediction(
                t=float(t[i]), target="hr", step_s=STEP,
                horizon=(70.0 + i / 100, 71.0, 72.0),
                band=((65.0, 75.0), (64.0, 78.0), (63.0, 81.0)),
                attention=(0.5, 0.5), imputed=(), model="lstm-attn/int8/0123abcd",
            ))
    secret = Secret.passphrase(PASS)
    with TwinStore.create(home, secret) as store:
        store.append_samples(SampleBatch.build("polar", ("rr",), rr_t, rr))
        vt = T0 + np.arange(0, N_FRAMES * STEP, 1.0)
        store.append_samples(SampleBatch.build("oxi", ("spo2",), vt, np.full((vt.size, 1), 97.0)))
        store.append_samples(SampleBatch.build("patch", ("temp",), vt,
                                               np.full((vt.size, 1), 33.0)))
        store.append_samples(SampleBatch.build("muse.eeg", ("eeg_af7",), vt[:100],
                                               np.zeros((100, 1))))
        store.append_frames(frames)
        store.append_predictions(preds)
        store.commit()
    return Vitals(home, pass_file, t, values, usable, rr_t, rr[:, 0], preds)


def age_keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    out = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()


def age_decrypt(path: Path, identity: Path) -> bytes:
    out = subprocess.run(["age", "-d", "-i", str(identity), str(path)], check=True,
                         capture_output=True)
    return out.stdout
