"""The catalogue of summaries that may leave the device, and how each is computed.

Each metric is one clipped statistic over one person's usable feature frames in
one period (a UTC day or hour). Every value is clipped into the metric's
``[lower, upper]`` bounds before it is summarised, so the summary itself lies
in ``[lower, upper]``. The unit of privacy is the whole person-period: any or
all of the period's frames may change, so the summary may move anywhere in its
bounds and its sensitivity is ``upper - lower`` (not ``(upper - lower) / n``,
which would protect one frame, not the person).

This module is pure (numpy and the feature schema only): the config loader
imports it to check bounds keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgetwin.errors import ConfigError, PrivacyRefused

PERIOD_SECONDS: dict[str, int] = {"day": 86_400, "hour": 3_600}


# Location never leaves the device: no DP release, no consent, no sync, no secure
# aggregation. The features and channel kinds that say where the person is (the gpsd
# source's ``<name>.location`` stream: lat, lon, place, homedist; the timeline's place
# and home_distance), and the words a metric about them would start with.
LOCATION_FEATURES = frozenset({"place", "home_distance"})
LOCATION_CHANNELS = frozenset({"lat", "lon", "place", "homedist"})
_LOCATION_WORDS = frozenset({*LOCATION_FEATURES, *LOCATION_CHANNELS, "home", "location",
                             "gps", "gpsd", "latitude", "longitude", "distance"})


def is_location(name: str) -> bool:
    """Whether a metric, feature or channel name is about where the person is."""
    low = name.strip().lower()
    words = low.replace("-", "_").split("_")
    return (low in _LOCATION_WORDS or words[0] in _LOCATION_WORDS
            or "_".join(words[:2]) in LOCATION_FEATURES or low.endswith(".location"))


def location_refusal(name: str) -> str:
    """The one sentence that says why ``name`` cannot leave the device."""
    return (f"{name!r} is derived from location (place, distance from home, lat/lon), which "
            "never leaves this device: it cannot be consented to, released with differential "
            "privacy, synced or aggregated")


@dataclass(frozen=True)
class Metric:
    """One releasable summary: which feature, which statistic, default clipping bounds."""

    name: str
    feature: str  # a name of edgetwin.features.schema.NAMES
    unit: str
    statistic: str  # "mean" | "p10" | "active_minutes"
    default_bounds: tuple[float, float]
    why: str  # why these bounds (README and report)

    def __post_init__(self) -> None:
        if is_location(self.name) or is_location(self.feature):
            # by construction: no catalogue entry can ever summarise where the person is
            raise PrivacyRefused(location_refusal(self.name))


# Defaults are chosen so that the bulk of a healthy adult population falls inside the
# bounds: clipping then biases few people, while the range (the sensitivity) stays as
# small as possible, because the noise scale is range / epsilon.
_CATALOGUE: tuple[Metric, ...] = (
    Metric("hr_mean", "hr", "bpm", "mean", (50.0, 110.0),
           "daily mean heart rate of adults rarely leaves 50-110 bpm (athletes low, fever high)"),
    Metric("hr_resting", "hr", "bpm", "p10", (35.0, 100.0),
           "10th percentile of heart rate: resting HR, 35 (athletes) to 100 (tachycardia)"),
    Metric("rmssd_mean", "rmssd", "ms", "mean", (5.0, 150.0),
           "short-term HRV of adults spans ~5-150 ms"),
    Metric("spo2_mean", "spo2", "%", "mean", (85.0, 100.0),
           "below 85 % is a clinical emergency, above 100 % impossible"),
    Metric("skin_temp_mean", "skin_temp", "degC", "mean", (25.0, 38.0),
           "wrist skin temperature in daily life"),
    Metric("active_minutes", "motion", "min", "active_minutes", (0.0, 300.0),
           "minutes with motion above privacy.active_motion_g; more than 5 h/day is clipped"),
    Metric("eeg_alpha_share", "eeg_alpha", "1", "mean", (0.0, 0.6),
           "relative alpha power is a share; above 0.6 is artefact"),
    Metric("fnirs_hbo_mean", "fnirs_hbo", "uM", "mean", (-5.0, 5.0),
           "HbO concentration changes stay within a few micromolar"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _CATALOGUE}


def get_metric(name: str) -> Metric:
    """The catalogue entry for ``name``; PrivacyRefused for anything about location, else a
    ConfigError with did-you-mean."""
    if is_location(name):
        raise PrivacyRefused(location_refusal(name),
                             hint="location stays on the device; see 'edgetwin consent list' "
                             "for what may leave")
    try:
        return METRICS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, METRICS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known metrics: {', '.join(METRICS)}"
        raise ConfigError(f"unknown metric {name!r}", hint=hint) from None


def bounds_for(
    metric: Metric, overrides: dict[str, list[float]], period: str
) -> tuple[float, float]:
    """Clipping bounds of ``metric`` for a ``period`` window: config override, else default.

    ``active_minutes`` cannot exceed the minutes in the window, so its upper bound
    is capped at the window's length (60 for an hour).
    """
    if metric.name in overrides:
        lo, hi = (float(x) for x in overrides[metric.name])
    else:
        lo, hi = metric.default_bounds
    if metric.statistic == "active_minutes":
        hi = min(hi, PERIOD_SECONDS[period] / 60.0)
    if not lo < hi:
        raise ConfigError(
            f"privacy.bounds.{metric.name}: lower {lo} must be below upper {hi}",
            hint="edit config.toml",
        )
    return lo, hi


def summarize(
    metric: Metric,
    values: npt.NDArray[np.float64],
    bounds: tuple[float, float],
    *,
    step_s: float,
    active_motion_g: float,
) -> float:
    """The clipped statistic of ``values`` (usable frames only), always within ``bounds``."""
    lo, hi = bounds
    if values.size == 0:
        raise ValueError(f"{metric.name}: no usable frames to summarise")
    if metric.statistic == "active_minutes":
        minutes = float(np.count_nonzero(values > active_motion_g)) * step_s / 60.0
        return float(min(max(minutes, lo), hi))
    clipped = np.clip(values, lo, hi)
    if metric.statistic == "mean":
        result = float(np.mean(clipped))
    elif metric.statistic == "p10":
        result = float(np.percentile(clipped, 10.0))
    else:  # pragma: no cover - the catalogue above is closed
        raise AssertionError(metric.statistic)
    # Rounding in the mean can step a hair outside; the mechanism's domain is [lo, hi].
    return min(max(result, lo), hi)


def window_start(t: float, period: str) -> float:
    """Start of the UTC ``period`` window holding time ``t``."""
    size = PERIOD_SECONDS[period]
    return float(int(t // size) * size)
