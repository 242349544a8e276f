"""Build a source from its pairing record, importing only that transport.

A pairing record is a small dict stored encrypted in the twin, e.g.
``{"kind": "ble", "address": "...", "profile": "heart_rate"}``. Importing a
transport lazily keeps a daemon with only BLE devices free of BrainFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetwin.errors import ConfigError
from edgetwin.sources.base import Source

# kind -> "module:class"; each class has ``from_record(name, record)``.
KINDS: dict[str, str] = {
    "simulator": "edgetwin.sources.simulator:SimulatorSource",
    "brainflow": "edgetwin.sources.brainflow:BrainFlowSource",
    "serial": "edgetwin.sources.serial:SerialSource",
    "particulate": "edgetwin.sources.particulate:ParticulateSource",
    "ble": "edgetwin.sources.ble:BleSource",
    "replay": "edgetwin.sources.recording:ReplaySource",
    "lsl": "edgetwin.sources.lsl:LslSource",
    "gpsd": "edgetwin.sources.gpsd:GpsdSource",
}

SECRET_FIELDS = frozenset({"bind_key"})  # pairing-record fields never shown (a BTHome key)


def redacted(record: dict[str, Any]) -> dict[str, Any]:
    """A pairing record to show: secrets say they are there, never what they are."""
    return {k: "(hidden)" if k in SECRET_FIELDS else v for k, v in record.items()}


def build_source(name: str, record: dict[str, Any]) -> Source:
    """The source described by a pairing record; ConfigError if the record is unusable."""
    kind = record.get("kind")
    target = KINDS.get(str(kind))
    if target is None:
        raise ConfigError(
            f"paired source {name!r} has unknown kind {kind!r}",
            hint=f"known kinds: {', '.join(sorted(KINDS))}; 'edgetwin pair remove {name}'",
        )
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        source = cls.from_record(name, record)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"paired source {name!r} ({kind}) has a malformed record: {exc}",
            hint=f"pair it again: 'edgetwin pair remove {name}' then 'edgetwin pair add ...'",
        ) from exc
    assert isinstance(source, Source)
    return source
