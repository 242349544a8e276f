"""Environmental Sensing (0x181A) over GATT: the 'environmental' profile of BleSource, through
bleak's real BlueZ backend against the emulated BlueZ; and the pure codec."""

from __future__ import annotations

import math

import pytest

from edgetwin.sources import gatt as g
from edgetwin.sources.ble import PROFILES, BleSource, scan_ble
from tests.sources import ble_harness
from tests.sources.ble_harness import collect, rows
from tests.sources.bluez_emulator import BlueZEmulator, EnvironmentalSensor

pytestmark = pytest.mark.timeout(90)

private_bus = ble_harness.private_bus
bluez = ble_harness.bluez

ESS = "C0:FF:EE:00:0E:55"


def test_codec_round_trips_and_rejects() -> None:
    assert g.decode_ess_temperature(g.encode_ess_temperature(-12.34)) == pytest.approx(-12.34)
    assert g.decode_ess_temperature(b"\x00\x80") is None  # 0x8000: value unknown
    assert g.decode_ess_humidity(g.encode_ess_humidity(55.5)) == pytest.approx(55.5)
    assert g.decode_ess_pressure((1013250).to_bytes(4, "little")) == pytest.approx(1013.25)
    with pytest.raises(g.GattMalformed, match=r"Humidity \(0x2A6F\).*above 100"):
        g.decode_ess_humidity((10001).to_bytes(2, "little"))
    with pytest.raises(g.GattMalformed, match=r"Pressure \(0x2A6D\).*truncated"):
        g.decode_ess_pressure(b"\x01\x02\x03")
    with pytest.raises(g.GattMalformed, match="unexpected byte"):
        g.decode_ess_temperature(b"\x01\x02\x03")


async def test_ess_values_over_gatt_notified_and_polled(bluez: BlueZEmulator) -> None:
    sensor = bluez.add(EnvironmentalSensor(ESS, "Room", celsius=23.45, humidity=38.5,
                                           hpa=997.3, rate_hz=5))
    src = BleSource("office", ESS, "environmental", connect_timeout_s=15, scan_timeout_s=3,
                    read_interval_s=0.3)
    await src.connect()
    try:
        got = await collect(src, lambda b: sum(
            1 for _, v in rows(b, "office.climate") if not math.isnan(v[2])) >= 3)
        assert isinstance(sensor, EnvironmentalSensor)
        sensor.celsius = 25.0  # the next notification carries it
        later = await collect(src, lambda b: any(v[0] == 25.0 for _, v in
                                                 rows(b, "office.climate")))
    finally:
        await src.close()
    climate = rows(got, "office.climate")
    assert {b.channels for b in got if b.stream == "office.climate"} == {
        ("temp", "humidity", "pressure")}
    temps = [v[0] for _, v in climate if not math.isnan(v[0])]
    hums = [v[1] for _, v in climate if not math.isnan(v[1])]
    pres = [v[2] for _, v in climate if not math.isnan(v[2])]
    assert temps and all(t == pytest.approx(23.45) for t in temps)
    assert hums and all(h == pytest.approx(38.5) for h in hums)
    # pressure cannot notify: it was read at connect and then every read_interval_s
    assert len(pres) >= 3 and all(p == pytest.approx(997.3) for p in pres)
    assert src.counters.extra["polled"] == ["Pressure (0x2A6D)"]
    assert any(v[0] == 25.0 for _, v in rows(later, "office.climate"))
    assert rows(got, "office.battery")[0][1] == (87.0,)


async def test_scan_lists_ess_devices(bluez: BlueZEmulator) -> None:
    bluez.add(EnvironmentalSensor(ESS, "Room"))
    found = {r["address"]: r for r in await scan_ble(0.5)}
    assert found[ESS]["profiles"] == ["environmental"]
    assert PROFILES["environmental"].service == g.ENVIRONMENTAL_SENSING_SERVICE
