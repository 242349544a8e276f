"""edgetwin.web.downsample: bounded output, peaks kept, gaps kept (NaN and holes in time)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetwin.web.downsample import downsample_columns, downsample_indices, mask_spans


def test_thirty_days_at_1hz_reduce_to_a_bounded_series_that_keeps_the_extremes() -> None:
    n = 30 * 86400
    t = 1.7e9 + np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(7)
    hr = 60 + 5 * np.sin(np.arange(n) / 3600.0) + rng.normal(0, 1, n)
    hr[123_456] = 190.0  # one spike must survive
    hr[2_000_000] = 20.0  # one dip too
    out = downsample_columns(t, {"hr": hr}, n_out=1000)
    assert out.source_rows == n
    assert len(out.t) <= 2 * 1000 + 2
    assert 190.0 in out.columns["hr"]
    assert 20.0 in out.columns["hr"]
    # values stay at their own times
    i = int(np.flatnonzero(out.columns["hr"] == 190.0)[0])
    assert out.t[i] == t[123_456]
    assert np.all(np.diff(out.t) >= 0)


def test_a_nan_run_stays_a_gap_after_downsampling() -> None:
    t = np.arange(100_000, dtype=np.float64)
    y = np.sin(t / 500.0)
    y[40_000:40_050] = np.nan
    out = downsample_columns(t, {"y": y}, n_out=200)
    inside = (out.t >= 40_000) & (out.t < 40_050)
    assert inside.any()
    assert np.isnan(out.columns["y"][inside]).all()
    # no drawn segment crosses the gap: the last finite point before and the first after it
    # are separated by a NaN row
    before = np.flatnonzero(out.t < 40_000)[-1]
    after = np.flatnonzero(out.t >= 40_050)[0]
    assert np.isnan(out.columns["y"][before + 1 : after]).any()


def test_a_hole_in_time_gets_a_null_row_so_the_line_breaks() -> None:
    t = np.concatenate([np.arange(0, 5000.0), np.arange(9000.0, 14000.0)])
    y = np.ones_like(t)
    out = downsample_columns(t, {"y": y}, n_out=100)
    hole = (out.t > 4999) & (out.t < 9000)
    assert hole.sum() == 1
    assert np.isnan(out.columns["y"][hole]).all()
    payload = out.to_json()
    assert None in payload["columns"]["y"]  # type: ignore[index]


def test_small_series_are_kept_whole_and_columns_must_align() -> None:
    t = np.arange(10.0)
    out = downsample_columns(t, {"a": t * 2}, n_out=100)
    assert out.t.tolist() == t.tolist()
    with pytest.raises(ValueError, match="column 'b' has 3 rows"):
        downsample_columns(t, {"b": np.ones(3)}, n_out=100)
    with pytest.raises(ValueError, match="non-decreasing"):
        downsample_columns(t[::-1].copy(), {"a": t}, n_out=4)
    assert downsample_indices(t, np.full(10, np.nan), 4).size == 0


def test_mask_spans_merge_runs_and_stay_bounded() -> None:
    t = np.arange(20.0)
    m = np.zeros(20, dtype=bool)
    m[2:5] = True
    m[10] = True
    assert mask_spans(t, m) == [[2.0, 5.0], [10.0, 11.0]]
    big = np.arange(100_000, dtype=np.float64)
    mm = (np.arange(100_000) % 10) == 0
    spans = mask_spans(big, mm, max_spans=50)
    assert len(spans) <= 50
    assert spans[0][0] == 0.0


def test_a_long_range_is_reduced_chunk_by_chunk_keeping_spikes_holes_and_spans(
    tmp_path, monkeypatch
) -> None:
    """Two days of 1 Hz frames (several stored chunks): the timeline keeps a one-frame spike,
    draws a hole in the record as a gap, and an imputed span crossing chunks is one span."""
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.store import Secret, TwinStore
    from edgetwin.types import FeatureFrame
    from edgetwin.web import data

    t0 = 1_700_000_000.0
    n = 2 * 86400
    hole = (100_000, 110_000)  # no frames at all: the daemon was off
    spike = 50_000
    imputed = (20_000, 70_000)  # long enough to cross a chunk boundary
    width = len(NAMES)
    with TwinStore.create(tmp_path / "h", Secret.passphrase("x")) as store:
        for day in range(2):
            frames = []
            for k in range(day * 86400, (day + 1) * 86400):
                if hole[0] <= k < hole[1]:
                    continue
                v = np.full(width, np.nan)
                v[INDEX["hr"]] = 200.0 if k == spike else 60.0 + (k % 7)
                imp = np.zeros(width, dtype=bool)
                imp[INDEX["hr"]] = imputed[0] <= k < imputed[1]
                frames.append(FeatureFrame(t0 + k, v, np.ones(width), imp, SCHEMA_VERSION))
            store.append_frames(frames)
            store.commit()
        doc = data.timeline(store, t0, t0 + n - 1, points=500)
    assert doc["frames"] == n - (hole[1] - hole[0])
    pts = doc["points"]
    t = np.asarray(pts["t"])
    hr = pts["columns"]["hr"]
    assert len(t) <= 4 * 500
    assert 200.0 in hr
    assert t[hr.index(200.0)] == t0 + spike
    inside = [v for x, v in zip(t, hr, strict=True) if t0 + hole[0] <= x < t0 + hole[1]]
    assert inside and all(v is None for v in inside)
    assert doc["shading"]["hr"]["imputed"] == [[t0 + imputed[0], t0 + imputed[1]]]
