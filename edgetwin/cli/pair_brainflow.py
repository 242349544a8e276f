"""``edgetwin pair add brainflow``: register a BrainFlow board as a source.

The record it stores is what ``BrainFlowSource.from_record`` reads::

    {"kind": "brainflow", "board": "MUSE_S_ATHENA_BOARD",
     "params": {"mac_address": "00:55:DA:B9:FA:20", "other_info": "p1041"}}

``scan_dongles`` (re-exported from the source module) lists serial ports that
look like BrainFlow dongles for ``pair scan``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import DeviceNotFound, UsageError

__all__ = ["brainflow_add", "build_brainflow_record", "scan_dongles"]

_PLAYBACK = "PLAYBACK_FILE_BOARD"
_NEEDS_MASTER = (_PLAYBACK, "STREAMING_BOARD")


def scan_dongles() -> list[dict[str, Any]]:
    """Serial ports whose USB id is a known BrainFlow dongle (OpenBCI FTDI, BLED112)."""
    from edgetwin.sources.brainflow import scan_dongles as _scan

    return _scan()


def build_brainflow_record(
    board: str,
    *,
    serial_port: str | None = None,
    mac_address: str | None = None,
    ip_address: str | None = None,
    ip_port: int | None = None,
    file: str | Path | None = None,
    file_aux: str | Path | None = None,
    file_anc: str | Path | None = None,
    master_board: str | None = None,
    other_info: str | None = None,
    timeout: int | None = None,
    serial_number: str | None = None,
    fnirs_distance_cm: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The pairing record for a board; ``UsageError`` (with did-you-mean) if it cannot work."""
    from edgetwin.sources.brainflow import board_name, build_params, resolve_board

    board_id = resolve_board(board)
    name = board_name(board_id)
    params: dict[str, Any] = {
        "serial_port": serial_port,
        "mac_address": mac_address,
        "ip_address": ip_address,
        "ip_port": ip_port,
        "other_info": other_info,
        "timeout": timeout,
        "serial_number": serial_number,
    }
    for key, value in (("file", file), ("file_aux", file_aux), ("file_anc", file_anc)):
        if value:
            path = Path(value).expanduser().absolute()  # the daemon runs from another cwd
            if name == _PLAYBACK and not path.is_file():
                raise DeviceNotFound(f"playback file {path} does not exist",
                                     hint="record one with BrainFlow's DataFilter.write_file")
            params[key] = str(path)
    if master_board:
        params["master_board"] = board_name(resolve_board(master_board))
    elif name in _NEEDS_MASTER:
        raise UsageError(f"{name} needs --master-board",
                         hint="the board that recorded the data, e.g. MUSE_S_ATHENA_BOARD")
    if name == _PLAYBACK and not any(params.get(k) for k in ("file", "file_aux", "file_anc")):
        raise UsageError(f"{name} needs --file", hint="a file written by DataFilter.write_file")
    build_params(params)  # validates types and names; the record keeps readable names
    record: dict[str, Any] = {
        "kind": "brainflow",
        "board": name,
        "params": {k: v for k, v in params.items() if v not in (None, "")},
    }
    if fnirs_distance_cm:
        record["fnirs_distance_cm"] = dict(fnirs_distance_cm)
    return record


def default_name(record: dict[str, Any]) -> str:
    """A short source name from the board: ``MUSE_S_ATHENA_BOARD`` -> ``muse_s_athena``."""
    board = str(record["board"])
    if board == _PLAYBACK:
        board = str(record["params"].get("master_board", board))
    return board.removesuffix("_BOARD").lower()


@click.command("brainflow")
@click.option("--board", required=True, help="A BrainFlow BoardIds name, e.g. SYNTHETIC_BOARD.")
@click.option("--serial-port", help="Serial port of the board or its dongle.")
@click.option("--mac", "mac_address", help="MAC address (BLE boards).")
@click.option("--ip-address", help="IP address (WiFi boards, streaming board).")
@click.option("--ip-port", type=int, help="IP port.")
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path),
              help="Playback file (default preset).")
@click.option("--file-aux", type=click.Path(dir_okay=False, path_type=Path),
              help="Playback file of the auxiliary preset.")
@click.option("--file-anc", type=click.Path(dir_okay=False, path_type=Path),
              help="Playback file of the ancillary preset.")
@click.option("--master-board", help="Board that recorded the data (playback/streaming).")
@click.option("--other-info", help="Board-specific options, e.g. a Muse preset 'p1041'.")
@click.option("--timeout", type=int, help="Discovery timeout in seconds (BLE boards).")
@click.option("--serial-number", help="Serial number or BLE name of the board.")
@click.option("--name", help="Source name (streams are NAME.default, NAME.auxiliary, ...).")
@click.option("--check", is_flag=True, help="Open the board once now and release it.")
@json_option
@pass_app
def brainflow_add(
    app: AppContext,
    board: str,
    serial_port: str | None,
    mac_address: str | None,
    ip_address: str | None,
    ip_port: int | None,
    file_: Path | None,
    file_aux: Path | None,
    file_anc: Path | None,
    master_board: str | None,
    other_info: str | None,
    timeout: int | None,
    serial_number: str | None,
    name: str | None,
    check: bool,
) -> None:
    """Register a BrainFlow board (any BoardIds name) as a source."""
    record = build_brainflow_record(
        board, serial_port=serial_port, mac_address=mac_address, ip_address=ip_address,
        ip_port=ip_port, file=file_, file_aux=file_aux, file_anc=file_anc,
        master_board=master_board, other_info=other_info, timeout=timeout,
        serial_number=serial_number,
    )
    name = name or default_name(record)
    streams = _streams(name, record)
    if check:
        _check(name, record)
    # Imported at call time: pair.py imports this module to register the command.
    save_pairing = importlib.import_module("edgetwin.cli.pair").save_pairing
    save_pairing(app, name, record, quiet=True)
    if app.as_json:
        emit_json({"name": name, "record": record, "streams": streams})
    else:
        click.echo(f"paired {name}: {record['board']} -> {', '.join(streams)}")


def _streams(name: str, record: dict[str, Any]) -> list[str]:
    from edgetwin.sources.brainflow import (
        PRESET_NAMES,
        board_presets,
        brainflow_available,
        resolve_board,
    )

    if brainflow_available() is not None:
        return [f"{name}.default"]  # cannot ask BrainFlow here; the daemon will say why
    master = record["params"].get("master_board", record["board"])
    return [f"{name}.{PRESET_NAMES.get(p, p)}" for p in board_presets(resolve_board(master))]


def _check(name: str, record: dict[str, Any]) -> None:
    import asyncio

    from edgetwin.sources.brainflow import BrainFlowSource

    async def once() -> None:
        source = BrainFlowSource.from_record(name, record)
        await source.connect()
        await source.close()

    asyncio.run(once())
