"""``edgetwin export --format fhir``: the real CLI on a real twin, parsed back with fhir.resources.

fhir.resources has no R4 (4.0.1) models since version 7 (R5 is its default,
R4B and STU3 are subpackages); R4B changed nothing in Bundle, Observation,
Device or Patient that the export uses, so the R4B models check it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from tests.interop.twin_vitals import (
    EXPORTED,
    N_FRAMES,
    STEP,
    T0,
    Vitals,
    age_decrypt,
    age_keygen,
    make_twin,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
EXPECTED_CODE = {  # feature -> (LOINC codes, UCUM code)
    "hr": ({"8867-4"}, "/min"),
    "rmssd": (set(), "ms"),  # LOINC has no RMSSD code; 80404-7 is SDNN
    "spo2": ({"59408-5", "2708-6"}, "%"),
    "skin_temp": ({"8310-5"}, "Cel"),
}


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def twin(tmp_path: Path) -> Vitals:
    return make_twin(tmp_path)


def _export(twin: Vitals, out: Path, *args: str) -> dict[str, Any]:
    r = twin.cli("export", "--format", "fhir", "-o", str(out), *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _parse(text: str) -> tuple[Bundle, dict[str, Any]]:
    """Every entry validated by its own R4B model, then the whole Bundle."""
    doc = json.loads(text)
    models = {"Observation": Observation, "Device": Device, "Patient": Patient}
    for entry in doc["entry"]:
        resource = entry["resource"]
        models[resource["resourceType"]].model_validate(resource)
    return Bundle.model_validate(doc), doc


def _feature(obs: dict[str, Any]) -> str:
    return next(c["code"] for c in obs["code"]["coding"] if c["system"] == "urn:edgetwin:feature")


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _observations(doc: dict[str, Any], *, forecasts: bool = False) -> list[dict[str, Any]]:
    out = []
    for e in doc["entry"]:
        r = e["resource"]
        if r["resourceType"] != "Observation":
            continue
        if (r["status"] == "preliminary") == forecasts:
            out.append(r)
    return out


def test_5m_windows_hold_the_known_means_with_loinc_and_ucum(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "vitals.json"
    report = _export(twin, out, "--every", "5m")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    bundle, doc = _parse(out.read_text())
    assert bundle.type == "collection"
    assert report["format"] == "fhir" and report["statistic"] == "mean"
    assert report["frames"] == N_FRAMES
    urls = {e["fullUrl"] for e in doc["entry"]}
    by_url = {e["fullUrl"]: e["resource"] for e in doc["entry"]}
    patients = [e for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == 1
    assert set(patients[0]["resource"]) == {"resourceType"}  # nothing that names a person
    observations = _observations(doc)
    seen: dict[str, dict[float, float]] = {}
    for obs in observations:
        feature = _feature(obs)
        loinc, ucum = EXPECTED_CODE[feature]
        assert {c["code"] for c in obs["code"]["coding"] if c["system"] == LOINC} == loinc
        assert "80404-7" not in json.dumps(obs["code"])
        q = obs["valueQuantity"]
        assert (q["system"], q["code"]) == (UCUM, ucum)
        assert obs["status"] == "final"
        assert obs["subject"]["reference"] == patients[0]["fullUrl"]
        assert obs["device"]["reference"] in urls
        start, end = _t(obs["effectivePeriod"]["start"]), _t(obs["effectivePeriod"]["end"])
        assert end - start == 300.0
        assert start % 300.0 == 0.0
        seen.setdefault(feature, {})[start] = q["value"]
        vital = any(c["code"] == "vital-signs" for cat in obs.get("category", [])
                    for c in cat["coding"])
        assert vital == (feature != "rmssd")
        if feature == "skin_temp":
            assert obs["bodySite"]["coding"][0]["code"] == "39937001"
    for feature in EXPORTED:
        want = twin.window_means(feature, 300.0)
        assert set(seen[feature]) == set(want), feature
        for start, mean in want.items():
            assert seen[feature][start] == pytest.approx(mean, abs=0.051), (feature, start)
    # 30 min = 6 windows per feature; the known imputed / poor frames changed the means
    assert report["resources"] == {f: 6 for f in EXPORTED}
    # each observation's device is the stream that fed it; the EEG headset is no device here
    names = {url: r["deviceName"][0]["name"] for url, r in by_url.items()
             if r["resourceType"] == "Device"}
    assert set(names.values()) == {"edgetwin", "polar", "oxi", "patch"}
    fed = {_feature(o): names[o["device"]["reference"]] for o in observations}
    assert fed == {"hr": "polar", "rmssd": "polar", "spo2": "oxi", "skin_temp": "patch"}
    # no forecasts unless asked
    assert _observations(doc, forecasts=True) == []
    text = out.read_text()
    assert "urn:edgetwin:tag" not in text and '"forecast-' not in text


def test_imputed_and_poor_frames_are_left_out_of_the_mean(twin: Vitals, tmp_path: Path) -> None:
    """Guards the guard above: the plain mean of all values differs from the exported one."""
    out = tmp_path / "vitals.json"
    _export(twin, out, "--every", "1h")
    _, doc = _parse(out.read_text())
    hr = [o for o in _observations(doc) if _feature(o) == "hr"]
    assert len(hr) == 1
    value = hr[0]["valueQuantity"]["value"]
    assert value == pytest.approx(float(twin.values["hr"][twin.usable["hr"]].mean()), abs=0.051)
    assert abs(value - float(twin.values["hr"].mean())) > 0.05
    assert "mean of " in hr[0]["method"]["text"]


def test_raw_gives_one_observation_per_usable_frame(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "raw.json"
    report = _export(twin, out, "--every", "raw")
    _, doc = _parse(out.read_text())
    observations = _observations(doc)
    for feature in EXPORTED:
        mine = [o for o in observations if _feature(o) == feature]
        assert len(mine) == int(twin.usable[feature].sum())
        assert report["resources"][feature] == len(mine)
    hr = sorted((o for o in observations if _feature(o) == "hr"),
                key=lambda o: o["effectivePeriod"]["end"])
    first = hr[0]
    assert _t(first["effectivePeriod"]["end"]) == T0 + STEP
    assert _t(first["effectivePeriod"]["start"]) == T0
    assert first["valueQuantity"]["value"] == pytest.approx(twin.values["hr"][0], abs=0.051)
    assert report["statistic"] is None


def test_forecasts_only_when_asked_and_marked_as_such(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "fc.json"
    report = _export(twin, out, "--every", "5m", "--with-forecasts")
    _, doc = _parse(out.read_text())
    measured = {e["fullUrl"]: e["resource"] for e in doc["entry"]
                if e["resource"]["resourceType"] == "Observation"
                and e["resource"]["status"] == "final"}
    forecasts = _observations(doc, forecasts=True)
    # one forecast per target and window (the newest), one Observation per horizon step
    windows = {(p.target, int((p.t - 1e-9) // 300)) for p in twin.preds}
    assert report["forecasts"] == len(forecasts) == 3 * len(windows)
    for obs in forecasts:
        assert {t["code"] for t in obs["meta"]["tag"]} == {"forecast"}
        assert [c["code"] for cat in obs["category"] for c in cat["coding"]] == ["forecast"]
        # no LOINC coding: a query for heart rate (8867-4) must never return a forecast
        assert all(c["system"] != LOINC for c in obs["code"]["coding"])
        assert "8867-4" in obs["code"]["text"]
        assert "valueQuantity" in obs and obs["valueQuantity"]["code"] == "/min"
        lo, hi = (c["valueQuantity"]["value"] for c in obs["component"])
        assert lo <= obs["valueQuantity"]["value"] <= hi
        assert "referenceRange" not in obs
        issued = _t(obs["issued"])
        assert _t(obs["effectiveDateTime"]) > issued
        (ref,) = obs["derivedFrom"]
        seen = measured[ref["reference"]]
        assert _feature(seen) == "hr"
        assert _t(seen["effectivePeriod"]["start"]) < issued <= _t(seen["effectivePeriod"]["end"])
    newest = max(twin.preds, key=lambda p: p.t)
    values = sorted(o["valueQuantity"]["value"] for o in forecasts
                    if _t(o["issued"]) == newest.t)
    assert values == pytest.approx(sorted(newest.horizon), abs=0.051)


def test_recipient_output_decrypts_with_age_to_the_same_json(twin: Vitals,
                                                             tmp_path: Path) -> None:
    public = age_keygen(tmp_path / "id.txt")
    enc = tmp_path / "vitals.json.age"
    report = _export(twin, enc, "--every", "5m", "--recipient", public)
    assert report["mode"] == "recipients"
    assert enc.read_bytes().startswith(b"age-encryption.org/v1\n")
    plain = age_decrypt(enc, tmp_path / "id.txt")
    assert len(plain) == report["plaintext_bytes"]
    _, doc = _parse(plain.decode())
    clear = tmp_path / "clear.json"
    _export(twin, clear, "--every", "5m")
    _, again = _parse(clear.read_text())

    def strip(d: dict[str, Any]) -> list[Any]:
        # fullUrls, ids and timestamps are fresh per export; everything else must match
        text = json.dumps(d)
        for e in d["entry"]:
            text = text.replace(e["fullUrl"], "U")
        out = json.loads(text)
        return [{k: v for k, v in e["resource"].items()} for e in out["entry"]]

    assert strip(doc) == strip(again)
    audit = twin.cli("audit", "--json")
    assert '"format": "fhir"' in audit.output or '"format":"fhir"' in audit.output


def test_default_export_is_still_the_encrypted_twin_bundle(twin: Vitals, tmp_path: Path) -> None:
    public = age_keygen(tmp_path / "id.txt")
    out = tmp_path / "twin.age"
    r = twin.cli("export", "-o", str(out), "--recipient", public, "--json")
    assert r.exit_code == 0, r.output
    assert "bundle_id" in json.loads(r.output)
    none = twin.cli("export", "-o", str(tmp_path / "x.age"))
    assert none.exit_code == 2
    assert "--recipient" in none.output


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--format", "xml"], 2, ["'xml' is not one of", "fhir", "omh"]),
        (["--format", "fhir", "--every", "7x"], 2, ["--every '7x' is not a window", "5m"]),
        (["--format", "fhir", "--every", "0m"], 2, ["--every '0m' is out of range"]),
        (["--format", "omh", "--every", "2s"], 2,
         ["--every 2s is shorter than the twin's step (5 s)", "use raw"]),
        (["--format", "fhir", "--from", "2030-01-01T00:00Z", "--to", "2030-01-02T00:00Z"], 2,
         ["no feature frames from 2030-01-01T00:00:00Z to 2030-01-02T00:00:00Z",
          "this twin holds 360 frames from 2026-01-01T00:00:05Z to 2026-01-01T00:30:00Z",
          "widen --from/--to"]),
        (["--format", "fhir", "--from", "2026-01-02T00:00Z", "--to", "2026-01-01T00:00Z"], 2,
         ["--to (2026-01-01T00:00:00Z) is before --from"]),
        (["--format", "omh", "--with-forecasts"], 2, ["--with-forecasts goes with --format fhir"]),
        (["--every", "5m", "--recipient", "age1x"], 2, ["--every goes with --format fhir or omh"]),
        (["--format", "fhir", "--streams", "polar"], 2, ["--streams goes with twin bundles"]),
        (["--format", "fhir", "--recipient", "not-a-key"], 2,
         ["--recipient 'not-a-key' is not an age public key"]),
    ],
)
def test_bad_input_gets_a_precise_error_and_writes_nothing(
    twin: Vitals, tmp_path: Path, args: list[str], code: int, words: list[str]
) -> None:
    out = tmp_path / "out.json"
    r = twin.cli("export", "-o", str(out), *args)
    assert r.exit_code == code, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out.json")] == []


def test_a_twin_without_frames_says_so(tmp_path: Path) -> None:
    from edgetwin.store import Secret, TwinStore
    from tests.interop.twin_vitals import PASS

    home = tmp_path / "empty"
    TwinStore.create(home, Secret.passphrase(PASS)).close()
    pass_file = tmp_path / "p"
    pass_file.write_text(PASS)
    pass_file.chmod(0o600)
    twin = Vitals(home, pass_file, *([None] * 5))  # type: ignore[arg-type]
    r = twin.cli("export", "--format", "fhir", "-o", str(tmp_path / "o.json"))
    assert r.exit_code == 2
    assert "holds no feature frames yet" in r.output
    assert "edgetwin ingest" in r.output


def test_existing_file_is_kept_without_force(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    out.write_text("keep me")
    r = twin.cli("export", "--format", "fhir", "-o", str(out))
    assert r.exit_code == 2 and "already exists" in r.output
    assert out.read_text() == "keep me"
    _export(twin, out, "--force")
    _parse(out.read_text())


def test_passphrase_output_opens_with_that_passphrase(twin: Vitals, tmp_path: Path) -> None:
    import pyrage

    secret = tmp_path / "bundle-pass"
    secret.write_text("a clinic's passphrase\n")
    secret.chmod(0o600)
    out = tmp_path / "vitals.age"
    report = _export(twin, out, "--every", "1h", "--passphrase",
                     "--bundle-passphrase-file", str(secret))
    assert report["mode"] == "passphrase"
    plain = pyrage.passphrase.decrypt(out.read_bytes(), "a clinic's passphrase")
    bundle, _ = _parse(plain.decode())
    assert bundle.type == "collection"
    with pytest.raises(pyrage.DecryptError):
        pyrage.passphrase.decrypt(out.read_bytes(), "another passphrase")


def test_the_export_runs_without_the_validation_libraries() -> None:
    """fhir.resources and jsonschema are dev extras: the export modules never import them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import edgetwin.interop.export, edgetwin.interop.fhir, edgetwin.interop.omh\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fhir', 'fhir_core', 'pydantic', 'jsonschema', 'referencing'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_from_to_narrows_the_export(twin: Vitals, tmp_path: Path) -> None:
    out = tmp_path / "slice.json"
    r = twin.cli("export", "--format", "fhir", "-o", str(out), "--every", "5m",
                 "--from", str(T0 + 600), "--to", str(T0 + 1200))
    assert r.exit_code == 0, r.output
    assert "exported 3 hr, 3 rmssd, 3 spo2, 3 skin_temp from 121 frames (every 5m)" in r.output
    assert "not encrypted" in r.output
    _, doc = _parse(out.read_text())
    starts = {_t(o["effectivePeriod"]["start"]) for o in _observations(doc)}
    # frames at T0+600 .. T0+1200: the one at T0+600 closes the window (T0+300, T0+600]
    assert starts == {T0 + 300, T0 + 600, T0 + 900}
    edge = [o for o in _observations(doc) if _t(o["effectivePeriod"]["start"]) == T0 + 300]
    assert all(o["method"]["text"].startswith("mean of 1 measured") for o in edge)


def test_the_device_is_the_one_stream_that_fed_the_value_else_edgetwin() -> None:
    from edgetwin.interop.windows import Source, feeding_source

    a = Source("strap-a", frozenset({"rr"}), 0.0, 100.0)
    b = Source("strap-b", frozenset({"rr"}), 50.0, 200.0)
    watch = Source("watch", frozenset({"hr", "spo2"}), 0.0, 200.0)
    both = [a, b, watch]
    assert feeding_source("hr", 0.0, 40.0, both) is a  # RR beats are preferred to a reported hr
    assert feeding_source("hr", 60.0, 90.0, both) is None  # two straps at once: not one stream
    assert feeding_source("hr", 150.0, 190.0, both) is b
    assert feeding_source("hr", 300.0, 400.0, both) is None  # nothing recorded then
    assert feeding_source("spo2", 60.0, 90.0, both) is watch
    assert feeding_source("skin_temp", 60.0, 90.0, both) is None


def test_with_forecasts_says_when_there_are_none(tmp_path: Path) -> None:
    twin = make_twin(tmp_path, forecasts=False)
    r = twin.cli("export", "--format", "fhir", "-o", str(tmp_path / "v.json"), "--with-forecasts")
    assert r.exit_code == 0, r.output
    assert "no forecasts of these vital signs in that range" in r.output
    _, doc = _parse((tmp_path / "v.json").read_text())
    assert _observations(doc, forecasts=True) == []
