"""The physiology simulator: determinism, distinct people, physiology that responds, pacing."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.signal import welch

from edgetwin.errors import UsageError
from edgetwin.features import fnirs as fn
from edgetwin.sources.sim.schedule import Schedule, States
from edgetwin.sources.simulator import (
    DEFAULT_MODALITIES,
    SimulatedPerson,
    SimulatorSource,
    history,
    simulate,
)
from edgetwin.types import SampleBatch

T0 = 1_700_000_000.0  # 2023-11-14 22:13 UTC


def _collect(batches: object) -> dict[str, tuple[np.ndarray, np.ndarray, SampleBatch]]:
    """Concatenate batches per stream: {stream: (t, values, last batch)}."""
    parts: dict[str, list[SampleBatch]] = {}
    for b in batches:  # type: ignore[attr-defined]
        parts.setdefault(b.stream, []).append(b)
    return {
        k: (np.concatenate([b.t for b in v]), np.concatenate([b.values for b in v]), v[-1])
        for k, v in parts.items()
    }


def _span(
    person: SimulatedPerson, cond: Callable[[States], np.ndarray], min_s: float, days: float = 2.0
) -> tuple[float, float]:
    """The first stretch of at least ``min_s`` seconds where ``cond`` holds."""
    t = T0 + np.arange(0.0, days * 86400.0, 5.0)
    ok = cond(Schedule(person).states(t)).astype(np.int8)
    edges = np.diff(np.concatenate([[0], ok, [0]]))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if (b - a) * 5.0 >= min_s:
            return float(t[a]), float(t[b - 1])
    raise AssertionError("no such stretch in the schedule")


def _quiet(s: States) -> np.ndarray:
    return (s.activity < 0.01) & (s.stress < 0.01) & (s.sleep < 0.01) & (s.rest < 0.01)


def _quiet_near(person: SimulatedPerson, t: float, min_s: float = 300.0) -> tuple[float, float]:
    """A quiet awake stretch as close as possible to ``t`` (same circadian phase, nearly)."""
    grid = np.arange(t - 3 * 3600.0, t + 3 * 3600.0, 5.0)
    ok = _quiet(Schedule(person).states(grid)).astype(np.int8)
    edges = np.diff(np.concatenate([[0], ok, [0]]))
    best: tuple[float, float] | None = None
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if (b - a) * 5.0 >= min_s:
            start = float(grid[a])
            if best is None or abs(start - t) < abs(best[0] - t):
                best = (start, start + min_s)
    assert best is not None
    return best


def _rr(person: SimulatedPerson, start: float, seconds: float) -> np.ndarray:
    got = _collect(simulate(person, start, seconds, 10.0, ["rr"], dropouts=False))
    return got["sim.rr"][1][:, 0]


def _rmssd(rr: np.ndarray) -> float:
    d = np.diff(rr)
    d = d[np.abs(d) < 0.2 * rr[1:]]  # drop the rare premature beats
    return float(np.sqrt(np.mean(d * d)))


def _vitals(person: SimulatedPerson, start: float, seconds: float) -> np.ndarray:
    got = _collect(simulate(person, start, seconds, 10.0, ["vitals"], dropouts=False))
    return got["sim.vitals"][1]


def _band(x: np.ndarray, fs: float, lo: float, hi: float) -> float:
    f, p = welch(x, fs, nperseg=int(4 * fs))
    total = p[(f >= 1) & (f < 45)].sum()
    return float(p[(f >= lo) & (f < hi)].sum() / total)


# -- determinism and people ---------------------------------------------------------


def test_same_seed_same_batches_and_streams_follow_the_contract() -> None:
    person = SimulatedPerson.from_seed(7)
    mods = (*DEFAULT_MODALITIES, "ppg")
    a = list(simulate(person, T0, 20.0, 1.0, mods))
    b = list(simulate(SimulatedPerson.from_seed(7), T0, 20.0, 1.0, mods))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.stream == y.stream
        assert x.channels == y.channels
        np.testing.assert_array_equal(x.t, y.t)
        np.testing.assert_array_equal(x.values, y.values)
    got = _collect(a)
    assert set(got) == {f"sim.{m}" for m in mods}
    assert got["sim.rr"][2].channels == ("rr",)
    assert got["sim.vitals"][2].channels == ("hr", "spo2", "temp", "eda")
    assert got["sim.accel"][2].channels == ("accel_x", "accel_y", "accel_z")
    assert got["sim.eeg"][2].channels == ("eeg_af7", "eeg_af8", "eeg_tp9", "eeg_tp10")
    fb = got["sim.fnirs"][2]
    assert fb.channels[:2] == ("fnirs_s1_d1_760", "fnirs_s1_d1_850")
    assert fb.meta["wavelengths_nm"] == [760, 850]
    assert set(fb.meta["distance_cm"]) == set(fb.channels)
    assert got["sim.accel"][2].units == ("g", "g", "g")
    # Rates: 20 s of each stream.
    for stream, fs in (("vitals", 4), ("accel", 32), ("eeg", 256), ("fnirs", 10), ("ppg", 64)):
        t = got[f"sim.{stream}"][0]
        assert t.size == 20 * fs
        assert np.all(np.diff(t) > 0)
        assert t[0] >= T0 and t[-1] < T0 + 20.0


def test_people_differ_and_baselines_are_physiological() -> None:
    people = [SimulatedPerson.from_seed(s) for s in range(40)]
    assert len({p.resting_hr for p in people}) == 40
    for p in people:
        assert 50 <= p.resting_hr <= 80
        assert 20 <= p.rmssd_ms <= 80
        assert 8 <= p.alpha_hz <= 12
        assert 1 <= p.eda_us <= 10
    a = _vitals(people[0], T0, 60.0)
    b = _vitals(people[1], T0, 60.0)
    assert not np.allclose(a, b)


def test_history_ends_at_end_t_and_covers_the_hours() -> None:
    person = SimulatedPerson.from_seed(3)
    got = _collect(history(person, 0.5, end_t=T0, dropouts=False))
    t = got["sim.vitals"][0]
    assert t[0] == pytest.approx(T0 - 1800.0)
    assert T0 - 1.0 < t[-1] < T0
    assert set(got) == {"sim.rr", "sim.vitals", "sim.accel"}


# -- physiology ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_resting_hr_and_rmssd_are_the_persons_and_physiological(seed: int) -> None:
    person = SimulatedPerson.from_seed(seed)
    start, _ = _span(person, _quiet, 300.0)
    rr = _rr(person, start, 300.0)
    hr = 60000.0 / rr.mean()
    assert 40 < hr < 100
    assert abs(hr - person.resting_hr) <= person.hr_circadian_amp + 4
    rmssd = _rmssd(rr)
    assert 0.6 * person.rmssd_ms < rmssd < 1.5 * person.rmssd_ms
    # Respiratory sinus arrhythmia: the RR spectrum peaks at the breathing rate.
    t = np.cumsum(rr) / 1000.0
    grid = np.arange(t[0], t[-1], 0.25)
    f, p = welch(np.interp(grid, t, rr) - rr.mean(), 4.0, nperseg=512)
    hf = (f > 0.15) & (f < 0.5)
    assert abs(f[hf][np.argmax(p[hf])] - person.resp_hz) < 0.05


def test_activity_raises_hr_and_motion() -> None:
    person = SimulatedPerson.from_seed(4)
    a0, _ = _span(person, lambda s: (s.activity > 0.6) & (s.stress < 0.01), 180.0)
    q0, _ = _quiet_near(person, a0)
    act = _collect(simulate(person, a0, 120.0, 10.0, ["rr", "accel"], dropouts=False))
    quiet = _collect(simulate(person, q0, 120.0, 10.0, ["rr", "accel"], dropouts=False))
    hr_act = 60000.0 / act["sim.rr"][1].mean()
    hr_quiet = 60000.0 / quiet["sim.rr"][1].mean()
    assert hr_act > hr_quiet + 10
    mag = lambda xyz: np.std(np.linalg.norm(xyz, axis=1))  # noqa: E731
    assert mag(act["sim.accel"][1]) > 5 * mag(quiet["sim.accel"][1])


def test_stress_raises_hr_and_eda_and_lowers_rmssd() -> None:
    person = SimulatedPerson.from_seed(5)
    s0, _ = _span(person, lambda s: (s.stress > 0.8) & (s.activity < 0.01), 180.0)
    q0, _ = _quiet_near(person, s0)
    rr_s, rr_q = _rr(person, s0, 180.0), _rr(person, q0, 180.0)
    assert 60000.0 / rr_s.mean() > 60000.0 / rr_q.mean() + 2
    assert _rmssd(rr_s) < 0.85 * _rmssd(rr_q)
    eda_s = _vitals(person, s0, 180.0)[:, 3].mean()
    eda_q = _vitals(person, q0, 180.0)[:, 3].mean()
    assert eda_s > 1.1 * eda_q


def test_sleep_lowers_hr_and_raises_delta() -> None:
    person = SimulatedPerson.from_seed(6)
    n0, _ = _span(person, lambda s: (s.sleep > 0.99) & (s.depth > 0.6), 120.0)
    q0, _ = _span(person, _quiet, 120.0)
    assert 60000.0 / _rr(person, n0, 120.0).mean() < 60000.0 / _rr(person, q0, 120.0).mean() - 3
    eeg_n = _collect(simulate(person, n0, 60.0, 10.0, ["eeg"], dropouts=False))["sim.eeg"][1]
    eeg_q = _collect(simulate(person, q0, 60.0, 10.0, ["eeg"], dropouts=False))["sim.eeg"][1]
    for ch in range(4):
        assert _band(eeg_n[:, ch], 256.0, 1, 4) > 1.5 * _band(eeg_q[:, ch], 256.0, 1, 4)


def test_eeg_has_an_alpha_peak_that_grows_with_eyes_closed_rest() -> None:
    person = SimulatedPerson.from_seed(8)
    q0, _ = _span(person, _quiet, 60.0)
    r0, _ = _span(person, lambda s: (s.rest > 0.9) & (s.stress < 0.01) & (s.activity < 0.01), 60.0)
    eeg_q = _collect(simulate(person, q0, 60.0, 10.0, ["eeg"], dropouts=False))["sim.eeg"][1]
    eeg_r = _collect(simulate(person, r0, 60.0, 10.0, ["eeg"], dropouts=False))["sim.eeg"][1]
    tp9 = eeg_q[:, 2]
    f, p = welch(tp9, 256.0, nperseg=1024)
    # The alpha peak stands above the aperiodic 1/f line fitted outside 6-15 Hz.
    fit = ((f >= 2) & (f < 6)) | ((f > 15) & (f < 40))
    slope, icpt = np.polyfit(np.log(f[fit]), np.log(p[fit]), 1)
    band = (f >= 6) & (f <= 15)
    peak = f[band][np.argmax(p[band] / np.exp(icpt + slope * np.log(f[band])))]
    assert abs(peak - person.alpha_hz) <= 1.0
    excess = p[f == peak][0] / math.exp(icpt + slope * math.log(peak))
    assert excess > 3.0
    assert _band(eeg_r[:, 2], 256.0, 8, 13) > 1.3 * _band(tp9, 256.0, 8, 13)


def test_fnirs_hbo_rises_and_hbr_falls_after_a_task_onset() -> None:
    person = SimulatedPerson.from_seed(9)
    sched = Schedule(person)
    t = T0 + np.arange(0.0, 86400.0, 1.0)
    s = sched.states(t)
    onsets = np.flatnonzero((s.task[1:] >= 0.5) & (s.task[:-1] < 0.5)) + 1
    chosen = None
    for i in onsets:
        lo, hi = i - 30, i + 25
        calm = (s.stress[lo:hi] < 0.01).all() and (s.activity[lo:hi] < 0.01).all()
        if lo > 0 and calm and (s.task[lo : i - 1] < 0.01).all() and s.task[i : i + 15].min() > 0.9:
            chosen = float(t[i])
            break
    assert chosen is not None
    got = _collect(simulate(person, chosen - 20.0, 40.0, 5.0, ["fnirs"], dropouts=False))
    tt, x, last = got["sim.fnirs"]
    rel = tt - chosen
    base = (rel >= -10) & (rel < 0)
    late = (rel >= 6) & (rel < 14)
    dist = last.meta["distance_cm"]
    rises = []
    for pair in ("s1_d1", "s1_d2", "s2_d1"):  # the long channels
        cols = [last.channels.index(f"fnirs_{pair}_{nm}") for nm in (760, 850)]
        od = fn.optical_density(x[:, cols], x[base][:, cols].mean(axis=0)).T
        dpf = tuple(fn.scholkmann_dpf(nm, person.age_years) for nm in (760, 850))
        hbo, hbr = fn.mbll(od, (760.0, 850.0), dist[f"fnirs_{pair}_760"], dpf)
        rises.append((hbo[late].mean() - hbo[base].mean(), hbr[late].mean() - hbr[base].mean()))
    d_hbo = np.mean([r[0] for r in rises])
    d_hbr = np.mean([r[1] for r in rises])
    assert d_hbo > 0.3 * person.hbo_gain_um  # µM
    assert d_hbr < 0
    assert abs(d_hbr) < d_hbo


# -- dropouts -------------------------------------------------------------------------


def test_dropouts_leave_gaps_and_nan_rows_and_can_be_switched_off() -> None:
    person = SimulatedPerson.from_seed(12)
    sched = Schedule(person)
    t = T0 + np.arange(0.0, 12 * 3600.0, 0.25)
    hit_vitals = sched.dropout_mask("vitals", t)
    hit_eeg = sched.dropout_mask("eeg", t)
    assert hit_vitals.any() and hit_eeg.any()
    # Vitals: rows missing across the dropout.
    i = int(np.flatnonzero(hit_vitals)[0])
    length = int(np.argmin(hit_vitals[i:])) * 0.25  # the dropout's duration
    start = float(t[i]) - 20.0
    got = _collect(simulate(person, start, length + 40.0, 1.0, ["vitals"]))
    vt = got["sim.vitals"][0]
    assert np.diff(vt).max() == pytest.approx(length + 0.25)
    assert not np.isnan(got["sim.vitals"][1]).any()
    # EEG: rows kept, values NaN, exactly where the schedule says.
    j = int(np.flatnonzero(hit_eeg)[0])
    start = float(t[j]) - 5.0
    got = _collect(simulate(person, start, 20.0, 1.0, ["eeg"]))
    et, ev, _ = got["sim.eeg"]
    assert et.size == 20 * 256
    nan_rows = np.isnan(ev).all(axis=1)
    assert nan_rows.any()
    np.testing.assert_array_equal(nan_rows, sched.dropout_mask("eeg", et))
    clean = _collect(simulate(person, start, 20.0, 1.0, ["eeg"], dropouts=False))
    assert not np.isnan(clean["sim.eeg"][1]).any()


# -- the Source ---------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps (or we say so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


async def test_realtime_source_paces_chunks_by_the_clock() -> None:
    fake = FakeClock()
    src = SimulatorSource(
        "sim",
        3,
        realtime=True,
        speed=2.0,
        start_t=T0,
        modalities=["vitals"],
        duration_s=10.0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    await src.connect()
    seen = []
    async for batch in src.stream():
        # Nothing is released before its simulated time has passed on the (scaled) clock.
        assert (fake.now - 100.0) * 2.0 >= batch.last_t - T0 - 1e-9
        seen.append(batch)
    await src.close()
    assert len(seen) == 10
    assert sum(fake.sleeps) == pytest.approx(5.0)  # 10 simulated s at speed 2
    assert all(s == pytest.approx(0.5) for s in fake.sleeps)
    assert seen[0].first_t == pytest.approx(T0)
    assert src.counters.batches == 10
    assert src.counters.samples == 40
    assert src.counters.last_sample_t == seen[-1].last_t


async def test_a_paired_simulator_hands_over_each_quarter_second() -> None:
    """A paired (live) simulator is a wearable: what it simulated reaches the daemon within
    0.25 s, not at the end of a whole second (which a SIGKILL lost on top of the unflushed
    second: 2.4-2.7 s of RR in the soak)."""
    fake = FakeClock()
    src = SimulatorSource.from_record("sim", {"kind": "simulator", "seed": 3,
                                              "modalities": ["vitals"]})
    src._clock, src._sleep, src._wall = fake.clock, fake.sleep, lambda: T0
    await src.connect()
    released: list[tuple[float, float]] = []  # (clock at release, newest sample's age then)
    async for batch in src.stream():
        released.append((fake.now, T0 + (fake.now - 100.0) - batch.last_t))
        if len(released) == 8:
            break
    await src.close()
    assert all(s == pytest.approx(0.25) for s in fake.sleeps)
    assert released[-1][0] - 100.0 == pytest.approx(2.0)  # 8 readings at 4 Hz in 2 s
    assert max(age for _, age in released) <= 0.25 + 1e-9


async def test_realtime_source_catches_up_without_sleeping_when_behind() -> None:
    fake = FakeClock()
    src = SimulatorSource(
        "sim",
        3,
        start_t=T0,
        modalities=["vitals"],
        duration_s=5.0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    await src.connect()
    fake.now += 100.0  # the consumer stalled for 100 s
    batches = [b async for b in src.stream()]
    assert len(batches) == 5
    assert fake.sleeps == []


async def test_flat_out_source_only_yields_to_the_loop() -> None:
    fake = FakeClock()
    src = SimulatorSource(
        "sim",
        3,
        realtime=False,
        start_t=T0,
        modalities=["rr", "vitals"],
        duration_s=30.0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    await src.connect()
    batches = [b async for b in src.stream()]
    assert fake.sleeps and set(fake.sleeps) == {0}
    assert {b.stream for b in batches} == {"sim.rr", "sim.vitals"}
    assert src.describe() == {
        "seed": 3,
        "modalities": ["rr", "vitals"],
        "realtime": False,
        "speed": 1.0,
    }


async def test_real_asyncio_sleep_is_the_default_pacer() -> None:
    src = SimulatorSource("sim", 1, speed=50.0, modalities=["vitals"], chunk_s=0.5, duration_s=1.0)
    await src.connect()
    batches = [b async for b in src.stream()]
    await src.close()
    await src.close()  # idempotent
    assert len(batches) == 2
    assert src.kind == "simulator"


def test_from_record_builds_and_rejects_bad_records() -> None:
    src = SimulatorSource.from_record(
        "wrist", {"kind": "simulator", "seed": 7, "modalities": ["rr", "eeg"], "speed": 2.0}
    )
    assert (src.name, src.seed, src.modalities, src.speed) == ("wrist", 7, ("rr", "eeg"), 2.0)
    assert src.person == SimulatedPerson.from_seed(7)
    with pytest.raises(UsageError, match=r"unknown setting.*sede"):
        SimulatorSource.from_record("w", {"kind": "simulator", "sede": 7})
    with pytest.raises(UsageError, match="unknown modality 'ekg'"):
        SimulatorSource.from_record("w", {"seed": 7, "modalities": ["ekg"]})
    with pytest.raises(UsageError, match="seed"):
        SimulatorSource.from_record("w", {"seed": "seven"})
    with pytest.raises(UsageError, match="speed"):
        SimulatorSource("w", 1, speed=0.0)


def test_an_hour_in_minute_chunks_keeps_every_sample() -> None:
    """Long chunks (the fast training path) lose nothing but the dropouts."""
    person = SimulatedPerson.from_seed(2)
    got = _collect(simulate(person, T0, 3600.0, 60.0, ["rr", "vitals"], dropouts=False))
    assert got["sim.vitals"][0].size == 3600 * 4
    assert 3600 * 40 / 60 < got["sim.rr"][0].size < 3600 * 200 / 60


async def test_reconnect_resumes_the_timeline_and_dropouts_count_as_gaps() -> None:
    person = SimulatedPerson.from_seed(12)
    t = T0 + np.arange(0.0, 12 * 3600.0, 0.25)
    first = float(t[np.flatnonzero(Schedule(person).dropout_mask("vitals", t))[0]])
    fake = FakeClock()
    src = SimulatorSource(
        "sim",
        12,
        realtime=False,
        start_t=first - 10.0,
        modalities=["vitals"],
        duration_s=30.0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    await src.connect()
    head = []
    async for b in src.stream():
        head.append(b)
        if len(head) == 3:
            break
    await src.close()
    await src.connect()  # the supervisor reconnects after a failure
    tail = [b async for b in src.stream()]
    ts = np.concatenate([b.t for b in head + tail])
    assert np.all(np.diff(ts) > 0)  # no sample twice, nothing rewound
    assert ts[0] == pytest.approx(first - 10.0)
    assert ts[-1] < first + 20.0
    assert src.counters.gaps == 1


@pytest.mark.parametrize("hours", [0.0, 9.0])  # asleep-ish and awake: other heart rates
def test_the_first_beat_carries_its_rr_interval_from_a_beat_before_the_start(hours: float) -> None:
    """The heart did not start with the simulation: its first beat comes with an interval
    whose beat lies before the start, as a strap that connects (or a restarted daemon) gets
    RR with the first beat it hears. Without it a restart lost a whole beat more of RR."""
    t0 = T0 + hours * 3600.0
    person = SimulatedPerson.from_seed(3)
    rr = [b for b in simulate(person, t0, 30.0, chunk_s=0.25, modalities=("rr",))
          if b.stream.endswith(".rr")]
    t = np.concatenate([b.t for b in rr])
    ms = np.concatenate([b.values[:, 0] for b in rr])
    assert t[0] - ms[0] / 1000.0 < t0 <= t[0]  # its beat before the start
    assert 0.7 < ms[0] / np.median(ms) < 1.3  # and the rhythm's interval, not a made-up one
