"""The twin's feature timeline as a FHIR R4 ``Bundle`` (type ``collection``) of Observations.

What goes in, and the choices made:

- One ``Observation`` per feature and window (``--every``), value = the mean
  of the usable, measured (not imputed) frames (``interop.windows``), with a
  UCUM ``valueQuantity`` and ``effectivePeriod`` = the window. Heart rate,
  SpO2, skin temperature and respiratory rate carry the HL7 ``vital-signs``
  category and the LOINC codes of the FHIR vital-signs profiles; the
  profiles are not claimed in ``meta.profile`` (nothing here checks them).
- HRV: the twin measures **RMSSD**. LOINC 80404-7 is "R-R interval.standard
  deviation", i.e. SDNN, a different statistic with different norms, and
  LOINC has no RMSSD code, so RMSSD is coded in edgetwin's own system only
  (``FEATURE_SYSTEM``) with a plain-text name. Labelling it 80404-7 would
  have a clinic read RMSSD against SDNN norms.
- Temperature: the twin's ``skin_temp`` is coded LOINC 8310-5 (body
  temperature, site unspecified) with ``bodySite`` = skin (SNOMED 39937001),
  because a wrist or patch sensor reads the skin, a few degrees below core.
- The patient is an **anonymous reference**: one ``Patient`` entry with no
  name, identifier or birth date, under a random ``urn:uuid`` drawn per
  export. The vital-signs profiles need a subject, and the clinic must see
  that all observations belong to one person; but the twin holds no
  identity, and a fresh id per export keeps two exports unlinkable. The
  receiving system attaches the bundle to its own patient record on filing.
- One ``Device`` per stored stream that feeds an exported feature
  (``deviceName`` = the stream name; no addresses or serial numbers, which
  identify a person's gear), plus one ``Device`` for edgetwin itself. An
  Observation's ``device`` is the stream that fed it when that is one stream
  (``windows.feeding_source``); otherwise edgetwin, which computed the value.
- Forecasts only with ``with_forecasts``: per target and window the newest
  forecast (raw: every one), one Observation per horizon step at the time it
  forecasts (``effectiveDateTime``), ``issued`` = when it was made. Marked so
  that nothing files them as measurements: ``status`` ``preliminary``, a
  ``meta.tag`` and a ``category`` ``forecast`` in edgetwin's system, a
  ``code`` in edgetwin's system only (no LOINC coding, so a query for LOINC
  8867-4 never returns a forecast; the LOINC code is named in the text),
  ``derivedFrom`` the measured Observation of the window the model last saw
  when it is in the bundle. The prediction band goes in two ``component``s
  (band low / band high), not in ``referenceRange``: a reference range
  means "normal for this person or population" and viewers show it as such,
  which a model's uncertainty band is not.

The Bundle is written as a stream of JSON pieces (``FhirWriter.chunks``):
a day of raw frames is hundreds of thousands of resources, never held as one
document in memory.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edgetwin.interop.windows import Aggregate, Source, feeding_source, iso_utc
from edgetwin.types import Prediction

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
FEATURE_SYSTEM = "urn:edgetwin:feature"  # edgetwin's own codes: the feature schema's names
TAG_SYSTEM = "urn:edgetwin:tag"
CATEGORY_SYSTEM = "urn:edgetwin:observation-category"
FORECAST_PREFIX = "forecast-"


@dataclass(frozen=True)
class Metric:
    """How one feature of the timeline becomes a FHIR Observation."""

    feature: str
    codings: tuple[tuple[str, str], ...]  # (LOINC code, display), first is the main one
    text: str
    ucum: str
    unit: str  # human-readable unit
    vital_sign: bool = True
    body_site: tuple[str, str] | None = None  # (SNOMED code, display)
    decimals: int = 2


METRICS: dict[str, Metric] = {
    m.feature: m
    for m in (
        Metric("hr", (("8867-4", "Heart rate"),), "Heart rate", "/min", "beats/minute", decimals=1),
        Metric("rmssd", (), "Heart rate variability, RMSSD of successive RR intervals (last 30 s)",
               "ms", "ms", vital_sign=False, decimals=1),
        Metric("spo2", (("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
                        ("2708-6", "Oxygen saturation in Arterial blood")),
               "Oxygen saturation (pulse oximetry)", "%", "%", decimals=1),
        Metric("skin_temp", (("8310-5", "Body temperature"),), "Skin temperature", "Cel", "°C",
               body_site=("39937001", "Skin structure"), decimals=2),
        # no feature of the current schema computes it; exported as soon as one does
        Metric("resp_rate", (("9279-1", "Respiratory rate"),), "Respiratory rate", "/min",
               "breaths/minute", decimals=1),
    )
}


@dataclass
class FhirCounts:
    """What a FHIR export wrote."""

    observations: dict[str, int] = field(default_factory=dict)
    forecasts: int = 0
    devices: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.observations.values()) + self.forecasts


class FhirWriter:
    """Builds the Bundle's JSON, piece by piece; ``counts`` fills in while ``chunks`` runs."""

    def __init__(
        self,
        aggregates: Iterable[Aggregate],
        sources: list[Source],
        *,
        every: float | None,
        step_s: float,
        created: float,
        version: str,
        predictions: Iterable[Prediction] | None = None,
    ) -> None:
        self.aggregates = aggregates
        self.sources = sources
        self.every = every
        self.step_s = step_s
        self.created = created
        self.version = version
        self.predictions = predictions
        self.counts = FhirCounts()
        self.patient_url = _urn()
        self.twin_url = _urn()
        self._device_urls: dict[str, str] = {}
        # (feature, window start) -> fullUrl of its measured Observation, for derivedFrom
        self._measured: dict[tuple[str, float], str] = {}

    def chunks(self) -> Iterator[bytes]:
        """The Bundle as UTF-8 JSON pieces, in order (one resource per piece)."""
        head = {
            "resourceType": "Bundle",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": _urn()},
            "type": "collection",
            "timestamp": iso_utc(round(self.created, 3)),
        }
        text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
        yield (text[:-1] + ',"entry":[\n').encode()
        first = True
        for entry in self._entries():
            piece = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            yield (piece if first else ",\n" + piece).encode()
            first = False
        yield b"\n]}\n"

    # -- entries ------------------------------------------------------------------------

    def _entries(self) -> Iterator[dict[str, Any]]:
        yield _entry(self.patient_url, {"resourceType": "Patient"})
        yield _entry(self.twin_url, self._twin_device())
        for source in self.sources:
            url = _urn()
            self._device_urls[source.name] = url
            self.counts.devices.append(source.name)
            yield _entry(url, {
                "resourceType": "Device",
                "deviceName": [{"name": source.name, "type": "user-friendly-name"}],
                "type": {"text": "sensor stream (" + ", ".join(sorted(source.kinds)) + ")"},
                "parent": {"reference": self.twin_url},
            })
        for agg in self.aggregates:
            metric = METRICS.get(agg.feature)
            if metric is None:
                continue
            url = _urn()
            if self.predictions is not None:  # only forecasts look them up (derivedFrom)
                self._measured[(agg.feature, agg.start)] = url
            self.counts.observations[agg.feature] = self.counts.observations.get(agg.feature, 0) + 1
            yield _entry(url, self._measured_obs(metric, agg))
        if self.predictions is not None:
            for pred in _chosen_forecasts(self.predictions, self.every):
                metric = METRICS.get(pred.target)
                if metric is None:
                    continue
                for k in range(len(pred.horizon)):
                    obs = self._forecast_obs(metric, pred, k)
                    if obs is not None:
                        self.counts.forecasts += 1
                        yield _entry(_urn(), obs)

    def _twin_device(self) -> dict[str, Any]:
        return {
            "resourceType": "Device",
            "deviceName": [{"name": "edgetwin", "type": "model-name"}],
            "type": {"text": "software: on-device digital twin (feature extraction, forecasting)"},
            "version": [{"value": self.version}],
        }

    def _device_for(self, feature: str, start: float, end: float) -> str:
        source = feeding_source(feature, start, end, self.sources)
        if source is not None and source.name in self._device_urls:
            return self._device_urls[source.name]
        return self.twin_url

    def _measured_obs(self, metric: Metric, agg: Aggregate) -> dict[str, Any]:
        obs: dict[str, Any] = {"resourceType": "Observation", "status": "final"}
        if metric.vital_sign:
            obs["category"] = [_vital_signs()]
        obs["code"] = {
            "coding": [
                *({"system": LOINC, "code": c, "display": d} for c, d in metric.codings),
                {"system": FEATURE_SYSTEM, "code": metric.feature},
            ],
            "text": metric.text,
        }
        obs["subject"] = {"reference": self.patient_url}
        obs["effectivePeriod"] = {"start": iso_utc(agg.start), "end": iso_utc(agg.end)}
        obs["device"] = {"reference": self._device_for(metric.feature, agg.start, agg.end)}
        obs["valueQuantity"] = _quantity(agg.value, metric)
        if metric.body_site is not None:
            code, display = metric.body_site
            obs["bodySite"] = {"coding": [{"system": SNOMED, "code": code, "display": display}]}
        if self.every is None:
            how = f"one feature frame (the {_secs(self.step_s)} step ending at effectivePeriod.end)"
        else:
            how = (f"mean of {agg.count} measured feature frames of {_secs(self.step_s)} in the "
                   f"{_secs(self.every)} window (imputed values left out)")
        obs["method"] = {"text": how}
        return obs

    def _forecast_obs(self, metric: Metric, pred: Prediction, k: int) -> dict[str, Any] | None:
        value = pred.horizon[k]
        lo, hi = pred.band[k] if k < len(pred.band) else (math.nan, math.nan)
        if not (math.isfinite(value) and math.isfinite(lo) and math.isfinite(hi)):
            return None
        at = pred.t + (k + 1) * pred.step_s
        main = metric.codings[0][0] if metric.codings else None
        about = f"{metric.text}" + (f" (LOINC {main})" if main else "")
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": {"tag": [{"system": TAG_SYSTEM, "code": "forecast",
                              "display": "forecast by the on-device model, not a measurement"}]},
            "status": "preliminary",
            "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "forecast",
                                      "display": "Forecast"}], "text": "Forecast"}],
            "code": {
                "coding": [{"system": FEATURE_SYSTEM, "code": FORECAST_PREFIX + metric.feature}],
                "text": f"Forecast of {about}, not a measurement",
            },
            "subject": {"reference": self.patient_url},
            "effectiveDateTime": iso_utc(round(at, 3)),
            "issued": iso_utc(round(pred.t, 3)),
            "device": {"reference": self.twin_url},
            "valueQuantity": _quantity(value, metric),
            "method": {"text": f"model {pred.model or 'unknown'}: step {k + 1} of "
                               f"{len(pred.horizon)} ({_secs(pred.step_s)} each) after the "
                               "frame at 'issued'"},
            "component": [
                _band_component("forecast-band-low", "Prediction band, lower bound", lo, metric),
                _band_component("forecast-band-high", "Prediction band, upper bound", hi, metric),
            ],
        }
        seen = self._measured.get((pred.target, self._window_start(pred.t)))
        if seen is not None:
            obs["derivedFrom"] = [{"reference": seen}]
        return obs

    def _window_start(self, t: float) -> float:
        if self.every is None:
            return t - self.step_s
        return (math.ceil(t / self.every) - 1) * self.every


def _chosen_forecasts(preds: Iterable[Prediction], every: float | None) -> Iterator[Prediction]:
    """Every forecast (raw), else per target and window the newest one made in it."""
    if every is None:
        yield from preds
        return
    newest: dict[tuple[str, int], Prediction] = {}
    for p in preds:
        key = (p.target, math.ceil(p.t / every) - 1)
        if key not in newest or p.t >= newest[key].t:
            newest[key] = p
    yield from sorted(newest.values(), key=lambda p: (p.t, p.target))


def _quantity(value: float, metric: Metric) -> dict[str, Any]:
    return {"value": round(float(value), metric.decimals), "unit": metric.unit,
            "system": UCUM, "code": metric.ucum}


def _band_component(code: str, display: str, value: float, metric: Metric) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": FEATURE_SYSTEM, "code": code, "display": display}],
                 "text": display},
        "valueQuantity": _quantity(value, metric),
    }


def _vital_signs() -> dict[str, Any]:
    return {"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}


def _entry(url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": url, "resource": resource}


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _secs(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
