"""Secure aggregation vs local DP: population error, device cost, and a Flower round on loopback.

``run(quick)`` returns JSON (printed by ``python scripts/bench_secagg.py [--quick]``):

- ``error``: for 100, 1,000 and 10,000 simulated people, the 95 % absolute error of the
  published daily mean HR (bounds 50-110 bpm, epsilon 1 per day) over ``trials`` draws:
  ``secagg`` (grid of 1024 levels, discrete Gaussian shares at delta 1e-6, min_cohort = 80 %
  of the cohort, i.e. 20 % dropouts tolerated, everyone survives) vs ``local`` (each device's
  OpenDP Laplace release at the same epsilon and bounds, the mean of the releases). Large
  cohorts are simulated by SUMMING THE SHARES DIRECTLY (no Flower round): the shares of a
  trial are drawn by OpenDP's vector-domain Gaussian/Laplace measurements (the same
  per-element distribution as one device's share), not by a round of N processes.
  ``ratio`` = local / secagg error; ``analytic_*`` are 1.96 x the noise sd.
- ``device``: CPU per share minted (encode + OpenDP draw + seal), median/p99 microseconds.
- ``round``: if flwr is installed, one SecAgg+ round on loopback (``round_devices``
  SuperNodes, real SuperLink with TLS and node authentication): wall time, server time,
  bytes per device (the SuperLink's Fleet API traffic / devices); see tests/sync/flower_rig.py.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.privacy.discrete import plan_for
from edgetwin.privacy.mechanism import mechanism_for
from edgetwin.privacy.secagg import mint_share

LOWER, UPPER, EPSILON, DELTA, LEVELS = 50.0, 110.0, 1.0, 1e-6, 1024


def run(quick: bool = False) -> dict[str, Any]:
    trials = 60 if quick else 400
    out: dict[str, Any] = {
        "epsilon": EPSILON, "delta": DELTA, "bounds": [LOWER, UPPER], "levels": LEVELS,
        "trials": trials, "simulation": "shares summed directly (OpenDP vector draws), "
                                        "no Flower round",
        "error": [error_at(n, trials) for n in (100, 1000, 10_000)],
        "device": device_cost(200 if quick else 2000),
    }
    try:
        from tests.sync.flower_rig import bench_round
    except ImportError as exc:  # flwr not installed: the error figures stand alone
        out["round"] = {"skipped": f"flwr missing: {exc}"}
    else:
        out["round"] = bench_round(devices=10 if quick else 30)
    return out


def error_at(n: int, trials: int, seed: int = 1) -> dict[str, Any]:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    rng = np.random.default_rng(seed)
    plan = plan_for(LOWER, UPPER, LEVELS, EPSILON, DELTA, max(2, math.ceil(0.8 * n)))
    gauss = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")),
                               dp.l2_distance(T="i64"), scale=plan.sigma_share)
    lap = mechanism_for(LOWER, UPPER, EPSILON)
    lap_vec = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)),
                                dp.l1_distance(T=float), scale=lap.scale)
    sec_err, loc_err = [], []
    for _ in range(trials):
        truth = np.clip(rng.normal(70.0, 10.0, n), LOWER, UPPER)
        grid = [plan.encode(float(v)) for v in truth]
        total = int(np.sum(gauss(grid)))  # each element: one device's grid value + share
        sec_err.append(abs(plan.decode_mean(total, n) - float(truth.mean())))
        loc_err.append(abs(float(np.mean(lap_vec(truth.tolist()))) - float(truth.mean())))
    sec95 = float(np.quantile(sec_err, 0.95))
    loc95 = float(np.quantile(loc_err, 0.95))
    return {
        "people": n, "min_cohort": plan.min_cohort, "sigma_share_grid": plan.sigma_share,
        "epsilon_own_share": plan.epsilon_own,
        "secagg_error95_bpm": sec95, "local_error95_bpm": loc95, "ratio": loc95 / sec95,
        "analytic_secagg95_bpm": 1.96 * plan.mean_noise_sd(n),
        "analytic_local95_bpm": 1.96 * math.sqrt(2) * lap.scale / math.sqrt(n),
    }


def device_cost(reps: int) -> dict[str, float]:
    plan = plan_for(LOWER, UPPER, LEVELS, EPSILON, DELTA, 800)
    times = []
    for i in range(reps):
        c0 = time.process_time_ns()
        mint_share("hr_mean", "day", 86_400.0 * i, 72.0, (LOWER, UPPER), plan, charged=EPSILON,
                   now=0.0)
        times.append((time.process_time_ns() - c0) / 1e3)
    times.sort()
    return {"mint_share_cpu_us_median": statistics.median(times),
            "mint_share_cpu_us_p99": times[int(0.99 * (len(times) - 1))]}


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
