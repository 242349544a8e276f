"""Consent: which metrics may leave the device, over which period. Default: none.

Stored as encrypted records ``("consent", metric)``; every grant and revoke is
written together with its audit entry in one store transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgetwin.errors import ConsentMissing, UsageError
from edgetwin.privacy.metrics import METRICS, PERIOD_SECONDS, get_metric
from edgetwin.privacy.records import RecordStore

KIND = "consent"


@dataclass(frozen=True)
class Consent:
    """The consent state of one metric."""

    metric: str
    granted: bool
    period: str
    granted_at: float | None = None
    revoked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md ``consent list`` object (plus timestamps)."""
        return {
            "metric": self.metric,
            "granted": self.granted,
            "period": self.period,
            "granted_at": self.granted_at,
            "revoked_at": self.revoked_at,
        }


def list_consents(store: RecordStore, default_period: str = "day") -> list[Consent]:
    """Every metric of the catalogue with its consent; never-granted ones are not granted."""
    records = store.list_records(KIND)
    return [_from_record(name, records.get(name), default_period) for name in METRICS]


def get_consent(store: RecordStore, metric: str, default_period: str = "day") -> Consent:
    """The consent state of ``metric`` (ConfigError if the metric is unknown)."""
    get_metric(metric)
    return _from_record(metric, store.get_record(KIND, metric), default_period)


def granted(store: RecordStore) -> list[Consent]:
    """Consents currently granted, in catalogue order."""
    return [c for c in list_consents(store) if c.granted]


def grant(store: RecordStore, metric: str, period: str, now: float) -> Consent:
    """Allow DP summaries of ``metric`` per ``period`` to leave; audited."""
    get_metric(metric)
    _check_period(period)
    consent = Consent(metric, True, period, granted_at=now)
    with store.transaction():
        store.put_record(KIND, metric, consent.to_json())
        store.audit("consent.grant", metric=metric, period=period)
    return consent


def revoke_in_transaction(store: RecordStore, metric: str, now: float) -> Consent:
    """Withdraw consent for ``metric``; the caller holds ``store.transaction()``."""
    previous = get_consent(store, metric)
    consent = Consent(metric, False, previous.period, granted_at=previous.granted_at,
                      revoked_at=now)
    store.put_record(KIND, metric, consent.to_json())
    store.audit("consent.revoke", metric=metric, period=previous.period)
    return consent


def require(store: RecordStore, metric: str) -> Consent:
    """The granted consent of ``metric``, or ConsentMissing (exit 5)."""
    consent = get_consent(store, metric)
    if not consent.granted:
        raise ConsentMissing(
            f"no consent to release {metric!r}",
            hint=f"run 'edgetwin consent grant {metric}' if you want it shared",
        )
    return consent


# -- private helpers ---------------------------------------------------------


def _check_period(period: str) -> None:
    if period not in PERIOD_SECONDS:
        raise UsageError(f"period {period!r} is not one of {', '.join(PERIOD_SECONDS)}")


def _from_record(metric: str, record: dict[str, Any] | None, default_period: str) -> Consent:
    if record is None:
        return Consent(metric, False, default_period)
    return Consent(
        metric=metric,
        granted=bool(record.get("granted", False)),
        period=str(record.get("period", default_period)),
        granted_at=record.get("granted_at"),
        revoked_at=record.get("revoked_at"),
    )
