"""LSL stream metadata: resolving streams, reading their desc, mapping channels to twin names.

Pure helpers of ``edgetwin.sources.lsl`` (the source) and ``edgetwin.cli.pair_lsl``
(pairing); the tables of channel types and units are shared with
``edgetwin.interop.lsl_outlets``. Channel names follow the twin's CSV contract
(``edgetwin.types``): an EEG label ``Fp1`` becomes ``eeg_fp1`` as BrainFlow's
``eeg_names`` do, ECG/EMG/EOG become ``ecg_<label>``..., accelerometer axes
``accel_x|y|z``; values in a convertible unit (volts, millivolts, m/s², seconds
for RR) are scaled to the twin's unit; a numeric ``Markers`` stream is a
``marker`` channel. A channel of a type the twin does not know, or in a unit it
cannot convert, is kept as a raw channel ``<type>_<label>`` (``raw_<...>`` when
the type would read as a twin kind), stored but ignored by the features.

Networks: liblsl finds streams by multicast and broadcast on every interface.
On a host with only loopback (a container, a laptop offline) or across subnets,
give liblsl a config through ``LSLAPICFG=/path/lsl_api.cfg``, e.g.::

    [multicast]
    ResolveScope = machine
    [lab]
    KnownPeers = {127.0.0.1}

(``KnownPeers`` may list other hosts, ``SessionID = NAME`` keeps a lab's streams
apart; the tests use both). Without a config of the person's own, liblsl's own
INFO logging is turned down to warnings (see :func:`pylsl_module`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetwin.errors import DriverMissing, TransientSourceError, UsageError
from edgetwin.types import CHANNEL_UNITS, channel_kind

QUERY_PROPS = ("name", "type", "source_id")
RESOLVE_TIMEOUT_S = 3.0

# twin channel kind -> the LSL/XDF channel type written by the outlets
KIND_TO_LSL_TYPE: dict[str, str] = {
    "eeg": "EEG", "ecg": "ECG", "emg": "EMG", "eog": "EOG", "ppg": "PPG", "eda": "EDA",
    "hr": "HR", "rr": "RR", "spo2": "SpO2", "temp": "TEMP", "accel": "ACC", "gyro": "GYRO",
    "mag": "MAG", "fnirs": "NIRS", "resp": "RESP", "battery": "BATTERY", "marker": "Markers",
}
# twin unit -> the unit name written in the outlets' metadata (XDF: "microvolts")
UNIT_TO_LSL: dict[str, str] = {
    "uV": "microvolts", "mV": "millivolts", "uS": "microsiemens", "degC": "celsius",
    "ms": "milliseconds", "%": "percent", "deg/s": "degrees/second", "bpm": "bpm", "g": "g",
    "uM": "micromolar", "ohm": "ohms", "a.u.": "a.u.",
}

# LSL channel/stream type (lower-case) -> twin kind
_LSL_TYPE_TO_KIND: dict[str, str] = {
    "eeg": "eeg", "ecg": "ecg", "ekg": "ecg", "emg": "emg", "eog": "eog", "ppg": "ppg",
    "eda": "eda", "gsr": "eda", "hr": "hr", "heartrate": "hr", "heart_rate": "hr",
    "rr": "rr", "ibi": "rr", "spo2": "spo2", "temp": "temp", "temperature": "temp",
    "acc": "accel", "accel": "accel", "accelerometer": "accel", "gyro": "gyro",
    "gyroscope": "gyro", "resp": "resp", "respiration": "resp",
    # a numeric marker stream (event codes): a ``marker`` channel, which the daemon also
    # stores as markers (``edgetwin.types.channel_markers``: every nonzero code)
    "markers": "marker", "marker": "marker",
}
_VOLT = {"": 1.0, "uv": 1.0, "µv": 1.0, "microvolt": 1.0, "microvolts": 1.0,
         "mv": 1e3, "millivolt": 1e3, "millivolts": 1e3, "v": 1e6, "volt": 1e6, "volts": 1e6}
# kind -> accepted unit spellings (lower-case) -> factor to the twin's unit
_UNIT_SCALE: dict[str, dict[str, float]] = {
    "eeg": _VOLT, "ecg": _VOLT, "emg": _VOLT, "eog": _VOLT,
    "accel": {"": 1.0, "g": 1.0, "m/s^2": 1 / 9.80665, "m/s2": 1 / 9.80665,
              "m/s/s": 1 / 9.80665, "meters/second^2": 1 / 9.80665},
    "gyro": {"": 1.0, "deg/s": 1.0, "dps": 1.0, "degrees/second": 1.0,
             "rad/s": 180.0 / math.pi},
    "temp": {"": 1.0, "c": 1.0, "degc": 1.0, "°c": 1.0, "celsius": 1.0},
    "hr": {"": 1.0, "bpm": 1.0, "1/min": 1.0, "beats/min": 1.0},
    "spo2": {"": 1.0, "%": 1.0, "percent": 1.0},
    "eda": {"": 1.0, "us": 1.0, "µs": 1.0, "microsiemens": 1.0},
    "rr": {"": 1.0, "ms": 1.0, "milliseconds": 1.0, "s": 1e3, "seconds": 1e3},
}
_SINGLE = ("hr", "rr", "spo2", "temp", "eda", "ppg", "resp", "marker")  # no suffix when one
_SANE = re.compile(r"[^a-z0-9]+")
_CONFIGURED = False


@dataclass(frozen=True)
class ChannelMap:
    """How the LSL channels become twin channels: names, units and scale factors."""

    names: tuple[str, ...]
    units: tuple[str, ...]
    scale: tuple[float, ...]

    @property
    def stream_suffix(self) -> str:
        """``eeg`` when every channel is EEG, else ``lsl``."""
        kinds = {channel_kind(n) for n in self.names}
        kind = next(iter(kinds)) if len(kinds) == 1 else ""
        return kind if kind in CHANNEL_UNITS else "lsl"


def pylsl_module() -> Any:
    """The ``pylsl`` module; ``DriverMissing`` when it or its liblsl cannot load.

    Without an ``lsl_api.cfg`` of the person's own (``LSLAPICFG``, ``./lsl_api.cfg``,
    ``~/lsl_api/lsl_api.cfg``, ``/etc/lsl_api/lsl_api.cfg``) liblsl is told to log warnings
    and errors only: its INFO lines would clutter every command's stderr.
    """
    global _CONFIGURED  # noqa: PLW0603 - liblsl reads its config once per process
    try:
        import pylsl
    except (ImportError, OSError, RuntimeError) as exc:
        raise DriverMissing(
            f"the Lab Streaming Layer library cannot be loaded: {exc}",
            hint="pip install pylsl (its wheel ships liblsl for x86_64 and aarch64)",
        ) from exc
    if not _CONFIGURED:
        _CONFIGURED = True
        own = [os.environ.get("LSLAPICFG", ""), "lsl_api.cfg",
               str(Path("~/lsl_api/lsl_api.cfg").expanduser()), "/etc/lsl_api/lsl_api.cfg"]
        if not any(p and Path(p).is_file() for p in own):
            with contextlib.suppress(Exception):  # an old liblsl without the call: noisy only
                pylsl.set_config_content("[log]\nlevel = -2\n")
    return pylsl


def sanitize(text: str) -> str:
    """``"Fp1 "`` -> ``fp1``: lower-case letters, digits and single underscores."""
    return _SANE.sub("_", text.strip().lower()).strip("_")


def map_channels(stream: Mapping[str, Any]) -> ChannelMap:
    """Twin channel names, units and scale factors for a stream's metadata (``stream_metadata``)."""
    count = int(stream["channel_count"])
    chans = list(stream.get("channels") or [])
    stream_type = str(stream.get("type") or "")
    infos = [chans[i] if i < len(chans) else {} for i in range(count)]
    kinds: list[str | None] = []
    for info in infos:
        ctype = str(info.get("type") or stream_type).strip().lower()
        kind = _LSL_TYPE_TO_KIND.get(ctype) or _LSL_TYPE_TO_KIND.get(sanitize(ctype))
        unit = str(info.get("unit") or "").strip().lower()
        if kind is not None and kind in _UNIT_SCALE and unit not in _UNIT_SCALE[kind]:
            kind = None  # a unit we cannot convert: keep the values as they are, raw
        kinds.append(kind)
    names: list[str] = []
    units: list[str] = []
    scale: list[float] = []
    per_kind = {k: kinds.count(k) for k in set(kinds) if k is not None}
    seen: dict[str, int] = {}
    for i, (info, kind) in enumerate(zip(infos, kinds, strict=True)):
        label = sanitize(str(info.get("label") or ""))
        unit = str(info.get("unit") or "").strip()
        if kind is None:
            ctype = sanitize(str(info.get("type") or stream_type)) or "raw"
            prefix = f"raw_{ctype}" if ctype in CHANNEL_UNITS or ctype == "raw" else ctype
            name = f"{prefix}_{label or i + 1}"
            names.append(name)
            units.append(unit)
            scale.append(1.0)
            continue
        if kind in ("accel", "gyro"):
            axis = label[-1] if label and label[-1] in "xyz" else ""
            name = f"{kind}_{axis or seen.get(kind, 0) + 1}"
        elif kind in _SINGLE:
            name = kind if per_kind[kind] == 1 else f"{kind}_{label or seen.get(kind, 0) + 1}"
        else:  # eeg/ecg/emg/eog: the site or lead from the label
            site = label.removeprefix(f"{kind}_") if label else ""
            name = f"{kind}_{site or seen.get(kind, 0) + 1}"
        seen[kind] = seen.get(kind, 0) + 1
        names.append(name)
        units.append(CHANNEL_UNITS.get(kind, unit))
        scale.append(_UNIT_SCALE.get(kind, {}).get(unit.lower(), 1.0))
    return ChannelMap(_unique(names), tuple(units), tuple(scale))


def stream_metadata(info: Any) -> dict[str, Any]:
    """The JSON-able facts of a (full) ``pylsl.StreamInfo``, channels from its desc."""
    pylsl = pylsl_module()
    fmt_names = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64",
                 pylsl.cf_string: "string", pylsl.cf_int32: "int32", pylsl.cf_int16: "int16",
                 pylsl.cf_int8: "int8", pylsl.cf_int64: "int64"}
    channels: list[dict[str, str]] = []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty() and len(channels) < info.channel_count():
        channels.append({key: ch.child_value(key) for key in ("label", "unit", "type")})
        ch = ch.next_sibling("channel")
    return {
        "name": info.name(),
        "type": info.type(),
        "source_id": info.source_id(),
        "hostname": info.hostname(),
        "channel_count": int(info.channel_count()),
        "nominal_srate": float(info.nominal_srate()),
        "channel_format": fmt_names.get(info.channel_format(), str(info.channel_format())),
        "channels": channels,
    }


def describe_stream(meta: Mapping[str, Any]) -> str:
    """One line naming a stream for a person: name, type, source id, host, layout."""
    rate = float(meta.get("nominal_srate") or 0.0)
    return (f"{meta.get('name')!r} type {meta.get('type')!r} source_id "
            f"{meta.get('source_id') or '(none)'!r} on {meta.get('hostname') or '?'}: "
            f"{meta.get('channel_count')} ch {meta.get('channel_format')} at "
            f"{_rate_text(rate)}")


def resolve(prop: str, value: str, timeout_s: float, *, want_all: bool = True) -> list[Any]:
    """Every stream whose ``prop`` equals ``value`` seen within ``timeout_s``.

    With ``want_all`` the whole timeout is spent looking for a second match (so a duplicate
    name is noticed); otherwise it returns at the first.
    """
    if prop not in QUERY_PROPS:
        raise UsageError(f"cannot look up LSL streams by {prop!r}",
                         hint=f"use one of {', '.join(QUERY_PROPS)}")
    pylsl = pylsl_module()
    try:
        found = pylsl.resolve_byprop(prop, value, 2 if want_all else 1, timeout_s)
    except (RuntimeError, ValueError) as exc:
        raise TransientSourceError(f"resolving LSL streams with {prop}={value!r} failed: {exc}",
                                   hint="check the network interface LSL uses") from exc
    # one outlet is announced on IPv4 and IPv6: the same uid twice is one stream
    unique: dict[str, Any] = {}
    for info in found:
        unique.setdefault(info.uid(), info)
    return list(unique.values())


def full_metadata(info: Any, timeout_s: float) -> dict[str, Any]:
    """The metadata of a resolved stream including its desc (which needs a connection)."""
    pylsl = pylsl_module()
    inlet = None
    try:
        inlet = pylsl.StreamInlet(info, max_buflen=1, recover=False)
        full = inlet.info(timeout_s)
    except (pylsl.util.TimeoutError, pylsl.util.LostError, RuntimeError) as exc:
        raise TransientSourceError(
            f"LSL stream {info.name()!r} did not send its description within {timeout_s:g} s",
            hint="is its outlet still running? try again",
        ) from exc
    finally:
        if inlet is not None:
            inlet.close_stream()
            del inlet
    return stream_metadata(full)


def layout_problem(paired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Why ``live`` cannot be ingested under a pairing made for ``paired``; None if it can."""
    what = f"LSL stream {live.get('name')!r}"
    if int(live["channel_count"]) != int(paired["channel_count"]):
        return (f"{what} now has {live['channel_count']} channels; it was paired with "
                f"{paired['channel_count']}")
    live_rate, paired_rate = float(live["nominal_srate"]), float(paired["nominal_srate"])
    if not math.isclose(live_rate, paired_rate, rel_tol=1e-6, abs_tol=1e-9):
        return (f"{what} now runs at {_rate_text(live_rate)}; it was paired at "
                f"{_rate_text(paired_rate)}")
    if live.get("channel_format") != paired.get("channel_format"):
        return (f"{what} now sends {live.get('channel_format')} values; it was paired with "
                f"{paired.get('channel_format')}")
    live_labels = [c.get("label", "") for c in live.get("channels") or []]
    paired_labels = [c.get("label", "") for c in paired.get("channels") or []]
    if live_labels != paired_labels:
        changed = next((i for i, (a, b) in enumerate(zip(live_labels, paired_labels,
                                                          strict=False)) if a != b),
                       min(len(live_labels), len(paired_labels)))
        return (f"{what} channel labels changed at channel {changed + 1}: now "
                f"{live_labels[changed:changed + 3]}, paired {paired_labels[changed:changed + 3]}")
    return None


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        candidate, i = name, 2
        while candidate in out:
            candidate = f"{name}_{i}"
            i += 1
        out.append(candidate)
    return tuple(out)


def _rate_text(rate: float) -> str:
    return f"{rate:g} Hz" if rate > 0 else "an irregular rate"
