"""The twin scores itself: the rolling score equals a plain numpy recomputation from the same
stored forecasts and frames, and the twin falls back to a baseline when its model loses."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.arrays import Growing
from edgetwin.features.schema import INDEX
from edgetwin.inference import scoring
from edgetwin.inference.registry import load_manifest
from edgetwin.inference.render import explain
from edgetwin.inference.serving import ServingEngine, refit, score_twin, stored_score
from edgetwin.store import Secret, TwinStore

from .twins import CONTEXT, STEP, T0, FakeEngine, ar1, frame, pred, store_person

PASS = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TwinStore]:
    s = TwinStore.create(tmp_path / "twin", Secret.passphrase(PASS))
    yield s
    s.close()


def _messy_twin(store: TwinStore, n: int = 1500, seed: int = 3) -> float:
    """Frames with gaps, imputed and poor-quality cells; forecasts some of which the twin
    served from baselines (sources + alternatives). Returns the newest forecast's time."""
    rng = np.random.default_rng(seed)
    hr = ar1(n, seed=seed)
    frames, preds = [], []
    for k in range(n):
        t = T0 + k * STEP
        u = rng.random()
        if u < 0.05:
            continue  # no frame at all
        frames.append(frame(t, hr[k], quality=0.2 if u < 0.1 else 1.0, imputed=0.1 <= u < 0.15))
        if k >= 12 and rng.random() < 0.9:
            g = hr[k] + rng.normal(0, 2.0, 12)
            if rng.random() < 0.3:  # served persistence at the first three steps
                served = np.concatenate([np.full(3, hr[k] + 0.5), g[3:]])
                sources = ("persistence",) * 3 + ("global",) * 9
                preds.append(pred(t, served, width=rng.uniform(1, 5), sources=sources,
                                  alternatives=(("global", tuple(g)),)))
            else:
                preds.append(pred(t, g, width=rng.uniform(1, 5)))
    store.append_frames(frames)
    store.append_predictions(preds)
    store.commit()
    return preds[-1].t


def _independent(store: TwinStore, now: float, span: float) -> dict[str, object]:
    """The score recomputed cell by cell from the stored rows, sharing no code with scoring."""
    i = INDEX["hr"]
    obs: dict[int, float] = {}
    for f in store.read_frames():
        v = f.values[i]
        if np.isfinite(v) and f.quality[i] >= 0.5 and not f.imputed[i]:
            obs[round(f.t / STEP)] = float(v)
    errs: dict[str, list[list[float]]] = {m: [[] for _ in range(12)] for m in scoring.METHODS}
    inside: list[bool] = []
    for p in store.read_predictions():
        if not (now - span < p.t <= now):
            continue
        key = round(p.t / STEP)
        window = [obs[k] for k in range(key - CONTEXT + 1, key + 1) if k in obs]
        if not window:
            continue
        alt = dict(p.alternatives).get("global")
        for h in range(12):
            actual = obs.get(key + h + 1)
            if actual is None:
                continue
            vals = {
                "served": p.horizon[h],
                "global": alt[h] if alt is not None else p.horizon[h],
                "persistence": window[-1],
                "context_mean": float(np.mean(window)),
            }
            for m, v in vals.items():
                errs[m][h].append(abs(v - actual))
            lo, hi = p.band[h]
            inside.append(lo <= actual <= hi)
    return {
        "mae": {m: float(np.mean([x for step in e for x in step])) for m, e in errs.items()},
        "mae_per_step": {m: [float(np.mean(x)) for x in e] for m, e in errs.items()},
        "cells": sum(len(x) for x in errs["served"]),
        "coverage": float(np.mean(inside)),
    }


def test_score_equals_an_independent_numpy_computation(store: TwinStore) -> None:
    now = _messy_twin(store)
    doc = score_twin(store, load_manifest(), now=now)
    for window, span in scoring.WINDOWS.items():
        got = doc["windows"][window]["hr"]
        want = _independent(store, now, span)
        print(f"\n{window}: {got['cells']} cells, served {got['mae']['served']:.4f}, "
              f"global {got['mae']['global']:.4f}, persistence {got['mae']['persistence']:.4f}, "
              f"context mean {got['mae']['context_mean']:.4f}, coverage {got['coverage']:.3f}")
        assert got["cells"] == want["cells"] > 1000
        for m in scoring.METHODS:
            assert got["mae"][m] == pytest.approx(want["mae"][m], abs=1e-5), m
            assert got["mae_per_step"][m] == pytest.approx(want["mae_per_step"][m], abs=1e-5)
        assert got["coverage"] == pytest.approx(want["coverage"], abs=1e-5)
    # the served forecasts differ from the global ones where the twin served persistence
    assert doc["windows"]["day"]["hr"]["mae"]["served"] != doc["windows"]["day"]["hr"]["mae"][
        "global"
    ]


def _lost_history(store: TwinStore, n: int, offset: float) -> None:
    """An hour and more of stored forecasts from a model that is ``offset`` bpm off."""
    store_person(store, ar1(n), lambda k, hr: np.full(12, hr[k] + offset))


def test_the_twin_serves_a_baseline_where_its_model_loses(store: TwinStore) -> None:
    n = int(1.5 * 3600 / STEP)
    _lost_history(store, n, offset=6.0)  # persistence is 6 bpm better than the model
    fake = FakeEngine()
    serving = ServingEngine(fake, explain=False)
    report = refit(store, serving, T0 + n * STEP)
    choice = report["sources"]["hr"]
    assert all(s in scoring.BASELINE_SOURCES for s in choice["steps"]), choice["steps"]
    for k, s in enumerate(choice["steps"]):  # whatever it picked was not worse than persistence
        assert choice["mae"][s][k] <= choice["mae"]["persistence"][k]
    # live: the engine still forecasts 6 bpm off; the twin serves the baseline and says so
    hr = ar1(n + 40)
    serving.observe_many([frame(T0 + k * STEP, float(hr[k])) for k in range(n - 20, n)])
    t = T0 + n * STEP
    fake.queue = [pred(t, np.full(12, hr[n] + 6.0))]
    (_, [p]), = serving.observe_many([frame(t, float(hr[n]))])
    assert p.model.endswith("+fallback")
    assert dict(p.alternatives)["global"] == pytest.approx(np.full(12, hr[n] + 6.0))
    assert max(abs(v - hr[n]) for v in p.horizon) < 3.0  # near the last value, not 6 off
    assert "has not beaten persistence" in explain(p)


def test_the_twin_keeps_its_model_where_it_wins(store: TwinStore) -> None:
    n = int(1.5 * 3600 / STEP)
    hr_truth = ar1(n)
    # a model that knows the future to within 0.3 bpm beats persistence everywhere
    store_person(store, hr_truth, lambda k, hr: hr[k + 1 : k + 13] if k + 13 <= n else
                 np.full(12, hr[k]))
    serving = ServingEngine(FakeEngine(), explain=False)
    report = refit(store, serving, T0 + n * STEP)
    assert report["sources"]["hr"]["steps"] == ["model"] * 12


def test_status_and_predictions_score_show_the_stored_score(
    tmp_path: Path, store: TwinStore
) -> None:
    n = int(1.5 * 3600 / STEP)
    _lost_history(store, n, offset=6.0)
    refit(store, ServingEngine(FakeEngine(), explain=False), T0 + n * STEP)
    doc = stored_score(store)
    assert doc is not None
    line = scoring.summary_line(doc)
    assert line.startswith("score (last day, MAE): hr ") and "vs persistence" in line
    day = doc["windows"]["day"]["hr"]["mae"]
    assert math.isclose(day["served"], day["global"])  # the history was all served by the model
    text = scoring.render_score({**score_twin(store, load_manifest()), "step_s": STEP})
    assert "has not beaten persistence" in text and "served" in text
    json.dumps(score_twin(store, load_manifest()))  # JSON-ready


def test_cli_predictions_score_and_status_line(run_cli, home: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("init").exit_code == 0
    n = int(1.5 * 3600 / STEP)
    with TwinStore.open(home, Secret.passphrase(PASS)) as twin:
        _lost_history(twin, n, offset=6.0)
        refit(twin, ServingEngine(FakeEngine(), explain=False), T0 + n * STEP)
        want = score_twin(twin, load_manifest())
    result = run_cli("predictions", "--score", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["windows"]["day"]["hr"] == want["windows"]["day"]["hr"]
    assert set(got["windows"]["day"]["hr"]["mae"]) == set(scoring.METHODS)
    assert got["serving"]["hr"] != ["model"] * 12
    table = run_cli("predictions", "--score").output
    assert "served" in table and "persist" in table and "has not beaten persistence" in table
    status = run_cli("status").output
    assert "score (last day, MAE): hr" in status
    assert json.loads(run_cli("status", "--json").output)["score"]["summary"].startswith("score")


def test_frames_read_as_columns_give_the_same_observed_series(store: TwinStore) -> None:
    """The refit reads frames as stored columns; what it observes equals a frame-by-frame
    reading, including gaps, poor quality, imputed cells and a re-ingested step (the later
    stored frame wins)."""
    _messy_twin(store)
    store.append_frames([frame(T0 + 100 * STEP, 150.0)])  # step 100 again, written later
    store.commit()
    by_columns = scoring.observed_series_of_columns(store.iter_frame_columns(), ["hr"], STEP)
    by_frames = scoring.observed_series(store.read_frames(), ["hr"], STEP)
    want: dict[int, float] = {}
    for f in store.read_frames():
        v = f.values[INDEX["hr"]]
        if np.isfinite(v) and f.quality[INDEX["hr"]] >= 0.5 and not f.imputed[INDEX["hr"]]:
            want[round(f.t / STEP)] = float(v)
    for got in (by_columns["hr"], by_frames["hr"]):
        assert got.keys.tolist() == sorted(want)
        assert got.values.tolist() == [want[k] for k in sorted(want)]
    assert want[round(T0 / STEP) + 100] == 150.0


def test_a_target_is_scored_on_its_longest_horizon(store: TwinStore) -> None:
    """After a model change the stored forecasts of a target differ in length; they are
    collected in one pass and the longest horizon's are scored (as before streaming)."""
    preds = [pred(T0 + k * STEP, np.full(12 if k % 3 else 6, 70.0)) for k in range(40)]
    got = scoring.collect_forecasts(iter(preds))
    assert list(got) == ["hr"] and got["hr"].horizon == 12
    series = scoring.observed_series([frame(T0 + k * STEP, 70.0) for k in range(60)], ["hr"], STEP)
    oc = scoring.outcomes(iter(preds), series, CONTEXT)
    assert oc["hr"].served.shape == (sum(1 for k in range(40) if k % 3), 12)
    assert np.isnan(oc["hr"].personal).all() and (oc["hr"].global_ == 70.0).all()


def test_growing_rows_join_in_order_across_blocks() -> None:
    g = Growing((3,))
    rows = np.arange(3 * 20_000, dtype=np.float64).reshape(-1, 3)
    for r in rows[:700]:
        g.append(r)
    g.extend(rows[700:])
    out = g.array()
    assert out.shape == rows.shape and (out == rows).all()
    assert g.n == 0 and g.array().shape == (0, 3)


def test_growing_lets_go_of_its_blocks_once_joined() -> None:
    """After ``array()`` the rows live only in the joined array: an empty Growing kept a
    view of its last block (up to a block per column, ~12 MB over a day's forecasts)."""
    import tracemalloc

    tracemalloc.start()
    try:
        g = Growing((12,), np.float32)
        for _ in range(20_000):
            g.append(np.ones(12))
        out = g.array()
        assert out.shape == (20_000, 12) and (out == 1.0).all()
        joined = out.nbytes
        del out
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < joined // 20, f"{held} bytes still held after the join"
    g.append(np.full(12, 2.0))  # and it grows again from empty
    assert (g.array() == 2.0).all()


def test_a_day_scored_as_it_streams_matches_the_day_scored_whole(
    store: TwinStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refit scores the stored forecasts block by block as they are read (frames first)
    and keeps only what the fit needs; its score and outcomes are those of the day held
    whole. Blocks of 256 forecasts, so windows and blocks cut each other."""
    from .twins import LEVELS, H, store_as_daemon

    monkeypatch.setattr(scoring, "_RECENT_BATCH", 256)
    newest = store_as_daemon(store, 2.5)
    targets = sorted(LEVELS)
    doc, oc, _ = scoring.score_store(
        store, newest, context=CONTEXT, step_s=STEP, horizon=H, targets=targets
    )
    blocks = store.iter_frame_columns(newest - 86400 - CONTEXT * STEP, newest + (H + 1) * STEP)
    series = scoring.observed_series_of_columns(blocks, targets, STEP)
    whole = scoring.outcomes(
        store.iter_predictions(newest - 86400, newest, explained=False), series, CONTEXT
    )
    want = scoring.score(whole, newest)
    assert sorted(oc) == targets and sorted(doc["windows"]["day"]) == targets
    for target, o in oc.items():
        w = whole[target]
        assert o.served is None and o.lo is None  # not kept
        for name in ("t", "actual", "global_", "personal", "persistence", "context_mean"):
            np.testing.assert_array_equal(getattr(o, name), getattr(w, name), err_msg=name)
    for wname, per_target in want["windows"].items():
        for target, entry in per_target.items():
            got = doc["windows"][wname][target]
            for key in ("forecasts", "cells", "cells_per_step", "coverage"):
                assert got[key] == entry[key], (wname, target, key)
            for m in scoring.METHODS:
                assert got["mae"][m] == pytest.approx(entry["mae"][m], rel=1e-5)
                assert got["mae_per_step"][m] == pytest.approx(entry["mae_per_step"][m], rel=1e-5)
    assert doc["windows"]["hour"]["hr"]["forecasts"] < doc["windows"]["day"]["hr"]["forecasts"]


def test_a_streamed_day_holds_what_the_forecasts_said_and_looks_up_what_happened(
    store: TwinStore,
) -> None:
    """Scored as it streams, a day keeps per forecast its time, global and personal forecast
    (8 + 2 x 12 x 4 bytes); the outcome and the baselines (64 bytes more: 168 before) are
    looked up again when a target's outcomes are taken, so a refit holds one target's at a
    time."""
    import tracemalloc

    from .twins import LEVELS, H, store_as_daemon

    newest = store_as_daemon(store, 2.5)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        doc, oc, series = scoring.score_store(
            store, newest, context=CONTEXT, step_s=STEP, horizon=H, targets=sorted(LEVELS)
        )
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    rows = sum(doc["windows"]["day"][t]["forecasts"] for t in oc)
    observed = sum(s.keys.nbytes + s.values.nbytes for s in series.values())
    assert rows > 5 * 1700
    # + the score (windows, sums): under what the outcome and baselines alone took
    assert (held - observed) / rows < 8 + 2 * H * 4 + 32, (held, observed, rows)
    first, again = oc["hr"], oc["hr"]
    assert first.actual is not again.actual  # looked up anew, not kept
    np.testing.assert_array_equal(first.actual, again.actual)
    np.testing.assert_array_equal(first.context_mean, again.context_mean)
    assert oc.first_t("hr") == float(first.t.min())


def test_forecasts_out_of_time_order_score_the_same_streamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the host clock was set back, stored forecasts are not in time order: a window's
    rows are then not one run (a mask, not a slice), in a block and across blocks. Streamed
    and whole, the score and the outcomes agree."""
    monkeypatch.setattr(scoring, "_RECENT_BATCH", 64)
    rng = np.random.default_rng(4)
    n = 1500
    times = T0 + STEP * np.arange(n, dtype=float)
    times[600:700] += 7200.0  # the clock ran two hours ahead, then was set right
    hr = 70 + np.cumsum(rng.normal(0, 0.3, n + 200))
    series = {"hr": scoring.ObservedSeries(
        np.arange(n + 200, dtype=np.int64) + int(T0 / STEP) - 200, hr, STEP)}
    preds = [pred(t, hr[k + 200] + rng.normal(0, 1, 12)) for k, t in enumerate(times)]
    now = float(times[899])  # the windows skip the stretch stamped ahead: not one run
    doc, oc = scoring.score_streamed(iter(preds), series, CONTEXT, now)
    whole = scoring.outcomes(iter(preds), series, CONTEXT)
    want = scoring.score(whole, now)
    for name in ("t", "actual", "global_", "personal", "persistence", "context_mean"):
        np.testing.assert_array_equal(getattr(oc["hr"], name), getattr(whole["hr"], name))
    for wname in want["windows"]:
        got, exp = doc["windows"][wname]["hr"], want["windows"][wname]["hr"]
        assert (got["forecasts"], got["cells"], got["coverage"]) == (
            exp["forecasts"], exp["cells"], exp["coverage"])
        assert got["mae"] == pytest.approx(exp["mae"], rel=1e-5)
    assert 0 < doc["windows"]["hour"]["hr"]["forecasts"] < n
