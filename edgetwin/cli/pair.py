"""``edgetwin pair``: find sensors, register them, list and remove them.

Pairing records hold addresses and device names, so they live encrypted in
the store; ``save_pairing`` is the one way a transport's ``add`` command
stores one.
"""

from __future__ import annotations

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
from edgetwin.sources.registry import redacted

PAIRING = "pairing"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# transport -> "module:command"; each transport owns its `pair add` command.
_ADD_COMMANDS = {
    "ble": "edgetwin.cli.pair_ble:ble_add",
    "brainflow": "edgetwin.cli.pair_brainflow:brainflow_add",
    "serial": "edgetwin.cli.pair_serial:serial_add",
    "lsl": "edgetwin.cli.pair_lsl:lsl_add",
    "gpsd": "edgetwin.cli.pair_gpsd:gpsd_add",
}


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
    """Register a sensor (ble, brainflow, serial, lsl, gpsd, simulator)."""


@add_group.command("simulator")
@click.option("--name", default=None, help="Source name [default: simulator].")
@click.option("--seed", type=int, default=0, show_default=True, help="Which simulated person.")
@click.option("--speed", type=float, default=1.0, show_default=True, help="x real time.")
@click.option(
    "--modalities",
    default=None,
    metavar="LIST",
    help="Comma-separated streams to simulate, e.g. 'rr,vitals' "
    "[default: rr,vitals,accel,eeg,fnirs,climate,air].",
)
@pass_app
def simulator_add(
    app: AppContext, name: str | None, seed: int, speed: float, modalities: str | None
) -> None:
    """Register the seeded physiology simulator (for trying edgetwin without sensors)."""
    if speed <= 0:
        raise UsageError(f"--speed {speed} must be greater than 0")
    record: dict[str, Any] = {"kind": "simulator", "seed": seed, "speed": speed}
    if modalities is not None:
        from edgetwin.sources.simulator import ALL_MODALITIES

        chosen = [m.strip() for m in modalities.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(ALL_MODALITIES))
        if not chosen or unknown:
            raise UsageError(
                f"--modalities {modalities!r}: "
                + (f"unknown {', '.join(unknown)}" if unknown else "names none"),
                hint=f"choose from {','.join(ALL_MODALITIES)}",
            )
        record["modalities"] = list(dict.fromkeys(chosen))
    name = name or default_name("simulator", paired_names(app))
    save_pairing(app, name, record)


@pair_group.command("list")
@json_option
@pass_app
def list_cmd(app: AppContext) -> None:
    """Show paired sensors."""
    from edgetwin.cli.unlock import open_twin_from_app

    with open_twin_from_app(app) as store:
        records = store.list_records(PAIRING)
    # secrets in a record (a BTHome bind key) are shown as present, never spelled out
    rows = [{"name": name, **redacted(record)} for name, record in sorted(records.items())]
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
    from edgetwin.sources.scan import scan_all, scan_table

    found, notes = scan_all(timeout, ble=not no_ble)
    if app.as_json:
        emit_json({"devices": found, "notes": notes})
        return
    for line in scan_table(found):
        click.echo(line)
    for note in notes:
        click.echo(f"note: {note}", err=True)


