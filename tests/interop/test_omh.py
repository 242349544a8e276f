"""``edgetwin export --format omh``: the real CLI, output checked against the published Open
mHealth JSON schemas (vendored in edgetwin/interop/omh_schemas with their licence)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource

from edgetwin.interop.omh import SCHEMA_ALIASES, SCHEMA_BASE, SCHEMA_DIR
from tests.interop.twin_vitals import T0, Vitals, age_decrypt, age_keygen, make_twin


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def twin(tmp_path: Path) -> Vitals:
    return make_twin(tmp_path)


def _registry() -> Registry:
    """Each vendored schema under its published URI; each NAME-1.x alias under its target's."""
    resources = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        contents.pop("$id", None)  # temporal-relationship-to-sleep-1.0's $id is misspelt upstream
        resources[path.name] = Resource.from_contents(contents)
    pairs = [(SCHEMA_BASE + name, res) for name, res in resources.items()]
    pairs += [(SCHEMA_BASE + alias, resources[target]) for alias, target in SCHEMA_ALIASES.items()]
    return Registry().with_resources(pairs)


REGISTRY = _registry()
# jsonschema checks "date-time" only with rfc3339-validator installed: check RFC 3339 here
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str) or not _RFC3339.match(value):
        return False
    dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def _validator(name: str) -> Draft7Validator:
    # a root that only points at the registered URI, so relative $refs resolve from there
    return Draft7Validator({"$ref": SCHEMA_BASE + name}, registry=REGISTRY,
                           format_checker=FORMATS)


def validate(points: list[dict[str, Any]]) -> None:
    wrapper = _validator("data-point-1.0.json")
    for point in points:
        wrapper.validate(point)
        sid = point["header"]["schema_id"]
        assert sid["namespace"] == "omh"
        _validator(f"{sid['name']}-{sid['version']}.json").validate(point["body"])


def _export(twin: Vitals, out: Path, *args: str) -> dict[str, Any]:
    r = twin.cli("export", "--format", "omh", "-o", str(out), *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_every_schema_and_alias_is_vendored_with_its_licence() -> None:
    names = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert set(SCHEMA_ALIASES.values()) <= names
    for path in SCHEMA_DIR.glob("*.json"):
        text = path.read_text()
        for ref in json.loads(text).get("definitions", {}).values():
            target = ref.get("$ref", "")
            if target and not target.startswith("#"):
                assert SCHEMA_ALIASES.get(target, target) in names, (path.name, target)
    assert "Apache License" in (SCHEMA_DIR.parent / "LICENSE").read_text()


def test_the_validator_refuses_what_the_schemas_refuse() -> None:
    """Guards the guard: a registry that resolved nothing would pass everything."""
    good = {"heart_rate": {"value": 60, "unit": "beats/min"},
            "effective_time_frame": {"date_time": "2026-01-01T00:00:00Z"}}
    _validator("heart-rate-2.0.json").validate(good)
    for bad in (
        {**good, "heart_rate": {"value": 60, "unit": "bpm"}},
        {**good, "heart_rate": {"value": "60", "unit": "beats/min"}},
        {**good, "effective_time_frame": {"time_interval": {"start_date_time":
                                                            "2026-01-01T00:00:00Z"}}},
        {"heart_rate": {"value": 60, "unit": "beats/min"}},
        {**good, "effective_time_frame": {"date_time": "2026-01-01 00:00"}},
        {**good, "effective_time_frame": {"date_time": "2026-13-01T00:00:00Z"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validator("heart-rate-2.0.json").validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        _validator("body-temperature-3.0.json").validate(
            {"body_temperature": {"value": 33, "unit": "Cel"},
             "effective_time_frame": {"date_time": "2026-01-01T00:00:00Z"}})


def test_5m_data_points_validate_and_hold_the_known_means(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "omh.json"
    report = _export(twin, out, "--every", "5m")
    points = json.loads(out.read_text())
    validate(points)
    by_schema: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        by_schema.setdefault(p["header"]["schema_id"]["name"], []).append(p)
    assert set(by_schema) == {"heart-rate", "oxygen-saturation", "body-temperature",
                              "rr-interval"}
    assert report["resources"] == {k: len(v) for k, v in by_schema.items()}
    assert len({p["header"]["id"] for p in points}) == len(points)
    fields = {"heart-rate": ("hr", "heart_rate"),
              "oxygen-saturation": ("spo2", "oxygen_saturation"),
              "body-temperature": ("skin_temp", "body_temperature")}
    for name, (feature, field) in fields.items():
        want = twin.window_means(feature, 300.0)
        got = {}
        for p in by_schema[name]:
            body = p["body"]
            assert body["descriptive_statistic"] == "average"
            interval = body["effective_time_frame"]["time_interval"]
            start = _t(interval["start_date_time"])
            assert _t(interval["end_date_time"]) - start == 300.0
            got[start] = body[field]["value"]
        assert set(got) == set(want)
        for start, mean in want.items():
            assert got[start] == pytest.approx(mean, abs=0.051), (name, start)
    assert by_schema["oxygen-saturation"][0]["body"]["measurement_method"] == "pulse oximetry"
    sources = {p["header"]["acquisition_provenance"]["source_name"] for p in points}
    assert any(s.endswith("stream polar") for s in sources)
    # RR: the mean of the raw beats in each window
    rr = {}
    for p in by_schema["rr-interval"]:
        start = _t(p["body"]["effective_time_frame"]["time_interval"]["start_date_time"])
        rr[start] = p["body"]["rr_interval"]["value"]
    first = (twin.rr_t > T0) & (twin.rr_t <= T0 + 300.0)
    assert rr[T0] == pytest.approx(float(twin.rr[first].mean()), abs=0.051)


def test_raw_gives_each_frame_and_each_beat(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "raw.json"
    report = _export(twin, out, "--every", "raw")
    points = json.loads(out.read_text())
    validate(points)
    assert report["resources"]["heart-rate"] == int(twin.usable["hr"].sum())
    assert report["resources"]["oxygen-saturation"] == int(twin.usable["spo2"].sum())
    assert report["resources"]["body-temperature"] == int(twin.usable["skin_temp"].sum())
    beats = [p for p in points if p["header"]["schema_id"]["name"] == "rr-interval"]
    assert len(beats) == twin.rr_t.size
    first = min(beats, key=lambda p: p["body"]["effective_time_frame"]["date_time"])
    assert first["body"]["rr_interval"] == {"value": pytest.approx(twin.rr[0], abs=0.051),
                                            "unit": "ms"}
    assert "descriptive_statistic" not in first["body"]


def test_recipient_output_decrypts_with_age(twin: Vitals, tmp_path: Path) -> None:
    public = age_keygen(tmp_path / "id.txt")
    enc = tmp_path / "omh.json.age"
    report = _export(twin, enc, "--every", "1h", "--recipient", public)
    plain = age_decrypt(enc, tmp_path / "id.txt")
    assert len(plain) == report["plaintext_bytes"]
    points = json.loads(plain)
    validate(points)
    assert {p["header"]["schema_id"]["name"] for p in points} == {
        "heart-rate", "oxygen-saturation", "body-temperature", "rr-interval"}
