"""Which accounting periods a release is charged to."""

from __future__ import annotations

from edgetwin.privacy.accountant import buckets

DAY = 86_400.0
T0 = 1_750_032_000.0  # a UTC midnight


def test_a_day_window_under_daily_accounting_is_one_bucket() -> None:
    assert buckets(T0, "day", "day") == [T0]


def test_an_hour_window_is_charged_to_its_day() -> None:
    assert buckets(T0 + 5 * 3600, "hour", "day") == [T0]


def test_a_day_window_under_hourly_accounting_costs_every_hour() -> None:
    b = buckets(T0, "day", "hour")
    assert len(b) == 24 and b[0] == T0 and b[-1] == T0 + 23 * 3600
