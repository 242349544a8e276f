"""The daemon's LSL outlets, received by a real pylsl inlet in this process (loopback).

LSL on loopback: every test process (and the daemons it starts) reads an
``lsl_api.cfg`` through ``LSLAPICFG`` with ``ResolveScope = machine``,
``KnownPeers = {127.0.0.1}`` and a ``SessionID`` of its own, so resolution works
on a host whose only interface is loopback and streams of other processes on
the machine (another test run, a benchmark) are invisible.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.store import Secret, TwinStore

EXE = [sys.executable, "-m", "edgetwin"]
PASS = "lsl outlet passphrase"


def lsl_config() -> str:
    """The loopback-only, per-session liblsl config (set before pylsl is first used)."""
    path = Path(tempfile.gettempdir()) / f"edgetwin-lsl-test-{os.getpid()}.cfg"
    if not path.exists():
        path.write_text(
            "[ports]\nIPv6 = disable\n"
            "[multicast]\nResolveScope = machine\n"
            f"[lab]\nKnownPeers = {{127.0.0.1}}\nSessionID = edgetwin-test-{os.getpid()}\n"
            "[log]\nlevel = -2\n"
        )
    return str(path)


os.environ.setdefault("LSLAPICFG", lsl_config())
pylsl = pytest.importorskip("pylsl")  # a runtime dependency: installed with edgetwin


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    return {
        **os.environ,
        "EDGETWIN_HOME": str(tmp_path / "home"),
        "EDGETWIN_PASSPHRASE_FILE": str(pw),
        "EDGETWIN_KDF_PROFILE": "test",
    }


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"edgetwin {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def daemon(env: dict[str, str], prefix: str) -> Iterator[subprocess.Popen[str]]:
    cli(env, "init")
    cli(env, "pair", "add", "simulator", "--seed", "3")
    home = Path(env["EDGETWIN_HOME"])
    (home / "config.toml").write_text(
        "[daemon]\nflush_interval_s = 0.2\n[inference]\nenabled = false\n"
        f'[lsl]\nenabled = true\nprefix = "{prefix}"\n'
    )
    proc = subprocess.Popen([*EXE, "daemon", "run"], env=env, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def resolve_one(name: str, timeout: float = 30.0) -> object:
    found = pylsl.resolve_byprop("name", name, 1, timeout)
    assert found, f"no LSL stream {name!r} within {timeout} s"
    return found[0]


def stored(env: dict[str, str], stream: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    with TwinStore.open(Path(env["EDGETWIN_HOME"]), Secret.passphrase(PASS)) as store:
        parts = list(store.read_samples(stream))
    return (np.concatenate([p.t for p in parts]), np.concatenate([p.values for p in parts]),
            parts[0].channels)


def test_raw_outlet_carries_labels_rate_and_the_twins_sample_times(
    env: dict[str, str], prefix: str, daemon: subprocess.Popen[str]
) -> None:
    info = resolve_one(f"{prefix}.simulator.eeg")
    inlet = pylsl.StreamInlet(info, processing_flags=pylsl.proc_clocksync)
    full = inlet.info(10.0)
    assert full.type() == "EEG"
    assert full.channel_count() == 4
    assert full.nominal_srate() == 256.0
    assert full.source_id().startswith(f"{prefix}:")
    labels = full.get_channel_labels()
    assert all(lab.startswith("eeg_") for lab in labels)
    assert set(full.get_channel_units()) == {"microvolts"}
    assert set(full.get_channel_types()) == {"EEG"}
    inlet.open_stream(10.0)
    got_t: list[float] = []
    got_v: list[np.ndarray] = []
    deadline = time.monotonic() + 20
    while len(got_t) < 512 and time.monotonic() < deadline:
        values, stamps = inlet.pull_chunk(timeout=0.5, max_samples=1024, as_numpy=True)
        if len(stamps):
            # the inlet's clock (clocksync; same host) back to epoch seconds, offset read now
            got_t.extend((np.asarray(stamps) - pylsl.local_clock() + time.time()).tolist())
            got_v.append(np.asarray(values))
    assert len(got_t) >= 512, f"only {len(got_t)} samples arrived"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0

    t_store, v_store, channels = stored(env, "simulator.eeg")
    assert list(channels) == labels
    received = np.concatenate(got_v)
    # every received sample is a stored one (same values, bit for bit) at the same time
    index = {tuple(row): t for row, t in zip(v_store.tolist(), t_store.tolist(), strict=True)}
    errors = []
    for row, t in zip(received.tolist(), got_t, strict=True):
        assert tuple(row) in index, "a sample the twin did not store came out of the outlet"
        errors.append(abs(t - index[tuple(row)]))
    assert max(errors) < 0.005, f"timestamps differ by up to {max(errors) * 1e3:.2f} ms"
    inlet.close_stream()


def test_features_outlet_and_markers_outlet_exist_with_their_metadata(
    env: dict[str, str], prefix: str, daemon: subprocess.Popen[str]
) -> None:
    feats = pylsl.StreamInlet(resolve_one(f"{prefix}.features"))
    info = feats.info(10.0)
    assert info.channel_count() == 13
    assert info.nominal_srate() == pytest.approx(0.2)
    labels = info.get_channel_labels()
    assert labels[0] == "hr" and "eeg_alpha" in labels
    assert info.get_channel_units()[0] == "bpm"
    marks = pylsl.StreamInlet(resolve_one(f"{prefix}.markers"))
    minfo = marks.info(10.0)
    assert minfo.type() == "Markers"
    assert minfo.channel_format() == pylsl.cf_string
    assert minfo.nominal_srate() == pylsl.IRREGULAR_RATE
    # a feature frame arrives within a couple of steps, stamped with the frame's time
    feats.open_stream(10.0)
    sample, stamp = feats.pull_sample(timeout=30.0)
    assert sample is not None and len(sample) == 13
    frame_t = stamp - pylsl.local_clock() + time.time()
    status = json.loads(cli(env, "status", "--json").stdout)
    names = {o["name"] for o in status["lsl"]["outlets"]}
    assert {f"{prefix}.features", f"{prefix}.markers", f"{prefix}.simulator.eeg"} <= names
    assert abs(frame_t - time.time()) < 60
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    with TwinStore.open(Path(env["EDGETWIN_HOME"]), Secret.passphrase(PASS)) as store:
        frames = np.array([f.t for f in store.read_frames()])
    assert np.min(np.abs(frames - frame_t)) < 0.005
