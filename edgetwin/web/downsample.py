"""Server-side downsampling of feature series for charts (dashboard and report).

A chart a few hundred pixels wide cannot show 2.6 million points (30 days at 1 Hz), and a
Raspberry Pi's browser should not be asked to. `downsample_columns` keeps the shape a person
must see — peaks, troughs and gaps — using tsdownsample's MinMaxLTTB (Rust, SIMD), not a
hand-written LTTB:

- every column is reduced on its own finite points, and the union of the kept indices forms
  one shared time axis (uPlot draws aligned columns);
- missing values survive as gaps: each bucket that holds a NaN keeps its first NaN, and a hole
  in time longer than ``gap_s`` gets a NaN row, so a line is never drawn across a gap;
- the result is at most about ``n_out * (columns + 1)`` rows, whatever the input size.

`mask_spans` turns a boolean mask (imputed, low quality, masked) into a bounded list of
``[t_start, t_end]`` spans for shading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Downsampled", "downsample_columns", "downsample_indices", "mask_spans"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# MinMaxLTTB pre-selects minmax_ratio * n_out extrema, then runs LTTB on them (tsdownsample's
# default ratio; 4 keeps the visual error below a pixel for the paper's benchmarks).
_MINMAX_RATIO = 4


@dataclass(frozen=True)
class Downsampled:
    """A reduced, aligned set of columns on one time axis (NaN = gap)."""

    t: FloatArray
    columns: dict[str, FloatArray]
    source_rows: int

    def to_json(self) -> dict[str, object]:
        """Plain lists with ``None`` for gaps, ready for ``json.dumps`` (NaN is not JSON)."""
        return {
            "t": self.t.tolist(),
            "columns": {name: _nan_to_none(col) for name, col in self.columns.items()},
            "source_rows": self.source_rows,
        }


def downsample_indices(t: FloatArray, y: FloatArray, n_out: int) -> IntArray:
    """Indices (sorted, into ``t``/``y``) of at most ``n_out`` points that keep ``y``'s shape.

    NaN values are never chosen; ``t`` must be non-decreasing. Fewer finite points than
    ``n_out`` are all kept.
    """
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"t and y must be 1-D arrays of one length, got {t.shape} and {y.shape}")
    if n_out < 4:
        raise ValueError(f"n_out must be at least 4, got {n_out}")
    finite = np.flatnonzero(np.isfinite(y))
    if finite.size <= n_out:
        return finite.astype(np.int64)
    from tsdownsample import MinMaxLTTBDownsampler

    xs = np.ascontiguousarray(t[finite], dtype=np.float64)
    ys = np.ascontiguousarray(y[finite], dtype=np.float64)
    sampler = MinMaxLTTBDownsampler()  # type: ignore[no-untyped-call]  # tsdownsample is untyped
    picked = sampler.downsample(xs, ys, n_out=n_out, minmax_ratio=_MINMAX_RATIO)
    return finite[np.asarray(picked, dtype=np.int64)]


def downsample_columns(
    t: FloatArray,
    columns: Mapping[str, FloatArray],
    n_out: int = 1000,
    gap_s: float | None = None,
) -> Downsampled:
    """Reduce aligned ``columns`` sampled at ``t`` to about ``n_out`` points each, gaps kept.

    ``gap_s``: a step between two rows longer than this is a hole in the record (daemon off,
    sensor away) and is drawn as a gap; default: 3x the median step.
    """
    t = np.asarray(t, dtype=np.float64)
    n = t.size
    cols = {name: np.asarray(col, dtype=np.float64) for name, col in columns.items()}
    for name, col in cols.items():
        if col.shape != t.shape:
            raise ValueError(f"column {name!r} has {col.shape[0]} rows, the time axis {n}")
    if n and np.any(np.diff(t) < 0):
        raise ValueError("timestamps must be non-decreasing (sort the frames first)")
    if n <= n_out:
        keep = np.arange(n, dtype=np.int64)
    else:
        parts: list[IntArray] = [np.array([0, n - 1], dtype=np.int64)]
        edges = np.linspace(t[0], t[-1], n_out + 1)
        for col in cols.values():
            parts.append(downsample_indices(t, col, n_out))
            parts.append(_first_nan_per_bucket(t, col, edges))
        keep = np.unique(np.concatenate(parts))
    out_t = t[keep]
    out_cols = {name: col[keep] for name, col in cols.items()}
    out_t, out_cols = _break_time_holes(t, keep, out_t, out_cols, gap_s)
    return Downsampled(t=out_t, columns=out_cols, source_rows=n)


def mask_spans(t: FloatArray, mask: npt.NDArray[np.bool_], max_spans: int = 500,
               step_s: float | None = None) -> list[list[float]]:
    """Runs of ``True`` in ``mask`` as ``[t_start, t_end]`` spans, at most ``max_spans``.

    Each span ends one step after its last row (a row covers its step). When there are more
    runs than ``max_spans``, runs closer than ``(t[-1] - t[0]) / max_spans`` are merged, so
    the shading stays truthful at the chart's resolution.
    """
    t = np.asarray(t, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if t.shape != m.shape:
        raise ValueError(f"mask has {m.shape} rows, the time axis {t.shape}")
    if not m.any():
        return []
    if step_s is None:
        step_s = float(np.median(np.diff(t))) if t.size > 1 else 0.0
    padded = np.concatenate(([False], m, [False])).astype(np.int8)
    change = np.diff(padded)
    starts = np.flatnonzero(change == 1)
    ends = np.flatnonzero(change == -1) - 1
    spans = np.column_stack((t[starts], t[ends] + step_s))
    if len(spans) > max_spans:
        min_gap = (t[-1] - t[0]) / max_spans
        merged: list[list[float]] = [spans[0].tolist()]
        for lo, hi in spans[1:]:
            if lo - merged[-1][1] <= min_gap:
                merged[-1][1] = float(hi)
            else:
                merged.append([float(lo), float(hi)])
        return merged
    return [[float(lo), float(hi)] for lo, hi in spans]


def _first_nan_per_bucket(t: FloatArray, y: FloatArray, edges: FloatArray) -> IntArray:
    nan_idx = np.flatnonzero(np.isnan(y))
    if nan_idx.size == 0:
        return np.empty(0, dtype=np.int64)
    bucket = np.searchsorted(edges, t[nan_idx], side="right")
    _, first = np.unique(bucket, return_index=True)
    return nan_idx[first].astype(np.int64)


def _break_time_holes(
    t: FloatArray, keep: IntArray, out_t: FloatArray, out_cols: dict[str, FloatArray],
    gap_s: float | None,
) -> tuple[FloatArray, dict[str, FloatArray]]:
    if t.size < 3 or out_t.size < 2:
        return out_t, out_cols
    if gap_s is None:
        gap_s = 3.0 * float(np.median(np.diff(t)))
    if gap_s <= 0:
        return out_t, out_cols
    # a hole is a pair of consecutive *source* rows far apart; find the kept row before each
    hole_after = np.flatnonzero(np.diff(t) > gap_s)
    if hole_after.size == 0:
        return out_t, out_cols
    pos = np.searchsorted(keep, hole_after, side="right")  # kept rows at or before the hole
    inside = (pos > 0) & (pos < keep.size)
    pos, first = np.unique(pos[inside], return_index=True)
    if pos.size == 0:
        return out_t, out_cols
    h = hole_after[inside][first]
    mid = (t[h] + t[h + 1]) / 2.0  # inside the hole, so the row order holds
    new_t = np.insert(out_t, pos, mid)
    new_cols = {name: np.insert(col, pos, np.nan) for name, col in out_cols.items()}
    return new_t, new_cols


def _nan_to_none(col: FloatArray) -> list[float | None]:
    finite = np.isfinite(col).tolist()
    return [v if ok else None for v, ok in zip(col.tolist(), finite, strict=True)]
