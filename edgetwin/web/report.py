"""The offline report: one self-contained HTML file of a time range of the twin.

:func:`collect` reads what the report shows from an unlocked store (feature traces with
their quality masks and imputed spans, markers, recent forecasts with their explanation,
the twin's own score, the sources, the privacy ledger, per-UTC-day statistics) into one
JSON-ready document; :func:`render_html` puts it into ``report_template.html`` with the
vendored uPlot inlined, so the file opens offline and asks nothing of any server;
:func:`write_private` writes a file atomically with mode 0600 (it holds health data).

Long ranges are downsampled on the server (:mod:`edgetwin.web.downsample`, MinMaxLTTB),
so a chart holds at most about ``max_points`` rows whatever the range; the per-day
statistics are computed from every frame, never from the downsampled traces.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetwin.errors import HomeError, UsageError
from edgetwin.features.schema import FEATURES, INDEX, LOCATION, NAMES, QUALITY_THRESHOLD
from edgetwin.store.codec import FrameColumns
from edgetwin.types import Prediction
from edgetwin.web.report_tables import (
    days_html,
    forecasts_html,
    markers_html,
    privacy_html,
    score_html,
    sources_html,
    summary_html,
)

_LOGGER = logging.getLogger(__name__)

DAY_S = 86_400.0
MAX_POINTS = 2000  # rows per chart after downsampling (all its traces share them)
RECENT_S = 3600.0  # forecasts read for the report: the last hour of the range
RECENT_PER_TARGET = 8  # forecasts listed per target
FORECAST_CONTEXT_S = 1800.0  # observed trace shown before a forecast
MAX_MARKERS = 2000  # markers inlined (the table says how many were left out)
MAX_SPANS = 400  # shaded spans per chart and kind
_HERE = Path(__file__).resolve().parent
TEMPLATE = _HERE / "report_template.html"
VENDOR = _HERE / "static" / "vendor"

# chart id -> (title, features); a chart is drawn only when one of its features has data
CHARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hr", "Heart rate", ("hr",)),
    ("rmssd", "Heart rate variability (RMSSD)", ("rmssd",)),
    ("spo2", "Oxygen saturation (SpO2)", ("spo2",)),
    ("skin_temp", "Skin temperature", ("skin_temp",)),
    ("eda_tonic", "Skin conductance (tonic EDA)", ("eda_tonic",)),
    ("motion", "Motion (activity)", ("motion",)),
    ("eeg", "EEG band power (relative)",
     ("eeg_delta", "eeg_theta", "eeg_alpha", "eeg_beta", "eeg_gamma")),
    ("fnirs", "fNIRS haemoglobin change", ("fnirs_hbo", "fnirs_hbr")),
)
_UNITS = {f.name: f.unit for f in FEATURES}
_LABELS = {
    "hr": "heart rate", "rmssd": "RMSSD", "spo2": "SpO2", "skin_temp": "skin temperature",
    "eda_tonic": "tonic EDA", "motion": "motion", "eeg_delta": "delta", "eeg_theta": "theta",
    "eeg_alpha": "alpha", "eeg_beta": "beta", "eeg_gamma": "gamma", "fnirs_hbo": "HbO",
    "fnirs_hbr": "HbR",
}
UNIT_LABELS = {"bpm": "bpm", "ms": "ms", "%": "%", "degC": "°C", "uS": "µS", "g": "g",
               "1": "fraction", "uM": "µM"}


@dataclass
class Columns:
    """Feature frames as columns: ``values`` NaN where not usable (missing or below the
    quality threshold), ``masked`` where a value was present but of too low quality."""

    t: npt.NDArray[np.float64]
    values: npt.NDArray[np.float32]  # (n, features)
    masked: npt.NDArray[np.bool_]
    imputed: npt.NDArray[np.bool_]

    @classmethod
    def from_blocks(cls, blocks: Iterable[FrameColumns], capacity: int = 0) -> Columns:
        """Read the store's frame blocks (``iter_frame_columns``) into columns, a block at a
        time with no object per frame. ``capacity``: an upper bound of their number (the
        twin's frame count): the columns are allocated once at that size and only the rows
        written take memory, so a month of 1 Hz frames is never held twice; more rows than
        that (a daemon appending meanwhile) grow the arrays."""
        width = len(NAMES)
        cap = max(capacity, 1024)
        t = np.empty(cap)
        values = np.empty((cap, width), dtype=np.float32)
        masked = np.empty((cap, width), dtype=bool)
        imputed = np.empty((cap, width), dtype=bool)
        i = 0
        for b in blocks:
            if b.values.shape[1] != width:
                continue  # another schema version: not drawable on this schema's charts
            n = b.t.shape[0]
            if i + n > cap:
                cap = max(i + n, cap + cap // 2)
                t, values, masked, imputed = (np.resize(x, (cap, *x.shape[1:]))
                                              for x in (t, values, masked, imputed))
            present = np.isfinite(b.values)
            good = present & (b.quality >= QUALITY_THRESHOLD)
            t[i : i + n] = b.t
            values[i : i + n] = np.where(good, b.values, np.nan)
            masked[i : i + n] = present & ~good
            imputed[i : i + n] = b.imputed & good
            i += n
        cols = cls(t[:i], values[:i], masked[:i], imputed[:i])
        if i > 1 and np.any(np.diff(cols.t) < 0):
            order = np.argsort(cols.t, kind="stable")
            cols = cls(cols.t[order], cols.values[order], cols.masked[order],
                       cols.imputed[order])
        return cols

    def step_s(self, default: float) -> float:
        """The frames' own step: the median spacing (the configured step if too few)."""
        if self.t.size < 3:
            return default
        d = np.diff(self.t)
        d = d[d > 0]
        return float(np.median(d)) if d.size else default


def check_range(t0: float | None, t1: float | None, now: float) -> None:
    """A range that cannot hold data: UsageError saying what and what to do."""
    if t0 is not None and t1 is not None and t0 >= t1:
        raise UsageError(
            f"--from ({_utc(t0)}) is not before --to ({_utc(t1)})",
            hint="swap them, or give a --from earlier than --to",
        )
    if t0 is not None and t0 > now:
        raise UsageError(
            f"--from ({_utc(t0)}) is in the future (this machine's clock says {_utc(now)})",
            hint="give a start in the past, e.g. --from -7d",
        )


def default_range(
    t0: float | None, t1: float | None, streams: Sequence[Any], now: float, days: float = 7.0
) -> tuple[float, float]:
    """Missing ends: ``--to`` defaults to the newest stored sample (else now), ``--from``
    to ``days`` before ``--to``."""
    if t1 is None:
        lasts = [s.last_t for s in streams if s.last_t is not None]
        t1 = min(now, max(lasts)) if lasts else now
        if t0 is not None and t1 <= t0:
            t1 = now
    if t0 is None:
        t0 = t1 - days * DAY_S
    return t0, t1


def collect(
    store: Any,
    t0: float,
    t1: float,
    *,
    privacy: Any,
    now: float | None = None,
    max_points: int = MAX_POINTS,
    default_step_s: float = 5.0,
) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready document.

    UsageError when the range holds no feature frame (naming the span the twin holds).
    """
    now = time.time() if now is None else now
    streams = store.streams()
    # a damaged chunk stops the report (DataCorrupt, exit 4): a report silently missing
    # hours would mislead whoever reads it; 'edgetwin verify' lists the damage
    recent = list(store.iter_predictions(max(t0, t1 - RECENT_S), t1))
    score = _score(store, recent)  # before the range's frames are held: it reads a day's own
    # at most the twin's frames, and at most one a second over the range (a shorter step
    # only grows the columns): untouched rows cost no memory, but the allocation must fit
    capacity = min(int(store.series_counts().get("frames", 0)),
                   int((t1 - t0) / min(1.0, default_step_s)) + 1024)
    try:
        cols = Columns.from_blocks(store.iter_frame_columns(t0, t1), capacity=capacity)
    except MemoryError:
        raise UsageError(
            f"the range {_utc(t0)} to {_utc(t1)} holds more frames than this machine's memory "
            "can chart at once",
            hint="make a report per month (--from/--to) instead") from None
    if cols.t.size == 0:
        raise UsageError(f"the twin holds no feature frames from {_utc(t0)} to {_utc(t1)}",
                         hint=_held_hint(streams))
    step = cols.step_s(default_step_s)
    markers = store.read_markers(t0, t1, on_corrupt="skip")
    doc: dict[str, Any] = {
        "version": 1,
        "generated": now,
        "range": [t0, t1],
        "step_s": step,
        "frames": int(cols.t.size),
        "first_frame": float(cols.t[0]),
        "last_frame": float(cols.t[-1]),
        "quality_threshold": QUALITY_THRESHOLD,
        "units": {n: UNIT_LABELS.get(u, u) for n, u in _UNITS.items()},
        "labels": _LABELS,
        "charts": [],
        "empty_features": [n for i, n in enumerate(NAMES)
                           if not np.isfinite(cols.values[:, i]).any()],
        "markers": [m.to_json() for m in markers[:MAX_MARKERS]],
        "markers_total": len(markers),
        "days": day_stats(cols, t0, t1, step),
        "sources": [_source_json(s, t0, t1) for s in streams],
        "forecasts": _forecasts_json(recent),
        "forecast_charts": _forecast_charts(recent, cols, step),
        "score": score,
        "privacy": _privacy(store, privacy, now, t0, t1),
    }
    for cid, title, names in CHARTS:
        chart = _chart(cid, title, names, cols, step, max_points)
        if chart is not None:
            doc["charts"].append(chart)
    return doc


def day_stats(cols: Columns, t0: float, t1: float, step: float) -> list[dict[str, Any]]:
    """Per UTC day in the range and feature: mean, min, max and count of the *observed*
    values (usable and not imputed), coverage (observed steps over the day's steps within
    the range, in %) and the imputed share (%)."""
    if cols.t.size == 0:
        return []
    day = np.floor(cols.t / DAY_S).astype(np.int64)
    out = []
    first, last = math.floor(t0 / DAY_S), math.floor(min(t1, float(cols.t[-1])) / DAY_S)
    bounds = np.searchsorted(day, np.arange(first, last + 2))
    for k, d in enumerate(range(first, last + 1)):
        a, b = int(bounds[k]), int(bounds[k + 1])
        lo, hi = max(t0, d * DAY_S), min(t1, (d + 1) * DAY_S)
        steps = max(1.0, (hi - lo) / step)
        feats: dict[str, Any] = {}
        for i, name in enumerate(NAMES):
            if name in LOCATION:
                continue  # a report is handed to others: where the person was stays home
            v = cols.values[a:b, i].astype(np.float64)
            imp = cols.imputed[a:b, i]
            obs = v[np.isfinite(v) & ~imp]
            n_imp = int(imp.sum())
            if obs.size == 0 and n_imp == 0:
                continue
            feats[name] = {
                "n": int(obs.size),
                "mean": _r(float(obs.mean())) if obs.size else None,
                "min": _r(float(obs.min())) if obs.size else None,
                "max": _r(float(obs.max())) if obs.size else None,
                "coverage": round(min(100.0, 100.0 * obs.size / steps), 1),
                "imputed": round(min(100.0, 100.0 * n_imp / steps), 1),
            }
        out.append({"day": _day(d * DAY_S), "start": d * DAY_S, "frames": b - a,
                    "features": feats})
    return out


def render_html(doc: dict[str, Any]) -> str:
    """The report page: template, inlined uPlot (JS and CSS), the data, the tables."""
    template = TEMPLATE.read_text(encoding="utf-8")
    js = (VENDOR / "uPlot.iife.min.js").read_text(encoding="utf-8")
    css = (VENDOR / "uPlot.min.css").read_text(encoding="utf-8")
    licence = (VENDOR / "uPlot.LICENSE").read_text(encoding="utf-8")
    t0, t1 = doc["range"]
    parts = {
        "TITLE": html.escape(f"edgetwin report {_day(t0)} – {_day(t1)}"),
        "RANGE": html.escape(f"{_utc(t0)} to {_utc(t1)}"),
        "GENERATED": html.escape(_utc(doc["generated"])),
        "SUMMARY": summary_html(doc),
        "DAYS": days_html(doc),
        "SOURCES": sources_html(doc),
        "FORECASTS": forecasts_html(doc),
        "SCORE": score_html(doc),
        "PRIVACY": privacy_html(doc),
        "MARKERS": markers_html(doc),
        "UPLOT_LICENSE": html.escape(licence),
        "UPLOT_CSS": re.sub(r"</(style)", r"<\\/\1", css, flags=re.IGNORECASE),
        "UPLOT_JS": _script_safe(js),
        "DATA": _json_safe(json.dumps(doc, separators=(",", ":"), allow_nan=False)),
    }
    # one pass over the template only: a ``{{NAME}}`` inside the inserted text stays text
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], template)


def write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600: a temporary file beside it,
    fsynced, then linked into place (refused if ``path`` exists unless ``force``, then
    renamed over it). Nothing half-written is ever left at ``path``."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: the directory {parent} does not exist",
                         hint="create it first, or give another -o path")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists",
                         hint="pass --force to replace it, or give another path")
    tmp = parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise HomeError(f"cannot write in {parent}: {exc.strerror}",
                        hint="choose a directory you can write to") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o600)
        if force:
            tmp.replace(path)
        else:
            try:
                os.link(tmp, path)  # fails if something appeared there meanwhile
            except FileExistsError:
                raise UsageError(f"{path} already exists",
                                 hint="pass --force to replace it, or give another path") from None
            tmp.unlink()
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        raise HomeError(f"writing {path} failed: {exc.strerror or exc}",
                        hint="check the free space and permissions there; nothing was left "
                             "half-written") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# -- private helpers --------------------------------------------------------------------------


def _chart(
    cid: str, title: str, names: tuple[str, ...], cols: Columns, step: float, max_points: int
) -> dict[str, Any] | None:
    from edgetwin.web.downsample import downsample_columns, mask_spans

    names = tuple(n for n in names if np.isfinite(cols.values[:, INDEX[n]]).any())
    if not names:
        return None
    idx = [INDEX[n] for n in names]
    data = {n: cols.values[:, INDEX[n]].astype(np.float64) for n in names}
    n_out = max(50, max_points // (len(names) + 1))
    ds = downsample_columns(cols.t, data, n_out=n_out, gap_s=3.0 * step)
    masked = np.any(cols.masked[:, idx], axis=1)
    imputed = np.any(cols.imputed[:, idx], axis=1)
    units = {_UNITS[n] for n in names}
    unit = UNIT_LABELS.get(units.pop(), "") if len(units) == 1 else ""
    return {
        "id": cid,
        "title": title,
        "unit": unit,
        "series": [{"name": n, "label": _LABELS[n]} for n in names],
        "t": [round(float(x), 3) for x in ds.t],
        "y": [_rounded(ds.columns[n]) for n in names],
        "source_rows": ds.source_rows,
        "masked": _spans(mask_spans(cols.t, masked, max_spans=MAX_SPANS, step_s=step)),
        "imputed": _spans(mask_spans(cols.t, imputed, max_spans=MAX_SPANS, step_s=step)),
    }


def _forecasts_json(preds: list[Prediction]) -> list[dict[str, Any]]:
    """The newest forecasts per target (at most RECENT_PER_TARGET), newest first."""
    from edgetwin.inference.render import explain

    by: dict[str, list[Prediction]] = {}
    for p in preds:
        by.setdefault(p.target, []).append(p)
    out = []
    for target in sorted(by):
        for p in sorted(by[target], key=lambda p: p.t)[-RECENT_PER_TARGET:][::-1]:
            out.append({
                "t": p.t, "target": p.target, "step_s": p.step_s,
                "horizon": [_r(v) for v in p.horizon],
                "band": [[_r(lo), _r(hi)] for lo, hi in p.band],
                "model": p.model, "anomaly": p.anomaly,
                "imputed": [list(s) for s in p.imputed],
                "explanation": explain(p),
            })
    return out


def _forecast_charts(preds: list[Prediction], cols: Columns, step: float) -> list[dict[str, Any]]:
    """Per target, the newest forecast: the observed trace before it, horizon and band."""
    latest: dict[str, Prediction] = {}
    for p in preds:
        if p.target in INDEX and (p.target not in latest or p.t >= latest[p.target].t):
            latest[p.target] = p
    out = []
    for target in sorted(latest):
        p = latest[target]
        a = int(np.searchsorted(cols.t, p.t - FORECAST_CONTEXT_S, side="left"))
        b = int(np.searchsorted(cols.t, p.t, side="right"))
        obs_t = cols.t[a:b]
        obs_v = cols.values[a:b, INDEX[target]].astype(np.float64)
        fut_t = np.array([p.t + (k + 1) * p.step_s for k in range(len(p.horizon))])
        n_obs, n_fut = obs_t.size, fut_t.size
        nan_obs, nan_fut = [None] * n_obs, [None] * n_fut
        out.append({
            "id": f"forecast_{target}",
            "title": f"Forecast of {_LABELS.get(target, target)} made at {_utc(p.t)}",
            "target": target,
            "unit": UNIT_LABELS.get(_UNITS.get(target, ""), ""),
            "t_forecast": p.t,
            "t": [round(float(x), 3) for x in np.concatenate([obs_t, fut_t])],
            "observed": _rounded(obs_v) + nan_fut,
            "horizon": nan_obs + [_r(v) for v in p.horizon],
            "lo": nan_obs + [_r(lo) for lo, _ in p.band],
            "hi": nan_obs + [_r(hi) for _, hi in p.band],
            "imputed": [list(s) for s in p.imputed],
            "masked": [],
            "explanation": _explain(p),
        })
    return out


def _explain(p: Prediction) -> str:
    from edgetwin.inference.render import explain

    return explain(p)


def _score(store: Any, recent: list[Prediction]) -> dict[str, Any]:
    """``predictions --score`` as of the newest forecast in the range, or why there is none."""
    if not recent:
        return {"available": False,
                "reason": "no forecasts were stored in the last hour of this range"}
    try:
        from edgetwin.inference.registry import load_manifest
        from edgetwin.inference.serving import score_twin

        manifest = load_manifest()
        doc = score_twin(store, manifest, now=max(p.t for p in recent))
    except (ImportError, UsageError, OSError, ValueError) as exc:
        _LOGGER.warning("report: no score (%s)", exc)
        return {"available": False, "reason": f"the score could not be computed: {exc}"}
    return {"available": True, **doc}


def _privacy(store: Any, privacy: Any, now: float, t0: float, t1: float) -> dict[str, Any]:
    from edgetwin.privacy.accountant import ledger, status
    from edgetwin.privacy.consent import list_consents

    consents = [c.to_json() for c in list_consents(store, privacy.period)]
    st = status(store, privacy, now)
    charged: list[dict[str, Any]] = [
        {"period": str(r["period"]), "start": float(r["start"]), "spent": float(r["spent"])}
        for r in ledger(store).values()
        if "period" in r and "start" in r and t0 - DAY_S < float(r["start"]) <= t1
    ]
    charged.sort(key=lambda c: float(c["start"]))
    return {"consents": consents, "budget": st.to_json(), "charged_in_range": charged}


def _source_json(s: Any, t0: float, t1: float) -> dict[str, Any]:
    first, last = s.first_t, s.last_t
    lo = max(t0, first) if first is not None else None
    hi = min(t1, last) if last is not None else None
    overlap = (hi - lo) if lo is not None and hi is not None and hi > lo else 0.0
    return {
        "name": s.name, "channels": list(s.channels), "units": list(s.units),
        "samples": s.samples, "first_t": first, "last_t": last,
        "in_range": [lo, hi] if overlap > 0 else None,
        "range_share": round(100.0 * overlap / max(1e-9, t1 - t0), 1),
    }


def _held_hint(streams: Sequence[Any]) -> str:
    firsts = [s.first_t for s in streams if s.first_t is not None]
    lasts = [s.last_t for s in streams if s.last_t is not None]
    if not firsts:
        return "the twin holds no data yet: run the daemon or 'edgetwin ingest' first"
    return (f"the twin holds samples from {_utc(min(firsts))} to {_utc(max(lasts))}; pick a "
            "--from/--to within that ('edgetwin status' lists each stream's span)")


def _spans(spans: list[list[float]]) -> list[list[float]]:
    return [[round(a, 3), round(b, 3)] for a, b in spans]


def _rounded(col: npt.NDArray[np.float64]) -> list[float | None]:
    finite = np.isfinite(col)
    vals = np.round(np.where(finite, col, 0.0), 4).tolist()
    return [v if ok else None for v, ok in zip(vals, finite.tolist(), strict=True)]


def _r(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(v) else None


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


def _json_safe(text: str) -> str:
    """JSON that stays JSON and cannot end its ``<script>`` element (``<``, ``>`` and ``&``
    occur only inside strings, where their ``\\u`` escapes mean the same)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _script_safe(text: str) -> str:
    """Script text that cannot end its ``<script>`` element early: ``</script`` (possible only
    inside a string or regex literal, where ``<\\/`` means the same) is escaped."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


__all__ = ["Columns", "check_range", "collect", "day_stats", "default_range", "render_html",
           "write_private"]
