"""Bundle fixtures: a populated twin, a real age-keygen identity, cheap Argon2."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgetwin.features.schema import NAMES, SCHEMA_VERSION
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, Prediction, SampleBatch

PASS = "correct horse battery staple"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EEG = ("eeg_fp1", "eeg_fp2", "eeg_c3", "eeg_c4")
FNIRS = ("fnirs_s1_d1_760", "fnirs_s1_d1_850", "fnirs_s2_d1_760", "fnirs_s2_d1_850")


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@dataclass
class Twin:
    """A twin with every kind of content, and what was put in it."""

    home: Path
    secret: Secret
    eeg_t: np.ndarray
    eeg: np.ndarray
    rr_t: np.ndarray
    rr: np.ndarray
    nirs_t: np.ndarray
    nirs: np.ndarray
    frames: list[FeatureFrame]
    preds: list[Prediction]

    def open(self) -> TwinStore:
        return TwinStore.open(self.home, self.secret)


def fill_twin(home: Path, secret: Secret, *, seconds: int = 120, seed: int = 0) -> Twin:
    """Create a twin holding EEG (two segments, a NaN), RR, fNIRS, frames, predictions, records."""
    rng = np.random.default_rng(seed)
    n = 250 * seconds
    half = n // 2
    # a 10 s dropout splits the EEG into two grid segments
    eeg_t = T0 + np.concatenate([np.arange(half), np.arange(half, n) + 2500]) / 250.0
    eeg = rng.normal(0.0, 25.0, (n, len(EEG)))
    eeg[100, 2] = np.nan
    rr_t = T0 + np.cumsum(rng.uniform(0.6, 1.1, seconds))
    rr = rng.uniform(600.0, 1100.0, (seconds, 1))
    nirs_t = T0 + np.arange(10 * seconds) / 10.0 + rng.uniform(-0.01, 0.01, 10 * seconds)
    nirs = rng.uniform(900.0, 2100.0, (len(nirs_t), len(FNIRS)))
    frames = []
    for k in range(seconds // 5):
        values = rng.normal(size=len(NAMES))
        values[3] = np.nan
        imputed = np.zeros(len(NAMES), dtype=bool)
        imputed[k % len(NAMES)] = True
        frames.append(FeatureFrame(T0 + 5.0 * (k + 1), values, rng.uniform(0, 1, len(NAMES)),
                                   imputed, SCHEMA_VERSION))
    preds = [
        Prediction(
            t=T0 + 5.0 * (k + 1), target=target, step_s=5.0,
            horizon=tuple(rng.normal(size=3).tolist()),
            band=tuple((float(a), float(a) + 1.0) for a in rng.normal(size=3)),
            attention=(0.25, 0.25, 0.5), imputed=((T0, T0 + 5.0),),
            model="lstm-attn/int8/0123abcd", anomaly=bool(k % 2),
        )
        for k in range(seconds // 5)
        for target in ("hr", "eeg_alpha")
    ]
    store = TwinStore.create(home, secret)
    with store:
        store.append_samples(SampleBatch.build("muse.eeg", EEG, eeg_t, eeg, meta={"rate_hz": 250}))
        store.append_samples(SampleBatch.build("polar.rr", ("rr",), rr_t, rr))
        store.append_samples(SampleBatch.build("nirs", FNIRS, nirs_t, nirs,
                                               meta={"distance_cm": 3.0}))
        store.append_frames(frames)
        store.append_predictions(preds)
        store.commit()
        store.put_record("consent", "hr", {"granted": True, "period": "day"})
        store.put_record("privacy_ledger", "day:1767225600", {"period": "day",
                                                              "start": T0, "spent": 0.5})
        store.put_record("privacy_ledger", "lifetime", {"spent": 0.5})
        store.put_record("pairing", "polar", {"kind": "ble", "address": "AA:BB:CC:DD:EE:FF"})
        store.put_record("device", "signing_key", {"ed25519": "secret-key-material"})
        (home / "config.toml").write_text("# test config\n")
    return Twin(home, secret, eeg_t, eeg, rr_t, rr, nirs_t, nirs, frames, preds)


@pytest.fixture
def twin(tmp_path: Path) -> Twin:
    return fill_twin(tmp_path / "src", Secret.passphrase(PASS))


@dataclass
class AgeKey:
    """An identity file made by the real age-keygen, and its public key."""

    path: Path
    public: str


def age_keygen(path: Path) -> AgeKey:
    exe = shutil.which("age-keygen")
    assert exe, "age-keygen is missing: scripts/bootstrap --dev installs the Debian package 'age'"
    subprocess.run([exe, "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run([exe, "-y", str(path)], check=True, capture_output=True, text=True)
    return AgeKey(path, public.stdout.strip())


@pytest.fixture
def key(tmp_path: Path) -> AgeKey:
    return age_keygen(tmp_path / "identity.txt")


@pytest.fixture
def other_key(tmp_path: Path) -> AgeKey:
    return age_keygen(tmp_path / "other-identity.txt")


@pytest.fixture
def bundle(twin: Twin, key: AgeKey, tmp_path: Path) -> Path:
    from edgetwin.bundle import export_bundle

    out = tmp_path / "twin.age"
    with twin.open() as store:  # the whole twin, location features included
        export_bundle(store, out, recipients=[key.public], with_location=True)
    return out


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (to prove nothing else was written)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}
