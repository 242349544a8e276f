"""The real daemon across a UTC midnight, the one event of every day that a soak of a few
hours never meets: libfaketime moves the clock of the daemon's process (and only of it) to
just before one, so per-day data keys, chunk days and the feature steps roll over with the
real simulator, writer thread and store."""

from __future__ import annotations

import contextlib
import glob
import math
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgetwin.store import Secret, TwinStore

from .conftest import PASSPHRASE
from .test_daemon_e2e import EXE, cli, wait_status

DAY_S = 86_400
BEFORE_S = 25  # the daemon starts this long before midnight (it is up in ~3 s)
PAST_S = 12  # and is stopped (SIGTERM: all of it committed) once it has a frame this late


@pytest.fixture
def realtime_twin(env: dict[str, str]) -> dict[str, str]:
    cli(env, "init")
    cli(env, "pair", "add", "simulator", "--seed", "7")  # real time, the daemon's 1 s flush
    return env


def test_the_daemon_crosses_utc_midnight_without_a_gap_and_with_new_day_keys(
    realtime_twin: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the library itself, not the faketime wrapper: that one forks, and a SIGTERM sent to
    # it would not reach the daemon
    lib = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert lib, "libfaketime is missing (Debian package 'faketime'): scripts/bootstrap --dev"
    now = time.time()
    midnight = (math.floor((now + 3600) / DAY_S) + 1) * DAY_S  # at least an hour ahead
    faked = {**realtime_twin, "LD_PRELOAD": lib[0],
             "FAKETIME": f"+{int(midnight - BEFORE_S - now)}"}

    log = tmp_path / "daemon.log"  # a file, not a pipe nobody reads while it runs
    with log.open("w") as out:
        proc = subprocess.Popen([*EXE, "daemon", "run"], env=faked, stderr=out)
    try:
        wait_status(faked, lambda st: (st["daemon"].get("last_frame_t") or 0) >= midnight + PAST_S,
                    timeout=BEFORE_S + PAST_S + 60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and " ERROR " not in err, err

    home = Path(realtime_twin["EDGETWIN_HOME"])
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    store = TwinStore.open(home, Secret.passphrase(PASSPHRASE))
    try:
        streams = [s.name for s in store.streams()]
        assert len(streams) >= 5, streams
        for name in streams:
            t = np.concatenate([b.t for b in store.read_samples(name)])
            step = float(np.median(np.diff(t)))
            before, after = t[t < midnight], t[t >= midnight]
            assert before.size and after.size, f"{name}: samples on one side of midnight only"
            # no sample lost at the rollover: across it the usual step (RR intervals vary)
            assert after.min() - before.max() <= 2 * step, (name, before.max(), after.min())
            near = np.sort(t[(t >= midnight - 20) & (t <= midnight + 10)])
            assert np.diff(near).max() <= 2 * step, name
        frames = np.array([f.t for f in store.read_frames()])
        steps = np.diff(frames[(frames >= midnight - 20) & (frames <= midnight + 10)])
        assert steps.size >= 4 and (steps == steps[0]).all(), steps  # every feature step
        assert midnight in frames  # the step grid is UTC's: a frame at midnight itself
    finally:
        store.close()

    # Every chunk is sealed under the data key of its own UTC day; each series that has data
    # after midnight got that day's key (the keys are what forget and retention destroy).
    day = midnight // DAY_S
    first_hour = midnight // 3600
    with contextlib.closing(sqlite3.connect(f"file:{home / 'twin.db'}?mode=ro", uri=True)) as db:
        wrong = db.execute(
            "SELECT count(*) FROM chunk c JOIN dek d ON d.id = c.key_id"
            " WHERE d.period != (CASE WHEN c.first_hour >= ? THEN ? ELSE ? END)",
            (first_hour, day, day - 1),
        ).fetchone()[0]
        spanning = db.execute(
            "SELECT count(*) FROM chunk WHERE first_hour < ? AND last_hour >= ?",
            (first_hour, first_hour),
        ).fetchone()[0]
        new_series = db.execute(
            "SELECT count(DISTINCT series_no) FROM chunk WHERE first_hour >= ?", (first_hour,)
        ).fetchone()[0]
        new_keys = db.execute("SELECT count(*) FROM dek WHERE period = ?", (day,)).fetchone()[0]
    assert wrong == 0
    assert spanning == 0  # a chunk never holds two days (forget a day: only that day)
    assert new_series >= len(streams) + 1  # every stream and the frames
    assert new_keys == new_series

    verify = cli(realtime_twin, "verify")
    assert "twin intact" in verify.stdout
