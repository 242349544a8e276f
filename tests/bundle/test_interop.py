"""Interop both ways with the standard tools: the real age CLI, age-keygen, tar, and MNE's
EDF and SNIRF readers."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetwin.bundle import export_bundle, import_bundle
from edgetwin.bundle.age import load_identities
from edgetwin.store import Secret, TwinStore
from tests.bundle.conftest import EEG, FNIRS, AgeKey, Twin

AGE_TTY = Path(__file__).with_name("age_tty.py")


def _age() -> str:
    exe = shutil.which("age")
    assert exe, "age is missing: scripts/bootstrap --dev installs the Debian package 'age'"
    return exe


def _age_with_passphrase(passphrase: str, *args: str, confirm: bool = False) -> None:
    proc = subprocess.run(
        [sys.executable, str(AGE_TTY), passphrase, "1" if confirm else "0", _age(), *args],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _untar(plain: Path, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(plain), "-C", str(dest)], check=True)


def test_age_cli_and_tar_open_a_recipient_bundle(twin: Twin, bundle: Path, key: AgeKey,
                                                 tmp_path: Path) -> None:
    plain = tmp_path / "bundle.tar"
    subprocess.run([_age(), "-d", "-i", str(key.path), "-o", str(plain), str(bundle)], check=True)
    listing = subprocess.run(["tar", "-tvf", str(plain)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    assert listing[0].endswith("manifest.json")
    assert all(line.startswith("-") for line in listing)  # regular files only
    dest = tmp_path / "x"
    _untar(plain, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for name, entry in manifest["members"].items():
        data = (dest / name).read_bytes()
        assert len(data) == entry["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]

    import mne

    raw = mne.io.read_raw_edf(dest / "signals" / "muse.eeg.edf", verbose="error")
    assert raw.ch_names == list(EEG)
    assert raw.info["sfreq"] == 250.0
    times = np.load(dest / "signals" / "muse.eeg.times.npy")
    real = np.isfinite(times)
    # one file for the whole recording: the 10 s dropout is filler, annotated for MNE
    assert real.sum() == len(twin.eeg)
    np.testing.assert_array_equal(times[real], twin.eeg_t)
    assert raw.n_times >= len(times)
    assert raw.info["meas_date"].timestamp() == np.floor(twin.eeg_t[0])
    k = np.flatnonzero(real)
    np.testing.assert_allclose(raw.info["meas_date"].timestamp() + k / 250.0, twin.eeg_t,
                               rtol=0, atol=0.5 / 250)
    gaps = [(a["onset"], a["duration"]) for a in raw.annotations
            if a["description"] == "BAD_ACQ_SKIP"]
    assert gaps == [(pytest.approx(60.0), pytest.approx(10.0))]
    got = raw.get_data()[:, k] * 1e6  # MNE reads uV into volts
    span = np.nanmax(twin.eeg, axis=0) - np.nanmin(twin.eeg, axis=0)
    want = twin.eeg.T
    ok = np.isfinite(want)
    step = np.broadcast_to((span / 65533 * 1.01)[:, None], want.shape)
    assert (np.abs(got - want)[ok] <= step[ok]).all()
    nirs = mne.io.read_raw_snirf(dest / "signals" / "nirs.snirf", verbose="error")
    assert len(nirs.ch_names) == len(FNIRS)
    assert nirs.n_times == len(twin.nirs)
    np.testing.assert_allclose(nirs.get_data().T, twin.nirs)
    rr = (dest / "signals" / "polar.rr.csv").read_text().splitlines()
    assert rr[0] == "timestamp,rr"
    assert float(rr[1].split(",")[0]) == twin.rr_t[0]


def test_bundle_reencrypted_by_age_cli_imports_with_age_keygen_identity(
    bundle: Path, key: AgeKey, other_key: AgeKey, tmp_path: Path
) -> None:
    plain = tmp_path / "bundle.tar"
    subprocess.run([_age(), "-d", "-i", str(key.path), "-o", str(plain), str(bundle)], check=True)
    by_age = tmp_path / "by-age.age"
    subprocess.run([_age(), "-r", other_key.public, "-o", str(by_age), str(plain)], check=True)
    home = tmp_path / "restored"
    report = import_bundle(by_age, home, identities=load_identities(other_key.path),
                           secret=Secret.passphrase("x"))
    assert report.samples > 0
    with TwinStore.open(home, Secret.passphrase("x")) as store:
        assert {s.name for s in store.streams()} == {"muse.eeg", "polar.rr", "nirs"}


def test_passphrase_bundles_both_ways_with_age_cli(twin: Twin, tmp_path: Path) -> None:
    out = tmp_path / "pass.age"
    with twin.open() as store:
        export_bundle(store, out, passphrase="tea for two", streams=["polar.rr"])
    plain = tmp_path / "pass.tar"
    _age_with_passphrase("tea for two", "-d", "-o", str(plain), str(out))
    dest = tmp_path / "x"
    _untar(plain, dest)
    assert (dest / "signals" / "polar.rr.csv").is_file()
    by_age = tmp_path / "by-age.age"
    _age_with_passphrase("two for tea", "-p", "-o", str(by_age), str(plain), confirm=True)
    home = tmp_path / "restored"
    import_bundle(by_age, home, passphrase="two for tea", secret=Secret.passphrase("x"))
    with TwinStore.open(home, Secret.passphrase("x")) as store:
        assert [s.name for s in store.streams()] == ["polar.rr"]
