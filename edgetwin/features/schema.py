"""The canonical, versioned feature schema of the twin's timeline.

Bump ``SCHEMA_VERSION`` whenever a feature is added, removed, renamed or its
meaning or unit changes: models record the version they were trained on and
the runtime refuses a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1

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
)

NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}

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
}


def fed_by(channel_kinds: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The features that channels of these kinds can feed, in schema order."""
    return tuple(name for name in NAMES if SOURCES[name] & channel_kinds)
