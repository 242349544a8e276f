"""The twin's inference step: fill gaps with the GAN imputer, then forecast with the LSTM.

Each :class:`~edgetwin.types.FeatureFrame` moves a rolling context of
``context`` steps forward. The person's running baseline (Welford over
observed values, prior from training) standardises everything the models see.
The imputer looks at the last ``imputer_window`` steps and fills every missing
cell of a feature observed somewhere in that window; older steps keep the last
fill they got (the models were trained on contexts built by exactly this rule,
see ``scripts/modeling/windows.py``). Once ``min_context`` frames exist, the
forecaster predicts each target that was observed recently, with a band, its
attention over the context, and an anomaly flag when the value observed now
fell outside the band forecast for it one step ago.

The models see only the features their manifest names, in that order
(``Manifest.columns``): frames come in as the current feature schema (older
ones upgraded), the engine works on those columns, and its output frames are
the incoming ones with the model's columns filled where it imputed.

The engine imports onnxruntime and numpy only — never torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetwin.errors import DataCorrupt, MalformedInput, UsageError
from edgetwin.features.schema import NAMES, QUALITY_THRESHOLD, SCHEMA_VERSION, upgrade_frame
from edgetwin.inference.baseline import RunningBaseline
from edgetwin.inference.fill import center, impute
from edgetwin.inference.registry import PRECISIONS, Manifest, load_manifest
from edgetwin.inference.session import create_session
from edgetwin.types import FeatureFrame, FloatArray, Prediction

_LOGGER = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
Spans = tuple[tuple[float, float], ...]
STATE_VERSION = 1
# ORT calls are batched over this many steps in observe_many (ingest of a recording).
_CHUNK = 256


@dataclass(slots=True)
class _Step:
    """One step of the timeline as the engine processes it (a frame, or an empty gap step)."""

    t: float
    values: FloatArray
    mask: BoolArray
    frame: FeatureFrame | None
    mean: FloatArray | None = None
    std: FloatArray | None = None
    window: FloatArray | None = None  # filled raw values of the last W rows after this step
    active: BoolArray | None = None
    stale: bool = False  # a frame not after the last one: passed through untouched


class InferenceEngine:
    """Imputer + forecaster over a rolling context, standardised against the person's baseline."""

    def __init__(self, manifest: Manifest, imputer: Any, forecaster: Any, precision: str) -> None:
        self.manifest = manifest
        self.precision = precision
        self._imputer = imputer
        self._forecaster = forecaster
        m = manifest
        self.step_s = m.step_s
        self.targets = m.targets
        self._target_idx = np.array([m.features.index(t) for t in m.targets])
        self._n_features = len(m.features)
        self._cols = np.asarray(m.columns, dtype=np.int64)  # schema columns the models read
        self._q_lo, self._q_mid, self._q_hi = 0, m.quantiles.index(0.5), len(m.quantiles) - 1
        sha = m.file("forecaster", precision).sha256[:8]
        self.model_id = f"lstm-attn/{precision}/{sha}"
        self.baseline = RunningBaseline(m.prior)
        self._reset_context()
        self._last_t: float | None = None
        self._last_preds: dict[str, Prediction] = {}

    # ------------------------------------------------------------------ public API

    @classmethod
    def load(
        cls,
        models_dir: Path | None = None,
        precision: str = "int8",
        threads: int = 1,
        step_s: float = 5.0,
    ) -> InferenceEngine:
        """Verify manifest and models, open their sessions; DataCorrupt on any mismatch."""
        if precision not in PRECISIONS:
            raise UsageError(f"inference precision {precision!r} is unknown; use 'int8' or 'fp32'")
        manifest = load_manifest(models_dir)
        if not math.isclose(step_s, manifest.step_s):
            raise DataCorrupt(
                f"models in {manifest.root} were trained at a {manifest.step_s:g} s step "
                f"but the twin runs at {step_s:g} s",
                hint=f"set twin.step_s = {manifest.step_s:g}, or train models for {step_s:g} s",
            )
        imputer = create_session(manifest.file("imputer", precision), threads)
        forecaster = create_session(manifest.file("forecaster", precision), threads)
        return cls(manifest, imputer, forecaster, precision)

    @property
    def context_len(self) -> int:
        return self.manifest.context

    @property
    def horizon(self) -> int:
        return self.manifest.horizon

    def observe(self, frame: FeatureFrame) -> tuple[FeatureFrame, list[Prediction]]:
        """One step: the frame with gaps imputed (``imputed`` flags set) and its forecasts."""
        return self.observe_many([frame])[0]

    def observe_many(
        self, frames: Iterable[FeatureFrame]
    ) -> list[tuple[FeatureFrame, list[Prediction]]]:
        """:meth:`observe` over many frames in time order, batching the model calls (ingest)."""
        out: list[tuple[FeatureFrame, list[Prediction]]] = []
        chunk: list[FeatureFrame] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) >= _CHUNK:
                out.extend(self._run_chunk(chunk))
                chunk = []
        if chunk:
            out.extend(self._run_chunk(chunk))
        return out

    def state(self) -> dict[str, Any]:
        """JSON-serialisable twin state: baseline, context and last forecasts (NaN as null)."""
        return {
            "version": STATE_VERSION,
            "schema_version": self.manifest.schema_version,
            "step_s": self.step_s,
            "baseline": self.baseline.state(),
            "last_t": self._last_t,
            "context": {
                "t": _nan_to_none(self._t),
                "filled": _nan_to_none(self._filled),
                "mask": self._mask.astype(int).tolist(),
                "imputed": self._imputed.astype(int).tolist(),
                "present": self._present.astype(int).tolist(),
            },
            "last_predictions": [p.to_json() for p in self._last_preds.values()],
        }

    def reset(self) -> None:
        """Start afresh (after a forget): the baseline from the prior, an empty context, no
        forecasts remembered, as a newly loaded engine."""
        self.baseline = RunningBaseline(self.manifest.prior)
        self._reset_context()
        self._last_t = None
        self._last_preds = {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`state` output; DataCorrupt when malformed or from another schema."""
        try:
            if state["version"] != STATE_VERSION:
                raise DataCorrupt(f"twin state version {state['version']!r} is not {STATE_VERSION}")
            if state["schema_version"] != self.manifest.schema_version:
                raise DataCorrupt(
                    f"twin state was saved for feature schema v{state['schema_version']} but "
                    f"the models use v{self.manifest.schema_version}",
                    hint="the baseline will rebuild itself; discard the saved inference state",
                )
            if not math.isclose(float(state["step_s"]), self.step_s):
                raise DataCorrupt(
                    f"twin state was saved at a {state['step_s']} s step, "
                    f"the models use {self.step_s:g} s"
                )
            ctx = state["context"]
            t = _none_to_nan(ctx["t"], (self.context_len,))
            filled = _none_to_nan(ctx["filled"], (self.context_len, self._n_features))
            flags = [np.asarray(ctx[k], dtype=bool) for k in ("mask", "imputed")]
            present = np.asarray(ctx["present"], dtype=bool)
            if any(f.shape != filled.shape for f in flags) or present.shape != t.shape:
                raise DataCorrupt(
                    "twin state: context arrays do not match the model's context shape"
                )
            preds = [Prediction.from_json(p) for p in state["last_predictions"]]
            last_t = None if state["last_t"] is None else float(state["last_t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataCorrupt(f"twin state is malformed ({type(exc).__name__}: {exc})") from exc
        self.baseline.restore(state["baseline"])
        self._t, self._filled, self._present = t, filled, present
        self._mask, self._imputed = flags
        self._last_t = last_t
        self._last_preds = {p.target: p for p in preds if p.target in self.targets}

    # ------------------------------------------------------------------ stepping

    def _reset_context(self) -> None:
        t, f = self.manifest.context, self._n_features
        self._t = np.full(t, np.nan)
        self._filled = np.full((t, f), np.nan)
        self._mask = np.zeros((t, f), dtype=bool)
        self._imputed = np.zeros((t, f), dtype=bool)
        self._present = np.zeros(t, dtype=bool)

    def _since_first(self) -> int:
        """Rows from the oldest frame still in the context to now (the context actually seen)."""
        if not self._present.any():
            return 0
        return int(self.context_len - np.argmax(self._present))

    def _expand(self, frames: Sequence[FeatureFrame]) -> list[_Step]:
        """Frames -> steps, with empty steps where frames are missing; drops stale frames."""
        steps: list[_Step] = []
        last = self._last_t
        nf = self._n_features
        cols = self._cols
        for given in frames:
            try:
                frame = upgrade_frame(given)
            except ValueError as exc:
                raise MalformedInput(
                    f"feature frame at t={given.t} is schema v{given.schema_version} with "
                    f"{given.values.shape[0]} values: {exc}"
                ) from exc
            if last is not None:
                k = round((frame.t - last) / self.step_s)
                if k <= 0:
                    _LOGGER.debug("frame at t=%.3f is not after %.3f: skipped", frame.t, last)
                    steps.append(
                        _Step(frame.t, np.full(nf, np.nan), np.zeros(nf, bool), frame, stale=True)
                    )
                    continue
                for j in range(1, min(k, self.context_len + 1)):
                    steps.append(
                        _Step(last + j * self.step_s, np.full(nf, np.nan), np.zeros(nf, bool), None)
                    )
            values = frame.values[cols]
            mask = np.isfinite(values) & (frame.quality[cols] >= QUALITY_THRESHOLD)
            mask &= ~frame.imputed[cols]
            steps.append(_Step(frame.t, np.where(mask, values, np.nan), mask, frame))
            last = frame.t
        return steps

    def _run_chunk(
        self, frames: Sequence[FeatureFrame]
    ) -> list[tuple[FeatureFrame, list[Prediction]]]:
        steps = self._expand(frames)
        w = self.manifest.imputer_window
        clip = self.manifest.z_clip
        # phase 1: baseline and imputer inputs; these depend on observations only
        raw = np.where(self._mask, self._filled, np.nan)
        hist_raw = [raw[-(w - 1) :]] if w > 1 else []
        hist_mask = [self._mask[-(w - 1) :]] if w > 1 else []
        rows_raw: list[FloatArray] = []
        rows_mask: list[BoolArray] = []
        imp_z: list[FloatArray] = []
        imp_m: list[BoolArray] = []
        imp_steps: list[_Step] = []
        for s in steps:
            if s.stale:
                continue
            self.baseline.update(s.values, s.mask)
            s.mean, s.std = self.baseline.stats()
            rows_raw.append(s.values)
            rows_mask.append(s.mask)
        if not rows_raw:
            return [(s.frame, []) for s in steps if s.frame is not None]
        all_raw = np.concatenate([*hist_raw, np.stack(rows_raw)])
        all_mask = np.concatenate([*hist_mask, np.stack(rows_mask)])
        i = 0
        for s in steps:
            if s.stale:
                continue
            win_raw, win_mask = all_raw[i : i + w], all_mask[i : i + w]
            i += 1
            assert s.mean is not None
            assert s.std is not None
            s.active = np.asarray(win_mask.any(axis=0), dtype=bool)
            s.window = np.where(win_mask, win_raw, np.nan)
            if (s.active & ~win_mask).any():
                z = np.where(win_mask, np.clip((win_raw - s.mean) / s.std, -clip, clip), 0.0)
                imp_z.append(z)
                imp_m.append(win_mask)
                imp_steps.append(s)
        if imp_z:
            zs, ms = np.stack(imp_z), np.stack(imp_m)
            g = impute(
                lambda feeds: self._imputer.run(None, feeds)[0],
                zs,
                ms,
                self.manifest.interpolate,
            )
            for s, row in zip(imp_steps, g, strict=True):
                assert s.window is not None
                assert s.mean is not None
                assert s.std is not None
                assert s.active is not None
                fill = row.astype(np.float64) * s.std + s.mean
                need = np.isnan(s.window) & s.active
                s.window = np.where(need, fill, s.window)
        # phase 2: roll the context, build forecaster inputs
        fc_x: list[npt.NDArray[np.float32]] = []
        anchors: list[npt.NDArray[np.float32]] = []
        scales: list[npt.NDArray[np.float32]] = []
        fc_for: list[tuple[_Step, BoolArray, int, dict[int, Spans]]] = []
        results: list[tuple[_Step, FeatureFrame]] = []
        for s in steps:
            if s.stale:
                assert s.frame is not None
                results.append((s, s.frame))
                continue
            assert s.window is not None
            assert s.mean is not None
            assert s.std is not None
            assert s.active is not None
            self._push(s)
            out_frame = self._output_frame(s)
            if s.frame is not None:
                results.append((s, out_frame))
            if s.frame is None or self._present.sum() < self.manifest.min_context:
                continue
            which = self._forecastable(s)
            if not which.any():
                continue
            z = np.clip((self._filled - s.mean) / s.std, -clip, clip)
            zn, offset, scale = center(z[None], self._mask[None])
            fc_x.append(np.concatenate([zn[0], self._mask.astype(np.float32)], axis=1))
            anchors.append(offset[0, 0, self._target_idx])
            scales.append(scale[0, 0, self._target_idx])
            since = self._since_first()
            spans = {
                int(k): _spans(self._t[-since:], self._imputed[-since:, k])
                for k in self._target_idx[which]
            }
            fc_for.append((s, which, since, spans))
        # phase 3: forecasts
        preds_by_step: dict[int, list[Prediction]] = {}
        if fc_x:
            xt = np.ascontiguousarray(np.stack(fc_x, axis=1).astype(np.float32))  # (T, B, 2F)
            q, attn = self._forecaster.run(None, {"x": xt})
            n_t, n_q = len(self.targets), len(self.manifest.quantiles)
            q = q.reshape(len(fc_x), self.horizon, n_t, n_q)
            # the model forecasts in the context's own normalised units: undo that
            q = q * np.stack(scales)[:, None, :, None] + np.stack(anchors)[:, None, :, None]
            attn = attn.reshape(self.context_len, len(fc_x)).T
            for b, (s, which, since, spans) in enumerate(fc_for):
                preds = self._predictions(s, which, since, spans, q[b], attn[b])
                for p in preds:  # in time order: the next step's anomaly check needs them
                    self._last_preds[p.target] = p
                preds_by_step[id(s)] = preds
        return [(frame, preds_by_step.get(id(s), [])) for s, frame in results]

    def _push(self, s: _Step) -> None:
        """Shift the context by one row and write the imputer window's view of the last W rows."""
        assert s.window is not None
        assert s.active is not None
        w = self.manifest.imputer_window
        for arr in (self._t, self._filled, self._mask, self._imputed, self._present):
            arr[:-1] = arr[1:]
        self._t[-1] = s.t
        self._mask[-1] = s.mask
        self._present[-1] = s.frame is not None
        self._filled[-w:] = s.window
        self._imputed[-w:] = np.isfinite(s.window) & ~self._mask[-w:]
        # rows before the oldest frame were never part of the timeline: nothing to fill
        before = self.context_len - self._since_first()
        if before > 0:
            self._filled[:before] = np.nan
            self._imputed[:before] = False
        if s.frame is not None:
            self._last_t = s.t

    def _output_frame(self, s: _Step) -> FeatureFrame:
        """The step's frame with imputed cells filled in and flagged."""
        cols, filled, filled_by_model = self._cols, self._filled[-1], self._imputed[-1]
        if s.frame is None:
            values = np.full(len(NAMES), np.nan)
            values[cols] = filled
            imputed = np.zeros(len(NAMES), dtype=bool)
            imputed[cols] = filled_by_model
            return FeatureFrame(s.t, values, np.zeros(len(NAMES)), imputed, SCHEMA_VERSION)
        values = s.frame.values.copy()
        values[cols] = np.where(filled_by_model, filled, values[cols])
        imputed = s.frame.imputed.copy()
        imputed[cols] |= filled_by_model
        return FeatureFrame(s.frame.t, values, s.frame.quality, imputed, s.frame.schema_version)

    def _forecastable(self, s: _Step) -> BoolArray:
        """Targets observed in the imputer window and in a quarter of the context so far."""
        w = self.manifest.imputer_window
        idx = self._target_idx
        since = self._since_first()
        recent = self._mask[-w:, idx].any(axis=0)
        seen = self._mask[-since:, idx].sum(axis=0) >= max(1, since // 4)
        return np.asarray(recent & seen, dtype=bool)

    def _predictions(
        self,
        s: _Step,
        which: BoolArray,
        since: int,
        spans: dict[int, Spans],
        q: FloatArray,
        attn: FloatArray,
    ) -> list[Prediction]:
        assert s.mean is not None
        assert s.std is not None
        q = np.sort(q, axis=-1)  # quantile heads are trained separately; keep them ordered
        att = np.asarray(attn[-since:], dtype=np.float64)
        att = att / att.sum()
        preds: list[Prediction] = []
        for j in np.flatnonzero(which):
            k = int(self._target_idx[j])
            name = self.targets[j]
            scale, loc = s.std[k], s.mean[k]
            med = q[:, j, self._q_mid] * scale + loc
            lo = q[:, j, self._q_lo] * scale + loc
            hi = q[:, j, self._q_hi] * scale + loc
            preds.append(
                Prediction(
                    t=s.t,
                    target=name,
                    step_s=self.step_s,
                    horizon=tuple(float(v) for v in med),
                    band=tuple((float(a), float(b)) for a, b in zip(lo, hi, strict=True)),
                    attention=tuple(float(a) for a in att),
                    imputed=spans[k],
                    model=self.model_id,
                    anomaly=self._anomalous(name, s.t, s.values[k], bool(s.mask[k])),
                )
            )
        return preds

    def _anomalous(self, target: str, t: float, value: float, observed: bool) -> bool:
        """Did the value observed at ``t`` leave the band that the last forecast gave for ``t``?"""
        prev = self._last_preds.get(target)
        if prev is None or not observed:
            return False
        k = round((t - prev.t) / self.step_s)
        if not 1 <= k <= len(prev.band):
            return False
        lo, hi = prev.band[k - 1]
        return not lo <= value <= hi


def _spans(times: FloatArray, flags: BoolArray) -> Spans:
    """Contiguous runs of true flags as (t_start, t_end) pairs."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    prev = 0.0
    for t, flag in zip(times, flags, strict=True):
        if flag and start is None:
            start = float(t)
        elif not flag and start is not None:
            spans.append((start, prev))
            start = None
        prev = float(t)
    if start is not None:
        spans.append((start, prev))
    return tuple(spans)


def _nan_to_none(arr: FloatArray) -> list[Any]:
    out: list[Any] = np.where(np.isfinite(arr), arr, np.nan).tolist()
    if arr.ndim == 1:
        return [None if math.isnan(v) else v for v in out]
    return [[None if math.isnan(v) else v for v in row] for row in out]


def _none_to_nan(obj: Any, shape: tuple[int, ...]) -> FloatArray:
    arr = np.array(obj, dtype=np.float64)  # None -> nan
    if arr.shape != shape:
        raise DataCorrupt(f"twin state: array of shape {arr.shape}, expected {shape}")
    return arr
