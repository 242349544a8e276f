"""What ``sync run`` (and the daemon's scheduler) does: release what is due, drain the outbox.

* :func:`run_due_releases` / :func:`release_due`: for every consented metric and
  every complete period not yet released, summarise the usable frames, and in
  ONE store transaction (``BEGIN IMMEDIATE``) re-check consent and the ledger,
  charge the budget, draw OpenDP noise, record the release and put it in the
  outbox, with its audit entry. Concurrent ``sync run`` processes serialise on
  the transaction and never release a window twice or overspend.
* :func:`drain_outbox`: upload what is due, with leases, capped backoff and
  idempotency keys.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetwin.config import Config
from edgetwin.errors import BudgetExhausted, UplinkError
from edgetwin.privacy import accountant, consent, noise_process
from edgetwin.privacy.mechanism import release_value
from edgetwin.privacy.metrics import PERIOD_SECONDS, bounds_for, get_metric, summarize, window_start
from edgetwin.privacy.records import RecordStore, TimelineStore
from edgetwin.privacy.release import DPRelease, readmit
from edgetwin.privacy.summaries import usable_values_of_columns
from edgetwin.sync import outbox
from edgetwin.sync.signing import load_or_create
from edgetwin.sync.target import load_target
from edgetwin.sync.uplink import Uplink, UplinkRejected, UplinkUnavailable, make_uplink

_LOGGER = logging.getLogger(__name__)

RELEASED = "release"  # ("release", "<metric>/<period>/<start>") -> {"id", "at"}
CURSOR = "release_cursor"  # ("release_cursor", "<metric>/<period>") -> {"next_start"}


@dataclass(frozen=True)
class Refusal:
    """A due release the accountant refused."""

    metric: str
    period: str
    period_start: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "period": self.period,
                "period_start": self.period_start, "reason": self.reason}


@dataclass
class MetricOutcome:
    """One consented metric in one release pass: what happened, why not more, what is next."""

    metric: str
    period: str
    released: int = 0
    refused: int = 0
    # (period start, usable frames) of each complete period with fewer than privacy.min_frames
    too_little_data: list[tuple[float, int]] = field(default_factory=list)
    min_frames: int = 0
    waiting_start: float = 0.0  # the first period not complete yet
    waiting_end: float = 0.0  # when it ends
    next_due: float = 0.0  # when its release is due (end + privacy.release_delay_s)
    accounting: str = "day"  # privacy.period: the ledger's period
    charged_to: list[float] = field(default_factory=list)  # starts of the ledger periods charged

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "period": self.period, "released": self.released,
            "refused": self.refused,
            "too_little_data": [{"period_start": t, "usable_frames": n}
                                for t, n in self.too_little_data],
            "min_frames": self.min_frames,
            "waiting_period_start": self.waiting_start, "waiting_period_end": self.waiting_end,
            "next_due": self.next_due, "accounting_period": self.accounting,
            "charged_to": self.charged_to,
        }


@dataclass
class ReleaseReport:
    """What one release pass did, and per consented metric why it did not do more."""

    released: list[DPRelease] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    no_data: int = 0
    metrics: list[MetricOutcome] = field(default_factory=list)  # empty: no consent at all

    @property
    def next_due(self) -> float | None:
        """When the next release of any consented metric is due (None without consent)."""
        return min((m.next_due for m in self.metrics), default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "released": [
                {"id": r.id, "metric": r.metric, "period": r.period,
                 "period_start": r.period_start, "epsilon": r.epsilon}
                for r in self.released
            ],
            "refused": [r.to_json() for r in self.refused],
            "skipped_no_data": self.no_data,
            "metrics": [m.to_json() for m in self.metrics],
            "next_due": self.next_due,
        }


@dataclass
class OutboxReport:
    """What one drain of the outbox did."""

    sent: int = 0
    duplicates: int = 0
    retry_later: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def first_error(self) -> str | None:
        return self.errors[0] if self.errors else None

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "duplicates": self.duplicates,
                "retry_later": self.retry_later, "failed": self.failed, "errors": self.errors}


def run_due_releases(
    store: TimelineStore, config: Config, now: float, *, reader: TimelineStore | None = None
) -> list[DPRelease]:
    """Release everything due within budget (refusals are logged, not raised); the daemon's hook."""
    report = release_due(store, config, now, reader=reader)
    for r in report.refused:
        _LOGGER.warning("release of %s refused: %s", r.metric, r.reason)
    return report.released


def release_due(
    store: TimelineStore, config: Config, now: float, *, reader: TimelineStore | None = None
) -> ReleaseReport:
    """Release every due window of every consented metric that the budget allows.

    ``reader`` (``store.reader()``): the windows' frames are read and decrypted on its own
    connection, so a day of them never holds the store, and with it the daemon's commits;
    the cursors, releases and audit entries are written through ``store``."""
    report = ReleaseReport()
    privacy = config.privacy
    cache: dict[tuple[str, float], dict[str, npt.NDArray[np.float64]]] = {}
    for c in consent.granted(store):
        if config.secagg.mode(c.metric) == "secagg":
            continue  # released only through a secure-aggregation share (privacy.secagg)
        metric = get_metric(c.metric)
        size = PERIOD_SECONDS[c.period]
        cursor_key = f"{metric.name}/{c.period}"
        granted_at = float(c.granted_at if c.granted_at is not None else now)
        start = window_start(granted_at - privacy.backfill_days * 86_400, c.period)
        cursor = store.get_record(CURSOR, cursor_key)
        if cursor is not None:
            start = max(start, float(cursor["next_start"]))
        bounds = bounds_for(metric, privacy.bounds, c.period)
        outcome = MetricOutcome(metric.name, c.period, min_frames=privacy.min_frames,
                                accounting=privacy.period)
        report.metrics.append(outcome)
        while start + size + privacy.release_delay_s <= now:
            key = (c.period, start)
            if key not in cache:
                blocks = (store if reader is None else reader).iter_frame_columns(
                    start, start + size)
                cache[key] = usable_values_of_columns(blocks, start, start + size)
            values = cache[key][metric.feature]
            if values.size < privacy.min_frames:
                report.no_data += 1
                outcome.too_little_data.append((start, int(values.size)))
                _advance(store, cursor_key, start + size)
            else:
                summary = summarize(metric, values, bounds, step_s=config.twin.step_s,
                                    active_motion_g=privacy.active_motion_g)
                try:
                    release = _release_one(store, config, metric.name, c.period, start,
                                           summary, bounds, now)
                except BudgetExhausted as exc:
                    report.refused.append(Refusal(metric.name, c.period, start, exc.message))
                    outcome.refused += 1
                    with store.transaction():
                        store.audit("sync.release_refused", metric=metric.name,
                                    period=c.period, period_start=start, reason=exc.message)
                        _advance(store, cursor_key, start + size)
                else:
                    if release is not None:
                        report.released.append(release)
                        outcome.released += 1
                        charged = accountant.buckets(start, c.period, privacy.period)
                        outcome.charged_to += [b for b in charged if b not in outcome.charged_to]
            start += size
        outcome.waiting_start, outcome.waiting_end = start, start + size
        outcome.next_due = start + size + privacy.release_delay_s
    return report


def release_one(
    store: RecordStore,
    config: Config,
    metric: str,
    period: str,
    period_start: float,
    summary: float,
    now: float,
) -> DPRelease | None:
    """Release one already-clipped summary (tests, benchmarks); None if already released."""
    bounds = bounds_for(get_metric(metric), config.privacy.bounds, period)
    return _release_one(store, config, metric, period, period_start, summary, bounds, now)


def drain_outbox(
    store: RecordStore,
    config: Config,
    now: float | None = None,
    *,
    retry_now: bool = False,
    uplink: Uplink | None = None,
) -> OutboxReport:
    """Upload due outbox entries; stops at the first transient error (the uplink is down).

    Without a configured target nothing is tried and the releases keep waiting.
    """
    t = time.time() if now is None else now
    report = OutboxReport()
    due = [
        e for e in outbox.entries(store)
        if e.state == "pending" and (retry_now or e.next_try <= t) and e.lease_until <= t
    ][: config.sync.max_per_run]
    if not due:
        return report
    target = load_target(store)
    if target is None:
        _LOGGER.info("%d release(s) wait in the outbox: no sync target configured", len(due))
        return report
    if uplink is None:
        uplink = make_uplink(target, load_or_create(store), config.sync)
    lease_s = config.sync.timeout_s * 4
    try:
        uplink.open()
    except UplinkError as exc:
        for e in due:
            outbox.mark_retry(store, e.id, str(exc), t, config.sync)
        report.retry_later += len(due)
        report.errors.append(str(exc))
        return report
    try:
        for i, e in enumerate(due):
            claimed = outbox.claim(store, e.id, t, lease_s)
            if claimed is None:
                continue  # another process is sending it, or it was cancelled
            try:
                release = readmit(claimed.release)
            except ValueError as exc:
                msg = f"outbox entry {e.id} is damaged: {exc}"
                outbox.mark_failed(store, e.id, msg, t)
                report.failed += 1
                report.errors.append(msg)
                continue
            try:
                outcome = uplink.send(release)
            except UplinkRejected as exc:
                outbox.mark_failed(store, e.id, str(exc), time.time())
                report.failed += 1
                report.errors.append(str(exc))
            except UplinkUnavailable as exc:
                delay = outbox.mark_retry(store, e.id, str(exc), t, config.sync)
                # The uplink is down: the rest wait as long, untried (attempts unchanged).
                outbox.defer(store, [x.id for x in due[i + 1:]], t + delay, str(exc))
                report.retry_later += len(due) - i
                report.errors.append(str(exc))
                _LOGGER.warning("upload failed, retrying in %.0f s: %s", delay, exc)
                break
            else:
                outbox.mark_sent(store, e.id, outcome, time.time(), target.describe())
                if outcome == "duplicate":
                    report.duplicates += 1
                else:
                    report.sent += 1
    finally:
        uplink.close()
    return report


def revoke_consent(store: RecordStore, metric: str, now: float) -> tuple[consent.Consent, int]:
    """Withdraw consent and cancel that metric's unsent releases, atomically; audited."""
    with store.transaction():
        c = consent.revoke_in_transaction(store, metric, now)
        cancelled = outbox.cancel_metric_in_transaction(store, metric)
        if cancelled:
            store.audit("sync.cancelled", metric=metric, releases=cancelled)
    return c, cancelled


# -- private helpers ---------------------------------------------------------


def _release_one(
    store: RecordStore,
    config: Config,
    metric: str,
    period: str,
    start: float,
    summary: float,
    bounds: tuple[float, float],
    now: float,
) -> DPRelease | None:
    privacy = config.privacy
    key = f"{metric}/{period}/{int(start)}"
    child = noise_process.current()
    if child is not None:
        child.start()  # the OpenDP child starts before the store's lock is taken, not under it
    with store.transaction():
        # Everything below is re-read under the write lock: another process may have
        # released this window, revoked consent or spent the budget since we looked.
        if store.get_record(RELEASED, key) is not None:
            return None
        current = consent.get_consent(store, metric)
        if not current.granted or current.period != period:
            return None
        accountant.charge(store, privacy, start, period, privacy.epsilon_per_release,
                          what=f"{metric} for the {period} starting {_iso(start)}")
        release = release_value(get_metric(metric), period, start, summary, bounds,
                                privacy.epsilon_per_release, now=now)
        store.put_record(RELEASED, key, {"id": release.id, "at": now})
        outbox.enqueue_in_transaction(store, release, now)
        _advance(store, f"{metric}/{period}", start + PERIOD_SECONDS[period])
        store.audit("sync.release", id=release.id, metric=metric, period=period,
                    period_start=start, epsilon=release.epsilon)
    _LOGGER.info("released %s for the %s starting %d", metric, period, int(start))
    return release


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _advance(store: RecordStore, cursor_key: str, next_start: float) -> None:
    current = store.get_record(CURSOR, cursor_key)
    if current is None or float(current["next_start"]) < next_start:
        store.put_record(CURSOR, cursor_key, {"next_start": next_start})
