"""Store benchmark: encrypted appends vs plain SQLite, unlock time, bytes on disk per sample.

Workload ("daemon"): the sensor mix of a person wearing a Muse S, a chest strap, a
wrist PPG/accelerometer and an fNIRS band — EEG 256 Hz x 4, PPG 64 Hz x 3, accel
52 Hz x 3, fNIRS 10 Hz x 16, HR/RR/SpO2 1 Hz, temperature 0.1 Hz — delivered in
source-sized batches and committed once a simulated second (the daemon's flush
interval). Values are quantised like the devices' ADCs so compression behaves as
on real data. The baseline writes the very same batches, coalesced the same way,
as raw float64 bytes into plain SQLite (WAL, synchronous=FULL, same indexes).

A third side, the format's floor, writes the same batches in the store's chunk format
(shuffle + Zstandard, AES-GCM under a chunk's associated data, one row per stream and
commit, the store's chunk table) with none of the store's own work (series, keys, days,
tails, checks): what the format costs by itself, so the store's figure can be read against
what compression and encryption alone take.

All sides run in one process, a round per repeat in alternating order. Besides wall time
(what the target is set in) each side's CPU time (``time.process_time``: user + system,
fsync's kernel work included, waiting for the disk not) is reported: on a shared machine
the wall-time ratio swings with other processes' I/O, the CPU ratio much less.

Run: ``.venv/bin/python scripts/bench.py --only store`` (add ``--quick`` for CI).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgetwin.store import KdfParams, Secret, TwinStore  # noqa: E402
from edgetwin.types import SampleBatch  # noqa: E402

T0 = 1_700_000_000.0
# name, channels, rate Hz, batches per second, quantum (ADC step)
STREAMS: list[tuple[str, tuple[str, ...], float, int, float]] = [
    ("muse_eeg", ("eeg_tp9", "eeg_af7", "eeg_af8", "eeg_tp10"), 256.0, 21, 0.48828125),
    ("wrist_ppg", ("ppg", "ppg_ir", "ppg_g"), 64.0, 2, 1.0),
    ("wrist_accel", ("accel_x", "accel_y", "accel_z"), 52.0, 2, 1 / 4096),
    ("fnirs", tuple(f"fnirs_s{i // 4}_d{i % 4}_{760 if i % 2 else 850}" for i in range(16)),
     10.0, 1, 1 / 65536),
    ("strap_hr", ("hr",), 1.0, 1, 1.0),
    ("strap_rr", ("rr",), 1.0, 1, 1.0),
    ("oxi_spo2", ("spo2",), 1.0, 1, 1.0),
    ("skin_temp", ("temp",), 0.1, 1, 0.01),
]


def run(quick: bool) -> dict[str, Any]:
    """All store figures; ratios are against plain SQLite measured in the same run."""
    seconds = 60 if quick else 300
    repeats = int(os.environ.get("EDGETWIN_BENCH_REPEATS", "3" if quick else "5"))
    batches = _workload(seconds)
    samples = sum(len(b) for sec in batches for b in sec)
    enc_rates, plain_rates, enc_commit_ms, plain_commit_ms = [], [], [], []
    pair_ratios, cpu_ratios = [], []
    floor_ratios, floor_cpu_ratios = [], []
    enc_bytes = plain_bytes = 0.0
    read_rates = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for r in range(repeats):
            # each repeat is a pair run back to back, the order alternating so that neither
            # side always gets the warmer cache; the pair's ratio cancels slow spells of a
            # shared machine better than a ratio of medians taken minutes apart
            pair: dict[str, float] = {}
            for side in ("enc", "plain", "floor") if r % 2 == 0 else ("floor", "plain", "enc"):
                if side == "floor":
                    t, cpu = _run_format_floor(Path(tmp) / f"floor{r}.db", batches)
                elif side == "enc":
                    home = Path(tmp) / f"enc{r}"
                    t, cpu, per_commit, size, read_rate = _run_encrypted(home, batches)
                    enc_rates.append(samples / t)
                    enc_commit_ms.extend(per_commit)
                    enc_bytes = size / samples
                    read_rates.append(read_rate)
                else:
                    t, cpu, per_commit, size = _run_plain(Path(tmp) / f"plain{r}.db", batches)
                    plain_rates.append(samples / t)
                    plain_commit_ms.extend(per_commit)
                    plain_bytes = size / samples
                pair[side], pair[side + "_cpu"] = t, cpu
            pair_ratios.append(pair["enc"] / pair["plain"])
            cpu_ratios.append(pair["enc_cpu"] / pair["plain_cpu"])
            floor_ratios.append(pair["floor"] / pair["plain"])
            floor_cpu_ratios.append(pair["floor_cpu"] / pair["plain_cpu"])
        unlock = _unlock_times(Path(tmp) / "unlock", 2 if quick else 5)
        year_old_ms, new_day_ms, year_keystore, year_unlock_ms = _year_old_commits(
            Path(tmp) / "year", batches[:60])
        destroy = {mode: [_destroy_a_day(Path(tmp) / f"day-{mode}-{r}", mode, quick)
                          for r in range(2 if quick else 3)] for mode in ("store", "1")}
    enc_med, plain_med = statistics.median(enc_rates), statistics.median(plain_rates)
    return {
        "append_throughput": {
            "median": enc_med,
            "p99": _p(enc_rates, 1),  # slowest run (a low percentile of a rate)
            "unit": "samples/s",
            "plain_sqlite": plain_med,
            "slowdown_vs_plain": plain_med / enc_med,
            "slowdown_per_pair": sorted(pair_ratios),  # each repeat: encrypted / plain time
            "slowdown_pair_median": statistics.median(pair_ratios),
            "cpu_slowdown_per_pair": sorted(cpu_ratios),  # each repeat: CPU seconds enc / plain
            "cpu_slowdown_pair_median": statistics.median(cpu_ratios),
            "target_slowdown": 1.3,
            # the same batches in the store's format (shuffle + Zstandard, AES-GCM under the
            # chunk's associated data, one row per stream and commit) with none of the store's
            # own work: no series, keys, days, tails or checks. What the format costs by itself
            # in Python, as a floor under the store's figure
            "format_floor_slowdown_pair_median": statistics.median(floor_ratios),
            "format_floor_cpu_slowdown_pair_median": statistics.median(floor_cpu_ratios),
            "samples_per_run": samples,
            "simulated_seconds": seconds,
            "streams": len(STREAMS),
        },
        "commit_latency": {
            "median": statistics.median(enc_commit_ms),
            "p99": _p(enc_commit_ms, 99),
            "unit": "ms per 1 s flush (all streams)",
            "plain_sqlite_median": statistics.median(plain_commit_ms),
            "plain_sqlite_p99": _p(plain_commit_ms, 99),
        },
        "commit_latency_year_old": {
            "median": statistics.median(year_old_ms),
            "p99": _p(year_old_ms, 99),
            "unit": "ms per 1 s flush, every stream holding a year of days (raw kept 365 d)",
            "fresh_median": statistics.median(enc_commit_ms),
            # the first flush of a UTC day: a data key per series, the keystore rewritten
            "first_of_a_day_median": statistics.median(new_day_ms),
            "first_of_a_day_max": max(new_day_ms),
            "keystore_bytes": year_keystore,
            # test KDF parameters: the cost of a year of keys, without the passphrase's
            "unlock_ms_median": statistics.median(year_unlock_ms),
        },
        "destroy_a_day": {
            # retention (or a forget, or the room floor) destroying a day of raw samples:
            # the store's own setting (secure_delete FAST) vs SQLite's secure_delete on,
            # Debian's default, which zero-fills every freed page through the WAL
            "median": statistics.median(d["s"] for d in destroy["store"]),
            "p99": max(d["s"] for d in destroy["store"]),
            "unit": "s (delete, commit and checkpoint)",
            "day_mib": destroy["store"][0]["day_mib"],
            "written_mib": statistics.median(d["written_mib"] for d in destroy["store"]),
            "secure_delete_on_s": statistics.median(d["s"] for d in destroy["1"]),
            "secure_delete_on_written_mib": statistics.median(d["written_mib"]
                                                              for d in destroy["1"]),
            "written_note": "bytes the process sent to the block layer (/proc/self/io); "
                            "0 on a tmpfs",
        },
        "read_throughput": {
            "median": statistics.median(read_rates),
            "p99": _p(read_rates, 1),
            "unit": "samples/s (decrypt + decode, all streams)",
        },
        "unlock": {
            "median": statistics.median(unlock),
            "p99": max(unlock),
            "unit": "s (Argon2id 64 MiB, t=3, p=4 + open)",
        },
        "bytes_per_sample": {
            "median": enc_bytes,
            "p99": enc_bytes,
            "unit": "bytes on disk per sample (all channels)",
            "plain_sqlite": plain_bytes,
            "ratio_vs_plain": enc_bytes / plain_bytes,
        },
    }


def _workload(seconds: int) -> list[list[SampleBatch]]:
    rng = np.random.default_rng(1)
    out: list[list[SampleBatch]] = []
    phase = {name: 0 for name, *_ in STREAMS}
    for sec in range(seconds):
        batches = []
        for name, channels, rate, per_s, quantum in STREAMS:
            if rate < 1 and sec % round(1 / rate):
                continue
            n_total = max(1, round(rate))
            for k in range(per_s):
                a, b = n_total * k // per_s, n_total * (k + 1) // per_s
                if b <= a:
                    continue
                idx = phase[name] + a + np.arange(b - a)
                t = T0 + idx / rate if rate >= 1 else T0 + sec + np.zeros(1)
                base = 50 * np.sin(idx[:, None] / (rate + 1) * np.arange(1, len(channels) + 1))
                vals = base + rng.normal(scale=5.0, size=(b - a, len(channels)))
                vals = np.round(vals / quantum) * quantum
                batches.append(SampleBatch.build(name, channels, t, vals))
            phase[name] += n_total
        out.append(batches)
    return out


def _run_encrypted(
    home: Path, batches: list[list[SampleBatch]]
) -> tuple[float, float, list[float], int, float]:
    store = TwinStore.create(home, Secret.passphrase("bench"), kdf=KdfParams.for_tests())
    per_commit = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    for sec in batches:
        per_commit.append(_timed_flush(store, sec))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    r0 = time.perf_counter()
    n = sum(len(b) for name, *_ in STREAMS for b in store.read_samples(name))
    read_rate = n / (time.perf_counter() - r0)
    store.close()
    return elapsed, cpu, per_commit, _size(home / "twin.db"), read_rate


def _year_old_commits(
    home: Path, batches: list[list[SampleBatch]]
) -> tuple[list[float], list[float], int, list[float]]:
    """Flush times once every stream has a year of days behind it: a series' sealed
    description lists its days and is re-sealed at each commit that touches it. Then the
    first flush of each of three new days (it makes a data key per series and rewrites the
    keystore, which holds a year of them) and unlock times of that twin; (flush ms, new-day
    flush ms, keystore bytes, unlock ms)."""
    store = TwinStore.create(home, Secret.passphrase("bench"), kdf=KdfParams.for_tests())
    for day in range(365, 0, -1):
        for sec in batches[:1]:
            for b in sec:
                t = b.t[:1] - day * 86400.0
                store.append_samples(SampleBatch.build(b.stream, b.channels, t, b.values[:1]))
        store.commit()
    per_commit = []
    for sec in batches:
        per_commit.append(_timed_flush(store, sec))
    first = batches[-1][0].t[0]
    to_midnight = (first // 86400.0 + 1) * 86400.0 - first
    new_day = []
    for k in range(3):
        shift = to_midnight + k * 86400.0
        new_day.append(_timed_flush(store, [SampleBatch.build(b.stream, b.channels, b.t + shift,
                                                               b.values) for b in batches[-1]]))
    store.close()
    keystore = (home / "keystore.json").stat().st_size
    unlock = []
    for _ in range(3):
        u0 = time.perf_counter()
        TwinStore.open(home, Secret.passphrase("bench")).close()
        unlock.append((time.perf_counter() - u0) * 1000)
    return per_commit, new_day, keystore, unlock


def _timed_flush(store: TwinStore, batches: list[SampleBatch]) -> float:
    """Append a second's batches and commit them: the wall time in ms."""
    c0 = time.perf_counter()
    for b in batches:
        store.append_samples(b)
    store.commit()
    return (time.perf_counter() - c0) * 1000


def _destroy_a_day(home: Path, secure_delete: str, quick: bool) -> dict[str, float]:
    """Destroy one day of raw samples (white noise: its chunks do not compress) by retention;
    ``secure_delete`` "store" keeps the store's own setting, else sets SQLite's."""
    from edgetwin.config import RetentionConfig

    rng = np.random.default_rng(5)
    commits = 20 if quick else 100
    midnight = (T0 // 86400.0) * 86400.0
    store = TwinStore.create(home, Secret.passphrase("bench"), kdf=KdfParams.for_tests())
    for day in range(2):
        for k in range(commits):
            t = midnight + day * 86400.0 + k * 600.0 + np.arange(50_000) * 0.01
            store.append_samples(SampleBatch.build("eeg", ("a", "b", "c", "d"), t,
                                                   rng.normal(size=(t.size, 4))))
            store.commit()
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if secure_delete != "store":
        store._conn.execute(f"PRAGMA secure_delete = {secure_delete}")
    day_bytes = _size(home / "twin.db") / 2
    os.sync()
    w0, t0 = _written(), time.perf_counter()
    store.apply_retention(midnight + 2.5 * 86400.0,
                          RetentionConfig(raw_days=1, features_days=0, predictions_days=0))
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.sync()
    elapsed, written = time.perf_counter() - t0, _written() - w0
    store.close()
    return {"s": elapsed, "written_mib": written / 2**20, "day_mib": day_bytes / 2**20}


def _written() -> int:
    """Bytes this process has caused to be written to storage (Linux), else 0."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _joined(sec: list[SampleBatch]) -> list[tuple[str, SampleBatch, np.ndarray, np.ndarray]]:
    """A second's batches per stream as a commit writes them: (stream, its first batch, the
    times and the values joined)."""
    grouped: dict[str, list[SampleBatch]] = {}
    for b in sec:
        grouped.setdefault(b.stream, []).append(b)
    return [(name, bs[0], np.concatenate([b.t for b in bs]), np.concatenate([b.values for b in bs]))
            for name, bs in grouped.items()]


def _run_format_floor(path: Path, batches: list[list[SampleBatch]]) -> tuple[float, float]:
    """The store's chunk format alone, as a floor: per commit and stream the batches joined,
    their first and last time, encoded, sealed under an AD like a chunk's and inserted in one
    statement into a chunk table like the store's; (wall s, CPU s)."""
    import math

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from edgetwin.store import codec

    aead, twin_id, sid = AESGCM(os.urandom(32)), os.urandom(16), os.urandom(16)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE chunk (series_no INTEGER NOT NULL, seq INTEGER NOT NULL, key_id INTEGER,"
        " first_hour INTEGER, last_hour INTEGER, sealed BLOB, PRIMARY KEY (series_no, seq))"
    )  # the store's chunk table and its index (edgetwin/store/schema.py)
    conn.execute("CREATE INDEX chunk_time ON chunk(series_no, first_hour, seq)")
    seqs: dict[str, int] = {}
    numbers: dict[str, int] = {}
    cpu0 = time.process_time()
    start = time.perf_counter()
    for sec in batches:
        conn.execute("BEGIN IMMEDIATE")
        rows = []
        for name, _, t, v in _joined(sec):
            seq = seqs.get(name, 0)
            seqs[name] = seq + 1
            b0, b1 = math.floor(float(t.min()) / 3600), math.floor(float(t.max()) / 3600)
            plain = codec.encode_samples(0, t, v)
            sealed = codec.seal(aead, plain, codec.chunk_ad(twin_id, sid, seq, 1, b0, b1))
            rows.append((numbers.setdefault(name, len(numbers)), seq, 1, b0, b1, sealed))
        conn.executemany("INSERT INTO chunk VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    conn.close()
    return elapsed, cpu


def _run_plain(
    path: Path, batches: list[list[SampleBatch]]
) -> tuple[float, float, list[float], int]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE chunk (stream TEXT NOT NULL, seq INTEGER NOT NULL, b0 INTEGER, b1 INTEGER,"
        " channels TEXT, t BLOB, v BLOB, PRIMARY KEY (stream, seq))"
    )
    conn.execute("CREATE INDEX chunk_time ON chunk(stream, b0)")
    seqs: dict[str, int] = {}
    per_commit = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    for sec in batches:
        c0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        rows = []
        for name, first, t, v in _joined(sec):
            seq = seqs.get(name, 0)
            seqs[name] = seq + 1
            rows.append((name, seq, int(t[0] // 3600), int(t[-1] // 3600),
                         ",".join(first.channels), t.tobytes(), v.tobytes()))
        conn.executemany("INSERT INTO chunk VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        per_commit.append((time.perf_counter() - c0) * 1000)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    conn.close()
    return elapsed, cpu, per_commit, _size(path)


def _unlock_times(home: Path, n: int) -> list[float]:
    secret = Secret.passphrase("bench unlock passphrase")
    TwinStore.create(home, secret, kdf=KdfParams.default()).close()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        TwinStore.open(home, secret).close()
        out.append(time.perf_counter() - t)
    return out


def _size(db: Path) -> int:
    files = [Path(str(db) + suffix) for suffix in ("", "-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


def _p(values: list[float], pct: float) -> float:
    return float(np.percentile(np.asarray(values), pct))


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
