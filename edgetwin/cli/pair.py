"""``edgetwin pair``: find sensors, register them, list and remove them.

Pairing records hold addresses and device names, so they live encrypted in
the store; ``save_pairing`` is the one way a transport's ``add`` command
stores one.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from typing import Any

import click

from edgetwin.cli.common import (
    AppContext,
    SuggestingGroup,
    emit_json,
    format_value,
    json_option,
    pass_app,
)
from edgetwin.errors import UsageError

PAIRING = "pairing"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# transport -> "module:command"; each transport owns its `pair add` command.
_ADD_COMMANDS = {
    "ble": "edgetwin.cli.pair_ble:ble_add",
    "brainflow": "edgetwin.cli.pair_brainflow:brainflow_add",
    "serial": "edgetwin.cli.pair_serial:serial_add",
    "lsl": "edgetwin.cli.pair_lsl:lsl_add",
}


SECRET_FIELDS = frozenset({"bind_key"})  # pairing-record fields never printed


def check_name(name: str) -> str:
    """A source name: lower-case letters, digits, '-' and '_' (it prefixes stream names)."""
    if not _NAME.match(name):
        raise UsageError(
            f"source name {name!r} is not allowed",
            hint="use 1-32 lower-case letters, digits, '-' or '_', starting with a letter/digit",
        )
    return name


def save_pairing(
    app: AppContext, name: str, record: dict[str, Any], *, replace: bool = False,
    quiet: bool = False,
) -> None:
    """Store a pairing record encrypted in the twin and audit it; ``quiet`` leaves output to
    the caller."""
    from edgetwin.cli.unlock import open_twin_from_app

    check_name(name)
    if "kind" not in record:
        raise UsageError(f"pairing record for {name!r} has no kind")  # a bug in a transport
    with open_twin_from_app(app) as store:
        if not replace and store.get_record(PAIRING, name) is not None:
            raise UsageError(
                f"a source named {name!r} is already paired",
                hint=f"choose another --name, or 'edgetwin pair remove {name}' first",
            )
        with store.transaction():
            store.put_record(PAIRING, name, record)
            store.audit("pair_add", source=name, kind=record["kind"])
    if quiet:
        return
    if not app.as_json:
        click.echo(f"paired {name} ({record['kind']})")
    else:
        emit_json({"name": name, "kind": record["kind"]})


def default_name(kind: str, existing: set[str]) -> str:
    """``kind``, ``kind-2``, ... whichever is free."""
    if kind not in existing:
        return kind
    i = 2
    while f"{kind}-{i}" in existing:
        i += 1
    return f"{kind}-{i}"


def paired_names(app: AppContext) -> set[str]:
    from edgetwin.cli.unlock import open_twin_from_app

    with open_twin_from_app(app) as store:
        return set(store.list_records(PAIRING))


class _AddGroup(SuggestingGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*_ADD_COMMANDS, *self.commands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = _ADD_COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            command = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        assert isinstance(command, click.Command)
        return command


@click.group("pair", cls=SuggestingGroup)
def pair_group() -> None:
    """Find and register sensors."""


@pair_group.group("add", cls=_AddGroup)
def add_group() -> None:
    """Register a sensor (ble, brainflow, serial, lsl, simulator)."""


@add_group.command("simulator")
@click.option("--name", default=None, help="Source name [default: simulator].")
@click.option("--seed", type=int, default=0, show_default=True, help="Which simulated person.")
@click.option("--speed", type=float, default=1.0, show_default=True, help="x real time.")
@pass_app
def simulator_add(app: AppContext, name: str | None, seed: int, speed: float) -> None:
    """Register the seeded physiology simulator (for trying edgetwin without sensors)."""
    if speed <= 0:
        raise UsageError(f"--speed {speed} must be greater than 0")
    name = name or default_name("simulator", paired_names(app))
    save_pairing(app, name, {"kind": "simulator", "seed": seed, "speed": speed})


@pair_group.command("list")
@json_option
@pass_app
def list_cmd(app: AppContext) -> None:
    """Show paired sensors."""
    from edgetwin.cli.unlock import open_twin_from_app

    with open_twin_from_app(app) as store:
        records = store.list_records(PAIRING)
    # secrets in a record (a BTHome bind key) are shown as present, never spelled out
    rows = [{"name": name, **{k: "(hidden)" if k in SECRET_FIELDS else v
                              for k, v in record.items()}}
            for name, record in sorted(records.items())]
    if app.as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no sensors paired; see 'edgetwin pair scan' and 'edgetwin pair add --help'")
        return
    for row in rows:
        details = " ".join(f"{k}={format_value(k, v)}" for k, v in row.items()
                           if k not in ("name", "kind"))
        click.echo(f"{row['name']:<16} {row['kind']:<10} {details}")


@pair_group.command("remove")
@click.argument("name")
@pass_app
def remove_cmd(app: AppContext, name: str) -> None:
    """Unregister a sensor (its recorded data stays; see 'edgetwin forget')."""
    from edgetwin.cli.unlock import open_twin_from_app

    with open_twin_from_app(app) as store, store.transaction():
        if not store.delete_record(PAIRING, name):
            raise UsageError(f"no source named {name!r} is paired", hint="see 'edgetwin pair list'")
        store.audit("pair_remove", source=name)
    click.echo(f"removed {name}")


@pair_group.command("scan")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="BLE scan seconds.")
@click.option("--no-ble", is_flag=True, help="Skip the Bluetooth scan.")
@json_option
@pass_app
def scan_cmd(app: AppContext, timeout: float, no_ble: bool) -> None:
    """List nearby BLE health devices, serial bridges, particulate sensors, BrainFlow dongles."""
    found: list[dict[str, Any]] = []
    notes: list[str] = []
    if not no_ble:
        found += _scan("ble", "edgetwin.sources.ble", "scan_ble", notes, timeout=timeout)
    serial_found = _scan("serial", "edgetwin.sources.serial", "scan_ports", notes)
    # particulate sensors on USB-UART cables: probed only where no bridge answered
    _scan_air(serial_found, notes)
    found += serial_found
    found += _scan("brainflow", "edgetwin.sources.brainflow", "scan_dongles", notes)
    if app.as_json:
        emit_json({"devices": found, "notes": notes})
        return
    for line in scan_table(found):
        click.echo(line)
    for note in notes:
        click.echo(f"note: {note}", err=True)


def scan_table(found: list[dict[str, Any]]) -> list[str]:
    """``pair scan`` for people: one aligned row per device and the command that pairs it."""
    if not found:
        return ["nothing found"]
    rows = [_scan_row(dev) for dev in found]
    heads = ("transport", "address", "name", "what", "pair with")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:-1])]
    return [
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row, [*widths, 0], strict=True)).rstrip()
        for row in [heads, *rows]
    ]


def _scan_row(dev: dict[str, Any]) -> tuple[str, str, str, str, str]:
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
    from edgetwin.errors import EdgetwinError

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
    from edgetwin.errors import EdgetwinError

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
