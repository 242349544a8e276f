from __future__ import annotations

import random

from edgetwin.daemon.backoff import Backoff, is_permanent
from edgetwin.errors import DriverMissing, PairingRefused, TransientSourceError


def test_delays_grow_exponentially_with_jitter_and_are_capped() -> None:
    b = Backoff(initial_s=1.0, max_s=30.0, rng=random.Random(1))
    delays = [b.next_delay(TransientSourceError("x")) for _ in range(10)]
    caps = [min(30.0, 2.0**i) for i in range(10)]
    for d, cap in zip(delays, caps, strict=True):
        assert 0 <= d < cap
    assert max(delays) <= 30.0
    assert len(set(delays)) == len(delays)  # jitter: no two identical waits


def test_full_jitter_spans_zero_to_the_cap() -> None:
    """Full jitter as the docstring says: uniform over [0, cap), not [cap/2, cap)."""
    cap = 8.0
    delays = []
    for seed in range(2000):
        b = Backoff(initial_s=1.0, max_s=cap, rng=random.Random(seed), attempt=10)
        delays.append(b.next_delay(TransientSourceError("x")))
    assert all(0 <= d < cap for d in delays)
    # Each eighth of [0, cap) gets its share (about 250 of 2000; equal jitter leaves the
    # lower half empty).
    counts = [sum(1 for d in delays if k <= d < k + 1) for k in range(8)]
    assert min(counts) > 180, counts
    assert min(delays) < 0.05 * cap
    assert abs(sum(delays) / len(delays) - cap / 2) < 0.1 * cap


def test_refused_pairing_waits_the_longest() -> None:
    b = Backoff(initial_s=1.0, max_s=45.0)
    assert b.next_delay(PairingRefused("bad key")) == 45.0


def test_reset_starts_over() -> None:
    b = Backoff(initial_s=1.0, max_s=60.0, rng=random.Random(2))
    for _ in range(6):
        b.next_delay()
    b.reset()
    assert b.next_delay() <= 1.0


def test_only_missing_drivers_are_permanent() -> None:
    assert is_permanent(DriverMissing("no lib"))
    assert not is_permanent(TransientSourceError("lost"))


def test_a_device_that_flaps_forever_keeps_getting_capped_delays() -> None:
    # 2.0**1024 overflows a float: before the fix the 1,025th failure raised OverflowError in
    # the runner and the source was never retried again
    b = Backoff(initial_s=0.001, max_s=0.01, rng=random.Random(3))
    delays = [b.next_delay(TransientSourceError("link lost")) for _ in range(5000)]
    assert b.attempt == 5000
    assert all(0.0 <= d < 0.01 for d in delays)
    assert max(delays[2000:]) > 0.009  # still full jitter over [0, max_s)
