"""An LSL stream as a paired source: ``pair add lsl``, ingestion, loss and reconnect.

The outlets live in a thread of this process (real pylsl, loopback); the daemon
is a separate process. See test_lsl_outlets.py for the loopback ``lsl_api.cfg``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.clock import bracketed_offset
from edgetwin.sources.lsl_meta import layout_problem, map_channels
from edgetwin.store import Secret, TwinStore

EXE = [sys.executable, "-m", "edgetwin"]
PASS = "lsl inlet passphrase"
LABELS = ("Fp1", "Fp2", "C3", "C4")


def lsl_config() -> str:
    """The loopback-only, per-session liblsl config (same as test_lsl_outlets)."""
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
pylsl = pytest.importorskip("pylsl")


class Outlet:
    """A test outlet pushing 100 Hz chunks of ``base + sample number`` in a thread."""

    def __init__(self, name: str, source_id: str, base: float, labels: tuple[str, ...] = LABELS,
                 rate: float = 100.0) -> None:
        info = pylsl.StreamInfo(name, "EEG", len(labels), rate, "float32", source_id)
        chans = info.desc().append_child("channels")
        for label in labels:
            ch = chans.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("unit", "millivolts")
            ch.append_child_value("type", "EEG")
        self.outlet = pylsl.StreamOutlet(info)
        self.base = base
        self.rate = rate
        self.n = 0
        self.pushed: list[tuple[float, float]] = []  # (first value, lsl time) per sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # an exact grid of sample times (as a device's clock gives), whatever this thread's
        # scheduling: LslSource's dejitter then has nothing to smooth away
        width = self.outlet.channel_count
        t0 = pylsl.local_clock()
        while not self._stop.wait(0.05):
            k = int((pylsl.local_clock() - t0) * self.rate) - self.n
            if k <= 0:
                continue
            stamps = t0 + (self.n + np.arange(k)) / self.rate
            first = self.base + self.n + np.arange(k)
            values = first[:, None] + np.arange(width)[None, :] * 0.125
            self.outlet.push_chunk(values.astype(np.float32), stamps.tolist())
            self.pushed.extend(zip(first.tolist(), stamps.tolist(), strict=True))
            self.n += k

    def destroy(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        del self.outlet


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    e = {**os.environ, "EDGETWIN_HOME": str(tmp_path / "home"),
         "EDGETWIN_PASSPHRASE_FILE": str(pw), "EDGETWIN_KDF_PROFILE": "test"}
    subprocess.run([*EXE, "init"], env=e, capture_output=True, check=True, timeout=120)
    (tmp_path / "home" / "config.toml").write_text(
        "[daemon]\nflush_interval_s = 0.2\nwatchdog_s = 3.0\nbackoff_initial_s = 0.2\n"
        "backoff_max_s = 1.0\n[inference]\nenabled = false\n"
    )
    return e


@pytest.fixture
def outlets() -> Iterator[list[Outlet]]:
    made: list[Outlet] = []
    yield made
    for o in made:
        if not o._stop.is_set():
            o.destroy()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def wait_source(env: dict[str, str], name: str, until: Callable[[dict[str, object]], bool],
                timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        result = cli(env, "status", "--json")
        if result.returncode == 0:
            status = json.loads(result.stdout)
            for src in status.get("sources", []):
                if src["name"] == name:
                    last = src
                    if until(src):
                        return src
        time.sleep(0.3)
    raise AssertionError(f"source {name} never satisfied the condition; last: {last}")


def test_paired_stream_is_ingested_survives_loss_and_refuses_a_new_layout(
    env: dict[str, str], outlets: list[Outlet]
) -> None:
    name = f"tst-{uuid.uuid4().hex[:8]}"
    sid = f"sid-{name}"
    outlets.append(Outlet(name, sid, base=0.0))
    paired = cli(env, "pair", "add", "lsl", "--name", name, "--as", "lab", "--json")
    assert paired.returncode == 0, paired.stderr
    doc = json.loads(paired.stdout)
    assert doc["stream"] == "lab.eeg"
    assert doc["channels"] == ["eeg_fp1", "eeg_fp2", "eeg_c3", "eeg_c4"]
    assert doc["lsl"]["nominal_srate"] == 100.0
    assert [c["label"] for c in doc["lsl"]["channels"]] == list(LABELS)
    record = json.loads(cli(env, "pair", "list", "--json").stdout)[0]
    assert record["stream"]["source_id"] == sid  # the metadata is stored with the pairing

    daemon = subprocess.Popen([*EXE, "daemon", "run"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_source(env, "lab", lambda s: s["state"] == "streaming" and s["samples"] >= 100)
        first = outlets[0]
        first.destroy()  # the device goes away: LostError -> backoff -> re-resolve
        wait_source(env, "lab", lambda s: s["state"] != "streaming" or s["failures"] >= 1)
        outlets.append(Outlet(name, sid, base=1_000_000.0))
        back = wait_source(env, "lab", lambda s: s["connects"] >= 2 and s["state"] == "streaming")
        # the loss, or (when a reconnect attempt ran before the outlet came back) its absence
        assert re.search(r"was lost|no LSL stream with name=", str(back["last_error"]))
        n_before = back["samples"]
        wait_source(env, "lab", lambda s: s["samples"] >= n_before + 200)  # type: ignore[operator]
        outlets[1].destroy()
        # the stream comes back with five channels: refused, named precisely, nothing stored
        outlets.append(Outlet(name, sid, base=2_000_000.0, labels=(*LABELS, "Cz")))
        refused = wait_source(env, "lab", lambda s: "5 channels" in str(s["last_error"]))
        assert "paired with 4" in str(refused["last_error"])
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)

    with TwinStore.open(Path(env["EDGETWIN_HOME"]), Secret.passphrase(PASS)) as store:
        parts = list(store.read_samples("lab.eeg"))
    assert parts[0].channels == ("eeg_fp1", "eeg_fp2", "eeg_c3", "eeg_c4")
    assert parts[0].units == ("uV",) * 4
    t = np.concatenate([p.t for p in parts])
    v = np.concatenate([p.values for p in parts])
    assert np.all(np.diff(t) >= 0)
    # millivolts became microvolts; the channel offsets (0.125 mV steps) survive the scaling
    assert np.allclose(v[:, 1] - v[:, 0], 125.0, atol=0.1)
    first_value = v[:, 0] / 1e3
    after = first_value >= 1_000_000.0 - 1
    assert after.sum() >= 200, "data after the reconnect was stored"
    assert (~after).sum() >= 100
    assert not (first_value >= 2_000_000.0 - 1).any(), "the 5-channel stream was not ingested"
    # stored times are the outlet's timestamps (clock-corrected) within a few ms
    pushed = dict(first.pushed + outlets[1].pushed)
    offset = -bracketed_offset(pylsl.local_clock, time.time)  # not a preempted pair
    errs = [abs(ts - (pushed[round(val)] + offset)) for ts, val in
            zip(t.tolist(), first_value.tolist(), strict=True) if round(val) in pushed]
    assert len(errs) >= 300
    assert np.median(errs) < 0.005, f"median time error {np.median(errs) * 1e3:.2f} ms"


def test_pair_refuses_two_streams_of_the_same_name_and_lists_both(
    env: dict[str, str], outlets: list[Outlet]
) -> None:
    name = f"dup-{uuid.uuid4().hex[:8]}"
    outlets.append(Outlet(name, "sid-one", base=0.0))
    outlets.append(Outlet(name, "sid-two", base=0.0))
    result = cli(env, "pair", "add", "lsl", "--name", name)
    assert result.returncode == 2
    assert f"2 LSL streams match --name {name}" in result.stderr
    assert "'sid-one'" in result.stderr and "'sid-two'" in result.stderr
    assert "--source-id" in result.stderr
    assert json.loads(cli(env, "pair", "list", "--json").stdout) == []
    # picking one by its source id works
    ok = cli(env, "pair", "add", "lsl", "--source-id", "sid-two", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["lsl"]["source_id"] == "sid-two"


def test_pair_with_no_such_stream_is_exit_6_and_says_what_to_do(env: dict[str, str]) -> None:
    result = cli(env, "pair", "add", "lsl", "--type", f"none-{uuid.uuid4().hex}",
                 "--timeout", "0.5")
    assert result.returncode == 6
    assert "no LSL stream with type=" in result.stderr
    assert "LSLAPICFG" in result.stderr
    both = cli(env, "pair", "add", "lsl", "--name", "a", "--type", "EEG")
    assert both.returncode == 2
    assert "exactly one of --name, --type or --source-id" in both.stderr


def test_channel_mapping_of_lsl_metadata() -> None:
    meta = {
        "type": "EEG", "channel_count": 7, "nominal_srate": 250.0,
        "channels": [
            {"label": "Fp1", "unit": "microvolts", "type": "EEG"},
            {"label": "O2", "unit": "volts", "type": "EEG"},
            {"label": "AccX", "unit": "m/s^2", "type": "ACC"},
            {"label": "ECG", "unit": "mV", "type": "ECG"},
            {"label": "HR", "unit": "bpm", "type": "HR"},
            {"label": "pos", "unit": "mm", "type": "MoCap"},
            {"label": "Fz", "unit": "furlongs", "type": "EEG"},
        ],
    }
    cmap = map_channels(meta)
    assert cmap.names == ("eeg_fp1", "eeg_o2", "accel_x", "ecg_ecg", "hr", "mocap_pos",
                          "raw_eeg_fz")
    assert cmap.units == ("uV", "uV", "g", "uV", "bpm", "mm", "furlongs")
    assert cmap.scale[1] == 1e6 and cmap.scale[3] == 1e3
    assert cmap.scale[2] == pytest.approx(1 / 9.80665)
    assert cmap.stream_suffix == "lsl"
    # no desc at all: numbered channels of the stream's type
    bare = map_channels({"type": "EEG", "channel_count": 2, "nominal_srate": 0.0})
    assert bare.names == ("eeg_1", "eeg_2") and bare.stream_suffix == "eeg"
    paired = {**meta, "channel_format": "float32"}
    assert layout_problem(paired, paired) is None
    faster = layout_problem(paired, {**paired, "nominal_srate": 500.0})
    assert faster is not None and "now runs at 500 Hz; it was paired at 250 Hz" in faster


async def test_a_stream_running_off_its_nominal_rate_is_stored_and_named() -> None:
    """Nominal 100 Hz, samples 50 Hz apart: kept with their own times, and status says so."""
    from edgetwin.sources.lsl import LslSource
    from edgetwin.sources.lsl_meta import full_metadata, resolve

    name = f"slow-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 100.0, "float32", f"sid-{name}")
    outlet = pylsl.StreamOutlet(info)
    meta = full_metadata(resolve("name", name, 5.0, want_all=False)[0], 5.0)
    source = LslSource("slow", {"prop": "name", "value": name}, meta)
    await source.connect()
    try:
        assert outlet.wait_for_consumers(5.0)
        now = pylsl.local_clock()
        stamps = now - 20.0 + np.arange(1000) / 50.0
        for part in np.array_split(np.arange(1000), 10):
            outlet.push_chunk(np.ones((len(part), 2), dtype=np.float32), stamps[part].tolist())
        n = 0
        async for batch in source.stream():
            n += len(batch)
            assert batch.stream == "slow.eeg"
            if n >= 1000:
                break
        assert n == 1000
        described = source.describe()
        assert described["effective_rate_hz"] == pytest.approx(50.0, rel=0.05)
        assert re.search(r"runs at (49|50)(\.\d+)? Hz, its nominal rate is 100 Hz",
                         described["rate_warning"])
    finally:
        await source.close()
        del outlet


def test_marker_streams_numeric_codes_and_strings_become_markers(env: dict[str, str]) -> None:
    name = f"codes-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "Markers", 1, pylsl.IRREGULAR_RATE, "int32", f"sid-{name}")
    outlet = pylsl.StreamOutlet(info)
    text_name = f"{name}-text"
    text_info = pylsl.StreamInfo(text_name, "Markers", 1, pylsl.IRREGULAR_RATE, "string",
                                 f"sid-{text_name}")
    text_outlet = pylsl.StreamOutlet(text_info)
    paired = cli(env, "pair", "add", "lsl", "--name", name, "--as", "stim", "--json")
    assert paired.returncode == 0, paired.stderr
    assert json.loads(paired.stdout)["channels"] == ["marker"]
    paired_text = cli(env, "pair", "add", "lsl", "--name", text_name, "--as", "events")
    assert paired_text.returncode == 0, paired_text.stderr
    assert f"markers from lsl:{text_name}" in paired_text.stdout
    daemon = subprocess.Popen([*EXE, "daemon", "run"], env=env, stderr=subprocess.DEVNULL)
    sent: dict[str, float] = {}
    try:
        wait_source(env, "stim", lambda s: s["state"] == "streaming")
        wait_source(env, "events", lambda s: s["state"] == "streaming")
        assert outlet.wait_for_consumers(10.0) and text_outlet.wait_for_consumers(10.0)
        time.sleep(0.5)
        for code, text in ((11, "trial 1 start"), (0, ""), (12, "bad\x1b[31mred"), (13, "end")):
            stamp = pylsl.local_clock()
            outlet.push_sample([code], stamp)
            sent[str(code)] = stamp - bracketed_offset(pylsl.local_clock, time.time)
            if text:
                text_outlet.push_sample([text], stamp + 0.001)
                sent[text] = sent[str(code)] + 0.001
            time.sleep(0.1)
        wait_source(env, "stim", lambda s: s["samples"] >= 4)
        wait_source(env, "events", lambda s: s.get("markers", 0) >= 3)  # type: ignore[operator]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
        del outlet, text_outlet
    marks = json.loads(cli(env, "markers", "--json").stdout)
    codes = [m for m in marks if m["source"] == "stim.marker"]
    assert [m["text"] for m in codes] == ["11", "12", "13"]  # code 0 is "no event"
    texts = [m for m in marks if m["source"] == f"lsl:{text_name}"]
    # the escape character is stored escaped, never raw
    assert [m["text"] for m in texts] == ["trial 1 start", "bad\\x1b[31mred", "end"]
    for m in codes:
        assert abs(m["t"] - sent[m["text"]]) < 0.005
    for m, raw in zip(texts, ("trial 1 start", "bad\x1b[31mred", "end"), strict=True):
        assert abs(m["t"] - sent[raw]) < 0.005
