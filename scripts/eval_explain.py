#!/usr/bin/env python3
"""Does attention explain the forecast? Faithfulness of attention vs occlusion on real test people.

For each test person (``models/split.json``, else ``realdata.make_split`` seed 0)
the runtime pipeline turns the RR file into 5 s frames; the shipped engine runs
over the recording and, every ``--every`` minutes after the first hour, the
window ending there is probed (:func:`edgetwin.inference.explain.faithfulness`):
masking the most-attended 30 s span vs a random 30 s span vs the span occlusion
ranks first, as mean |change| of the forecast over the horizon; the CI of the
attention/random ratio is a bootstrap over people.

``--write-windows FILE`` also saves, for the test suite, ``--ship`` windows per
person as raw frames (hr and rmssd, 20 min of warm-up before each window) so
the check runs in CI without the data directory.

    .venv/bin/python scripts/eval_explain.py [--data ../shared/data] [--targets hr,rmssd]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgetwin.features.schema import INDEX  # noqa: E402
from edgetwin.inference.engine import InferenceEngine  # noqa: E402
from edgetwin.inference.explain import faithfulness, scratch_engine  # noqa: E402
from scripts.eval_personal import load_frames, split_people  # noqa: E402

WARM = 240  # frames of warm-up shipped before each window (20 min)
KEEP = ("hr", "rmssd")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--targets", default="hr,rmssd")
    ap.add_argument("--every", type=float, default=45.0, help="minutes between probed windows")
    ap.add_argument("--hours", type=float, default=8.0, help="probe the first HOURS of each")
    ap.add_argument("--write-windows", type=Path, default=None)
    ap.add_argument("--ship", type=int, default=2, help="windows per person to write")
    ap.add_argument("--people", default="", help="comma-separated people instead of the test split")
    args = ap.parse_args()
    people = args.people.split(",") if args.people else split_people(args.data)
    engine = InferenceEngine.load()
    print(f"models: {engine.model_id}; test people: {len(people)}", file=sys.stderr)
    all_frames = load_frames(args.data, people)
    windows = []
    owners: list[str] = []
    shipped: list[np.ndarray] = []
    shipped_t: list[np.ndarray] = []
    names: list[str] = []
    for person in people:
        frames = all_frames[person]
        eng = scratch_engine(engine)
        t0 = frames[0].t
        times = np.array([f.t for f in frames])
        probes = np.arange(t0 + 3600.0, min(times[-1], t0 + args.hours * 3600.0), args.every * 60)
        idx = sorted({int(np.searchsorted(times, p)) for p in probes if p < times[-1]})
        done = 0
        mine = 0
        for i in idx:
            eng.observe_many(frames[done:i])
            done = i
            windows.append((eng.state(), frames[i]))
            owners.append(person)
            if args.write_windows is not None and mine < args.ship and i >= WARM:
                span = frames[i - WARM : i + 1]
                vals = np.array([[f.values[INDEX[k]] for k in KEEP] for f in span], np.float32)
                shipped.append(vals)
                shipped_t.append(np.array([f.t - span[0].t for f in span]))
                names.append(person)
                mine += 1
        print(f"{person}: {len(idx)} windows", file=sys.stderr)
    out = {}
    for target in args.targets.split(","):
        res = faithfulness(engine, windows, target, groups=owners)
        out[target] = res.to_json()
        print(f"{target}: {json.dumps(out[target])}")
    if args.write_windows is not None:
        np.savez_compressed(
            args.write_windows,
            values=np.stack(shipped),
            t=np.stack(shipped_t),
            people=np.array(names),
            features=np.array(KEEP),
        )
        print(f"wrote {len(shipped)} windows to {args.write_windows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
