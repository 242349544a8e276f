"""XDF in and markers: how fast a LabRecorder file is read, and what markers cost the store.

Workload ``xdf``: a recording written chunk by chunk (the test suite's ``XdfWriter``)
with a 16-channel float32 EEG stream at 250 Hz, a 1-channel ECG at 100 Hz and a
marker stream at 1 Hz, one Samples chunk per stream per second and ClockOffset
chunks every 5 s (as LabRecorder writes), 10 minutes long (quick: 2). Cases, 5 runs
each (quick: 3), median and p99 of the wall time:

- ``scan``: edgetwin's structural check alone (every chunk and sample walked);
- ``read``: ``read_xdf`` (the scan, then pyxdf with clock sync and dejitter, then
  placement in time) — ``scan_share`` is the scan's part of it;
- ``samples_per_s``: signal samples (rows) read per second by ``read``.

Workload ``markers``: a twin with an hour of markers at 10 Hz (36,000) appended
in commits of 50 (a daemon's LSL marker stream at its commit cadence): the
median/p99 time of one such commit, the rows written, and ``read_markers`` of
the hour.

Run: ``scripts/bench --only xdf`` (``--quick`` for CI), or
``.venv/bin/python scripts/bench_xdf.py [--quick]`` for this area alone.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

R0 = 5000.0  # the recorder's LSL clock at the first sample


def _write(path: Path, seconds: int) -> int:
    from tests.interop.test_xdf import XdfWriter

    rng = np.random.default_rng(0)
    w = XdfWriter()
    w.file_header("2026-01-01T00:00:00+00:00")
    w.stream_header(1, "EEG", "EEG", "float32", 250.0,
                    [(f"E{i}", "microvolts", "EEG") for i in range(16)])
    w.stream_header(2, "ECG", "ECG", "double64", 100.0, [("ECG1", "millivolts", "ECG")])
    w.stream_header(3, "Markers", "Markers", "string", 0.0, [("marker", "", "Markers")])
    rows = 0
    for s in range(seconds):
        now = R0 + s
        if s % 5 == 0:
            for sid in (1, 2, 3):
                w.clock_offset(sid, now, -0.25 * sid)
        t = now + np.arange(250) / 250.0 + 0.25 + rng.uniform(-5e-4, 5e-4, 250)
        w.samples(1, "float32", t, rng.normal(0, 10, (250, 16)).tolist())
        t = now + np.arange(100) / 100.0 + 0.5 + rng.uniform(-5e-4, 5e-4, 100)
        w.samples(2, "double64", t, [[v] for v in rng.normal(0, 0.1, 100)])
        w.samples(3, "string", np.array([now + 0.75]), [[f"trial {s}"]])
        rows += 350
    for sid in (1, 2, 3):
        w.footer(sid, R0, R0 + seconds, 0)
    w.write(path)
    return rows


def _stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"median_s": round(float(np.median(a)), 4),
            "p99_s": round(float(np.quantile(a, 0.99)), 4)}


def _bench_xdf(quick: bool) -> dict[str, Any]:
    import mmap

    from edgetwin.interop.xdf import read_xdf, scan

    seconds = 120 if quick else 600
    runs = 3 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.xdf"
        rows = _write(path, seconds)
        scans, reads = [], []
        for _ in range(runs):
            started = time.perf_counter()
            with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as d:
                found = scan(d)
            scans.append(time.perf_counter() - started)
            assert not found.problems, found.problems
            started = time.perf_counter()
            rec = read_xdf(path, latest=None)
            reads.append(time.perf_counter() - started)
            assert sum(s.t.size for s in rec.streams if not s.is_marker) == rows
        size = path.stat().st_size
    read = _stats(reads)
    return {
        "recording": {"seconds": seconds, "bytes": size, "signal_rows": rows,
                      "streams": "EEG 16 ch float32 250 Hz, ECG 1 ch 100 Hz, markers 1 Hz"},
        "runs": runs,
        "scan": _stats(scans),
        "read": read,
        "scan_share": round(float(np.median(scans)) / read["median_s"], 3),
        "samples_per_s": round(rows / read["median_s"]),
        "mib_per_s": round(size / 2**20 / read["median_s"], 1),
    }


def _bench_markers(quick: bool) -> dict[str, Any]:
    from edgetwin.store import Secret, TwinStore
    from edgetwin.types import Marker

    os.environ.setdefault("EDGETWIN_KDF_PROFILE", "test")
    n = 6000 if quick else 36000
    per_commit = 50
    t0 = 1_767_225_600.0
    commits = []
    with tempfile.TemporaryDirectory() as tmp, TwinStore.create(
        Path(tmp) / "twin", Secret.passphrase("bench")
    ) as store:
        for start in range(0, n, per_commit):
            batch = [Marker(t0 + i / 10.0, f"trial {i}", "lsl:Events")
                     for i in range(start, min(n, start + per_commit))]
            started = time.perf_counter()
            store.append_markers(batch)
            store.commit()
            commits.append(time.perf_counter() - started)
        rows = store._conn.execute("SELECT COUNT(*) FROM marker").fetchone()[0]
        reads = []
        for _ in range(3):
            started = time.perf_counter()
            got = store.read_markers(t0, t0 + n / 10.0)
            reads.append(time.perf_counter() - started)
        assert len(got) == n
    return {
        "markers": n,
        "per_commit": per_commit,
        "commit": _stats(commits),
        "rows": int(rows),
        "read_all": _stats(reads),
    }


def run(quick: bool = False) -> dict[str, Any]:
    return {"xdf": _bench_xdf(quick), "markers": _bench_markers(quick)}


if __name__ == "__main__":
    q = "--quick" in sys.argv
    print(json.dumps({"command": "python scripts/bench_xdf.py" + (" --quick" if q else ""),
                      **run(q)}, indent=2))
