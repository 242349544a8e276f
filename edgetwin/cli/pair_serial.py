"""``edgetwin pair add serial PORT [--baud N] [--name NAME]``: register a firmware bridge.

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
    "build_serial_record",
    "default_serial_name",
    "serial_add",
    "serial_stream_name",
    "stable_port_path",
]

BY_ID_DIR = Path("/dev/serial/by-id")
_MAX_BAUD = 12_000_000


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
@click.option("--baud", type=int, default=DEFAULT_BAUD, show_default=True,
              help="Baud rate (ignored by USB CDC; matters behind a UART bridge).")
@click.option("--name", help="Source name (stream NAME.<kind>) [default: bridge].")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Ask the device to describe itself before saving.")
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="Seconds to wait for the device's descriptor.")
@pass_app
def serial_add(
    app: AppContext, port: str, baud: int, name: str | None, probe: bool, timeout: float
) -> None:
    """Register a USB-serial firmware bridge (DIY fNIRS, PPG, EDA rigs)."""
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


def _pair_module() -> Any:
    # Imported at call time: pair.py imports this module to register the command.
    return importlib.import_module("edgetwin.cli.pair")


def _existing_names(pair: Any, app: AppContext) -> set[str]:
    paired_names = getattr(pair, "paired_names", None)
    return set(paired_names(app)) if paired_names is not None else set()
