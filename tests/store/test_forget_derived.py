"""Forgetting leaves nothing derived from the forgotten data readable (issue 19, item 2).

The twin is built the way the daemon and ``ingest`` build it: simulator streams
through the real feature pipeline and the shipped models into the encrypted store.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.config import RetentionConfig
from edgetwin.daemon.app import process_offline
from edgetwin.daemon.supervisor import ENGINE_STATE_RECORD
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX, NAMES, SOURCES, fed_by
from edgetwin.inference.engine import InferenceEngine
from edgetwin.privacy.mechanism import release_value
from edgetwin.privacy.metrics import METRICS
from edgetwin.sources.simulator import SimulatedPerson, simulate
from edgetwin.store import Secret, TwinStore, codec
from edgetwin.store.derived import IMPUTE_REACH_S, PAD_S
from edgetwin.store.keys import Keystore
from edgetwin.sync import outbox
from edgetwin.types import FeatureFrame, channel_kind
from tests.store.helpers import PASS

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20Z: the recording crosses no day boundary
MINUTES = 12.0
FNIRS = "simulator.fnirs"
ALL = ("rr", "vitals", "accel", "eeg", "fnirs")


def _build(home: Path, batches: Iterator[object]) -> None:
    with TwinStore.create(home, Secret.passphrase(PASS)) as store:
        engine = InferenceEngine.load()
        process_offline(store, batches, FeaturePipeline(5.0), engine)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 minutes of every simulated modality, with features and forecasts."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGETWIN_KDF_PROFILE", "test")
    home = tmp_path_factory.mktemp("derived") / "twin"
    person = SimulatedPerson.from_seed(3)
    _build(home, simulate(person, T0, MINUTES * 60, chunk_s=10.0, modalities=ALL,
                          name="simulator", dropouts=False))
    mp.undo()
    return home


@pytest.fixture
def twin(template: Path, tmp_path: Path) -> Iterator[TwinStore]:
    home = tmp_path / "twin"
    shutil.copytree(template, home)
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        yield store


def _values(store: TwinStore) -> tuple[np.ndarray, np.ndarray]:
    frames = list(store.read_frames())
    return np.array([f.t for f in frames]), np.array([f.values for f in frames])


def _frame_chunks(db: Path, store: TwinStore) -> list[tuple[int, int, int, int, bytes]]:
    sid = store._sid("frames", "")
    conn = sqlite3.connect(db)
    try:
        (sn,) = conn.execute("SELECT series_no FROM series WHERE series_id = ?", (sid,)).fetchone()
        return conn.execute(
            "SELECT seq, key_id, first_hour, last_hour, sealed FROM chunk"
            " WHERE series_no = ?", (sn,)
        ).fetchall()
    finally:
        conn.close()


def _enqueue(store: TwinStore, metric: str, period_start: float) -> str:
    release = release_value(METRICS[metric], "hour", period_start, 1.0, (-5.0, 5.0), 1.0)
    with store.transaction():
        return outbox.enqueue_in_transaction(store, release, T0).id


def test_schema_sources_name_every_channel_kind_the_pipeline_reads() -> None:
    """Forget relies on SOURCES: a feature a stream feeds but SOURCES misses would survive."""
    person = SimulatedPerson.from_seed(5)
    for modality in ALL:
        pipe = FeaturePipeline(5.0)
        frames: list[FeatureFrame] = []
        kinds: set[str] = set()
        for b in simulate(person, T0, 120.0, chunk_s=10.0, modalities=(modality,),
                          name="s", dropouts=False):
            kinds |= {channel_kind(c) for c in b.channels}
            frames.extend(pipe.push(b))
        frames.extend(pipe.flush())
        fed = {NAMES[i] for f in frames for i in np.flatnonzero(np.isfinite(f.values))}
        assert fed, modality
        assert fed <= set(fed_by(kinds)), (modality, fed - set(fed_by(kinds)))
    assert set(SOURCES) == set(NAMES)


def test_forget_stream_removes_its_features_from_timeline(twin: TwinStore) -> None:
    _, before = _values(twin)
    hbo, hbr, hr = INDEX["fnirs_hbo"], INDEX["fnirs_hbr"], INDEX["hr"]
    assert np.isfinite(before[:, [hbo, hbr]]).all()  # the simulator fed them everywhere

    report = twin.forget(stream=FNIRS)

    t, after = _values(twin)
    assert len(t) == len(before)  # other sensors still fed every step
    assert not np.isfinite(after[:, [hbo, hbr]]).any()
    assert report.frames_shredded == len(before)
    # measured values the fNIRS stream did not feed stay as they were
    assert np.array_equal(after[:, hr], before[:, hr], equal_nan=True)
    assert twin.verify().ok
    (entry,) = [e for e in twin.audit_entries() if e["event"] == "forget"]
    assert entry["details"]["frames_shredded"] == len(before)


def test_forget_stream_removes_forecasts_that_used_it(twin: TwinStore) -> None:
    assert twin.read_predictions()
    assert twin.get_record(*ENGINE_STATE_RECORD) is not None

    report = twin.forget(stream=FNIRS)

    # every hr forecast's context held fNIRS values: all of them go
    assert twin.read_predictions() == []
    assert report.predictions_deleted > 0
    # the running baseline and context (with fNIRS values in it) go too
    assert twin.get_record(*ENGINE_STATE_RECORD) is None
    assert twin.verify().ok


def test_forget_all_streams_leaves_no_frame_values(twin: TwinStore) -> None:
    for info in twin.streams():
        twin.forget(stream=info.name)
    assert twin.streams() == []
    assert not any(np.isfinite(f.values).any() for f in twin.read_frames())
    assert twin.read_predictions() == []
    assert twin.series_counts()["frames"] == 0
    assert twin.verify().ok


def test_forgotten_feature_values_are_unrecoverable_from_a_pre_forget_copy(
    twin: TwinStore, tmp_path: Path
) -> None:
    """The frames are re-encrypted under a fresh key and the old one destroyed."""
    copy = tmp_path / "copy.db"
    shutil.copy2(twin.home / "twin.db", copy)
    for suffix in ("-wal", "-shm"):
        src = Path(str(twin.home / "twin.db") + suffix)
        if src.exists():
            shutil.copy2(src, Path(str(copy) + suffix))
    old_rows = _frame_chunks(copy, twin)
    twin.forget(stream=FNIRS)

    keys = twin._keys
    ks = Keystore.load(twin.home / "keystore.json")
    aeads = [AESGCM(got[0]) for k in ks.deks if (got := ks.unwrap_dek(keys, k)) is not None]
    sid = twin._sid("frames", "")
    opened = 0
    for seq, key_id, b0, b1, sealed in old_rows:
        ad = codec.chunk_ad(keys.twin_id, sid, seq, key_id, b0, b1)
        for aead in aeads:
            try:
                codec.open_sealed(aead, sealed, ad)
                opened += 1
            except InvalidTag:
                pass
    assert old_rows and opened == 0
    # ...while the re-encrypted frames do open with today's keys
    assert len(_frame_chunks(twin.home / "twin.db", twin)) == len(old_rows)


def test_forget_stream_keeps_what_other_times_derived(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """fNIRS only in the first 4 minutes: later frames and forecasts stay as they were."""
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    person = SimulatedPerson.from_seed(4)
    body = [b for b in simulate(person, T0, 1500.0, chunk_s=10.0,
                                modalities=("rr", "vitals", "fnirs"), name="sim", dropouts=False)
            if b.stream != "sim.fnirs" or b.t[-1] < T0 + 240.0]
    home = tmp_path / "twin"
    _build(home, iter(body))
    hbo = INDEX["fnirs_hbo"]
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        frames0 = list(store.read_frames())
        preds0 = store.read_predictions()
        store.forget(stream="sim.fnirs")
        t1, v1 = _values(store)
        preds1 = store.read_predictions()
    t0, v0 = np.array([f.t for f in frames0]), np.array([f.values for f in frames0])
    fnirs_end = max(b.t[-1] for b in body if b.stream == "sim.fnirs")
    # the last frame holding an fNIRS value, measured or imputed
    last_fed = max(f.t for f in frames0 if np.isfinite(f.values[hbo]))
    assert not np.isfinite(v1[:, hbo]).any()
    # later frames did not read the raw fNIRS samples nor (imputer) any fNIRS value
    quiet = max(fnirs_end + PAD_S, last_fed + IMPUTE_REACH_S)
    late = t1 > quiet
    assert late.any() and (~late).any()
    assert np.array_equal(v1[late], v0[np.isin(t0, t1[late])], equal_nan=True)
    # forecasts whose inputs lay wholly after the fNIRS values are kept, the others go
    reach = max(len(p.attention) * p.step_s for p in preds0) + IMPUTE_REACH_S
    kept = {p.t for p in preds1}
    assert {p.t for p in preds0 if p.t - reach > last_fed} <= kept
    assert not {p.t for p in preds0 if p.t - reach <= last_fed} & kept
    assert kept


def test_forget_before_removes_values_and_forecasts_computed_from_earlier_data(
    twin: TwinStore,
) -> None:
    t, before = _values(twin)
    cutoff = float(t[len(t) // 2])
    twin.forget(before=cutoff)
    t1, after = _values(twin)
    assert t1.min() >= cutoff
    # rmssd reads 30 s of beats: the first frames after the cutoff read forgotten ones
    rm = INDEX["rmssd"]
    assert not np.isfinite(after[t1 < cutoff + 30, rm]).any()
    assert np.isfinite(before[t > cutoff + 300, rm]).any()
    # no forecast whose context (or the imputer window before it) reached the cutoff
    for p in twin.read_predictions():
        assert p.t - len(p.attention) * p.step_s - IMPUTE_REACH_S > cutoff
    assert twin.get_record(*ENGINE_STATE_RECORD) is None
    assert twin.verify().ok


def test_forget_stream_drops_dp_summaries_computed_from_it(twin: TwinStore) -> None:
    hour = float(int(T0 // 3600) * 3600)
    fnirs_now = _enqueue(twin, "fnirs_hbo_mean", hour)
    fnirs_later = _enqueue(twin, "fnirs_hbo_mean", hour + 86400.0)
    hr_now = _enqueue(twin, "hr_mean", hour)
    old_keys = {int(r[0]) for r in twin._conn.execute("SELECT key_id FROM record")}

    report = twin.forget(stream=FNIRS)

    left = {e.id for e in outbox.entries(twin)}
    assert fnirs_now not in left  # computed from the forgotten values: never sent
    assert {fnirs_later, hr_now} <= left  # another period; a feature fNIRS does not feed
    assert report.records_deleted >= 1
    # the outbox's records are re-sealed and its old key destroyed
    now_keys = {int(r[0]) for r in twin._conn.execute("SELECT key_id FROM record")}
    assert not (old_keys - now_keys) & set(twin._ks.deks)
    assert twin.verify().ok


def test_retention_drops_derived_records_with_the_feature_days(twin: TwinStore) -> None:
    hour = float(int(T0 // 3600) * 3600)
    old = _enqueue(twin, "hr_mean", hour)
    young = _enqueue(twin, "hr_mean", hour + 40 * 86400.0)
    now = T0 + 35 * 86400.0
    report = twin.apply_retention(now, RetentionConfig(raw_days=30, features_days=30,
                                                       predictions_days=30))
    left = {e.id for e in outbox.entries(twin)}
    assert old not in left and young in left
    # the stored inference state was computed from days retention destroyed
    assert twin.get_record(*ENGINE_STATE_RECORD) is None
    assert report.records_deleted == 2
    assert list(twin.read_frames()) == []
    assert twin.verify().ok


def test_retention_keeps_features_past_raw_days(twin: TwinStore) -> None:
    """Tiers: features are the summary meant to outlive the raw samples (README)."""
    n = len(list(twin.read_frames()))
    twin.apply_retention(T0 + 35 * 86400.0, RetentionConfig(raw_days=30, features_days=365))
    assert all(s.samples == 0 for s in twin.streams())
    assert len(list(twin.read_frames())) == n
    assert twin.get_record(*ENGINE_STATE_RECORD) is not None


def test_forget_drops_personal_models_fitted_on_the_forgotten_span(twin: TwinStore) -> None:
    """Kind "inference" also holds personal heads, naming the span they were fitted on."""
    fitted = {"weights": [[0.0]], "derived_from": {"streams": ["simulator.rr"], "t0": T0}}
    later = {"weights": [[0.0]], "derived_from": {"streams": ["simulator.rr"],
                                                 "t0": T0 + 86400.0}}
    twin.put_record("inference", "personal:hr", fitted)
    twin.put_record("inference", "personal:rmssd", later)
    twin.put_record("pairing", "strap", {"kind": "simulator"})
    twin.forget(stream=FNIRS)
    assert twin.get_record("inference", "personal:hr") is None
    assert twin.get_record("inference", "personal:rmssd") == later  # fitted after: kept
    assert twin.get_record("pairing", "strap") == {"kind": "simulator"}  # not derived


def test_forget_of_a_stream_that_feeds_no_feature_leaves_the_timeline(
    twin: TwinStore,
) -> None:
    from edgetwin.types import SampleBatch

    t = T0 + np.arange(600.0)
    twin.append_samples(SampleBatch.build("strap.battery", ["battery"], t, np.ones((600, 1))))
    twin.commit()
    frames = [(f.t, f.values.tobytes()) for f in twin.read_frames()]
    n_preds = len(twin.read_predictions())
    report = twin.forget(stream="strap.battery")
    assert [(f.t, f.values.tobytes()) for f in twin.read_frames()] == frames
    assert len(twin.read_predictions()) == n_preds
    assert report.frames_shredded == 0 and report.predictions_deleted == 0
    assert twin.get_record(*ENGINE_STATE_RECORD) is not None


def test_a_chunk_dropped_undecoded_holds_only_forecasts_that_read_the_data() -> None:
    """feeds_every_forecast lets forget delete a forecast chunk without decoding it: it must
    never claim a chunk holding a forecast that did not read the forgotten data."""
    from edgetwin.store.derived import Taint
    from edgetwin.types import Prediction

    rng = np.random.default_rng(0)
    claimed = 0
    for _ in range(200):
        hits = np.sort(rng.uniform(0, 7200, rng.integers(1, 40)))
        taint = Taint.of(["hr"], [(0.0, 1.0)]).with_hits(hits.tolist())
        lo = float(rng.uniform(0, 7000))
        hi = lo + float(rng.uniform(0, 1200))
        if not taint.feeds_every_forecast(lo, hi):
            continue
        claimed += 1
        # the shortest context a forecast can have: none
        preds = [Prediction(float(t), "hr", 5.0, (1.0,), ((0.0, 2.0),), (), (), "m")
                 for t in np.arange(lo, hi + 1e-9, 5.0)]
        assert taint.drop_forecasts(preds) == []
    assert claimed > 10


def test_forget_reach_covers_the_shipped_models_and_pipeline_windows() -> None:
    """IMPUTE_REACH_S bounds how far back an imputed value (and a forecast's inputs before its
    context) can read; MEMORY_S how long after a sample a feature carries it."""
    from edgetwin.features import fnirs
    from edgetwin.features.schema import MEMORY_S
    from edgetwin.inference.registry import load_manifest

    m = load_manifest()
    assert m.imputer_window * m.step_s <= IMPUTE_REACH_S
    pipe = FeaturePipeline(m.step_s)
    assert pipe.step_s + pipe.lateness_s <= PAD_S
    assert MEMORY_S["fnirs_hbo"] >= 3 * fnirs.BASELINE_TAU_S
    assert MEMORY_S["rmssd"] >= pipe.rr_window_s
