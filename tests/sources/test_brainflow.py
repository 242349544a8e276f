"""BrainFlowSource against BrainFlow's own synthetic and playback boards (real native code)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from serial.tools.list_ports_common import ListPortInfo

from edgetwin.errors import (
    DeviceNotFound,
    DriverMissing,
    MalformedInput,
    PairingRefused,
    TransientSourceError,
    UsageError,
)
from edgetwin.sources.brainflow import (
    BrainFlowSource,
    _load_native,
    brainflow_available,
    build_params,
    preset_layout,
    resolve_board,
    scan_dongles,
    translate_error,
)
from edgetwin.types import SampleBatch
from tests.sources.bf_helpers import ATHENA, write_board_files

REPO = Path(__file__).resolve().parents[2]


async def collect(source: BrainFlowSource, until: float, want: set[str] | None = None,
                  ) -> dict[str, list[SampleBatch]]:
    """Stream until ``want`` streams were all seen with data, or ``until`` seconds passed."""
    out: dict[str, list[SampleBatch]] = {}
    deadline = time.monotonic() + until
    async for batch in source.stream():
        out.setdefault(batch.stream, []).append(batch)
        if time.monotonic() > deadline or (want is not None and want <= set(out)):
            break
    return out


def joined(batches: list[SampleBatch]) -> SampleBatch:
    first = batches[0]
    return SampleBatch(first.stream, first.channels, first.units,
                       np.concatenate([b.t for b in batches]),
                       np.concatenate([b.values for b in batches]), first.meta)


# -- synthetic board ---------------------------------------------------------------------


async def test_synthetic_board_streams_every_preset_with_named_channels() -> None:
    source = BrainFlowSource("syn", "SYNTHETIC_BOARD", watchdog_s=5.0)
    await source.connect()
    try:
        streams = await collect(source, until=2.0)
    finally:
        await source.close()
    assert set(streams) == {"syn.default", "syn.auxiliary"}
    default = joined(streams["syn.default"])
    aux = joined(streams["syn.auxiliary"])
    # 16 EEG sites named from eeg_names; ECG/EMG/EOG rows are the same rows: named once.
    assert default.channels[:3] == ("eeg_fz", "eeg_c3", "eeg_cz")
    assert sum(c.startswith("eeg_") for c in default.channels) == 16
    assert not any(c.startswith(("ecg_", "emg_", "eog_")) for c in default.channels)
    units = dict(zip(default.channels, default.units, strict=True))
    assert units["eeg_fz"] == "uV"
    assert units["accel_x"] == "g"
    assert units["gyro_z"] == "deg/s"
    assert units["temp"] == "degC"
    assert units["eda"] == "uS"
    assert units["battery"] == "%"
    assert {"ppg_1", "ppg_2", "resistance_1", "marker"} <= set(default.channels)
    assert aux.channels[:3] == ("accel_x", "accel_y", "accel_z")
    assert {"battery", "eda", "ppg_1", "temp"} <= set(aux.channels)
    for batch in (default, aux):
        assert len(batch) > 100  # 250 Hz for ~2 s; loose on purpose
        assert np.all(np.diff(batch.t) >= 0)
        assert abs(batch.last_t - time.time()) < 10.0  # epoch seconds from the timestamp row
        assert batch.values.shape == (len(batch), len(batch.channels))
    assert source.counters.samples == len(default) + len(aux)
    assert source.counters.last_sample_t is not None
    assert source.describe()["board"] == "SYNTHETIC_BOARD"


async def test_close_is_idempotent_and_reconnect_prepares_again() -> None:
    source = BrainFlowSource.from_record(
        "syn", {"kind": "brainflow", "board": "SYNTHETIC_BOARD", "params": {}}
    )
    await source.close()  # before any connect
    for _ in range(2):
        await source.connect()
        streams = await collect(source, until=0.5, want={"syn.default"})
        assert "syn.default" in streams
        await source.close()
        await source.close()


async def test_a_failing_board_does_not_stop_a_running_one() -> None:
    good = BrainFlowSource("good", "SYNTHETIC_BOARD")
    bad = BrainFlowSource("bad", "CYTON_BOARD", {"serial_port": "/dev/edgetwin-no-such-port"})
    await good.connect()
    try:
        with pytest.raises(DeviceNotFound) as info:
            await bad.connect()
        streams = await collect(good, until=0.6, want={"good.default"})
    finally:
        await good.close()
    assert "good.default" in streams
    message = str(info.value)
    # BrainFlow's own meaning and code travel in the message; nothing stays prepared.
    assert "UNABLE_TO_OPEN_PORT_ERROR" in message
    assert "unable to open the port" in message
    assert "CYTON_BOARD" in message
    assert bad._board is None
    assert isinstance(info.value.__cause__, _load_native().BrainFlowError)
    # The failed connect left no half-open session behind: the same error again, not
    # "another session already uses this board".
    with pytest.raises(DeviceNotFound):
        await bad.connect()


# -- playback --------------------------------------------------------------------------


async def test_athena_playback_feeds_fnirs_channels_from_the_optics(tmp_path: Path) -> None:
    files = write_board_files(tmp_path, ATHENA, seconds=1.5)
    params = {"file": str(files[0][0]), "file_aux": str(files[1][0]),
              "file_anc": str(files[2][0]), "master_board": ATHENA}
    source = BrainFlowSource("muse", "PLAYBACK_FILE_BOARD", params)
    await source.connect()
    try:
        streams = await collect(source, until=4.0,
                                want={"muse.default", "muse.auxiliary", "muse.ancillary"})
    finally:
        await source.close()
    assert set(streams) == {"muse.default", "muse.auxiliary", "muse.ancillary"}
    eeg = joined(streams["muse.default"])
    assert eeg.channels[:4] == ("eeg_tp9", "eeg_af7", "eeg_af8", "eeg_tp10")
    aux = joined(streams["muse.auxiliary"])
    assert aux.channels[:6] == ("accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z")
    anc = joined(streams["muse.ancillary"])
    fnirs = [c for c in anc.channels if c.startswith("fnirs_")]
    assert len(fnirs) == 12  # 16 optics minus 4 ambient readings
    assert {"fnirs_left_outer_730", "fnirs_right_inner_850", "fnirs_left_inner_660"} <= set(fnirs)
    assert "optical_amb_left_outer" in anc.channels
    # The values that come out are the ones BrainFlow wrote into optical slot 0 and 15.
    written = files[2][1]
    layout = preset_layout(resolve_board(ATHENA), 2)
    n = len(anc)
    for channel, slot in (("fnirs_left_outer_730", 0), ("optical_amb_right_inner", 15)):
        row = layout.rows[layout.channels.index(channel)]
        assert row == 1 + slot
        got = anc.values[:, anc.channels.index(channel)]
        np.testing.assert_allclose(got, written[row, :n], rtol=1e-6)
    assert anc.meta["distance_cm"]["fnirs_left_outer_730"] == 3.0
    assert anc.meta["distance_cm"]["fnirs_left_inner_850"] == 1.0
    assert anc.meta["fnirs"]["wavelength_nm"]["fnirs_right_outer_660"] == 660.0
    # Playback gives new timestamps: 'now', not the file's.
    assert abs(anc.last_t - time.time()) < 10.0


async def test_athena_playback_through_the_feature_pipeline_gives_finite_hbo(
    tmp_path: Path,
) -> None:
    """Playback batches of the Athena's optics -> FeaturePipeline -> finite fnirs_hbo."""
    from edgetwin.features.pipeline import FeaturePipeline
    from edgetwin.features.schema import INDEX

    files = write_board_files(tmp_path, ATHENA, seconds=3.0)
    source = BrainFlowSource("muse", "PLAYBACK_FILE_BOARD",
                             {"file_anc": str(files[2][0]), "master_board": ATHENA},
                             watchdog_s=0.5)
    pipeline = FeaturePipeline(step_s=1.0)
    frames: list[object] = []

    async def run() -> None:
        async for batch in source.stream():
            frames.extend(pipeline.push(batch))

    await source.connect()
    try:
        with pytest.raises(TransientSourceError):  # the file ends: the watchdog closes the run
            await run()
    finally:
        await source.close()
    frames.extend(pipeline.flush())
    hbo = [f.values[INDEX["fnirs_hbo"]] for f in frames]  # type: ignore[attr-defined]
    assert len(frames) >= 2
    assert any(np.isfinite(v) for v in hbo)
    assert all(np.isfinite(v) or np.isnan(v) for v in hbo)  # never inf


async def test_playback_that_ends_trips_the_watchdog_and_reconnects(tmp_path: Path) -> None:
    files = write_board_files(tmp_path, "SYNTHETIC_BOARD", seconds=0.4)
    source = BrainFlowSource("pb", "PLAYBACK_FILE_BOARD",
                             {"file": str(files[0][0]), "master_board": "SYNTHETIC_BOARD"},
                             watchdog_s=1.0, poll_hz=20.0)
    for _ in range(2):  # the second lap is the supervisor's reconnect: prepare again
        await source.connect()
        got = [0]

        async def drain(got: list[int] = got) -> None:
            async for batch in source.stream():
                got[0] += len(batch)

        with pytest.raises(TransientSourceError, match=r"sent nothing for 1 s"):
            await drain()
        # The session was released before the error surfaced.
        assert source._board is None
        assert got[0] == 100  # the whole file (0.4 s at 250 Hz), then silence
        await source.close()


async def test_playback_file_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    files = write_board_files(tmp_path, "SYNTHETIC_BOARD", seconds=0.2)
    source = BrainFlowSource("pb", "PLAYBACK_FILE_BOARD",
                             {"file": str(files[0][0]), "master_board": ATHENA})
    with pytest.raises(MalformedInput, match="playback file of the wrong shape") as info:
        await source.connect()
    assert "32 columns" in str(info.value)
    assert "11 rows" in str(info.value)
    assert source._board is None


async def test_playback_of_a_missing_file_is_device_not_found(tmp_path: Path) -> None:
    source = BrainFlowSource("pb", "PLAYBACK_FILE_BOARD",
                             {"file": str(tmp_path / "nope.csv"), "master_board": -1})
    with pytest.raises(DeviceNotFound, match="does not exist"):
        await source.connect()


# -- layouts --------------------------------------------------------------------------


def test_athena_optics_follow_the_muse_preset_and_distance_overrides() -> None:
    athena = resolve_board(ATHENA)
    four = preset_layout(athena, 2, other_info="p1035")
    assert [c for c in four.channels if c.startswith("fnirs_")] == [
        "fnirs_left_inner_730", "fnirs_right_inner_730",
        "fnirs_left_inner_850", "fnirs_right_inner_850",
    ]
    assert four.rows[:4] == (1, 2, 3, 4)  # BrainFlow fills the first slots
    eight = preset_layout(athena, 2, other_info="preset=p1034;low_latency=true")
    assert sum(c.startswith("fnirs_") for c in eight.channels) == 8
    none = preset_layout(athena, 2, other_info="p20")
    assert not any(c.startswith(("fnirs_", "optical_")) for c in none.channels)
    custom = preset_layout(athena, 2, fnirs_distance_cm={"outer": 2.7})
    assert custom.meta["distance_cm"]["fnirs_right_outer_850"] == 2.7
    assert custom.meta["distance_cm"]["fnirs_right_inner_850"] == 1.0


def test_classic_muse_optics_are_ppg_and_unnamed_eeg_is_numbered() -> None:
    muse2 = preset_layout(resolve_board("MUSE_2_BOARD"), 2)
    assert {"ppg_amb", "ppg_ir", "ppg_red"} <= set(muse2.channels)
    cyton = preset_layout(resolve_board("CYTON_BOARD"), 0)
    assert [c for c in cyton.channels if c.startswith("eeg_")][:2] == ["eeg_fp1", "eeg_fp2"]
    ganglion = preset_layout(resolve_board("GANGLION_BOARD"), 0)  # BrainFlow names no sites
    assert [c for c in ganglion.channels if c.startswith("eeg_")] == [
        "eeg_1", "eeg_2", "eeg_3", "eeg_4"]


def test_layout_drops_backwards_timestamps_and_masks_inf() -> None:
    layout = preset_layout(resolve_board("SYNTHETIC_BOARD"), 1)
    data = np.zeros((layout.num_rows, 5))
    data[layout.timestamp_row] = [10.0, 11.0, 10.5, 12.0, 12.0]
    data[layout.rows[0]] = [1.0, np.inf, 2.0, -np.inf, 3.0]
    batch, dropped = layout.batch("s", data, last_t=9.0)
    assert dropped == 1
    np.testing.assert_array_equal(batch.t, [10.0, 11.0, 12.0, 12.0])
    assert np.isnan(batch.values[1, 0]) and np.isnan(batch.values[2, 0])
    _, dropped_all = layout.batch("s", data, last_t=100.0)
    assert dropped_all == 5


def test_a_batch_holds_only_its_own_rows_not_all_of_brainflows() -> None:
    """A batch waits in the hub's queues and the store's buffer, a whole disk stall long:
    a view of BrainFlow's array would keep every row of it alive beside the batch's copy."""
    layout = preset_layout(resolve_board("SYNTHETIC_BOARD"), 0)
    data = np.arange(layout.num_rows * 250, dtype=np.float64).reshape(layout.num_rows, 250)
    data[layout.timestamp_row] = 1_700_000_000.0 + np.arange(250) / 250
    for last_t in (-np.inf, data[layout.timestamp_row, 9]):  # all kept, and some dropped
        batch, _ = layout.batch("s", data, last_t=last_t)
        for array in (batch.t, batch.values):
            assert not np.shares_memory(array, data)
            assert array.base is None or array.base.nbytes == array.nbytes
        np.testing.assert_array_equal(batch.t, data[layout.timestamp_row, -len(batch):])


# -- names, params, errors ----------------------------------------------------------------


def test_board_names_resolve_with_did_you_mean() -> None:
    assert resolve_board("SYNTHETIC_BOARD") == -1
    assert resolve_board("synthetic") == -1
    assert resolve_board(67) == resolve_board("muse_s_athena_board")
    assert resolve_board("-1") == -1
    with pytest.raises(UsageError, match="unknown BrainFlow board") as info:
        resolve_board("MUSE_S_ATENA_BOARD")
    assert "MUSE_S_ATHENA_BOARD" in str(info.value)
    with pytest.raises(UsageError, match="no BrainFlow board has id 999"):
        resolve_board(999)


def test_params_are_validated_and_master_board_may_be_a_name() -> None:
    assert build_params({"serial_port": "/dev/ttyUSB0", "ip_port": "6677",
                         "master_board": "SYNTHETIC_BOARD", "mac_address": None}) == {
        "serial_port": "/dev/ttyUSB0", "ip_port": 6677, "master_board": -1}
    with pytest.raises(UsageError, match="unknown BrainFlow parameter 'serialport'") as info:
        build_params({"serialport": "/dev/ttyUSB0"})
    assert "serial_port" in str(info.value)
    with pytest.raises(UsageError, match="must be an integer"):
        build_params({"ip_port": "http"})
    with pytest.raises(UsageError, match="not a BrainFlow record"):
        BrainFlowSource.from_record("x", {"kind": "ble", "address": "AA"})


def test_exit_codes_map_onto_the_error_tree() -> None:
    error = _load_native().BrainFlowError
    cases = {2: DeviceNotFound, 7: DeviceNotFound, 18: TransientSourceError,
             13: PairingRefused, 16: TransientSourceError, 999: TransientSourceError}
    for code, cls in cases.items():
        exc = error("unable to prepare streaming session", code) if code != 999 else \
            RuntimeError("odd")
        translated = translate_error(exc, "board X")
        assert type(translated) is cls, code
        assert translated.message.startswith("board X: ")
    assert "BOARD_NOT_READY_ERROR, code 7" in str(translate_error(error("x", 7), "b"))


def test_scan_dongles_lists_only_known_usb_ids() -> None:
    def port(device: str, vid: int | None, pid: int | None) -> ListPortInfo:
        info = ListPortInfo(device, skip_link_detection=True)
        info.vid, info.pid, info.serial_number = vid, pid, "SN1"
        return info

    found = scan_dongles([
        port("/dev/ttyUSB0", 0x0403, 0x6015),
        port("/dev/ttyACM0", 0x2458, 0x0001),
        port("/dev/ttyS0", None, None),
        port("/dev/ttyUSB1", 0x1234, 0x5678),
    ])
    assert [d["port"] for d in found] == ["/dev/ttyACM0", "/dev/ttyUSB0"]
    assert found[1]["usb_id"] == "0403:6015"
    assert "CYTON_BOARD" in found[1]["boards"]
    assert "MUSE_S_BLED_BOARD" in found[0]["boards"]
    assert isinstance(scan_dongles(), list)  # the real machine's ports: none here, no crash


# -- native library ------------------------------------------------------------------------


def test_brainflow_is_available_here() -> None:
    assert brainflow_available() is None


def _run(python: str, code: str, env: dict[str, str] | None = None, timeout: float = 120,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_a_native_library_that_cannot_load_is_driver_missing(tmp_path: Path) -> None:
    """What a Pi sees: BrainFlow's x86-64 .so files do not load; we say so, and how to fix it."""
    import brainflow

    fake = tmp_path / "site" / "brainflow"
    shutil.copytree(Path(brainflow.__file__).parent, fake,
                    ignore=shutil.ignore_patterns("lib", "__pycache__"))
    (fake / "lib").mkdir()
    for name in ("libBoardController.so", "libDataHandler.so"):
        (fake / "lib" / name).write_bytes(b"\x7fELF not really a library for this CPU")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"}
    result = _run(sys.executable, """
        import asyncio, warnings
        warnings.simplefilter("error")
        import brainflow
        assert "site" in brainflow.__file__, brainflow.__file__
        from edgetwin.errors import DriverMissing
        from edgetwin.sources.brainflow import BrainFlowSource, brainflow_available
        print("REASON", brainflow_available())
        try:
            asyncio.run(BrainFlowSource("x", "SYNTHETIC_BOARD").connect())
        except DriverMissing as exc:
            print("CONNECT", exc.exit_code, exc)
    """, env=env)
    assert result.returncode == 0, result.stderr
    assert "REASON BrainFlow's native library is missing for this CPU" in result.stdout
    assert "scripts/build-brainflow-arm.sh" in result.stdout
    assert "CONNECT 6 BrainFlow's native library is missing" in result.stdout
    assert DriverMissing.exit_code == 6


@pytest.mark.slow
def test_a_fresh_environment_opens_the_synthetic_board(tmp_path: Path) -> None:
    """A new venv with pyproject's setuptools pin and the same brainflow runs our source.

    brainflow 5.23 on Python 3.11 finds its libraries through pkg_resources,
    which setuptools 81 removed; pyproject pins setuptools below 81.
    """
    import importlib.metadata

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    setuptools_spec = next(d for d in deps if d.replace(" ", "").startswith("setuptools"))
    assert "<81" in setuptools_spec.replace(" ", "")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade",
         setuptools_spec, f"brainflow=={importlib.metadata.version('brainflow')}",
         f"numpy=={importlib.metadata.version('numpy')}"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = _run(python, """
        import asyncio, time, warnings
        warnings.simplefilter("error")
        import importlib.util
        assert importlib.util.find_spec("pkg_resources") is not None  # brainflow's fallback
        from edgetwin.sources.brainflow import BrainFlowSource, brainflow_available
        assert brainflow_available() is None
        async def main():
            s = BrainFlowSource("syn", "SYNTHETIC_BOARD")
            await s.connect()
            try:
                async for batch in s.stream():
                    print("OK", batch.stream, len(batch.channels))
                    break
            finally:
                await s.close()
        asyncio.run(main())
    """, env=env)
    assert result.returncode == 0, result.stderr
    assert "OK syn." in result.stdout


def test_pkg_resources_warning_is_silenced_only_around_loading() -> None:
    # The module loaded BrainFlow with warnings as errors (pytest's filterwarnings=error)
    # and this process still turns other warnings into errors.
    assert brainflow_available() is None
    import warnings

    with pytest.raises(UserWarning):
        warnings.warn("still an error", UserWarning, stacklevel=1)


def test_connect_runs_blocking_calls_off_the_event_loop() -> None:
    """The loop keeps ticking while prepare_session/start_stream run."""

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        source = BrainFlowSource("syn", "SYNTHETIC_BOARD")
        await source.connect()
        await source.close()
        stop.set()
        await task
        return ticks

    assert asyncio.run(main()) > 1


def test_arm_build_script_targets_the_installed_version_and_package(tmp_path: Path) -> None:
    """The script cannot build here (no ARM, no GitHub); its plan is checked with --dry-run."""
    import importlib.metadata

    import brainflow

    script = REPO / "scripts" / "build-brainflow-arm.sh"
    result = subprocess.run(
        ["bash", str(script), "--dry-run", "--no-apt", "--python", sys.executable,
         "--src", str(tmp_path / "src")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    version = importlib.metadata.version("brainflow")
    out = result.stdout
    assert f"git clone --depth 1 --branch {version} " in out
    assert "-DBUILD_BLE=ON" in out
    lib_dir = Path(brainflow.__file__).parent / "lib"
    assert f"{lib_dir}/\n" in out or f"{lib_dir}/" in out.split("cp -f", 1)[1]
    assert not (Path(brainflow.__file__).parent / "lib.orig-x86_64").exists()  # dry: no change


def test_loading_brainflow_does_not_import_pkg_resources() -> None:
    """BrainFlow's libraries load without pkg_resources (~10 MiB resident in a daemon)."""
    code = ("import sys\n"
            "from edgetwin.sources.brainflow import _load_native\n"
            "bf = _load_native()\n"
            "bf.BoardShim.get_sampling_rate(bf.BoardIds.SYNTHETIC_BOARD.value)\n"
            "print('pkg_resources' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


async def test_poller_handover_holds_at_most_queue_batches_in_flight() -> None:
    """The poller waits while every slot is taken and goes on as the loop takes items; a stop
    ends a waiting hand-over."""
    import threading

    from edgetwin.sources.brainflow import _Handover

    queue: asyncio.Queue[object] = asyncio.Queue()
    handover = _Handover(asyncio.get_running_loop(), queue, threading.BoundedSemaphore(2),
                         threading.Event())
    done: list[bool] = []
    poller = threading.Thread(target=lambda: done.extend(handover.deliver(i) for i in range(3)))
    poller.start()
    first, second = await queue.get(), await queue.get()
    await asyncio.sleep(0.3)
    assert (first, second) == (0, 1) and queue.empty()  # the third waits for a free slot
    handover.slots.release()
    assert await asyncio.wait_for(queue.get(), 5) == 2
    await asyncio.to_thread(poller.join, 5)
    assert done == [True, True, True]
    # every slot taken and the source stopping: the hand-over gives up instead of waiting
    handover.stop.set()
    assert await asyncio.to_thread(handover.deliver, 3) is False
