"""The few value types every layer shares.

Channel names follow the CSV contract of DESIGN.md, so a channel's name tells
its type and unit: ``hr`` (bpm), ``rr`` (ms, one row per beat), ``spo2`` (%),
``temp`` (°C), ``eda`` (µS), ``ppg`` (a.u.), ``ecg_<lead>`` (µV),
``eeg_<site>`` (µV), ``accel_x|y|z`` (g), ``gyro_x|y|z`` (deg/s),
``fnirs_<source>_<detector>_<nm>`` (raw intensity, a.u.), ``battery`` (%).
Other channels are kept in the store but ignored by the features.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Canonical unit of each channel type, keyed by the name's prefix.
CHANNEL_UNITS: dict[str, str] = {
    "hr": "bpm",
    "rr": "ms",
    "spo2": "%",
    "temp": "degC",
    "eda": "uS",
    "ppg": "a.u.",
    "ecg": "uV",
    "eeg": "uV",
    "accel": "g",
    "gyro": "deg/s",
    "fnirs": "a.u.",
    "battery": "%",
    "resp": "a.u.",
    "marker": "",
}


def channel_kind(name: str) -> str:
    """The channel type of a channel name: ``eeg_af7`` -> ``eeg``."""
    return name.split("_", 1)[0]



# Times the twin stores (samples, frames, predictions, markers): within ±1e11 s of 1970 (about
# the years -1200..5138; past 1e11 a timestamp is milliseconds, see sources.recording). A
# broken or hostile clock (t = 1e300) is refused where it enters, not at a later commit that
# it would fail for every stream.
EARLIEST_T = -1e11
LATEST_T = 1e11


def time_out_of_range(t: float) -> bool:
    """True for a time the store refuses: not finite, or beyond ±1e11 s (years -1200..5138)."""
    return not (math.isfinite(t) and EARLIEST_T <= t <= LATEST_T)

@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of one stream: ``values[i, j]`` is channel ``j`` at time ``t[i]``.

    ``t`` is float64 seconds since the Unix epoch, non-decreasing. ``values``
    is float64 of shape ``(len(t), len(channels))``; NaN marks a missing value.
    ``meta`` carries per-stream facts the features need (e.g. fNIRS
    ``distance_cm``) and must be JSON-serialisable.
    """

    stream: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    t: FloatArray
    values: FloatArray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.units):
            raise ValueError(
                f"stream {self.stream!r}: {len(self.channels)} channels but {len(self.units)} units"
            )
        if self.t.ndim != 1 or self.values.ndim != 2:
            raise ValueError(f"stream {self.stream!r}: t must be 1-D and values 2-D")
        if self.values.shape != (self.t.shape[0], len(self.channels)):
            raise ValueError(
                f"stream {self.stream!r}: values shape {self.values.shape} does not match "
                f"{self.t.shape[0]} timestamps x {len(self.channels)} channels"
            )

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @property
    def first_t(self) -> float:
        return float(self.t[0]) if len(self) else float("nan")

    @property
    def last_t(self) -> float:
        return float(self.t[-1]) if len(self) else float("nan")

    @classmethod
    def build(
        cls,
        stream: str,
        channels: tuple[str, ...] | list[str],
        t: npt.ArrayLike,
        values: npt.ArrayLike,
        units: tuple[str, ...] | list[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SampleBatch:
        """Make a batch, coercing arrays to float64 and filling canonical units."""
        chans = tuple(channels)
        t_arr = np.ascontiguousarray(t, dtype=np.float64).reshape(-1)
        v_arr = np.ascontiguousarray(values, dtype=np.float64).reshape(t_arr.shape[0], len(chans))
        if units is None:
            units = tuple(CHANNEL_UNITS.get(channel_kind(c), "") for c in chans)
        return cls(stream, chans, tuple(units), t_arr, v_arr, dict(meta or {}))


@dataclass(frozen=True, slots=True)
class FeatureFrame:
    """One step of the twin's timeline.

    ``values[k]`` is feature ``names[k]`` of the versioned schema
    (``edgetwin.features.schema``) over the step ending at ``t``; NaN when
    missing. ``quality[k]`` is 0..1; a feature is usable when it is finite and
    its quality is at least the schema's threshold. ``imputed[k]`` is true
    when the value came from the imputer, not from a sensor.
    """

    t: float
    values: FloatArray
    quality: FloatArray
    imputed: npt.NDArray[np.bool_]
    schema_version: int


@dataclass(frozen=True, slots=True)
class Prediction:
    """A forecast of one target feature made after the frame at ``t``.

    ``horizon[k]`` forecasts ``t + (k + 1) * step_s``; ``band[k]`` is its
    (lo, hi) prediction band. ``attention`` weights the context frames,
    oldest first, and sums to 1. ``imputed`` lists ``(t_start, t_end)`` spans
    of the context that the imputer filled. ``anomaly`` is set when the
    observed value at ``t`` fell outside the band forecast for it.

    When the twin serves something other than the global model for some
    steps (a personal correction, or a baseline the model lost to for this
    person), ``sources[k]`` names what served ``horizon[k]`` and
    ``alternatives`` keeps the other forecasts (``("global", values)``, ...)
    so the twin can score them later. ``influence`` weights the context
    frames by how much masking them moves the forecast (occlusion), oldest
    first, summing to 1; empty when not computed.
    """

    t: float
    target: str
    step_s: float
    horizon: tuple[float, ...]
    band: tuple[tuple[float, float], ...]
    attention: tuple[float, ...]
    imputed: tuple[tuple[float, float], ...]
    model: str
    anomaly: bool = False
    sources: tuple[str, ...] = ()
    alternatives: tuple[tuple[str, tuple[float, ...]], ...] = ()
    influence: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md ``predictions`` JSON object."""
        return {
            "t": self.t,
            "target": self.target,
            "step_s": self.step_s,
            "horizon": list(self.horizon),
            "band": [list(b) for b in self.band],
            "attention": list(self.attention),
            "imputed": [list(s) for s in self.imputed],
            "model": self.model,
            "anomaly": self.anomaly,
            **({"sources": list(self.sources)} if self.sources else {}),
            **(
                {"alternatives": {k: list(v) for k, v in self.alternatives}}
                if self.alternatives
                else {}
            ),
            **({"influence": list(self.influence)} if self.influence else {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Prediction:
        return cls(
            t=float(obj["t"]),
            target=str(obj["target"]),
            step_s=float(obj["step_s"]),
            horizon=tuple(float(x) for x in obj["horizon"]),
            band=tuple((float(lo), float(hi)) for lo, hi in obj["band"]),
            attention=tuple(float(x) for x in obj["attention"]),
            imputed=tuple((float(a), float(b)) for a, b in obj["imputed"]),
            model=str(obj.get("model", "")),
            anomaly=bool(obj.get("anomaly", False)),
            sources=tuple(str(x) for x in obj.get("sources", ())),
            alternatives=tuple(
                (str(k), tuple(float(x) for x in v))
                for k, v in dict(obj.get("alternatives", {})).items()
            ),
            influence=tuple(float(x) for x in obj.get("influence", ())),
        )


# -- markers ---------------------------------------------------------------------------

# characters of a marker's text: one JSON request line of the control socket (4 KiB) holds
# it even when every character is escaped (\uXXXX)
MARKER_TEXT_MAX = 512
MARKER_SOURCE_MAX = 128  # characters of a marker's source
# Bidirectional overrides and isolates: they reorder what a terminal shows ("Trojan Source").
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# unicodedata has no names for C0 controls: the usual ones, for messages
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BELL", 0x08: "BACKSPACE", 0x09: "TAB",
                  0x0A: "LINE FEED", 0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE", 0x7F: "DELETE"}


def _is_control(ch: str) -> bool:
    return (
        unicodedata.category(ch) in ("Cc", "Zl", "Zp")  # C0, DEL, C1, line/paragraph separators
        or ch in _BIDI_CONTROLS
    )


def marker_problem(
    text: str, *, what: str = "marker text", limit: int = MARKER_TEXT_MAX
) -> str | None:
    """Why ``text`` cannot be a marker's text (or source); None when it can.

    Refused: empty (or only blanks), longer than ``limit`` characters, and any
    control character (C0/C1, DEL, line and paragraph separators, bidi overrides),
    named with its position and code point.
    """
    if not isinstance(text, str):
        return f"{what} must be a string, not {type(text).__name__}"
    if not text.strip():
        return f"{what} is empty"
    if len(text) > limit:
        return f"{what} is {len(text)} characters long; at most {limit} are kept"
    for i, ch in enumerate(text):
        if _is_control(ch):
            return (
                f"{what} holds the control character U+{ord(ch):04X} "
                f"({_CONTROL_NAMES.get(ord(ch)) or unicodedata.name(ch, 'control')}) "
                f"at position {i + 1}"
            )
    return None


def escape_marker_text(text: str, *, limit: int = MARKER_TEXT_MAX) -> str:
    """A marker text from a machine source (XDF, LSL, a board) made storable: each control
    character becomes ``\\xNN`` / ``\\uNNNN`` (a backslash escape, as Python writes it),
    surrounding blanks are stripped, and text past ``limit`` characters is cut with a
    ``...[+N]`` note saying how many were dropped. Empty stays empty (callers skip it)."""
    out = []
    for ch in text.strip():
        if _is_control(ch):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    escaped = "".join(out)
    if len(escaped) > limit:
        keep = limit - len(f"...[+{len(escaped)}]")
        escaped = escaped[:keep] + f"...[+{len(escaped) - keep}]"
    return escaped


@dataclass(frozen=True, slots=True)
class Marker:
    """An event on the twin's timeline: ``text`` at ``t`` (epoch seconds), from ``source``.

    ``source`` says where it came from: ``cli`` (``edgetwin mark``),
    ``xdf:<stream>``, ``lsl:<name>``, ``brainflow:<board>``. Text and source
    must pass :func:`marker_problem` to be stored; machine sources pass their
    text through :func:`escape_marker_text` first.
    """

    t: float
    text: str
    source: str = "cli"

    def problem(self) -> str | None:
        """Why this marker cannot be stored; None when it can."""
        if not isinstance(self.t, int | float) or not math.isfinite(self.t):
            return f"marker time {self.t!r} is not a finite number of seconds"
        if time_out_of_range(self.t):
            return f"marker time {self.t!r} is outside the years -1200..5138 (±1e11 s)"
        return marker_problem(self.text) or marker_problem(
            self.source, what="marker source", limit=MARKER_SOURCE_MAX
        )

    def to_json(self) -> dict[str, Any]:
        """``{"t", "text", "source"}`` (the ``markers --json`` object)."""
        return {"t": self.t, "text": self.text, "source": self.source}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Marker:
        return cls(t=float(obj["t"]), text=str(obj["text"]), source=str(obj.get("source", "cli")))


def channel_markers(batch: SampleBatch) -> list[Marker]:
    """The markers a batch's ``marker`` channel carries (BrainFlow's marker channel: 0, or
    the value ``insert_marker`` put there): each nonzero finite value at its sample's
    time, as text (``3``, ``2.5``), from ``brainflow:<board>`` when the batch's meta names
    the board, else from the stream's name."""
    if "marker" not in batch.channels or not len(batch):
        return []
    col = batch.values[:, batch.channels.index("marker")]
    hit = np.flatnonzero(np.isfinite(col) & (col != 0))
    if not hit.size:
        return []
    board = batch.meta.get("board")
    source = f"brainflow:{board}" if isinstance(board, str) and board else batch.stream
    source = escape_marker_text(source, limit=MARKER_SOURCE_MAX)
    out = []
    for i in hit.tolist():
        v = float(col[i])
        out.append(Marker(float(batch.t[i]), str(int(v)) if v.is_integer() else f"{v:g}", source))
    return out
