"""Particulate sensors (PMS5003, SDS011, SPS30): real pyserial on emulated ptys, no mocks."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.daemon.backoff import Backoff
from edgetwin.daemon.hub import Hub
from edgetwin.daemon.runner import SourceRunner
from edgetwin.emulators.particulate import AirFaults, ParticulateEmulator
from edgetwin.errors import DeviceNotFound, TransientSourceError
from edgetwin.sources import particulate_protocol as pp
from edgetwin.sources.particulate import ParticulateSource, detect_air_sensors
from edgetwin.sources.registry import build_source
from edgetwin.types import SampleBatch

TIMEOUT = 30.0


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[list[ParticulateEmulator]]:
    made: list[ParticulateEmulator] = []
    yield made
    for emu in made:
        emu.stop()


@pytest.fixture
async def sources() -> AsyncIterator[list[ParticulateSource]]:
    made: list[ParticulateSource] = []
    yield made
    for src in made:
        await src.close()


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _emu(
    made: list[ParticulateEmulator], tmp_path: Path, sensor: str, **kw: Any
) -> ParticulateEmulator:
    kw.setdefault("interval_s", 0.1)
    emu = ParticulateEmulator(sensor, link_dir=tmp_path, **kw)
    made.append(emu)
    emu.start()
    return emu


def _src(made: list[ParticulateSource], emu: ParticulateEmulator, **kw: Any) -> ParticulateSource:
    kw.setdefault("working_period_min", 0)
    kw.setdefault("poll_s", 0.1)
    src = ParticulateSource(kw.pop("name", "room"), emu.path, emu.sensor, **kw)
    made.append(src)
    return src


async def _collect(source: ParticulateSource, rows: int) -> list[SampleBatch]:
    out: list[SampleBatch] = []

    async def run() -> None:
        async for batch in source.stream():
            out.append(batch)
            if sum(len(b) for b in out) >= rows:
                return

    await asyncio.wait_for(run(), TIMEOUT)
    return out


def _rows(batches: list[SampleBatch]) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in row) for b in batches for row in b.values]


def _assert_subsequence(got: list[tuple[float, ...]], emu: ParticulateEmulator) -> None:
    """Every row the host got is a reading the emulator sent intact, in the order sent."""
    sent = [(r, good) for r, good in emu.sent]
    i = 0
    for row in got:
        while i < len(sent) and not np.allclose(sent[i][0], row, rtol=0, atol=1e-6):
            i += 1
        assert i < len(sent), f"row {row} was never sent, or arrived out of order"
        assert sent[i][1], f"row {row} came from a frame the emulator corrupted"
        i += 1


EXPECTED = {
    "pms5003": (("pm1_0", "pm2_5", "pm10", *pp.PMS_COUNT_CHANNELS), "1/0.1L"),
    "sds011": (("pm2_5", "pm10"), None),
    "sps30": (("pm1_0", "pm2_5", "pm10", *pp.SPS_EXTRA_CHANNELS), "1/cm³"),
}


@pytest.mark.parametrize("sensor", pp.SENSORS)
async def test_values_arrive_in_units_equal_to_what_was_sent(
    sensor: str, tmp_path: Path, emulators: list[ParticulateEmulator],
    sources: list[ParticulateSource],
) -> None:
    emu = _emu(emulators, tmp_path, sensor, seed=1)
    src = _src(sources, emu)
    await src.connect()
    batches = await _collect(src, 5)
    channels, count_unit = EXPECTED[sensor]
    assert all(b.stream == "room.air" and b.channels == channels for b in batches)
    units = dict(zip(batches[0].channels, batches[0].units, strict=True))
    assert units["pm2_5"] == units["pm10"] == "µg/m³"
    if count_unit:
        assert units[channels[3]] == ("1/0.1L" if sensor == "pms5003" else "µg/m³")
        assert count_unit in units.values()
    got = _rows(batches)
    _assert_subsequence(got, emu)
    pm25 = [r[channels.index("pm2_5")] for r in got]
    assert all(0.5 <= v <= 100 for v in pm25)  # indoor air, not zeros or garbage
    t = np.concatenate([b.t for b in batches])
    assert np.all(np.diff(t) >= 0)
    assert src.counters.bad_packets == 0


@pytest.mark.parametrize("sensor", pp.SENSORS)
async def test_corrupted_checksums_are_counted_and_skipped(
    sensor: str, tmp_path: Path, emulators: list[ParticulateEmulator],
    sources: list[ParticulateSource],
) -> None:
    emu = _emu(emulators, tmp_path, sensor, seed=2)
    src = _src(sources, emu)
    await src.connect()
    emu.faults = AirFaults(bad_checksum=0.4)
    got = _rows(await _collect(src, 15))
    _assert_subsequence(got, emu)  # no corrupted reading got through
    assert src.counters.bad_packets >= 1
    corrupted = sum(1 for _, good in emu.sent if not good)
    assert src.counters.bad_packets <= corrupted + 1


@pytest.mark.parametrize("sensor", ["pms5003", "sds011"])
async def test_partial_frames_and_garbage_are_resynced(
    sensor: str, tmp_path: Path, emulators: list[ParticulateEmulator],
    sources: list[ParticulateSource],
) -> None:
    emu = _emu(emulators, tmp_path, sensor, seed=3)
    src = _src(sources, emu)
    await src.connect()
    emu.faults = AirFaults(partial=0.3, truncated=0.15, garbage=0.4)
    got = _rows(await _collect(src, 25))
    _assert_subsequence(got, emu)
    assert emu.stats.partials and emu.stats.truncated and emu.stats.garbage_bursts
    assert src.counters.extra["skipped_bytes"] > 0
    # a split frame is read whole: more good rows than the frames that were never complete
    intact = sum(1 for _, good in emu.sent if good)
    assert len(got) >= 25 and intact >= len(got)


def test_scanner_resyncs_on_a_header_inside_garbage() -> None:
    frame = pp.pms_encode([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0])
    scanner = pp.FrameScanner("pms5003")
    # a fake header with a wrong length, a cut frame, then a real one fed byte by byte
    stream = b"\x00\x42\x4d\x00\x07junk" + frame[:20] + frame
    out: list[bytes] = []
    for i in range(len(stream)):
        out += scanner.feed(stream[i : i + 1])
    assert out == [frame]
    assert pp.pms_decode(out[0])[:3] == (1, 2, 3)


async def test_impossible_value_is_masked_not_stored_as_truth(
    tmp_path: Path, emulators: list[ParticulateEmulator], sources: list[ParticulateSource],
) -> None:
    emu = _emu(emulators, tmp_path, "pms5003", seed=4)
    src = _src(sources, emu)
    await src.connect()
    await _collect(src, 1)
    emu.inject((5.0, 60000.0, 12.0, 100.0, 50.0, 10.0, 1.0, 0.0, 0.0))
    seen: list[SampleBatch] = []
    for _ in range(50):
        batch = (await _collect(src, 1))[0]
        seen.append(batch)
        if "implausible" in batch.meta:
            break
    flagged = seen[-1]
    assert flagged.meta["implausible"] == {"pm2_5": 60000.0}
    row = flagged.values[0]
    assert np.isnan(row[1]) and row[0] == 5.0 and row[2] == 12.0  # the rest of the frame stays
    assert src.counters.extra["implausible"] == 1


async def test_silent_sensor_trips_the_watchdog_and_the_runner_reconnects(
    tmp_path: Path, emulators: list[ParticulateEmulator], sources: list[ParticulateSource],
) -> None:
    emu = _emu(emulators, tmp_path, "sps30", seed=5)
    src = _src(sources, emu, stale_s=1.0)
    hub = Hub(queue_batches=64)
    hub.subscribe("test")
    runner = SourceRunner(src, hub, watchdog_s=30.0, backoff=Backoff(initial_s=0.1, max_s=0.2))
    task = asyncio.create_task(runner.run())
    try:
        async def wait_for(pred: Any) -> None:
            while not pred():
                await asyncio.sleep(0.05)

        await asyncio.wait_for(wait_for(lambda: runner.samples >= 2), TIMEOUT)
        emu.stop_answering()
        await asyncio.wait_for(wait_for(lambda: runner.failures >= 1), TIMEOUT)
        assert "sent nothing valid" in (runner.last_error or "")
        before = runner.samples
        emu.resume()
        await asyncio.wait_for(wait_for(lambda: runner.samples >= before + 2), TIMEOUT)
        assert runner.connects >= 2
        assert src.counters.extra["timeouts"] >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("sensor", pp.SENSORS)
async def test_unplug_raises_transient_and_replug_reconnects(
    sensor: str, tmp_path: Path, emulators: list[ParticulateEmulator],
    sources: list[ParticulateSource],
) -> None:
    emu = _emu(emulators, tmp_path, sensor, seed=6)
    path = emu.path
    src = _src(sources, emu, stale_s=5.0)
    await src.connect()
    await _collect(src, 2)
    emu.unplug()
    assert not os.path.exists(path)
    with pytest.raises(TransientSourceError):
        await _collect(src, 10_000)
    await src.close()
    with pytest.raises(DeviceNotFound):
        await src.connect()
    assert emu.replug() == path
    await src.connect()
    again = _rows(await _collect(src, 2))
    _assert_subsequence(again, emu)


async def test_sds011_gets_its_working_period_and_sleeps_between_readings(
    tmp_path: Path, emulators: list[ParticulateEmulator], sources: list[ParticulateSource],
) -> None:
    # one device "minute" lasts 0.4 s here: work 0.2 s, report, sleep until the minute ends
    emu = _emu(emulators, tmp_path, "sds011", seed=7, minute_s=0.4)
    src = _src(sources, emu, working_period_min=1)
    await src.connect()
    assert emu.stats.working_period == 1
    assert (pp.SDS_WORKING_PERIOD, bytes([1, 1]) + bytes(10)) in emu.stats.commands
    got = _rows(await _collect(src, 4))
    _assert_subsequence(got, emu)
    events = emu.stats.events
    reports = [i for i, e in enumerate(events) if e == "report"]
    assert len(reports) >= 4
    for a, b in itertools.pairwise(reports):
        between = events[a:b]
        assert "sleep" in between and "work" in between  # the laser slept between readings
    assert src.describe()["working_period_min"] == 1
    assert src.silence_tolerance_s > 60.0  # the daemon's watchdog waits out a sleeping sensor


def test_record_round_trip_and_registry() -> None:
    src = build_source("air", {"kind": "particulate", "port": "/dev/ttyUSB0",
                               "sensor": "sds011", "working_period_min": 5})
    assert isinstance(src, ParticulateSource)
    assert (src.sensor, src.baud, src.working_period_min) == ("sds011", 9600, 5)
    assert src.stream_name == "air.air"
    sps = ParticulateSource.from_record("p", {"kind": "particulate", "port": "/x",
                                              "sensor": "sps30"})
    assert sps.baud == 115200


# -- CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensor", pp.SENSORS)
def test_pair_add_serial_sensor_probes_and_stores(
    sensor: str, tmp_path: Path, emulators: list[ParticulateEmulator], run_cli: Any
) -> None:
    emu = _emu(emulators, tmp_path, sensor, seed=8)
    assert run_cli("init").exit_code == 0
    result = run_cli("pair", "add", "serial", emu.path, "--sensor", sensor)
    assert result.exit_code == 0, result.output
    assert f"{sensor}.air" in result.output
    listed = {r["name"]: r for r in json.loads(run_cli("pair", "list", "--json").output)}
    record = listed[sensor]
    assert record["kind"] == "particulate"
    assert record["sensor"] == sensor
    assert record["port"] == emu.path
    src = build_source(sensor, record)
    assert isinstance(src, ParticulateSource) and src.sensor == sensor


def test_pair_add_serial_wrong_or_unknown_sensor(
    tmp_path: Path, emulators: list[ParticulateEmulator], run_cli: Any
) -> None:
    assert run_cli("init").exit_code == 0
    bad = run_cli("pair", "add", "serial", "/dev/ttyUSB0", "--sensor", "pms7003")
    assert bad.exit_code == 2
    assert "Invalid value for '--sensor'" in bad.output
    assert "'pms7003' is not one of 'pms5003', 'sds011', 'sps30'" in bad.output
    emu = _emu(emulators, tmp_path, "pms5003", seed=9)
    wrong = run_cli("pair", "add", "serial", emu.path, "--sensor", "sds011", "--timeout", "1")
    assert wrong.exit_code == 6
    assert "no sds011 answered" in wrong.output and "answers as a pms5003" in wrong.output
    assert json.loads(run_cli("pair", "list", "--json").output) == []
    period = run_cli("pair", "add", "serial", emu.path, "--sensor", "pms5003",
                     "--working-period", "5")
    assert period.exit_code == 2
    assert "SDS011 only" in period.output


def test_pair_scan_detects_each_sensor_and_never_writes_to_other_ports(
    tmp_path: Path, emulators: list[ParticulateEmulator], run_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serial.tools import list_ports, list_ports_common

    emus = {s: _emu(emulators, tmp_path, s, seed=10 + i) for i, s in enumerate(pp.SENSORS)}
    ports = []
    for vid, emu in zip((0x1A86, 0x10C4, 0x0403), emus.values(), strict=True):
        info = list_ports_common.ListPortInfo(emu.path, skip_link_detection=True)
        info.vid, info.pid = vid, 0x7523
        ports.append(info)
    # a microcontroller's own USB port that is not a UART bridge: never a candidate
    other = _emu(emulators, tmp_path, "sds011", seed=20)
    pico = list_ports_common.ListPortInfo(other.path, skip_link_detection=True)
    pico.vid, pico.pid = 0x2E8A, 0x000A
    # The outermost edge: this machine has no USB serial devices to enumerate.
    monkeypatch.setattr(list_ports, "comports", lambda: [*ports, pico])
    result = run_cli("pair", "scan", "--no-ble", "--json")
    assert result.exit_code == 0, result.output
    by_port = {d["port"]: d for d in json.loads(result.output)["devices"]
               if d["transport"] == "serial"}
    for sensor, emu in emus.items():
        assert by_port[emu.path]["air"]["sensor"] == sensor
    assert by_port[other.path].get("air") is None
    # the bridge probe's DESCRIBE frame is no SDS011 command; the air probe sent it none either
    assert other.stats.commands == []
    table = run_cli("pair", "scan", "--no-ble")
    assert f"edgetwin pair add serial {emus['sds011'].path} --sensor sds011" in table.output


def test_detect_skips_ports_without_a_uart_vid() -> None:
    entries: list[dict[str, Any]] = [
        {"port": "/dev/ttyS0", "vid_pid": None, "bridge": None},
        {"port": "/dev/ttyACM0", "vid_pid": "2e8a:000a", "bridge": None},
        {"port": "/dev/ttyUSB9", "vid_pid": "1a86:7523", "bridge": {"model": "x"}},
    ]
    detect_air_sensors(entries, listen_s=0.1)
    assert all("air" not in e for e in entries)
