"""The simulated bedroom's climate and air streams in a bundle: CSV (exact times and values,
though their rate is regular), described in the manifest, and back after import."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from edgetwin.bundle import export_bundle, import_bundle, unpack_bundle
from edgetwin.bundle.age import load_identities
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import ENVIRONMENT, INDEX
from edgetwin.sources.simulator import SimulatedPerson, simulate
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch
from tests.bundle.conftest import AgeKey

T0 = 1_767_225_600.0


def test_room_streams_travel_as_described_csv(key: AgeKey, tmp_path: Path) -> None:
    batches = list(simulate(SimulatedPerson.from_seed(8), T0, 300.0, 10.0,
                            modalities=("vitals", "climate", "air"), dropouts=False))
    pipe = FeaturePipeline()
    frames = [f for b in batches for f in pipe.push(b)] + pipe.flush()
    secret = Secret.passphrase("room")
    out = tmp_path / "room.age"
    with TwinStore.create(tmp_path / "src", secret) as src:
        for b in batches:
            src.append_samples(b)
        src.append_frames(frames)
        src.commit()
        export_bundle(src, out, recipients=[key.public])
    dest = tmp_path / "unpacked"
    dest.mkdir()
    manifest = unpack_bundle(out, dest, identities=load_identities(key.path))
    docs = {s["name"]: s for s in manifest["streams"]}
    for name, unit in (("sim.climate", "ppm"), ("sim.air", "µg/m³")):
        doc = docs[name]
        assert doc["format"] == "csv", doc["why"]
        assert doc["why"] == "room climate, air quality or location readings"
        assert unit in doc["units"] and doc["surroundings"].startswith(
            "room climate" if name.endswith("climate") else "air quality")
    assert docs["sim.vitals"]["format"] == "edf"  # the body's regular streams are unchanged
    assert set(ENVIRONMENT) <= set(manifest["timeline"]["features"])
    header = (dest / "timeline.csv").read_text().splitlines()[0].split(",")
    assert "co2" in header and "pm2_5_quality" in header
    readme = (dest / "README.txt").read_text()
    assert "sim.climate: CSV (room climate, air quality or location readings)" in readme

    import_bundle(out, tmp_path / "dst", identities=load_identities(key.path), secret=secret)
    with TwinStore.open(tmp_path / "dst", secret) as dst:
        for name in ("sim.climate", "sim.air"):
            got = list(dst.read_samples(name))
            want = [b for b in batches if b.stream == name]
            np.testing.assert_array_equal(np.concatenate([b.t for b in got]),
                                          np.concatenate([b.t for b in want]))
            np.testing.assert_array_equal(np.concatenate([b.values for b in got]),
                                          np.concatenate([b.values for b in want]))
        back = list(dst.read_frames())
    assert len(back) == len(frames)
    co2 = [f.values[INDEX["co2"]] for f in back]
    assert np.isfinite(co2).all() and all(400 < c < 3000 for c in co2)


def test_place_and_home_distance_leave_only_with_location(key: AgeKey, tmp_path: Path) -> None:
    """The timeline's location features go into a bundle only when asked for."""
    t = T0 + np.arange(0.0, 120.0)
    loc = SampleBatch.build("phone.location", ("place", "homedist"), t,
                            np.column_stack([np.full(t.size, 1.0), np.full(t.size, 4.25)]))
    pipe = FeaturePipeline()
    frames = pipe.push(loc) + pipe.flush()
    assert all(f.values[INDEX["home_distance"]] == 4.25 for f in frames)
    secret = Secret.passphrase("where")
    with TwinStore.create(tmp_path / "src", secret) as src:
        src.append_frames(frames)
        src.commit()
        for with_location in (False, True):
            out = tmp_path / f"loc-{with_location}.age"
            export_bundle(src, out, recipients=[key.public], streams=[],
                          with_location=with_location)
            dest = tmp_path / f"unpacked-{with_location}"
            dest.mkdir()
            manifest = unpack_bundle(out, dest, identities=load_identities(key.path))
            rows = list(csv.DictReader(io.StringIO((dest / "timeline.csv").read_text())))
            assert len(rows) == len(frames)
            if with_location:
                assert manifest["timeline"]["withheld"] == []
                assert {r["home_distance"] for r in rows} == {"4.25"}
                assert {r["place"] for r in rows} == {"1.0"}
            else:
                assert manifest["timeline"]["withheld"] == ["place", "home_distance"]
                assert {r["place"] for r in rows} == {r["home_distance"] for r in rows} == {""}
                assert {r["place_quality"] for r in rows} == {"0.0"}
                assert b"4.25" not in (dest / "timeline.csv").read_bytes()
