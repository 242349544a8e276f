"""The outbox: releases wait in the encrypted store until the uplink confirms them.

Records ``("outbox", release id)``. A release enters the outbox in the same
store transaction that charges its budget, so a crash can neither lose a paid
release nor send an unpaid one. States::

    pending ──send ok──▶ sent
       │  └─transient error─▶ pending (attempts+1, next_try = now + capped backoff)
       └─collector refused (4xx)─▶ failed ──sync run --retry-failed──▶ pending
    pending/failed ──consent revoked──▶ cancelled (never sent)

A sending process takes a short lease on an entry so two concurrent drains do
not both send it; if one did (a lease ran out mid-send), the collector counts
the release id once.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edgetwin.config import SyncConfig
from edgetwin.privacy.records import RecordStore
from edgetwin.privacy.release import DPRelease

KIND = "outbox"
STATES = ("pending", "sent", "failed", "cancelled")


@dataclass(frozen=True)
class OutboxEntry:
    """One release waiting for, or done with, its upload."""

    id: str
    release: dict[str, Any]
    state: str
    attempts: int
    next_try: float
    created: float
    last_error: str | None = None
    sent_at: float | None = None
    outcome: str | None = None
    lease_until: float = 0.0

    @property
    def metric(self) -> str:
        return str(self.release["metric"])

    def to_record(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "state": self.state,
            "attempts": self.attempts,
            "next_try": self.next_try,
            "created": self.created,
            "last_error": self.last_error,
            "sent_at": self.sent_at,
            "outcome": self.outcome,
            "lease_until": self.lease_until,
        }

    def to_json(self) -> dict[str, Any]:
        """What ``sync status --json`` lists (no released value: it stays in the twin)."""
        r = self.release
        return {
            "id": self.id,
            "metric": r["metric"],
            "period": r["period"],
            "period_start": r["period_start"],
            "epsilon": r["epsilon"],
            "state": self.state,
            "attempts": self.attempts,
            "next_try": self.next_try if self.state == "pending" else None,
            "last_error": self.last_error,
            "sent_at": self.sent_at,
        }


@dataclass(frozen=True)
class OutboxStatus:
    """Counts per state and the entries not yet sent."""

    counts: dict[str, int]
    unsent: list[OutboxEntry]

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.counts.get("pending", 0),
            "sent": self.counts.get("sent", 0),
            "failed": self.counts.get("failed", 0),
            "cancelled": self.counts.get("cancelled", 0),
            "entries": [e.to_json() for e in self.unsent],
        }


def enqueue_in_transaction(store: RecordStore, release: DPRelease, now: float) -> OutboxEntry:
    """Put a fresh release in the outbox; the caller holds ``store.transaction()``."""
    entry = OutboxEntry(
        id=release.id, release=release.to_record(), state="pending", attempts=0,
        next_try=now, created=now,
    )
    store.put_record(KIND, entry.id, entry.to_record())
    return entry


def entries(store: RecordStore) -> list[OutboxEntry]:
    """Every entry, oldest first."""
    out = [_from_record(k, v) for k, v in store.list_records(KIND).items()]
    return sorted(out, key=lambda e: (e.created, e.release["period_start"], e.metric, e.id))


def status(store: RecordStore) -> OutboxStatus:
    all_entries = entries(store)
    counts = Counter(e.state for e in all_entries)
    return OutboxStatus(
        counts={s: counts.get(s, 0) for s in STATES},
        unsent=[e for e in all_entries if e.state in ("pending", "failed")],
    )


def claim(store: RecordStore, entry_id: str, now: float, lease_s: float) -> OutboxEntry | None:
    """Lease a due pending entry for sending, or None if it is not (or no longer) due."""
    with store.transaction():
        current = _get(store, entry_id)
        if current is None or current.state != "pending" or current.lease_until > now:
            return None
        leased = _replace(current, lease_until=now + lease_s)
        store.put_record(KIND, entry_id, leased.to_record())
        return leased


def mark_sent(store: RecordStore, entry_id: str, outcome: str, now: float, target: str) -> None:
    """Record a confirmed upload, with its audit entry."""
    with store.transaction():
        current = _get(store, entry_id)
        if current is None:
            return
        done = _replace(current, state="sent", attempts=current.attempts + 1, sent_at=now,
                        outcome=outcome, last_error=None, lease_until=0.0)
        store.put_record(KIND, entry_id, done.to_record())
        store.audit("sync.upload", id=entry_id, metric=current.metric, target=target,
                    outcome=outcome)


def mark_retry(
    store: RecordStore, entry_id: str, error: str, now: float, config: SyncConfig
) -> float:
    """Keep the entry pending and schedule its next try with capped backoff; returns the delay."""
    with store.transaction():
        current = _get(store, entry_id)
        if current is None or current.state != "pending":
            return 0.0
        attempts = current.attempts + 1
        delay = backoff_delay(attempts, config)
        store.put_record(KIND, entry_id, _replace(
            current, attempts=attempts, next_try=now + delay, last_error=error, lease_until=0.0,
        ).to_record())
        return delay


def defer(store: RecordStore, entry_ids: list[str], until: float, reason: str) -> None:
    """Postpone untried pending entries (the uplink is down: no use trying them now)."""
    with store.transaction():
        for entry_id in entry_ids:
            current = _get(store, entry_id)
            if current is not None and current.state == "pending":
                store.put_record(KIND, entry_id, _replace(
                    current, next_try=max(current.next_try, until),
                    last_error=f"not tried: {reason}").to_record())


def mark_failed(store: RecordStore, entry_id: str, error: str, now: float) -> None:
    """The collector refused it: keep it, park it as failed, audit why."""
    with store.transaction():
        current = _get(store, entry_id)
        if current is None:
            return
        store.put_record(KIND, entry_id, _replace(
            current, state="failed", attempts=current.attempts + 1, last_error=error,
            lease_until=0.0, next_try=now,
        ).to_record())
        store.audit("sync.upload_refused", id=entry_id, metric=current.metric, error=error)


def requeue_failed(store: RecordStore, now: float) -> int:
    """Move every failed entry back to pending (after a person fixed the cause)."""
    count = 0
    with store.transaction():
        for e in entries(store):
            if e.state == "failed":
                store.put_record(KIND, e.id, _replace(e, state="pending", next_try=now).to_record())
                count += 1
    return count


def cancel_metric_in_transaction(store: RecordStore, metric: str) -> int:
    """Cancel unsent entries of ``metric`` (consent revoked); caller holds the transaction."""
    count = 0
    for e in entries(store):
        if e.metric == metric and e.state in ("pending", "failed"):
            store.put_record(KIND, e.id, _replace(e, state="cancelled").to_record())
            count += 1
    return count


def backoff_delay(attempts: int, config: SyncConfig) -> float:
    """Capped exponential backoff with jitter in [cap/2, cap] (spreads a fleet's retries)."""
    cap = min(config.backoff_max_s, config.backoff_initial_s * 2.0 ** max(0, attempts - 1))
    # Not security sensitive: jitter only spreads retries.
    return cap / 2 + random.uniform(0, cap / 2)


# -- private helpers ---------------------------------------------------------


def _get(store: RecordStore, entry_id: str) -> OutboxEntry | None:
    record = store.get_record(KIND, entry_id)
    return None if record is None else _from_record(entry_id, record)


def _from_record(key: str, r: dict[str, Any]) -> OutboxEntry:
    return OutboxEntry(
        id=key,
        release=dict(r["release"]),
        state=str(r["state"]),
        attempts=int(r["attempts"]),
        next_try=float(r["next_try"]),
        created=float(r["created"]),
        last_error=r.get("last_error"),
        sent_at=r.get("sent_at"),
        outcome=r.get("outcome"),
        lease_until=float(r.get("lease_until", 0.0)),
    )


def _replace(entry: OutboxEntry, **changes: Any) -> OutboxEntry:
    from dataclasses import replace

    return replace(entry, **changes)
