"""What the dashboard's pages show, read from the twin store (blocking: call off the loop).

Each function takes an open store and returns plain JSON-ready data; the daemon and
``edgetwin dashboard`` both call them (the daemon in a worker thread).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetwin.features.schema import NAMES, QUALITY_THRESHOLD
from edgetwin.web.downsample import downsample_columns, mask_spans

if TYPE_CHECKING:
    from edgetwin.config import Config
    from edgetwin.store.twin import TwinStore

_LOGGER = logging.getLogger(__name__)

PAIRING = "pairing"  # the record kind of paired sensors (edgetwin.cli.pair writes them)
MIN_RANGE_S = 300.0  # 5 minutes
MAX_RANGE_S = 30 * 86400.0  # 30 days
DEFAULT_POINTS = 1200  # about one point per pixel of a wide chart
MAX_MARKERS = 2000


def timeline(
    store: TwinStore,
    t0: float | None,
    t1: float | None,
    *,
    features: list[str] | None = None,
    points: int = DEFAULT_POINTS,
) -> dict[str, Any]:
    """The feature timeline over ``[t0, t1]`` (default: the last 24 h of the record),
    downsampled on the server: per feature a series with its low-quality and imputed spans,
    plus the markers of the range."""
    if features:
        unknown = [f for f in features if f not in NAMES]
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    if t1 is None:
        newest = _newest_frame_t(store)
        t1 = newest if newest is not None else time.time()
    if t0 is None:
        t0 = t1 - 86400.0
    if not t1 > t0:
        raise ValueError(f"the range must end after it starts (from {t0}, to {t1})")
    span = t1 - t0
    if span < MIN_RANGE_S:
        t0 = t1 - MIN_RANGE_S
    elif span > MAX_RANGE_S:
        raise ValueError("the timeline shows at most 30 days at once; choose a shorter range")
    points = max(50, min(int(points), 5000))
    chosen = [n for n in (features or NAMES)]
    red = _reduce_frames(store, t0, t1, [NAMES.index(n) for n in chosen], points)
    names = [n for n, ok in zip(chosen, red.present, strict=True) if ok]
    cols = {n: red.values[:, j] for j, n in enumerate(chosen) if red.present[j]}
    down = downsample_columns(red.t, cols, n_out=points, gap_s=red.gap_s)
    span_cap = 500
    shading = {
        n: {"imputed": _merge_spans(red.imputed[j], span_cap, t1 - t0),
            "low_quality": _merge_spans(red.low_quality[j], span_cap, t1 - t0)}
        for j, n in enumerate(chosen) if red.present[j]
    }
    step = red.step
    try:
        marks = store.read_markers(t0, t1, on_corrupt="skip")
    except AttributeError:  # a store without markers
        marks = []
    return {
        "from": t0,
        "to": t1,
        "features": names,
        "frames": red.frames,
        "step_s": step,
        "points": down.to_json(),
        "shading": shading,
        "markers": [m.to_json() for m in marks[:MAX_MARKERS]],
        "markers_total": len(marks),
    }


def forecasts(store: TwinStore, *, last: int = 24, context_s: float = 900.0) -> dict[str, Any]:
    """The newest forecast per target with the observed trace before it and after it."""
    preds = store.read_predictions(last=max(last, 1) * 16, on_corrupt="skip")
    newest: dict[str, Any] = {}
    for p in preds:
        newest[p.target] = p
    if not newest:
        return {"targets": [], "forecasts": {}, "anomalies": []}
    t_last = max(p.t for p in newest.values())
    horizon_s = max(p.step_s * len(p.horizon) for p in newest.values())
    t, values, _q, imputed = _frame_arrays(store, t_last - context_s, t_last + horizon_s)
    out: dict[str, Any] = {}
    for target, p in newest.items():
        i = NAMES.index(target) if target in NAMES else None
        observed_t = t.tolist()
        observed = _json_col(values[:, i]) if i is not None else []
        out[target] = {
            "prediction": p.to_json(),
            "observed_t": observed_t,
            "observed": observed,
            "observed_imputed": (
                mask_spans(t, imputed[:, i] & np.isfinite(values[:, i])) if i is not None else []
            ),
        }
    anomalies = [
        {"t": p.t, "target": p.target} for p in preds if p.anomaly and p.t >= t_last - context_s
    ]
    order = sorted(out, key=lambda n: (n != "hr", n))
    return {"targets": order, "forecasts": out, "anomalies": anomalies}


def score(store: TwinStore) -> dict[str, Any] | None:
    """The twin's own score (as ``predictions --score``), or None without models/forecasts."""
    try:
        from edgetwin.inference.registry import load_manifest
        from edgetwin.inference.serving import score_twin

        doc: dict[str, Any] = score_twin(store, load_manifest())
    except Exception as exc:  # noqa: BLE001 - the page says why instead of failing
        _LOGGER.debug("score unavailable: %s", exc)
        return None
    return doc


def privacy(store: TwinStore, config: Config) -> dict[str, Any]:
    """Consent per metric, the budget per period and lifetime, the outbox, the audit log."""
    from edgetwin.privacy import accountant
    from edgetwin.privacy.consent import list_consents
    from edgetwin.privacy.metrics import METRICS
    from edgetwin.sync import outbox

    now = time.time()
    consents = []
    for c in list_consents(store, config.privacy.period):
        m = METRICS[c.metric]
        consents.append({**c.to_json(), "feature": m.feature, "unit": m.unit,
                         "statistic": m.statistic, "why": m.why})
    st = accountant.status(store, config.privacy, now)
    charged = sorted(
        ({"period": str(r["period"]), "period_start": float(r["start"]),
          "spent": float(r["spent"]),
          "remaining": max(0.0, st.epsilon_per_period - float(r["spent"]))}
         for r in accountant.ledger(store).values() if "period" in r and "start" in r),
        key=lambda c: (c["period_start"], c["period"]),
    )
    box = outbox.status(store)
    entries = store.audit_entries(on_corrupt="skip")
    problems = store.verify_audit()
    return {
        "consents": consents,
        "budget": {**st.to_json(), "charged": charged[-60:]},
        "outbox": {**box.to_json(), "unsent": [e.to_json() for e in box.unsent][:200]},
        "audit": {
            "entries": entries[-500:],
            "total": len(entries),
            "verified": not problems,
            "problems": [str(p) for p in problems],
        },
    }


def devices(store: TwinStore) -> list[dict[str, Any]]:
    """The paired sensors, as ``pair list --json``: secrets (a BTHome bind key) hidden."""
    from edgetwin.sources.registry import redacted

    return [{"name": name, **redacted(rec)}
            for name, rec in sorted(store.list_records(PAIRING).items())]


def offline_status(store: TwinStore, config: Config) -> dict[str, Any]:
    """A ``status``-shaped document from the store alone (no daemon running)."""
    from edgetwin.privacy.accountant import status

    last = store.read_predictions(last=1, on_corrupt="skip")
    return {
        "daemon": {"running": False},
        "sources": [
            {"name": d["name"], "kind": d.get("kind"), "state": "not running"}
            for d in devices(store)
        ],
        "store": {"streams": [
            {"name": s.name, "samples": s.samples, "first_t": s.first_t, "last_t": s.last_t}
            for s in store.streams(on_corrupt="skip")
        ]},
        "budget": status(store, config.privacy, time.time()).to_json(),
        "last_prediction": last[-1].to_json() if last else None,
    }


def frame_json(frame: Any) -> dict[str, Any]:
    """One feature frame for a live update: its time and the finite features."""
    vals = {NAMES[i]: float(v) for i, v in enumerate(frame.values) if np.isfinite(v)}
    return {"t": frame.t, "features": vals}


# -- private helpers ---------------------------------------------------------


def _newest_frame_t(store: TwinStore) -> float | None:
    lasts = [float(s.last_t) for s in store.streams(on_corrupt="skip") if s.last_t is not None]
    newest = max(lasts, default=None)
    if newest is None:
        return None
    last = None
    for f in store.read_frames(newest - 3600.0, None, on_corrupt="skip"):
        last = f.t
    return last if last is not None else float(newest)


@dataclass
class _Reduced:
    """Candidate rows of a range (extremes per time bucket, gap edges) and its spans."""

    t: np.ndarray
    values: np.ndarray  # rows x chosen features
    present: list[bool]
    frames: int
    step: float | None
    gap_s: float
    imputed: list[list[list[float]]]
    low_quality: list[list[list[float]]]


def _reduce_frames(store: TwinStore, t0: float, t1: float, idx: list[int],
                   points: int) -> _Reduced:
    """Read ``[t0, t1]`` chunk by chunk, keeping per chunk only the rows that can matter at
    ``points`` across the range: each feature's min and max per bucket of ``(t1-t0)/(4*points)``
    and the first missing value per bucket, plus the shaded spans. Memory stays at one chunk
    plus about ``8 * points`` rows per feature, whatever the range (30 days at 1 Hz would be
    ~600 MB as whole arrays)."""
    n_buckets = 4 * points
    width = (t1 - t0) / n_buckets
    edges = t0 + width * np.arange(n_buckets + 1)
    k = len(idx)
    cand_t: list[np.ndarray] = []
    cand_v: list[np.ndarray] = []
    present = np.zeros(k, dtype=bool)
    frames = 0
    step: float | None = None
    imp_spans: list[list[list[float]]] = [[] for _ in idx]
    lq_spans: list[list[list[float]]] = [[] for _ in idx]
    for bt, bvalues, bquality, bimputed in _frame_blocks(store, t0, t1):
        keep = (bt >= t0) & (bt <= t1)
        if not keep.any():
            continue
        order = np.argsort(bt[keep], kind="stable")
        t = bt[keep][order]
        v = bvalues[keep][order][:, idx]
        q = bquality[keep][order][:, idx]
        imp = bimputed[keep][order][:, idx]
        frames += t.size
        if step is None and t.size > 1:
            step = float(np.median(np.diff(t)))
        finite = np.isfinite(v)
        present |= finite.any(axis=0)
        rows = [np.array([0, t.size - 1])]
        for j in range(k):
            if not finite[:, j].any():
                continue
            rows.append(_minmax_rows(t, v[:, j], finite[:, j], width))
            rows.append(_first_nan_rows(t, v[:, j], edges))
            imp_spans[j].extend(mask_spans(t, imp[:, j] & finite[:, j], max_spans=1 << 30,
                                           step_s=step))
            low = finite[:, j] & (q[:, j] < QUALITY_THRESHOLD)
            lq_spans[j].extend(mask_spans(t, low, max_spans=1 << 30, step_s=step))
        chosen_rows = np.unique(np.concatenate(rows))
        cand_t.append(t[chosen_rows])
        cand_v.append(v[chosen_rows])
    if cand_t:
        t_all = np.concatenate(cand_t)
        v_all = np.concatenate(cand_v)
        order = np.argsort(t_all, kind="stable")
        t_all, v_all = t_all[order], v_all[order]
    else:
        t_all, v_all = np.empty(0), np.empty((0, k))
    gap = max(3.0 * (step or 0.0), 2.5 * width)
    return _Reduced(t_all, v_all, present.tolist(), frames, step, gap, imp_spans, lq_spans)


def _minmax_rows(t: np.ndarray, col: np.ndarray, finite: np.ndarray, width: float) -> Any:
    """Rows holding each bucket's min and max of ``col`` (finite rows only; tsdownsample)."""
    rows = np.flatnonzero(finite)
    n_out = 2 * max(2, int(np.ceil((t[rows[-1]] - t[rows[0]]) / width)) + 1)
    if rows.size <= n_out:
        return rows
    from tsdownsample import MinMaxDownsampler

    sampler = MinMaxDownsampler()  # type: ignore[no-untyped-call]  # tsdownsample is untyped
    xs = np.ascontiguousarray(t[rows], dtype=np.float64)
    ys = np.ascontiguousarray(col[rows], dtype=np.float64)
    return rows[np.asarray(sampler.downsample(xs, ys, n_out=n_out), dtype=np.int64)]


def _first_nan_rows(t: np.ndarray, col: np.ndarray, edges: np.ndarray) -> Any:
    nan_rows = np.flatnonzero(np.isnan(col))
    if nan_rows.size == 0:
        return nan_rows
    bucket = np.searchsorted(edges, t[nan_rows], side="right")
    _, first = np.unique(bucket, return_index=True)
    return nan_rows[first]


def _merge_spans(spans: list[list[float]], max_spans: int, extent: float) -> list[list[float]]:
    """Spans from several chunks, sorted, touching ones joined, at most about ``max_spans``
    (closer than ``extent / max_spans`` merge: invisible at the chart's width anyway)."""
    if not spans:
        return []
    ordered = sorted(spans)
    min_gap = extent / max_spans if len(ordered) > max_spans else 0.0
    out = [list(ordered[0])]
    for lo, hi in ordered[1:]:
        if lo - out[-1][1] <= min_gap:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def _frame_arrays(
    store: TwinStore, t0: float, t1: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Times, values, quality and imputed flags of the committed frames in ``[t0, t1]``,
    sorted by time, as arrays (one row per frame)."""
    blocks = _frame_blocks(store, t0, t1)
    width = len(NAMES)
    if not blocks:
        empty = np.empty((0, width))
        return np.empty(0), empty, empty, empty.astype(bool)
    t = np.concatenate([b[0] for b in blocks])
    values = np.concatenate([b[1] for b in blocks])
    quality = np.concatenate([b[2] for b in blocks])
    imputed = np.concatenate([b[3] for b in blocks])
    keep = (t >= t0) & (t <= t1)
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], values[keep][order], quality[keep][order], imputed[keep][order]


def _frame_blocks(store: TwinStore, t0: float, t1: float) -> list[tuple[Any, Any, Any, Any]]:
    """Each stored frame chunk as arrays (``TwinStore.iter_frame_columns``: no object per
    frame, ~10x faster than ``read_frames`` for 30 days at 1 Hz); damaged chunks skipped."""
    width = len(NAMES)
    return [
        (cols.t, cols.values, cols.quality, cols.imputed)
        for cols in store.iter_frame_columns(t0, t1, on_corrupt="skip")
        if cols.values.shape[1] == width  # another schema: not drawn
    ]


def _json_col(col: np.ndarray) -> list[float | None]:
    finite = np.isfinite(col).tolist()
    return [v if ok else None for v, ok in zip(col.tolist(), finite, strict=True)]
