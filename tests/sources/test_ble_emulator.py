"""The harness itself: what bleak sees of the emulated BlueZ, and the supervisor on top of it."""

from __future__ import annotations

import asyncio
import random

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDBusError

from edgetwin.daemon.backoff import Backoff, SourceState
from edgetwin.daemon.hub import Hub
from edgetwin.daemon.runner import SourceRunner
from edgetwin.sources import gatt as g
from edgetwin.sources.ble import BleSource
from tests.sources import ble_harness
from tests.sources.bluez_emulator import (
    BlueZEmulator,
    HeartRateStrap,
    PrivateBus,
    PulseOximeter,
    device_path,
)

pytestmark = pytest.mark.timeout(90)

private_bus = ble_harness.private_bus
bluez = ble_harness.bluez
STRAP = "C0:FF:EE:00:00:01"


async def test_bleak_sees_blueZ_paths_handles_and_descriptors(bluez: BlueZEmulator) -> None:
    bluez.add(PulseOximeter(STRAP))
    device = await BleakScanner.find_device_by_address(STRAP, timeout=5)
    assert device is not None
    assert device.details["path"] == device_path(STRAP) == "/org/bluez/hci0/dev_C0_FF_EE_00_00_01"
    async with BleakClient(device, timeout=10) as client:
        chars = {c.uuid: c for s in client.services for c in s.characteristics}
        assert {g.PLX_CONTINUOUS, g.PLX_SPOT_CHECK, g.BATTERY_LEVEL} <= set(chars)
        for char in chars.values():
            # bleak derives the handle from the last four hex digits of the object path
            assert char.obj[0].startswith(device_path(STRAP) + "/service")
            assert char.handle == int(char.obj[0][-4:], 16)
        assert chars[g.PLX_SPOT_CHECK].properties == ["indicate"]
        (cccd,) = chars[g.PLX_CONTINUOUS].descriptors
        assert cccd.uuid == g.CCCD
        assert await client.read_gatt_descriptor(cccd) == b"\x00\x00"
        assert await client.read_gatt_char(chars[g.BATTERY_LEVEL]) == b"\x57"
        name = await client.read_gatt_char(chars[g.uuid16(0x2A29)])
        assert g.decode_string(name) == "edgetwin emulator"


async def test_one_discovery_session_per_client_like_bluetoothd(bluez: BlueZEmulator) -> None:
    """Why BleSource serialises scans: bleak shares one D-Bus client per event loop."""
    bluez.add(HeartRateStrap(STRAP))
    first = BleakScanner()
    await first.start()
    try:
        with pytest.raises(BleakDBusError) as err:
            await BleakScanner().start()
        assert err.value.dbus_error == "org.bluez.Error.InProgress"
    finally:
        await first.stop()
    # once the first session ended a new one starts fine
    assert await BleakScanner.find_device_by_address(STRAP, timeout=5) is not None


def test_private_bus_leaves_no_process_behind() -> None:
    bus = PrivateBus()
    bus.start()
    proc = bus._proc
    assert proc is not None and proc.poll() is None
    bus.stop()
    assert proc.poll() is not None
    bus.stop()  # idempotent


async def test_supervisor_reconnects_a_dropped_strap_and_contains_a_silent_one(
    bluez: BlueZEmulator,
) -> None:
    """The daemon's SourceRunner on BleSource: drop -> backoff -> streaming again, while a
    device that never answers keeps backing off without holding up the healthy one."""
    strap = bluez.add(HeartRateStrap(STRAP, rate_hz=10, model_seconds=0.5))
    silent = bluez.add(HeartRateStrap("C0:FF:EE:00:00:0A", rate_hz=10), known=True)
    silent.faults.hang = True
    hub = Hub(queue_batches=64)
    queue = hub.subscribe("test")

    def runner(src: BleSource, seed: int) -> SourceRunner:
        backoff = Backoff(initial_s=0.2, max_s=0.5, rng=random.Random(seed))
        return SourceRunner(src, hub, watchdog_s=5.0, backoff=backoff)

    good = runner(BleSource("chest", STRAP, "heart_rate", connect_timeout_s=10), 1)
    stuck = runner(BleSource("silent", "C0:FF:EE:00:00:0A", "heart_rate",
                             connect_timeout_s=0.8), 2)
    tasks = [asyncio.create_task(r.run()) for r in (good, stuck)]

    async def until(pred, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while not pred():
                await asyncio.sleep(0.05)

    try:
        await until(lambda: good.samples >= 10)
        bluez.drop_link(STRAP)
        await until(lambda: good.failures >= 1)
        assert "lost" in (good.last_error or "")
        await until(lambda: good.connects >= 2 and good.state == SourceState.STREAMING)
        before = good.samples
        await until(lambda: good.samples >= before + 10)
        await until(lambda: stuck.failures >= 2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.close()
    assert stuck.connects == 0
    assert "did not answer" in (stuck.last_error or "")
    assert silent.stats["hung"] >= 2
    status = good.status()
    assert status["gaps"] == 1 and status["kind"] == "ble"
    assert status["last_gap"]["to"] > status["last_gap"]["from"]
    assert strap.stats["connects"] == 2
    assert len(queue) > 0
