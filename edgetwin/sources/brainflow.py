"""BrainFlow boards as a source: every board in ``BoardIds``, every preset it offers.

One stream per preset, named ``<source name>.<preset>`` (``muse.default``,
``muse.auxiliary``, ``muse.ancillary``). Channels come from BrainFlow's board
description of each preset and are named by the CSV contract of
``edgetwin.types``::

    eeg_channels + eeg_names   -> eeg_<site> (µV), or eeg_<n> when the board names none
    ecg / emg / eog channels   -> ecg_<n>, emg_<n>, eog_<n> (µV); a row BrainFlow lists
                                  under several ExG types is named once, eeg first
    accel / gyro / magnetometer-> accel_x|y|z (g), gyro_x|y|z (deg/s), mag_x|y|z (a.u.)
    ppg / eda / temperature    -> ppg (a.u.), eda (µS), temp (°C); _<n> suffix when several
    battery_channel            -> battery (%)
    resistance_channels        -> resistance_<n> (ohm)
    optical_channels           -> Muse S Athena: fnirs_<side>_<detector>_<nm>, see below;
                                  classic Muse (2, S, BLED): ppg_amb, ppg_ir, ppg_red;
                                  any other board: optical_<n> (a.u.)
    other / analog / rotation  -> other_<n>, analog_<n>, rotation_<n> (kept, not interpreted)
    marker_channel             -> marker

The timestamp channel becomes ``SampleBatch.t``; the package-number channel is
dropped. Samples whose timestamp goes backwards are dropped (``counters.drops``)
so every batch is non-decreasing; inf becomes NaN (missing).

Muse S Athena optics. BrainFlow (``muse_athena.cpp``) exposes up to 16 optical
channels in the ancillary preset with no wavelength labels. Their order is the
one OpenMuse decoded from the device's packets (``OPTICS_LO_NIR, RO_NIR, LO_IR,
RO_IR, LI_NIR, RI_NIR, LI_IR, RI_IR, LO_RED, RO_RED, LO_AMB, RO_AMB, LI_RED,
RI_RED, LI_AMB, RI_AMB``), where L/R is the left/right side, O/I the outer/inner
optode, NIR = 730 nm, IR = 850 nm, RED = 660 nm (the Muse S Athena spec sheet)
and AMB the ambient (LED off) reading. We name them ``fnirs_left_outer_730``
(``<source>`` = side, ``<detector>`` = outer/inner optode) and the ambient ones
``optical_amb_left_outer``. With fewer optics (other_info presets p1035, p1045,
p1046, p4129 stream 4 channels; p1034, p1043, p1044 stream 8) BrainFlow fills
the first 4 or 8 slots: 8 follow the order above, 4 are the inner NIR/IR pair
(OpenMuse); presets without optics (p20 ... p61) expose no optical channel.
Source-detector distances are NOT published by InteraXon: we assume 3.0 cm for
the outer and 1.0 cm for the inner optode (a typical long and short channel);
override them with ``fnirs_distance_cm`` in the pairing record. The mapping
and distances travel in ``SampleBatch.meta["fnirs"]`` and as
``meta["distance_cm"]`` (channel -> cm) for the features.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import importlib.resources
import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgetwin.clock as twin_clock
from edgetwin.errors import (
    DeviceNotFound,
    DriverMissing,
    MalformedInput,
    PairingRefused,
    SourceError,
    TransientSourceError,
    UsageError,
)
from edgetwin.sources.base import Source
from edgetwin.types import CHANNEL_UNITS, FloatArray, SampleBatch

_LOGGER = logging.getLogger(__name__)

BUILD_SCRIPT = "scripts/build-brainflow-arm.sh"
PRESET_NAMES: dict[int, str] = {0: "default", 1: "auxiliary", 2: "ancillary"}
# BrainFlowInputParams fields a pairing record may set (BrainFlow 5.x).
PARAM_FIELDS: dict[str, type] = {
    "serial_port": str,
    "mac_address": str,
    "ip_address": str,
    "ip_address_aux": str,
    "ip_address_anc": str,
    "ip_port": int,
    "ip_port_aux": int,
    "ip_port_anc": int,
    "ip_protocol": int,
    "other_info": str,
    "timeout": int,
    "serial_number": str,
    "file": str,
    "file_aux": str,
    "file_anc": str,
    "master_board": int,
}
_PLAYBACK_FILE_PARAMS = {0: "file", 1: "file_aux", 2: "file_anc"}

# USB ids of the dongles BrainFlow boards talk through (vid, pid) -> (what, boards).
DONGLES: dict[tuple[int, int], tuple[str, tuple[str, ...]]] = {
    (0x0403, 0x6015): (
        "FTDI FT231X: the OpenBCI USB dongle",
        ("CYTON_BOARD", "CYTON_DAISY_BOARD"),
    ),
    (0x2458, 0x0001): (
        "Bluegiga BLED112 BLE dongle",
        (
            "GANGLION_BOARD",
            "MUSE_S_BLED_BOARD",
            "MUSE_2_BLED_BOARD",
            "MUSE_2016_BLED_BOARD",
            "BRAINBIT_BLED_BOARD",
        ),
    ),
}

# Muse S Athena optics, BrainFlow slot order (see module docstring): (side, optode, light).
_ATHENA_OPTICS: tuple[tuple[str, str, str], ...] = (
    ("left", "outer", "730"),
    ("right", "outer", "730"),
    ("left", "outer", "850"),
    ("right", "outer", "850"),
    ("left", "inner", "730"),
    ("right", "inner", "730"),
    ("left", "inner", "850"),
    ("right", "inner", "850"),
    ("left", "outer", "660"),
    ("right", "outer", "660"),
    ("left", "outer", "amb"),
    ("right", "outer", "amb"),
    ("left", "inner", "660"),
    ("right", "inner", "660"),
    ("left", "inner", "amb"),
    ("right", "inner", "amb"),
)
_ATHENA_OPTICS4 = (4, 5, 6, 7)  # the 4-channel presets stream the inner NIR/IR pair
_ATHENA_PRESET_OPTICS: dict[str, int] = {
    **dict.fromkeys(("p20", "p21", "p50", "p51", "p60", "p61"), 0),
    **dict.fromkeys(("p1035", "p1045", "p1046", "p4129"), 4),
    **dict.fromkeys(("p1034", "p1043", "p1044"), 8),
    **dict.fromkeys(("p1041", "p1042"), 16),
}
ATHENA_DEFAULT_PRESET = "p1041"  # BrainFlow's default for the Athena: all optics
ATHENA_DISTANCE_CM: dict[str, float] = {"outer": 3.0, "inner": 1.0}  # assumed, see docstring
# Classic Muse ancillary preset: BrainFlow's three PPG photodiode readings, in this order.
_CLASSIC_MUSE_PPG = ("ppg_amb", "ppg_ir", "ppg_red")
_CLASSIC_MUSE = ("MUSE_2_BOARD", "MUSE_S_BOARD", "MUSE_2_BLED_BOARD", "MUSE_S_BLED_BOARD")

# BrainFlow exit code -> (our error class, what it means for a person).
_EXIT_MEANINGS: dict[int, tuple[type[SourceError], str]] = {
    1: (TransientSourceError, "the port is already open (another program holds it)"),
    2: (DeviceNotFound, "unable to open the port: no such serial device or BLE adapter"),
    3: (DeviceNotFound, "serial port error: the device could not be configured"),
    4: (TransientSourceError, "writing to the board failed"),
    5: (TransientSourceError, "the board sent an unexpected message"),
    6: (TransientSourceError, "the board's first message was wrong"),
    7: (DeviceNotFound, "the board is not ready: it did not answer (off, out of range, "
        "or not paired)"),
    8: (TransientSourceError, "a stream is already running on this board"),
    9: (PairingRefused, "invalid buffer size"),
    10: (TransientSourceError, "BrainFlow's reading thread failed"),
    11: (TransientSourceError, "BrainFlow's reading thread is not running"),
    12: (TransientSourceError, "the board's buffer is empty"),
    13: (PairingRefused, "invalid arguments for this board (check the pairing's parameters)"),
    14: (PairingRefused, "this board is not supported by the installed BrainFlow"),
    15: (TransientSourceError, "the board session does not exist (not prepared)"),
    16: (TransientSourceError, "another session already uses this board with these "
         "parameters"),
    17: (TransientSourceError, "general BrainFlow error"),
    18: (TransientSourceError, "timed out waiting for the board"),
    19: (PairingRefused, "BrainFlow's board description is missing"),
    20: (PairingRefused, "BrainFlow's board description lacks this field"),
}


@dataclass(frozen=True)
class PresetLayout:
    """How to turn one preset's BrainFlow rows into a ``SampleBatch``."""

    preset: int
    preset_name: str
    rows: tuple[int, ...]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    timestamp_row: int
    num_rows: int
    sampling_rate: float
    meta: dict[str, Any] = field(default_factory=dict)

    def batch(self, stream: str, data: FloatArray, last_t: float = -math.inf) -> tuple[
        SampleBatch, int
    ]:
        """A batch from BrainFlow's (rows x samples) array; also how many samples were dropped.

        Samples whose timestamp is earlier than one already seen (``last_t`` or
        an earlier sample of ``data``) are dropped; inf becomes NaN.
        """
        # copies, both: a row of ``data`` is a view that would keep all of BrainFlow's rows
        # alive for as long as the batch waits in a queue or a store's buffer
        t = np.array(data[self.timestamp_row], dtype=np.float64)
        values = np.ascontiguousarray(data[list(self.rows)].T, dtype=np.float64)
        values[~np.isfinite(values)] = np.nan
        keep = _monotonic_mask(t, last_t)
        dropped = int(t.shape[0] - np.count_nonzero(keep))
        if dropped:
            t, values = t[keep], values[keep]
        return (
            SampleBatch(stream, self.channels, self.units, t, values,
                        dict(self.meta)),
            dropped,
        )


def brainflow_available() -> str | None:
    """None when BrainFlow's native library loads on this machine, else the reason why not."""
    try:
        _load_native()
    except DriverMissing as exc:
        return str(exc)
    return None


def resolve_board(board: int | str) -> int:
    """A ``BoardIds`` value from a name (``SYNTHETIC_BOARD``, any case) or an id."""
    board_ids = _board_ids_enum()
    if isinstance(board, int) and not isinstance(board, bool):
        try:
            return int(board_ids(board))
        except ValueError:
            raise UsageError(f"no BrainFlow board has id {board}",
                             hint="see 'edgetwin pair add brainflow --help'") from None
    text = str(board).strip()
    with contextlib.suppress(ValueError):
        return resolve_board(int(text))
    key = text.upper()
    names = [b.name for b in board_ids if b.name != "NO_BOARD"]
    if key in names:
        return int(board_ids[key])
    if key + "_BOARD" in names:
        return int(board_ids[key + "_BOARD"])
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see BrainFlow's BoardIds"
    raise UsageError(f"unknown BrainFlow board {text!r}", hint=hint)


def board_name(board_id: int) -> str:
    """The ``BoardIds`` name of an id."""
    return str(_board_ids_enum()(board_id).name)


def board_presets(board_id: int) -> list[int]:
    """The presets a board (or, for playback/streaming, its master) offers, default first."""
    shim = _load_native().BoardShim
    return sorted(int(p) for p in shim.get_board_presets(board_id))


def preset_layout(
    board_id: int,
    preset: int,
    *,
    other_info: str = "",
    fnirs_distance_cm: Mapping[str, float] | None = None,
) -> PresetLayout:
    """The channel layout of one preset of a (master) board, from BrainFlow's description."""
    shim = _load_native().BoardShim
    descr: dict[str, Any] = shim.get_board_descr(board_id, preset)
    name = board_name(board_id)
    used: set[int] = {int(descr["timestamp_channel"])}
    if "package_num_channel" in descr:
        used.add(int(descr["package_num_channel"]))
    rows: list[int] = []
    channels: list[str] = []
    units: list[str] = []
    meta: dict[str, Any] = {"board": name, "preset": PRESET_NAMES.get(preset, str(preset)),
                            "sampling_rate_hz": float(descr["sampling_rate"])}

    def add(row: int, channel: str, unit: str) -> None:
        if row in used:
            return
        used.add(row)
        rows.append(row)
        channels.append(channel)
        units.append(unit)

    def rows_of(key: str) -> list[int]:
        value = descr.get(key)
        if value is None:
            return []
        return [int(value)] if isinstance(value, int) else [int(r) for r in value]

    eeg = rows_of("eeg_channels")
    sites = [s.strip().lower() for s in str(descr.get("eeg_names", "")).split(",") if s.strip()]
    for i, row in enumerate(eeg):
        site = sites[i] if len(sites) == len(eeg) else str(i + 1)
        add(row, f"eeg_{site}", CHANNEL_UNITS["eeg"])
    for kind in ("ecg", "emg", "eog"):
        for i, row in enumerate(rows_of(f"{kind}_channels")):
            add(row, f"{kind}_{i + 1}", "uV")
    for kind, prefix, unit in (
        ("accel", "accel", CHANNEL_UNITS["accel"]),
        ("gyro", "gyro", CHANNEL_UNITS["gyro"]),
        ("magnetometer", "mag", "a.u."),
    ):
        axis_rows = rows_of(f"{kind}_channels")
        for i, row in enumerate(axis_rows):
            suffix = "xyz"[i] if len(axis_rows) == 3 else str(i + 1)
            add(row, f"{prefix}_{suffix}", unit)
    optical = rows_of("optical_channels")
    if name in _CLASSIC_MUSE and len(optical) == len(_CLASSIC_MUSE_PPG):
        # BrainFlow lists these rows as both ppg and optical: the three PPG characteristics
        # (muse-lsl labels them ambient, infrared, red).
        for row, channel in zip(optical, _CLASSIC_MUSE_PPG, strict=True):
            add(row, channel, CHANNEL_UNITS["ppg"])
    for kind, prefix, unit in (
        ("ppg", "ppg", CHANNEL_UNITS["ppg"]),
        ("eda", "eda", CHANNEL_UNITS["eda"]),
        ("temperature", "temp", CHANNEL_UNITS["temp"]),
    ):
        kind_rows = rows_of(f"{kind}_channels")
        for i, row in enumerate(kind_rows):
            add(row, prefix if len(kind_rows) == 1 else f"{prefix}_{i + 1}", unit)
    if optical:
        if name == "MUSE_S_ATHENA_BOARD":
            fnirs = _athena_optics(optical, other_info, fnirs_distance_cm, add)
            meta["fnirs"] = fnirs
            meta["distance_cm"] = fnirs["distance_cm"]
        else:
            for i, row in enumerate(optical):
                add(row, f"optical_{i + 1}", "a.u.")
    for row in rows_of("battery_channel"):
        add(row, "battery", CHANNEL_UNITS["battery"])
    for i, row in enumerate(rows_of("resistance_channels")):
        add(row, f"resistance_{i + 1}", "ohm")
    for kind in ("other", "analog", "rotation"):
        for i, row in enumerate(rows_of(f"{kind}_channels")):
            add(row, f"{kind}_{i + 1}", "")
    for row in rows_of("marker_channel"):
        add(row, "marker", CHANNEL_UNITS["marker"])
    return PresetLayout(
        preset=preset,
        preset_name=PRESET_NAMES.get(preset, str(preset)),
        rows=tuple(rows),
        channels=tuple(channels),
        units=tuple(units),
        timestamp_row=int(descr["timestamp_channel"]),
        num_rows=int(descr["num_rows"]),
        sampling_rate=float(descr["sampling_rate"]),
        meta=meta,
    )


def translate_error(exc: BaseException, what: str) -> SourceError:
    """Our error for a ``BrainFlowError`` raised while doing ``what``, by its exit code."""
    code = int(getattr(exc, "exit_code", 17))
    cls, meaning = _EXIT_MEANINGS.get(code, (TransientSourceError, "unknown BrainFlow error"))
    name = _exit_code_name(code)
    return cls(f"{what}: {meaning} (BrainFlow {name}, code {code})")


def build_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validated ``BrainFlowInputParams`` fields; ``master_board`` may be a board name."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None or value == "":
            continue
        kind = PARAM_FIELDS.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, list(PARAM_FIELDS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(PARAM_FIELDS)}"
            raise UsageError(f"unknown BrainFlow parameter {key!r}", hint=hint)
        if key == "master_board":
            out[key] = resolve_board(value)
        elif kind is int:
            try:
                out[key] = int(value)
            except (TypeError, ValueError):
                raise UsageError(f"BrainFlow parameter {key} must be an integer, not {value!r}",
                                 ) from None
        else:
            out[key] = str(value)
    return out


def scan_dongles(ports: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """Serial ports whose USB id is a dongle BrainFlow boards use (see ``DONGLES``)."""
    if ports is None:
        from serial.tools import list_ports

        ports = list_ports.comports()
    found: list[dict[str, Any]] = []
    for port in ports:
        vid, pid = getattr(port, "vid", None), getattr(port, "pid", None)
        if vid is None or pid is None:
            continue
        known = DONGLES.get((int(vid), int(pid)))
        if known is None:
            continue
        what, boards = known
        found.append({
            "kind": "brainflow",
            "port": str(port.device),
            "usb_id": f"{int(vid):04x}:{int(pid):04x}",
            "description": what,
            "boards": list(boards),
            "serial_number": getattr(port, "serial_number", None),
        })
    return sorted(found, key=lambda d: str(d["port"]))


# Reads of the board's buffer per second. Every read is a batch through the hub, the writer
# and the features; 5/s keeps a batch within 0.2 s of the sensor (BrainFlow buffers between
# reads) at a third of the per-batch work of 15/s.
POLL_HZ = 5.0


class BrainFlowSource(Source):
    """A BrainFlow board; one ``SampleBatch`` stream per preset, polled off the event loop."""

    kind = "brainflow"

    def __init__(
        self,
        name: str,
        board: int | str,
        params: Mapping[str, Any] | None = None,
        *,
        poll_hz: float = POLL_HZ,
        watchdog_s: float = 10.0,
        queue_batches: int = 64,
        buffer_size: int = 450_000,
        fnirs_distance_cm: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(name)
        self.board_id = resolve_board(board)
        self.params = build_params(params or {})
        self.poll_hz = poll_hz
        self.watchdog_s = watchdog_s
        self.queue_batches = queue_batches
        self.buffer_size = buffer_size
        self.fnirs_distance_cm = dict(fnirs_distance_cm or {})
        self._board: Any = None
        self._layouts: dict[int, PresetLayout] = {}
        self._last_t: dict[int, float] = {}
        self._lock = threading.Lock()  # serialises BoardShim calls: poller vs. close
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any], **kwargs: Any) -> BrainFlowSource:
        """A source from a ``pair add brainflow`` record: ``{"kind", "board", "params"}``."""
        if record.get("kind", "brainflow") != "brainflow" or "board" not in record:
            raise UsageError(f"pairing {name!r} is not a BrainFlow record",
                             hint="re-add it with 'edgetwin pair add brainflow --board NAME'")
        distances = record.get("fnirs_distance_cm")
        if distances is not None:
            kwargs.setdefault("fnirs_distance_cm", dict(distances))
        return cls(name, record["board"], dict(record.get("params") or {}), **kwargs)

    @property
    def master_board_id(self) -> int:
        """The board whose data format this board streams (itself unless playback/streaming)."""
        if board_name(self.board_id) in ("PLAYBACK_FILE_BOARD", "STREAMING_BOARD"):
            master = self.params.get("master_board")
            if master is None:
                raise UsageError(
                    f"source {self.name!r}: {board_name(self.board_id)} needs a master board",
                    hint="pair it with --master-board NAME (the board that recorded the data)",
                )
            return int(master)
        return self.board_id

    def describe(self) -> dict[str, Any]:
        return {
            "board": board_name(self.board_id),
            "streams": [f"{self.name}.{lay.preset_name}" for lay in self._layouts.values()],
        }

    async def connect(self) -> None:
        """Prepare the session and start streaming; on failure nothing stays open."""
        _load_native()
        if self._board is not None:
            return
        await asyncio.to_thread(self._open)

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Yield batches from every preset until the board fails or goes silent."""
        if self._board is None:
            raise TransientSourceError(f"source {self.name!r} is not connected",
                                       hint="call connect() first")
        loop = asyncio.get_running_loop()
        # At most queue_batches items in flight: the poller takes a slot before handing an
        # item over and waits while none is free (BrainFlow buffers meanwhile); this side
        # gives the slot back as it takes the item. One call_soon_threadsafe per item, no
        # task on the loop and no round trip back to the poller.
        queue: asyncio.Queue[SampleBatch | SourceError] = asyncio.Queue()
        slots = threading.BoundedSemaphore(self.queue_batches)
        self._stop = stop = threading.Event()
        thread = threading.Thread(
            target=self._poll_loop, args=(_Handover(loop, queue, slots, stop),),
            name=f"brainflow:{self.name}", daemon=True,
        )
        self._thread = thread
        thread.start()
        try:
            while True:
                item = await queue.get()
                slots.release()
                if isinstance(item, SourceError):
                    stop.set()
                    await asyncio.to_thread(self._shutdown)
                    raise item
                self.counters.count(item)
                yield item
        finally:
            stop.set()

    async def close(self) -> None:
        """Stop polling and release the BrainFlow session; safe to call twice."""
        self._stop.set()
        await asyncio.to_thread(self._shutdown)

    # -- worker thread ---------------------------------------------------------

    def _open(self) -> None:
        bf = _load_native()
        master = self.master_board_id
        presets = board_presets(master)
        if board_name(self.board_id) == "PLAYBACK_FILE_BOARD":
            presets = [p for p in presets if self.params.get(_PLAYBACK_FILE_PARAMS.get(p, ""))]
            if not presets:
                raise UsageError(f"source {self.name!r}: playback needs a file",
                                 hint="pair it with --file PATH")
        other_info = str(self.params.get("other_info", ""))
        layouts = {
            p: preset_layout(master, p, other_info=other_info,
                             fnirs_distance_cm=self.fnirs_distance_cm)
            for p in presets
        }
        if board_name(self.board_id) == "PLAYBACK_FILE_BOARD":
            for p, layout in layouts.items():
                check_playback_file(Path(self.params[_PLAYBACK_FILE_PARAMS[p]]), layout)
        input_params = bf.BrainFlowInputParams()
        for key, value in self.params.items():
            setattr(input_params, key, value)
        what = f"BrainFlow board {board_name(self.board_id)} for source {self.name!r}"
        try:
            board = bf.BoardShim(self.board_id, input_params)
        except bf.BrainFlowError as exc:
            raise translate_error(exc, what) from exc
        try:
            board.prepare_session()
            board.start_stream(self.buffer_size)
        except bf.BrainFlowError as exc:
            _release_quietly(board)
            raise translate_error(exc, what) from exc
        except BaseException:
            _release_quietly(board)
            raise
        with self._lock:
            self._board = board
            self._layouts = layouts
            self._last_t = dict.fromkeys(layouts, -math.inf)
        _LOGGER.info("BrainFlow %s prepared for %s (presets %s)", board_name(self.board_id),
                     self.name, ", ".join(lay.preset_name for lay in layouts.values()))

    def _poll_loop(self, handover: _Handover) -> None:
        period = 1.0 / self.poll_hz
        last_data = time.monotonic()
        stop = handover.stop
        while not stop.wait(period):
            try:
                batches = self._read_all()
            except SourceError as exc:
                handover.deliver(exc)
                return
            if batches is None:  # released under us by close()
                return
            for batch in batches:
                if not handover.deliver(batch):
                    return
            now = time.monotonic()
            if batches:
                last_data = now
            elif now - last_data > self.watchdog_s:
                handover.deliver(TransientSourceError(
                    f"BrainFlow board {board_name(self.board_id)} of source {self.name!r} "
                    f"sent nothing for {self.watchdog_s:g} s",
                    hint="the session was released; reconnecting prepares it again",
                ))
                return

    def _read_all(self) -> list[SampleBatch] | None:
        bf = _load_native()
        out: list[SampleBatch] = []
        with self._lock:
            board = self._board
            if board is None:
                return None
            for preset, layout in self._layouts.items():
                try:
                    data = board.get_board_data(preset=preset)
                except bf.BrainFlowError as exc:
                    raise translate_error(
                        exc, f"reading {layout.preset_name} of source {self.name!r}") from exc
                if data.shape[1] == 0:
                    continue
                # BrainFlow stamps with the wall clock: carried onto the twin's clock, a step
                # of the host's clock back no longer makes fresh samples look out of order
                row = layout.timestamp_row
                data[row] = twin_clock.CLOCK.from_wall(data[row])
                batch, dropped = layout.batch(f"{self.name}.{layout.preset_name}", data,
                                              self._last_t[preset])
                self.counters.drops += dropped
                if len(batch):
                    self._last_t[preset] = batch.last_t
                    out.append(batch)
        return out

    def _shutdown(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():
                _LOGGER.warning("BrainFlow poller of %s did not stop in time", self.name)
        self._thread = None
        with self._lock:
            board, self._board = self._board, None
        if board is not None:
            _release_quietly(board)
            _LOGGER.info("BrainFlow session of %s released", self.name)


@dataclass(frozen=True)
class _Handover:
    """The poller's way into the loop: a bounded number of items in flight (``slots``)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[SampleBatch | SourceError]
    slots: threading.BoundedSemaphore
    stop: threading.Event

    def deliver(self, item: SampleBatch | SourceError) -> bool:
        """Queue ``item`` on the loop, waiting while every slot is taken; False once stopped
        or the loop is gone (nobody is listening any more)."""
        while not self.slots.acquire(timeout=0.25):
            if self.stop.is_set():
                return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            return False
        return True


def check_playback_file(path: Path, layout: PresetLayout) -> None:
    """Raise unless ``path`` is a BrainFlow file with the preset's row count per line."""
    if not path.is_file():
        raise DeviceNotFound(f"playback file {path} does not exist",
                             hint="check the pairing's --file/--file-aux/--file-anc")
    with path.open("r", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.strip():
                width = len(line.rstrip("\r\n").split("\t"))
                break
        else:
            raise MalformedInput(f"playback file {path} is empty")
    if width != layout.num_rows:
        raise MalformedInput(
            f"playback file of the wrong shape: {path} has {width} columns per line but "
            f"{layout.meta['board']} {layout.preset_name} has {layout.num_rows} rows",
            hint="pick the master board (and preset file) that recorded it",
        )


# -- private helpers -------------------------------------------------------------


@functools.cache
def _load_native() -> Any:
    """BrainFlow's Python modules with their native libraries loaded, or ``DriverMissing``.

    Loading is done once, here. brainflow 5.23 finds its libraries with
    ``importlib.resources.files(<module>)``, which Python 3.11 refuses for a module that is
    not a package, and then falls back to ``pkg_resources`` (~10 MiB resident and ~80 ms to
    import: it indexes every installed distribution). The modules get a ``files`` that
    resolves a module to its package, as Python 3.12 does; the pkg_resources fallback (and
    its deprecation warning, silenced) remains for anything else.
    """
    import types

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*pkg_resources.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pkg_resources")
            from brainflow import board_shim, data_filter, exit_codes

            for module in (board_shim, data_filter):
                _resolve_modules_to_packages(module)
            board_shim.BoardControllerDLL.get_instance()
            data_filter.DataHandlerDLL.get_instance()
    except (ImportError, OSError) as exc:
        import platform

        raise DriverMissing(
            f"BrainFlow's native library is missing for this CPU ({platform.machine()}): "
            f"{type(exc).__name__}: {exc}",
            hint=f"build it on this machine with {BUILD_SCRIPT}; other sources keep running",
        ) from exc
    board_shim.BoardShim.disable_board_logger()
    if _LOGGER.isEnabledFor(logging.DEBUG):
        board_shim.BoardShim.enable_dev_board_logger()
    return types.SimpleNamespace(
        BoardShim=board_shim.BoardShim,
        BoardIds=board_shim.BoardIds,
        BrainFlowInputParams=board_shim.BrainFlowInputParams,
        BrainFlowPresets=board_shim.BrainFlowPresets,
        BrainFlowError=exit_codes.BrainFlowError,
        BrainFlowExitCodes=exit_codes.BrainFlowExitCodes,
        DataFilter=data_filter.DataFilter,
    )


def _resolve_modules_to_packages(module: Any) -> None:
    """Give a brainflow module an ``importlib.resources.files`` that accepts a module name
    (its package's files, as Python >= 3.12 does), so it never falls back to pkg_resources."""
    files = getattr(module, "files", None)
    if files is not importlib.resources.files or sys.version_info >= (3, 12):
        return  # a brainflow that finds its libraries another way, or a Python that can

    def files_of_package(anchor: Any) -> Any:
        if isinstance(anchor, str) and anchor in sys.modules:
            anchor = sys.modules[anchor].__package__ or anchor
        return importlib.resources.files(anchor)

    module.files = files_of_package


def _board_ids_enum() -> Any:
    # BoardIds is a plain enum in board_shim.py; importing it loads no native code.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*pkg_resources.*")
            from brainflow.board_shim import BoardIds
    except ImportError as exc:
        raise DriverMissing(f"BrainFlow is not installed: {exc}",
                            hint="pip install brainflow") from exc
    return BoardIds


def _exit_code_name(code: int) -> str:
    try:
        from brainflow.exit_codes import BrainFlowExitCodes

        return str(BrainFlowExitCodes(code).name)
    except (ImportError, ValueError):
        return "UNKNOWN"


def _release_quietly(board: Any) -> None:
    """Stop and release a BrainFlow session, ignoring 'not prepared' and friends."""
    try:
        from brainflow.exit_codes import BrainFlowError
    except ImportError:  # pragma: no cover - nothing was prepared then
        return
    with contextlib.suppress(BrainFlowError):
        board.stop_stream()
    try:
        board.release_session()
    except BrainFlowError as exc:
        _LOGGER.debug("release_session: %s", exc)


def _monotonic_mask(t: FloatArray, last_t: float) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """True for samples not earlier than every sample before them (and ``last_t``)."""
    if t.shape[0] == 0:
        return np.ones(0, dtype=bool)
    prev_max = np.maximum.accumulate(np.concatenate(([last_t], t[:-1])))
    return np.asarray(t >= prev_max) & np.isfinite(t)


def _athena_optics(
    rows: list[int],
    other_info: str,
    distance_cm: Mapping[str, float] | None,
    add: Any,
) -> dict[str, Any]:
    """Name the Athena's optical rows; return the mapping facts for ``meta['fnirs']``."""
    preset = _muse_preset(other_info)
    count = _ATHENA_PRESET_OPTICS.get(preset, 16)
    slots = _ATHENA_OPTICS4 if count == 4 else tuple(range(min(count, len(rows))))
    distances = {**ATHENA_DISTANCE_CM, **{k: float(v) for k, v in (distance_cm or {}).items()}}
    per_channel: dict[str, float] = {}
    wavelengths: dict[str, float] = {}
    labels: dict[str, str] = {}
    for i, slot in enumerate(slots):
        side, optode, light = _ATHENA_OPTICS[slot]
        if light == "amb":
            channel = f"optical_amb_{side}_{optode}"
        else:
            channel = f"fnirs_{side}_{optode}_{light}"
            per_channel[channel] = distances[optode]
            wavelengths[channel] = float(light)
        add(rows[i], channel, "a.u.")
        labels[channel] = f"OPTICS_{side[0].upper()}{optode[0].upper()}_" + {
            "730": "NIR", "850": "IR", "660": "RED", "amb": "AMB"}[light]
    return {
        "device": "Muse S Athena",
        "muse_preset": preset,
        "optics_channels": count,
        "distance_cm": per_channel,
        "wavelength_nm": wavelengths,
        "openmuse_label": labels,
        "distance_source": "assumed (outer 3.0 cm, inner 1.0 cm) unless the pairing overrides",
    }


def _muse_preset(other_info: str) -> str:
    """The Athena preset named in other_info (``p1035`` or ``preset=p1035;...``)."""
    text = other_info.strip().lower()
    if not text:
        return ATHENA_DEFAULT_PRESET
    if "=" not in text and ";" not in text:
        return text
    for token in text.split(";"):
        key, _, value = token.partition("=")
        if key.strip() == "preset" and value.strip():
            return value.strip()
    return ATHENA_DEFAULT_PRESET
