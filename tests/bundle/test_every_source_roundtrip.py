"""Every source kind, recorded into one twin, exported, imported and compared.

The batches come from the real sources against their emulators: the simulator (every
modality), BrainFlow's synthetic board and an Athena playback (native BrainFlow), the
serial bridge emulator on a pseudo-terminal, and bleak against the emulated BlueZ on a
private D-Bus (strap, oximeter, thermometer). Whatever metadata shape, clock jitter, NaN
rows or irregular timing they produce, export must take it and import must give back every
timestamp exactly and every value exactly (CSV, SNIRF) or to EDF's 16 bits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.bundle import export_bundle, import_bundle, unpack_bundle
from edgetwin.bundle.age import load_identities
from edgetwin.emulators.bridge import BridgeEmulator
from edgetwin.errors import TransientSourceError
from edgetwin.sources.base import Source
from edgetwin.sources.ble import BleSource
from edgetwin.sources.brainflow import BrainFlowSource
from edgetwin.sources.serial import SerialSource
from edgetwin.sources.simulator import ALL_MODALITIES, SimulatorSource
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch
from tests.bundle.conftest import AgeKey
from tests.sources import ble_harness
from tests.sources.bf_helpers import ATHENA, write_board_files
from tests.sources.bluez_emulator import (
    BlueZEmulator,
    HeartRateStrap,
    PulseOximeter,
    Thermometer,
)

pytestmark = pytest.mark.timeout(240)

private_bus = ble_harness.private_bus
bluez = ble_harness.bluez

STRAP, OXI, THERMO = "C0:FF:EE:00:00:01", "C0:FF:EE:00:00:02", "C0:FF:EE:00:00:03"


async def _record(source: Source, enough: Callable[[list[SampleBatch]], bool],
                  within: float) -> list[SampleBatch]:
    """Batches from ``source`` until ``enough`` (or ``within`` s, or the source ends)."""
    got: list[SampleBatch] = []
    await source.connect()
    try:
        async with asyncio.timeout(within):
            async with contextlib.aclosing(source.stream()) as stream:  # type: ignore[type-var]
                async for batch in stream:
                    got.append(batch)
                    if enough(got):
                        break
    except (TimeoutError, TransientSourceError):
        pass  # a playback that ends trips the watchdog; a slow source stops at the deadline
    finally:
        await source.close()
    assert got, f"{source.name} gave nothing"
    return got


def _rows(batches: list[SampleBatch], stream: str) -> int:
    return sum(len(b) for b in batches if b.stream == stream)


def _seconds(batches: list[SampleBatch]) -> float:
    ts = [b.t for b in batches if len(b)]
    return float(max(t[-1] for t in ts) - min(t[0] for t in ts)) if ts else 0.0


def _joined(store: TwinStore, name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    parts = list(store.read_samples(name))
    return (np.concatenate([p.t for p in parts]), np.concatenate([p.values for p in parts]),
            parts[-1].channels)


@pytest.fixture
async def recorded(bluez: BlueZEmulator, tmp_path: Path) -> list[SampleBatch]:
    """What every source kind gave in a few seconds each."""
    batches: list[SampleBatch] = []
    # simulator: 90 simulated seconds of every modality, flat out, with dropouts
    sim = SimulatorSource("sim", seed=7, realtime=False, start_t=1_767_225_600.25,
                          modalities=ALL_MODALITIES, duration_s=90.0)
    batches += await _record(sim, lambda _b: False, within=60)
    # BrainFlow's synthetic board, host-clock timestamps with their jitter
    syn = BrainFlowSource("syn", "SYNTHETIC_BOARD", watchdog_s=5.0)
    batches += await _record(syn, lambda b: _seconds(b) > 4.0, within=20)
    # the Muse S Athena played back from files BrainFlow wrote: EEG, IMU and the optics
    files = write_board_files(tmp_path, ATHENA, seconds=3.0)
    muse = BrainFlowSource("muse", "PLAYBACK_FILE_BOARD", {
        "file": str(files[0][0]), "file_aux": str(files[1][0]), "file_anc": str(files[2][0]),
        "master_board": ATHENA}, watchdog_s=1.0)
    batches += await _record(muse, lambda _b: False, within=20)
    # the serial bridge emulator on a pseudo-terminal (fNIRS with per-channel distances)
    emu = BridgeEmulator(seed=3, rate_hz=100.0, link_dir=tmp_path)
    emu.start()
    try:
        serial = SerialSource("forehead", emu.path)
        batches += await _record(serial, lambda b: _rows(b, "forehead.fnirs") >= 300,
                                 within=30)
    finally:
        emu.stop()
    # bleak against the emulated BlueZ: heart rate + RR, oximeter, thermometer
    bluez.add(HeartRateStrap(STRAP, "Polar H10", rate_hz=20, model_seconds=0.5))
    bluez.add(PulseOximeter(OXI, rate_hz=10))
    bluez.add(Thermometer(THERMO, rate_hz=10))
    for address, profile, name, stream in ((STRAP, "heart_rate", "chest", "chest.rr"),
                                           (OXI, "pulse_oximeter", "finger", "finger.spo2"),
                                           (THERMO, "thermometer", "ear", "ear.temp")):
        ble = BleSource(name, address, profile, connect_timeout_s=15, scan_timeout_s=3)
        batches += await _record(ble, lambda b, s=stream: _rows(b, s) >= 12, within=40)
    return batches


async def test_every_source_kind_records_exports_imports_and_compares(
    recorded: list[SampleBatch], key: AgeKey, tmp_path: Path
) -> None:
    kinds = {b.stream.split(".")[0] for b in recorded}
    assert kinds >= {"sim", "syn", "muse", "forehead", "chest", "finger", "ear"}
    secret = Secret.passphrase("every source")
    src = TwinStore.create(tmp_path / "src", secret)
    out = tmp_path / "all.age"
    with src:
        for b in recorded:
            src.append_samples(b)
        src.commit()
        held = {s.name: _joined(src, s.name) for s in src.streams()}
        report = export_bundle(src, out, recipients=[key.public])
    assert {s["name"] for s in report.streams} == set(held)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    manifest = unpack_bundle(out, dest, identities=load_identities(key.path))
    docs: dict[str, dict[str, Any]] = {s["name"]: s for s in manifest["streams"]}
    formats = {name: doc["format"] for name, doc in docs.items()}
    # the format each kind of stream gets, and why, is stable
    assert formats["sim.eeg"] == "edf" and formats["sim.accel"] == "edf"
    assert formats["sim.fnirs"] == "snirf"  # per-channel distance_cm dict
    assert formats["sim.rr"] == "csv"
    assert formats["syn.default"] == "edf", docs["syn.default"]["why"]
    assert len(docs["syn.default"]["recordings"]) == 1  # jitter does not split it
    assert formats["muse.ancillary"] == "edf", docs["muse.ancillary"]["why"]
    assert isinstance(docs["muse.ancillary"]["meta"]["distance_cm"], dict)
    assert formats["forehead.fnirs"] == "snirf"
    assert formats["chest.rr"] == "csv"
    print({name: (doc["format"], doc["why"]) for name, doc in sorted(docs.items())})
    import mne

    for name, doc in docs.items():  # a researcher opens every signal file in MNE
        if doc["format"] == "edf":
            for rec in doc["recordings"]:
                raw = mne.io.read_raw_edf(dest / rec["member"], verbose="error")
                assert raw.info["sfreq"] == doc["rate_hz"], name
                assert len(raw.ch_names) == len(doc["channels"]), name
                assert raw.n_times >= rec["positions"], name
        elif doc["format"] == "snirf":
            raw = mne.io.read_raw_snirf(dest / doc["member"], verbose="error")
            assert raw.n_times == doc["samples"], name
            short = [d for d in mne.preprocessing.nirs.source_detector_distances(raw.info)
                     if d < 0.015]  # metres: the simulator's 0.8 cm pair is a short channel
            assert len(short) == (2 if name == "sim.fnirs" else 0), name

    home = tmp_path / "restored"
    imported = import_bundle(out, home, identities=load_identities(key.path), secret=secret)
    assert imported.samples == sum(len(v[0]) for v in held.values())
    with TwinStore.open(home, secret) as store:
        assert {s.name for s in store.streams()} == set(held)
        for name, (t, v, channels) in held.items():
            t2, v2, channels2 = _joined(store, name)
            assert channels2 == channels, name
            np.testing.assert_array_equal(t2, t, err_msg=name)  # every timestamp, exactly
            assert np.array_equal(np.isnan(v2), np.isnan(v)), name
            doc = docs[name]
            if doc["format"] == "edf":
                lo = np.array(doc["edf"]["physical_min"])
                hi = np.array(doc["edf"]["physical_max"])
                quantum = (hi - lo) / 65535
                err = np.abs(np.nan_to_num(v2 - v))
                bad = np.argwhere(err > quantum * 0.5 + 1e-9 * np.abs(hi))
                assert not bad.size, (name, doc["edf"], bad[:3].tolist(), v[bad[0][0]].tolist(),
                                      v2[bad[0][0]].tolist())
            else:
                np.testing.assert_array_equal(v2, v, err_msg=name)
        assert store.verify().ok
