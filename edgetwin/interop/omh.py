"""The twin's timeline as Open mHealth data points (a JSON array of ``{header, body}``).

Body schemas (vendored with their licence in ``omh_schemas/``):

- ``omh:heart-rate:2.0`` from the ``hr`` feature,
- ``omh:oxygen-saturation:2.0`` from ``spo2`` (pulse oximetry, peripheral capillary),
- ``omh:body-temperature:3.0`` from ``skin_temp`` (no ``measurement_location``: the
  schema's list has no "skin" and the twin does not know where a sensor sat),
- ``omh:rr-interval:1.0`` from the raw RR samples of every stream that has them:
  every beat with ``--every raw``, else the mean RR per window.

Aggregated values carry ``descriptive_statistic: "average"`` and a
``time_interval`` of the window; a raw feature frame is itself a mean over
its step, so it is marked the same way with the step as the interval. The
header has a fresh UUID, the creation time, the body's schema id and
``acquisition_provenance`` (``source_name`` = edgetwin and the stream when
one stream fed the value, ``modality`` ``sensed``). No ``user_id``: as with
the FHIR export, the twin holds no identity to put there.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetwin.interop.windows import Aggregate, Source, feeding_source, iso_utc

if TYPE_CHECKING:
    from edgetwin.types import SampleBatch

SCHEMA_DIR = Path(__file__).with_name("omh_schemas") / "omh"

# upstream NAME-1.x.json are git symlinks to the newest 1.y; see omh_schemas/README.md
SCHEMA_ALIASES: dict[str, str] = {
    "unit-value-1.x.json": "unit-value-1.0.json",
    "time-frame-1.x.json": "time-frame-1.0.json",
    "time-interval-1.x.json": "time-interval-1.0.json",
    "date-time-1.x.json": "date-time-1.0.json",
    "duration-unit-value-1.x.json": "duration-unit-value-1.0.json",
    "temperature-unit-value-1.x.json": "temperature-unit-value-1.0.json",
    "descriptive-statistic-1.x.json": "descriptive-statistic-1.1.json",
    "part-of-day-1.x.json": "part-of-day-1.0.json",
    "schema-id-1.x.json": "schema-id-1.1.json",
    "header-1.x.json": "header-1.2.json",
    "temporal-relationship-to-physical-activity-1.x.json":
        "temporal-relationship-to-physical-activity-1.0.json",
    "temporal-relationship-to-sleep-1.x.json": "temporal-relationship-to-sleep-1.0.json",
}
SCHEMA_BASE = "https://w3id.org/openmhealth/schemas/omh/"


@dataclass(frozen=True)
class BodySchema:
    name: str
    version: str
    field: str  # the body's value property
    unit: str  # OMH unit spelling
    extra: tuple[tuple[str, str], ...] = ()
    decimals: int = 2

    @property
    def file(self) -> str:
        return f"{self.name}-{self.version}.json"


BODIES: dict[str, BodySchema] = {
    "hr": BodySchema("heart-rate", "2.0", "heart_rate", "beats/min", decimals=1),
    "spo2": BodySchema("oxygen-saturation", "2.0", "oxygen_saturation", "%",
                       (("system", "peripheral capillary"),
                        ("measurement_method", "pulse oximetry")), decimals=1),
    "skin_temp": BodySchema("body-temperature", "3.0", "body_temperature", "C"),
}
RR = BodySchema("rr-interval", "1.0", "rr_interval", "ms", decimals=1)


@dataclass
class OmhCounts:
    """What an Open mHealth export wrote, per body schema name."""

    points: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.points.values())


@dataclass(frozen=True)
class RrSeries:
    """The RR intervals (ms) of one stream at their beat times."""

    stream: str
    t: np.ndarray
    rr: np.ndarray


class OmhWriter:
    """Builds the data-point array piece by piece; ``counts`` fills in while ``chunks`` runs."""

    def __init__(
        self,
        aggregates: Iterable[Aggregate],
        sources: list[Source],
        rr: Iterable[RrSeries],
        *,
        every: float | None,
        created: float,
        version: str,
    ) -> None:
        self.aggregates = aggregates
        self.sources = sources
        self.rr = rr
        self.every = every
        self.created = iso_utc(round(created, 3))
        self.version = version
        self.counts = OmhCounts()

    def chunks(self) -> Iterator[bytes]:
        """The JSON array as UTF-8 pieces (one data point per piece)."""
        yield b"[\n"
        first = True
        for point in self._points():
            piece = json.dumps(point, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            yield (piece if first else ",\n" + piece).encode()
            first = False
        yield b"\n]\n"

    def _points(self) -> Iterator[dict[str, Any]]:
        for agg in self.aggregates:
            schema = BODIES.get(agg.feature)
            if schema is None:
                continue
            source = feeding_source(agg.feature, agg.start, agg.end, self.sources)
            body: dict[str, Any] = {
                schema.field: {"value": round(agg.value, schema.decimals), "unit": schema.unit},
                "effective_time_frame": _interval(agg.start, agg.end),
                "descriptive_statistic": "average",
                **dict(schema.extra),
            }
            yield self._point(schema, body, source.name if source else None)
        for series in self.rr:
            for start, end, value, single in _rr_values(series, self.every):
                frame = {"date_time": iso_utc(end)} if single else _interval(start, end)
                body = {RR.field: {"value": round(value, RR.decimals), "unit": RR.unit},
                        "effective_time_frame": frame}
                if not single:
                    body["descriptive_statistic"] = "average"
                yield self._point(RR, body, series.stream)

    def _point(
        self, schema: BodySchema, body: dict[str, Any], stream: str | None
    ) -> dict[str, Any]:
        self.counts.points[schema.name] = self.counts.points.get(schema.name, 0) + 1
        source = f"edgetwin {self.version}" + (f", stream {stream}" if stream else "")
        return {
            "header": {
                "id": str(uuid.uuid4()),
                "creation_date_time": self.created,
                "schema_id": {"namespace": "omh", "name": schema.name, "version": schema.version},
                "acquisition_provenance": {"source_name": source, "modality": "sensed"},
            },
            "body": body,
        }


def rr_series(batches: Iterable[SampleBatch], stream: str) -> RrSeries | None:
    """The finite, positive values of a stream's ``rr`` channels, in time order."""
    from edgetwin.types import channel_kind

    ts: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    for b in batches:
        for j, name in enumerate(b.channels):
            if channel_kind(name) != "rr":
                continue
            col = b.values[:, j]
            ok = np.isfinite(col) & (col > 0)
            ts.append(b.t[ok])
            vs.append(col[ok])
    if not ts:
        return None
    t = np.concatenate(ts)
    v = np.concatenate(vs)
    if not t.size:
        return None
    order = np.argsort(t, kind="stable")
    return RrSeries(stream, t[order], v[order])


def _rr_values(
    series: RrSeries, every: float | None
) -> Iterator[tuple[float, float, float, bool]]:
    """``(start, end, value, single)``: each beat (raw), or the mean RR per window."""
    if every is None:
        for t, v in zip(series.t.tolist(), series.rr.tolist(), strict=True):
            yield t, t, v, True
        return
    win = np.ceil(series.t / every).astype(np.int64) - 1
    keys, first = np.unique(win, return_index=True)
    bounds = [*first.tolist(), series.t.size]
    for j, key in enumerate(keys.tolist()):
        mean = float(np.mean(series.rr[bounds[j]:bounds[j + 1]]))
        if math.isfinite(mean):
            yield key * every, key * every + every, mean, False


def _interval(start: float, end: float) -> dict[str, Any]:
    return {"time_interval": {"start_date_time": iso_utc(start), "end_date_time": iso_utc(end)}}
