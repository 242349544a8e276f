"""The twin's clock on a scripted wall clock and monotonic clock."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from edgetwin.clock import TwinClock


class Host:
    """A host whose wall clock can be stepped; the monotonic clock never is."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 50.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _clock(host: Host, slew: float = 0.01) -> TwinClock:
    return TwinClock(wall=lambda: host.wall, monotonic=lambda: host.mono, slew=slew)


def test_in_step_it_is_the_wall_clock_exactly() -> None:
    host = Host()
    clock = _clock(host)
    for _ in range(100):
        host.run(0.013)
        assert clock.now() == host.wall
    assert clock.offset() == 0.0
    stamps = np.array([host.wall - 0.5, host.wall])
    assert clock.from_wall(stamps) is stamps  # untouched, not even copied
    assert clock.stats()["steps_back"] == clock.stats()["steps_forward"] == 0


def test_a_step_forward_is_followed_at_once() -> None:
    host = Host()
    clock = _clock(host)
    clock.now()
    host.run(1.0)
    host.wall += 3600.0  # NTP sets a Pi without a real-time clock after boot
    assert clock.now() == host.wall
    assert clock.steps_forward == 1 and clock.steps_back == 0


def test_a_step_back_is_absorbed_at_the_slew_rate_never_going_backward() -> None:
    host = Host()
    clock = _clock(host, slew=0.01)
    clock.now()
    host.run(0.1)
    before = clock.now()
    host.wall -= 30.0
    stamps = [before]
    for _ in range(40_000):  # 4,000 s in 0.1 s readings
        host.run(0.1)
        stamps.append(clock.now())
    steps = np.diff(stamps)
    assert steps.min() >= 0.1 * 0.99 - 1e-6  # slowed by 1 % at most: spacing barely moves
    assert steps.max() <= 0.1 + 1e-6  # (1e-6: float spacing near 1.7e9 s)
    # 30 s at 1 % is absorbed after 3,000 s; then it is the wall clock again
    assert stamps[-1] == host.wall and clock.offset() == 0.0
    assert clock.steps_back == 1 and clock.largest_step_back_s == pytest.approx(30.0)
    halfway = stamps[15_000] - (before + 0.1 * 15_000 - 30.0)
    assert halfway == pytest.approx(15.0, abs=0.01)  # 1,500 s in: half of it absorbed


def test_wall_stamps_are_carried_onto_the_clock_while_a_step_is_absorbed() -> None:
    host = Host()
    clock = _clock(host)
    clock.now()
    host.run(1.0)
    last = clock.now()
    host.wall -= 10.0
    host.run(0.2)
    stamps = np.array([host.wall - 0.1, host.wall])  # BrainFlow's, on the stepped wall clock
    carried = clock.from_wall(stamps)
    assert carried[0] > last  # after everything stamped before the step
    assert carried[1] - carried[0] == pytest.approx(0.1)


def test_the_floor_after_a_restart_keeps_new_samples_after_stored_ones() -> None:
    host = Host()
    clock = _clock(host)
    newest_stored = host.wall + 20.0  # stored before a step back and a crash
    clock.hold_at_least(newest_stored)
    host.run(0.5)
    t = clock.now()
    assert t > newest_stored
    assert t - newest_stored == pytest.approx(0.5 * 0.99)
    clock.hold_at_least(host.wall - 100.0)  # a floor behind the clock changes nothing
    assert clock.now() >= t
    clock.hold_at_least(float("nan"))
    assert clock.now() >= t


def test_readings_from_many_threads_never_go_backward() -> None:
    clock = TwinClock()
    seen: list[list[float]] = [[] for _ in range(4)]

    def read(out: list[float]) -> None:
        for _ in range(5_000):
            out.append(clock.now())

    threads = [threading.Thread(target=read, args=(out,)) for out in seen]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for out in seen:
        assert all(b >= a for a, b in itertools.pairwise(out))


@pytest.mark.parametrize("slew", [0.0, 1.0, -0.1])
def test_a_slew_outside_zero_to_one_is_refused(slew: float) -> None:
    with pytest.raises(ValueError, match="slew"):
        TwinClock(slew=slew)


def test_its_own_forward_jumps_add_up_and_a_step_back_adds_nothing() -> None:
    # the serial bridges move their host-vs-device line by exactly this
    host = Host()
    clock = _clock(host)
    clock.now()
    host.run(1.0)
    assert clock.jumped_forward_s() == 0.0
    host.wall += 30.0
    host.run(0.5)
    assert clock.jumped_forward_s() == pytest.approx(30.0)
    host.wall -= 20.0  # absorbed by slewing: the clock itself does not jump
    host.run(0.5)
    assert clock.jumped_forward_s() == pytest.approx(30.0)
    assert clock.offset() == pytest.approx(20.0 - 0.005)
    host.wall += 50.0  # 20 s of it only closes the gap being absorbed
    host.run(0.5)
    assert clock.now() == host.wall
    assert clock.jumped_forward_s() == pytest.approx(30.0 + 50.0 - (20.0 - 0.005))
