"""A twin written by the store before codec v3 and the counted tails (commit f16fa58: sample
chunks v1 and v2, every description re-sealed at each commit, no ``chunk_ends`` row) still
reads bit for bit, verifies clean, takes new appends next to its old chunks and forgets.
(Feature frames are left out: their codec did not change, and their schema is another
part's to evolve.)

``data/twin_f16fa58/`` was made by that commit's code from :func:`legacy_batches`
(``python tests/store/test_legacy_store.py OUT`` run against a checkout of f16fa58)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from edgetwin.store import Secret, TwinStore
from edgetwin.types import Prediction, SampleBatch

FIXTURE = Path(__file__).parent / "data" / "twin_f16fa58"
PASS = "correct horse battery staple"
T0 = 1_700_000_000.0


def legacy_batches() -> list[list[SampleBatch]]:
    """Deterministic commits: EEG-like quantised values (v1), an ADC-hinted bridge stream
    (v2), a slow integer stream, white noise (stored raw), NaNs, a midnight crossing."""
    rng = np.random.default_rng(20261203)
    midnight = float((int(T0) // 86400 + 1) * 86400)
    scale = np.array([float(np.float32(0.0625)), float(np.float32(0.125))])
    hint = {"adc_scale": scale.tolist(), "adc_offset": [0.0, -1.0]}
    out = []
    for sec in range(6):
        t = T0 + sec + np.arange(256) / 256
        eeg = np.round(rng.normal(0, 50, (256, 4)) / 0.48828125) * 0.48828125
        eeg[3, 1] = np.nan
        ints = np.cumsum(rng.integers(-50, 50, (300, 2)), axis=0)
        bridge = ints * scale + np.array([0.0, -1.0])
        out.append([
            SampleBatch.build("eeg", ["tp9", "af7", "af8", "tp10"], t, eeg),
            SampleBatch.build("bridge", ["a", "b"], T0 + sec + np.arange(300) / 300, bridge,
                              meta=hint),
            SampleBatch.build("hr", ["hr"], [T0 + sec], [[60.0 + sec]]),
            SampleBatch.build("noise", ["x", "y"], t[:64], rng.normal(0, 1, (64, 2))),
        ])
    out.append([SampleBatch.build("hr", ["hr"], midnight - 1.5 + np.arange(4.0),
                                  [[70.0], [71.0], [72.0], [73.0]])])
    return out


def _prediction() -> Prediction:
    return Prediction(T0, "hr", 5.0, (61.0,), ((55.0, 65.0),), (1.0,), (), "m")


def _expected() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    got: dict[str, list[SampleBatch]] = {}
    for commit in legacy_batches():
        for b in commit:
            got.setdefault(b.stream, []).append(b)
    return {name: (np.concatenate([b.t for b in bs]), np.concatenate([b.values for b in bs]))
            for name, bs in got.items()}


def _read(store: TwinStore, stream: str) -> tuple[np.ndarray, np.ndarray]:
    parts = list(store.read_samples(stream))
    t = np.concatenate([p.t for p in parts])
    order = np.argsort(t, kind="stable")
    return t[order], np.concatenate([p.values for p in parts])[order]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view("<i8")


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "twin"
    shutil.copytree(FIXTURE, home)
    return home


def test_fixture_holds_chunks_of_the_old_codecs_and_no_ends_row(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(_home(tmp_path) / "twin.db")  # a copy: WAL files stay out of git
    try:
        assert conn.execute("SELECT count(*) FROM meta WHERE k = 'chunk_ends'").fetchone() == (0,)
        n_chunks = conn.execute("SELECT count(*) FROM chunk").fetchone()[0]
    finally:
        conn.close()
    assert n_chunks >= 20


def test_opening_moves_it_to_schema_v4_which_the_old_code_refuses_as_too_new(
        tmp_path: Path) -> None:
    """f16fa58 knows schema v3 and would read codec v3 chunks as damage; v4 makes it refuse
    the file with its precise "schema version 4; this edgetwin knows up to 3" instead."""
    import sqlite3

    from edgetwin.store import schema

    home = _home(tmp_path)
    conn = sqlite3.connect(home / "twin.db")
    try:
        assert schema.schema_version(conn) == 3
    finally:
        conn.close()
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        assert schema.schema_version(store._conn) == 4 == schema.SCHEMA_VERSION


def test_a_twin_of_the_old_code_reads_bit_for_bit_and_verifies(tmp_path: Path) -> None:
    with TwinStore.open(_home(tmp_path), Secret.passphrase(PASS)) as store:
        for name, (t, v) in _expected().items():
            t2, v2 = _read(store, name)
            order = np.argsort(t, kind="stable")
            assert np.array_equal(_bits(t[order]), _bits(t2)), name
            assert np.array_equal(_bits(v[order]), _bits(v2)), name
        counts = {s.name: s.samples for s in store.streams()}
        assert counts == {name: len(t) for name, (t, _v) in _expected().items()}
        assert store.series_counts() == {"frames": 0, "predictions": 1}
        assert store.read_predictions() == [_prediction()]
        report = store.verify()
        assert report.ok, [str(p) for p in report.problems]


def test_new_appends_go_next_to_old_chunks_and_survive_a_reopen(tmp_path: Path) -> None:
    home = _home(tmp_path)
    t_new = T0 + 100 + np.arange(512) / 256
    v_new = np.round(np.linspace(-20, 20, 512 * 4).reshape(512, 4) / 0.48828125) * 0.48828125
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        for k in range(3):  # commits that leave a tail behind the old description
            sl = slice(k * 100, (k + 1) * 100 if k < 2 else 512)
            store.append_samples(SampleBatch.build("eeg", ["tp9", "af7", "af8", "tp10"],
                                                   t_new[sl], v_new[sl]))
            store.commit()
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        t_old, v_old = _expected()["eeg"]
        t2, v2 = _read(store, "eeg")
        t_all = np.concatenate([t_old, t_new])
        v_all = np.concatenate([v_old, v_new])
        order = np.argsort(t_all, kind="stable")
        assert np.array_equal(_bits(t_all[order]), _bits(t2))
        assert np.array_equal(_bits(v_all[order]), _bits(v2))
        (eeg,) = [s for s in store.streams() if s.name == "eeg"]
        assert eeg.samples == len(t_all) and eeg.last_t == float(t_new[-1])
        report = store.verify()
        assert report.ok, [str(p) for p in report.problems]
        store.forget(stream="noise")
        assert "noise" not in {s.name for s in store.streams()}
        assert store.verify().ok


def _make(out: Path) -> None:
    """Write the fixture with whatever edgetwin is importable (the old commit's)."""
    from edgetwin.store import KdfParams

    with TwinStore.create(out, Secret.passphrase(PASS), kdf=KdfParams.for_tests()) as store:
        for commit in legacy_batches():
            for b in commit:
                store.append_samples(b)
            store.commit()
        store.append_predictions([_prediction()])
        store.commit()


if __name__ == "__main__":
    _make(Path(sys.argv[1]))
