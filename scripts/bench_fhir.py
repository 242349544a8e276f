"""FHIR / Open mHealth export benchmark: size and time for a day of frames at 1 frame/s.

Workload: a twin holding 86,400 feature frames (one per second, hr, rmssd,
spo2 and skin_temp all measured; every 11th hr imputed), an RR stream, an
oximeter and a temperature stream, and an hr forecast each minute. Each
case is ``export_interop`` on the open store (reading and decrypting the
frames included, unlocking not), run 5 times; the figures are the median
and p99 of the wall time, the file size and the resources written. The
plain-JSON run is the baseline for the age-encrypted one (``--recipient``).
Peak RSS is read in a fresh child process per case (``ru_maxrss``), against a
child that only unlocks the twin: the Bundle is streamed, so ``raw`` (hundreds
of MB of JSON) should peak where ``1h`` does. Quick mode: 2 hours, 3 runs.

Run: ``scripts/bench --only fhir`` (``--quick`` for CI), or
``.venv/bin/python scripts/bench_fhir.py [--quick]`` for this area alone.
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

T0 = 1_767_225_600.0
PASS = "bench passphrase"


def _build(home: Path, seconds: int) -> None:
    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.store import Secret, TwinStore
    from edgetwin.types import FeatureFrame, Prediction, SampleBatch

    rng = np.random.default_rng(0)
    with TwinStore.create(home, Secret.passphrase(PASS)) as store:
        for s in range(0, seconds, 3600):
            n = min(3600, seconds - s)
            t = T0 + s + 1.0 + np.arange(n)
            frames = []
            for i in range(n):
                v = np.full(len(NAMES), np.nan)
                v[INDEX["hr"]] = 60 + 10 * rng.random()
                v[INDEX["rmssd"]] = 20 + 30 * rng.random()
                v[INDEX["spo2"]] = 95 + 4 * rng.random()
                v[INDEX["skin_temp"]] = 32 + 2 * rng.random()
                imputed = np.zeros(len(NAMES), dtype=bool)
                imputed[INDEX["hr"]] = i % 11 == 0
                frames.append(FeatureFrame(float(t[i]), v, np.ones(len(NAMES)), imputed,
                                           SCHEMA_VERSION))
            store.append_frames(frames)
            beats = T0 + s + np.cumsum(rng.uniform(0.8, 1.0, int(n * 1.1)))
            beats = beats[beats <= T0 + s + n]
            store.append_samples(SampleBatch.build("strap", ("rr",), beats,
                                                   rng.uniform(800, 1000, (beats.size, 1))))
            store.append_samples(SampleBatch.build("oxi", ("spo2",), t, np.full((n, 1), 97.0)))
            store.append_samples(SampleBatch.build("patch", ("temp",), t, np.full((n, 1), 33.0)))
            store.append_predictions([
                Prediction(t=float(t[i]), target="hr", step_s=1.0,
                           horizon=tuple(float(x) for x in 65 + rng.normal(size=12)),
                           band=tuple((60.0, 70.0) for _ in range(12)), attention=(1.0,),
                           imputed=(), model="bench")
                for i in range(0, n, 60)
            ])
            store.commit()


def _case(
    home: Path, out_dir: Path, runs: int, recipient: str | None, **kwargs: Any
) -> dict[str, Any]:
    from edgetwin.interop.export import export_interop
    from edgetwin.store import Secret, TwinStore

    times: list[float] = []
    sizes: list[int] = []
    report = None
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        for r in range(runs):
            out = out_dir / f"out-{r}.json"
            started = time.perf_counter()
            report = export_interop(store, out, step_s=1.0, force=True,
                                    recipients=[recipient] if recipient else None, **kwargs)
            times.append(time.perf_counter() - started)
            sizes.append(out.stat().st_size)
            out.unlink()
    assert report is not None
    return {
        "seconds_median": round(float(np.median(times)), 3),
        "seconds_p99": round(float(np.percentile(times, 99)), 3),
        "bytes_median": int(np.median(sizes)),
        "mb": round(float(np.median(sizes)) / 1e6, 2),
        "frames": report.frames,
        "resources": report.resources,
        "forecasts": report.forecasts,
        "runs": runs,
    }


_RSS_CHILD = """
import os, sys, resource
sys.path.insert(0, sys.argv[4])
os.environ["EDGETWIN_KDF_PROFILE"] = "test"
from pathlib import Path
from edgetwin.store import Secret, TwinStore
from edgetwin.interop.export import export_interop
every = None if sys.argv[2] == "raw" else float(sys.argv[2])
with TwinStore.open(Path(sys.argv[1]), Secret.passphrase(sys.argv[5])) as store:
    if sys.argv[3] == "1":
        export_interop(store, Path(sys.argv[1]).parent / "rss.json", fmt="fhir", every=every,
                       every_text=sys.argv[2], step_s=1.0, force=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_mb(home: Path, every: str, export: bool) -> float:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(home), every, "1" if export else "0", str(ROOT),
         PASS], check=True, capture_output=True, text=True,
    )
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)


def run(quick: bool) -> dict[str, Any]:
    import pyrage

    os.environ["EDGETWIN_KDF_PROFILE"] = "test"
    seconds = 7200 if quick else 86400
    runs = 3 if quick else 5
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp:
        home = Path(tmp) / "home"
        started = time.perf_counter()
        _build(home, seconds)
        build_s = time.perf_counter() - started
        cases: dict[str, Any] = {}
        for name, kwargs, rec in (
            ("fhir_1h", {"fmt": "fhir", "every": 3600.0, "every_text": "1h"}, None),
            ("fhir_5m", {"fmt": "fhir", "every": 300.0, "every_text": "5m"}, None),
            ("fhir_5m_recipient", {"fmt": "fhir", "every": 300.0, "every_text": "5m"}, recipient),
            ("fhir_5m_forecasts", {"fmt": "fhir", "every": 300.0, "every_text": "5m",
                                   "with_forecasts": True}, None),
            ("omh_5m", {"fmt": "omh", "every": 300.0, "every_text": "5m"}, None),
            ("fhir_raw", {"fmt": "fhir", "every": None, "every_text": "raw"}, None),
            ("fhir_raw_recipient", {"fmt": "fhir", "every": None, "every_text": "raw"}, recipient),
        ):
            print(f"bench fhir: {name}", file=sys.stderr, flush=True)
            cases[name] = _case(home, Path(tmp), runs, rec, **kwargs)
        rss = {"unlock_only": _peak_rss_mb(home, "3600", export=False)}
        for every in ("3600", "300", "raw"):
            rss[f"fhir_{every}"] = _peak_rss_mb(home, every, export=True)
    return {
        "workload": f"{seconds} feature frames at 1/s (4 vital features), RR, SpO2 and "
                    "temperature streams, an hr forecast of 12 steps each minute",
        "build_seconds": round(build_s, 1),
        "cases": cases,
        "peak_rss_mb": rss,
        "encryption_overhead_5m": round(cases["fhir_5m_recipient"]["seconds_median"]
                                        / max(cases["fhir_5m"]["seconds_median"], 1e-9), 2),
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
