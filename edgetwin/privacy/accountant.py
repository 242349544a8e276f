"""The privacy-budget accountant: per-period and lifetime epsilon caps.

The ledger lives in the encrypted twin as records ``("privacy_ledger", key)``:
one per accounting period (``"day:<start>"``/``"hour:<start>"``, UTC) and one
``"lifetime"``. A release over a data window is charged to every accounting
period the window overlaps (a day-long release costs each of its 24 hours
under hourly accounting) and once to the lifetime total; this is sequential
composition over the person-period.

:func:`charge` must run inside ``store.transaction()`` (SQLite ``BEGIN
IMMEDIATE``): it re-reads the ledger under the write lock, so two processes
releasing at once can never both fit into the last bit of budget, and the
charge commits or rolls back together with the release and its outbox entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgetwin.config import PrivacyConfig
from edgetwin.errors import BudgetExhausted
from edgetwin.privacy.metrics import PERIOD_SECONDS, window_start
from edgetwin.privacy.records import RecordStore

KIND = "privacy_ledger"
LIFETIME = "lifetime"
# Sums of floats drift by ulps; a release that fits up to this slack is allowed.
_SLACK = 1e-9


@dataclass(frozen=True)
class BudgetStatus:
    """Spent and remaining epsilon of one accounting period and of the lifetime."""

    period: str
    period_start: float
    epsilon_spent: float
    epsilon_remaining: float
    lifetime_spent: float
    lifetime_remaining: float
    epsilon_per_period: float
    epsilon_lifetime: float

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md ``sync budget`` object (plus the period's start and the caps)."""
        return {
            "period": self.period,
            "period_start": self.period_start,
            "period_start_iso": _iso(self.period_start),
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
            "lifetime_spent": self.lifetime_spent,
            "lifetime_remaining": self.lifetime_remaining,
            "epsilon_per_period": self.epsilon_per_period,
            "epsilon_lifetime": self.epsilon_lifetime,
        }


def buckets(window_start_t: float, window_period: str, accounting: str) -> list[float]:
    """Starts of the accounting periods that a data window overlaps."""
    start = window_start(window_start_t, accounting)
    end = window_start_t + PERIOD_SECONDS[window_period]
    step = PERIOD_SECONDS[accounting]
    out = []
    while start < end:
        out.append(start)
        start += step
    return out


def charge(
    store: RecordStore,
    privacy: PrivacyConfig,
    window_start_t: float,
    window_period: str,
    epsilon: float,
    *,
    what: str,
) -> None:
    """Spend ``epsilon`` on a window, or BudgetExhausted; call inside ``store.transaction()``."""
    if not epsilon > 0:
        raise ValueError(f"epsilon {epsilon} must be greater than 0")
    lifetime = _spent(store.get_record(KIND, LIFETIME))
    if lifetime + epsilon > privacy.epsilon_lifetime + _SLACK:
        raise BudgetExhausted(
            f"{what}: lifetime privacy budget exhausted ({lifetime:g} of "
            f"{privacy.epsilon_lifetime:g} spent; this release needs {epsilon:g})",
            hint="nothing more can leave unless privacy.epsilon_lifetime is raised",
        )
    starts = buckets(window_start_t, window_period, privacy.period)
    spent = {s: _spent(store.get_record(KIND, _key(privacy.period, s))) for s in starts}
    for s, used in spent.items():
        if used + epsilon > privacy.epsilon_per_period + _SLACK:
            raise BudgetExhausted(
                f"{what}: privacy budget of the {privacy.period} starting {_iso(s)} exhausted "
                f"({used:g} of {privacy.epsilon_per_period:g} spent; this release needs "
                f"{epsilon:g})",
                hint="fewer metrics per period, or a larger privacy.epsilon_per_period",
            )
    for s, used in spent.items():
        store.put_record(
            KIND,
            _key(privacy.period, s),
            {"period": privacy.period, "start": s, "spent": used + epsilon},
        )
    store.put_record(KIND, LIFETIME, {"spent": lifetime + epsilon})


def status(store: RecordStore, privacy: PrivacyConfig, at: float) -> BudgetStatus:
    """The budget of the accounting period holding ``at`` and of the lifetime."""
    start = window_start(at, privacy.period)
    spent = _spent(store.get_record(KIND, _key(privacy.period, start)))
    lifetime = _spent(store.get_record(KIND, LIFETIME))
    return BudgetStatus(
        period=privacy.period,
        period_start=start,
        epsilon_spent=spent,
        epsilon_remaining=max(0.0, privacy.epsilon_per_period - spent),
        lifetime_spent=lifetime,
        lifetime_remaining=max(0.0, privacy.epsilon_lifetime - lifetime),
        epsilon_per_period=privacy.epsilon_per_period,
        epsilon_lifetime=privacy.epsilon_lifetime,
    )


def ledger(store: RecordStore) -> dict[str, dict[str, Any]]:
    """Every ledger record (for status and tests)."""
    return store.list_records(KIND)


# -- private helpers ---------------------------------------------------------


def _key(period: str, start: float) -> str:
    return f"{period}:{int(start)}"


def _spent(record: dict[str, Any] | None) -> float:
    return 0.0 if record is None else float(record["spent"])


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")
