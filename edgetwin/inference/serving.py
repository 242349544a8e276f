"""What the twin serves: the global forecast, made personal, never worse than persistence.

:class:`ServingEngine` wraps the :class:`~edgetwin.inference.engine.InferenceEngine`
and only touches its public outputs (``Prediction`` objects, ``state``). For each
forecast it

1. applies the target's adopted personal head (:mod:`edgetwin.inference.personal`);
2. serves, per horizon step, what :func:`~edgetwin.inference.scoring.choose_sources`
   chose from the last day's scores: the model, or the best baseline (persistence,
   context mean, or a model/persistence blend) where the model has not beaten
   persistence for this person;
3. keeps the forecasts it did not serve in ``alternatives`` (so the twin can score
   them later) and names each step's source in ``sources``;
4. attaches occlusion influence (:mod:`edgetwin.inference.explain`) to the newest
   forecast of each call.

:func:`refit` is the daemon's periodic job: it scores the last day from the
store, refits the personal heads, chooses the sources, saves both as encrypted
records and hands them to the serving engine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgetwin.errors import EdgetwinError
from edgetwin.features.schema import INDEX, QUALITY_THRESHOLD
from edgetwin.inference import personal, scoring
from edgetwin.inference.scoring import BLEND, ObservedSeries
from edgetwin.types import FeatureFrame, Prediction

_LOGGER = logging.getLogger(__name__)

POLICY_KEY = "serving"  # record (inference, serving): sources per target + the last score
REFIT_INTERVAL_S = 1800.0
# Occlusion costs about ten engine steps; at most one per this many seconds of wall time, so
# its CPU stays bounded however fast frames come (a replay, a backlog drained at shutdown).
EXPLAIN_EVERY_S = 4.0


class ServingEngine:
    """The inference engine as the twin serves it (see the module docstring)."""

    def __init__(
        self,
        engine: Any,
        *,
        heads: dict[str, personal.PersonalHead] | None = None,
        sources: dict[str, list[str]] | None = None,
        explain: bool = True,
        store: Any = None,
    ) -> None:
        self.engine = engine
        # where heads and sources live: re-read on restore (a forget may have destroyed them)
        self.store = store
        self.heads: dict[str, personal.PersonalHead] = dict(heads or {})
        self.sources: dict[str, list[str]] = dict(sources or {})
        self.score: dict[str, Any] | None = None
        self.explain = explain
        self.explain_every_s = EXPLAIN_EVERY_S
        self._explained_at = -math.inf
        self._explainer: Any = None
        self._hist: dict[str, dict[int, float]] = {t: {} for t in engine.targets}
        self._seed_history(engine.state())

    # the engine's public face
    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.engine.targets)

    @property
    def step_s(self) -> float:
        return float(self.engine.step_s)

    @property
    def context_len(self) -> int:
        return int(self.engine.context_len)

    @property
    def horizon(self) -> int:
        return int(self.engine.horizon)

    @property
    def model_id(self) -> str:
        return str(self.engine.model_id)

    @property
    def manifest(self) -> Any:
        return self.engine.manifest

    def __getattr__(self, name: str) -> Any:
        # anything else the wrapped engine offers (read-only use by callers)
        if name == "engine":  # not yet set: during construction
            raise AttributeError(name)
        return getattr(self.engine, name)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.engine.state()
        return result

    def restore(self, state: dict[str, Any]) -> None:
        """Restore the engine, rebuild the recent values from its context, and re-read the
        heads and sources from the twin (the daemon restores after a forget)."""
        self.engine.restore(state)
        self._hist = {t: {} for t in self.targets}
        self._seed_history(state)
        if self.store is not None:
            load_policy(self.store, self)

    def reset(self) -> None:
        """Start afresh (after a forget): the engine's reset, no remembered values."""
        self.engine.reset()
        self._hist = {t: {} for t in self.targets}

    def set_policy(
        self,
        heads: dict[str, personal.PersonalHead],
        sources: dict[str, list[str]],
        score: dict[str, Any] | None = None,
    ) -> None:
        """Swap in newly fitted heads and sources (one assignment each: safe across threads)."""
        self.heads = dict(heads)
        self.sources = dict(sources)
        if score is not None:
            self.score = score

    def observe(self, frame: FeatureFrame) -> tuple[FeatureFrame, list[Prediction]]:
        return self.observe_many([frame])[0]

    def observe_many(
        self, frames: Sequence[FeatureFrame] | Iterable[FeatureFrame]
    ) -> list[tuple[FeatureFrame, list[Prediction]]]:
        frames = list(frames)
        if not frames:
            return []
        # the state before the newest frame lets the explainer re-run that step with spans masked
        results = self.engine.observe_many(frames[:-1]) if len(frames) > 1 else []
        due = time.monotonic() - self._explained_at >= self.explain_every_s
        before = self.engine.state() if self.explain and due else None
        results += self.engine.observe_many(frames[-1:])
        out: list[tuple[FeatureFrame, list[Prediction]]] = []
        for i, (frame, preds) in enumerate(results):
            self._remember(frame)
            served = [self._serve(p) for p in preds]
            if served and before is not None and i == len(results) - 1:
                self._explained_at = time.monotonic()
                served = self._explain(before, frames[-1], served)
            out.append((frame, served))
        return out

    # -- serving -------------------------------------------------------------------

    def _serve(self, p: Prediction) -> Prediction:
        g = np.asarray(p.horizon, dtype=np.float64)
        obs = self._series(p.target)
        key = np.array([round(p.t / self.step_s)], dtype=np.int64)
        last, mean = (float(v[0]) for v in obs.context(key, self.context_len))
        head = self.heads.get(p.target)
        model, model_name = g, "global"
        if head is not None and head.weights.shape[0] == g.size and math.isfinite(last):
            recent = obs.recent(key, personal.LAGS)[0]
            model, model_name = head.correct(g, recent, mean), "personal"
        steps = self.sources.get(p.target) or []
        if len(steps) != g.size or not math.isfinite(last):
            steps = ["model"] * g.size
        values = {
            "model": model,
            "persistence": np.full(g.size, last),
            "context_mean": np.full(g.size, mean),
            "blend": BLEND * model + (1 - BLEND) * last,
        }
        served = np.array([values[s][k] for k, s in enumerate(steps)])
        names = tuple(model_name if s == "model" else s for s in steps)
        if names == ("global",) * g.size:
            return p
        alts: list[tuple[str, tuple[float, ...]]] = [("global", tuple(float(v) for v in g))]
        if model_name == "personal" and "personal" not in names:
            alts.append(("personal", tuple(float(v) for v in model)))
        shift = served - g  # the band keeps its width around what is served
        band = tuple((lo + d, hi + d) for (lo, hi), d in zip(p.band, shift, strict=True))
        return replace(
            p,
            horizon=tuple(float(v) for v in served),
            band=tuple((float(a), float(b)) for a, b in band),
            model=served_model_id(p.model, names),
            sources=names,
            alternatives=tuple(alts),
        )

    def _explain(
        self, before: dict[str, Any], frame: FeatureFrame, preds: list[Prediction]
    ) -> list[Prediction]:
        from edgetwin.inference import explain

        try:
            if self._explainer is None:
                self._explainer = explain.Occluder(self.engine)
            weights = self._explainer.influence(before, frame, preds)
        except Exception:  # an explanation must never cost a forecast
            _LOGGER.debug("occlusion failed", exc_info=True)
            return preds
        return [replace(p, influence=weights.get(p.target, ())) for p in preds]

    # -- the person's recent observed values ----------------------------------------

    def _remember(self, frame: FeatureFrame) -> None:
        key = round(frame.t / self.step_s)
        oldest = key - self.context_len - 2 * personal.LAGS
        for target, hist in self._hist.items():
            k = INDEX[target]
            v = float(frame.values[k])
            if math.isfinite(v) and frame.quality[k] >= QUALITY_THRESHOLD and not frame.imputed[k]:
                hist[key] = v
            if len(hist) > self.context_len + 2 * personal.LAGS:
                for old in [x for x in hist if x < oldest]:
                    del hist[old]

    def _series(self, target: str) -> ObservedSeries:
        hist = self._hist.get(target, {})
        keys = np.fromiter(hist.keys(), dtype=np.int64, count=len(hist))
        vals = np.fromiter(hist.values(), dtype=np.float64, count=len(hist))
        return ObservedSeries(keys, vals, self.step_s)

    def _seed_history(self, state: dict[str, Any]) -> None:
        """Observed values of the engine's restored context (a restart keeps persistence)."""
        try:
            ctx = state["context"]
            for t, row, mask in zip(ctx["t"], ctx["filled"], ctx["mask"], strict=True):
                if t is None:
                    continue
                key = round(float(t) / self.step_s)
                for target, hist in self._hist.items():
                    k = INDEX[target]
                    if mask[k] and row[k] is not None:
                        hist[key] = float(row[k])
        except (KeyError, TypeError, ValueError, IndexError):
            _LOGGER.debug("engine state has no usable context to seed persistence")


def served_model_id(global_id: str, sources: Sequence[str]) -> str:
    """``lstm-attn/int8/ab12cd34`` plus what changed it: ``+personal``, ``+fallback``."""
    tags = []
    if "personal" in sources:
        tags.append("+personal")
    if any(s in scoring.BASELINE_SOURCES for s in sources):
        tags.append("+fallback")
    return global_id + "".join(tags)


# -- the periodic job -------------------------------------------------------------------


@dataclass(frozen=True)
class RefitParams:
    """What a refit needs of the served model: its shape and id, not the model itself (so a
    child process can refit without loading ONNX)."""

    context_len: int
    step_s: float
    horizon: int
    targets: tuple[str, ...]
    model_id: str

    @classmethod
    def of(cls, serving: ServingEngine) -> RefitParams:
        return cls(int(serving.context_len), float(serving.step_s), int(serving.horizon),
                   tuple(serving.targets), str(serving.model_id))


@dataclass(frozen=True)
class RefitPlan:
    """A refit's outcome before anything is stored: per target the head's record (None: no
    head, delete the stored one), the serving policy record, and the report. Plain JSON
    values only, so a child process can hand it over a pipe."""

    heads: dict[str, dict[str, Any] | None]
    policy: dict[str, Any]
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"heads": self.heads, "policy": self.policy, "report": self.report}

    @classmethod
    def from_json(cls, doc: Any) -> RefitPlan:
        """The plan a child sent; ValueError naming what is malformed."""
        if not isinstance(doc, dict):
            raise ValueError(f"a refit plan is an object, not {type(doc).__name__}")
        heads, policy, report = doc.get("heads"), doc.get("policy"), doc.get("report")
        if not isinstance(heads, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, dict)) for k, v in heads.items()
        ):
            raise ValueError("a refit plan's heads are not {target: record or null}")
        if not isinstance(policy, dict) or not isinstance(policy.get("sources"), dict):
            raise ValueError("a refit plan's policy lacks its sources")
        if not isinstance(report, dict):
            raise ValueError("a refit plan's report is not an object")
        for target, rec in heads.items():
            try:
                if rec is not None:
                    personal.PersonalHead.from_record(rec)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"a refit plan's head of {target!r}: {exc!r}") from exc
        return cls(heads, policy, report)


def refit(
    store: Any, serving: ServingEngine, now: float | None = None, *, reader: Any = None
) -> dict[str, Any]:
    """Score the last day, refit personal heads, choose sources; store and serve them.

    Bounded work: one day of stored forecasts and frames (the store's own caps
    apply), at most :data:`personal.MAX_FORECASTS` forecasts per head, a handful
    of small linear solves. ``reader`` (``store.reader()``): the day is read
    through it, on its own connection, so the writer is not held up meanwhile;
    only the few records written at the end go through ``store``. The daemon runs
    :func:`plan_refit` in a child process instead (:mod:`edgetwin.inference.refit_process`).
    """
    plan = plan_refit(store if reader is None else reader, RefitParams.of(serving), now)
    return apply_refit(store, serving, plan)


def plan_refit(source: Any, params: RefitParams, now: float | None = None) -> RefitPlan:
    """What a refit as of ``now`` would store: reads ``source`` (a store or its reader),
    writes nothing."""
    now = time.time() if now is None else now
    doc, oc, series = load_scored(
        source,
        now,
        context=params.context_len,
        step_s=params.step_s,
        horizon=params.horizon,
        targets=params.targets,
    )
    streams = list(source.streams())
    heads: dict[str, dict[str, Any] | None] = {}
    sources: dict[str, list[str]] = {}
    report: dict[str, Any] = {"now": now, "heads": {}, "sources": {}}
    # one target's outcomes at a time: each is looked up when taken and let go after
    for target, o in oc.items():
        feeds = personal.feeding_streams(target, streams)
        head = personal.fit_head(
            personal.TrainingSet.build(o, series[target]),
            target,
            step_s=params.step_s,
            now=now,
            derived_from={"streams": feeds, "t0": float(o.t.min())},
        )
        heads[target] = None if head is None else head.to_record()
        if head is not None:
            report["heads"][target] = {"adopted": head.adopted, **head.holdout}
            if head.adopted:
                head.fill_outcomes(o, series[target])
        choice = scoring.choose_sources(o, now)
        sources[target] = choice["steps"]
        report["sources"][target] = choice
    derived = {
        "streams": sorted({s for t in oc for s in personal.feeding_streams(t, streams)}),
        "t0": min((oc.first_t(t) for t in oc), default=now),
    }
    policy = {"sources": sources, "score": doc, "derived_from": derived, "at": now,
              "model": params.model_id}
    return RefitPlan(heads, policy, report)


def apply_refit(store: Any, serving: ServingEngine, plan: RefitPlan) -> dict[str, Any]:
    """Store ``plan``'s heads and policy and serve them; the plan's report."""
    heads: dict[str, personal.PersonalHead] = {}
    for target, rec in plan.heads.items():
        if rec is None:
            store.delete_record(personal.RECORD_KIND, personal.record_key(target))
            continue
        store.put_record(personal.RECORD_KIND, personal.record_key(target), rec)
        head = personal.PersonalHead.from_record(rec)
        if head.adopted:
            heads[target] = head
    store.put_record(personal.RECORD_KIND, POLICY_KEY, plan.policy)
    serving.set_policy(heads, plan.policy["sources"], plan.policy.get("score"))
    return plan.report


def load_scored(
    store: Any, now: float, *, context: int, step_s: float, horizon: int,
    targets: Sequence[str] | None = None,
) -> tuple[dict[str, Any], scoring.StreamedOutcomes, dict[str, ObservedSeries]]:
    """The last day's stored forecasts of ``targets`` (default: all) scored, with the
    outcome arrays (each made when asked for) and observed series."""
    return scoring.score_store(store, now, context=context, step_s=step_s, horizon=horizon,
                               targets=targets)


def load_policy(store: Any, serving: ServingEngine) -> None:
    """Heads and sources as last stored (after a restart, or after a forget removed them)."""
    heads = personal.load_heads(store, serving.targets)
    rec = store.get_record(personal.RECORD_KIND, POLICY_KEY) or {}
    raw = rec.get("sources", {})
    sources = {
        str(t): [str(s) for s in steps]
        for t, steps in (raw.items() if isinstance(raw, dict) else ())
        if isinstance(steps, list)
    }
    serving.set_policy(heads, sources, rec.get("score") if isinstance(rec, dict) else None)
    if not rec:
        serving.score = None


def refit_due_in(store: Any, serving: ServingEngine, now: float | None = None) -> float:
    """Seconds until the personal model is due for a refit, from the stored policy: a
    (re)start waits that long, so a daemon restarted minutes after a refit (a crash, an
    upgrade of the host) does not redo a day's work (3-4 s of CPU, +21 MiB) while its sources
    reconnect. At once without a policy, for another global model, or when it is stamped
    later than ``now`` (the clock went back: its age is unknown)."""
    now = time.time() if now is None else now
    try:
        rec = store.get_record(personal.RECORD_KIND, POLICY_KEY)
    except EdgetwinError:  # damaged: refit (and rewrite) it
        return 0.0
    at = rec.get("at") if isinstance(rec, dict) else None
    if not isinstance(at, (int, float)) or not math.isfinite(at) or at > now:
        return 0.0
    if rec.get("model") != serving.model_id:
        return 0.0
    return float(min(max(0.0, at + REFIT_INTERVAL_S - now), REFIT_INTERVAL_S))


def score_twin(store: Any, manifest: Any, now: float | None = None) -> dict[str, Any]:
    """``predictions --score``: the stored forecasts scored as of ``now`` (default: the newest
    stored forecast, so an ingested recording scores its own last day), with what the twin
    serves per step and its personal heads."""
    if now is None:
        newest = store.read_predictions(last=1)
        now = newest[-1].t if newest else time.time()
    doc, _, _ = load_scored(
        store, now, context=manifest.context, step_s=manifest.step_s, horizon=manifest.horizon,
        targets=manifest.targets,
    )
    rec = store.get_record(personal.RECORD_KIND, POLICY_KEY) or {}
    doc["step_s"] = manifest.step_s
    doc["serving"] = rec.get("sources", {})
    doc["personal"] = {}
    for target in manifest.targets:
        head = store.get_record(personal.RECORD_KIND, personal.record_key(target))
        if head:
            doc["personal"][target] = {"adopted": head.get("adopted"), **head.get("holdout", {})}
    return doc


def stored_score(store: Any) -> dict[str, Any] | None:
    """The score the last refit stored (cheap: one record), or None."""
    rec = store.get_record(personal.RECORD_KIND, POLICY_KEY)
    score = rec.get("score") if rec else None
    return score if isinstance(score, dict) else None

