"""``edgetwin mark`` / ``markers``: round trip, hostile text, the running daemon's control
socket, forget, and markers in ``timeline`` and ``predictions``."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgetwin.store import Secret, TwinStore
from edgetwin.store.keys import KEYSTORE_FILE, Keystore
from edgetwin.types import MARKER_TEXT_MAX, Prediction

PASS = "correct horse battery staple"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def twin(run_cli, home: Path) -> Path:  # type: ignore[no-untyped-def]
    assert run_cli("init").exit_code == 0
    return home


def _markers(run_cli, *args: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    result = run_cli("--json", "markers", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_mark_and_markers_json_round_trip(run_cli, twin: Path) -> None:  # type: ignore[no-untyped-def]
    r1 = run_cli("--json", "mark", "coffee ☕", "--at", str(T0 + 30))
    assert r1.exit_code == 0, r1.output
    assert json.loads(r1.output) == {"t": T0 + 30, "text": "coffee ☕", "source": "cli",
                                     "via": "store"}
    assert run_cli("mark", "run start", "--at", "2026-01-01T00:10:00+00:00").exit_code == 0
    before = time.time()
    assert run_cli("mark", "now").exit_code == 0
    got = _markers(run_cli)
    assert [(m["text"], m["source"]) for m in got] == [
        ("coffee ☕", "cli"), ("run start", "cli"), ("now", "cli")]
    assert got[1]["t"] == T0 + 600
    assert got[2]["t"] >= before - 1
    assert [m["text"] for m in _markers(run_cli, "--from", str(T0 + 60), "--to",
                                        str(T0 + 3600))] == ["run start"]
    table = run_cli("markers").output
    assert "coffee ☕" in table and "run start" in table and "source" in table


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("clear\x1b[2J", "control character U+001B"),
        ("two\nlines", "U+000A"),
        ("abc\u202edcba", "U+202E"),
        ("", "marker text is empty"),
        ("   ", "marker text is empty"),
        ("x" * (MARKER_TEXT_MAX + 1), f"at most {MARKER_TEXT_MAX} are kept"),
    ],
)
def test_hostile_marker_text_is_refused_with_a_precise_error(
    run_cli, twin: Path, text: str, needle: str  # type: ignore[no-untyped-def]
) -> None:
    result = run_cli("mark", text)
    assert result.exit_code == 2
    assert needle in result.output, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output  # never echoed raw
    assert _markers(run_cli) == []


def test_control_character_position_is_named(run_cli, twin: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("mark", "ok\x07bell")
    assert result.exit_code == 2
    assert "holds the control character U+0007" in result.output
    assert "at position 3" in result.output


def test_mark_at_a_bad_time_is_refused(run_cli, twin: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("mark", "x", "--at", "yesterday-ish").exit_code == 2
    assert run_cli("mark", "x", "--at", str(time.time() + 10 * 86400)).exit_code == 2
    assert run_cli("mark", "x", "--at", "1700000000000").exit_code == 2  # milliseconds
    assert _markers(run_cli) == []


def _marker_key_ids(home: Path) -> set[int]:
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        return {int(r[0]) for r in store._conn.execute("SELECT key_id FROM marker")}


def test_forget_shreds_markers(run_cli, twin: Path) -> None:  # type: ignore[no-untyped-def]
    for i, text in enumerate(("a", "b", "c")):
        assert run_cli("mark", text, "--at", str(T0 + i)).exit_code == 0
    keys = _marker_key_ids(twin)
    assert keys and keys <= set(Keystore.load(twin / KEYSTORE_FILE).deks)
    result = run_cli("--json", "forget", "--stream", "cli", "--yes")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["keys_destroyed"] == len(keys)
    assert _markers(run_cli) == []
    assert not keys & set(Keystore.load(twin / KEYSTORE_FILE).deks)  # the keys are gone
    assert run_cli("forget", "--stream", "cli", "--yes").exit_code == 2  # nothing left of it

    assert run_cli("mark", "d", "--at", str(T0)).exit_code == 0
    keys = _marker_key_ids(twin)
    assert run_cli("forget", "--all", "--yes").exit_code == 0
    assert _markers(run_cli) == []
    assert not keys & set(Keystore.load(twin / KEYSTORE_FILE).deks)


def _write_csv(path: Path, n: int = 600) -> None:
    rows = [[f"{T0 + i:.3f}", f"{62 + 3 * np.sin(i / 30):.2f}"] for i in range(n)]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "hr"])
        w.writerows(rows)


def test_timeline_shows_markers_at_their_step(run_cli, twin: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "rec.csv"
    _write_csv(rec)
    assert run_cli("ingest", str(rec), "--stream", "strap").exit_code == 0
    assert run_cli("mark", "stood up", "--at", str(T0 + 122.5)).exit_code == 0
    frames = json.loads(run_cli("--json", "timeline").output)
    holding = [f for f in frames if f["markers"]]
    assert len(holding) == 1
    (frame,) = holding
    assert frame["markers"] == [{"t": T0 + 122.5, "text": "stood up", "source": "cli"}]
    ts = [f["t"] for f in frames]
    i = ts.index(frame["t"])
    assert ts[i - 1] < T0 + 122.5 <= ts[i]  # the step the marker happened in
    text = run_cli("timeline", "--from", str(T0 + 100), "--to", str(T0 + 150)).output
    assert "▸ stood up  [cli]" in text
    lines = text.splitlines()
    at = next(k for k, line in enumerate(lines) if "stood up" in line)
    assert time.strftime("%H:%M:%S", time.localtime(frame["t"])) in lines[at + 1]
    rows = list(csv.reader(io.StringIO(run_cli("timeline", "--csv").output)))
    assert rows[0][-1] == "markers"
    assert [r[-1] for r in rows[1:] if r[-1]] == ["stood up"]


def _pred(t: float) -> Prediction:
    return Prediction(t=t, target="hr", step_s=5.0, horizon=(60.0, 61.0),
                      band=((55.0, 65.0), (55.0, 66.0)), attention=(0.5, 0.5), imputed=(),
                      model="test")


def test_predictions_made_just_after_a_marker_say_so(run_cli, twin: Path) -> None:  # type: ignore[no-untyped-def]
    with TwinStore.open(twin, Secret.passphrase(PASS)) as store:
        store.append_predictions([_pred(T0 + k * 60.0) for k in range(20)])
        store.commit()
    assert run_cli("mark", "coffee", "--at", str(T0 + 300)).exit_code == 0
    preds = json.loads(run_cli("--json", "predictions", "--last", "20").output)
    after = {round(p["t"] - T0): p["after_marker"] for p in preds}
    assert after[240] is None  # before the marker
    assert after[300]["text"] == "coffee" and after[300]["seconds_before"] == 0
    assert after[840]["seconds_before"] == 540
    assert after[900]["seconds_before"] == 600
    assert after[960] is None  # more than 10 minutes after it
    text = run_cli("predictions", "--last", "20").output
    assert "▸ 11 forecast(s)" in text and "after the marker 'coffee' (cli" in text


def test_mark_goes_through_a_running_daemon(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    env = {**os.environ, "EDGETWIN_HOME": str(tmp_path / "home"),
           "EDGETWIN_PASSPHRASE_FILE": str(pw), "EDGETWIN_KDF_PROFILE": "test"}
    exe = [sys.executable, "-m", "edgetwin"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    assert cli("init").returncode == 0
    daemon = subprocess.Popen([*exe, "daemon", "run"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "home" / "control.sock").exists():
            assert time.monotonic() < deadline, "the daemon never opened its control socket"
            assert daemon.poll() is None, "the daemon exited"
            time.sleep(0.2)
        result = cli("--json", "mark", "via the daemon", "--at", str(T0))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["via"] == "daemon"
        bad = cli("mark", "esc\x1b")
        assert bad.returncode == 2 and "U+001B" in bad.stderr
        listed = cli("--json", "markers")  # committed by the daemon before it replied
        assert [m["text"] for m in json.loads(listed.stdout)] == ["via the daemon"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_markers_survive_export_and_import_as_csv_and_edf_annotations(tmp_path: Path) -> None:
    import pyedflib

    from edgetwin.bundle import export_bundle, import_bundle, unpack_bundle
    from edgetwin.bundle.age import load_identities
    from edgetwin.types import Marker
    from tests.bundle.conftest import T0 as B0
    from tests.bundle.conftest import age_keygen, fill_twin

    twin = fill_twin(tmp_path / "src", Secret.passphrase(PASS))
    key = age_keygen(tmp_path / "id.txt")
    marks = [
        Marker(B0 + 10.5, "eyes closed", "cli"),
        Marker(B0 + 20.25, 'tone, "loud" ≈ 90 dB — left ear, second block of the session',
               "xdf:Markers"),
        Marker(B0 + 3600.0, "after the EEG", "lsl:Events"),
    ]
    with twin.open() as store:
        store.append_markers(marks)
        store.commit()
        bundle = tmp_path / "twin.age"
        report = export_bundle(store, bundle, recipients=[key.public])
    assert report.markers == 3
    dest = tmp_path / "unpacked"
    dest.mkdir()
    manifest = unpack_bundle(bundle, dest, identities=load_identities(key.path))
    assert manifest["markers"]["count"] == 3
    with (dest / "markers.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "text", "source"]
    assert [(float(r[0]), r[1], r[2]) for r in rows[1:]] == [(m.t, m.text, m.source)
                                                            for m in marks]
    (rec,) = next(s for s in manifest["streams"] if s["name"] == "muse.eeg")["recordings"]
    reader = pyedflib.EdfReader(str(dest / rec["member"]))
    try:
        onsets, _durations, texts = reader.readAnnotations()
    finally:
        reader.close()
    notes = {str(x): float(o) for o, x in zip(onsets, texts, strict=True)}
    assert notes["eyes closed"] == pytest.approx(B0 + 10.5 - rec["start"], abs=1e-3)
    cut = next(x for x in notes if x.startswith("tone"))  # 40 bytes of UTF-8, marked as cut
    assert cut.endswith("...") and len(cut.encode()) <= 40
    assert notes[cut] == pytest.approx(B0 + 20.25 - rec["start"], abs=1e-3)
    assert "after the EEG" not in notes  # outside the recording: in markers.csv only
    import h5py

    nirs = next(s for s in manifest["streams"] if s["name"] == "nirs")
    with h5py.File(dest / nirs["member"], "r") as f:
        stims = {f[f"nirs/{g}/name"][()].decode(): f[f"nirs/{g}/data"][()]
                 for g in f["nirs"] if g.startswith("stim")}
    assert set(stims) == {"eyes closed", marks[1].text}  # within the fNIRS span
    assert stims["eyes closed"].tolist() == [[pytest.approx(B0 + 10.5 - nirs["t_ref"]), 0, 1]]
    # and what MNE makes of both files: annotations at the markers' times
    import mne

    raw = mne.io.read_raw_snirf(dest / nirs["member"], verbose="error")
    assert "eyes closed" in raw.annotations.description
    onset = raw.annotations.onset[list(raw.annotations.description).index("eyes closed")]
    assert onset == pytest.approx(B0 + 10.5 - nirs["t_ref"], abs=0.2)
    raw = mne.io.read_raw_edf(dest / rec["member"], verbose="error")
    assert "eyes closed" in raw.annotations.description

    home = tmp_path / "restored"
    got = import_bundle(bundle, home, identities=load_identities(key.path),
                        secret=Secret.passphrase("another passphrase"))
    assert got.markers == 3
    with TwinStore.open(home, Secret.passphrase("another passphrase")) as store:
        assert store.read_markers() == marks
        assert store.verify().ok
    # merged back into its own twin: nothing doubled
    with twin.open() as store:
        merged = import_bundle(bundle, twin.home, identities=load_identities(key.path),
                               target=store, accept_settings=True)
        assert merged.markers == 0 and merged.skipped["markers"] == 3
        assert store.read_markers() == marks


def test_a_brainflow_marker_channel_becomes_markers_on_ingest(
    run_cli, twin: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from edgetwin.sources.brainflow import _load_native, preset_layout, resolve_board
    from tests.sources.bf_helpers import board_shaped

    data = board_shaped("SYNTHETIC_BOARD", 0, 4.0, t0=T0)
    layout = preset_layout(resolve_board("SYNTHETIC_BOARD"), 0)
    row = layout.rows[layout.channels.index("marker")]
    data[row, 100] = 3.0  # what BoardShim.insert_marker(3) leaves in the stream
    data[row, 700] = 2.5
    path = tmp_path / "session.csv"
    _load_native().DataFilter.write_file(data, str(path), "w")
    result = run_cli("--json", "ingest", str(path), "--stream", "bf", "--format", "brainflow")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["markers"] == 2
    t = data[layout.timestamp_row]
    assert _markers(run_cli) == [
        {"t": float(t[100]), "text": "3", "source": "brainflow:SYNTHETIC_BOARD"},
        {"t": float(t[700]), "text": "2.5", "source": "brainflow:SYNTHETIC_BOARD"},
    ]
