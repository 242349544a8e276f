"""``edgetwin pair add serial PORT [--sensor S] [--baud N] [--name N]``: register a serial device.

Without ``--sensor`` the device is a firmware bridge; with ``--sensor
pms5003|sds011|sps30`` it is a particulate sensor (record kind
``particulate``, stream ``NAME.air``), probed with its own protocol.

The record it stores is what ``SerialSource.from_record`` reads::

    {"kind": "serial", "port": "/dev/serial/by-id/usb-edgetwin_diy-fnirs-if00",
     "baud": 115200, "model": "diy-fnirs-2wl", "device_id": "diy-fnirs-0001"}

A ``/dev/ttyACM*`` path is stored as its ``/dev/serial/by-id`` alias when udev
made one, so the pairing survives replugging into another USB socket. Unless
``--no-probe`` is given, the port is asked to DESCRIBE itself first.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, pass_app
from edgetwin.errors import DeviceNotFound, UsageError
from edgetwin.sources.serial import DEFAULT_BAUD
from edgetwin.types import channel_kind

__all__ = [
    "AIR_SENSORS",
    "build_air_record",
    "build_serial_record",
    "default_serial_name",
    "serial_add",
    "serial_stream_name",
    "stable_port_path",
]

BY_ID_DIR = Path("/dev/serial/by-id")
_MAX_BAUD = 12_000_000
AIR_SENSORS = ("pms5003", "sds011", "sps30")  # edgetwin.sources.particulate_protocol.SENSORS


def build_serial_record(
    port: str, baud: int = DEFAULT_BAUD, probe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The pairing record of a serial bridge; ``UsageError`` if the port or baud is unusable."""
    port = port.strip()
    if not port:
        raise UsageError("the serial port is empty", hint="e.g. /dev/ttyACM0 or socket://host:port")
    if "://" in port:
        scheme = port.split("://", 1)[0]
        if scheme not in ("socket", "rfc2217", "loop", "spy"):
            raise UsageError(
                f"serial URL scheme {scheme!r} is not supported",
                hint="use a device path, socket://HOST:PORT or rfc2217://HOST:PORT",
            )
    elif not port.startswith("/"):
        raise UsageError(f"serial port {port!r} is not an absolute path",
                         hint="e.g. /dev/ttyACM0; 'edgetwin pair scan' lists ports")
    if isinstance(baud, bool) or not 50 <= baud <= _MAX_BAUD:
        raise UsageError(f"baud rate {baud} is out of range",
                         hint="USB CDC ignores it; for a UART bridge use the firmware's rate")
    record: dict[str, Any] = {"kind": "serial", "port": port, "baud": baud}
    if probe:
        record["model"] = str(probe.get("model", ""))
        record["device_id"] = str(probe.get("device_id", ""))
    return record


def build_air_record(
    port: str,
    sensor: str,
    baud: int | None = None,
    working_period_min: int = 1,
    probe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pairing record of a particulate sensor; ``UsageError`` for a bad value."""
    if sensor not in AIR_SENSORS:
        raise UsageError(f"unknown particulate sensor {sensor!r}",
                         hint=f"--sensor takes one of {', '.join(AIR_SENSORS)}")
    base = build_serial_record(port, baud if baud is not None else 9600)
    if sensor != "sds011" and working_period_min != 1:
        raise UsageError(f"--working-period applies to the SDS011 only, not the {sensor}")
    if not 0 <= working_period_min <= 30:
        raise UsageError(f"SDS011 working period {working_period_min} is not 0..30 minutes",
                         hint="0 reads continuously (laser always on); 1..30 sleeps between")
    record: dict[str, Any] = {"kind": "particulate", "port": base["port"], "sensor": sensor}
    if baud is not None:
        record["baud"] = baud
    if sensor == "sds011":
        record["working_period_min"] = working_period_min
    for key in ("device_id", "serial_number"):
        if probe and probe.get(key):
            record[key] = str(probe[key])
    return record


def stable_port_path(port: str, by_id_dir: Path = BY_ID_DIR) -> str:
    """``port``'s ``/dev/serial/by-id`` alias if one points at it, else ``port`` unchanged."""
    if "://" in port:
        return port
    try:
        target = os.path.realpath(port)
        aliases = sorted(by_id_dir.iterdir())
    except OSError:
        return port
    for alias in aliases:
        if alias.is_symlink() and os.path.realpath(alias) == target and str(alias) != port:
            return str(alias)
    return port


def default_serial_name(existing: set[str] | frozenset[str] = frozenset()) -> str:
    """``bridge``, ``bridge-2``, ... whichever is free (it prefixes the stream name)."""
    name, i = "bridge", 2
    while name in existing:
        name = f"bridge-{i}"
        i += 1
    return name


def serial_stream_name(name: str, channel_names: list[str]) -> str:
    """The stream a bridge with these channels feeds: ``NAME.<kind>`` or ``NAME.bridge``."""
    kinds = {channel_kind(c) for c in channel_names}
    return f"{name}.{kinds.pop()}" if len(kinds) == 1 else f"{name}.bridge"


@click.command("serial")
@click.argument("port")
@click.option("--sensor", type=click.Choice(AIR_SENSORS),
              help="A particulate sensor instead of a firmware bridge (stream NAME.air).")
@click.option("--working-period", "working_period", type=click.IntRange(0, 30), default=1,
              show_default=True,
              help="SDS011: minutes between readings; its laser sleeps in between (0: always on).")
@click.option("--baud", type=int, default=None,
              help=f"Baud rate [default: {DEFAULT_BAUD}; a sensor's own rate with --sensor] "
              "(ignored by USB CDC; matters behind a UART bridge).")
@click.option("--name", help="Source name (stream NAME.<kind>) [default: bridge, or the sensor].")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Ask the device to describe itself before saving.")
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="Seconds to wait for the device's descriptor.")
@pass_app
def serial_add(
    app: AppContext,
    port: str,
    sensor: str | None,
    working_period: int,
    baud: int | None,
    name: str | None,
    probe: bool,
    timeout: float,
) -> None:
    """Register a USB-serial firmware bridge (DIY fNIRS, PPG, EDA rigs) or particulate sensor."""
    if sensor is not None:
        _air_add(app, port, sensor, working_period, baud, name, probe, timeout)
        return
    baud = DEFAULT_BAUD if baud is None else baud
    build_serial_record(port, baud)  # validate before touching the port
    port = stable_port_path(port.strip())
    missing = "://" not in port and not Path(port).exists()  # URLs (socket://) are not files
    if missing and probe:
        raise DeviceNotFound(
            f"no such device: {port}",
            hint="plug it in and check the name ('edgetwin pair scan' lists serial ports), "
            "or pass --no-probe to register it for later",
        )
    if missing and not app.as_json:
        click.echo(f"note: {port} does not exist now; the daemon waits for it to appear",
                   err=True)
    info: dict[str, Any] | None = None
    if probe:
        from edgetwin.sources.serial import probe_port

        info = probe_port(port, baud, timeout_s=timeout)
        if info is None:
            raise DeviceNotFound(
                f"no edgetwin bridge answered on {port} within {timeout:g} s",
                hint="plug it in, check the firmware and --baud, "
                "or pass --no-probe to register it anyway",
            )
    record = build_serial_record(port, baud, info)
    pair = _pair_module()
    if name is None:
        name = default_serial_name(_existing_names(pair, app))
    pair.save_pairing(app, name, record)
    if not app.as_json:
        if info is not None and info.get("channel_names"):
            click.echo(f"stream: {serial_stream_name(name, info['channel_names'])} "
                       f"({len(info['channel_names'])} channels at {info['rate_hz']:g} Hz)")
        else:
            click.echo(f"stream: {name}.<kind> (from the device's channels once connected)")


def _air_add(
    app: AppContext,
    port: str,
    sensor: str,
    working_period: int,
    baud: int | None,
    name: str | None,
    probe: bool,
    timeout: float,
) -> None:
    build_air_record(port, sensor, baud, working_period)  # validate before touching the port
    port = stable_port_path(port.strip())
    missing = "://" not in port and not Path(port).exists()
    if missing and probe:
        raise DeviceNotFound(
            f"no such device: {port}",
            hint="plug the sensor in and check the name ('edgetwin pair scan' lists serial "
            "ports), or pass --no-probe to register it for later",
        )
    info: dict[str, Any] | None = None
    if probe:
        from edgetwin.sources.particulate import probe_air_sensor

        info = probe_air_sensor(port, listen_s=timeout, sensors=(sensor,))
        if info is None:
            found = probe_air_sensor(port, listen_s=min(timeout, 1.5))
            other = f" (it answers as a {found['sensor']})" if found else ""
            raise DeviceNotFound(
                f"no {sensor} answered on {port} within {timeout:g} s{other}",
                hint="check the cable and power and --sensor, "
                "or pass --no-probe to register it anyway",
            )
    record = build_air_record(port, sensor, baud, working_period, info)
    pair = _pair_module()
    if name is None:
        existing = _existing_names(pair, app)
        name, i = sensor, 2
        while name in existing:
            name, i = f"{sensor}-{i}", i + 1
    pair.save_pairing(app, name, record)
    if not app.as_json:
        extra = (f", working period {working_period} min" if sensor == "sds011" else "")
        click.echo(f"stream: {name}.air ({sensor}{extra})")


def _pair_module() -> Any:
    # Imported at call time: pair.py imports this module to register the command.
    return importlib.import_module("edgetwin.cli.pair")


def _existing_names(pair: Any, app: AppContext) -> set[str]:
    paired_names = getattr(pair, "paired_names", None)
    return set(paired_names(app)) if paired_names is not None else set()
