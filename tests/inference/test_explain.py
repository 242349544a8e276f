"""Explanations that explain: attention's faithfulness measured on real test people's windows,
occlusion influence attached to live forecasts, and masking that really imputes over a span."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.inference import explain
from edgetwin.inference.engine import InferenceEngine
from edgetwin.inference.render import explain as explain_text
from edgetwin.inference.serving import ServingEngine
from edgetwin.types import FeatureFrame

from .conftest import MODELS

# Real RR of the test people (models/split.json), as 5 s frames by the runtime's pipeline:
# hr and rmssd, 20 min of warm-up before each probed frame (scripts/eval_explain.py
# --write-windows; PhysioNet nsr2db/chf2db/rrhealthy/MMASH, ODC-By / open access).
WINDOWS = Path(__file__).parent / "data" / "real_test_windows.npz"
T_BASE = 1_780_000_000.0


def _people() -> list[str]:
    return [str(p) for p in np.load(WINDOWS)["people"]]


def _real_windows() -> list[tuple[dict, FeatureFrame]]:
    data = np.load(WINDOWS)
    values, times, feats = data["values"], data["t"], [str(f) for f in data["features"]]
    engine = InferenceEngine.load()
    out = []
    for vals, ts in zip(values, times, strict=True):
        frames = []
        for row, t in zip(vals, ts, strict=True):
            v = np.full(len(NAMES), np.nan)
            q = np.zeros(len(NAMES))
            for j, name in enumerate(feats):
                v[INDEX[name]] = row[j]
                q[INDEX[name]] = 1.0 if np.isfinite(row[j]) else 0.0
            frames.append(FeatureFrame(T_BASE + float(t), v, q, np.zeros(len(NAMES), bool),
                                       SCHEMA_VERSION))
        eng = explain.scratch_engine(engine)
        eng.observe_many(frames[:-1])
        out.append((eng.state(), frames[-1]))
    return out


def test_shipped_windows_come_from_test_people() -> None:
    data = np.load(WINDOWS)
    people = {str(p) for p in data["people"]}
    assert len(people) >= 10 and data["values"].shape[0] >= 20
    split = MODELS / "split.json"
    if split.exists():
        doc = json.loads(split.read_text())
        assert people <= set(doc["test"]), people - set(doc["test"])
        assert not people & (set(doc["train"]) | set(doc.get("val", [])))


@pytest.mark.parametrize("target", ["hr", "rmssd"])
def test_attention_faithfulness_on_real_test_windows(target: str) -> None:
    """Masking the most-attended 30 s must move the forecast more than a random 30 s for
    attention to count as an explanation; occlusion's own top span is the yardstick."""
    engine = InferenceEngine.load()
    res = explain.faithfulness(engine, _real_windows(), target, groups=_people())
    print(f"\n{target} on {res.windows} real test windows (mean |change| of the forecast):"
          f" most-attended span {res.attention_top:.3f}, random span {res.random_span:.3f}"
          f" (ratio {res.attention_top / res.random_span:.2f}, 95 % CI "
          f"{res.ratio_ci[0]:.2f}-{res.ratio_ci[1]:.2f} over people; attention's span wins in "
          f"{res.attention_wins:.0%}), occlusion's top span {res.occlusion_top:.3f};"
          f" same top span {res.same_top:.0%}; attention's distance from its mean "
          f"(total variation) {res.attention_tv:.3f}")
    assert res.windows >= 20
    # occlusion finds the part of the context that matters: far more than a random span
    assert res.occlusion_top > 2.0 * res.random_span
    # the explanation shown is the one that passes: attention only if it passed
    if explain.EXPLAIN_METHOD == "attention":
        assert res.passes(), res.to_json()
    else:
        assert res.occlusion_top > res.attention_top


def test_mask_state_imputes_over_the_span() -> None:
    t = [float(k) for k in range(10)]
    filled = [[float(k), None] for k in range(10)]
    state = {"context": {"t": t, "filled": filled, "mask": [[1, 0]] * 10,
                         "imputed": [[0, 0]] * 10, "present": [1] * 10}}
    # post-context rows 3..5 are state rows 4..6
    out = explain.mask_state(state, (3, 6))["context"]
    assert out["filled"][:, 0] == pytest.approx(t)  # a line: the linear fill is exact
    assert out["mask"][:, 0].astype(int).tolist() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert out["imputed"][:, 0].astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert np.isnan(out["filled"][:, 1]).all()  # a feature never seen stays missing
    assert state["context"]["mask"][5] == [1, 0]  # the original is untouched


def test_live_forecasts_carry_occlusion_influence(sim_frames) -> None:  # type: ignore[no-untyped-def]
    serving = ServingEngine(InferenceEngine.load(MODELS))
    serving.explain_every_s = 0.0  # every live step (the daemon: at most one per 4 s)
    frames = sim_frames(2, 8.0)
    serving.observe_many(frames[:-3])
    got = []
    for f in frames[-3:]:  # live: one frame at a time
        got += [p for _, ps in serving.observe_many([f]) for p in ps]
    assert got
    throttled = ServingEngine(InferenceEngine.load(MODELS))
    newest = throttled.observe_many(frames[:-3])[-1][1]
    assert newest and all(p.influence for p in newest)  # the newest forecasts of a call
    later = [p for f in frames[-3:] for _, ps in throttled.observe_many([f]) for p in ps]
    assert later and not any(p.influence for p in later)  # bounded: not every step
    for p in got:
        assert len(p.influence) == len(p.attention)
        assert sum(p.influence) == pytest.approx(1.0)
        assert min(p.influence) >= 0.0
    if explain.EXPLAIN_METHOD == "occlusion":
        assert "of the masking effect" in explain_text(got[-1])
