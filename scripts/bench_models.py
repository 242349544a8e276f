"""Benchmark the on-device models: latency, throughput, sizes, session creation, RSS.

    .venv/bin/python scripts/bench_models.py [--quick]

``run(quick)`` returns ``{"name": {"median", "p99", "unit", ...}}`` for the
lead's ``scripts/bench``. Everything is measured in this one run, one intra-op
thread: torch eager fp32 (the baseline), onnxruntime fp32 and onnxruntime int8,
per window at batch 1 and windows/s at batch 32, for both models; plus file
sizes, session creation time, the process RSS after loading the engine, and
the engine's own per-step cost.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _rss_mb() -> float:
    with Path("/proc/self/status").open() as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, n: int, warmup: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def _stats(
    samples: np.ndarray, unit: str = "us", scale: float = 1e6, **extra: Any
) -> dict[str, Any]:
    return {
        "median": round(float(np.median(samples)) * scale, 2),
        "p99": round(float(np.percentile(samples, 99)) * scale, 2),
        "unit": unit,
        **extra,
    }


def _torch_models(manifest: Any) -> dict[str, Any] | None:
    """Torch eager twins of the shipped models (same shapes, random weights: speed only)."""
    try:
        import torch
    except ImportError:
        return None
    from modeling.nets import Forecaster, GainGenerator

    torch.set_num_threads(1)
    return {"imputer": GainGenerator().eval(), "forecaster": Forecaster().eval(), "torch": torch}


def run(quick: bool) -> dict[str, dict[str, Any]]:
    """All model figures in one run (quick: fewer repetitions)."""
    from edgetwin.inference.engine import InferenceEngine
    from edgetwin.inference.registry import load_manifest
    from edgetwin.inference.session import create_session

    n, warm = (300, 50) if quick else (3000, 300)
    nb = 30 if quick else 300
    manifest = load_manifest()
    rng = np.random.default_rng(0)
    w, f = manifest.imputer_window, len(manifest.features)
    inputs = {
        "imputer": lambda b: {
            "z": rng.normal(size=(b, w * f)).astype(np.float32),
            "mask": (rng.random((b, w * f)) > 0.2).astype(np.float32),
        },
        "forecaster": lambda b: {
            "x": np.concatenate(
                [rng.normal(size=(manifest.context, b, f)), np.ones((manifest.context, b, f))],
                axis=2,
            ).astype(np.float32)
        },
    }
    res: dict[str, dict[str, Any]] = {}
    rss0 = _rss_mb()
    sessions: dict[tuple[str, str], Any] = {}
    for name in ("imputer", "forecaster"):
        for prec in ("fp32", "int8"):
            mf = manifest.file(name, prec)
            t = _time(lambda mf=mf: create_session(mf), 5 if quick else 20, 1)
            res[f"{name}.{prec}.session_create"] = _stats(t, "ms", 1e3)
            sessions[(name, prec)] = create_session(mf)
            res[f"{name}.{prec}.size"] = {
                "median": mf.size / 1024,
                "p99": mf.size / 1024,
                "unit": "KiB",
            }
        ratio = manifest.file(name, "int8").size / manifest.file(name, "fp32").size
        res[f"{name}.int8.size"]["ratio_vs_fp32"] = round(ratio, 3)
    res["rss_after_loading_sessions"] = {
        "median": round(_rss_mb(), 1),
        "p99": round(_rss_mb(), 1),
        "unit": "MB",
        "delta_mb": round(_rss_mb() - rss0, 1),
    }
    # the engine's whole step (standardise, impute if needed, forecast, build Predictions)
    rss1 = _rss_mb()
    eng = InferenceEngine.load()
    res["rss_after_engine_load"] = {
        "median": round(_rss_mb(), 1),
        "p99": round(_rss_mb(), 1),
        "unit": "MB",
        "delta_mb": round(_rss_mb() - rss1, 1),
    }
    frames = _frames(manifest, 400 if quick else 2000)
    for fr in frames[:80]:
        eng.observe(fr)
    lat = _time(_stepper(eng, frames[80:]), len(frames) - 80, 0)
    res["engine.observe_step"] = _stats(lat, note="one 5 s step incl. imputer (10 % cells missing)")
    eng2 = InferenceEngine.load()
    t0 = time.perf_counter()
    eng2.observe_many(frames)
    res["engine.observe_many"] = {
        "median": round(len(frames) / (time.perf_counter() - t0), 1),
        "p99": None,
        "unit": "steps/s",
        "x_real_time": round(len(frames) * manifest.step_s / (time.perf_counter() - t0), 0),
    }
    # torch last: importing it grows the process by ~200 MB
    tm = _torch_models(manifest)
    for name in ("imputer", "forecaster"):
        x1, x32 = inputs[name](1), inputs[name](32)
        base = None
        if tm is not None:
            torch = tm["torch"]
            net = tm[name]
            t1 = [torch.from_numpy(v) for v in x1.values()]
            t32 = [torch.from_numpy(v) for v in x32.values()]
            with torch.inference_mode():
                lat = _time(lambda net=net, t1=t1: net(*t1), n, warm)
                thr = _time(lambda net=net, t32=t32: net(*t32), nb, 10)
            base = float(np.median(lat))
            res[f"{name}.torch_eager_fp32.batch1"] = _stats(lat)
            res[f"{name}.torch_eager_fp32.batch32"] = _stats(thr, "windows/s", 1.0)
            res[f"{name}.torch_eager_fp32.batch32"].update(
                median=round(32 / float(np.median(thr)), 1),
                p99=round(32 / float(np.percentile(thr, 99)), 1),
            )
        else:
            res[f"{name}.torch_eager_fp32.batch1"] = {
                "median": None,
                "p99": None,
                "unit": "us",
                "skipped": "torch not installed",
            }
        for prec in ("fp32", "int8"):
            sess = sessions[(name, prec)]
            lat = _time(lambda sess=sess, x1=x1: sess.run(None, x1), n, warm)
            thr = _time(lambda sess=sess, x32=x32: sess.run(None, x32), nb, 10)
            entry = _stats(lat)
            if base is not None:
                entry["speedup_vs_torch_eager"] = round(base / float(np.median(lat)), 2)
            res[f"{name}.ort_{prec}.batch1"] = entry
            res[f"{name}.ort_{prec}.batch32"] = {
                "median": round(32 / float(np.median(thr)), 1),
                "p99": round(32 / float(np.percentile(thr, 99)), 1),
                "unit": "windows/s",
            }
    return res


def _frames(manifest: Any, n: int) -> list[Any]:
    from edgetwin.types import FeatureFrame

    rng = np.random.default_rng(1)
    f = len(manifest.features)
    mean, std = manifest.prior.mean, manifest.prior.std
    out = []
    level = rng.normal(size=f)
    for i in range(n):
        level = 0.98 * level + 0.2 * rng.normal(size=f)
        v = mean + 0.3 * std * level
        v[6:] = np.nan  # wristband only
        v[rng.random(f) < 0.1] = np.nan
        out.append(
            FeatureFrame(1.7e9 + 5.0 * i, v, np.ones(f), np.zeros(f, bool), manifest.schema_version)
        )
    return out


def _stepper(eng: Any, frames: list[Any]):  # type: ignore[no-untyped-def]
    it = iter(frames)
    return lambda: eng.observe(next(it))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run(quick), indent=1))
