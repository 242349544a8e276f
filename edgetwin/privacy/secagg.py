"""Secure-aggregation releases: the sealed ``SecAggShare`` and its ledger on the device.

A metric in ``secagg.modes = "secagg"`` mode is not released on its own. Each
complete period, :func:`prepare_due` clips its summary, puts it on the integer
grid, adds a discrete Gaussian share drawn by OpenDP (``discrete``) and, in ONE
store transaction with a consent re-check and the accountant's charge, stores
the sealed share as ``("secagg_share", "<metric>/<period>/<start>")`` in state
``ready`` with its audit entry. Only a genuine ``SecAggShare`` (same capability
and HMAC-seal scheme as ``DPRelease``) can be claimed for a round:
:func:`claim_share` moves it to ``submitted`` before its value is handed to the
Flower client, so a share enters at most one round and is never re-drawn: a
failed round costs nothing more, and the next period has its own share.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgetwin.config import Config
from edgetwin.errors import BudgetExhausted, ConsentMissing
from edgetwin.privacy import accountant, consent, noise_process
from edgetwin.privacy.discrete import SharePlan, add_share_noise, library, plan_for
from edgetwin.privacy.metrics import PERIOD_SECONDS, bounds_for, get_metric, summarize, window_start
from edgetwin.privacy.records import RecordStore, TimelineStore
from edgetwin.privacy.release import canonical_json

_LOGGER = logging.getLogger(__name__)

SHARE_SCHEMA = "edgetwin.secagg-share/1"
MECHANISM = "distributed-discrete-gaussian"
KIND = "secagg_share"  # ("secagg_share", "<metric>/<period>/<start>") -> {"state", "share", ...}
CURSOR = "secagg_cursor"  # ("secagg_cursor", "<metric>/<period>") -> {"next_start"}

_MINT = object()
_SEAL_KEY = secrets.token_bytes(32)

FIELDS: tuple[str, ...] = (
    "schema", "id", "metric", "unit", "period", "period_start", "period_end", "value",
    "mechanism", "epsilon", "delta", "epsilon_own", "charged", "sigma_share", "sigma_central",
    "min_cohort", "lower", "upper", "levels", "clip_range", "created", "library",
)
_INTS = ("value", "min_cohort", "levels", "clip_range")
_FLOATS = ("period_start", "period_end", "epsilon", "delta", "epsilon_own", "charged",
           "sigma_share", "sigma_central", "lower", "upper", "created")


class ForgedShare(TypeError):
    """Something that is not a genuine SecAggShare was offered for a round."""


class ShareUnavailable(LookupError):
    """No ready share for the requested metric and period: the device does not join."""


@dataclass(frozen=True, slots=True)
class SecAggShare:
    """One device's noisy grid value of one metric and period, for one SecAgg+ round.

    ``value`` = grid(clip(summary)) + discrete Gaussian(``sigma_share``) noise from
    OpenDP; the sum of ``min_cohort`` such shares is (``epsilon``, ``delta``)-DP.
    ``epsilon_own`` is what this share alone guarantees at ``delta``; ``charged``
    is what the accountant was charged (``secagg.charge``).
    """

    schema: str
    id: str
    metric: str
    unit: str
    period: str
    period_start: float
    period_end: float
    value: int
    mechanism: str
    epsilon: float
    delta: float
    epsilon_own: float
    charged: float
    sigma_share: float
    sigma_central: float
    min_cohort: int
    lower: float
    upper: float
    levels: int
    clip_range: int
    created: float
    library: str
    _capability: object = field(repr=False, compare=False)
    _seal: bytes = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._capability is not _MINT:
            raise ForgedShare("SecAggShare can only be made by edgetwin.privacy.secagg")
        if not hmac.compare_digest(self._seal, _seal_of(_public(self))):
            raise ForgedShare("SecAggShare fields do not match their seal")

    def to_record(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (kept in the encrypted store only)."""
        return _public(self)

    def plan(self) -> SharePlan:
        """The share plan the share was drawn under (the server decodes with the same)."""
        return plan_for(self.lower, self.upper, self.levels, self.epsilon, self.delta,
                        self.min_cohort)


@dataclass
class PrepareReport:
    """What one pass of :func:`prepare_due` did."""

    prepared: list[SecAggShare] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    no_data: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "prepared": [{"id": s.id, "metric": s.metric, "period": s.period,
                          "period_start": s.period_start, "epsilon": s.epsilon,
                          "epsilon_own": s.epsilon_own, "charged": s.charged,
                          "delta": s.delta} for s in self.prepared],
            "refused": self.refused, "skipped_no_data": self.no_data,
        }


def is_genuine(obj: object) -> bool:
    """Whether ``obj`` is a SecAggShare minted here and unchanged since."""
    if type(obj) is not SecAggShare:
        return False
    try:
        return obj._capability is _MINT and hmac.compare_digest(obj._seal, _seal_of(_public(obj)))
    except (AttributeError, TypeError, ValueError):
        return False


def require_genuine(obj: object) -> SecAggShare:
    """``obj`` if it is a genuine SecAggShare, else ForgedShare."""
    if not is_genuine(obj):
        raise ForgedShare(
            f"refusing {type(obj).__module__}.{type(obj).__qualname__} for a secure-aggregation "
            "round: only a SecAggShare made by edgetwin's privacy layer may enter one")
    assert isinstance(obj, SecAggShare)
    return obj


def mint_share(metric: str, period: str, period_start: float, summary: float,
               bounds: tuple[float, float], plan: SharePlan, *, charged: float,
               now: float | None = None) -> SecAggShare:
    """Encode ``summary`` on the grid and add an OpenDP share; the caller charges the budget."""
    m = get_metric(metric)
    if (plan.lower, plan.upper) != (float(bounds[0]), float(bounds[1])):
        raise ValueError(f"plan bounds {plan.lower, plan.upper} differ from {bounds}")
    value = add_share_noise(plan, plan.encode(summary))
    return _mint(
        schema=SHARE_SCHEMA, id=uuid.uuid4().hex, metric=m.name, unit=m.unit, period=period,
        period_start=period_start, period_end=period_start + PERIOD_SECONDS[period],
        value=value, mechanism=MECHANISM, epsilon=plan.epsilon, delta=plan.delta,
        epsilon_own=plan.epsilon_own, charged=charged, sigma_share=plan.sigma_share,
        sigma_central=plan.sigma_central, min_cohort=plan.min_cohort, lower=plan.lower,
        upper=plan.upper, levels=plan.levels, clip_range=plan.clip_range,
        created=time.time() if now is None else now, library=library(),
    )


def readmit(record: dict[str, Any]) -> SecAggShare:
    """Re-admit a share read back from the encrypted store; ValueError if a field is off."""
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"share record has keys {keys}, expected {sorted(FIELDS)}")
    if record["schema"] != SHARE_SCHEMA or record["mechanism"] != MECHANISM:
        raise ValueError("share record has the wrong schema or mechanism")
    for name in _INTS:
        if isinstance(record[name], bool) or not isinstance(record[name], int):
            raise ValueError(f"share field {name!r} must be a whole number")
    for name in _FLOATS:
        v = record[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"share field {name!r} must be a finite number")
    plan = plan_for(record["lower"], record["upper"], record["levels"], record["epsilon"],
                    record["delta"], record["min_cohort"])
    if not math.isclose(plan.sigma_share, record["sigma_share"], rel_tol=1e-9):
        raise ValueError("share sigma does not match its plan")
    if abs(record["value"]) > plan.clip_range:
        raise ValueError("share value beyond its clip range")
    return _mint(**record)


def prepare_due(store: TimelineStore, config: Config, now: float) -> PrepareReport:
    """Mint and charge the share of every due period of every consented secagg metric."""
    from edgetwin.privacy.summaries import usable_values_of_columns

    report = PrepareReport()
    privacy = config.privacy
    for c in consent.granted(store):
        if config.secagg.mode(c.metric) != "secagg":
            continue
        metric = get_metric(c.metric)
        size = PERIOD_SECONDS[c.period]
        cursor_key = f"{metric.name}/{c.period}"
        granted_at = float(c.granted_at if c.granted_at is not None else now)
        start = window_start(granted_at - privacy.backfill_days * 86_400, c.period)
        cursor = store.get_record(CURSOR, cursor_key)
        if cursor is not None:
            start = max(start, float(cursor["next_start"]))
        bounds = bounds_for(metric, privacy.bounds, c.period)
        while start + size + privacy.release_delay_s <= now:
            blocks = store.iter_frame_columns(start, start + size)
            values = usable_values_of_columns(blocks, start, start + size)[metric.feature]
            if values.size < privacy.min_frames:
                report.no_data += 1
                with store.transaction():
                    _advance(store, cursor_key, start + size)
            else:
                summary = summarize(metric, values, bounds, step_s=config.twin.step_s,
                                    active_motion_g=privacy.active_motion_g)
                try:
                    share = prepare_share(store, config, metric.name, c.period, start,
                                          summary, now)
                except BudgetExhausted as exc:
                    report.refused.append(exc.message)
                    with store.transaction():
                        store.audit("secagg.share_refused", metric=metric.name,
                                    period=c.period, period_start=start, reason=exc.message)
                        _advance(store, cursor_key, start + size)
                else:
                    if share is not None:
                        report.prepared.append(share)
            start += size
    return report


def prepare_share(store: RecordStore, config: Config, metric: str, period: str,
                  period_start: float, summary: float, now: float) -> SecAggShare | None:
    """Charge and mint one share atomically; None if this period already has one."""
    privacy, sa = config.privacy, config.secagg
    bounds = bounds_for(get_metric(metric), privacy.bounds, period)
    plan = plan_for(bounds[0], bounds[1], sa.levels, privacy.epsilon_per_release, sa.delta,
                    sa.min_cohort)
    charged = plan.epsilon if sa.charge == "central" else plan.epsilon_own
    key = share_key(metric, period, period_start)
    child = noise_process.current()
    if child is not None:
        child.start()  # the OpenDP child starts before the store's lock is taken, not under it
    with store.transaction():
        if store.get_record(KIND, key) is not None:
            return None
        current = consent.get_consent(store, metric)
        if not current.granted or current.period != period:
            return None
        accountant.charge(store, privacy, period_start, period, charged,
                          what=f"{metric} (secure aggregation) for the {period} starting "
                               f"{_iso(period_start)}")
        share = mint_share(metric, period, period_start, summary, bounds, plan,
                           charged=charged, now=now)
        store.put_record(KIND, key, {"state": "ready", "share": share.to_record(),
                                     "at": now})
        _advance(store, f"{metric}/{period}", period_start + PERIOD_SECONDS[period])
        store.audit("secagg.share", id=share.id, metric=metric, period=period,
                    period_start=period_start, epsilon=plan.epsilon, delta=plan.delta,
                    epsilon_own=plan.epsilon_own, charged=charged,
                    min_cohort=plan.min_cohort)
    _LOGGER.info("prepared a secagg share of %s for the %s starting %d", metric, period,
                 int(period_start))
    return share


def claim_share(store: RecordStore, metric: str, period_start: float, round_id: str,
                now: float) -> SecAggShare:
    """Hand out the ready share of ``metric`` for one round, once; ShareUnavailable if none.

    Consent is re-checked: a share prepared before a revoke never enters a round.
    """
    with store.transaction():
        c = consent.get_consent(store, metric)
        if not c.granted:
            raise ConsentMissing(f"no consent to share {metric!r} in a secure aggregation")
        key = share_key(metric, c.period, period_start)
        entry = store.get_record(KIND, key)
        if entry is None:
            raise ShareUnavailable(f"no share of {metric} for the {c.period} starting "
                                   f"{_iso(period_start)}")
        if entry["state"] != "ready":
            raise ShareUnavailable(f"the share of {key} was already {entry['state']} "
                                   f"(round {entry.get('round')})")
        share = readmit(entry["share"])
        store.put_record(KIND, key, {**entry, "state": "submitted", "round": round_id,
                                     "submitted_at": now})
        store.audit("secagg.submit", id=share.id, metric=metric, round=round_id)
    return share


def shares(store: RecordStore) -> dict[str, dict[str, Any]]:
    """Every share entry by key, with its state (status and tests)."""
    return store.list_records(KIND)


def share_key(metric: str, period: str, period_start: float) -> str:
    return f"{metric}/{period}/{int(period_start)}"


# -- private helpers ---------------------------------------------------------


def _mint(**fields: Any) -> SecAggShare:
    public = {name: fields[name] for name in FIELDS}
    for name in _FLOATS:
        public[name] = float(public[name])
    for name in _INTS:
        public[name] = int(public[name])
    return SecAggShare(**public, _capability=_MINT, _seal=_seal_of(public))


def _public(share: SecAggShare) -> dict[str, Any]:
    return {name: getattr(share, name) for name in FIELDS}


def _seal_of(public: dict[str, Any]) -> bytes:
    return hmac.new(_SEAL_KEY, canonical_json(public), hashlib.sha256).digest()


def _advance(store: RecordStore, cursor_key: str, next_start: float) -> None:
    current = store.get_record(CURSOR, cursor_key)
    if current is None or float(current["next_start"]) < next_start:
        store.put_record(CURSOR, cursor_key, {"next_start": next_start})


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")
