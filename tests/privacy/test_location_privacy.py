"""Location never reaches the uplink: no metric of it, no consent to it, no release of it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.config import Config, SyncConfig
from edgetwin.errors import PrivacyRefused
from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.privacy import release as release_mod
from edgetwin.privacy.consent import grant, list_consents
from edgetwin.privacy.metrics import METRICS, Metric, get_metric, is_location
from edgetwin.privacy.release import FIELDS, ForgedRelease
from edgetwin.privacy.summaries import usable_values
from edgetwin.sync import outbox
from edgetwin.sync.service import drain_outbox, release_due
from edgetwin.sync.signing import load_or_create
from edgetwin.sync.target import parse_target, save_target
from edgetwin.types import FeatureFrame, SampleBatch
from tests.sync.helpers import DAY, T0, make_twin, start_collector, write_days

LOCATION_METRICS = ("place", "place_share", "home_distance_mean", "homedist", "lat_mean",
                    "lon", "location", "gps_time_away", "distance_from_home")
NOW = T0 + 3 * DAY + 3600
# values nobody would produce by chance: a leak of any one is recognisable in a payload
LAT, LON = 45.76012345678, 4.84193456789


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Any]:
    store = make_twin(tmp_path / "home")
    yield store
    store.close()


def test_location_catalogue_has_no_metric_about_location() -> None:
    assert METRICS
    for name, metric in METRICS.items():
        assert not is_location(name) and not is_location(metric.feature)
    for feature in ("place", "home_distance"):
        assert all(m.feature != feature for m in METRICS.values())


def test_location_metric_cannot_even_be_built() -> None:
    with pytest.raises(PrivacyRefused, match="never leaves this device"):
        Metric("place_share", "place", "1", "mean", (0.0, 2.0), "")
    with pytest.raises(PrivacyRefused, match="derived from location"):
        Metric("away_km", "home_distance", "km", "mean", (0.0, 100.0), "")


@pytest.mark.parametrize("name", LOCATION_METRICS)
def test_location_consent_is_refused_with_a_precise_error(twin: Any, name: str) -> None:
    with pytest.raises(PrivacyRefused) as err:
        grant(twin, name, "day", T0)
    assert err.value.exit_code == 5
    assert f"{name!r} is derived from location" in err.value.message
    assert "never leaves this device" in err.value.message
    with pytest.raises(PrivacyRefused):
        get_metric(name)
    assert twin.list_records("consent") == {}  # nothing was stored
    assert all(not is_location(c.metric) for c in list_consents(twin))


def test_location_consent_refused_at_the_cli(
    run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    assert run_cli("init").exit_code == 0
    result = run_cli("consent", "grant", "home_distance_mean")
    assert result.exit_code == 5, result.output
    assert "derived from location" in result.output
    listed = run_cli("--json", "consent", "list")
    assert not any(is_location(c["metric"]) for c in json.loads(listed.output))


def test_location_release_cannot_be_minted_or_readmitted() -> None:
    genuine = {
        "schema": release_mod.RELEASE_SCHEMA, "id": "x" * 32, "metric": "hr_mean",
        "unit": "bpm", "period": "day", "period_start": T0, "period_end": T0 + DAY,
        "value": 70.0, "mechanism": release_mod.MECHANISM, "epsilon": 0.5, "scale": 120.0,
        "sensitivity": 60.0, "lower": 50.0, "upper": 110.0, "created": T0 + DAY,
        "library": "opendp",
    }
    assert release_mod.readmit(dict(genuine)).metric == "hr_mean"
    for metric in ("place_share", "home_distance_mean"):
        with pytest.raises(ForgedRelease, match="never leaves this device"):
            release_mod.readmit({**genuine, "metric": metric})


def test_location_usable_values_hold_no_location_feature() -> None:
    values = np.arange(len(NAMES), dtype=float) + 1.0
    frame = FeatureFrame(t=T0 + 5, values=values, quality=np.ones(len(NAMES)),
                         imputed=np.zeros(len(NAMES), dtype=bool), schema_version=SCHEMA_VERSION)
    out = usable_values([frame], T0, T0 + 10)
    assert "hr" in out and out["hr"].size == 1
    assert not any(is_location(name) for name in out)
    if "place" in INDEX:  # feature schema v2: the columns exist and are still left out
        assert "place" not in out and "home_distance" not in out


def test_location_sync_run_payloads_hold_nothing_of_it(tmp_path: Path, twin: Any) -> None:
    """Every catalogue metric consented, location stored beside it: a sync run uploads
    releases of catalogue metrics only, and no location value is in any byte sent."""
    written = write_days(twin, T0, 3)
    secret = _write_location(twin, 3)
    for name in METRICS:
        grant(twin, name, "day", T0)
    for name in LOCATION_METRICS:
        with pytest.raises(PrivacyRefused):
            grant(twin, name, "day", T0)
    cfg = Config(sync=SyncConfig(timeout_s=3))
    report = release_due(twin, cfg, NOW)
    assert report.released and not any(is_location(r.metric) for r in report.released)
    key = load_or_create(twin)
    running = start_collector(tmp_path / "c.db")
    running.collector.enroll(key.public_b64)
    try:
        save_target(twin, parse_target(url=f"http://127.0.0.1:{running.port}/",
                                       allow_insecure_loopback=True))
        sent = drain_outbox(twin, cfg, NOW).sent
    finally:
        running.stop()
        running.collector.close()
    captured = [body for body, _ in running.received]
    assert sent == len(captured) == len(outbox.entries(twin)) > 0
    blob = b"\n".join(captured)
    payload_text = b"".join(json.loads(b)["payload"].encode() for b in captured)
    for word in (b"place", b"home", b"homedist", b"lat", b"lon", b"location", b"gps"):
        assert re.search(rb"(?<![a-z])" + word + rb"(?![a-z])", payload_text) is None, word
    for v in secret:
        token = re.escape(repr(v).encode())
        assert re.search(rb"(?<![0-9.eE+-])" + token + rb"(?![0-9])", blob) is None, v
    for body in captured:
        payload = json.loads(json.loads(body)["payload"])
        assert set(payload) == set(FIELDS)
        assert payload["metric"] in METRICS
    assert written["frames"]


def _write_location(store: Any, days: int) -> list[float]:
    """A gps.location stream (exact-looking fixes) and, with schema v2, place features."""
    rng = np.random.default_rng(7)
    secret: list[float] = []
    for d in range(days):
        t = T0 + d * DAY + np.arange(60.0, DAY, 600.0)
        lat = LAT + rng.uniform(0, 1e-4, t.size)
        lon = LON + rng.uniform(0, 1e-4, t.size)
        place = rng.integers(0, 3, t.size).astype(float)
        dist = rng.uniform(0.5, 90.0, t.size)
        store.append_samples(SampleBatch.build(
            "gps.location", ["lat", "lon", "place", "homedist"], t,
            np.column_stack([lat, lon, place, dist]), units=["deg", "deg", "code", "km"]))
        secret.extend([*lat.tolist(), *lon.tolist(), *dist.tolist()])
        if "place" in INDEX:
            frames = []
            for i in range(t.size):
                values = np.full(len(NAMES), np.nan)
                values[INDEX["place"]] = place[i]
                values[INDEX["home_distance"]] = dist[i]
                frames.append(FeatureFrame(
                    t=float(t[i]) + 1.0, values=values, quality=np.ones(len(NAMES)),
                    imputed=np.zeros(len(NAMES), dtype=bool), schema_version=SCHEMA_VERSION))
            store.append_frames(frames)
    store.commit()
    return secret
