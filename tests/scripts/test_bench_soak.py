"""The soak benchmark's accounting: gaps in stored sample times, their faults, growth fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.scripts import load_script


def _soak() -> Any:
    return load_script("bench_soak")


def test_gaps_are_counted_in_seconds_of_data() -> None:
    soak = _soak()
    t = np.arange(0.0, 100.0, 0.004)  # 250 Hz
    keep = (t < 40.0) | (t >= 41.5)  # 1.5 s missing
    nominal, gaps = soak.find_gaps(t[keep])
    assert nominal == pytest.approx(0.004)
    assert len(gaps) == 1
    start, end, lost = gaps[0]
    assert start == pytest.approx(39.996)
    assert end == pytest.approx(41.5)
    assert lost == pytest.approx(1.5, abs=1e-6)
    # jitter and short hiccups below 0.5 s are not gaps
    assert soak.find_gaps(np.concatenate([t[t < 10.0], t[t >= 10.3]]))[1] == []


def test_gaps_are_attributed_to_the_fault_of_their_stream() -> None:
    soak = _soak()
    faults = [{"name": "serial_unplug", "at": 100.0, "until": 110.0, "streams": ["bridge"]},
              {"name": "sigkill_restart", "at": 200.0, "until": 203.0, "streams": []}]
    gaps = [(100.1, 112.0, 11.9), (199.5, 201.0, 1.5), (500.0, 502.0, 2.0)]
    lost, unexplained = soak.attribute(gaps, faults, "bridge.fnirs")
    assert lost == {"serial_unplug": 11.9, "sigkill_restart": 1.5}
    assert unexplained == [(500.0, 502.0, 2.0)]
    lost, unexplained = soak.attribute(gaps[:1], faults, "headset.default")
    assert lost == {}
    assert unexplained == gaps[:1]  # the unplug does not explain a gap in another stream
    # a gap within a minute after two faults belongs to the later one
    faults[1]["at"] = 105.0
    lost, _ = soak.attribute([(106.0, 108.0, 2.0)], faults, "bridge.fnirs")
    assert lost == {"sigkill_restart": 2.0}


def test_a_fault_that_must_lose_nothing_is_not_excused_by_an_earlier_one() -> None:
    # the 12-minute soak with the old hub bound: the disk stalled at 446 s, within a minute of
    # the disk-full fault's end (420 s), and its 28 s of loss counted as the full disk's
    soak = _soak()
    faults = [{"name": "disk_nearly_full", "at": 360.0, "until": 420.0, "streams": []},
              {"name": "disk_stall", "at": 446.0, "until": 482.0, "streams": ["-"]},
              {"name": "ble_link_drop", "at": 460.0, "streams": ["strap0"]}]
    stalled = [(455.0, 483.0, 28.0)]
    lost, unexplained = soak.attribute(stalled, faults, "headset.default")
    assert lost == {} and unexplained == stalled
    # a later fault of the stream still explains its own gap inside the stall's window
    lost, unexplained = soak.attribute([(460.5, 461.0, 0.5)], faults, "strap0.hr")
    assert lost == {"ble_link_drop": 0.5} and unexplained == []
    # and the full disk still explains what is lost while it is full
    lost, _ = soak.attribute([(400.0, 401.0, 1.0)], faults, "headset.default")
    assert lost == {"disk_nearly_full": 1.0}


def test_the_step_across_a_kill_is_measured_on_slow_streams_too() -> None:
    """A 1 Hz strap's 2.8 s step across a kill is under find_gaps' three intervals, yet
    1.8 s of its data were lost; a battery read every few minutes cannot tell."""
    soak = _soak()
    strap = np.concatenate([np.arange(0.0, 100.5, 1.0), np.arange(102.8, 200.0, 1.0)])
    nominal, gaps = soak.find_gaps(strap)
    assert gaps == []  # invisible to the gap finder
    across = soak.kill_gap(strap, nominal, 100.6)
    assert across == {"before_kill_s": 0.6, "downtime_s": 2.2, "lost_s": 1.8}
    assert soak.kill_gap(np.arange(0.0, 2000.0, 540.0), 540.0, 600.0) is None
    assert soak.kill_gap(strap, nominal, 500.0) is None  # nothing after it


def test_growth_fit_projects_a_day_and_a_month() -> None:
    soak = _soak()
    t = [i * 600.0 for i in range(7)]  # one hour every 10 min
    y = [100.0 + 2.0 * (s / 3600.0) for s in t]
    fit = soak.growth_per_hour(t, y)
    assert fit["per_hour"] == pytest.approx(2.0)
    assert fit["day"] == pytest.approx(148.0)
    assert fit["month"] == pytest.approx(1540.0)
    assert soak.growth_per_hour([0.0, 1.0], [1.0, 2.0])["per_hour"] is None
    s = soak.summary([3.0, 1.0, None, 2.0])
    assert (s["median"], s["max"], s["n"]) == (2.0, 3.0, 3)


def test_thread_shares_split_the_daemons_own_threads_from_native_ones() -> None:
    soak = _soak()
    rows = [{"t": float(t), "threads_cpu_s": {"MainThread": 0.02 * t, "edgetwin-writer": 0.01 * t,
                                             "(native threads)": 0.03 * t}}
            for t in range(0, 200, 10)]
    rows[5]["threads_cpu_s"] = None  # a status that failed: skipped
    got = soak.thread_shares(rows)
    assert got["threads"] == {"(native threads)": 0.03, "MainThread": 0.02, "edgetwin-writer": 0.01}
    assert got["total"] == pytest.approx(0.06)
    assert got["without_native_threads"] == pytest.approx(0.03)
    assert got["span_s"] == 190.0 - 30.0  # the first three samples are start-up
    # a thread that ended (its CPU gone from the last sample) does not count negative
    rows[-1]["threads_cpu_s"] = {"MainThread": 3.8}
    assert soak.thread_shares(rows)["threads"] == {"MainThread": 0.02}
    assert soak.thread_shares(rows[:4]) == {}


def test_cpu_spikes_name_the_threads_that_spent_them() -> None:
    soak = _soak()
    quiet = {"MainThread": 0.02, "edgetwin-writer": 0.01}

    def lifetime(t0: float, busy_at: float | None) -> list[dict[str, object]]:
        rows, cpu = [], dict.fromkeys(quiet, 0.0)
        for t in range(10, 110, 10):
            for name, share in quiet.items():
                cpu[name] += share * 10
            if t == busy_at:  # a refit: 4 s of CPU on a thread of its own
                cpu["asyncio_0"] = cpu.get("asyncio_0", 0.0) + 4.0
            rows.append({"t": t0 + t, "threads_cpu_s": dict(cpu),
                         "cpu_share": 0.03 + (0.4 if t == busy_at else 0.0)})
        return rows

    spikes = soak.cpu_spikes([lifetime(0.0, 50), lifetime(200.0, None)], top=2)
    assert spikes[0]["t_s"] == 50.0 and spikes[0]["cpu_share"] == 0.43
    assert spikes[0]["threads"] == {"asyncio_0": 0.4, "MainThread": 0.02, "edgetwin-writer": 0.01}
    # the first sample of each lifetime has nothing before it: never a spike of its own
    assert all(s["t_s"] not in (10.0, 210.0) for s in soak.cpu_spikes(
        [lifetime(0.0, 10), lifetime(200.0, None)], top=30))


def test_cpu_spikes_time_the_threads_on_the_daemons_clock() -> None:
    # the soak's own clock for a sample runs ahead by however long the status call took;
    # the daemon's uptime is read with the threads' CPU seconds, in the same document
    soak = _soak()
    rows = [{"t": 0.0, "uptime_s": 100.0, "threads_cpu_s": {"MainThread": 2.0}, "cpu_share": 0.02},
            {"t": 2.0, "uptime_s": 110.0, "threads_cpu_s": {"MainThread": 2.2}, "cpu_share": 0.02}]
    (spike,) = soak.cpu_spikes([rows])
    assert spike["threads"] == {"MainThread": 0.02}  # 0.2 s in 10 s, not in 2 s


def test_growth_between_faults_leaves_out_the_steps_faults_leave_behind() -> None:
    soak = _soak()
    # flat at 100 MiB, +8 MiB kept after a fault at 1,000 s, then a restart at 3,000 s that
    # starts 20 MiB lower; every stretch flat: the plain line sees growth, this fit none
    samples = []
    for t in range(0, 4000, 10):
        y = 100.0 + (8.0 if t > 1060 else 0.0) - (20.0 if t >= 3000 else 0.0)
        y = 140.0 if 1000 <= t <= 1060 else y  # the buffer while the disk is full
        samples.append({"t": float(t), "rss_mib": y, "lifetime": int(t >= 3000)})
    faults = [{"name": "disk_nearly_full", "at": 1000.0, "until": 1060.0},
              {"name": "sigkill_restart", "at": 3000.0, "until": 3002.0}]
    got = soak.growth_between_faults(samples, faults)
    assert got["per_hour"] == pytest.approx(0.0, abs=1e-9)
    assert got["stretches"] == 3
    assert got["step_after_fault"]["disk_nearly_full"] == pytest.approx(8.0)
    assert soak.growth_per_hour([s["t"] for s in samples[3:300]],
                                [s["rss_mib"] for s in samples[3:300]])["per_hour"] > 5.0
    # a real slope is kept: 3 MiB/h in every stretch
    for s in samples:
        s["rss_mib"] += 3.0 * s["t"] / 3600.0
    assert soak.growth_between_faults(samples, faults)["per_hour"] == pytest.approx(3.0)
    # start-up samples of each lifetime are left out; too few samples: no figure
    assert soak.growth_between_faults(samples[:4], [])["per_hour"] is None


def test_a_lifetimes_warm_up_is_not_fitted_as_growth() -> None:
    """RSS that rises 4 MiB over a lifetime's first 10 minutes and is flat after is not
    ~3 MiB an hour for a month: the settled fit leaves the warm-up out and reports it."""
    soak = _soak()
    samples = []
    for t in range(0, 7200, 10):
        life = int(t >= 5000)
        age = t - (5000 if life else 0)
        samples.append({"t": float(t), "lifetime": life,
                        "rss_mib": 130.0 + 4.0 * min(age, 600) / 600})
    faults = [{"name": "sigkill_restart", "at": 5000.0, "until": 5002.0}]
    assert soak.growth_between_faults(samples, faults)["per_hour"] > 1.0
    settled = soak.growth_between_faults(samples, faults, warm_up_s=600.0)
    assert settled["per_hour"] == pytest.approx(0.0, abs=1e-9)
    lifetimes = [[s for s in samples if s["lifetime"] == k] for k in (0, 1)]
    # its first minute past start-up (30-90 s) vs the minute after 600 s
    assert soak.warm_up_rise(lifetimes, 600.0) == [pytest.approx(3.63, abs=0.01)] * 2
    # growth that goes on after the warm-up is still found
    for s in samples:
        s["rss_mib"] += 2.0 * s["t"] / 3600.0
    assert soak.growth_between_faults(samples, faults, warm_up_s=600.0)["per_hour"] == (
        pytest.approx(2.0))


def test_the_simulated_persons_own_dropouts_are_not_counted_as_lost() -> None:
    """The 2-hour soak's 98.5 s vitals gap was the simulator's scheduled sensor dropout: the
    real simulator, run over the same two hours, leaves that gap, and the soak explains it."""
    from edgetwin.sources.simulator import SimulatedPerson, simulate

    soak = _soak()
    start = 1_796_392_540.0  # 2026-12-04 13:55:40 UTC, that soak's start
    batches = simulate(SimulatedPerson.from_seed(soak.SIMULATOR_SEED), start, 7300.0, 60.0,
                       ("rr", "vitals"), name="simulator")
    t = np.concatenate([b.t for b in batches if b.stream == "simulator.vitals"])
    _, gaps = soak.find_gaps(t)
    assert any(g[2] > 90.0 for g in gaps)  # the dropout is really in the stream
    _, unexplained = soak.attribute(gaps, [], "simulator.vitals")
    assert unexplained  # without the schedule: unexplained
    dropouts = soak.simulated_dropouts("simulator.vitals", float(t[0]), float(t[-1]))
    assert [d["name"] for d in dropouts] == ["simulated_dropout"]
    assert dropouts[0]["until"] - dropouts[0]["at"] == pytest.approx(98.8, abs=1.0)
    lost, unexplained = soak.attribute(gaps, dropouts, "simulator.vitals")
    assert unexplained == [] and lost["simulated_dropout"] > 90.0
    assert soak.simulated_dropouts("headset.default", float(t[0]), float(t[-1])) == []


def test_seeded_history_ends_at_the_start_and_spans_the_hours_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EDGETWIN_SOAK_HISTORY_H: the twin holds that many hours of frames and forecasts of
    the five targets, ending just before the daemon starts, so its refit works on them."""
    import time

    from edgetwin.store import Secret, TwinStore

    soak = _soak()
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    home = tmp_path / "home"
    TwinStore.create(home, Secret.passphrase(soak.PASS)).close()
    before = time.time()
    soak._seed_history(home, 0.5)
    with TwinStore.open(home, Secret.passphrase(soak.PASS)) as store:
        preds = list(store.iter_predictions(explained=False))
        frames = list(store.read_frames())
    assert {p.target for p in preds} == {"hr", "rmssd", "spo2", "skin_temp", "eda_tonic"}
    newest = max(p.t for p in preds)
    assert before - 120 < newest < before
    assert frames[-1].t - frames[0].t == pytest.approx(0.5 * 3600 - 5.0)


def test_the_kill_is_restarted_after_the_shipped_units_delay(tmp_path: Path) -> None:
    """The SIGKILL fault measures what the service loses: it restarts after the unit's
    RestartSec, not at once."""
    soak = _soak()
    assert soak.unit_restart_s() == pytest.approx(0.1)  # scripts/edgetwin.service
    unit = tmp_path / "x.service"
    for text, want in (("RestartSec=5\n", 5.0), ("RestartSec=250ms\n", 0.25),
                       ("RestartSec=2s\n", 2.0), ("[Service]\nRestart=always\n", 0.1)):
        unit.write_text(text)
        assert soak.unit_restart_s(unit) == pytest.approx(want)


def test_the_refits_children_are_read_from_the_daemons_log() -> None:
    soak = _soak()
    log = ("2026-12-05 13:00:00,000 INFO edgetwin.daemon.app: personal model refitted in child "
           "4242: 2.4 s of CPU, peak 70 MiB\n"
           "2026-12-05 13:30:00,000 WARNING x: something else\n"
           "2026-12-05 14:00:00,000 INFO edgetwin.daemon.app: personal model refitted in child "
           "4301: 3.1 s of CPU, peak 66 MiB\n")
    assert soak.refit_children(log) == {"count": 2, "cpu_s_max": 3.1, "peak_rss_mib_max": 70.0}
    assert soak.refit_children("")["count"] == 0


def test_soak_unwinds_on_sigint_even_when_started_with_it_ignored() -> None:
    # a shell starts a background job (`scripts/bench_soak.py &`) with SIGINT ignored, and
    # Python keeps it so: the soak must still unwind (its finally blocks stop the daemon and
    # unmount the small disk) on a Ctrl-C or `kill -INT`
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal, sys, time\n"
        "from tests.scripts import load_script\n"
        "soak = load_script('bench_soak')\n"
        "assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN\n"
        "soak.unwind_on_signals()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(10)\n"
        "finally:\n"
        "    print('unwound', flush=True)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        check=False,
    )
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stdout.strip() == "unwound"


def test_a_fault_that_keeps_a_descriptor_is_named_and_one_that_gives_it_back_is_not() -> None:
    soak = _soak()
    faults = [{"name": "ble_link_drop", "at": 600.0},
              {"name": "serial_unplug", "at": 1200.0, "until": 1210.0}]
    samples = []
    for t in np.arange(0.0, 1800.0, 10.0):
        # the BLE drop's recovery keeps 3 descriptors and a task; the unplug's gives all back
        fds = 40 + (3 if t > 650.0 else 0) + (5 if 1195.0 < t < 1300.0 else 0)
        samples.append({"t": float(t), "lifetime": 0, "open_fds": fds, "threads": 12,
                        "asyncio_tasks": 30 + (1 if t > 650.0 else 0)})
    got = soak.handles_given_back(samples, faults)
    assert got["open_fds"]["kept_by"] == {"ble_link_drop": 3.0}
    assert got["open_fds"]["step_after_fault"]["serial_unplug"] == 0.0
    assert got["open_fds"]["max"] == 48
    assert got["threads"]["kept_by"] == {}
    # one task is within the slack (a periodic job's may be alive at any sample)
    assert got["asyncio_tasks"]["kept_by"] == {}
    assert soak.handles_given_back([{"t": 0.0, "lifetime": 0}], faults) == {}


def test_a_descriptor_kept_at_every_reconnect_shows_as_a_trend_over_churned_faults() -> None:
    soak = _soak()
    schedule = soak.churn_schedule(600.0)
    assert [name for _, name in schedule[:3]] == ["ble_link_drop", "serial_unplug",
                                                  "ble_link_drop"]
    assert len(schedule) == 18 and all(0.0 < at < 1.0 for at, _ in schedule)
    faults = [{"name": name, "at": at * 600.0} for at, name in schedule]
    samples = []
    for t in np.arange(0.0, 600.0, 5.0):
        done = sum(f["at"] + 2.0 < t for f in faults)
        samples.append({"t": float(t), "lifetime": 0, "open_fds": 40 + done,  # one per fault
                        "threads": 12, "asyncio_tasks": 30 + (t % 30.0 < 5.0)})  # jitter
    got = soak.handles_given_back(samples, faults)
    assert got["open_fds"]["before_each_fault"][:3] == [40, 41, 42]
    assert got["open_fds"]["trend_per_fault"] == pytest.approx(1.0)
    assert got["open_fds"]["kept_by"] == {"trend": pytest.approx(17.0)}
    assert got["threads"]["kept_by"] == {} and got["asyncio_tasks"]["kept_by"] == {}


def test_memory_flat_is_not_judged_on_a_few_minutes_between_faults() -> None:
    soak = _soak()
    # the 30-minute soak's settled fit: +13 MiB/h over 0.08 h of stretches is noise
    assert soak.judge_flat({"per_hour": 13.0, "hours": 0.08}, 130.0, 1800.0) is None
    assert soak.judge_flat({"per_hour": None, "stretches": 0}, 130.0, 180.0) is None
    assert soak.judge_flat({"per_hour": -0.52, "hours": 1.2}, 133.8, 7200.0) is True
    assert soak.judge_flat({"per_hour": 4.0, "hours": 1.2}, 133.8, 7200.0) is False
