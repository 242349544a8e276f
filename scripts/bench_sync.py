#!/usr/bin/env python3
"""Benchmark of DP sync: release rate, payload size, and utility of aggregated releases.

``run(quick)`` returns {"name": {"median", "p99", "unit", ...}}:

* ``release_opendp``: one DP release (OpenDP Laplace + minting), vs a hand-written numpy
  Laplace draw as the baseline (``ratio``: what the floating-point-safe sampler costs);
* ``release_store``: release + ledger + outbox + audit in one TwinStore transaction, vs an
  empty ``put_record`` transaction as baseline (skipped if the store is unavailable);
* ``envelope_sign`` / ``collector_accept``: signing on the device, verification + SQLite insert
  at the collector; ``payload_bytes``: wire bytes per release;
* ``utility_<N>``: N simulated people (``SimulatedPerson.from_seed``), each releasing its daily
  mean heart rate at the default epsilon and bounds; the collector's mean of noisy means vs the
  true population mean. ``median``/``p99`` are of |error| over trials, with RMSE, bias and the
  theoretical noise standard error; one trial goes end to end through signing and the real
  collector, the others draw the same OpenDP noise vectorised.

Run: ``.venv/bin/python scripts/bench_sync.py [--quick]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

T0 = 1_750_032_000.0  # a UTC midnight


def run(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(_release_rate(quick))
    out.update(_store_rate(quick))
    out.update(_wire(quick))
    out.update(_utility(quick))
    return out


def _stats(samples: list[float], unit: str, **extra: Any) -> dict[str, Any]:
    arr = np.asarray(samples, dtype=float)
    return {"median": float(np.median(arr)), "p99": float(np.percentile(arr, 99)),
            "unit": unit, "n": len(samples), **extra}


def _timed(fn: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return times


def _release_rate(quick: bool) -> dict[str, Any]:
    from edgetwin.privacy.mechanism import release_value
    from edgetwin.privacy.metrics import METRICS

    m = METRICS["hr_mean"]
    n = 2000 if quick else 20000
    release_value(m, "day", T0, 70.0, m.default_bounds, 0.5)  # build and cache the measurement
    dp = _timed(lambda: release_value(m, "day", T0, 70.0, m.default_bounds, 0.5), n)
    rng = np.random.default_rng(0)
    base = _timed(lambda: 70.0 + rng.laplace(0.0, 120.0), n)
    med = statistics.median(dp)
    return {"release_opendp": _stats(dp, "us", per_s=1e6 / med,
                                     ratio=med / statistics.median(base),
                                     baseline="numpy Laplace draw (unsafe, not used)")}


def _store_rate(quick: bool) -> dict[str, Any]:
    try:
        from edgetwin.store import Secret, TwinStore
    except ImportError:
        return {}
    from edgetwin.config import Config, PrivacyConfig
    from edgetwin.privacy.consent import grant
    from edgetwin.sync.service import release_one

    n = 100 if quick else 1000
    cfg = Config(privacy=PrivacyConfig(epsilon_per_period=1.0, epsilon_lifetime=1e9))
    with tempfile.TemporaryDirectory() as d:
        store = TwinStore.create(Path(d) / "twin", Secret.passphrase("bench passphrase"))
        try:
            grant(store, "hr_mean", "day", time.time())
            days = iter(range(10**6))
            rel = _timed(lambda: release_one(store, cfg, "hr_mean", "day",
                                             T0 + 86_400 * next(days), 70.0, time.time()), n)

            def bare() -> None:
                with store.transaction():
                    store.put_record("bench", "k", {"v": 1})

            base = _timed(bare, n)
        finally:
            store.close()
    med = statistics.median(rel)
    return {"release_store": _stats(rel, "us", per_s=1e6 / med,
                                    ratio=med / statistics.median(base),
                                    baseline="one put_record transaction")}


def _wire(quick: bool) -> dict[str, Any]:
    from edgetwin.privacy.mechanism import release_value
    from edgetwin.privacy.metrics import METRICS
    from edgetwin.sync.collector import Collector
    from edgetwin.sync.payload import encode_envelope
    from edgetwin.sync.signing import DeviceKey

    m = METRICS["hr_mean"]
    n = 300 if quick else 3000
    key = DeviceKey.generate()
    releases = [release_value(m, "day", T0, 70.0, m.default_bounds, 0.5) for _ in range(n)]
    now_ms = int(time.time() * 1000)
    it = iter(releases)
    sign = _timed(lambda: encode_envelope(next(it), key, now_ms), n)
    bodies = [encode_envelope(r, key, now_ms) for r in releases]
    with tempfile.TemporaryDirectory() as d:
        c = Collector(Path(d) / "c.db", window_s=3600)
        c.enroll(key.public_b64)
        bi = iter(bodies)
        accept = _timed(lambda: c.accept(next(bi), "bench"), n)
        c.close()
    sizes = [float(len(b)) for b in bodies]
    return {
        "envelope_sign": _stats(sign, "us", per_s=1e6 / statistics.median(sign)),
        "collector_accept": _stats(accept, "us", per_s=1e6 / statistics.median(accept)),
        "payload_bytes": _stats(sizes, "bytes"),
    }


def _true_daily_means(n: int) -> np.ndarray:
    """Each simulated person's true mean heart rate over one UTC day (5-min grid)."""
    from edgetwin.sources.sim.heart import mean_hr
    from edgetwin.sources.sim.person import SimulatedPerson
    from edgetwin.sources.sim.schedule import Schedule

    t = T0 + np.arange(150.0, 86_400.0, 300.0)
    out = np.empty(n)
    for i in range(n):
        p = SimulatedPerson.from_seed(10_000 + i)
        out[i] = float(np.mean(mean_hr(p, Schedule(p).states(t))))
    return out


def _utility(quick: bool) -> dict[str, Any]:
    import opendp.prelude as dp

    from edgetwin.config import PrivacyConfig
    from edgetwin.privacy.mechanism import release_value
    from edgetwin.privacy.metrics import METRICS
    from edgetwin.sync.collector import Collector
    from edgetwin.sync.payload import encode_envelope
    from edgetwin.sync.signing import DeviceKey

    dp.enable_features("contrib")
    eps = PrivacyConfig().epsilon_per_release
    m = METRICS["hr_mean"]
    sizes = (100, 1000, 10000)
    simulated = 1000 if quick else max(sizes)
    truth_all = _true_daily_means(simulated)
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {}
    for bounds in (m.default_bounds, (40.0, 120.0), (30.0, 200.0)):
        lo, hi = bounds
        scale = (hi - lo) / eps
        default = bounds == m.default_bounds
        for n in sizes:
            if not default and n != 1000:
                continue
            if n <= simulated:
                truth = truth_all[:n]
                source = "distinct simulated people"
            else:  # quick mode: resample the simulated people
                truth = rng.choice(truth_all, size=n, replace=True)
                source = f"resampled from {simulated} simulated people"
            clipped = np.clip(truth, lo, hi)
            target = float(np.mean(truth))
            # OpenDP draws ~30k samples/s here: fewer trials for more devices.
            trials = {100: 400, 1000: 100, 10000: 20}[n] // (4 if quick else 1)
            vec = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)),
                                    dp.l1_distance(T=float), scale=scale)
            errors = [float(np.mean(vec(clipped.tolist()))) - target for _ in range(trials)]
            if default:
                # One trial end to end: each device mints, signs; the collector verifies, stores
                # and aggregates.
                with tempfile.TemporaryDirectory() as d:
                    c = Collector(Path(d) / "c.db", window_s=3600, durable=False)
                    now_ms = int(time.time() * 1000)
                    for v in clipped:
                        k = DeviceKey.generate()
                        c.enroll(k.public_b64)
                        r = release_value(m, "day", T0, float(v), bounds, eps)
                        c.accept(encode_envelope(r, k, now_ms), "bench")
                    (agg,) = c.aggregates()
                    c.close()
                errors.append(float(agg["mean"]) - target)
            err = np.asarray(errors)
            name = f"utility_{n}" if default else f"utility_{n}_bounds_{int(lo)}_{int(hi)}"
            out[name] = {
                "median": float(np.median(np.abs(err))),
                "p99": float(np.percentile(np.abs(err), 99)),
                "unit": "bpm",
                "rmse": float(np.sqrt(np.mean(err**2))),
                "bias": float(np.mean(clipped) - target),
                "noise_se_theory": float(np.sqrt(2.0) * scale / np.sqrt(n)),
                "true_mean": target,
                "bounds": [lo, hi],
                "epsilon": eps,
                "trials": len(errors),
                "devices": n,
                "people": source,
            }
    return out


if __name__ == "__main__":
    result = run("--quick" in sys.argv)
    json.dump(result, sys.stdout, indent=2)
    print()
