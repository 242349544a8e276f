"""The 91 real people of ``../shared/data/rr`` as feature recordings, and their person-level split.

Each ``<dataset>_<id>.csv.gz`` (``timestamp,rr``, one row per beat) is pushed
through the daemon's own :class:`~edgetwin.features.pipeline.FeaturePipeline`
as an ``rr`` stream in 10 s batches (what a live strap sends), so training sees
exactly the features the twin computes. The frames are put on a regular 5 s
grid (all-missing rows where the pipeline emitted nothing, e.g. > 5 min without
beats), as the engine does with gaps.

MMASH people also have an actigraph on the same clock: steps per step and the
posture are kept next to the features (``extra``) for reporting where the model
loses (activity changes); the twin's schema has no steps/posture feature, so
they are not model inputs.

Feature timelines are cached as ``.npz`` under ``/tmp`` (keyed by the pipeline's
source), never in git.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .data import Recording, frames_to_recording
from .spec import N_FEATURES, STEP_S

_LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("nsr2db", "chf2db", "rrhealthy", "mmash")
POSTURES = ("off", "lying", "sitting", "standing")
FEATURISE_VERSION = "rr-v1"
CACHE = Path(os.environ.get("EDGETWIN_RR_CACHE", "/tmp/edgetwin-rr-cache"))


def default_data_dir() -> Path | None:
    """``../shared/data`` beside the project when it exists."""
    cand = ROOT.parent / "shared" / "data"
    return cand if (cand / "rr").is_dir() else None


def person_files(data_dir: Path) -> dict[str, Path]:
    """Person id (file stem, e.g. ``nsr2db_nsr001``) -> RR file, for every known dataset."""
    rr = data_dir / "rr"
    out = {}
    for path in sorted(rr.glob("*.csv.gz")):
        stem = path.name[: -len(".csv.gz")]
        if stem.endswith("_actigraph") or stem.split("_")[0] not in DATASETS:
            continue
        out[stem] = path
    if not out:
        raise SystemExit(f"train: no RR files in {rr}; pass --data DIR holding rr/*.csv.gz")
    return out


def dataset_of(person: str) -> str:
    return person.split("_", maxsplit=1)[0]


def make_split(people: list[str], seed: int, frac: tuple[float, float] = (0.6, 0.2)) -> dict:
    """Train/val/test by person, stratified over datasets, deterministic in ``seed``.

    Each dataset's people are shuffled with a generator seeded from ``seed`` and
    the dataset's name, then cut at ``frac`` (train, val); the rest is test. A
    dataset with 3+ people has at least one in val and one in test.
    """
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ds in DATASETS:
        members = sorted(p for p in people if dataset_of(p) == ds)
        if not members:
            continue
        h = int(hashlib.sha256(f"{seed}-{ds}".encode()).hexdigest()[:8], 16)
        order = list(np.random.default_rng(h).permutation(len(members)))
        n = len(members)
        n_val = max(1, round(frac[1] * n)) if n >= 3 else 0
        n_test = max(1, round((1 - frac[0] - frac[1]) * n)) if n >= 3 else 0
        n_train = n - n_val - n_test
        picked = [members[i] for i in order]
        split["train"] += sorted(picked[:n_train])
        split["val"] += sorted(picked[n_train : n_train + n_val])
        split["test"] += sorted(picked[n_train + n_val :])
    return split


def _read_csv(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)


def _featurise(args: tuple[str, str, str]) -> str:
    """One person: RR file -> pipeline -> regular grid (+ actigraph) -> cache file."""
    name, path_s, out_s = args
    from edgetwin.features.pipeline import FeaturePipeline
    from edgetwin.types import SampleBatch

    path, out = Path(path_s), Path(out_s)
    a = _read_csv(path)
    t, rr = a[:, 0], a[:, 1]
    pipe = FeaturePipeline(STEP_S)
    frames = []
    edges = np.arange(np.floor(t[0] / 10.0) * 10.0, t[-1] + 10.0, 10.0)
    idx = np.searchsorted(t, edges)
    for i, j in itertools.pairwise(idx):
        if j > i:
            frames.extend(pipe.push(SampleBatch.build("rr", ["rr"], t[i:j], rr[i:j, None])))
    frames.extend(pipe.flush())
    rec = frames_to_recording(name, "real", frames)
    # regular grid: rows the pipeline skipped become all-missing rows
    k = np.round((rec.t - rec.t[0]) / STEP_S).astype(np.int64)
    n = int(k[-1]) + 1
    grid_t = rec.t[0] + STEP_S * np.arange(n)
    values = np.full((n, N_FEATURES), np.nan)
    mask = np.zeros((n, N_FEATURES), dtype=bool)
    values[k], mask[k] = rec.values, rec.mask
    arrays = {"t": grid_t, "values": values, "mask": mask}
    acti = path.with_name(f"{name}_actigraph.csv.gz")
    if acti.exists():
        import csv
        import gzip

        with gzip.open(acti, "rt") as fh:
            rows = list(csv.reader(fh))[1:]
        at = np.array([float(r[0]) for r in rows])
        steps = np.array([float(r[1]) for r in rows])
        post = np.array([POSTURES.index(r[2]) if r[2] in POSTURES else 0 for r in rows])
        # the step ending at grid_t[i] covers (grid_t[i] - STEP_S, grid_t[i]]
        ki = np.ceil((at - grid_t[0]) / STEP_S).astype(np.int64)
        ok = (ki >= 0) & (ki < n)
        s = np.zeros(n)
        np.add.at(s, ki[ok], steps[ok])
        p = np.zeros(n, dtype=np.int64)
        p[ki[ok]] = post[ok]
        arrays["steps"], arrays["posture"] = s, p
    # write then rename: a concurrent run never reads a half-written file
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return name


def load_people(
    data_dir: Path, names: list[str] | None = None, workers: int = 2
) -> dict[str, tuple[Recording, dict[str, np.ndarray]]]:
    """Person -> (feature Recording on a 5 s grid, extra arrays), featurising what is not cached."""
    files = person_files(data_dir)
    names = sorted(files) if names is None else names
    # Bump FEATURISE_VERSION when _featurise or the hr/rmssd features change. The pipeline's
    # source is not hashed: unrelated edits to it (forget, buffering) must not cost a
    # 15-minute refeaturisation; the parity test guards the feature code itself.
    key = FEATURISE_VERSION
    cdir = CACHE / key
    cdir.mkdir(parents=True, exist_ok=True)
    todo = [
        (n, str(files[n]), str(cdir / f"{n}.npz"))
        for n in names
        if not (cdir / f"{n}.npz").exists()
    ]
    if todo:
        _LOGGER.info("featurising %d people into %s (%d workers)", len(todo), cdir, workers)
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for done in ex.map(_featurise, todo):
                _LOGGER.info("featurised %s", done)
    out = {}
    for n in names:
        with np.load(cdir / f"{n}.npz") as z:
            rec = Recording(n, "real", z["t"], z["values"], z["mask"])
            extra = {k: z[k] for k in z.files if k not in ("t", "values", "mask")}
        out[n] = (rec, extra)
    return out


def file_listing(data_dir: Path, names: list[str]) -> list[dict]:
    """The files a model used: name, bytes and sha256 (for the model card and manifest)."""
    files = person_files(data_dir)
    rows = []
    for n in names:
        for p in (files[n], files[n].with_name(f"{n}_actigraph.csv.gz")):
            if p.exists():
                rows.append(
                    {
                        "file": f"rr/{p.name}",
                        "bytes": p.stat().st_size,
                        "sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16],
                    }
                )
    return rows


def dump_split(split: dict, path: Path, seed: int) -> None:
    path.write_text(
        json.dumps(
            {
                "seed": seed,
                "rule": "by person, stratified over datasets (realdata.make_split)",
                **split,
            },
            indent=1,
        )
        + "\n"
    )
