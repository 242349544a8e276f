#!/usr/bin/env python3
"""Gain from on-device personal adaptation after 1, 6 and 24 h of a person's data (test people).

For each test person of ``models/split.json`` (or, before it exists, the same
rule ``scripts/modeling/realdata.make_split`` with seed 0), the real RR file is
turned into 5 s feature frames by the runtime's own pipeline
(``edgetwin.features``, through ``scripts/modeling/realdata.load_people``), the
shipped engine forecasts over the whole recording, and at each checkpoint ``D``
the twin's refit is replayed with only the first ``D`` hours:

- ``fit_head`` on those hours (adoption judged on their last hour);
- the twin's sources chosen from the same hours (``choose_sources``);
- scored on the *next* hour: MAE of the global model, of what the twin serves
  with the head only, and with head + baseline fallback.

A recording shorter than ``D + 1`` h is cut at its length minus one hour (the
24 h column of the 22 h Holters uses ~21 h). Prints one row per person and
checkpoint and the pooled gains with a 95 % bootstrap CI over people.

    .venv/bin/python scripts/eval_personal.py [--data ../shared/data] [--targets hr,rmssd]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgetwin.inference import personal, scoring  # noqa: E402
from edgetwin.inference.engine import InferenceEngine  # noqa: E402
from edgetwin.inference.explain import scratch_engine  # noqa: E402
from edgetwin.types import FeatureFrame  # noqa: E402

CHECKPOINTS_H = (1, 6, 24)
NEXT_S = 3600.0


def split_people(data: Path, part: str = "test") -> list[str]:
    split = ROOT / "models" / "split.json"
    if split.exists():
        return list(json.loads(split.read_text())[part])
    try:
        from scripts.modeling import realdata
    except ImportError:
        raise SystemExit(
            "eval: no models/split.json and no scripts/modeling/realdata.py to make the split; "
            "run scripts/train first, or name people with --people"
        ) from None
    print("models/split.json not found: using realdata.make_split(seed=0)", file=sys.stderr)
    return list(realdata.make_split(sorted(realdata.person_files(data)), 0)[part])


def load_frames(data: Path, people: list[str]) -> dict[str, list[FeatureFrame]]:
    """Each person's RR file as 5 s feature frames from the runtime's own pipeline.

    Uses ``scripts/modeling/realdata.load_people`` (and its cache) when present; else pushes
    the file through :class:`~edgetwin.features.pipeline.FeaturePipeline` here, in 10 s
    batches as a live strap sends them.
    """
    try:
        from scripts.modeling import realdata
    except ImportError:
        realdata = None
    if realdata is not None:
        recs = realdata.load_people(data, people, workers=1)
        return {p: frames_of(recs[p][0]) for p in people}
    from edgetwin.features.pipeline import FeaturePipeline
    from edgetwin.types import SampleBatch

    out = {}
    for person in people:
        a = np.loadtxt(data / "rr" / f"{person}.csv.gz", delimiter=",", skiprows=1, ndmin=2)
        t, rr = a[:, 0], a[:, 1]
        pipe = FeaturePipeline(5.0)
        frames: list[FeatureFrame] = []
        edges = np.arange(np.floor(t[0] / 10.0) * 10.0, t[-1] + 10.0, 10.0)
        idx = np.searchsorted(t, edges)
        for i, j in itertools.pairwise(idx):
            if j > i:
                frames += pipe.push(SampleBatch.build("rr", ["rr"], t[i:j], rr[i:j, None]))
        out[person] = frames + pipe.flush()
    return out


def frames_of(rec: object) -> list[FeatureFrame]:
    t, v, m = rec.t, rec.values, rec.mask  # type: ignore[attr-defined]
    rows = np.flatnonzero(m.any(axis=1))
    return [
        FeatureFrame(float(t[i]), v[i], m[i].astype(np.float64), np.zeros(v.shape[1], bool), 1)
        for i in rows
    ]


def served_values(o: scoring.Outcomes, series: scoring.ObservedSeries, head, steps) -> np.ndarray:
    """What the twin would serve for each forecast of ``o`` (head, then per-step sources)."""
    model = o.global_
    if head is not None and head.adopted:
        model = o.global_ + personal.TrainingSet.build(o, series).corrections(head.weights)
        model = np.where(np.isfinite(o.persistence)[:, None], model, o.global_)
    if steps is None:
        return model
    pers = o.method("persistence")
    vals = {
        "model": model,
        "persistence": pers,
        "context_mean": o.method("context_mean"),
        "blend": scoring.BLEND * model + (1 - scoring.BLEND) * pers,
    }
    out = np.stack([vals[s][:, k] for k, s in enumerate(steps)], axis=1)
    return np.where(np.isfinite(out), out, model)


def cut(
    o: scoring.Outcomes, sel: np.ndarray, outcome_before: float | None = None, step: float = 5.0
) -> scoring.Outcomes:
    """The forecasts ``sel``; outcomes after ``outcome_before`` are not known yet."""
    actual = o.actual[sel].copy()
    if outcome_before is not None:
        h = actual.shape[1]
        when = o.t[sel][:, None] + step * np.arange(1, h + 1)[None, :]
        actual[when > outcome_before] = np.nan
    return scoring.Outcomes(
        o.target, o.t[sel], actual, o.served[sel], o.global_[sel], o.personal[sel],
        o.lo[sel], o.hi[sel], o.persistence[sel], o.context_mean[sel],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--targets", default="hr,rmssd")
    ap.add_argument("--people", default="", help="comma-separated people instead of the test split")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--split", default="test", help="which people of models/split.json")
    ap.add_argument("--min-gain", type=float, default=None,
                    help="adoption margin to try (default: personal.MIN_GAIN)")
    args = ap.parse_args()
    people = args.people.split(",") if args.people else split_people(args.data, args.split)
    if args.min_gain is not None:
        personal.MIN_GAIN = args.min_gain
    targets = args.targets.split(",")
    engine = InferenceEngine.load()
    print(f"models: {engine.model_id}; test people: {len(people)}", file=sys.stderr)
    all_frames = load_frames(args.data, people)
    rows = []
    for person in people:
        frames = all_frames[person]
        eng = scratch_engine(engine)
        preds = [p for _, ps in eng.observe_many(frames) for p in ps if p.target in targets]
        series = scoring.observed_series(frames, targets, eng.step_s)
        oc = scoring.outcomes(preds, series, eng.context_len)
        t0 = frames[0].t
        t_end = frames[-1].t
        for target in targets:
            o = oc.get(target)
            if o is None:
                continue
            for d_h in CHECKPOINTS_H:
                t_d = min(t0 + d_h * 3600.0, t_end - NEXT_S)
                if t_d <= t0:
                    continue
                hist = cut(o, o.t <= t_d, outcome_before=t_d, step=eng.step_s)
                head = personal.fit_head(
                    personal.TrainingSet.build(hist, series[target]),
                    target,
                    step_s=eng.step_s,
                    now=t_d,
                )
                if head is not None and head.adopted:  # as the twin's refit does
                    head.fill_outcomes(hist, series[target])
                steps = scoring.choose_sources(hist, t_d)["steps"]
                nxt = cut(o, (o.t > t_d) & (o.t <= t_d + NEXT_S))
                ok = np.isfinite(nxt.actual) & np.isfinite(nxt.global_)
                pers = nxt.method("persistence")
                ok &= np.isfinite(pers)
                if ok.sum() < 100:
                    continue
                obs = series[target]
                err = {
                    "global": np.abs(nxt.global_ - nxt.actual)[ok],
                    "head": np.abs(served_values(nxt, obs, head, None) - nxt.actual)[ok],
                    "served": np.abs(served_values(nxt, obs, head, steps) - nxt.actual)[ok],
                    "persistence": np.abs(pers - nxt.actual)[ok],
                }
                rows.append({
                    "person": person,
                    "target": target,
                    "hours": round((t_d - t0) / 3600.0, 1),
                    "checkpoint_h": d_h,
                    "fitted": head is not None,
                    "adopted": bool(head is not None and head.adopted),
                    "holdout_ratio": (
                        head.holdout["personal_mae"] / head.holdout["global_mae"]
                        if head is not None and head.holdout.get("global_mae") else None
                    ),
                    "fallback_steps": sum(s != "model" for s in steps),
                    "cells": int(ok.sum()),
                    **{f"sum_{k}": float(v.sum()) for k, v in err.items()},
                })
        print(f"done {person}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    report(rows, targets)
    return 0


def report(rows: list[dict], targets: list[str]) -> None:
    print("person             target  D(h)  used_h  adopted  holdout p/g  fb  "
          "next-h MAE: global   head  served  persist  gain(head) gain(served)")
    for r in rows:
        c = r["cells"]
        g, h, s, p = (r[f"sum_{k}"] / c for k in ("global", "head", "served", "persistence"))
        hr = f"{r['holdout_ratio']:.3f}" if r["holdout_ratio"] else "  -  "
        print(f"{r['person']:<18} {r['target']:<6} {r['checkpoint_h']:>4} {r['hours']:>7} "
              f"{('yes' if r['adopted'] else 'no' if r['fitted'] else 'n/a'):>8}  {hr:>11} "
              f"{r['fallback_steps']:>3}  {g:>17.3f} {h:>6.3f} {s:>7.3f} {p:>8.3f} "
              f"{1 - h / g:>+10.1%} {1 - s / g:>+12.1%}")
    rng = np.random.default_rng(0)
    print("\npooled over test people (MAE ratio to global on the next hour; 95 % CI by "
          "bootstrap over people)")
    for target in targets:
        for d in CHECKPOINTS_H:
            sel = [r for r in rows if r["target"] == target and r["checkpoint_h"] == d]
            if not sel:
                continue
            g = np.array([r["sum_global"] for r in sel])
            out = []
            for k in ("head", "served", "persistence"):
                v = np.array([r[f"sum_{k}"] for r in sel])
                boots = []
                for _ in range(2000):
                    i = rng.integers(0, len(sel), len(sel))
                    boots.append(v[i].sum() / g[i].sum())
                lo, hi = np.percentile(boots, [2.5, 97.5])
                out.append(f"{k} {v.sum() / g.sum():.3f} [{lo:.3f}, {hi:.3f}]")
            adopted = sum(r["adopted"] for r in sel)
            print(f"  {target:<6} after {d:>2} h: people {len(sel):>2}, adopted {adopted:>2}; "
                  + "; ".join(out))


if __name__ == "__main__":
    raise SystemExit(main())
