"""The inference engine on the shipped models, fed by the real simulator and FeaturePipeline."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import DataCorrupt, MalformedInput, UsageError
from edgetwin.features.schema import INDEX, NAMES
from edgetwin.inference.engine import InferenceEngine
from edgetwin.inference.fill import impute as fill_impute

from .conftest import blank

HR = INDEX["hr"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine_factory():  # type: ignore[no-untyped-def]
    return lambda precision="int8": InferenceEngine.load(precision=precision)


def test_no_forecast_before_min_context_then_forecasts(engine_factory, sim_frames) -> None:
    eng = engine_factory()
    frames = sim_frames(minutes=8)
    out = [eng.observe(f) for f in frames]
    min_ctx = eng.manifest.min_context
    assert all(preds == [] for _, preds in out[: min_ctx - 1])
    first = out[min_ctx - 1][1]
    assert {p.target for p in first} >= {"hr", "rmssd", "spo2"}
    assert not any(NAMES[i] in {p.target for p in first} for i in range(6, 13))  # no headset worn
    last = {p.target: p for p in out[-1][1]}
    hr = last["hr"]
    assert hr.t == frames[-1].t and hr.step_s == 5.0 and len(hr.horizon) == eng.horizon == 12
    assert len(hr.attention) == min(len(frames), eng.context_len)
    assert sum(hr.attention) == pytest.approx(1.0)
    for (lo, hi), med in zip(hr.band, hr.horizon, strict=True):
        assert lo <= med <= hi
    observed = np.array([f.values[HR] for f in frames[-60:]])
    assert abs(hr.horizon[0] - observed[-6:].mean()) < 4 * observed.std() + 5  # plausible bpm
    assert 30 < hr.horizon[0] < 200
    assert hr.model.startswith("lstm-attn/int8/")
    assert json.loads(json.dumps(hr.to_json()))["target"] == "hr"


def test_gaps_are_imputed_and_flagged_absent_sensors_are_not(engine_factory, sim_frames) -> None:
    eng = engine_factory()
    frames = sim_frames(minutes=6)
    gap = range(40, 46)
    fed = [blank(f, [HR]) if i in gap else f for i, f in enumerate(frames)]
    out = [eng.observe(f) for f in fed]
    for i in gap:
        frame = out[i][0]
        assert frame.imputed[HR], i
        assert np.isfinite(frame.values[HR])
        truth = frames[i].values[HR]
        assert abs(frame.values[HR] - truth) < 25, (i, frame.values[HR], truth)
        assert not frame.imputed[INDEX["eeg_alpha"]] and np.isnan(frame.values[INDEX["eeg_alpha"]])
    assert not out[39][0].imputed.any()
    # the forecast after the gap lists the imputed span of its context
    hr = next(p for p in out[50][1] if p.target == "hr")
    assert hr.imputed == ((frames[40].t, frames[45].t),)


def test_gaps_longer_than_the_imputer_window_stay_missing(engine_factory, sim_frames) -> None:
    eng = engine_factory()
    frames = sim_frames(minutes=8)
    w = eng.manifest.imputer_window
    fed = [blank(f, [HR]) if i >= 30 else f for i, f in enumerate(frames)]
    out = [eng.observe(f) for f in fed]
    assert out[30][0].imputed[HR]
    assert not out[30 + w][0].imputed[HR] and np.isnan(out[30 + w][0].values[HR])
    assert "hr" not in {p.target for p in out[30 + w][1]}  # no recent hr: no hr forecast


def test_anomaly_when_the_observed_value_leaves_the_band(engine_factory, sim_frames) -> None:
    eng = engine_factory()
    frames = sim_frames(minutes=8)
    out = [eng.observe(f) for f in frames[:80]]
    flagged = sum(p.anomaly for _, preds in out[20:] for p in preds if p.target == "hr")
    assert flagged <= 0.2 * 60  # a 95 % band: rare on ordinary data
    v = frames[80].values.copy()
    v[HR] = 190.0
    _, preds = eng.observe(replace(frames[80], values=v))
    assert next(p for p in preds if p.target == "hr").anomaly


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_observe_many_matches_observe(engine_factory, sim_frames, precision) -> None:
    """Batched ingest gives the live path's answers (int8: up to its per-call activation scale)."""
    frames = sim_frames(minutes=10)
    fed = [blank(f, [HR, INDEX["spo2"]]) if 30 <= i < 34 else f for i, f in enumerate(frames)]
    a, b = engine_factory(precision), engine_factory(precision)
    tol = 1e-4 if precision == "fp32" else 0.02
    one = [a.observe(f) for f in fed]
    many = b.observe_many(fed)
    assert len(one) == len(many) == len(fed)
    for (fa, pa), (fb, pb) in zip(one, many, strict=True):
        np.testing.assert_allclose(fa.values, fb.values, rtol=tol, equal_nan=True)
        np.testing.assert_array_equal(fa.imputed, fb.imputed)
        assert [p.target for p in pa] == [p.target for p in pb]
        for x, y in zip(pa, pb, strict=True):
            width = np.array([hi - lo for lo, hi in x.band])
            assert np.all(np.abs(np.subtract(x.horizon, y.horizon)) <= tol * width + 1e-6)
            np.testing.assert_allclose(x.attention, y.attention, atol=tol / 10)
            assert x.imputed == y.imputed


def test_state_restore_continues_exactly(engine_factory, sim_frames) -> None:
    frames = sim_frames(minutes=10)
    fed = [blank(f, [HR]) if 70 <= i < 75 else f for i, f in enumerate(frames)]
    # fp32: int8's activation scales depend on what shares a batch, fp32 is exact
    engine_factory = functools.partial(engine_factory, "fp32")
    whole = engine_factory()
    ref = whole.observe_many(fed)
    first = engine_factory()
    first.observe_many(fed[:72])
    saved = json.loads(json.dumps(first.state(), allow_nan=False))  # strict JSON
    second = engine_factory()
    second.restore(saved)
    rest = second.observe_many(fed[72:])
    for (fa, pa), (fb, pb) in zip(ref[72:], rest, strict=True):
        np.testing.assert_allclose(fa.values, fb.values, rtol=1e-6, equal_nan=True)
        assert [p.target for p in pa] == [p.target for p in pb]
        for x, y in zip(pa, pb, strict=True):
            np.testing.assert_allclose(x.horizon, y.horizon, rtol=1e-5)
            np.testing.assert_allclose(x.band, y.band, rtol=1e-5)
            assert (x.imputed, x.anomaly, x.t) == (y.imputed, y.anomaly, y.t)


def test_restore_rejects_foreign_state(engine_factory) -> None:
    eng = engine_factory()
    good = eng.state()
    with pytest.raises(DataCorrupt, match="schema v9"):
        eng.restore({**good, "schema_version": 9})
    with pytest.raises(DataCorrupt, match="malformed"):
        eng.restore({"version": 1})
    with pytest.raises(DataCorrupt, match="shape"):
        eng.restore({**good, "context": {**good["context"], "t": [None] * 3}})


def test_bad_frames_and_settings(engine_factory, sim_frames, models_copy) -> None:
    eng = engine_factory()
    frames = sim_frames(minutes=3)
    with pytest.raises(MalformedInput, match="schema v9 is newer"):
        eng.observe(replace(frames[0], schema_version=9))
    with pytest.raises(MalformedInput, match="schema v1 has 13 features, not 21"):
        eng.observe(replace(frames[0], schema_version=1))
    eng.observe(frames[5])
    frame, preds = eng.observe(frames[3])  # older than the last: passed through, no forecast
    assert frame is frames[3] and preds == []
    with pytest.raises(DataCorrupt, match="trained at a 5 s step"):
        InferenceEngine.load(models_copy, step_s=10.0)
    with pytest.raises(UsageError, match="precision"):
        InferenceEngine.load(models_copy, precision="int4")


def test_fp32_and_int8_agree_on_forecasts(engine_factory, sim_frames) -> None:
    frames = sim_frames(minutes=8)
    a = engine_factory("fp32").observe_many(frames)[-1][1]
    b = engine_factory("int8").observe_many(frames)[-1][1]
    for x, y in zip(a, b, strict=True):
        assert x.target == y.target
        np.testing.assert_allclose(
            x.horizon, y.horizon, atol=0.5 * abs(x.band[0][1] - x.band[0][0])
        )


def test_daemon_path_never_imports_torch(tmp_path) -> None:
    code = (
        "import sys\n"
        "from edgetwin.inference.engine import InferenceEngine\n"
        "from tests.inference.conftest import _sim_frames\n"
        "eng = InferenceEngine.load()\n"
        "out = eng.observe_many(list(_sim_frames(1, 2.0)))\n"
        "assert any(p for _, p in out)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_engine_feeds_the_models_what_training_fed_them(sim_frames) -> None:
    """Train/serve parity: the engine's forecaster inputs equal the training pipeline's."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from modeling import data, windows
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    eng = InferenceEngine.load(precision="fp32")
    seen: list[np.ndarray] = []
    real = eng._forecaster

    class Recorder:
        def run(self, names, feeds):  # type: ignore[no-untyped-def]
            seen.append(feeds["x"][:, 0].copy())
            return real.run(names, feeds)

    eng._forecaster = Recorder()
    frames = sim_frames(minutes=8)
    fed = [blank(f, [HR]) if 20 <= i < 26 else f for i, f in enumerate(frames)]
    for f in fed:
        eng.observe(f)
    rec = data.frames_to_recording("t", "sim", fed)
    prior = eng.manifest.prior
    imp = eng._imputer

    def impute(z: np.ndarray, m: np.ndarray) -> np.ndarray:
        return fill_impute(lambda f: imp.run(None, f)[0], z, m, eng.manifest.interpolate)

    filled = windows.fill_contexts(rec, prior, impute)
    min_ctx = eng.manifest.min_context
    samples = windows.forecaster_samples(rec, prior, filled, min_ctx)
    n = len(samples["x"])  # the training windows stop a horizon before the end
    assert n == len(rec) - min_ctx + 1 - eng.horizon and len(seen) == n + eng.horizon
    for i in range(n):
        np.testing.assert_allclose(seen[i], samples["x"][i], atol=2e-4)
