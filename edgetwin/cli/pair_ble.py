"""``edgetwin pair add ble ADDRESS --profile P``: register a BLE health device.

The record it stores is what ``BleSource.from_record`` reads::

    {"kind": "ble", "address": "C0:FF:EE:00:00:01", "profile": "heart_rate",
     "device": "Polar H10 1A2B3C"}

(``device``, not ``name``: ``pair list`` shows the pairing's own name under ``name``.)

With ``--profile auto`` (the default) the device is connected once and its
GATT services decide the profile; with an explicit profile no radio is needed.

``--profile bthome`` pairs a BTHome advertiser (read passively, never connected);
an encrypted one needs ``--bind-key`` (32 hex characters), kept only in the
pairing record, which the store encrypts; it is never printed or logged.
``--profile environmental`` is an Environmental Sensing (0x181A) device over GATT.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
from typing import Any

import click

from edgetwin.cli.common import AppContext, pass_app
from edgetwin.errors import UsageError
from edgetwin.sources.ble import PROFILES, normalize_address

__all__ = ["ble_add", "build_ble_record", "default_ble_name", "stream_names"]

_STREAMS = {
    "heart_rate": ("hr", "rr", "battery"),
    "pulse_oximeter": ("spo2", "battery"),
    "thermometer": ("temp", "battery"),
    "environmental": ("climate", "battery"),
    "bthome": ("climate",),
}
ADVERT_PROFILES = ("bthome",)  # read from adverts, no GATT connection


def build_ble_record(
    address: str, profile: str, device_name: str = "", *, notify_mode: str = "start",
    bind_key: str | None = None,
) -> dict[str, Any]:
    """The pairing record of a BLE device; ``UsageError`` if the address or profile is wrong."""
    norm = normalize_address(address)
    if norm is None:
        raise UsageError(
            f"{address!r} is not a Bluetooth address",
            hint="six hex pairs like C0:FF:EE:00:00:01; 'edgetwin pair scan' lists nearby devices",
        )
    known = [*PROFILES, *ADVERT_PROFILES]
    if profile not in known:
        close = difflib.get_close_matches(profile, known, n=1)
        raise UsageError(
            f"unknown BLE profile {profile!r}",
            hint=(f"did you mean {close[0]}? " if close else "")
            + f"known: {', '.join(known)}, or auto",
        )
    if bind_key is not None and profile != "bthome":
        raise UsageError(
            f"--bind-key is for --profile bthome, not {profile}",
            hint="leave --bind-key out, or pair the device with --profile bthome",
        )
    if notify_mode not in ("start", "acquire"):
        raise UsageError(f"notify mode {notify_mode!r} must be 'start' or 'acquire'")
    record: dict[str, Any] = {"kind": "ble", "address": norm, "profile": profile,
                              "device": device_name}
    if bind_key is not None:
        from edgetwin.sources.bthome import parse_bind_key

        try:
            record["bind_key"] = parse_bind_key(bind_key).hex()
        except ValueError as exc:
            raise UsageError(
                f"--bind-key: {exc}",
                hint="copy the device's 32-character bind key (BTHome / ATC / Shelly app) "
                     "exactly; without it an encrypted device's adverts cannot be read",
            ) from None
    if notify_mode != "start":
        record["notify_mode"] = notify_mode
    return record


def default_ble_name(profile: str, existing: set[str] | frozenset[str] = frozenset()) -> str:
    """``heart_rate``, ``heart_rate-2``, ... whichever is free (it prefixes stream names)."""
    name, i = profile, 2
    while name in existing:
        name = f"{profile}-{i}"
        i += 1
    return name


def stream_names(name: str, profile: str) -> list[str]:
    """The streams a paired device will feed."""
    return [f"{name}.{kind}" for kind in _STREAMS[profile]]


@click.command("ble")
@click.argument("address")
@click.option(
    "--profile",
    type=click.Choice([*PROFILES, *ADVERT_PROFILES, "auto"]),
    default="auto",
    show_default=True,
    help="Health or room-climate profile; 'auto' connects once and reads it from the "
         "device's services ('bthome' devices are never connected: name it).",
)
@click.option("--bind-key", metavar="HEX", default=None,
              help="BTHome encryption key (32 hex characters) of an encrypted BTHome device; "
                   "stored encrypted in the pairing, never shown.")
@click.option("--name", help="Source name (streams NAME.hr, NAME.rr, ...) [default: profile].")
@click.option("--timeout", type=float, default=20.0, show_default=True,
              help="Seconds to find and probe the device (with --profile auto).")
@click.option("--notify", "notify_mode", type=click.Choice(["start", "acquire"]),
              default="start", show_default=True,
              help="BlueZ notification mode: 'start' (D-Bus signals, works with every "
                   "device) or 'acquire' (a socket per characteristic, bypasses dbus-daemon).")
@pass_app
def ble_add(
    app: AppContext,
    address: str,
    profile: str,
    name: str | None,
    timeout: float,
    notify_mode: str,
    bind_key: str | None,
) -> None:
    """Register a BLE heart-rate strap, pulse oximeter, thermometer or room-climate sensor."""
    norm = build_ble_record(address, "heart_rate")["address"]  # validate before any radio
    if bind_key is not None and profile != "bthome":
        raise UsageError(
            f"--bind-key is for --profile bthome, not {profile}",
            hint="BTHome devices are never probed: pass --profile bthome with --bind-key",
        )
    device_name = ""
    if profile == "auto":
        from edgetwin.sources.ble import probe_ble

        info = asyncio.run(probe_ble(norm, timeout))
        if not info["profiles"]:
            raise UsageError(
                f"BLE device {norm} ({info['name'] or 'no name'}) offers no heart-rate, "
                "pulse-oximeter, thermometer or environmental-sensing service",
                hint="if you know what it is, pass --profile explicitly "
                     "(a BTHome advertiser: --profile bthome)",
            )
        profile, device_name = info["profiles"][0], info["name"]
    record = build_ble_record(norm, profile, device_name, notify_mode=notify_mode,
                              bind_key=bind_key)
    pair = _pair_module()
    if name is None:
        name = default_ble_name(profile, _existing_names(pair, app))
    pair.save_pairing(app, name, record)
    if not app.as_json:
        click.echo(f"streams: {', '.join(stream_names(name, profile))}")


def _pair_module() -> Any:
    # Imported at call time: pair.py imports this module to register the command.
    return importlib.import_module("edgetwin.cli.pair")


def _existing_names(pair: Any, app: AppContext) -> set[str]:
    paired_names = getattr(pair, "paired_names", None)
    return set(paired_names(app)) if paired_names is not None else set()
