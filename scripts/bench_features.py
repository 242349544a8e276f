"""Feature-pipeline throughput: 16-ch 250 Hz EEG + 16 optical channels at 64 Hz, and the simulator.

``run(quick)`` builds a synthetic recording (EEG: 1/f-ish noise with an alpha
rhythm; optics: 8 source-detector pairs at 760/850 nm with a cardiac pulse),
pushes it through ``FeaturePipeline`` in 1 s batches and reports:

- ``features_push``: seconds per 1 s batch (median, p99), the multiple of real
  time, and the share of one core the pipeline takes at real time
  (process time / recording time);
- ``features_baseline``: the same batches consumed by a trivial reader (a
  per-step numpy mean of every channel), measured in the same run, and the
  pipeline's cost as a ratio of it;
- ``simulator``: ``simulate()`` of the default modalities as fast as possible,
  seconds per simulated second and the multiple of real time;
- ``surroundings``: what schema v2's room streams cost. The pipeline over a
  simulated wristband (rr, vitals, accel) with and without the simulated bedroom
  (``.climate`` every 10 s, ``.air`` at 1 Hz), both in 1 s batches, as the share
  of a core at real time, alternated over 3 rounds (median); and the bedroom's
  generator alone (``simulate(modalities=("climate", "air"))``, whose chunks
  also advance the simulated heart) against ``modalities=("rr",)``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.sources.simulator import SimulatedPerson, simulate
from edgetwin.types import SampleBatch

T0 = 1_700_000_000.0
EEG_HZ, OPT_HZ, N_EEG, N_PAIRS = 250, 64, 16, 8


def run(quick: bool) -> dict[str, Any]:
    """Median/p99 per batch, x real time and CPU share at real time."""
    seconds = 120 if quick else 600
    batches = _recording(seconds)
    out: dict[str, Any] = {}
    pipe = FeaturePipeline()
    per_batch, cpu = _time(pipe.push, batches)
    pipe.flush()
    base_batch, base_cpu = _time(_baseline_consumer(), batches)
    out["features_push"] = _summary(per_batch, cpu, seconds)
    out["features_push"]["frames"] = pipe.counters["frames"]
    out["features_push"]["vs_baseline"] = round(cpu / max(base_cpu, 1e-9), 1)
    out["features_baseline"] = _summary(base_batch, base_cpu, seconds)
    sim_s = 60 if quick else 300
    person = SimulatedPerson.from_seed(1)
    gen = simulate(person, T0, sim_s, 1.0)
    sim_times: list[float] = []
    c0 = time.process_time()
    while True:
        t0 = time.perf_counter()
        try:
            next(gen)
        except StopIteration:
            break
        sim_times.append(time.perf_counter() - t0)
    sim_cpu = time.process_time() - c0
    out["simulator"] = {
        "median": statistics.median(sim_times),
        "p99": _p99(sim_times),
        "unit": "s per batch (7 streams per simulated second)",
        "x_realtime": round(sim_s / sim_cpu, 1),
        "cpu_share_at_realtime": round(sim_cpu / sim_s, 5),
    }
    out["surroundings"] = _surroundings(120 if quick else 600)
    return out


def _surroundings(seconds: int) -> dict[str, Any]:
    person = SimulatedPerson.from_seed(2)
    body = ("rr", "vitals", "accel")
    sets = {"body": body, "body_and_room": (*body, "climate", "air")}
    data = {k: list(simulate(person, T0, seconds, 1.0, modalities=m, dropouts=False))
            for k, m in sets.items()}
    cpu: dict[str, list[float]] = {k: [] for k in sets}
    for _ in range(3):
        for k in sets:
            pipe = FeaturePipeline()
            c0 = time.process_time()
            for b in data[k]:
                pipe.push(b)
            cpu[k].append(time.process_time() - c0)
    share = {k: statistics.median(v) / seconds for k, v in cpu.items()}
    gen: dict[str, float] = {}
    for k, mods in (("rr_only", ("rr",)), ("climate_and_air", ("climate", "air"))):
        c0 = time.process_time()
        for _ in simulate(person, T0, seconds, 1.0, modalities=mods):
            pass
        gen[k] = (time.process_time() - c0) / seconds
    return {
        "pipeline_cpu_share_at_realtime": {k: round(v, 5) for k, v in share.items()},
        "pipeline_ratio": round(share["body_and_room"] / max(share["body"], 1e-12), 2),
        "generator_cpu_share_at_realtime": {k: round(v, 5) for k, v in gen.items()},
        "seconds_simulated": seconds,
        "command": "python scripts/bench_features.py",
    }


def _recording(seconds: int) -> list[SampleBatch]:
    rng = np.random.default_rng(0)
    eeg_names = [f"eeg_{i + 1}" for i in range(N_EEG)]
    opt_names = [f"fnirs_s{p + 1}_d1_{nm}" for p in range(N_PAIRS) for nm in (760, 850)]
    meta_opt = {"sampling_rate_hz": float(OPT_HZ), "distance_cm": 3.0}
    meta_eeg = {"sampling_rate_hz": float(EEG_HZ)}
    batches = []
    for s in range(seconds):
        te = T0 + s + np.arange(EEG_HZ) / EEG_HZ
        eeg = np.cumsum(rng.standard_normal((EEG_HZ, N_EEG)), axis=0) * 0.5
        eeg += 10.0 * np.sin(2 * np.pi * 10.0 * te)[:, None]
        to = T0 + s + np.arange(OPT_HZ) / OPT_HZ
        pulse = np.sin(2 * np.pi * 1.2 * to)[:, None]
        opt = 2e4 * (1 + 0.01 * pulse + 0.002 * rng.standard_normal((OPT_HZ, 2 * N_PAIRS)))
        batches.append(SampleBatch.build("hs.eeg", eeg_names, te, eeg, meta=meta_eeg))
        batches.append(SampleBatch.build("hs.optics", opt_names, to, opt, meta=meta_opt))
    return batches


def _baseline_consumer() -> Any:
    """Keep the last step's samples per stream and take their mean: the least a reader does."""
    held: dict[str, list[np.ndarray]] = {}
    step = [int(T0 // 5)]

    def consume(b: SampleBatch) -> None:
        held.setdefault(b.stream, []).append(b.values)
        k = int(b.last_t // 5)
        if k > step[0]:
            for parts in held.values():
                np.nanmean(np.concatenate(parts), axis=0)
            held.clear()
            step[0] = k

    return consume


def _time(fn: Any, batches: list[SampleBatch]) -> tuple[list[float], float]:
    per_second: list[float] = []
    c0 = time.process_time()
    for i in range(0, len(batches), 2):  # one EEG and one optics batch per recorded second
        t0 = time.perf_counter()
        fn(batches[i])
        fn(batches[i + 1])
        per_second.append(time.perf_counter() - t0)
    return per_second, time.process_time() - c0


def _p99(xs: list[float]) -> float:
    return float(np.percentile(np.asarray(xs), 99))


def _summary(per_batch: list[float], cpu: float, seconds: int) -> dict[str, Any]:
    return {
        "median": statistics.median(per_batch),
        "p99": _p99(per_batch),
        "unit": "s per recorded second (16 EEG @ 250 Hz + 16 optical @ 64 Hz)",
        "x_realtime": round(seconds / max(cpu, 1e-9), 1),
        "cpu_share_at_realtime": round(cpu / seconds, 5),
        "command": "python scripts/bench_features.py",
    }


if __name__ == "__main__":
    import json
    import warnings

    warnings.simplefilter("ignore")
    print(json.dumps(run("--quick" in sys.argv), indent=2))
