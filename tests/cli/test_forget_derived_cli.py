"""CLI: ``forget --stream`` says what it shredded from the timeline, and it is gone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, SampleBatch

T0 = 1_699_923_600.0  # 2023-11-14 01:00:00Z
PASS = "correct horse battery staple"  # the root conftest's passphrase file


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def twin(run_cli, home: Path) -> Path:  # type: ignore[no-untyped-def]
    """An hour of a strap (hr) and of an EDA band, with the frames they fed."""
    assert run_cli("init").exit_code == 0
    with TwinStore.open(home, Secret.passphrase(PASS)) as s:
        t = T0 + np.arange(3600.0)
        s.append_samples(SampleBatch.build("strap", ["hr"], t, np.full((3600, 1), 60.0)))
        s.append_samples(SampleBatch.build("band", ["eda"], t, np.full((3600, 1), 2.0)))
        frames = []
        for ft in T0 + 5.0 * np.arange(1, 721):
            v = np.full(len(NAMES), np.nan)
            v[INDEX["hr"]], v[INDEX["eda_tonic"]] = 60.0, 2.0
            q = np.where(np.isfinite(v), 1.0, 0.0)
            frames.append(FeatureFrame(float(ft), v, q, np.zeros(len(NAMES), bool),
                                       SCHEMA_VERSION))
        s.append_frames(frames)
        s.commit()
    return home


def test_forget_stream_reports_and_removes_the_values_it_fed(  # type: ignore[no-untyped-def]
    twin: Path, run_cli
) -> None:
    result = run_cli("forget", "--stream", "band", "--yes")
    assert result.exit_code == 0, result.output
    assert "shredded from 720 frames" in result.output
    with TwinStore.open(twin, Secret.passphrase(PASS)) as s:
        frames = list(s.read_frames())
    assert len(frames) == 720
    assert not any(np.isfinite(f.values[INDEX["eda_tonic"]]) for f in frames)
    assert all(f.values[INDEX["hr"]] == 60.0 for f in frames)
    report = json.loads(run_cli("forget", "--stream", "strap", "--yes", "--json").stdout)
    assert report["frames_shredded"] == 720
    assert report["frames_deleted"] == 720  # nothing left in them
    assert json.loads(run_cli("verify", "--json").stdout)["ok"] is True
