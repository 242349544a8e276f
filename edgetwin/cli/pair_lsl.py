"""``edgetwin pair add lsl (--name N | --type T | --source-id ID)``: pair an LSL stream.

The stream is resolved on the network (``--timeout``); none, or more than one
match, is a precise error (the matches are listed with their source ids so the
person can pick one with ``--source-id``). Its metadata (channel labels, units,
types, nominal rate, format) is stored with the pairing, and the daemon refuses
the stream if it later comes back with another layout. The record is what
``LslSource.from_record`` reads (see ``edgetwin.sources.lsl``).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import DeviceNotFound, UsageError

__all__ = ["build_lsl_record", "default_lsl_name", "lsl_add"]


def build_lsl_record(prop: str, value: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The pairing record for a resolved stream; ``UsageError`` if it cannot be ingested."""
    from edgetwin.sources.lsl_meta import describe_stream, map_channels

    if int(meta.get("channel_count") or 0) < 1:
        raise UsageError(f"LSL stream {describe_stream(meta)} has no channels")
    if meta.get("channel_format") == "string":  # events: stored as markers, no channels
        return {"kind": "lsl", "query": {"prop": prop, "value": value}, "stream": meta,
                "channels": [], "units": [], "markers": True}
    cmap = map_channels(meta)
    return {
        "kind": "lsl",
        "query": {"prop": prop, "value": value},
        "stream": meta,
        "channels": list(cmap.names),
        "units": list(cmap.units),
    }


def default_lsl_name(meta: dict[str, Any], existing: set[str]) -> str:
    """A source name from the stream's name (``OpenBCI EEG`` -> ``openbci_eeg``), made unique."""
    from edgetwin.sources.lsl_meta import sanitize

    base = sanitize(str(meta.get("name") or ""))[:28].strip("_") or "lsl"
    name, i = base, 2
    while name in existing:
        name = f"{base}-{i}"
        i += 1
    return name


@click.command("lsl")
@click.option("--name", "stream_name", help="The LSL stream's name.")
@click.option("--type", "stream_type", help="The LSL stream's type (EEG, NIRS, ...).")
@click.option("--source-id", help="The LSL stream's source id (unique per device).")
@click.option("--as", "source_name",
              help="Source name in the twin (stream SOURCE.<kind>) [default: from the stream].")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to look for the stream (and for a second one of the same name).")
@json_option
@pass_app
def lsl_add(
    app: AppContext,
    stream_name: str | None,
    stream_type: str | None,
    source_id: str | None,
    source_name: str | None,
    timeout: float,
) -> None:
    """Register a Lab Streaming Layer stream on the network as a source."""
    given = [(p, v) for p, v in (("name", stream_name), ("type", stream_type),
                                 ("source_id", source_id)) if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --name, --type or --source-id",
                         hint="e.g. 'edgetwin pair add lsl --name OpenBCI-EEG'")
    prop, value = given[0]
    if not value.strip():
        raise UsageError(f"--{prop.replace('_', '-')} is empty")
    if not timeout > 0:
        raise UsageError(f"--timeout {timeout:g} must be greater than 0")
    from edgetwin.sources.lsl_meta import describe_stream, full_metadata, resolve, stream_metadata

    found = resolve(prop, value, timeout)
    flag = f"--{prop.replace('_', '-')} {value}"
    if not found:
        raise DeviceNotFound(
            f"no LSL stream with {prop}={value!r} answered within {timeout:g} s",
            hint="start its outlet (same machine or LAN), or wait longer with --timeout; "
            "on a host with only loopback set LSLAPICFG to a config with "
            "KnownPeers = {127.0.0.1}",
        )
    if len(found) > 1:
        listed = "\n  ".join(describe_stream(stream_metadata(f)) for f in found)
        raise UsageError(
            f"{len(found)} LSL streams match {flag}:\n  {listed}",
            hint="pick one with --source-id ID" if all(f.source_id() for f in found)
            else "stop the duplicate outlet, or give its streams distinct names or source ids",
        )
    meta = full_metadata(found[0], max(timeout, 2.0))
    record = build_lsl_record(prop, value, meta)
    pair = importlib.import_module("edgetwin.cli.pair")  # it imports this module lazily
    if source_name is None:
        source_name = default_lsl_name(meta, set(pair.paired_names(app)))
    pair.save_pairing(app, source_name, record, quiet=True)
    from edgetwin.sources.lsl_meta import map_channels

    markers = bool(record.get("markers"))
    stream = (f"markers from lsl:{meta.get('name')}" if markers
              else f"{source_name}.{map_channels(meta).stream_suffix}")
    if app.as_json:
        emit_json({"name": source_name, "kind": "lsl", "stream": stream,
                   "channels": record["channels"], "lsl": meta})
        return
    click.echo(f"paired {source_name} (lsl): {describe_stream(meta)}")
    if markers:
        click.echo(f"{stream}: each sample is stored as a marker ('edgetwin markers')")
        return
    click.echo(f"stream: {stream} ({', '.join(record['channels'][:8])}"
               f"{', ...' if len(record['channels']) > 8 else ''})")
