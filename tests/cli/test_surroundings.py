"""Room climate and air quality through the real CLI: a twin holding a room sensor's
``.climate`` stream and a particulate sensor's ``.air`` stream (written as the daemon writes
them: the real store and feature pipeline), then ``timeline`` and ``status`` show them; the
room's temperature never shows up as skin temperature."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import ENVIRONMENT, NAMES
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MINUTES = 5


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _fill(home: Path, passphrase_file: Path) -> None:
    """What the daemon stores from a BTHome CO2 monitor (a reading every 30 s, units as the
    BLE source leaves them) and an SDS011 (1 Hz)."""
    tr = T0 + 30.0 * np.arange(MINUTES * 2)
    room = SampleBatch.build(
        "bedroom.climate", ("temp", "humidity", "pressure", "co2", "battery", "rssi"), tr,
        np.column_stack([24.0 + 0.01 * np.arange(tr.size), np.full(tr.size, 58.5),
                         np.full(tr.size, 1003.2), 900.0 + 10 * np.arange(tr.size),
                         np.full(tr.size, 80.0), np.full(tr.size, -70.0)]),
        meta={"profile": "bthome"})
    ta = T0 + np.arange(MINUTES * 60, dtype=float)
    air = SampleBatch(
        "bedroom.air", ("pm2_5", "pm10"), ("µg/m³", "µg/m³"), ta,
        np.column_stack([np.full(ta.size, 12.0), np.full(ta.size, 20.0)]))
    pipe = FeaturePipeline(lateness_s=MINUTES * 60.0)
    frames = pipe.push(room) + pipe.push(air) + pipe.flush()
    secret = Secret.passphrase(passphrase_file.read_text().strip())
    with TwinStore.open(home, secret) as store:
        store.append_samples(room)
        store.append_samples(air)
        store.append_frames(frames)
        store.commit()


def test_room_and_air_streams_show_in_timeline_and_status(  # type: ignore[no-untyped-def]
    run_cli, home: Path, passphrase_file: Path
) -> None:
    assert run_cli("init").exit_code == 0
    _fill(home, passphrase_file)

    timeline = json.loads(run_cli("timeline", "--json").output)
    assert timeline and set(timeline[0]["features"]) == set(NAMES)
    late = [f for f in timeline if f["t"] > T0 + 60]
    assert late
    for f in late:
        feats, quality = f["features"], f["quality"]
        assert 24.0 <= feats["ambient_temp"] <= 24.1
        assert feats["humidity"] == 58.5 and feats["pressure"] == 1003.2
        assert 900 <= feats["co2"] <= 990
        assert feats["pm2_5"] == 12 and feats["pm10"] == 20
        assert all(quality[n] == 1.0 for n in ENVIRONMENT if n not in ("place", "home_distance"))
        assert feats["skin_temp"] is None and quality["skin_temp"] == 0  # a room is not skin
        assert feats["place"] is None  # no location here

    table = run_cli("timeline", "--last", "3").output
    assert "ambient_temp" in table and "co2" in table and "pm2_5" in table
    assert "ppm" in table and "hPa" in table
    assert "skin_temp" not in table.splitlines()[0]  # no column: nothing usable
    rows = list(csv.reader(io.StringIO(run_cli("timeline", "--csv").output)))
    assert {"ambient_temp", "co2", "pm10", "place", "home_distance"} <= set(rows[0])

    status = json.loads(run_cli("status", "--json").output)
    streams = {s["name"]: s for s in status["store"]["streams"]}
    assert streams["bedroom.climate"]["samples"] == MINUTES * 2
    assert streams["bedroom.air"]["samples"] == MINUTES * 60

