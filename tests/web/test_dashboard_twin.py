"""A known twin for the dashboard tests (frames, gap, imputed and low-quality spans, a marker,
forecasts, a consent) and a check that it holds what the other tests expect of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.privacy.consent import grant
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, Marker, Prediction

PASS = "dashboard test passphrase"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20Z
STEP = 5.0
N = 2000  # frames: 2000 x 5 s = 2 h 46 min
GAP = (800, 900)  # frames without hr (NaN): a gap the chart must show
IMPUTED = (300, 340)
LOWQ = (1200, 1260)
MARKER_T = T0 + 500 * STEP
MARKER_TEXT = "coffee"


def hr_at(k: int | np.ndarray) -> np.ndarray:
    """The known heart rate of frame k (a ramp folding every 40 frames)."""
    return 60.0 + (np.asarray(k) % 40)


def frame_t(k: int) -> float:
    return T0 + STEP * (k + 1)


def build_twin(home: Path, *, frames: int = N) -> None:
    """Create a twin at ``home`` holding the known frames (passphrase :data:`PASS`)."""
    with TwinStore.create(home, Secret.passphrase(PASS)) as store:
        out = []
        for k in range(frames):
            values = np.full(len(NAMES), np.nan)
            quality = np.ones(len(NAMES))
            imputed = np.zeros(len(NAMES), dtype=bool)
            if not GAP[0] <= k < GAP[1]:
                values[INDEX["hr"]] = hr_at(k)
            values[INDEX["spo2"]] = 97.0 + (k % 3)
            if IMPUTED[0] <= k < IMPUTED[1]:
                imputed[INDEX["hr"]] = True
            if LOWQ[0] <= k < LOWQ[1]:
                quality[INDEX["hr"]] = 0.2
            out.append(FeatureFrame(frame_t(k), values, quality, imputed, SCHEMA_VERSION))
        store.append_frames(out)
        t_last = frame_t(frames - 1)
        horizon = tuple(70.0 + s for s in range(6))
        store.append_predictions([Prediction(
            t=t_last, target="hr", step_s=STEP, horizon=horizon,
            band=tuple((h - 3.0, h + 3.0) for h in horizon),
            attention=tuple([1 / 12] * 12), imputed=((t_last - 60.0, t_last - 30.0),),
            model="forecaster-test", anomaly=True)])
        store.append_markers([Marker(MARKER_T, MARKER_TEXT, "cli")])
        store.put_record("pairing", "wrist", {"kind": "ble", "address": "AA:BB:CC:DD:EE:FF",
                                              "profile": "heart_rate"})
        store.commit()
        grant(store, "hr_mean", "day", T0)
        store.commit()


def test_the_known_twin_holds_its_frames(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    build_twin(tmp_path / "h", frames=100)
    with TwinStore.open(tmp_path / "h", Secret.passphrase(PASS)) as store:
        frames = list(store.read_frames())
        assert len(frames) == 100
        assert frames[7].values[INDEX["hr"]] == hr_at(7)
        assert [m.text for m in store.read_markers()] == [MARKER_TEXT]
