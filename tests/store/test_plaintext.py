"""No plaintext on disk: marker values, names and a MAC address never appear in any file."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import numpy as np

from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, Prediction, SampleBatch
from tests.store.helpers import T0

MARK_VALUE = 1234.56789
MARK_STREAM = "zebra_marker_stream"
MARK_CHANNEL = "eeg_qzx9"
MARK_DEVICE = "ZEBRA-STRAP-4242"
MARK_MAC = "C0:FF:EE:12:34:56"


def _needles() -> dict[str, bytes]:
    mac_bytes = bytes(int(x, 16) for x in MARK_MAC.split(":"))
    # at least 6 bytes each, so random ciphertext cannot match by chance (< 1e-9 per run)
    return {
        "value f64": struct.pack("<d", MARK_VALUE),
        "value f64 BE": struct.pack(">d", MARK_VALUE),
        "value f32 row": struct.pack("<ff", MARK_VALUE, MARK_VALUE),  # rows 0, 21, 42, ...
        "value text": b"1234.56789",
        "stream": MARK_STREAM.encode(),
        "channel": MARK_CHANNEL.encode(),
        "device": MARK_DEVICE.encode(),
        "device utf16": MARK_DEVICE.encode("utf-16-le"),
        "mac": MARK_MAC.encode(),
        "mac lower": MARK_MAC.lower().encode(),
        "mac bare": MARK_MAC.replace(":", "").encode(),
        "mac bytes": mac_bytes,
    }


def _scan(root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for label, needle in _needles().items():
            if needle in data:
                found.setdefault(label, []).append(path.name)
    return found


def _marker_batch() -> SampleBatch:
    rng = np.random.default_rng(7)
    n = 5000
    values = rng.normal(size=(n, 2))
    values[::3, 0] = MARK_VALUE  # compressible and raw runs of the marker
    values[::7, 1] = MARK_VALUE
    return SampleBatch.build(
        MARK_STREAM, [MARK_CHANNEL, "eeg_fp1"], T0 + np.arange(n) / 256, values,
        meta={"device": MARK_DEVICE, "address": MARK_MAC},
    )


def _write_markers(store: TwinStore) -> None:
    store.append_samples(_marker_batch())
    store.append_frames(
        [FeatureFrame(T0, np.full(4, MARK_VALUE), np.ones(4), np.zeros(4, bool), 1)]
    )
    store.append_predictions(
        [Prediction(T0, MARK_CHANNEL, 5.0, (MARK_VALUE,), ((MARK_VALUE, MARK_VALUE),), (1.0,), (),
                    MARK_DEVICE)]
    )
    store.commit()
    store.put_record("pairing", MARK_DEVICE, {"address": MARK_MAC, "name": MARK_DEVICE,
                                             "last_value": MARK_VALUE})
    store.audit("pair_add", device=MARK_DEVICE, address=MARK_MAC)


def test_scanner_finds_markers_in_a_plain_database(tmp_path: Path) -> None:
    """Control: the same facts written to plain SQLite are found, so the scan can see."""
    b = _marker_batch()
    conn = sqlite3.connect(tmp_path / "plain.db")
    conn.execute("CREATE TABLE s (stream TEXT, device TEXT, mac TEXT, v BLOB)")
    conn.execute("INSERT INTO s VALUES (?, ?, ?, ?)",
                 (b.stream, MARK_DEVICE, MARK_MAC, b.values.tobytes()))
    conn.commit()
    conn.close()
    found = _scan(tmp_path)
    assert {"value f64", "stream", "device", "mac"} <= set(found)


def test_no_plaintext_in_db_wal_shm_or_any_file(twin_home: Path, secret: Secret) -> None:
    store = TwinStore.create(twin_home, secret)
    try:
        _write_markers(store)
        # while open: the WAL and SHM hold the fresh pages
        assert Path(str(twin_home / "twin.db") + "-wal").stat().st_size > 0
        assert _scan(twin_home) == {}
        # the data is really there
        got = next(iter(store.read_samples(MARK_STREAM)))
        assert got.values[0, 0] == MARK_VALUE
        assert store.get_record("pairing", MARK_DEVICE) is not None
        store.forget(before=T0 + 1)  # re-encryption path writes too
        assert _scan(twin_home) == {}
    finally:
        store.close()
    assert _scan(twin_home) == {}
    with TwinStore.open(twin_home, secret) as again:
        assert again.streams()[0].name == MARK_STREAM
        assert _scan(twin_home) == {}
