"""Export then import: the restored twin holds what the original held, under new keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgetwin.bundle import export_bundle, import_bundle, unpack_bundle
from edgetwin.bundle.age import load_identities
from edgetwin.errors import WrongKey
from edgetwin.store import Secret, TwinStore
from tests.bundle.conftest import PASS, AgeKey, Twin


def _samples(store: TwinStore, stream: str) -> tuple[np.ndarray, np.ndarray]:
    batches = list(store.read_samples(stream))
    return np.concatenate([b.t for b in batches]), np.concatenate([b.values for b in batches])


def test_export_import_restores_every_part(twin: Twin, bundle: Path, key: AgeKey,
                                           tmp_path: Path) -> None:
    home = tmp_path / "restored"
    report = import_bundle(bundle, home, identities=load_identities(key.path),
                           secret=Secret.passphrase("a new local passphrase"))
    assert report.samples == len(twin.eeg) + len(twin.rr) + len(twin.nirs)
    with pytest.raises(WrongKey):
        TwinStore.open(home, Secret.passphrase(PASS))  # new local keys, not the old ones
    with TwinStore.open(home, Secret.passphrase("a new local passphrase")) as store, \
            twin.open() as src:
        assert store.twin_id != src.twin_id
        assert {s.name: s.channels for s in store.streams()} == {
            s.name: s.channels for s in src.streams()
        }
        # EEG went through EDF+: 16-bit over each channel's range, timestamps on the grid
        t, v = _samples(store, "muse.eeg")
        np.testing.assert_array_equal(t, twin.eeg_t)  # exact: times.npy beside the EDF
        span = np.nanmax(twin.eeg, axis=0) - np.nanmin(twin.eeg, axis=0)
        assert np.isnan(v[100, 2])
        err = np.abs(np.nan_to_num(v - twin.eeg))
        assert (err.max(axis=0) <= span / 65533).all()
        # RR went through CSV and fNIRS through SNIRF: exact
        t, v = _samples(store, "polar.rr")
        np.testing.assert_array_equal(t, twin.rr_t)
        np.testing.assert_array_equal(v, twin.rr)
        t, v = _samples(store, "nirs")
        np.testing.assert_allclose(t, twin.nirs_t, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(v, twin.nirs)
        assert store.streams()[1].meta == {"distance_cm": 3.0}
        frames = list(store.read_frames())
        assert [f.t for f in frames] == [f.t for f in twin.frames]
        for got, want in zip(frames, twin.frames, strict=True):
            np.testing.assert_array_equal(got.values, want.values)
            np.testing.assert_array_equal(got.quality, want.quality)
            np.testing.assert_array_equal(got.imputed, want.imputed)
        assert store.read_predictions() == sorted(twin.preds, key=lambda p: p.t)
        assert store.list_records("consent") == {"hr": {"granted": True, "period": "day"}}
        assert store.list_records("privacy_ledger")["lifetime"] == {"spent": 0.5}
        assert "polar" in store.list_records("pairing")
        assert store.list_records("device") == {}  # the device signing key stays behind
        imported = store.list_records("imported_audit")
        assert [e["event"] for e in imported.values()] == [
            e["event"] for e in src.audit_entries()[: len(imported)]
        ]
        events = [e["event"] for e in store.audit_entries()]
        assert events == ["init", "import", "unlock_failed"]  # the old passphrase was tried
        assert store.audit_entries()[1]["details"]["bundle_id"] == report.bundle_id
        assert src.audit_entries()[-1]["event"] == "export"
        assert store.verify().ok
    assert (home / "config.toml").read_text() == "# test config\n"
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    assert not [p for p in tmp_path.iterdir() if ".import-" in p.name]


def test_manifest_describes_streams_models_and_members(twin: Twin, bundle: Path, key: AgeKey,
                                                       tmp_path: Path) -> None:
    dest = tmp_path / "unpacked"
    dest.mkdir()
    manifest = unpack_bundle(bundle, dest, identities=load_identities(key.path))
    assert manifest["format_version"] == 2
    with twin.open() as store:
        assert manifest["twin_id"] == store.twin_id
    formats = {s["name"]: (s["format"], s.get("member")) for s in manifest["streams"]}
    assert formats["polar.rr"] == ("csv", "signals/polar.rr.csv")
    assert formats["nirs"] == ("snirf", "signals/nirs.snirf")
    eeg = next(s for s in manifest["streams"] if s["name"] == "muse.eeg")
    assert eeg["format"] == "edf"
    # the 10 s dropout is a filled, annotated gap inside one recording, not a second file
    assert [(r["member"], r["samples"], r["gaps"]) for r in eeg["recordings"]] == [
        ("signals/muse.eeg.edf", len(twin.eeg), 1)]
    assert eeg["recordings"][0]["timestamps"] == "signals/muse.eeg.times.npy"
    assert eeg["units"] == ["uV"] * 4
    assert manifest["models"] == [{"id": "lstm-attn/int8/0123abcd", "files": []}]
    assert manifest["range"]["first_t"] == pytest.approx(twin.eeg_t[0])
    on_disk = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(manifest["members"])
    assert "records/device.json" not in on_disk
    assert manifest["records_left_out"] == ["device"]
    lines = (dest / "predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["model"] == "lstm-attn/int8/0123abcd"
    header = (dest / "timeline.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "timestamp"
    assert header[1] == "hr"


def test_time_range_and_stream_selection(twin: Twin, key: AgeKey, tmp_path: Path) -> None:
    out = tmp_path / "slice.age"
    t0, t1 = float(twin.eeg_t[0]) + 10.0, float(twin.eeg_t[0]) + 40.0
    with twin.open() as store:
        report = export_bundle(store, out, recipients=[key.public], t0=t0, t1=t1,
                               streams=["muse.eeg"])
    assert [s["name"] for s in report.streams] == ["muse.eeg"]
    assert report.streams[0]["samples"] == 30 * 250 + 1
    home = tmp_path / "slice"
    import_bundle(out, home, identities=load_identities(key.path), secret=Secret.passphrase("x"))
    with TwinStore.open(home, Secret.passphrase("x")) as store:
        t, _ = _samples(store, "muse.eeg")
        assert t.min() >= t0 - 1e-9
        assert t.max() <= t1 + 1e-9
        assert all(t0 <= f.t <= t1 for f in store.read_frames())
        assert all(t0 <= p.t <= t1 for p in store.read_predictions())


def test_passphrase_bundle_round_trip(twin: Twin, tmp_path: Path) -> None:
    out = tmp_path / "pass.age"
    with twin.open() as store:
        report = export_bundle(store, out, passphrase="bundle secret")
    assert report.mode == "passphrase"
    home = tmp_path / "restored"
    import_bundle(out, home, passphrase="bundle secret", secret=Secret.passphrase("x"))
    with TwinStore.open(home, Secret.passphrase("x")) as store:
        _t, v = _samples(store, "polar.rr")
        np.testing.assert_array_equal(v, twin.rr)


def test_staging_left_by_a_killed_export_or_import_is_removed(twin: Twin, key: AgeKey,
                                                              tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    left = twin.home / f".export-{pid}-abc"
    left.mkdir()
    (left / "timeline.csv").write_text("plaintext")
    live = twin.home / f".export-{os.getpid()}-xyz"  # another export still running
    live.mkdir()
    stale_import = tmp_path / f".restored.import-{pid}-abc"
    stale_import.mkdir()
    with twin.open() as store:
        export_bundle(store, tmp_path / "b.age", recipients=[key.public])
    import_bundle(tmp_path / "b.age", tmp_path / "restored",
                  identities=load_identities(key.path), secret=Secret.passphrase("x"))
    assert not left.exists()
    assert live.exists()
    assert not stale_import.exists()
