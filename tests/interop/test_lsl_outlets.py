"""The daemon's LSL outlets, received by a real pylsl inlet in this process (loopback).

LSL on loopback: every test process (and the daemons it starts) reads an
``lsl_api.cfg`` through ``LSLAPICFG`` with ``ResolveScope = machine``,
``KnownPeers = {127.0.0.1}`` and a ``SessionID`` of its own, so resolution works
on a host whose only interface is loopback and streams of other processes on
the machine (another test run, a benchmark) are invisible.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.features.schema import LOCATION, NAMES
from edgetwin.store import Secret, TwinStore

EXE = [sys.executable, "-m", "edgetwin"]
PASS = "lsl outlet passphrase"


def lsl_config() -> str:
    """The loopback-only, per-session liblsl config (set before pylsl is first used)."""
    path = Path(tempfile.gettempdir()) / f"edgetwin-lsl-test-{os.getpid()}.cfg"
    if not path.exists():
        path.write_text(
            "[ports]\nIPv6 = disable\n"
            "[multicast]\nResolveScope = machine\n"
            f"[lab]\nKnownPeers = {{127.0.0.1}}\nSessionID = edgetwin-test-{os.getpid()}\n"
            "[log]\nlevel = -2\n"
        )
    return str(path)


os.environ.setdefault("LSLAPICFG", lsl_config())
pylsl = pytest.importorskip("pylsl")  # a runtime dependency: installed with edgetwin


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    return {
        **os.environ,
        "EDGETWIN_HOME": str(tmp_path / "home"),
        "EDGETWIN_PASSPHRASE_FILE": str(pw),
        "EDGETWIN_KDF_PROFILE": "test",
    }


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"edgetwin {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def daemon(env: dict[str, str], prefix: str) -> Iterator[subprocess.Popen[str]]:
    cli(env, "init")
    cli(env, "pair", "add", "simulator", "--seed", "3")
    home = Path(env["EDGETWIN_HOME"])
    (home / "config.toml").write_text(
        "[daemon]\nflush_interval_s = 0.2\n[inference]\nenabled = false\n"
        f'[lsl]\nenabled = true\nprefix = "{prefix}"\n'
    )
    proc = subprocess.Popen([*EXE, "daemon", "run"], env=env, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def resolve_one(name: str, timeout: float = 30.0) -> object:
    found = pylsl.resolve_byprop("name", name, 1, timeout)
    assert found, f"no LSL stream {name!r} within {timeout} s"
    return found[0]


def drain_until_lost(inlet: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        inlet.pull_chunk(timeout=0.5)  # type: ignore[attr-defined]


def stored(env: dict[str, str], stream: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    with TwinStore.open(Path(env["EDGETWIN_HOME"]), Secret.passphrase(PASS)) as store:
        parts = list(store.read_samples(stream))
    return (np.concatenate([p.t for p in parts]), np.concatenate([p.values for p in parts]),
            parts[0].channels)


def _offset_now() -> float:
    """local_clock() - time.time(): the tightest of 20 bracketed reads."""
    best = (math.inf, 0.0)
    for _ in range(20):
        a = pylsl.local_clock()
        w = time.time()
        b = pylsl.local_clock()
        best = min(best, (b - a, (a + b) / 2 - w))
    return best[1]


def test_the_clock_offset_is_read_between_two_reads_of_lsls_clock() -> None:
    """A preemption between the two clocks' reads no longer lands in the offset: of three
    bracketed reads the tightest is kept."""
    from edgetwin.clock import bracketed_offset

    true_offset = 100.0  # local_clock = wall + 100 s
    walls = iter([1.000, 2.000, 3.000])
    # first bracket: preempted for 4 ms after the wall clock was read; then a tight one
    locals_ = iter([101.000, 101.004, 102.000, 102.00001, 103.0, 103.00001])
    got = bracketed_offset(lambda: next(locals_), lambda: next(walls))
    assert abs(got - true_offset) < 20e-6  # a plain pair of reads: 4 ms off


def test_raw_outlet_carries_labels_rate_and_the_twins_sample_times(
    env: dict[str, str], prefix: str, daemon: subprocess.Popen[str]
) -> None:
    info = resolve_one(f"{prefix}.simulator.eeg")
    # one host, one local_clock: the raw timestamps are what is compared (LSL's own offset
    # estimate would only add its noise; LslSource's clocksync is tested in test_lsl_inlet)
    inlet = pylsl.StreamInlet(info)
    full = inlet.info(10.0)
    assert full.type() == "EEG"
    assert full.channel_count() == 4
    assert full.nominal_srate() == 256.0
    assert full.source_id().startswith(f"{prefix}:")
    labels = full.get_channel_labels()
    assert all(lab.startswith("eeg_") for lab in labels)
    assert set(full.get_channel_units()) == {"microvolts"}
    assert set(full.get_channel_types()) == {"EEG"}
    inlet.open_stream(10.0)
    got_t: list[float] = []
    got_v: list[np.ndarray] = []
    deadline = time.monotonic() + 20
    while len(got_t) < 512 and time.monotonic() < deadline:
        values, stamps = inlet.pull_chunk(timeout=0.5, max_samples=1024, as_numpy=True)
        if len(stamps):
            # the inlet's clock (same host) back to epoch seconds, offset read now (its own
            # bracketed read: two plain reads, preempted between them, were off by 4 ms)
            got_t.extend((np.asarray(stamps) - _offset_now()).tolist())
            got_v.append(np.asarray(values))
    assert len(got_t) >= 512, f"only {len(got_t)} samples arrived"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0

    t_store, v_store, channels = stored(env, "simulator.eeg")
    assert list(channels) == labels
    received = np.concatenate(got_v)
    # every received sample is a stored one (same values, bit for bit) at the same time
    index = {tuple(row): t for row, t in zip(v_store.tolist(), t_store.tolist(), strict=True)}
    missing = [row for row in received.tolist() if tuple(row) not in index]
    assert not missing, (f"{len(missing)} of {len(received)} samples out of the outlet are not "
                         f"in the store ({len(t_store)} stored)")
    errors = np.array([abs(t - index[tuple(row)])
                       for row, t in zip(received.tolist(), got_t, strict=True)])
    assert np.median(errors) < 0.001 and errors.max() < 0.005, (
        f"timestamps differ by median {np.median(errors) * 1e3:.3f} ms, "
        f"max {errors.max() * 1e3:.3f} ms")
    inlet.close_stream()


def test_features_outlet_and_markers_outlet_exist_with_their_metadata(
    env: dict[str, str], prefix: str, daemon: subprocess.Popen[str]
) -> None:
    feats = pylsl.StreamInlet(resolve_one(f"{prefix}.features"))
    info = feats.info(10.0)
    # the current feature schema but place and home_distance (location stays on the device)
    assert info.channel_count() == len(NAMES) - len(LOCATION) == 19
    assert info.nominal_srate() == pytest.approx(0.2)
    labels = info.get_channel_labels()
    assert labels[0] == "hr" and "eeg_alpha" in labels and "co2" in labels
    assert not set(LOCATION) & set(labels)
    assert info.get_channel_units()[0] == "bpm"
    marks = pylsl.StreamInlet(resolve_one(f"{prefix}.markers"))
    minfo = marks.info(10.0)
    assert minfo.type() == "Markers"
    assert minfo.channel_format() == pylsl.cf_string
    assert minfo.nominal_srate() == pylsl.IRREGULAR_RATE
    # a feature frame arrives within a couple of steps, stamped with the frame's time
    feats.open_stream(10.0)
    sample, stamp = feats.pull_sample(timeout=30.0)
    assert sample is not None and len(sample) == len(NAMES) - len(LOCATION)
    frame_t = stamp - _offset_now()
    status = json.loads(cli(env, "status", "--json").stdout)
    names = {o["name"] for o in status["lsl"]["outlets"]}
    assert {f"{prefix}.features", f"{prefix}.markers", f"{prefix}.simulator.eeg"} <= names
    human = cli(env, "status").stdout
    assert re.search(r"^lsl +\d+ outlets \([1-9]\d* with inlets\), \d+ samples pushed", human,
                     re.MULTILINE), human
    assert abs(frame_t - time.time()) < 60
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    with TwinStore.open(Path(env["EDGETWIN_HOME"]), Secret.passphrase(PASS)) as store:
        frames = np.array([f.t for f in store.read_frames()])
    assert np.min(np.abs(frames - frame_t)) < 0.005


def test_forecast_outlet_has_horizon_and_band_per_target(prefix: str) -> None:
    from edgetwin.config import LslConfig
    from edgetwin.interop.lsl_outlets import LslPublisher
    from edgetwin.types import Prediction

    publisher = LslPublisher(LslConfig(enabled=True, prefix=prefix), step_s=5.0)
    t = time.time() - 1.0
    pred = Prediction(t=t, target="hr", step_s=5.0, horizon=(61.0, 62.5, 64.0),
                      band=((58.0, 64.0), (59.0, 66.0), (60.0, 68.0)), attention=(1.0,),
                      imputed=(), model="test")
    try:
        publisher.offer_predictions([pred])  # creates the outlet, pushes before any inlet
        inlet = pylsl.StreamInlet(resolve_one(f"{prefix}.forecast.hr", 10.0),
                                  processing_flags=pylsl.proc_clocksync)
        info = inlet.info(10.0)
        assert info.type() == "Forecast"
        assert info.get_channel_labels() == [
            "hr@+5s", "hr@+5s_lo", "hr@+5s_hi", "hr@+10s", "hr@+10s_lo", "hr@+10s_hi",
            "hr@+15s", "hr@+15s_lo", "hr@+15s_hi"]
        assert set(info.get_channel_units()) == {"bpm"}
        inlet.open_stream(10.0)
        time.sleep(0.5)  # the inlet is connected: later pushes reach it
        later = Prediction(t=t + 5.0, target="hr", step_s=5.0, horizon=(70.0, 71.0, 72.0),
                           band=((1.0, 2.0), (3.0, 4.0), (5.0, 6.0)), attention=(1.0,),
                           imputed=(), model="test")
        publisher.offer_predictions([later])
        sample, stamp = inlet.pull_sample(timeout=10.0)
        assert sample == [70.0, 1.0, 2.0, 71.0, 3.0, 4.0, 72.0, 5.0, 6.0]
        assert abs(stamp - _offset_now() - (t + 5.0)) < 0.005
        assert publisher.stats()["outlets"][0]["samples"] >= 2
    finally:
        publisher.close()


async def test_markers_the_daemon_stores_are_published(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process daemon: a marker accepted by its store comes out of the markers outlet."""
    import asyncio

    from edgetwin.config import Config, LslConfig
    from edgetwin.daemon.app import build_daemon, run_daemon
    from edgetwin.errors import MalformedInput
    from edgetwin.types import Marker

    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    home = tmp_path / "twin"
    store = TwinStore.create(home, Secret.passphrase(PASS))
    config = Config(lsl=LslConfig(enabled=True, prefix=prefix))
    try:
        daemon = build_daemon(home, config, store, sources=[], engine=None)
        run = asyncio.create_task(run_daemon(daemon, 20.0))
        info = await asyncio.to_thread(resolve_one, f"{prefix}.markers", 10.0)
        inlet = pylsl.StreamInlet(info, processing_flags=pylsl.proc_clocksync)
        await asyncio.to_thread(inlet.open_stream, 10.0)
        await asyncio.sleep(0.5)
        t = time.time() - 0.25
        with pytest.raises(MalformedInput, match="control character"):
            store.append_markers([Marker(t, "bad\x07text")])  # refused: nothing published
        store.append_markers([Marker(t, "stimulus on", "cli")])
        sample, stamp = await asyncio.to_thread(inlet.pull_sample, 10.0)
        assert sample == ["stimulus on"]
        assert abs(stamp - _offset_now() - t) < 0.005
        more, _ = await asyncio.to_thread(inlet.pull_sample, 0.5)
        assert more is None, "the refused marker was not published"
        daemon.stop()
        await run
        assert store.read_markers()[0].text == "stimulus on"
    finally:
        store.close()


def test_edgetwin_mark_reaches_the_markers_outlet_of_the_running_daemon(
    env: dict[str, str], prefix: str, daemon: subprocess.Popen[str]
) -> None:
    inlet = pylsl.StreamInlet(resolve_one(f"{prefix}.markers"))
    inlet.open_stream(10.0)
    time.sleep(0.5)
    at = time.time() - 2.0
    cli(env, "mark", "eyes closed", "--at", repr(at))
    sample, stamp = inlet.pull_sample(timeout=20.0)
    assert sample == ["eyes closed"]
    assert abs(stamp - _offset_now() - at) < 0.005
    refused = cli(env, "mark", "bad\x1b[31m", check=False)
    assert refused.returncode != 0
    more, _ = inlet.pull_sample(timeout=1.0)
    assert more is None
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0


def test_daemon_run_lsl_flag_publishes_without_the_config_switch(
    env: dict[str, str], prefix: str
) -> None:
    cli(env, "init")
    cli(env, "pair", "add", "simulator", "--seed", "5")
    home = Path(env["EDGETWIN_HOME"])
    (home / "config.toml").write_text(f'[inference]\nenabled = false\n[lsl]\nprefix = "{prefix}"\n')
    proc = subprocess.Popen([*EXE, "daemon", "run", "--lsl", "--duration", "30"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        inlet = pylsl.StreamInlet(resolve_one(f"{prefix}.simulator.accel"), recover=False)
        assert inlet.info(10.0).get_channel_labels() == ["accel_x", "accel_y", "accel_z"]
        inlet.open_stream(10.0)
        sample, _ = inlet.pull_sample(timeout=10.0)
        assert sample is not None and len(sample) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # the daemon's end destroys its outlets: the inlet sees the stream lost
        with pytest.raises(pylsl.util.LostError):
            drain_until_lost(inlet, 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


async def test_a_stuck_lsl_worker_never_blocks_the_hub_or_the_other_consumers(
    prefix: str,
) -> None:
    """Backpressure: while liblsl's worker is stuck, the hub keeps publishing, the LSL queue
    drops its oldest batches (counted), the store's queue gets every batch."""
    import asyncio
    import threading

    from edgetwin.config import LslConfig
    from edgetwin.daemon.hub import Hub
    from edgetwin.interop.lsl_outlets import LslPublisher
    from edgetwin.types import SampleBatch

    publisher = LslPublisher(LslConfig(enabled=True, prefix=prefix, features=False,
                                       markers=False, forecasts=False), step_s=5.0)
    hub = Hub(8)
    lsl_queue = hub.subscribe("lsl")
    store_queue = hub.subscribe("store")
    stuck = threading.Event()
    publisher._executor.submit(stuck.wait, 30.0)  # the worker is busy elsewhere
    consumer = asyncio.create_task(publisher.consume(lsl_queue))
    stored = 0
    for i in range(200):
        t = time.time() + np.arange(10) / 100.0
        hub.publish(SampleBatch.build("x.eeg", ["eeg_fz"], t, np.full((10, 1), float(i)),
                                      meta={"sampling_rate_hz": 100.0}))
        await asyncio.sleep(0)
        stored += sum(len(b) for b in store_queue.drain())
    assert stored == 2000  # the store's consumer saw everything
    stats = hub.stats()["consumers"]["lsl"]
    assert stats["dropped_batches"] >= 190 - 8  # the stuck consumer's oldest were dropped
    stuck.set()
    # once unstuck, the newest batches are pushed; then the hub closes and the consumer ends
    inlet_name = f"{prefix}.x.eeg"
    hub.close()
    await asyncio.wait_for(consumer, 30.0)
    await asyncio.to_thread(publisher._executor.submit(lambda: None).result, 30.0)
    assert any(o["name"] == inlet_name and o["samples"] > 0
               for o in publisher.stats()["outlets"])
    publisher.close()


async def test_raw_outlet_rate_from_either_meta_key_and_irregular_without_one(
    prefix: str,
) -> None:
    import asyncio

    from edgetwin.config import LslConfig
    from edgetwin.daemon.hub import Hub
    from edgetwin.interop.lsl_outlets import LslPublisher
    from edgetwin.types import SampleBatch

    publisher = LslPublisher(LslConfig(enabled=True, prefix=prefix, features=False,
                                       markers=False), step_s=5.0)
    hub = Hub(8)
    consumer = asyncio.create_task(publisher.consume(hub.subscribe("lsl")))
    t = np.array([time.time()])
    for stream, meta in (("bridge.fnirs", {"rate_hz": 100}), ("strap.hr", {}),
                         ("muse.default", {"sampling_rate_hz": 256.0})):
        hub.publish(SampleBatch.build(stream, ["fnirs_1_1_760"], t, [[1.0]], meta=meta))
    hub.close()
    await asyncio.wait_for(consumer, 30.0)
    try:
        rates = {}
        for stream in ("bridge.fnirs", "strap.hr", "muse.default"):
            info = await asyncio.to_thread(resolve_one, f"{prefix}.{stream}", 10.0)
            rates[stream] = info.nominal_srate()
        assert rates == {"bridge.fnirs": 100.0, "strap.hr": pylsl.IRREGULAR_RATE,
                         "muse.default": 256.0}
        assert info.type() == "NIRS"
    finally:
        publisher.close()
