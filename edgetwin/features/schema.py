"""The canonical, versioned feature schema of the twin's timeline.

Bump ``SCHEMA_VERSION`` whenever a feature is added, removed, renamed or its
meaning or unit changes, and record the old layout in ``LAYOUTS``: frames
stored at an older version are read through :func:`upgrade_columns` (the
columns that version lacks come back missing, quality 0, so masked). New
features are only ever appended, so a feature keeps its column across versions.

A model names the features it consumes (``models/manifest.json`` ``features``)
and the runtime selects those columns by name (:func:`columns_of`); a model
naming a feature this schema lacks is refused.

v1: the body (13 features). v2 adds the surroundings: room climate
(``ambient_temp``, ``humidity``, ``pressure``, ``co2``) from ``<name>.climate``
streams, particulate matter (``pm2_5``, ``pm10``) from ``<name>.air`` streams,
and ``place`` / ``home_distance`` from ``<name>.location`` streams (``lat`` and
``lon`` never feed a feature). It also fixes v1's reading of a room
thermometer's ``temp`` as skin temperature: ``temp`` in a room stream
(:func:`is_room_stream`) feeds ``ambient_temp`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgetwin.types import FeatureFrame, FloatArray

BoolArray = npt.NDArray[np.bool_]

SCHEMA_VERSION = 2

# A feature whose quality is below this is masked (treated as missing).
QUALITY_THRESHOLD = 0.5


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    description: str


FEATURES: tuple[Feature, ...] = (
    Feature("hr", "bpm", "mean heart rate over the step (RR, else ECG/PPG beats, else hr)"),
    Feature("rmssd", "ms", "RMS of successive accepted-RR differences, last 30 s"),
    Feature("spo2", "%", "mean peripheral oxygen saturation"),
    Feature("skin_temp", "degC", "mean skin temperature"),
    Feature("eda_tonic", "uS", "tonic skin-conductance level: median over the last 10 s"),
    Feature("motion", "g", "standard deviation of acceleration magnitude (activity)"),
    Feature("eeg_delta", "1", "relative EEG band power 1-4 Hz (last 4 s, mean of channels)"),
    Feature("eeg_theta", "1", "relative EEG band power 4-8 Hz"),
    Feature("eeg_alpha", "1", "relative EEG band power 8-13 Hz"),
    Feature("eeg_beta", "1", "relative EEG band power 13-30 Hz"),
    Feature("eeg_gamma", "1", "relative EEG band power 30-45 Hz"),
    Feature("fnirs_hbo", "uM", "HbO change vs a 10-min baseline (modified Beer-Lambert)"),
    Feature("fnirs_hbr", "uM", "HbR change vs a 10-min baseline (modified Beer-Lambert)"),
    # v2: the surroundings. Room sensors report every few seconds to minutes, so a step
    # without a reading of its own holds the last one, its quality fading with age (ENV_*).
    Feature("ambient_temp", "degC", "room temperature: mean over the step, else the last reading"),
    Feature("humidity", "%", "room relative humidity: mean over the step, else the last reading"),
    Feature("pressure", "hPa", "barometric pressure: mean over the step, else the last reading"),
    Feature("co2", "ppm", "room CO2: mean over the step, else the last reading"),
    Feature("pm2_5", "ug/m3", "PM2.5 mass concentration: mean over the step, else the last"),
    Feature("pm10", "ug/m3", "PM10 mass concentration: mean over the step, else the last"),
    Feature("place", "code", "where the person is: 0 home, 1 a regular place, 2 elsewhere "
            "(the step's most frequent value, ties to the latest; else the last)"),
    Feature("home_distance", "km", "distance from home: mean over the step, else the last"),
)

NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}

# The feature names of every schema version frames may be stored at.
LAYOUTS: dict[int, tuple[str, ...]] = {1: NAMES[:13], 2: NAMES}
# The features of the person's surroundings (v2), and the ones that say where they are.
ENVIRONMENT: tuple[str, ...] = NAMES[13:]
LOCATION: tuple[str, ...] = ("place", "home_distance")

# A room reading stands for its step for ENV_FRESH_S (quality 1), then fades linearly to 0
# at ENV_HOLD_S (masked past the middle): BTHome thermometers advertise every 10-60 s,
# an SDS011 on a working period reads once in minutes.
ENV_FRESH_S = 120.0
ENV_HOLD_S = 600.0
# Streams of a room, not a body: their ``temp`` is the room's (``<name>.climate`` of the
# BTHome and Environmental Sensing sources, the simulator's room).
ROOM_SUFFIXES: tuple[str, ...] = (".climate",)

# Provenance, for forgetting: the channel kinds (``edgetwin.types.channel_kind``) each
# feature is computed from. A frame does not record which stream won when several
# could feed a feature, so forgetting a stream shreds every feature it *could* feed.
SOURCES: dict[str, frozenset[str]] = {
    "hr": frozenset({"rr", "ecg", "ppg", "hr"}),
    "rmssd": frozenset({"rr", "ecg", "ppg"}),
    "spo2": frozenset({"spo2"}),
    "skin_temp": frozenset({"temp"}),
    "eda_tonic": frozenset({"eda"}),
    "motion": frozenset({"accel"}),
    **{name: frozenset({"eeg"}) for name in NAMES if name.startswith("eeg_")},
    "fnirs_hbo": frozenset({"fnirs"}),
    "fnirs_hbr": frozenset({"fnirs"}),
    # "ambient" is a room stream's temp (input_kind); a bare "temp" could be a room's too
    # when the stream is not known, so it counts here for forgetting.
    "ambient_temp": frozenset({"ambient", "temp"}),
    "humidity": frozenset({"humidity"}),
    "pressure": frozenset({"pressure"}),
    "co2": frozenset({"co2"}),
    "pm2_5": frozenset({"pm2"}),  # channel_kind("pm2_5") == "pm2"
    "pm10": frozenset({"pm10"}),
    "place": frozenset({"place"}),
    "home_distance": frozenset({"homedist"}),
}

# How long (s) after a sample a feature can still carry it: the longest look-back the
# pipeline reads for the feature beyond its own step. hr: 10 s beat detection + 6 s RR
# context; rmssd: 30 s RR window + that; EDA 10 s; EEG 4 s; fNIRS: the 10-min running
# baseline (fnirs.BASELINE_TAU_S), after 3 time constants a sample weighs < 5 %.
MEMORY_S: dict[str, float] = {
    "hr": 20.0,
    "rmssd": 50.0,
    "spo2": 0.0,
    "skin_temp": 0.0,
    "eda_tonic": 10.0,
    "motion": 0.0,
    **{name: 5.0 for name in NAMES if name.startswith("eeg_")},
    "fnirs_hbo": 1800.0,
    "fnirs_hbr": 1800.0,
    **{name: ENV_HOLD_S for name in ENVIRONMENT},  # a reading is held this long
}


def fed_by(channel_kinds: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The features that channels of these kinds can feed, in schema order."""
    return tuple(name for name in NAMES if SOURCES[name] & channel_kinds)


# What a stream of the surroundings holds, by the suffix its source gives it, and the
# canonical unit of each channel (the BLE sources leave humidity, pressure and CO2 unnamed).
SURROUNDINGS: dict[str, str] = {
    ".climate": "room climate: temp degC, humidity %, pressure hPa, co2 ppm",
    ".air": "air quality: particulate matter pm1_0, pm2_5, pm10 ug/m3 (and particle counts)",
    ".location": "location: lat, lon (coarsened), place code (0 home, 1 regular, 2 elsewhere), "
                 "homedist km",
}


def surroundings_of(stream: str) -> str | None:
    """What a room, air or location stream holds (None: not one of the surroundings)."""
    for suffix, what in SURROUNDINGS.items():
        if stream.endswith(suffix):
            return what
    return None


def is_room_stream(stream: str) -> bool:
    """True for a stream of a room's sensors (``<name>.climate``), whose ``temp`` is the room's."""
    return stream.endswith(ROOM_SUFFIXES)


def input_kind(stream: str, channel: str) -> str:
    """The kind a channel feeds features as: its ``channel_kind``, except that a room
    stream's ``temp`` (and any ``ambient_temp``) is ``ambient``, never skin temperature."""
    kind = channel.split("_", 1)[0]  # edgetwin.types.channel_kind
    if kind == "temp" and is_room_stream(stream):
        return "ambient"
    return kind


def fed_by_stream(stream: str, channels: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The features a stream's channels can feed: :func:`fed_by` told which ``temp`` is a
    room's, so a room thermometer's forget leaves skin temperature alone and the reverse."""
    kinds = {input_kind(stream, c) for c in channels}
    fed = set(fed_by(kinds))
    if "temp" in kinds:
        fed.discard("ambient_temp")  # a body's temp never feeds the room's
    return tuple(name for name in NAMES if name in fed)


def columns_of(names: tuple[str, ...] | list[str], *, where: str) -> tuple[int, ...]:
    """Columns of the current schema holding ``names``, in that order; ``ValueError``
    naming ``where`` and every name this schema lacks."""
    unknown = [n for n in names if n not in INDEX]
    if unknown:
        raise ValueError(
            f"{where} names feature(s) {', '.join(map(repr, unknown))} that feature schema "
            f"v{SCHEMA_VERSION} does not have (it has: {', '.join(NAMES)})"
        )
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"{where} names feature(s) {', '.join(map(repr, dup))} twice")
    return tuple(INDEX[n] for n in names)


def layout_problem(version: int, width: int) -> str | None:
    """Why frames of ``version`` and ``width`` cannot be read as this schema (None: they can)."""
    names = LAYOUTS.get(version)
    if names is None:
        newest = max(LAYOUTS)
        if version > newest:
            return (f"feature schema v{version} is newer than this edgetwin's v{newest}: "
                    "upgrade edgetwin to read it")
        return f"feature schema v{version} is unknown (known: {', '.join(map(str, LAYOUTS))})"
    if width != len(names):
        return f"feature schema v{version} has {len(names)} features, not {width}"
    return None


def upgrade_columns(
    version: int, values: FloatArray, quality: FloatArray, imputed: BoolArray
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Frames stored at ``version`` (rows x that version's features) as the current schema:
    features the old version lacks are missing (NaN), quality 0 (masked), not imputed.
    ``ValueError`` (:func:`layout_problem`) for a version or width this code cannot map."""
    if version == SCHEMA_VERSION and values.shape[-1] == len(NAMES):
        return values, quality, imputed
    problem = layout_problem(version, values.shape[-1])
    if problem is not None:
        raise ValueError(problem)
    cols = [INDEX[n] for n in LAYOUTS[version]]
    shape = (*values.shape[:-1], len(NAMES))
    v = np.full(shape, np.nan)
    q = np.zeros(shape)
    m = np.zeros(shape, dtype=bool)
    v[..., cols], q[..., cols], m[..., cols] = values, quality, imputed
    return v, q, m


def upgrade_frame(frame: FeatureFrame) -> FeatureFrame:
    """One frame as the current schema (the same object when it already is)."""
    if frame.schema_version == SCHEMA_VERSION and frame.values.shape[0] == len(NAMES):
        return frame
    v, q, m = upgrade_columns(frame.schema_version, frame.values, frame.quality, frame.imputed)
    return FeatureFrame(frame.t, v, q, m, SCHEMA_VERSION)
