"""BTHome adverts: decode time per advert and the CPU of the shared scanner with 20 devices.

``run(quick)`` prints/returns JSON:

- ``decode_plain_us`` / ``decode_encrypted_us``: ``BTHomeDecoder.decode`` per advert (our
  filters + building the service info + bthome-ble's parse), median/p99 in microseconds,
  against ``baseline_*``: bthome-ble's own ``BTHomeBluetoothDeviceData.update`` on the same
  adverts (service info built beforehand), in the same run; ``ratio`` = ours / baseline.
- ``cpu_20_devices_1hz`` (per BlueZ report interval): 20 BTHome v2 devices (half encrypted)
  advertising a new packet at 1 Hz, the emulated BlueZ in a child process (its CPU is not
  ours), one ``AdvertScanner`` through bleak's real BlueZ backend on a private dbus-daemon and
  20 ``BTHomeSource`` streams drained: share of one core this process uses over 1-s windows
  (median/p99), against an idle loop measured the same way. ``report_interval_0.2`` has BlueZ
  report each device 5 times a second (4 repeats the sources drop as duplicates);
  ``report_interval_1.0`` one report per new packet.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.sources.bthome import (
    BTHOME_V2_UUID,
    Advert,
    BTHomeDecoder,
    BTHomeSource,
    _service_info,
)
from tests.sources.bluez_emulator import (
    EmulatorProcess,
    PrivateBus,
    bthome_objects,
    encode_bthome_v2,
    release_bleak,
)

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "A4:C1:38:00:00:01"


def run(quick: bool) -> dict[str, Any]:
    """Decode micro-benchmark and the 20-device CPU share."""
    n = 5_000 if quick else 50_000
    windows = 5 if quick else 30
    results: dict[str, Any] = {}
    for label, key in (("plain", None), ("encrypted", KEY)):
        ours, base = _decode(n, key)
        results[f"decode_{label}_us"] = ours
        results[f"baseline_bthome_ble_update_{label}_us"] = base
        results[f"decode_{label}_ratio"] = ours["median"] / base["median"]
    old_env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    cpu: dict[str, Any] = {}
    with PrivateBus() as bus:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        try:
            for interval in (0.2, 1.0):
                cpu[f"report_interval_{interval}"] = asyncio.run(
                    _twenty(bus.address, windows, interval))
        finally:
            if old_env is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = old_env
    results["cpu_20_devices_1hz"] = cpu
    return results


def _adverts(n: int, key: bytes | None) -> list[Advert]:
    t0 = time.time()
    out = []
    for i in range(n):
        objects = bthome_objects(packet_id=(i + 1) % 256, battery=87, celsius=21.0 + i % 50 / 10,
                                 humidity=45.5, hpa=1012.3)
        raw = encode_bthome_v2(objects, bind_key=key, mac=MAC, counter=i + 1)
        out.append(Advert(t0 + i, MAC, "bench", -60, {BTHOME_V2_UUID: raw}))
    return out


def _decode(n: int, key: bytes | None) -> tuple[dict[str, float], dict[str, float]]:
    from bthome_ble import BTHomeBluetoothDeviceData

    adverts = _adverts(n, key)
    decoder = BTHomeDecoder(MAC, key)
    ours: list[int] = []
    for adv in adverts:
        t0 = time.perf_counter_ns()
        reading = decoder.decode(adv)
        ours.append(time.perf_counter_ns() - t0)
        if reading is None or reading.values["humidity"] != 45.5:
            raise RuntimeError(f"advert not decoded as sent: {reading}")
    infos = [_service_info(a, BTHOME_V2_UUID, a.service_data[BTHOME_V2_UUID]) for a in adverts]
    parser = BTHomeBluetoothDeviceData(bindkey=key)
    base: list[int] = []
    for info in infos:
        t0 = time.perf_counter_ns()
        parser.update(info)
        base.append(time.perf_counter_ns() - t0)
    return _stats_us(ours), _stats_us(base)


def _stats_us(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)
    return {"median": statistics.median(ns) / 1000, "p99": ns[int(0.99 * (len(ns) - 1))] / 1000,
            "n": len(ns)}


async def _twenty(address: str, windows: int, interval: float) -> dict[str, Any]:
    idle = statistics.median(await _cpu_windows(windows))
    addresses = [f"A4:C1:38:00:02:{i:02X}" for i in range(20)]
    devices = [f"bthome:{a}:T{i}" for i, a in enumerate(addresses)]
    keys = {a: KEY.hex() for i, a in enumerate(addresses) if i % 2}
    with EmulatorProcess(address, devices, rate_hz=1.0, bthome_keys=keys,
                         advert_interval=interval):
        sources = [BTHomeSource(f"room{i}", a, bind_key=KEY if i % 2 else None)
                   for i, a in enumerate(addresses)]
        for src in sources:
            await src.connect()

        async def drain(src: BTHomeSource) -> None:
            async for _batch in src.stream():
                pass

        tasks = [asyncio.get_running_loop().create_task(drain(s)) for s in sources]
        try:
            await asyncio.sleep(2.0)  # all exported and advertising
            rows0 = sum(s.counters.samples for s in sources)
            drops0 = sum(s.counters.drops for s in sources)
            scanner = sources[0]._scanner
            assert scanner is not None
            reports0 = scanner.adverts
            started = time.perf_counter()
            shares = await _cpu_windows(windows)
            elapsed = time.perf_counter() - started
            rows = sum(s.counters.samples for s in sources) - rows0
            drops = sum(s.counters.drops for s in sources) - drops0
            reports = scanner.adverts - reports0
            mode = scanner.mode
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for src in sources:
                await src.close()
            await release_bleak()
    shares.sort()
    return {
        "median": statistics.median(shares),
        "p99": shares[int(0.99 * (len(shares) - 1))],
        "unit": "% of one core",
        "idle_loop_median": idle,
        "scan_mode": mode,
        "bluez_reports_per_s": reports / elapsed,
        "rows_per_s": rows / elapsed,
        "dropped_per_s": drops / elapsed,
        "windows": len(shares),
    }


async def _cpu_windows(windows: int, window_s: float = 1.0) -> list[float]:
    shares: list[float] = []
    for _ in range(windows):
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        shares.append(100.0 * (time.process_time() - c0) / (time.perf_counter() - w0))
    return shares


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
