"""``edgetwin pair add gpsd [--host H] [--port P]``: pair the location from a gpsd daemon.

gpsd is asked for its VERSION banner and its DEVICES report first (``--timeout``):
nothing answering is ``DeviceNotFound`` (exit 6), something that is not gpsd is
refused. The record is what ``GpsdSource.from_record`` reads (see
``edgetwin.sources.gpsd``); how coarse the location is stored is the person's
``[location]`` config, not the pairing's.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import UsageError

__all__ = ["gpsd_add", "probe_gpsd"]


def probe_gpsd(host: str, port: int, timeout: float) -> dict[str, Any]:
    """gpsd's release and attached devices (paths only counted); SourceError if not gpsd."""
    from edgetwin.sources.gpsd import GpsdSource

    async def probe() -> dict[str, Any]:
        source = GpsdSource("probe", host, port, connect_timeout_s=timeout)
        await source.connect()
        try:
            devices = await source.devices(timeout)
        finally:
            await source.close()
        return {"release": source.counters.extra.get("gpsd_release"), "devices": devices}

    return asyncio.run(probe())


@click.command("gpsd")
@click.option("--host", default="127.0.0.1", show_default=True, help="gpsd's address.")
@click.option("--port", type=int, default=2947, show_default=True, help="gpsd's TCP port.")
@click.option("--as", "source_name", help="Source name in the twin [default: gpsd].")
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="Seconds to wait for gpsd's greeting.")
@json_option
@pass_app
def gpsd_add(
    app: AppContext, host: str, port: int, source_name: str | None, timeout: float
) -> None:
    """Register gpsd as the twin's location source (stored coarsened: see [location])."""
    if not host.strip():
        raise UsageError("--host is empty", hint="e.g. --host 127.0.0.1")
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not in 1..65535", hint="gpsd listens on 2947")
    if not timeout > 0:
        raise UsageError(f"--timeout {timeout:g} must be greater than 0")
    found = probe_gpsd(host, port, timeout)
    pair = importlib.import_module("edgetwin.cli.pair")  # it imports this module lazily
    if source_name is None:
        source_name = pair.default_name("gpsd", set(pair.paired_names(app)))
    pair.save_pairing(app, source_name, {"kind": "gpsd", "host": host, "port": port},
                      quiet=True)
    stream = f"{source_name}.location"
    if app.as_json:
        emit_json({"name": source_name, "kind": "gpsd", "stream": stream,
                   "channels": ["lat", "lon", "place", "homedist"], "gpsd": found})
        return
    devices = found["devices"]
    click.echo(f"paired {source_name} (gpsd {found['release']} at {host}:{port}, "
               f"{'?' if devices is None else devices} receiver(s) attached)")
    click.echo(f"stream: {stream} (lat, lon coarsened to [location] precision_m; place, "
               "homedist learned on this device); it never leaves the device")
