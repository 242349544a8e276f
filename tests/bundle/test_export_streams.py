"""Export takes every stream shape a source writes: per-channel meta, extreme values,
jittered clocks, gaps and breaks; import gives the samples back (EDF: to 16 bits, times
exactly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.bundle import export_bundle, import_bundle, unpack_bundle
from edgetwin.bundle.age import load_identities
from edgetwin.bundle.formats import edf_fit, fnirs_distance
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch
from tests.bundle.conftest import T0, AgeKey

EEG = ("eeg_fz", "eeg_cz", "eeg_pz")


def _round_trip(
    tmp_path: Path, key: AgeKey, batches: list[SampleBatch]
) -> tuple[dict[str, Any], Path, dict[str, SampleBatch]]:
    """Store ``batches``, export, unpack and import: (manifest, unpacked dir, imported)."""
    secret = Secret.passphrase("p")
    src = TwinStore.create(tmp_path / "src", secret)
    with src:
        for b in batches:
            src.append_samples(b)
            src.commit()
        out = tmp_path / "b.age"
        export_bundle(src, out, recipients=[key.public])
    dest = tmp_path / "unpacked"
    dest.mkdir()
    manifest = unpack_bundle(out, dest, identities=load_identities(key.path))
    home = tmp_path / "restored"
    import_bundle(out, home, identities=load_identities(key.path), secret=secret)
    got: dict[str, SampleBatch] = {}
    with TwinStore.open(home, secret) as store:
        for info in store.streams():
            parts = list(store.read_samples(info.name))
            got[info.name] = SampleBatch(
                info.name, parts[0].channels, parts[0].units,
                np.concatenate([p.t for p in parts]), np.concatenate([p.values for p in parts]),
                parts[0].meta,
            )
    return manifest, dest, got


def _stream(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in manifest["streams"] if s["name"] == name)


# -- item 1: metadata shapes -----------------------------------------------------------


SIM_DISTANCE = {  # the simulator's fNIRS meta: distance per channel, one short channel
    "fnirs_s1_d1_760": 3.0, "fnirs_s1_d1_850": 3.0, "fnirs_s1_d2_760": 3.0,
    "fnirs_s1_d2_850": 3.0, "fnirs_s2_d1_760": 3.0, "fnirs_s2_d1_850": 3.0,
    "fnirs_s2_d2_760": 0.8, "fnirs_s2_d2_850": 0.8,
}


def test_export_handles_per_channel_distance_dict(tmp_path: Path, key: AgeKey) -> None:
    import h5py

    channels = tuple(SIM_DISTANCE)
    n = 200
    t = T0 + np.arange(n) / 10.0
    values = np.random.default_rng(1).uniform(1e4, 2e4, (n, len(channels)))
    meta = {"distance_cm": SIM_DISTANCE, "wavelengths_nm": [760, 850], "age_years": 30.0,
            "sampling_rate_hz": 10.0}
    athena = {"fnirs_left_outer_730": 3.0, "fnirs_left_inner_730": 1.0,
              "fnirs_right_outer_730": 3.0, "fnirs_right_inner_730": 1.0}
    manifest, dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("sim.fnirs", channels, t, values, meta=meta),
        SampleBatch.build("muse.optics", tuple(athena), t, values[:, :4],
                          meta={"distance_cm": athena, "fnirs": {"distance_cm": athena}}),
    ])
    for name, distances in (("sim.fnirs", SIM_DISTANCE), ("muse.optics", athena)):
        doc = _stream(manifest, name)
        assert doc["format"] == "snirf"
        assert doc["meta"]["distance_cm"] == distances  # travels exactly in the manifest
        with h5py.File(dest / doc["member"]) as f:
            src = f["nirs/probe/sourcePos3D"][()]
            det = f["nirs/probe/detectorPos3D"][()]
            for i in range(len(distances)):
                ml = f[f"nirs/data1/measurementList{i + 1}"]
                a = src[int(ml["sourceIndex"][()]) - 1]
                b = det[int(ml["detectorIndex"][()]) - 1]
                # each channel's optodes sit at the distance the source declared
                assert np.linalg.norm(a - b) == pytest.approx(
                    list(distances.values())[i], abs=1e-4)
        assert got[name].meta["distance_cm"] == distances
    np.testing.assert_array_equal(got["sim.fnirs"].values, values)


def test_distance_meta_in_every_shape_reads_as_centimetres() -> None:
    assert fnirs_distance(2.5, "fnirs_a_b_760", "a_b") == 2.5
    assert fnirs_distance({"fnirs_a_b_760": 1.0}, "fnirs_a_b_760", "a_b") == 1.0
    assert fnirs_distance({"a_b": 1.5}, "fnirs_a_b_760", "a_b") == 1.5
    assert fnirs_distance({"default": 2.0}, "fnirs_a_b_760", "a_b") == 2.0
    for junk in (None, "3", {"fnirs_a_b_760": "x"}, float("nan"), -1.0, True, [3.0]):
        assert fnirs_distance(junk, "fnirs_a_b_760", "a_b") == 3.0


def test_export_keeps_meta_that_is_not_strict_json(tmp_path: Path, key: AgeKey) -> None:
    """A NaN or a tuple in a stream's meta (stored as relaxed JSON) must not stop export."""
    t = T0 + np.arange(100) / 50.0
    meta = {"rate_hz": 50, "gain": float("nan"), "gaps": [[T0, T0 + 1.0, 3]],
            "nested": {"offset": float("inf")}}
    manifest, _dest, got = _round_trip(
        tmp_path, key, [SampleBatch.build("dev.eeg", EEG, t, np.zeros((100, 3)), meta=meta)])
    doc = _stream(manifest, "dev.eeg")
    assert doc["format"] == "edf"
    assert doc["meta"] == {"rate_hz": 50, "gain": None, "gaps": [[T0, T0 + 1.0, 3]],
                           "nested": {"offset": None}}
    assert got["dev.eeg"].meta["gaps"] == [[T0, T0 + 1.0, 3]]


def test_declared_rate_under_either_meta_key_is_used(tmp_path: Path, key: AgeKey) -> None:
    """Serial writes rate_hz, the simulator and BrainFlow sampling_rate_hz: both count."""
    rng = np.random.default_rng(3)
    n = 64  # too few to measure a rate on their own with this much jitter
    t = T0 + np.arange(n) / 25.0 + rng.uniform(-0.012, 0.012, n)
    manifest, _dest, _got = _round_trip(tmp_path, key, [
        SampleBatch.build("a.x", EEG, t, rng.normal(size=(n, 3)), meta={"rate_hz": 25.0}),
        SampleBatch.build("b.x", EEG, t, rng.normal(size=(n, 3)),
                          meta={"sampling_rate_hz": 25.0}),
    ])
    for name in ("a.x", "b.x"):
        doc = _stream(manifest, name)
        assert (doc["format"], doc["rate_hz"]) == ("edf", 25.0)


# -- item 1: extreme values -----------------------------------------------------------


def test_export_survives_extreme_finite_values(tmp_path: Path, key: AgeKey) -> None:
    rng = np.random.default_rng(2)
    n = 2500
    t = T0 + np.arange(n) / 250.0
    huge = rng.normal(0, 20, (n, 3))
    huge[700, 0] = 1e308  # what `ingest` accepts for eeg_fz
    neg = rng.normal(0, 20, (n, 3))
    neg[5, 1] = -1.7976931348623157e308
    inf = rng.normal(0, 20, (n, 3))
    inf[9, 2] = np.inf
    tiny = np.full((n, 3), 1e-12)  # a constant too small for 8-character bounds
    fine = rng.normal(0, 20, (n, 3))
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build(name, EEG, t, v, meta={"rate_hz": 250})
        for name, v in (("huge", huge), ("neg", neg), ("inf", inf), ("tiny", tiny),
                        ("fine", fine))
    ])
    why = {s["name"]: (s["format"], s["why"]) for s in manifest["streams"]}
    assert why["huge"] == ("csv", "channel 'eeg_fz' reaches 1e+308, beyond EDF's "
                           "8-character header")
    assert why["neg"][0] == "csv" and "'eeg_cz' reaches -1.79769e+308" in why["neg"][1]
    assert why["inf"] == ("csv", "channel 'eeg_pz' holds an infinite value, which EDF "
                          "cannot store")
    assert why["tiny"][0] == "csv" and "16 bits" in why["tiny"][1]
    assert why["fine"][0] == "edf"
    for name, v in (("huge", huge), ("neg", neg), ("inf", inf), ("tiny", tiny)):
        np.testing.assert_array_equal(got[name].values, v)  # lossless fallback
        np.testing.assert_array_equal(got[name].t, t)


@pytest.mark.parametrize(("lo", "hi"), [(-99.5, 120.25), (0.0, 0.0), (80.0, 80.0),
                                        (-3e-5, 4e-5), (1e6, 9.99e6), (-9e6, 0.0)])
def test_edf_bounds_fit_eight_characters_and_keep_resolution(lo: float, hi: float) -> None:
    fit = edf_fit(lo, hi)
    assert not isinstance(fit, str), fit
    pmin, pmax = fit
    for v in (pmin, pmax):
        text = f"{v:.8f}".rstrip("0").rstrip(".")
        assert len(text) <= 8 or len(repr(v)) <= 8
    assert pmin < lo or lo == hi == 0.0 or pmin <= lo
    assert pmax >= hi
    quantum = (pmax - pmin) / 65535
    assert quantum <= max(hi - lo, 2e-3 * abs(hi), 2 / 65535) / 1000 * 1.0001 or lo == hi


# -- item 1: one EDF per recording ------------------------------------------------------


def _edf_docs(manifest: dict[str, Any], name: str) -> list[dict[str, Any]]:
    doc = _stream(manifest, name)
    assert doc["format"] == "edf", doc["why"]
    return list(doc["recordings"])


def test_jittered_regular_stream_is_one_edf_per_recording(tmp_path: Path, key: AgeKey) -> None:
    """20 s and 60 s of 250 Hz with host-clock jitter (what BrainFlow's synthetic board gives)
    were six overlapping EDF fragments and a CSV: now one EDF each, times exact."""
    import mne

    rng = np.random.default_rng(4)
    batches = []
    truth = {}
    for name, seconds in (("syn20.default", 20), ("syn60.default", 60)):
        n = 250 * seconds
        t = T0 + 0.3 + np.arange(n) / 250.0 + rng.uniform(0, 0.003, n)  # up to 3/4 period late
        t[1000:1012] = t[1000]  # a bunch stamped alike
        t = np.maximum.accumulate(t)
        v = rng.normal(0, 30, (n, 3))
        truth[name] = (t, v)
        for k in range(0, n, 37):  # arrives in odd-sized batches
            batches.append(SampleBatch.build(name, EEG, t[k : k + 37], v[k : k + 37],
                                             meta={"sampling_rate_hz": 250.0}))
    manifest, dest, got = _round_trip(tmp_path, key, batches)
    for name, (t, v) in truth.items():
        recs = _edf_docs(manifest, name)
        assert [(r["member"], r["samples"], r["gaps"]) for r in recs] == [
            (f"signals/{name}.edf", len(t), 0)]
        raw = mne.io.read_raw_edf(dest / recs[0]["member"], verbose="error")
        assert raw.info["sfreq"] == 250.0
        assert raw.info["meas_date"].timestamp() == T0  # whole second; 0.3 s of lead-in filler
        times = np.load(dest / recs[0]["timestamps"])
        lead = round((t[0] - T0) * 250)
        assert lead in (75, 76)
        assert np.isnan(times[:lead]).all()
        np.testing.assert_array_equal(times[lead:], t)
        np.testing.assert_array_equal(got[name].t, t)  # exact
        step = (np.ptp(v, axis=0) * 1.01 / 65533)[None, :]
        assert (np.abs(got[name].values - v) <= step).all()
        got_mne = raw.get_data()[:, lead : lead + len(t)].T * 1e6
        assert (np.abs(got_mne - v) <= step).all()


def test_real_gaps_are_annotated_and_long_breaks_start_a_new_recording(
    tmp_path: Path, key: AgeKey
) -> None:
    import mne

    rng = np.random.default_rng(5)
    rate = 100.0
    k = np.concatenate([np.arange(0, 1000), np.arange(1200, 3000),  # 2 s gap at 10 s
                        np.arange(3000 + 9000, 3000 + 9500)])  # a 90 s break at 30 s
    t = T0 + k / rate + rng.uniform(0, 0.002, len(k))
    v = rng.normal(0, 10, (len(k), 3))
    v[50, 1] = np.nan
    manifest, dest, got = _round_trip(
        tmp_path, key, [SampleBatch.build("dev.eeg", EEG, t, v, meta={"rate_hz": rate})])
    recs = _edf_docs(manifest, "dev.eeg")
    assert [(r["member"], r["samples"], r["gaps"], r["start"]) for r in recs] == [
        ("signals/dev.eeg.rec000.edf", 2800, 1, T0),
        ("signals/dev.eeg.rec001.edf", 500, 0, T0 + 120),
    ]
    raw = mne.io.read_raw_edf(dest / recs[0]["member"], verbose="error")
    skips = [(round(a["onset"], 2), round(a["duration"], 2)) for a in raw.annotations]
    assert skips == [(10.0, 2.0)]
    times = np.load(dest / recs[0]["timestamps"])
    assert np.isnan(times[1000:1200]).all()
    assert np.isfinite(times[:1000]).all() and np.isfinite(times[1200:]).all()
    np.testing.assert_array_equal(got["dev.eeg"].t, t)
    back = got["dev.eeg"].values
    assert np.isnan(back[50, 1]) and np.isfinite(np.delete(back, 50, axis=0)).all()


def test_a_stream_with_gaps_everywhere_goes_to_csv(tmp_path: Path, key: AgeKey) -> None:
    """More than one gap per 2 s: EDF would be mostly filler; CSV says why."""
    rng = np.random.default_rng(6)
    k = np.concatenate([np.arange(s, s + 20) for s in range(0, 20000, 100)])  # 0.2 s on, 0.8 off
    t = T0 + k / 100.0 + rng.uniform(0, 0.001, len(k))
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("dev.eeg", EEG, t, rng.normal(size=(len(k), 3)), meta={"rate_hz": 100})
    ])
    doc = _stream(manifest, "dev.eeg")
    assert doc["format"] == "csv"
    assert doc["why"].startswith("irregular timestamps: 199 gaps in 199 s")
    np.testing.assert_array_equal(got["dev.eeg"].t, t)


def test_manifest_is_strict_json(tmp_path: Path, key: AgeKey) -> None:
    t = T0 + np.arange(10) / 10.0
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("x", ("hr",), t, np.full((10, 1), np.nan), meta={"v": float("nan")})])
    json.dumps(manifest, allow_nan=False)  # raises on a NaN the manifest carried
    assert np.isnan(got["x"].values).all()


def test_rr_intervals_stay_csv_however_steady_the_heart(tmp_path: Path, key: AgeKey) -> None:
    """A steady 60 bpm strap gives RR rows a second apart: events, never an EDF signal."""
    t = T0 + np.arange(300.0) + np.random.default_rng(7).uniform(0, 0.004, 300)
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("chest.rr", ("rr",), t, np.full((300, 1), 1000.0))])
    doc = _stream(manifest, "chest.rr")
    assert (doc["format"], doc["why"]) == ("csv", "RR intervals (one row per beat)")
    np.testing.assert_array_equal(got["chest.rr"].t, t)


def test_edf_header_bounds_are_exactly_the_manifests(tmp_path: Path, key: AgeKey) -> None:
    """edflib truncates the digits it prints (21013.16 came out 21013.15, 61.9 as 61.92499):
    the file must hold the bounds the values were scaled with, or every value shifts."""
    import pyedflib

    rng = np.random.default_rng(8)
    n = 640
    t = T0 + np.arange(n) / 64.0
    v = np.column_stack([21013.165 + 36.8 * rng.uniform(0, 1, n),  # the Athena optics' range
                         61.9 + 3.2 * rng.uniform(0, 1, n),
                         -0.00005 + 0.00012 * rng.uniform(0, 1, n)])
    v[[0, 1], [0, 1]] = [21013.165, 61.9]
    manifest, dest, got = _round_trip(
        tmp_path, key, [SampleBatch.build("muse.ancillary", EEG, t, v, meta={"rate_hz": 64})])
    doc = _stream(manifest, "muse.ancillary")
    reader = pyedflib.EdfReader(str(dest / doc["recordings"][0]["member"]))
    try:
        in_file = [(reader.getPhysicalMinimum(i), reader.getPhysicalMaximum(i)) for i in range(3)]
    finally:
        reader.close()
    assert in_file == list(zip(doc["edf"]["physical_min"], doc["edf"]["physical_max"],
                               strict=True))
    quantum = (np.array(doc["edf"]["physical_max"]) - doc["edf"]["physical_min"]) / 65535
    assert (np.abs(got["muse.ancillary"].values - v) <= quantum / 2 * (1 + 1e-6)).all()


def test_edf_headers_are_ascii_and_names_and_units_come_back(tmp_path: Path, key: AgeKey) -> None:
    t = T0 + np.arange(500) / 100.0
    channels = ("eeg_fz", "temp_ohr_ü")
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("dev.x", channels, t, np.ones((500, 2)), units=("µV", "°C"),
                          meta={"rate_hz": 100})])
    doc = _stream(manifest, "dev.x")
    assert doc["format"] == "edf"
    assert doc["edf"]["labels"] == ["eeg_fz", "temp_ohr__~001"]  # EDF headers are ASCII
    assert (got["dev.x"].channels, got["dev.x"].units) == (channels, ("µV", "°C"))


def test_more_channels_than_edf_takes_goes_to_csv(tmp_path: Path, key: AgeKey) -> None:
    t = T0 + np.arange(20) / 10.0
    channels = tuple(f"other_{i}" for i in range(700))  # edflib refuses more than 640
    v = np.random.default_rng(9).normal(size=(20, 700))
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("dev.many", channels, t, v, meta={"rate_hz": 10})])
    doc = _stream(manifest, "dev.many")
    assert (doc["format"], doc["why"]) == ("csv", "it has 700 channels; EDF writers take at "
                                                  "most 512")
    np.testing.assert_array_equal(got["dev.many"].values, v)


def test_export_cli_says_why_a_stream_with_an_extreme_value_is_csv(tmp_path: Path,
                                                                    key: AgeKey) -> None:
    """`eeg_fz = 1e308` (which `ingest` accepts): `export` succeeds and says why it is CSV."""
    from click.testing import CliRunner

    from edgetwin.cli.main import cli

    home, pw = tmp_path / "home", tmp_path / "pw"
    pw.write_text("p\n")
    pw.chmod(0o600)
    t = T0 + np.arange(2500) / 250.0
    v = np.column_stack([np.arange(2500) % 50 * 1.0, np.arange(2500) * 0.1])
    v[700, 0] = 1e308
    with TwinStore.create(home, Secret.passphrase("p")) as store:
        store.append_samples(SampleBatch.build("lab", ("eeg_fz", "eeg_cz"), t, v))
        store.commit()
    r = CliRunner().invoke(cli, ["--home", str(home), "--passphrase-file", str(pw), "export",
                                 "-o", str(tmp_path / "b.age"), "--recipient", key.public],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert ("lab: CSV, 2500 samples (channel 'eeg_fz' reaches 1e+308, beyond EDF's "
            "8-character header)") in r.output


# -- format 1 bundles still import; format 2 manifests are checked --------------------------


def test_format_1_edf_segments_still_read(tmp_path: Path) -> None:
    """Bundles written before recordings (format 1: one EDF per grid segment, times rebuilt
    as t0 + k / rate) import as before."""
    from edgetwin.bundle.formats import EdfRecordingWriter, plan_stream
    from edgetwin.bundle.importer import stream_batches

    t = T0 + np.arange(500) / 100.0
    v = np.random.default_rng(10).normal(0, 5, (500, 3))
    b = SampleBatch.build("old.eeg", EEG, t, v)
    plan = plan_stream("old.eeg", "old.eeg", iter([b]), 100.0)
    (rec,) = plan.recordings
    (tmp_path / "signals").mkdir()
    w = EdfRecordingWriter(tmp_path / "signals/old.eeg.part000.edf", tmp_path / "t.npy", plan,
                           rec)
    w.add(t, v)
    w.close()
    doc = {"name": "old.eeg", "format": "edf", "channels": list(EEG), "units": ["uV"] * 3,
           "meta": {}, "samples": 500, "rate_hz": 100.0,
           "segments": [{"member": "signals/old.eeg.part000.edf", "t0": T0, "samples": 500}]}
    got = list(stream_batches(tmp_path, doc))
    np.testing.assert_allclose(np.concatenate([g.t for g in got]), t, rtol=0, atol=1e-6)
    quantum = np.array([(hi - lo) / 65535 for lo, hi in plan.bounds])
    assert (np.abs(np.concatenate([g.values for g in got]) - v) <= quantum).all()


def _manifest_with(stream: dict[str, Any]) -> dict[str, Any]:
    digest = "0" * 64
    return {"format": "edgetwin-bundle", "format_version": 2, "bundle_id": "b", "twin_id": "t",
            "created": T0, "records": {},
            "members": {"signals/x.edf": {"size": 1, "sha256": digest},
                        "signals/x.times.npy": {"size": 1, "sha256": digest}},
            "streams": [stream]}


@pytest.mark.parametrize(("change", "message"), [
    ({"samples": 11}, "recordings do not add up"),
    ({"recordings": [{"member": "signals/x.edf", "timestamps": "signals/x.times.npy",
                      "start": T0, "samples": 10, "positions": 9}]}, "fewer positions"),
    ({"recordings": [{"member": "signals/x.edf", "timestamps": "signals/nope.npy",
                      "start": T0, "samples": 10, "positions": 10}]}, "not among its members"),
    ({"rate_hz": float("inf")}, "not a finite number"),
    ({"recordings": [{"member": "signals/x.edf", "timestamps": "signals/x.times.npy",
                      "start": 10**400, "samples": 10, "positions": 10}]}, "not a finite number"),
])
def test_manifest_checks_edf_recordings(change: dict[str, Any], message: str) -> None:
    from edgetwin.bundle.manifest import validate
    from edgetwin.errors import DataCorrupt

    stream = {"name": "x", "format": "edf", "channels": ["eeg_fz"], "units": ["uV"], "meta": {},
              "samples": 10, "rate_hz": 100.0,
              "recordings": [{"member": "signals/x.edf", "timestamps": "signals/x.times.npy",
                              "start": T0, "samples": 10, "positions": 12}]}
    validate(_manifest_with(stream))  # as written
    with pytest.raises(DataCorrupt, match=message):
        validate(_manifest_with({**stream, **change}))


def test_a_times_file_that_does_not_fit_is_data_corrupt(tmp_path: Path) -> None:
    from edgetwin.bundle.formats import read_edf_recording
    from edgetwin.errors import DataCorrupt

    (tmp_path / "x.times.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataCorrupt, match=r"not a readable \.npy"):
        list(read_edf_recording(tmp_path / "x.edf", tmp_path / "x.times.npy", "x", EEG,
                                ("uV",) * 3, 10, 10, {}))
    np.save(tmp_path / "y.times.npy", np.arange(5, dtype=np.int64))
    with pytest.raises(DataCorrupt, match="not 10 float64 timestamps"):
        list(read_edf_recording(tmp_path / "x.edf", tmp_path / "y.times.npy", "x", EEG,
                                ("uV",) * 3, 10, 10, {}))
    np.save(tmp_path / "z.times.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataCorrupt):
        list(read_edf_recording(tmp_path / "x.edf", tmp_path / "z.times.npy", "x", EEG,
                                ("uV",) * 3, 1, 1, {}))


def test_export_while_samples_keep_arriving_holds_the_planned_snapshot(
    tmp_path: Path, key: AgeKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running daemon commits between export's scan of a stream and its write: the bundle
    holds what was scanned (CSV and SNIRF used to write more rows than their manifest said,
    so the bundle would not import; EDF failed the export)."""
    secret = Secret.passphrase("p")
    rng = np.random.default_rng(11)
    t = T0 + np.arange(1000) / 100.0
    streams = {
        "dev.eeg": SampleBatch.build("dev.eeg", EEG, t, rng.normal(size=(1000, 3)),
                                     meta={"rate_hz": 100}),
        "dev.rr": SampleBatch.build("dev.rr", ("rr",), t[::100], np.full((10, 1), 900.0)),
        "dev.fnirs": SampleBatch.build("dev.fnirs", ("fnirs_s1_d1_760",), t[::10],
                                       rng.uniform(1, 2, (100, 1))),
    }
    store = TwinStore.create(tmp_path / "src", secret)
    with store:
        for b in streams.values():
            store.append_samples(b)
        store.commit()
        calls: dict[str, int] = {}
        read = store.read_samples

        def racing(name: str, t0: float | None = None, t1: float | None = None,
                   **kw: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 2:  # the write pass: the daemon got there first
                b = streams[name]
                later = b.t + 20.0
                store.append_samples(SampleBatch(name, b.channels, b.units, later, b.values,
                                                 b.meta))
                store.commit()
            return read(name, t0, t1, **kw)

        monkeypatch.setattr(store, "read_samples", racing)
        out = tmp_path / "b.age"
        export_bundle(store, out, recipients=[key.public])
    assert set(calls) == set(streams) and all(n == 2 for n in calls.values())
    home = tmp_path / "restored"
    import_bundle(out, home, identities=load_identities(key.path), secret=secret)
    with TwinStore.open(home, secret) as got:
        for name, b in streams.items():
            t_back = np.concatenate([x.t for x in got.read_samples(name)])
            np.testing.assert_array_equal(t_back, b.t)  # the snapshot, not the later rows


def test_a_lone_spike_does_not_flatten_a_channel_into_16_bits(tmp_path: Path,
                                                               key: AgeKey) -> None:
    """eeg_fz = 1e6 once in ±50 uV of EEG fits EDF's header, but 16 bits over that range keep
    6 steps of the EEG: such a stream goes to CSV (exact), a mere motion artefact stays EDF."""
    rng = np.random.default_rng(12)
    n = 5000
    t = T0 + np.arange(n) / 250.0
    spike = rng.normal(0, 20, (n, 3))
    spike[2500, 0] = 1e6
    artefact = rng.normal(0, 20, (n, 3))
    artefact[2500:2600, 1] += 5000.0
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("spike", EEG, t, spike, meta={"rate_hz": 250}),
        SampleBatch.build("artefact", EEG, t, artefact, meta={"rate_hz": 250})])
    doc = _stream(manifest, "spike")
    assert doc["format"] == "csv"
    assert doc["why"].startswith("channel 'eeg_fz' reaches 1e+06, so far outside its usual")
    assert doc["why"].endswith("that 16-bit EDF would keep fewer than 64 levels of it")
    np.testing.assert_array_equal(got["spike"].values, spike)
    assert _stream(manifest, "artefact")["format"] == "edf"


@pytest.mark.parametrize(("t0", "year"), [(0.0, 1970), (4.2e9, 2103)])
def test_times_an_edf_header_cannot_date_go_to_csv(tmp_path: Path, key: AgeKey, t0: float,
                                                   year: int) -> None:
    """EDF dates are dd.mm.yy for 1985-2084: a recording stamped from 0 read as 2070 in MNE."""
    t = t0 + np.arange(500) / 100.0
    v = np.random.default_rng(13).normal(size=(500, 3))
    manifest, _dest, got = _round_trip(tmp_path, key, [
        SampleBatch.build("rel.eeg", EEG, t, v, meta={"rate_hz": 100})])
    doc = _stream(manifest, "rel.eeg")
    assert (doc["format"], doc["why"]) == (
        "csv", f"its samples ({year}) fall outside the years 1985-2084 an EDF header can date")
    np.testing.assert_array_equal(got["rel.eeg"].t, t)
