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
