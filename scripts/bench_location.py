#!/usr/bin/env python3
"""How much the coarsening costs the place feature: agreement with places learned from exact fixes.

Simulated people (seeded) live four weeks in a city: nights at home, a workplace on
weekdays, a gym two evenings a week, a supermarket on Saturdays, family on Sunday
afternoons, and a few one-off trips 2-60 km away; one fix every 2 minutes with
~10 m of receiver noise (a 40 m outlier now and then). For each ``precision_m``
the twin's own learner (``edgetwin.sources.place``) runs on the coarse cells the
gpsd source stores; the reference is the same learner on the exact fixes, with
places found by clustering fixes within 150 m (a stay-point grid cell would itself
be a coarsening). Agreement is the share of fixes given the same code (home /
regular / elsewhere) by both, over fixes where the reference has one; "undecided"
is the share where the coarse learner has no code yet but the reference does.
Also the median error of the distance from home (km) against the exact distance
from the reference home (all fixes, and fixes more than 1 km from home).

    scripts/bench_location.py [--people 8] [--days 28] [--precisions 100 500 1000 2000]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.sources.place import Grid, PlaceLearner, haversine_km

M_PER_DEG = 111_320.0
FIX_EVERY = timedelta(minutes=2)
CLUSTER_M = 150.0


class Clusters:
    """Places from exact fixes: a fix within ``radius_m`` of a known centre belongs to it."""

    def __init__(self, radius_m: float = CLUSTER_M) -> None:
        self.radius_km = radius_m / 1000.0
        self.centres: list[tuple[float, float]] = []
        self._by_cell: dict[tuple[int, int], list[int]] = {}

    def locate(self, lat: float, lon: float) -> str:
        ci, cj = int(lat * 100), int(lon * 100)  # ~1 km buckets to look in
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for k in self._by_cell.get((ci + di, cj + dj), ()):
                    if haversine_km((lat, lon), self.centres[k]) <= self.radius_km:
                        return f"c{k}"
        self.centres.append((lat, lon))
        self._by_cell.setdefault((ci, cj), []).append(len(self.centres) - 1)
        return f"c{len(self.centres) - 1}"

    def centre(self, key: str) -> tuple[float, float]:
        return self.centres[int(key[1:])]


def offset(p: tuple[float, float], east_m: float, north_m: float) -> tuple[float, float]:
    return (p[0] + north_m / M_PER_DEG,
            p[1] + east_m / (M_PER_DEG * math.cos(math.radians(p[0]))))


def person(seed: int, days: int) -> list[tuple[float, float, float]]:
    """(t, lat, lon) exact fixes of one simulated person."""
    rng = np.random.default_rng(seed)
    city = (45.76 + rng.uniform(-0.05, 0.05), 4.84 + rng.uniform(-0.05, 0.05))

    def place(lo_km: float, hi_km: float) -> tuple[float, float]:
        r, a = rng.uniform(lo_km, hi_km) * 1000, rng.uniform(0, 2 * math.pi)
        return offset(city, r * math.cos(a), r * math.sin(a))

    home = place(0, 4)
    work, gym, shop, family = place(1, 8), place(0.5, 3), place(0.3, 2), place(3, 15)
    trips = {int(d): place(2, 60) for d in rng.choice(days, size=max(1, days // 7), replace=False)}
    out = []
    t = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    end = t + timedelta(days=days)
    while t < end:
        d, h = (t - datetime(2026, 1, 5, tzinfo=UTC)).days, t.hour + t.minute / 60
        wd = t.weekday()
        if d in trips and 10 <= h < 16:
            at = trips[d]
        elif wd < 5 and 9 <= h < 17.5:
            at = work
        elif wd in (1, 3) and 18.5 <= h < 20:
            at = gym
        elif wd == 5 and 10 <= h < 11.5:
            at = shop
        elif wd == 6 and 14 <= h < 18:
            at = family
        else:
            at = home
        noise = 40.0 if rng.random() < 0.02 else 10.0
        lat, lon = offset(at, rng.normal(0, noise), rng.normal(0, noise))
        out.append((t.timestamp(), lat, lon))
        t += FIX_EVERY
    return out


def compare(fixes: list[tuple[float, float, float]], precision: float) -> dict[str, float]:
    grid = Grid(precision)
    coarse = PlaceLearner(grid, tz=UTC)
    clusters = Clusters()
    exact = PlaceLearner(clusters, tz=UTC)
    agree = decided = undecided = 0
    dist_err: list[float] = []
    away_err: list[float] = []
    for t, lat, lon in fixes:
        ref, _ = exact.observe(t, lat, lon)
        got, dist = coarse.observe(t, *grid.snap(lat, lon))
        if math.isnan(ref):
            continue
        decided += 1
        if math.isnan(got):
            undecided += 1
            continue
        agree += int(got == ref)
        if exact.home is not None:
            true_km = haversine_km((lat, lon), clusters.centre(exact.home))
            dist_err.append(abs(dist - true_km))
            if true_km > 1.0:
                away_err.append(abs(dist - true_km))
    return {
        "agreement_pct": 100.0 * agree / decided if decided else math.nan,
        "undecided_pct": 100.0 * undecided / decided if decided else math.nan,
        "homedist_err_km_median": statistics.median(dist_err) if dist_err else math.nan,
        "homedist_err_km_median_away": statistics.median(away_err) if away_err else math.nan,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--precisions", type=float, nargs="+", default=[100, 500, 1000, 2000])
    args = ap.parse_args()
    started = time.perf_counter()
    people = [person(seed, args.days) for seed in range(args.people)]
    results = {}
    for precision in args.precisions:
        runs = [compare(fixes, precision) for fixes in people]
        agree = sorted(r["agreement_pct"] for r in runs)
        results[f"{precision:g}"] = {
            "agreement_pct_median": round(statistics.median(agree), 2),
            "agreement_pct_min": round(agree[0], 2),
            "agreement_pct_p10": round(float(np.percentile(agree, 10)), 2),
            "undecided_pct_median": round(statistics.median(r["undecided_pct"] for r in runs), 2),
            "homedist_err_km_median": round(
                statistics.median(r["homedist_err_km_median"] for r in runs), 3),
            "homedist_err_km_median_beyond_1km": round(
                statistics.median(r["homedist_err_km_median_away"] for r in runs), 3),
        }
    print(json.dumps({
        "bench": "location coarsening vs place feature",
        "people": args.people,
        "days": args.days,
        "fix_every_s": FIX_EVERY.total_seconds(),
        "fixes_per_person": len(people[0]),
        "reference": f"same learner on exact fixes, places = {CLUSTER_M:g} m clusters",
        "precision_m": results,
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
