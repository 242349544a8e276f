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
- ``round``: one SecAgg+ round on loopback (``devices`` SuperNodes, real SuperLink with TLS
  and node authentication, tests/sync/flower_rig.py): wall time (including Flower starting a
  ClientApp process per device per stage), the ServerApp's CPU, bytes the server received.
- ``in_process``: Flower's real ``SecAggPlusWorkflow`` and ``secaggplus_mod`` wired through an
  in-process Grid (no network, no processes; each device a ClientApp with its own Context) at
  100 and 1,000 devices: server CPU per round, per-device CPU per round (all four stages)
  and bytes per device (serialised replies), and the decoded sum checked against the shares.
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
    from tests.sync.flower_rig import bench_round

    out["in_process"] = [in_process_round(n, num_shares=min(n, 51))
                         for n in ((20, 100) if quick else (100, 1000))]
    out["round"] = bench_round(devices=10 if quick else 30)
    return out

def in_process_round(n: int, num_shares: int, db: Path | None = None) -> dict[str, Any]:
    """One SecAgg+ round of n in-process ClientApps through a Grid that calls them directly
    (also the aarch64 smoke's secagg step); the round's result goes to ``db`` (a temporary
    file by default, removed after)."""
    from flwr.common.serde import recorddict_to_proto

    from edgetwin.sync.collector.flower_server import RoundConfig, run_round
    from edgetwin.sync.flower_client import make_client_app
    from edgetwin.sync.flower_local import LocalGrid, node_context, server_context

    plan = plan_for(LOWER, UPPER, LEVELS, EPSILON, DELTA, max(2, int(0.8 * n)))
    rng = np.random.default_rng(3)
    shares = {i + 1: mint_share("hr_mean", "day", 0.0, float(v), (LOWER, UPPER), plan,
                                charged=EPSILON, now=0.0)
              for i, v in enumerate(rng.normal(70, 10, n))}
    app = make_client_app(claimer_for=lambda nc: lambda _cfg: shares[int(nc["node"])])
    cpu: dict[int, float] = dict.fromkeys(shares, 0.0)
    sent: dict[int, int] = dict.fromkeys(shares, 0)

    def count(node: int, reply: Any, cpu_s: float) -> None:
        cpu[node] += cpu_s
        sent[node] += recorddict_to_proto(reply.content).ByteSize()

    keep = db is not None
    db = db if db is not None else Path(f"/tmp/bench_secagg_{n}.db")
    db.unlink(missing_ok=True)
    rc = {"metric": "hr_mean", "period": "day", "period-start": 0.0, "round-id": f"b{n}",
          "db": str(db), "expected": n, "lower": LOWER, "upper": UPPER, "levels": LEVELS,
          "epsilon": EPSILON, "delta": DELTA, "min-cohort": plan.min_cohort,
          "num-shares": num_shares, "threshold": 0.5, "timeout": 600.0}
    cfg = RoundConfig.from_run_config(rc)
    grid = LocalGrid(app, {nid: node_context(nid, {"node": nid}) for nid in shares},
                     after_reply=count)
    context = server_context(rc)
    total_c0, wall0 = time.process_time(), time.perf_counter()
    result = run_round(grid, context, cfg)
    total_cpu, wall = time.process_time() - total_c0, time.perf_counter() - wall0
    device_cpu = sorted(cpu.values())
    if not keep:
        db.unlink(missing_ok=True)
    return {
        "devices": n, "num_shares": num_shares, "state": result.state,
        "published_mean": result.mean,
        "sum_exact": result.total == sum(s.value for s in shares.values()),
        "server_cpu_s": total_cpu - sum(device_cpu), "round_wall_s_in_process": wall,
        "device_cpu_ms_median": 1e3 * statistics.median(device_cpu),
        "device_cpu_ms_max": 1e3 * device_cpu[-1],
        "device_reply_bytes_median": statistics.median(sent.values()),
    }


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
    # the ratio of two 95th percentiles from finite trials: a bootstrap interval for it
    boot = np.random.default_rng(seed + 1)
    s_arr, l_arr = np.asarray(sec_err), np.asarray(loc_err)
    ratios = [float(np.quantile(l_arr[boot.integers(0, trials, trials)], 0.95)
                    / np.quantile(s_arr[boot.integers(0, trials, trials)], 0.95))
              for _ in range(1000)]
    return {
        "people": n, "min_cohort": plan.min_cohort, "sigma_share_grid": plan.sigma_share,
        "epsilon_own_share": plan.epsilon_own,
        "secagg_error95_bpm": sec95, "local_error95_bpm": loc95, "ratio": loc95 / sec95,
        "ratio_ci95": [round(float(np.quantile(ratios, q)), 2) for q in (0.025, 0.975)],
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
