"""Units the features accept per channel type, and the conversion to the canonical one.

The canonical unit of each channel type is ``edgetwin.types.CHANNEL_UNITS``.
A batch may state an equivalent spelling (``µS`` for ``uS``) or a unit the
features can convert exactly (``degF``, ``mV``, ``m/s^2``, ``s``); anything
else is rejected with ``MalformedInput`` rather than guessed.
"""

from __future__ import annotations

from edgetwin.errors import MalformedInput

# channel type -> {unit spelling: (scale, offset)} so canonical = value * scale + offset
_G = 9.80665
_ACCEPTED: dict[str, dict[str, tuple[float, float]]] = {
    "hr": {"bpm": (1.0, 0.0), "1/min": (1.0, 0.0), "beats/min": (1.0, 0.0)},
    "rr": {"ms": (1.0, 0.0), "s": (1000.0, 0.0)},
    "spo2": {"%": (1.0, 0.0), "percent": (1.0, 0.0)},
    "temp": {
        "degC": (1.0, 0.0),
        "°C": (1.0, 0.0),
        "C": (1.0, 0.0),
        "celsius": (1.0, 0.0),
        "degF": (5.0 / 9.0, -32.0 * 5.0 / 9.0),
        "°F": (5.0 / 9.0, -32.0 * 5.0 / 9.0),
        "F": (5.0 / 9.0, -32.0 * 5.0 / 9.0),
        "K": (1.0, -273.15),
    },
    "eda": {"uS": (1.0, 0.0), "µS": (1.0, 0.0), "μS": (1.0, 0.0), "nS": (1e-3, 0.0)},
    "accel": {
        "g": (1.0, 0.0),
        "m/s^2": (1.0 / _G, 0.0),
        "m/s2": (1.0 / _G, 0.0),
        "m/s²": (1.0 / _G, 0.0),
    },
    "eeg": {
        "uV": (1.0, 0.0),
        "µV": (1.0, 0.0),
        "μV": (1.0, 0.0),
        "mV": (1e3, 0.0),
        "V": (1e6, 0.0),
    },
    "ecg": {
        "uV": (1.0, 0.0),
        "µV": (1.0, 0.0),
        "μV": (1.0, 0.0),
        "mV": (1e3, 0.0),
        "V": (1e6, 0.0),
    },
    "ppg": {"a.u.": (1.0, 0.0), "au": (1.0, 0.0), "": (1.0, 0.0)},
    "fnirs": {"a.u.": (1.0, 0.0), "au": (1.0, 0.0), "": (1.0, 0.0)},
    # The surroundings (schema v2). An empty unit is the canonical one: the BLE sources
    # build their room batches with edgetwin.types' units, which name none for these.
    "humidity": {"%": (1.0, 0.0), "%RH": (1.0, 0.0), "percent": (1.0, 0.0), "": (1.0, 0.0)},
    "pressure": {
        "hPa": (1.0, 0.0),
        "mbar": (1.0, 0.0),
        "Pa": (0.01, 0.0),
        "kPa": (10.0, 0.0),
        "": (1.0, 0.0),
    },
    "co2": {"ppm": (1.0, 0.0), "": (1.0, 0.0)},
    "pm2": {"µg/m³": (1.0, 0.0), "μg/m³": (1.0, 0.0), "ug/m3": (1.0, 0.0), "": (1.0, 0.0)},
    "place": {"": (1.0, 0.0), "1": (1.0, 0.0), "code": (1.0, 0.0), "category": (1.0, 0.0)},
    "homedist": {"km": (1.0, 0.0), "m": (1e-3, 0.0), "": (1.0, 0.0)},
}
# a room stream's temp, or an ``ambient_temp`` column (schema.input_kind); unnamed: °C
_ACCEPTED["ambient"] = {**_ACCEPTED["temp"], "": (1.0, 0.0)}
_ACCEPTED["pm10"] = _ACCEPTED["pm2"]  # channel_kind("pm10") is "pm10", of "pm2_5" "pm2"
# ``lat`` and ``lon`` are deliberately absent: a coordinate never feeds a feature.


# Canonical-unit magnitudes no body or sensor produces. A finite value beyond them (1e308 from a
# hostile file, a decoder bug) is masked like NaN: left in, it would overflow every sum and
# mean downstream and turn each feature of its window into garbage.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "hr": (0.0, 400.0),
    "rr": (0.0, 100_000.0),
    "spo2": (0.0, 100.0),
    "temp": (-60.0, 110.0),
    "eda": (0.0, 10_000.0),
    "accel": (-1_000.0, 1_000.0),
    "eeg": (-1e6, 1e6),  # 1 V at the scalp
    "ecg": (-1e6, 1e6),
    "ppg": (-1e12, 1e12),  # raw counts of any ADC
    "fnirs": (-1e12, 1e12),
    # rooms: past the records of inhabited places, or of the sensors' ranges
    "ambient": (-40.0, 60.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1100.0),  # the summit of Everest to below the Dead Sea
    "co2": (0.0, 40_000.0),  # NDIR sensors top out at 10,000-40,000 ppm
    "pm2": (0.0, 1000.0),  # PMS5003/SDS011/SPS30 effective range (µg/m³)
    "pm10": (0.0, 2000.0),
    "place": (0.0, 2.0),
    "homedist": (0.0, 20_100.0),  # half the Earth's circumference (km)
}


def conversion(stream: str, channel: str, kind: str, unit: str) -> tuple[float, float]:
    """``(scale, offset)`` turning ``channel``'s values in ``unit`` into the canonical unit."""
    table = _ACCEPTED[kind]
    found = table.get(unit.strip())
    if found is None:
        raise MalformedInput(
            f"stream {stream!r}, channel {channel!r}: unit {unit!r} is not a unit of {kind}",
            hint=f"use one of {', '.join(repr(u) for u in table)}",
        )
    return found


def known_kind(kind: str) -> bool:
    """True when the features read channels of type ``kind``."""
    return kind in _ACCEPTED
