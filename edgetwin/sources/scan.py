"""Find sensors nearby: BLE health devices, serial bridges, particulate sensors, BrainFlow
dongles; for each, a row for people and the ``edgetwin pair add`` command that pairs it.

Used by ``edgetwin pair scan`` and the dashboard's Devices page. A transport that cannot scan
here (no Bluetooth adapter, a build without the driver) adds a note instead of failing the rest.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterable
from typing import Any

from edgetwin.errors import EdgetwinError

HEADINGS = ("transport", "address", "name", "what", "pair with")


def scan_all(
    timeout: float = 5.0, *, ble: bool = True, skip_ports: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """(devices, notes). ``skip_ports``: serial ports not to probe (paired, held by the
    daemon). Blocking: run it in a thread from an event loop."""
    found: list[dict[str, Any]] = []
    notes: list[str] = []
    if ble:
        found += _scan("ble", "edgetwin.sources.ble", "scan_ble", notes, timeout=timeout)
    skip = set(skip_ports)
    serial_found = [dev for dev in _scan("serial", "edgetwin.sources.serial", "scan_ports", notes)
                    if dev.get("port") not in skip]
    # particulate sensors on USB-UART cables: probed only where no bridge answered
    _scan_air(serial_found, notes)
    found += serial_found
    found += _scan("brainflow", "edgetwin.sources.brainflow", "scan_dongles", notes)
    return found, notes


def scan_table(found: list[dict[str, Any]]) -> list[str]:
    """``pair scan`` for people: one aligned row per device and the command that pairs it."""
    if not found:
        return ["nothing found"]
    rows = [describe(dev) for dev in found]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADINGS[:-1])]
    return [
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row, [*widths, 0], strict=True)).rstrip()
        for row in [HEADINGS, *rows]
    ]


def describe(dev: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(transport, address, name, what, pair command or '-') of one found device."""
    transport = str(dev.get("transport", ""))
    if transport == "ble":
        profiles = list(dev.get("profiles") or [])
        what = ", ".join(profiles) or "no health profile"
        if "bthome" in profiles:  # what one decoded advert carried
            what += (" (encrypted: needs --bind-key)" if dev.get("encrypted")
                     else f": {', '.join(dev.get('measures') or []) or 'no readings'}")
        if dev.get("rssi") is not None:
            what += f" ({dev['rssi']} dBm)"
        cmd = (f"edgetwin pair add ble {dev['address']} --profile {profiles[0]}"
               if profiles else "-")
        return transport, str(dev["address"]), str(dev.get("name") or "-"), what, cmd
    port = str(dev.get("port", ""))
    name = str(dev.get("description") or dev.get("manufacturer") or "-")
    if transport == "brainflow":
        boards = list(dev.get("boards") or [])
        what = f"BrainFlow dongle for {', '.join(boards)}" if boards else "BrainFlow dongle"
        cmd = (f"edgetwin pair add brainflow --board {boards[0]} --serial-port {port}"
               if boards else "-")
        return transport, port, name, what, cmd
    air = dev.get("air")
    if isinstance(air, dict):
        sensor = str(air.get("sensor"))
        what = f"{sensor.upper()} particulate sensor"
        return transport, port, name, what, f"edgetwin pair add serial {port} --sensor {sensor}"
    bridge = dev.get("bridge")
    if isinstance(bridge, dict):
        what = (f"edgetwin bridge {bridge.get('model', '?')}, {bridge.get('channels', '?')} "
                f"channels at {bridge.get('rate_hz', 0):g} Hz")
        return transport, port, name, what, f"edgetwin pair add serial {port}"
    what = (f"USB {dev['vid_pid']}, no bridge answered" if dev.get("vid_pid")
            else "built-in serial port (not probed)")
    return transport, port, name, what, "-"


def _scan_air(serial_found: list[dict[str, Any]], notes: list[str]) -> None:
    try:
        from edgetwin.sources.particulate import detect_air_sensors
    except ImportError:
        notes.append("particulate sensors: detection is not available in this build")
        return
    try:
        detect_air_sensors(serial_found)
    except EdgetwinError as exc:
        notes.append(f"particulate sensors: {exc}")


def _scan(
    transport: str, module: str, func: str, notes: list[str], **kwargs: Any
) -> list[dict[str, Any]]:
    try:
        scan = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        notes.append(f"{transport}: scanning is not available in this build")
        return []
    try:
        result = scan(**kwargs)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except EdgetwinError as exc:
        notes.append(f"{transport}: {exc}")
        return []
    return [{"transport": transport, **dev} for dev in result]
