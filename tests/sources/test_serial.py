"""SerialSource against the bridge emulator on a real pseudo-terminal (and TCP) via pyserial."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.emulators.bridge import BridgeEmulator, Faults
from edgetwin.errors import DeviceNotFound, MalformedInput, TransientSourceError
from edgetwin.sources import serial as serial_mod
from edgetwin.sources.serial import SerialSource
from edgetwin.types import SampleBatch

TIMEOUT = 20.0


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[list[BridgeEmulator]]:
    """Emulators made by the test; all stopped afterwards."""
    made: list[BridgeEmulator] = []
    yield made
    for emu in made:
        emu.stop()


def _emu(made: list[BridgeEmulator], tmp_path: Path, **kwargs: object) -> BridgeEmulator:
    kwargs.setdefault("link_dir", tmp_path)
    emu = BridgeEmulator(**kwargs)  # type: ignore[arg-type]
    made.append(emu)
    emu.start()
    return emu


@pytest.fixture
async def sources() -> AsyncIterator[list[SerialSource]]:
    made: list[SerialSource] = []
    yield made
    for src in made:
        await src.close()


async def _collect(source: SerialSource, rows: int) -> list[SampleBatch]:
    """Batches until at least ``rows`` rows (NaN rows included) arrived."""
    out: list[SampleBatch] = []

    async def run() -> None:
        n = 0
        async for batch in source.stream():
            out.append(batch)
            n += len(batch)
            if n >= rows:
                return

    await asyncio.wait_for(run(), TIMEOUT)
    return out


def _check_rows_against_emulator(batches: list[SampleBatch], emu: BridgeEmulator) -> int:
    """Every real row is a row the device sent, in order; NaN rows fill exactly the gaps.

    Returns the number of rows the host lost (sequence positions covered by NaN rows).
    """
    assert emu.sent_rows is not None
    index = {row: seq for seq, row in enumerate(emu.sent_rows)}
    values = np.vstack([b.values for b in batches])
    t = np.concatenate([b.t for b in batches])
    assert np.all(np.diff(t) >= 0)
    last_seq = None
    nan_run = 0
    lost = 0
    for row in values:
        if np.isnan(row).all():
            nan_run += 1
            continue
        key = tuple(int(v) for v in row)
        assert key in index, f"row {key} was never sent: corrupted data got through"
        seq = index[key]
        if last_seq is not None:
            assert seq - last_seq - 1 == nan_run, (last_seq, seq, nan_run)
            lost += nan_run
        last_seq = seq
        nan_run = 0
    return lost


async def test_clean_stream_maps_frames_to_batches(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    emu = _emu(emulators, tmp_path, seed=3, rate_hz=100.0, record=True)
    src = SerialSource("forehead", emu.path)
    sources.append(src)
    await src.connect()
    batches = await _collect(src, 60)
    first = batches[0]
    assert first.stream == "forehead.fnirs"
    assert first.channels == ("fnirs_s1_d1_760", "fnirs_s1_d1_850")
    assert first.units == ("a.u.", "a.u.")
    assert first.meta["wavelength_nm"] == {"fnirs_s1_d1_760": 760, "fnirs_s1_d1_850": 850}
    assert first.meta["distance_cm"] == {"fnirs_s1_d1_760": 3.0, "fnirs_s1_d1_850": 3.0}
    assert first.meta["rate_hz"] == 100.0
    assert _check_rows_against_emulator(batches, emu) == 0
    t = np.concatenate([b.t for b in batches])
    # Host-clock timestamps: recent and spaced by the device's period.
    assert abs(t[-1] - time.time()) < 2.0
    assert np.median(np.diff(t)) == pytest.approx(0.01, abs=0.002)
    assert src.counters.bad_packets == 0
    assert src.counters.gaps == 0
    assert src.counters.samples == sum(len(b) for b in batches)
    status = src.describe()
    assert status["rate_hz"] == 100.0
    assert status["channels"] == 2


async def test_byte_at_a_time_delivery(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    emu = _emu(emulators, tmp_path, seed=4, rate_hz=40.0, record=True,
               faults=Faults(byte_at_a_time=True))
    src = SerialSource("ppg", emu.path)
    sources.append(src)
    await src.connect()
    batches = await _collect(src, 40)
    assert _check_rows_against_emulator(batches, emu) == 0
    assert src.counters.bad_packets == 0


async def test_loss_flips_and_garbage_are_survived_and_counted(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    faults = Faults(chunk_max=7, byte_loss=0.003, bit_flip=0.003, garbage=0.05)
    emu = _emu(emulators, tmp_path, seed=5, rate_hz=200.0, record=True, faults=faults)
    src = SerialSource("forehead", emu.path)
    sources.append(src)
    await src.connect()
    batches = await _collect(src, 400)
    lost = _check_rows_against_emulator(batches, emu)
    assert emu.stats.damaged_frames + emu.stats.garbage_bursts > 0
    assert src.counters.bad_packets > 0
    assert lost > 0
    assert src.counters.extra["lost_samples"] >= lost
    assert src.counters.gaps >= 1
    gaps = [g for b in batches for g in b.meta.get("gaps", [])]
    assert gaps and all(g0 <= g1 for g0, g1 in gaps)
    assert sum(src.decoder.stats.bad_by_reason.values()) == src.decoder.stats.bad_frames


async def test_unplug_raises_transient_and_replug_reconnects(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    emu = _emu(emulators, tmp_path, seed=6, kind="ppg", rate_hz=50.0)
    path = emu.path
    src = SerialSource("finger", path, handshake_timeout_s=1.0)
    sources.append(src)
    await src.connect()
    first = await _collect(src, 10)
    assert first[0].stream == "finger.ppg"
    emu.unplug()
    assert not os.path.exists(path)
    with pytest.raises(TransientSourceError):
        await _collect(src, 10_000)
    await src.close()
    with pytest.raises(DeviceNotFound):
        await src.connect()
    assert not [t for t in threading.enumerate() if t.name == "serial-finger"]
    assert emu.replug() == path
    await src.connect()
    again = await _collect(src, 10)
    assert again[0].channels == ("ppg",)
    assert src.counters.extra["device_restarts"] == 1  # the replugged device rebooted


async def test_a_replugged_port_is_reconnected_before_a_long_backoff_ends(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    """The daemon's runner over a real pty: unplugged, then plugged back while the
    backoff has at least ~17 minutes to go; the port's return brings the reconnect."""
    import random

    from edgetwin.daemon.backoff import Backoff, SourceState
    from edgetwin.daemon.hub import Hub
    from edgetwin.daemon.runner import SourceRunner

    emu = _emu(emulators, tmp_path, seed=8, kind="ppg", rate_hz=50.0)
    src = SerialSource("finger", emu.path, handshake_timeout_s=1.0)
    sources.append(src)
    hub = Hub(256)
    hub.subscribe("c")
    runner = SourceRunner(src, hub, watchdog_s=10.0,
                          backoff=Backoff(initial_s=1200.0, max_s=1200.0, rng=random.Random(0)))
    task = asyncio.create_task(runner.run())

    async def until(check: object) -> None:
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(until(lambda: runner.samples > 0), 10)
        emu.unplug()
        await asyncio.wait_for(until(lambda: runner.state == SourceState.BACKOFF), 10)
        assert runner.connects == 1
        await asyncio.sleep(0.6)  # still gone: no early attempt while the port is absent
        assert runner.state == SourceState.BACKOFF and runner.connects == 1
        emu.replug()
        await asyncio.wait_for(until(lambda: runner.connects == 2), 15)
        before = runner.samples
        await asyncio.wait_for(until(lambda: runner.samples > before), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_only_a_port_that_vanished_and_came_back_counts_as_back(
    tmp_path: Path, emulators: list[BridgeEmulator]
) -> None:
    emu = _emu(emulators, tmp_path, seed=9, kind="ppg", rate_hz=50.0)
    there = SerialSource("finger", emu.path)
    with pytest.raises(TimeoutError):  # present all along: the backoff decides
        await asyncio.wait_for(there.until_back(), 0.7)
    with pytest.raises(TimeoutError):  # no path to watch
        await asyncio.wait_for(SerialSource("net", "socket://127.0.0.1:9").until_back(), 0.3)
    watch = asyncio.ensure_future(there.until_back())
    emu.unplug()
    await asyncio.sleep(0.6)
    assert not watch.done()  # gone, not yet back
    emu.replug()
    await asyncio.wait_for(watch, 5)


async def test_silent_port_times_out_as_device_not_found(sources: list[SerialSource]) -> None:
    master, slave = os.openpty()
    try:
        src = SerialSource("mute", os.ttyname(slave), handshake_timeout_s=0.3)
        sources.append(src)
        with pytest.raises(DeviceNotFound, match="no bridge descriptor"):
            await src.connect()
        assert src._serial is None
        assert not [t for t in threading.enumerate() if t.name == "serial-mute"]
    finally:
        os.close(master)
        os.close(slave)


async def test_missing_port_is_device_not_found(tmp_path: Path) -> None:
    src = SerialSource("ghost", str(tmp_path / "ttyACM9"))
    with pytest.raises(DeviceNotFound, match="does not exist"):
        await src.connect()
    await src.close()
    await src.close()


async def test_socket_url(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    emu = _emu(emulators, tmp_path, seed=7, rate_hz=50.0, transport="tcp", record=True)
    assert emu.path.startswith("socket://127.0.0.1:")
    src = SerialSource("remote", emu.path)
    sources.append(src)
    await src.connect()
    batches = await _collect(src, 20)
    assert _check_rows_against_emulator(batches, emu) == 0


async def test_set_rate_brings_a_new_descriptor(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    emu = _emu(emulators, tmp_path, seed=8, rate_hz=20.0)
    src = SerialSource("forehead", emu.path)
    sources.append(src)
    await src.connect()
    await _collect(src, 5)
    await src.set_rate(50.0)

    async def until_new_rate() -> SampleBatch:
        async for batch in src.stream():
            if batch.meta["rate_hz"] == 50.0:
                return batch
        raise AssertionError("stream ended")

    batch = await asyncio.wait_for(until_new_rate(), TIMEOUT)
    assert src.descriptor is not None and src.descriptor.rate_hz == 50.0
    assert batch.channels == ("fnirs_s1_d1_760", "fnirs_s1_d1_850")


async def test_slow_consumer_loses_oldest_batches_counted_as_drops(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource]
) -> None:
    emu = _emu(emulators, tmp_path, seed=9, rate_hz=200.0)
    src = SerialSource("busy", emu.path, queue_batches=2, batch_s=0.01)
    sources.append(src)
    await src.connect()

    async def until_dropping() -> None:
        # Deliberately not consuming: the bounded queue must overflow, oldest batch first.
        while src.counters.drops == 0:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(until_dropping(), TIMEOUT)
    batches = await _collect(src, 1)
    assert batches
    assert src._queue is not None and src._queue.qsize() <= 2


def test_from_record() -> None:
    record = {"kind": "serial", "port": "/dev/ttyACM0", "baud": 921600}
    src = SerialSource.from_record("rig", record)
    assert (src.name, src.port, src.baud, src.kind) == ("rig", "/dev/ttyACM0", 921600, "serial")
    assert SerialSource.from_record("rig", {"kind": "serial", "port": "x"}).baud == 115200
    for bad in ({"kind": "ble", "port": "x"}, {"kind": "serial"}, {"kind": "serial", "port": ""},
                {"kind": "serial", "port": "x", "baud": "fast"},
                {"kind": "serial", "port": "x", "baud": True}):
        with pytest.raises(MalformedInput):
            SerialSource.from_record("rig", bad)


def test_probe_port_answers_and_silence(tmp_path: Path, emulators: list[BridgeEmulator]) -> None:
    emu = _emu(emulators, tmp_path, seed=10, kind="ppg", rate_hz=10.0, autostart=False)
    info = serial_mod.probe_port(emu.path, timeout_s=2.0)
    assert info is not None
    assert info["model"] == "edgetwin-emulator-ppg"
    assert info["channels"] == 1
    assert serial_mod.probe_port(str(tmp_path / "nothing"), timeout_s=0.1) is None
    master, slave = os.openpty()
    try:
        assert serial_mod.probe_port(os.ttyname(slave), timeout_s=0.2) is None
    finally:
        os.close(master)
        os.close(slave)


def test_scan_ports_marks_usb_ports_that_answer(
    tmp_path: Path, emulators: list[BridgeEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    from serial.tools import list_ports, list_ports_common

    emu = _emu(emulators, tmp_path, seed=11, rate_hz=10.0)
    usb = list_ports_common.ListPortInfo(emu.path, skip_link_detection=True)
    usb.vid, usb.pid, usb.description = 0x2E8A, 0x000A, "Pico"
    master, slave = os.openpty()
    mute_path = os.ttyname(slave)
    mute = list_ports_common.ListPortInfo(mute_path, skip_link_detection=True)
    mute.vid, mute.pid = 0x1A86, 0x7523
    uart = list_ports_common.ListPortInfo("/dev/ttyS0", skip_link_detection=True)
    # The outermost edge: this machine has no USB serial devices to enumerate.
    monkeypatch.setattr(list_ports, "comports", lambda: [usb, mute, uart])
    try:
        found = {p["port"]: p for p in serial_mod.scan_ports(probe=True, timeout_s=0.5)}
    finally:
        os.close(master)
        os.close(slave)
    assert found[emu.path]["vid_pid"] == "2e8a:000a"
    assert found[emu.path]["bridge"]["model"] == "edgetwin-emulator-fnirs"
    assert found[mute_path]["bridge"] is None
    assert found["/dev/ttyS0"]["vid_pid"] is None and found["/dev/ttyS0"]["bridge"] is None
    assert all(p["bridge"] is None for p in serial_mod.scan_ports(probe=False))


async def test_a_step_of_the_host_clock_back_loses_and_squashes_nothing(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The soak's clock-step fault: with host wall-clock stamps the rows after a 30 s step back
    # were pinned to the last stored time (16 s of a 100 Hz stream lost in the soak)
    from edgetwin import clock as twin_clock

    stepped = [0.0]
    clock = twin_clock.TwinClock(wall=lambda: time.time() - stepped[0])
    monkeypatch.setattr(twin_clock, "CLOCK", clock)
    emu = _emu(emulators, tmp_path, seed=5, rate_hz=100.0, record=True)
    src = SerialSource("forehead", emu.path)
    sources.append(src)
    await src.connect()
    before = await _collect(src, 50)
    stepped[0] = 30.0  # NTP (or a person) sets the host's clock 30 s back
    after = await _collect(src, 150)
    batches = before + after
    assert _check_rows_against_emulator(batches, emu) == 0
    t_after = np.concatenate([b.t for b in after])
    assert np.all(np.diff(np.concatenate([b.t for b in batches])) > 0)
    # spaced by the device's period (slowed by the 1 % slew at most), not pinned to one time
    assert np.median(np.diff(t_after)) == pytest.approx(0.01, abs=0.002)
    assert clock.steps_back == 1
    assert 29.0 < clock.offset() <= 30.0  # ahead of the stepped wall clock, closing slowly


async def test_once_the_clock_has_a_line_frames_are_read_in_bursts_not_one_wake_each(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The soak's serial thread was 40 % of the daemon's CPU: two selects, two reads and a
    # GIL hand-over for each 100 Hz frame. Bursts must not cost rows, order or timing.
    reads = [0]
    real_read = serial_mod._read

    def counting_read(ser: object, port: str) -> bytes:
        reads[0] += 1
        return real_read(ser, port)

    monkeypatch.setattr(serial_mod, "_read", counting_read)
    emu = _emu(emulators, tmp_path, seed=8, rate_hz=100.0, record=True)
    src = SerialSource("forehead", emu.path)
    sources.append(src)
    await src.connect()
    warmup = await _collect(src, 700)  # the clock estimate settles after ~3 windows of 2 s
    assert src.clock_estimator.settled
    reads[0] = 0
    steady = await _collect(src, 300)
    n_rows = sum(len(b) for b in steady)
    # one wake per frame would be ~n_rows reads; a 40 ms gather is ~4 frames a read
    assert reads[0] < n_rows / 2
    batches = warmup + steady
    assert _check_rows_against_emulator(batches, emu) == 0
    t = np.concatenate([b.t for b in steady])
    assert np.all(np.diff(t) > 0)
    assert np.median(np.diff(t)) == pytest.approx(0.01, abs=0.001)


async def test_a_step_of_the_host_clock_forward_maps_rows_onto_the_new_time_at_once(
    tmp_path: Path, emulators: list[BridgeEmulator], sources: list[SerialSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The 50-minute soak's forward step: the estimate's line, anchored on minutes of minima
    # from before the step, mapped new rows up to 30 s behind and bent through the step
    # (2,875 rows out of order, a 24.8 s gap). After a forward step it starts over.
    from edgetwin import clock as twin_clock

    stepped = [0.0]
    clock = twin_clock.TwinClock(wall=lambda: time.time() + stepped[0])
    monkeypatch.setattr(twin_clock, "CLOCK", clock)
    emu = _emu(emulators, tmp_path, seed=6, rate_hz=100.0, record=True)
    src = SerialSource("forehead", emu.path)
    sources.append(src)
    await src.connect()
    before = await _collect(src, 700)  # the estimate has its line
    assert src.clock_estimator.settled
    stepped[0] = 30.0  # NTP sets a Pi's clock half a minute ahead
    lags: list[float] = []
    after: list[SampleBatch] = []

    async def run() -> None:
        async for batch in src.stream():
            after.append(batch)
            lags.append(clock.now() - batch.last_t)
            if sum(len(b) for b in after) >= 300:
                return

    await asyncio.wait_for(run(), TIMEOUT)
    assert _check_rows_against_emulator(before + after, emu) == 0
    t = np.concatenate([b.t for b in before + after])
    steps = np.diff(t)
    assert np.all(steps > 0)
    # one gap of the step itself, every other row at the device's spacing
    assert np.sum(steps > 1.0) == 1 and 29.0 < steps.max() < 31.0
    # rows after the first batch are stamped on the new time, not half a minute behind
    assert max(abs(lag) for lag in lags[1:]) < 1.0
