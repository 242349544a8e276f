"""BleSource and scan_ble through bleak's real BlueZ backend, against the emulated BlueZ."""

from __future__ import annotations

import asyncio
import math

import pytest

from edgetwin.errors import DeviceNotFound, PairingRefused, TransientSourceError
from edgetwin.sources import ble
from edgetwin.sources import gatt as g
from edgetwin.sources.ble import BleSource, scan_ble
from tests.sources import ble_harness
from tests.sources.ble_harness import collect, count, rows
from tests.sources.bluez_emulator import (
    BlueZEmulator,
    HeartRateStrap,
    Peripheral,
    PulseOximeter,
    Tag,
    Thermometer,
)

pytestmark = pytest.mark.timeout(90)

# the emulated BlueZ on a private bus, shared with the other BLE test modules
private_bus = ble_harness.private_bus
bluez = ble_harness.bluez

STRAP = "C0:FF:EE:00:00:01"
OXI = "C0:FF:EE:00:00:02"
THERMO = "C0:FF:EE:00:00:03"


def fast_strap(address: str = STRAP, **kwargs) -> HeartRateStrap:
    """A strap notifying 20 times a second, each notification half a second of heartbeats."""
    return HeartRateStrap(address, rate_hz=20, model_seconds=0.5, **kwargs)


def source(address: str, profile: str, name: str = "chest", **kwargs) -> BleSource:
    kwargs.setdefault("connect_timeout_s", 15)
    kwargs.setdefault("scan_timeout_s", 3)
    return BleSource(name, address, profile, **kwargs)


def decoded_sent(p: Peripheral, uuid: str) -> list:
    return [g.DECODERS[uuid](payload) for _, u, payload in p.sent if u == uuid]


async def test_scan_reports_name_rssi_and_health_profiles(bluez: BlueZEmulator) -> None:
    bluez.add(HeartRateStrap(STRAP, "Polar H10 1234"))
    bluez.add(PulseOximeter(OXI))
    bluez.add(Thermometer(THERMO))
    bluez.add(Tag("C0:FF:EE:00:00:09", "Tag"))

    found = await scan_ble(0.5)

    by_address = {row["address"]: row for row in found}
    assert set(by_address) == {STRAP, OXI, THERMO, "C0:FF:EE:00:00:09"}
    assert by_address[STRAP]["name"] == "Polar H10 1234"
    assert by_address[STRAP]["profiles"] == ["heart_rate"]
    assert by_address[OXI]["profiles"] == ["pulse_oximeter"]
    assert by_address[THERMO]["profiles"] == ["thermometer"]
    assert by_address["C0:FF:EE:00:00:09"]["profiles"] == []
    assert all(isinstance(row["rssi"], int) and -100 < row["rssi"] < 0 for row in found)
    assert found[-1]["address"] == "C0:FF:EE:00:00:09"  # health devices first


async def test_strap_streams_heart_rate_and_rr_intervals(bluez: BlueZEmulator) -> None:
    strap = bluez.add(fast_strap())
    src = source(STRAP, "heart_rate")
    await src.connect()
    try:
        batches = await collect(src, lambda b: count(b, "chest.rr") >= 12)
    finally:
        await src.close()

    hr = rows(batches, "chest.hr")
    rr = rows(batches, "chest.rr")
    battery = rows(batches, "chest.battery")
    assert battery[0][1] == (87.0,)
    # every rate and interval the strap sent arrives, in order
    sent = decoded_sent(strap, g.HEART_RATE_MEASUREMENT)
    assert [v[0] for _, v in hr] == [float(m.bpm) for m in sent[: len(hr)]]
    sent_rr = [r for m in sent for r in m.rr_ms]
    assert [v[0] for _, v in rr] == pytest.approx(sent_rr[: len(rr)])
    assert all(250 <= v[0] <= 2500 for _, v in rr)
    # units and names follow the CSV contract
    hr_batch = next(b for b in batches if b.stream == "chest.hr")
    assert hr_batch.channels == ("hr",) and hr_batch.units == ("bpm",)
    assert hr_batch.meta["location"] == "chest"
    assert hr_batch.meta["device"] == "EMU Strap"
    rr_batch = next(b for b in batches if b.stream == "chest.rr")
    assert rr_batch.units == ("ms",)
    # each RR row is stamped at its beat: non-decreasing, and the last of a notification
    # at the reception time of the heart rate that carried it
    rr_t = [t for t, _ in rr]
    assert rr_t == sorted(rr_t)
    hr_t = {t for t, _ in hr}
    assert any(t in hr_t for t in rr_t)
    assert src.counters.bad_packets == 0
    assert src.counters.samples == sum(len(b) for b in batches)
    assert src.describe()["battery"] == 87


async def test_link_drop_raises_transient_then_reconnect_resumes(bluez: BlueZEmulator) -> None:
    strap = bluez.add(fast_strap())
    src = source(STRAP, "heart_rate")
    await src.connect()
    first = await collect(src, lambda b: count(b, "chest.hr") >= 5)

    bluez.drop_link(STRAP)
    with pytest.raises(TransientSourceError, match="lost"):
        await collect(src, lambda b: False, within=10)
    await src.close()
    assert strap.stats["drops"] == 1

    await asyncio.sleep(0.3)
    await src.connect()
    try:
        second = await collect(src, lambda b: count(b, "chest.hr") >= 5)
    finally:
        await src.close()
    assert strap.stats["connects"] == 2
    # the gap shows on the time axis, in the counters and in status
    before = max(t for t, _ in rows(first, "chest.hr"))
    after = min(t for t, _ in rows(second, "chest.hr"))
    assert after - before >= 0.3
    assert src.counters.gaps == 1
    gap = src.describe()["last_gap"]
    assert before <= gap["from"] < gap["to"] <= after


async def test_malformed_notifications_and_rr_outliers_are_counted_and_dropped(
    bluez: BlueZEmulator,
) -> None:
    strap = bluez.add(fast_strap())
    src = source(STRAP, "heart_rate")
    await src.connect()
    try:
        await collect(src, lambda b: count(b, "chest.hr") >= 2)
        strap.faults.malformed = 6
        strap.faults.rr_outliers = 3
        batches = await collect(
            src,
            lambda b: strap.faults.malformed == 0 and strap.faults.rr_outliers == 0
            and count(b, "chest.hr") >= 15,
        )
    finally:
        await src.close()

    assert src.counters.bad_packets == 6
    info = src.describe()
    assert info["bad_packets_by_characteristic"] == {"Heart Rate Measurement (0x2A37)": 6}
    assert info["dropped"]["rr_out_of_range"] == 3
    assert src.counters.drops >= 3
    assert all(250 <= v[0] <= 2500 for _, v in rows(batches, "chest.rr"))
    # the source stayed up: rates kept flowing after the bad payloads
    assert count(batches, "chest.hr") >= 15


async def test_strap_without_skin_contact_reports_nothing(bluez: BlueZEmulator) -> None:
    strap = bluez.add(fast_strap())
    strap.contact = False
    src = source(STRAP, "heart_rate")
    await src.connect()
    try:
        await collect(src, lambda b: True)  # the battery read
        await asyncio.sleep(0.5)
        strap.contact = True
        batches = await collect(src, lambda b: count(b, "chest.hr") >= 1)
    finally:
        await src.close()
    assert src.describe()["dropped"]["no_contact"] >= 5
    assert count(batches, "chest.hr") >= 1


@pytest.mark.parametrize(
    ("error_name", "expected"),
    [
        ("org.bluez.Error.AuthenticationRejected", PairingRefused),
        ("org.bluez.Error.Failed", TransientSourceError),
    ],
)
async def test_refused_connection_maps_to_the_error_tree(
    bluez: BlueZEmulator, error_name: str, expected: type[Exception]
) -> None:
    strap = bluez.add(fast_strap())
    strap.faults.refuse = error_name
    src = source(STRAP, "heart_rate")
    with pytest.raises(expected) as err:
        await src.connect()
    assert err.value.exit_code == 6
    assert src._client is None
    assert strap.stats["refused"] >= 1
    assert not bluez.devices[STRAP].connected
    # once the device accepts again, the same source connects
    strap.faults.refuse = None
    await src.connect()
    await src.close()


async def test_a_connect_that_dies_mid_discovery_is_retried(bluez: BlueZEmulator) -> None:
    """bleak-retry-connector's retry inside connect(); the failed attempt is no lost link."""
    strap = bluez.add(fast_strap())
    strap.faults.flaky_connects = 1
    src = source(STRAP, "heart_rate")
    await src.connect()
    try:
        batches = await collect(src, lambda b: count(b, "chest.hr") >= 3)
    finally:
        await src.close()
    assert strap.stats["flaky"] == 1 and strap.stats["connects"] == 2
    assert src.counters.gaps == 0
    assert count(batches, "chest.hr") >= 3


async def test_unresponsive_device_times_out_without_stalling_others(
    bluez: BlueZEmulator,
) -> None:
    silent = bluez.add(fast_strap("C0:FF:EE:00:00:0A"), known=True)
    silent.faults.hang = True
    bluez.add(fast_strap(), known=True)
    stuck = source("C0:FF:EE:00:00:0A", "heart_rate", name="silent", connect_timeout_s=2)
    healthy = source(STRAP, "heart_rate")

    async def healthy_run() -> int:
        await healthy.connect()
        try:
            got = await collect(healthy, lambda b: count(b, "chest.hr") >= 10)
        finally:
            await healthy.close()
        return count(got, "chest.hr")

    stuck_result, healthy_count = await asyncio.gather(
        stuck.connect(), healthy_run(), return_exceptions=True
    )
    assert isinstance(stuck_result, DeviceNotFound)
    assert "did not answer" in str(stuck_result)
    assert healthy_count == 10 or healthy_count > 10
    assert not bluez.devices["C0:FF:EE:00:00:0A"].connected
    assert silent.stats["hung"] >= 1


async def test_device_not_advertising_is_not_found(bluez: BlueZEmulator) -> None:
    strap = bluez.add(fast_strap())
    strap.faults.present = False
    src = source(STRAP, "heart_rate", scan_timeout_s=0.5)
    with pytest.raises(DeviceNotFound, match="not advertising"):
        await src.connect()


async def test_missing_optional_characteristics_are_reported(bluez: BlueZEmulator) -> None:
    bluez.add(fast_strap(missing=["2a38", "2a19"]))
    src = source(STRAP, "heart_rate")
    await src.connect()
    try:
        batches = await collect(src, lambda b: count(b, "chest.hr") >= 3)
    finally:
        await src.close()
    assert src.describe()["missing"] == [
        "Body Sensor Location (0x2A38)", "Battery Level (0x2A19)"
    ]
    assert src.counters.extra["missing_characteristics"] == src.describe()["missing"]
    assert count(batches, "chest.battery") == 0
    assert "location" not in src.describe()


async def test_profile_without_its_measurement_is_refused(bluez: BlueZEmulator) -> None:
    bluez.add(fast_strap(missing=["2a37"]))
    src = source(STRAP, "heart_rate")
    with pytest.raises(PairingRefused, match="does not implement the heart_rate profile"):
        await src.connect()
    assert "Heart Rate Measurement (0x2A37)" in src.describe()["missing"]
    assert src._client is None
    assert not bluez.devices[STRAP].connected


async def test_pulse_oximeter_continuous_and_spot_check(bluez: BlueZEmulator) -> None:
    oxi = bluez.add(PulseOximeter(OXI, rate_hz=20))
    src = source(OXI, "pulse_oximeter", name="finger")
    await src.connect()
    try:
        first = await collect(src, lambda b: count(b, "finger.spo2") >= 5)
        bluez.send_spot_check(OXI)
        oxi.status = g.PLX_STATUS_INVALID  # the probe slipped: everything flagged invalid
        await asyncio.sleep(0.4)
        oxi.status = 0
        second = await collect(src, lambda b: count(b, "finger.spo2") >= 3)
    finally:
        await src.close()
    spo2 = rows(first + second, "finger.spo2")
    batch = next(b for b in first if b.stream == "finger.spo2")
    assert batch.channels == ("spo2", "hr") and batch.units == ("%", "bpm")
    assert all(90 <= v[0] <= 100 and 50 <= v[1] <= 80 for _, v in spo2)
    sent = [m for _, u, p in oxi.sent if u == g.PLX_SPOT_CHECK
            for m in [g.decode_plx_spot_check(p)]]
    assert len(sent) == 1
    assert (sent[0].spo2.value, sent[0].pulse_rate.value) in [v for _, v in spo2]
    assert src.describe()["dropped"]["spo2_invalid"] >= 3


async def test_thermometer_in_fahrenheit_reports_celsius(bluez: BlueZEmulator) -> None:
    bluez.add(Thermometer(THERMO, fahrenheit=True, rate_hz=10))
    src = source(THERMO, "thermometer", name="ear")
    await src.connect()
    try:
        batches = await collect(src, lambda b: count(b, "ear.temp") >= 3)
    finally:
        await src.close()
    temps = [v[0] for _, v in rows(batches, "ear.temp")]
    assert all(36.3 < t < 37.3 for t in temps)
    batch = next(b for b in batches if b.stream == "ear.temp")
    assert batch.units == ("degC",)
    assert batch.meta["site"] == "ear"


async def test_one_scan_runs_until_every_waiting_device_is_seen(bluez: BlueZEmulator) -> None:
    # two devices after a restart: the first source starts the scan, the second begins to
    # wait during it; the first's device comes into range 0.5 s later, the second's 0.5 s
    # after that. The scan keeps running for the second (a scan that stopped once its
    # starter's device was seen left the second to start another behind the scan lock)
    bluez.add(fast_strap())
    bluez.add(PulseOximeter(OXI, rate_hz=20))
    bluez.vanish(STRAP)
    bluez.vanish(OXI)
    first, second = source(STRAP, "heart_rate"), source(OXI, "pulse_oximeter", name="finger")
    try:
        connecting = asyncio.ensure_future(first.connect())
        while not bluez.stats["start_discovery"]:
            await asyncio.sleep(0.005)
        waiting = asyncio.ensure_future(second.connect())
        while OXI not in ble._scans().wanted:  # the second waits on the running scan
            await asyncio.sleep(0.005)
        bluez.appear(STRAP)
        await connecting
        await asyncio.sleep(0.5)
        bluez.appear(OXI)
        await asyncio.gather(connecting, waiting)
        assert bluez.stats["start_discovery"] == 1, bluez.stats
    finally:
        for s in (first, second):
            await s.close()


async def test_a_scan_that_cannot_start_fails_every_waiting_source(bluez: BlueZEmulator) -> None:
    # the adapter is off: the one scan cannot start, and each source waiting on it gets that
    # error to act on, not a "not advertising" after its whole scan timeout
    from edgetwin.errors import DeviceNotFound, SourceError

    bluez.add(fast_strap())
    bluez.add(PulseOximeter(OXI, rate_hz=20))
    bluez.adapter._powered = False
    sources = [source(STRAP, "heart_rate"), source(OXI, "pulse_oximeter", name="finger")]
    got = await asyncio.gather(*(s.connect() for s in sources), return_exceptions=True)
    for src, err in zip(sources, got, strict=True):
        assert isinstance(err, SourceError) and not isinstance(err, DeviceNotFound), got
        assert f"scanning for {src.address}" in str(err), err
        assert "Bluetooth is not available" in str(err) and "power the adapter on" in str(err)


async def test_three_devices_at_once_scan_connect_and_stream(bluez: BlueZEmulator) -> None:
    bluez.add(fast_strap())
    bluez.add(PulseOximeter(OXI, rate_hz=20))
    bluez.add(Thermometer(THERMO, rate_hz=20))
    sources = [
        source(STRAP, "heart_rate", name="chest"),
        source(OXI, "pulse_oximeter", name="finger"),
        source(THERMO, "thermometer", name="ear"),
    ]
    # none is known to BlueZ yet, so each connect needs a scan: the scans must not collide,
    # and the first one hands the others their devices (one scan each took a daemon's
    # straps 0.2 s more per strap to come back after a restart)
    await asyncio.gather(*(s.connect() for s in sources))
    assert bluez.stats["start_discovery"] == 1, bluez.stats  # one scan served all three
    try:
        results = await asyncio.gather(
            collect(sources[0], lambda b: count(b, "chest.hr") >= 5),
            collect(sources[1], lambda b: count(b, "finger.spo2") >= 5),
            collect(sources[2], lambda b: count(b, "ear.temp") >= 5),
        )
    finally:
        await asyncio.gather(*(s.close() for s in sources))
    streams = [{b.stream for b in r} for r in results]
    assert "chest.hr" in streams[0] and "chest.rr" in streams[0]
    assert "finger.spo2" in streams[1]
    assert "ear.temp" in streams[2]
    assert all(s.counters.bad_packets == 0 for s in sources)


async def test_acquire_notify_mode_reads_the_notification_socket(bluez: BlueZEmulator) -> None:
    strap = bluez.add(fast_strap())
    src = source(STRAP, "heart_rate", notify_mode="acquire")
    await src.connect()
    try:
        link = bluez._links[bluez.devices[STRAP].path]
        hrm = link.chars[g.HEART_RATE_MEASUREMENT]
        assert hrm.NotifyAcquired and not hrm.notifying
        batches = await collect(src, lambda b: count(b, "chest.hr") >= 10)
    finally:
        await src.close()
    sent = decoded_sent(strap, g.HEART_RATE_MEASUREMENT)
    assert [v[0] for _, v in rows(batches, "chest.hr")] == [float(m.bpm) for m in sent[:10]]


async def test_close_is_idempotent_and_safe_before_connect(bluez: BlueZEmulator) -> None:
    bluez.add(fast_strap())
    src = source(STRAP, "heart_rate")
    await src.close()
    await src.connect()
    await src.close()
    await src.close()
    assert not bluez.devices[STRAP].connected
    with pytest.raises(TransientSourceError, match="not connected"):
        await collect(src, lambda b: True, within=5)


async def test_no_bluez_on_the_bus_is_a_transient_error(private_bus) -> None:
    # the bus is up but nothing owns org.bluez (bluetoothd stopped)
    from tests.sources.ble_harness import release_bleak

    src = source(STRAP, "heart_rate", connect_timeout_s=10)
    try:
        with pytest.raises(TransientSourceError):
            await src.connect()
        with pytest.raises(TransientSourceError):
            await scan_ble(0.2)
    finally:
        await release_bleak()


def test_from_record_and_validation() -> None:
    from edgetwin.sources.registry import build_source

    src = build_source(
        "chest",
        {"kind": "ble", "address": "c0-ff-ee-00-00-01", "profile": "heart_rate",
         "device": "Polar H10", "notify_mode": "acquire"},
    )
    assert isinstance(src, BleSource)
    assert src.address == STRAP and src.profile.name == "heart_rate"
    assert src.device_name == "Polar H10" and src.notify_mode == "acquire"
    assert src.kind == "ble"
    with pytest.raises(ValueError, match="not a Bluetooth address"):
        BleSource.from_record("x", {"kind": "ble", "address": "nope", "profile": "heart_rate"})
    with pytest.raises(ValueError, match="unknown BLE profile"):
        BleSource.from_record("x", {"kind": "ble", "address": STRAP, "profile": "scale"})
    assert "address" not in str(src.describe())  # status never shows the address
    legacy = {"kind": "ble", "address": STRAP, "profile": "heart_rate", "name": "H7"}
    assert BleSource.from_record("x", legacy).device_name == "H7"


def test_parsing_stamps_rr_back_from_reception() -> None:
    """The arithmetic without a radio: RR rows end at beats counted back from reception."""
    src = BleSource("s", STRAP, "heart_rate")
    payload = g.encode_heart_rate(
        g.HeartRateMeasurement(bpm=70, rr_raw=(1024, 200, 512), contact_supported=True,
                               contact_detected=True)
    )
    batches = {b.stream: b for b in src._to_batches([(100.0, g.HEART_RATE_MEASUREMENT, payload)])}
    assert batches["s.hr"].t.tolist() == [100.0]
    # 200/1024 s = 195 ms is out of range: dropped, but it still occupies its time slot
    assert batches["s.rr"].t.tolist() == [100.0 - 0.5 - 200 / 1024, 100.0]
    assert batches["s.rr"].values[:, 0].tolist() == [1000.0, 500.0]
    assert src.describe()["dropped"] == {"rr_out_of_range": 1}
    # a later notification received a little earlier than the previous beat stays ordered
    later = g.encode_heart_rate(g.HeartRateMeasurement(bpm=70, rr_raw=(1024,)))
    again = {b.stream: b for b in src._to_batches([(99.9, g.HEART_RATE_MEASUREMENT, later)])}
    assert again["s.rr"].t.tolist() == [100.0]


def test_parsing_special_values_and_implausible_readings() -> None:
    src = BleSource("o", OXI, "pulse_oximeter")
    nres = g.SFloat.of_special(g.Special.NRES)
    events = [
        (1.0, g.PLX_CONTINUOUS, g.encode_plx_continuous(g.PlxContinuous(nres, g.SFloat(61, 0)))),
        (2.0, g.PLX_CONTINUOUS, g.encode_plx_continuous(
            g.PlxContinuous(g.SFloat.of_special(g.Special.POS_INF), nres))),
        (3.0, g.PLX_CONTINUOUS, b"\x00\x61"),
        (4.0, g.BATTERY_LEVEL, b"\x32"),
    ]
    out = {b.stream: b for b in src._to_batches(events)}
    spo2 = out["o.spo2"].values
    assert spo2.shape == (1, 2) and math.isnan(spo2[0, 0]) and spo2[0, 1] == 61.0
    assert out["o.battery"].values.tolist() == [[50.0]]
    assert src.counters.bad_packets == 1
    assert src.describe()["dropped"] == {"spo2_invalid": 1}
    thermo = BleSource("t", THERMO, "thermometer")
    hot = g.encode_temperature(g.TemperatureMeasurement(g.Float32(600, -1)))
    assert thermo._to_batches([(1.0, g.TEMPERATURE_MEASUREMENT, hot)]) == []
    assert thermo.describe()["dropped"] == {"temp_implausible": 1}
