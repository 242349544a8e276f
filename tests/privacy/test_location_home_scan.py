"""A real daemon reads a real gpsd (fed by gpsfake): nothing precise lands anywhere in the home.

One twin, one run of the recorded week (tests/sources/data/gps_track.nmea), then:
the stored stream is coarse and ``place`` formed; a byte scan of every file under
the twin home (store, WAL, config, the daemon's own log, exported bundles) finds
no exact coordinate in any encoding; bundles leave location out unless
``--with-location``; ``forget --stream`` shreds it and the learned places follow.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.sources import gps_track
from tests.sources.gpsd_harness import GpsFake, free_port, needs_gpsd

pytestmark = needs_gpsd
EXE = [sys.executable, "-m", "edgetwin"]
TRACK = gps_track.track()


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=180,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"edgetwin {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def _status(env: dict[str, str]) -> dict[str, Any]:
    result = _cli(env, "status", "--json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _gpsd_source(status: dict[str, Any]) -> dict[str, Any]:
    return next((s for s in status.get("sources", []) if s["name"] == "gps"), {})


def _wait(pred: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The twin after the daemon has stored the whole recorded week from gpsd."""
    root = tmp_path_factory.mktemp("loc")
    home = root / "home"
    pw = root / "pw"
    pw.write_text("location scan passphrase\n")
    pw.chmod(0o600)
    env = {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw),
           "EDGETWIN_KDF_PROFILE": "test", "TZ": "UTC"}
    _cli(env, "init")
    (home / "config.toml").write_text(
        "[daemon]\nflush_interval_s = 0.2\n[inference]\nenabled = false\n"
        "[dashboard]\nenabled = false\n[location]\nprecision_m = 1000.0\n"
        # the track has fixed dates (November 2026): kept whatever today's date, as retention
        # runs a few seconds after the start
        "[retention]\nraw_days = 0\n")
    port = free_port()
    fake = GpsFake(gps_track.DATA, port)
    log = (home / "daemon.log").open("wb")  # the daemon's log is part of the home we scan
    daemon = None
    try:
        paired = json.loads(_cli(env, "pair", "add", "gpsd", "--port", str(port), "--as", "gps",
                                 "--json").stdout)
        assert paired["stream"] == "gps.location" and paired["gpsd"]["release"]
        daemon = subprocess.Popen([*EXE, "-v", "daemon", "run"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        _wait(lambda: _gpsd_source(_status(env)).get("state") == "streaming")
        time.sleep(0.3)
        fake.release()
        _wait(lambda: _gpsd_source(_status(env)).get("samples", 0) >= 0.8 * len(TRACK))
        time.sleep(2.0)  # the last fixes of the week
        status = _status(env)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
        log.close()
        fake.stop()
    return {"env": env, "home": home, "root": root, "status": status, "port": port}


def test_location_daemon_stores_the_week_coarse_with_places(twin: dict[str, Any]) -> None:
    src = _gpsd_source(twin["status"])
    assert src["kind"] == "gpsd" and src["precision_m"] == 1000.0 and src["exact"] is False
    assert src["home_learned"] is True and src["regular_places"] >= 1
    assert src["bad_packets"] == 0
    from edgetwin.store import Secret, TwinStore

    store = TwinStore.open(twin["home"], Secret.passphrase("location scan passphrase"))
    try:
        (info,) = [s for s in store.streams() if s.name == "gps.location"]
        assert info.channels == ("lat", "lon", "place", "homedist")
        rows = [(float(t), *map(float, v)) for b in store.read_samples("gps.location")
                for t, v in zip(b.t, b.values, strict=True)]
        memory = store.get_record("place", "gps")
    finally:
        store.close()
    assert len(rows) >= 0.8 * len(TRACK)
    cells = {(lat, lon) for _, lat, lon, _, _ in rows}
    from edgetwin.sources.place import Grid

    grid = Grid(1000.0)
    assert cells <= {grid.snap(f.lat, f.lon) for f in TRACK}  # cell centres only
    at_rest = {(f.lat, f.lon) for f in TRACK if f.where != "travel"}
    assert len(at_rest) == 12 and len({grid.snap(*p) for p in at_rest}) <= 5
    assert {int(p) for *_, p, _ in rows if p == p} == {0, 1, 2}
    # the place memory is sealed in the store and holds grid cells, not positions
    assert memory is not None and memory["precision_m"] == 1000.0
    assert all(":" in key for key in memory["learner"]["cells"])


def test_location_no_exact_coordinate_anywhere_in_the_home(twin: dict[str, Any]) -> None:
    env, home = twin["env"], twin["home"]
    # bundles written into the home are scanned too (with and without location)
    _cli(env, "export", "-o", str(home / "with.age"), "--passphrase", "--with-location",
         "--bundle-passphrase-file", env["EDGETWIN_PASSPHRASE_FILE"])
    _cli(env, "export", "-o", str(home / "without.age"), "--passphrase",
         "--bundle-passphrase-file", env["EDGETWIN_PASSPHRASE_FILE"])
    patterns = _exact_patterns()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "daemon.log" and p.stat().st_size > 0 for p in files)
    assert sum(p.stat().st_size for p in files) > 50_000
    found = []
    for path in files:
        data = path.read_bytes()
        for label, pattern in patterns:
            if pattern in data:
                found.append(f"{path.relative_to(home)}: {label}")
    assert found == []
    # the scan can see what it looks for: the NMEA log itself is full of it
    nmea = gps_track.DATA.read_bytes()
    assert sum(1 for label, p in patterns if p in nmea and label.startswith("nmea")) > 10


def test_location_bundles_leave_it_out_unless_asked(twin: dict[str, Any], tmp_path: Path) -> None:
    env = twin["env"]
    pw = env["EDGETWIN_PASSPHRASE_FILE"]
    without = tmp_path / "without.age"
    with_loc = tmp_path / "with.age"
    out = json.loads(_cli(env, "export", "-o", str(without), "--passphrase",
                          "--bundle-passphrase-file", pw, "--json").stdout)
    assert "gps.location" not in [s["name"] for s in out["streams"]]
    refused = _cli(env, "export", "-o", str(tmp_path / "x.age"), "--passphrase",
                   "--bundle-passphrase-file", pw, "--streams", "gps.location", check=False)
    assert refused.returncode == 2 and "--with-location" in refused.stderr
    out = json.loads(_cli(env, "export", "-o", str(with_loc), "--passphrase", "--with-location",
                          "--bundle-passphrase-file", pw, "--json").stdout)
    assert "gps.location" in [s["name"] for s in out["streams"]]
    man_without, names_without = _manifest(without, pw)
    man_with, names_with = _manifest(with_loc, pw)
    assert man_without["location"]["included"] is False
    assert man_without["location"]["streams_left_out"] == ["gps.location"]
    assert "place" in man_without["location"]["records_left_out"]
    assert not any("location" in n for n in names_without)
    assert "records/place.json" not in names_without
    assert man_with["location"] == {"included": True, "streams_left_out": [],
                                    "records_left_out": [], "features_left_out": []}
    assert any(n.startswith("signals/") and "location" in n for n in names_with)
    assert "records/place.json" in names_with
    fhir = _cli(env, "export", "-o", str(tmp_path / "f.json"), "--format", "fhir",
                "--with-location", check=False)
    assert fhir.returncode == 2 and "--with-location goes with the twin bundle" in fhir.stderr


def test_location_forget_stream_shreds_it_and_the_learned_places(twin: dict[str, Any]) -> None:
    env = twin["env"]
    _cli(env, "forget", "--stream", "gps.location", "--yes")
    streams = [s["name"] for s in _status(env)["store"]["streams"]]
    assert "gps.location" not in streams
    from edgetwin.store import Secret, TwinStore

    def place_memory() -> Any:
        store = TwinStore.open(twin["home"], Secret.passphrase("location scan passphrase"))
        try:
            return store.get_record("place", "gps")
        finally:
            store.close()

    # the forget itself dropped the learned places (no daemon ran to cut them)
    assert place_memory() is None
    # and a daemon started afterwards, gpsd away, learns nothing back from forgotten fixes
    proc = _cli(env, "daemon", "run", "--duration", "3")
    assert proc.returncode == 0
    memory = place_memory()
    assert memory is None or memory["learner"]["cells"] == {}


def _manifest(bundle: Path, pw_file: str) -> tuple[dict[str, Any], list[str]]:
    from edgetwin.bundle import age

    blob = age.decrypt_passphrase(bundle, Path(pw_file).read_text().strip(), 1 << 30)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = tar.getnames()
        member = tar.extractfile("manifest.json")
        assert member is not None
        return json.loads(member.read()), names


def _exact_patterns() -> list[tuple[str, bytes]]:
    """Every exact position of the track in the encodings a leak would take."""
    out: list[tuple[str, bytes]] = []
    for lat, lon in sorted(gps_track.exact_positions(TRACK)):
        for name, v in (("lat", lat), ("lon", lon)):
            for digits in (4, 5, 6, 7, 9):
                out.append((f"{name} {digits} decimals", f"{v:.{digits}f}".encode()))
            out.append((f"{name} repr", repr(v).encode()))
            out.append((f"{name} float64 le", struct.pack("<d", v)))
            out.append((f"{name} float64 be", struct.pack(">d", v)))
        out.append(("nmea lat ddmm.mmmm", gps_track.nmea_forms(lat, 2).encode()))
        out.append(("nmea lon dddmm.mmmm", gps_track.nmea_forms(lon, 3).encode()))
        # float32: 4 bytes alone match random ciphertext by chance; a leak of a position
        # as float32 puts lat and lon side by side (a row) or repeats one (a column)
        for a, b in ((lat, lon), (lon, lat), (lat, lat), (lon, lon)):
            out.append(("float32 le pair", struct.pack("<ff", a, b)))
            out.append(("float32 be pair", struct.pack(">ff", a, b)))
    return out
