#!/usr/bin/env python3
"""Report benchmark: ``edgetwin report`` build time and file size for 1 day and 30 days of
1 Hz feature frames (every feature of the schema present, a spike, a masked and an imputed
span each hour, a marker every 6 h, forecasts in the last hour).

Each size gets a fresh twin (``EDGETWIN_KDF_PROFILE=test``); then ``edgetwin report`` runs
``--runs`` times as a child process (the real CLI: start-up, unlock, read, downsample, render,
atomic write) and the wall time of each run, the file size, the chart rows and the child's peak
RSS are recorded.
Prints one JSON document: per size, median and p99 of the seconds, the bytes, the rows.

Run: ``.venv/bin/python scripts/bench_report.py [--days 1 30] [--runs 5] [--png] [--hz 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASS = "bench passphrase"
T0 = 1_750_032_000.0  # a UTC midnight (2025-06-16)
DAY = 86_400.0


def write_frames(home: Path, passphrase: str, *, days: int, hz: float = 1.0,
                 spike: bool = False) -> float:
    """A twin in ``home`` with ``days`` of frames at ``hz`` (all features); returns the time
    of the hr spike (180 bpm) put in the middle of the first day when ``spike``."""
    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.store import KdfParams, Secret, TwinStore
    from edgetwin.types import FeatureFrame, Marker, Prediction, SampleBatch

    rng = np.random.default_rng(11)
    width = len(NAMES)
    step = 1.0 / hz
    spike_t = T0 + DAY / 2
    store = TwinStore.create(home, Secret.passphrase(passphrase), kdf=KdfParams.for_tests())
    try:
        for d in range(days):
            t = T0 + d * DAY + np.arange(0.0, DAY, step)
            n = t.size
            phase = 2 * np.pi * (t - T0) / DAY
            vals = np.empty((n, width))
            vals[:, INDEX["hr"]] = 65 + 8 * np.sin(phase) + rng.normal(0, 2, n)
            vals[:, INDEX["rmssd"]] = 40 + 6 * np.cos(phase) + rng.normal(0, 3, n)
            vals[:, INDEX["spo2"]] = 97 + rng.normal(0, 0.5, n)
            vals[:, INDEX["skin_temp"]] = 33.5 + 0.5 * np.sin(phase) + rng.normal(0, 0.05, n)
            vals[:, INDEX["eda_tonic"]] = 2 + 0.5 * np.sin(3 * phase) + rng.normal(0, 0.05, n)
            vals[:, INDEX["motion"]] = np.abs(rng.normal(0.05, 0.05, n))
            bands = rng.dirichlet([2, 2, 3, 2, 1], n)
            for k, name in enumerate(("eeg_delta", "eeg_theta", "eeg_alpha", "eeg_beta",
                                      "eeg_gamma")):
                vals[:, INDEX[name]] = bands[:, k]
            vals[:, INDEX["fnirs_hbo"]] = 0.3 * np.sin(5 * phase) + rng.normal(0, 0.1, n)
            vals[:, INDEX["fnirs_hbr"]] = -0.1 * np.sin(5 * phase) + rng.normal(0, 0.05, n)
            # the surroundings (feature schema v2)
            vals[:, INDEX["ambient_temp"]] = 21 + np.sin(phase) + rng.normal(0, 0.05, n)
            vals[:, INDEX["humidity"]] = 50 + 8 * np.cos(phase) + rng.normal(0, 0.3, n)
            vals[:, INDEX["pressure"]] = 1010 + 3 * np.sin(phase / 3) + rng.normal(0, 0.05, n)
            vals[:, INDEX["co2"]] = 800 + 600 * np.clip(np.cos(phase), 0, 1) + rng.normal(0, 15, n)
            vals[:, INDEX["pm2_5"]] = np.round(np.abs(8 + rng.normal(0, 2, n)))
            vals[:, INDEX["pm10"]] = vals[:, INDEX["pm2_5"]] + 5
            vals[:, INDEX["place"]] = np.where(np.sin(phase) > 0.5, 2.0, 0.0)
            vals[:, INDEX["home_distance"]] = np.where(np.sin(phase) > 0.5, 6.5, 0.0)
            assert len(NAMES) == 21, "fill the features a newer schema added"
            if spike and d == 0:
                vals[int(np.searchsorted(t, spike_t)), INDEX["hr"]] = 180.0
            quality = np.ones((n, width))
            imputed = np.zeros((n, width), dtype=bool)
            minute = ((t - T0) % 3600) // 60
            quality[minute == 20, INDEX["hr"]] = 0.1  # one low-quality minute an hour
            imputed[minute == 40, INDEX["hr"]] = True  # one imputed minute an hour
            store.append_samples(SampleBatch.build("wrist", ["hr"], t[:: int(hz * 60) or 1],
                                                   vals[:: int(hz * 60) or 1, :1]))
            store.append_frames([
                FeatureFrame(t=float(t[i]), values=vals[i], quality=quality[i],
                             imputed=imputed[i], schema_version=SCHEMA_VERSION)
                for i in range(n)])
            store.append_markers([Marker(T0 + d * DAY + h * 3600.0, f"marker {d}/{h}", "cli")
                                  for h in (0, 6, 12, 18)])
            store.commit()
        last = T0 + days * DAY - step
        store.append_predictions([
            Prediction(t=last - 60.0 * j, target=target, step_s=5.0,
                       horizon=tuple(70.0 + s for s in range(12)),
                       band=tuple((66.0 + s, 74.0 + s) for s in range(12)),
                       attention=tuple([1 / 24] * 24), imputed=(), model="bench",
                       influence=tuple([0.0] * 20 + [0.25] * 4))
            for j in range(59, -1, -1) for target in ("hr", "rmssd")])
        store.commit()
    finally:
        store.close()
    return spike_t


def _run_report(home: Path, pw: Path, days: int, out: Path, png: Path | None) -> float:
    cmd = [sys.executable, "-m", "edgetwin", "--home", str(home), "--passphrase-file", str(pw),
           "report", "--from", str(T0), "--to", str(T0 + days * DAY), "-o", str(out), "--force"]
    if png is not None:
        cmd += ["--png", str(png)]
    env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"report failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def bench(days: int, runs: int, png: bool, hz: float = 1.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        root = Path(tmp)
        home = root / "home"
        pw = root / "pw"
        pw.write_text(PASS + "\n")
        pw.chmod(0o600)
        os.environ["EDGETWIN_KDF_PROFILE"] = "test"
        started = time.perf_counter()
        write_frames(home, PASS, days=days, hz=hz)
        setup = time.perf_counter() - started
        out = root / "report.html"
        secs = [_run_report(home, pw, days, out, root / "png" if png else None)
                for _ in range(runs)]
        text = out.read_text(encoding="utf-8")
        start = text.index('id="report-data" type="application/json">') + 41
        doc = json.loads(text[start:text.index("</script>", start)])
        png_secs: list[float] = []
        if png:  # the PNGs alone, in this process (matplotlib imported once, as in one run)
            from edgetwin.web.report_png import write_pngs

            for _ in range(runs):
                t = time.perf_counter()
                write_pngs(doc, root / "png-only", force=True)
                png_secs.append(time.perf_counter() - t)
        return {
            "days": days,
            "hz": hz,
            "frames": doc["frames"],
            "runs": runs,
            "seconds_median": round(float(np.median(secs)), 3),
            "seconds_p99": round(float(np.percentile(secs, 99)), 3),
            "seconds": [round(s, 3) for s in secs],
            "bytes": out.stat().st_size,
            "chart_rows_max": max(len(c["t"]) for c in doc["charts"]),
            "charts": len(doc["charts"]) + len(doc["forecast_charts"]),
            "png": png,
            **({"png_seconds_median": round(float(np.median(png_secs)), 3),
                "png_seconds_p99": round(float(np.percentile(png_secs, 99)), 3)}
               if png_secs else {}),
            # the largest child so far (sizes run smallest first, so this is this size's peak)
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "setup_seconds": round(setup, 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, nargs="+", default=[1, 30])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--png", action="store_true", help="also draw the PNGs (--png DIR)")
    ap.add_argument("--hz", type=float, default=1.0,
                    help="frames per second (the default 5 s step: 0.2)")
    args = ap.parse_args()
    results = [bench(d, args.runs, args.png, args.hz) for d in args.days]
    print(json.dumps({"benchmark": "report", "host_cpus": os.cpu_count(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
