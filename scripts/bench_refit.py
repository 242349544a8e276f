"""Personal-model refit at growing amounts of stored history: CPU, peak RSS, RSS left behind.

The daemon refits at start and every 30 minutes over the last day. This builds a twin as the
daemon fills it at the reference load (a frame with five targets every 5 s and a forecast of
each after it, committed step by step: ``tests/inference/twins.store_as_daemon``), then runs
each refit in a fresh child process with the daemon's malloc tuning
(``tests/inference/refit_memory_child.py``, which the memory test runs too; it warms up
with a refit over ~10 minutes first) and reports its CPU time,
the child's peak RSS (``ru_maxrss``) against its RSS just before, and how much more anonymous
RSS is resident after a garbage collection and ``malloc_trim``. The baseline, measured in the same
child, is the same forecasts held as a list of objects (what the refit did before
2026-12-03). Times are single runs per size (the refit is a periodic job, not a hot path).

Run: ``scripts/bench --only refit`` (1, 6 and 24 hours; ``--quick``: 1 and 2 hours), or
``python scripts/bench_refit.py [--hours 1,24]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "inference"
PASS = "refit bench"

CHILD = TESTS / "refit_memory_child.py"  # shared with the test of the same figures
MIB = 2**20


def measure(hours: float) -> dict[str, Any]:
    """Build ``hours`` of daemon-like history and refit it in a child process."""
    sys.path.insert(0, str(TESTS))
    from twins import store_as_daemon  # a test helper: the bench fills the twin as tests do

    from edgetwin.store import Secret, TwinStore

    os.environ.setdefault("EDGETWIN_KDF_PROFILE", "test")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "twin"
        started = time.perf_counter()
        with TwinStore.create(home, Secret.passphrase(PASS)) as store:
            store_as_daemon(store, hours)
        built_s = time.perf_counter() - started
        out = subprocess.run(
            [sys.executable, str(CHILD), str(home), PASS],
            capture_output=True, text=True, check=True, timeout=1800,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "hours": hours, "build_s": round(built_s, 1), "forecasts": got["forecasts"],
        "cpu_s": round(got["cpu_s"], 2), "rss_before_mib": got["rss_before"] / MIB,
        "peak_rss_mib": got["refit_peak"] / MIB,
        "peak_above_before_mib": (got["refit_peak"] - got["rss_before"]) / MIB,
        "kept_after_mib": got["refit_kept"] / MIB,
        "list_of_objects": {"peak_rss_mib": got["list_peak"] / MIB,
                            "kept_after_mib": got["list_kept"] / MIB},
        "heads_adopted": got["heads_adopted"],
    }


def run(quick: bool, hours: list[float] | None = None) -> dict[str, Any]:
    sizes = hours or ([1.0, 2.0] if quick else [1.0, 6.0, 24.0])
    rows = [measure(h) for h in sizes]
    return {
        "workload": "5 targets, a frame and a forecast of each every 5 s, committed per step",
        "sizes": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", default="", help="comma-separated hours of history")
    args = parser.parse_args()
    chosen = [float(h) for h in args.hours.split(",") if h.strip()] or None
    print(json.dumps(run(False, chosen), indent=2))
