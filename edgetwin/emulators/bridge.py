"""A firmware-bridge device emulated behind a pseudo-terminal (or TCP), with seeded faults.

``BridgeEmulator`` runs the MicroPython encoder module
(``firmware_bridges/micropython/etbridge.py``) on CPython in a thread, streams
realistic fNIRS (two wavelengths; cardiac pulsation, Mayer waves, a block
task's haemodynamic response through the modified Beer-Lambert law) or PPG,
and answers host commands exactly like the firmware. Faults are seeded:
byte-at-a-time delivery, random chunking, byte loss, bit flips, garbage
between frames, and unplug/replug behind a stable symlink (like udev's
``/dev/serial/by-id``).

Run ``python -m edgetwin.emulators.bridge --help`` for a stand-alone
device (the benchmark runs it in a child process).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import random
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edgetwin.errors import DriverMissing

_REPO = Path(__file__).resolve().parents[2]
_ENCODER_PATH = _REPO / "firmware_bridges" / "micropython" / "etbridge.py"
_MAX_CATCH_UP_ROWS = 2000

# Molar extinction coefficients of haemoglobin, 1/(cm*M), base 10 (Prahl, OMLC tabulation).
_EXTINCTION = {760: (1486.5860, 3843.707), 850: (2526.391, 1798.643)}  # (HbO, HbR)
_DPF = {760: 6.4, 850: 5.8}  # differential pathlength factors of adult forehead


@dataclass(frozen=True)
class Faults:
    """What goes wrong on the wire, seeded by the emulator's seed."""

    byte_at_a_time: bool = False  # one write per byte, with a pause, so reads see fragments
    byte_gap_s: float = 0.0003
    chunk_max: int = 0  # > 0: split each write into random 1..chunk_max byte pieces
    byte_loss: float = 0.0  # per byte
    bit_flip: float = 0.0  # per byte: flip one random bit
    garbage: float = 0.0  # per frame: a burst of random bytes (zeros included) before it
    garbage_max: int = 48
    spare_control: bool = False  # descriptor and ACK frames pass undamaged


@dataclass
class EmulatorStats:
    """Ground truth of what the emulated device sent and broke."""

    boots: int = 0
    frames: int = 0
    rows: int = 0
    damaged_frames: int = 0
    garbage_bursts: int = 0
    bytes_lost: int = 0
    bits_flipped: int = 0
    bytes_unread: int = 0  # dropped because the host was not reading (buffer full)
    commands: int = 0
    describes: int = 0
    bad_commands: int = 0


class BridgeEmulator:
    """An emulated bridge; ``start()`` returns the path (or URL) the host should open."""

    def __init__(
        self,
        seed: int = 0,
        kind: str = "fnirs",
        rate_hz: float = 10.0,
        *,
        channels: int | None = None,
        rows_per_frame: int = 1,
        faults: Faults | None = None,
        drift_ppm: float = 40.0,
        autostart: bool = True,
        transport: str = "pty",
        link_dir: Path | None = None,
        record: bool = False,
        device_id: str | None = None,
    ) -> None:
        if kind not in ("fnirs", "ppg"):
            raise ValueError(f"kind must be 'fnirs' or 'ppg', not {kind!r}")
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport must be 'pty' or 'tcp', not {transport!r}")
        self.seed = seed
        self.kind = kind
        self.rate_mhz = round(rate_hz * 1000)
        self.rows_per_frame = rows_per_frame
        self.faults = faults or Faults()
        self.drift = drift_ppm * 1e-6
        self.autostart = autostart
        self.transport = transport
        self.stats = EmulatorStats()
        self.sent_rows: deque[tuple[int, ...]] | None = deque(maxlen=200_000) if record else None
        self._etb = load_encoder()
        self._rng = random.Random(seed)
        self._device_id = device_id or f"emu-{kind}-{seed:04x}"
        self._channels = _channel_table(kind, channels or (2 if kind == "fnirs" else 1), seed)
        self._gains = [0.7 + 0.6 * random.Random(seed * 7919 + i).random()
                       for i in range(len(self._channels))]
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_dir = link_dir is None
        self._link_dir = link_dir
        self._link: Path | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._tcp_port = 0
        self._plugged = False
        self._streaming = False
        self._reader: Any = None
        self._seq = 0
        self._seq_base = 0
        self._t_base_us = 0
        self._boot_host = 0.0
        self._pending_rows: list[list[int]] = []
        self._pending_first = (0, 0)

    # -- public API ----------------------------------------------------------

    @property
    def channel_names(self) -> list[str]:
        return [c[0] for c in self._channels]

    @property
    def rate_hz(self) -> float:
        return self.rate_mhz / 1000.0

    @property
    def path(self) -> str:
        """The stable path (symlink) or ``socket://`` URL of the device."""
        if self.transport == "tcp":
            return f"socket://127.0.0.1:{self._tcp_port}"
        assert self._link is not None, "start() first"
        return str(self._link)

    @property
    def plugged(self) -> bool:
        return self._plugged

    def start(self) -> str:
        """Plug the device in and start its thread; the path the host should open."""
        if self._link_dir is None:
            self._link_dir = Path(tempfile.mkdtemp(prefix="edgetwin-bridge-"))
        self._link = self._link_dir / f"ttyBRIDGE-{self._device_id}"
        self._plug()
        self._thread = threading.Thread(
            target=self._run, name=f"bridge-emulator-{self._device_id}", daemon=True
        )
        self._thread.start()
        return self.path

    def unplug(self) -> None:
        """Yank the cable: the port closes under the host and the stable path disappears."""
        with self._lock:
            self._unplug_locked()

    def replug(self) -> str:
        """Plug back in: the device reboots (sequence and clock from 0) on a new pty."""
        with self._lock:
            if self._plugged:
                self._unplug_locked()
            self._plug()
        return self.path

    def stop(self) -> None:
        """Stop the thread and remove the pty, the symlink and its directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        with self._lock:
            self._unplug_locked()
        if self._own_dir and self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)

    def __enter__(self) -> BridgeEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def raw_row(self, seq: int) -> list[int]:
        """The integer row the device samples as row ``seq`` since its boot at the current rate."""
        t = seq * 1000.0 / self.rate_mhz
        return [self._value(i, t) for i in range(len(self._channels))]

    def physical_row(self, seq: int) -> list[float]:
        """``raw_row`` in physical units (as the host should report it)."""
        return [raw * c[3] + c[4] for raw, c in zip(self.raw_row(seq), self._channels, strict=True)]

    # -- device behaviour ----------------------------------------------------

    def _device(self) -> Any:
        return self._etb.Device(
            self._device_id, f"edgetwin-emulator-{self.kind}", (1, 0, 0), self.rate_mhz,
            self._channels,
        )

    def _boot(self) -> None:
        self.stats.boots += 1
        self._reader = self._etb.CommandReader()
        self._seq = 0
        self._seq_base = 0
        self._t_base_us = 0
        self._boot_host = time.monotonic()
        self._pending_rows = []
        self._streaming = self.autostart
        # Like the firmware's setup(): a zero to flush the host's half frame, then the descriptor.
        self._send(b"\x00" + self._device().descriptor_frames(self._streaming), control=True)

    def _handle(self, command: tuple[int, int, int]) -> None:
        etb = self._etb
        ftype, token, arg = command
        self.stats.commands += 1
        if ftype == etb.CMD_START:
            if not self._streaming:
                # Like the firmware: sampling resumes now; seq continues without a gap.
                self._t_base_us = self._device_now_us()
                self._seq_base = self._seq
            self._streaming = True
            self._send(etb.ack_frame(token, ftype), control=True)
        elif ftype == etb.CMD_STOP:
            self._streaming = False
            self._pending_rows = []
            self._send(etb.ack_frame(token, ftype), control=True)
        elif ftype == etb.CMD_DESCRIBE:
            self.stats.describes += 1
            self._send(etb.ack_frame(token, ftype), control=True)
            self._send(self._device().descriptor_frames(self._streaming), control=True)
        elif ftype == etb.CMD_SET_RATE:
            if not 100 <= arg <= 1_000_000:  # 0.1 Hz .. 1 kHz
                self._send(etb.ack_frame(token, ftype, etb.ACK_BAD_ARGUMENT), control=True)
                return
            self._t_base_us = self._device_t_us(self._seq)
            self._seq_base = self._seq
            self.rate_mhz = arg
            self._send(etb.ack_frame(token, ftype), control=True)
            self._send(self._device().descriptor_frames(self._streaming), control=True)
        else:
            self._send(etb.ack_frame(token, ftype, etb.ACK_UNKNOWN_COMMAND), control=True)

    def _device_now_us(self) -> int:
        return int((time.monotonic() - self._boot_host) * (1.0 + self.drift) * 1e6)

    def _device_t_us(self, seq: int) -> int:
        return self._t_base_us + (seq - self._seq_base) * 1_000_000_000 // self.rate_mhz

    def _emit_due_rows(self) -> float:
        """Sample every row that is due by now; seconds until the next one."""
        emitted = 0
        if not self._streaming:
            return 0.05
        while True:
            t_dev_us = self._device_t_us(self._seq)
            due = self._boot_host + t_dev_us / 1e6 / (1.0 + self.drift)
            now = time.monotonic()
            if due > now:
                return due - now
            row = self.raw_row(self._seq)
            if self.sent_rows is not None:
                self.sent_rows.append(tuple(row))
            if not self._pending_rows:
                self._pending_first = (self._seq, t_dev_us)
            self._pending_rows.append(row)
            self._seq += 1
            emitted += 1
            if len(self._pending_rows) >= self.rows_per_frame:
                seq0, t0 = self._pending_first
                frame = self._device().samples_frame(seq0, t0, self._pending_rows)
                self.stats.rows += len(self._pending_rows)
                self._pending_rows = []
                self._send(frame, control=False)
            if emitted >= _MAX_CATCH_UP_ROWS:
                return 0.0

    # -- signals -------------------------------------------------------------

    def _value(self, index: int, t: float) -> int:
        _name, _unit, _fmt, _scale, _offset, wavelength, distance = self._channels[index]
        noise = _hash_noise(self.seed, index, round(t * 1e6))
        if self.kind == "ppg":
            pulse = _cardiac_wave(t)
            resp = math.sin(2 * math.pi * 0.25 * t)
            level = 520_000 * (1 + 0.006 * resp) * (1 - 0.015 * pulse) + 150 * noise
            return round(level)
        d_hbo, d_hbr = _haemodynamics(t)
        eps_hbo, eps_hbr = _EXTINCTION[wavelength]
        d_cm = distance / 100.0
        d_od = d_cm * _DPF[wavelength] * (eps_hbo * d_hbo + eps_hbr * d_hbr) * 1e-6
        base = (900_000 if wavelength == 760 else 1_400_000) * self._gains[index]
        if distance < 150:
            base *= 4.0  # a short-separation channel sees far more light
        intensity = base * 10 ** (-d_od) * (1 + 0.0004 * noise)
        return int(max(-0x800000, min(0x7FFFFF, round(intensity))))

    # -- link ----------------------------------------------------------------

    def _plug(self) -> None:
        if self.transport == "pty":
            master, slave = os.openpty()
            # Raw until the host configures it: no echo, no CR/LF rewriting of binary frames.
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            assert self._link is not None
            tmp = self._link.with_name(self._link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(os.ttyname(slave))
            tmp.replace(self._link)  # atomic re-point, as udev does
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self._tcp_port))
            listener.listen(1)
            listener.setblocking(False)
            self._tcp_port = listener.getsockname()[1]
            self._listener = listener
        self._plugged = True
        self._boot()

    def _unplug_locked(self) -> None:
        if not self._plugged:
            return
        self._plugged = False
        self._streaming = False
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        for sock in (self._client, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._client = self._listener = None

    def _out_fd(self) -> int | None:
        if self._master is not None:
            return self._master
        if self._client is not None:
            return self._client.fileno()
        return None

    def _send(self, frame: bytes, *, control: bool) -> None:
        faults = self.faults
        data = frame
        if not (control and faults.spare_control):
            data = self._damage(frame)
        self.stats.frames += not control
        fd = self._out_fd()
        if fd is None:
            self.stats.bytes_unread += len(data)
            return
        if faults.byte_at_a_time:
            for i in range(len(data)):
                if not self._write(fd, data[i : i + 1]):
                    self.stats.bytes_unread += len(data) - i - 1
                    return
                time.sleep(faults.byte_gap_s)
        elif faults.chunk_max > 0:
            pos = 0
            while pos < len(data):
                n = self._rng.randint(1, faults.chunk_max)
                if not self._write(fd, data[pos : pos + n]):
                    self.stats.bytes_unread += max(0, len(data) - pos - n)
                    return
                pos += n
                time.sleep(0)
        else:
            self._write(fd, data)

    def _damage(self, frame: bytes) -> bytes:
        faults = self.faults
        rng = self._rng
        out = bytearray()
        if faults.garbage and rng.random() < faults.garbage:
            self.stats.garbage_bursts += 1
            out += rng.randbytes(rng.randint(1, faults.garbage_max))
        if not (faults.byte_loss or faults.bit_flip):
            out += frame
            return bytes(out)
        damaged = False
        for byte in frame:
            b = byte
            if faults.byte_loss and rng.random() < faults.byte_loss:
                self.stats.bytes_lost += 1
                damaged = True
                continue
            if faults.bit_flip and rng.random() < faults.bit_flip:
                b ^= 1 << rng.randrange(8)
                self.stats.bits_flipped += 1
                damaged = True
            out.append(b)
        self.stats.damaged_frames += damaged
        return bytes(out)

    def _write(self, fd: int, data: bytes) -> bool:
        """Write without blocking; a full buffer (host not reading) drops the rest."""
        try:
            n = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            self.stats.bytes_unread += len(data)
            return False
        except OSError:
            return False
        if n < len(data):
            self.stats.bytes_unread += len(data) - n
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                plugged = self._plugged
                wait = self._emit_due_rows() if plugged else 0.05
                rlist: list[Any] = []
                if self._master is not None:
                    rlist.append(self._master)
                if self._client is not None:
                    rlist.append(self._client)
                elif self._listener is not None:
                    rlist.append(self._listener)
            try:
                ready, _, _ = select.select(rlist, [], [], min(max(wait, 0.0), 0.05))
            except (OSError, ValueError):  # an fd closed by unplug() meanwhile
                continue
            if not ready:
                continue
            with self._lock:
                self._service(ready)

    def _service(self, ready: list[Any]) -> None:
        if self._listener is not None and self._listener in ready and self._client is None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setblocking(False)
            self._client = client
            return
        fd = self._out_fd()
        if fd is None or not any(r is self._client or r == fd for r in ready):
            return
        try:
            data = os.read(fd, 512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if self._client is not None:  # the host closed the TCP connection
                with contextlib.suppress(OSError):
                    self._client.close()
                self._client = None
            return
        before = self._reader.bad
        for command in self._reader.feed(data):
            self._handle(command)
        self.stats.bad_commands += self._reader.bad - before


def load_encoder() -> ModuleType:
    """The MicroPython encoder module, loaded from the source tree onto CPython."""
    if not _ENCODER_PATH.is_file():
        raise DriverMissing(
            f"bridge emulator: {_ENCODER_PATH} not found",
            hint="the emulator runs from an edgetwin source checkout",
        )
    spec = importlib.util.spec_from_file_location("etbridge", _ENCODER_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- private -------------------------------------------------------------------


def _channel_table(kind: str, n: int, seed: int) -> list[tuple[Any, ...]]:
    """``etbridge.Device`` channel tuples: fNIRS pairs at 760/850 nm, or one PPG channel."""
    i24 = 3
    if kind == "ppg":
        return [("ppg", "a.u.", i24, 1.0, 0.0, 0, 0)] + [
            (f"ppg_{k}", "a.u.", i24, 1.0, 0.0, 0, 0) for k in range(1, n)
        ]
    if n < 2 or n % 2:
        raise ValueError(f"fNIRS channels come in wavelength pairs; {n} is not an even count >= 2")
    out: list[tuple[Any, ...]] = []
    for pair in range(n // 2):
        source, detector = pair // 4 + 1, pair % 4 + 1
        # Every eighth pair is a short-separation channel (8 mm) for scalp-signal regression.
        distance = 80 if pair % 8 == 7 else 300  # 0.1 mm units
        for nm in (760, 850):
            out.append((f"fnirs_s{source}_d{detector}_{nm}", "a.u.", i24, 1.0, 0.0, nm, distance))
    return out


def _cardiac_wave(t: float) -> float:
    """A pulse-like waveform in about -1..1 with respiratory sinus arrhythmia and a notch."""
    phase = 2 * math.pi * 1.15 * t + 0.8 * math.sin(2 * math.pi * 0.25 * t)
    return (
        math.sin(phase) + 0.45 * math.sin(2 * phase - 0.9) + 0.18 * math.sin(3 * phase - 1.7)
    ) / 1.4


def _haemodynamics(t: float) -> tuple[float, float]:
    """(dHbO, dHbR) in µM: cardiac and Mayer oscillations plus a 20 s-on / 20 s-off task."""
    cycle = t % 40.0
    # A smooth haemodynamic response: rises over ~6 s after onset, decays after the block.
    if cycle < 20.0:
        task = 1 - math.exp(-cycle / 3.0)
    else:
        task = (1 - math.exp(-20.0 / 3.0)) * math.exp(-(cycle - 20.0) / 4.0)
    mayer = math.sin(2 * math.pi * 0.1 * t)
    cardiac = _cardiac_wave(t)
    d_hbo = 0.9 * task + 0.25 * mayer + 0.3 * cardiac
    d_hbr = -0.3 * task - 0.08 * mayer + 0.05 * cardiac
    return d_hbo, d_hbr


def _hash_noise(seed: int, channel: int, t_us: int) -> float:
    """Deterministic noise in -1..1 from (seed, channel, time), cheap enough per sample."""
    x = (seed * 0x9E3779B1 + channel * 0x85EBCA77 + t_us * 0xC2B2AE3D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x / 0x7FFFFFFF - 1.0


def main(argv: list[str] | None = None) -> None:
    """Stand-alone emulator: prints the path, runs until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="fnirs", choices=("fnirs", "ppg"))
    parser.add_argument("--rate", type=float, default=10.0, help="sample rate, Hz")
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--rows-per-frame", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transport", default="pty", choices=("pty", "tcp"))
    args = parser.parse_args(argv)
    emulator = BridgeEmulator(
        args.seed, args.kind, args.rate, channels=args.channels,
        rows_per_frame=args.rows_per_frame, transport=args.transport,
    )
    path = emulator.start()
    sys.stdout.write(path + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
