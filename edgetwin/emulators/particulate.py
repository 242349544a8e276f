"""Particulate sensors (PMS5003, SDS011, SPS30) emulated behind a pseudo-terminal, with faults.

``ParticulateEmulator`` speaks each sensor's real wire protocol on a pty (a
stable symlink stands in for udev's ``/dev/serial/by-id``): the PMS5003
streams 32-byte frames by itself, the SDS011 honours its sleep/work and
working-period commands (its laser sleeps between readings; ``minute_s``
compresses the device's minute for tests), the SPS30 answers SHDLC requests.
Values are realistic (a slowly drifting indoor PM2.5 with cooking peaks; PM1
and PM10 in proportion). Faults are seeded: corrupted checksums, partial
frames, garbage bytes, a sensor that stops answering, unplug and replug, and
``inject`` forces one frame's values (e.g. an impossible PM2.5 of 60000).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import select
import shutil
import struct
import tempfile
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import edgetwin.sources.particulate_protocol as pp


@dataclass(frozen=True)
class AirFaults:
    """What goes wrong on the wire, per device frame, seeded by the emulator's seed."""

    bad_checksum: float = 0.0  # the checksum byte is off by one
    partial: float = 0.0  # the frame arrives in two writes with a pause between
    truncated: float = 0.0  # only the first part of the frame is ever sent
    garbage: float = 0.0  # a burst of random bytes before the frame
    garbage_max: int = 40


@dataclass
class AirStats:
    """What the emulated sensor did (tests compare it with what the host saw)."""

    frames: int = 0
    bad_checksums: int = 0
    partials: int = 0
    truncated: int = 0
    garbage_bursts: int = 0
    commands: list[tuple[int, bytes]] = field(default_factory=list)
    working_period: int | None = None
    events: list[str] = field(default_factory=list)  # "work", "sleep", "report"


class ParticulateEmulator:
    """An emulated particulate sensor; ``start()`` returns the path the host should open."""

    def __init__(
        self,
        sensor: str,
        seed: int = 0,
        *,
        interval_s: float = 1.0,
        minute_s: float = 60.0,
        faults: AirFaults | None = None,
        link_dir: Path | None = None,
        device_id: int | None = None,
    ) -> None:
        if sensor not in pp.SENSORS:
            raise ValueError(f"sensor must be one of {pp.SENSORS}, not {sensor!r}")
        self.sensor = sensor
        self.seed = seed
        self.interval_s = interval_s
        self.minute_s = minute_s
        self.faults = faults or AirFaults()
        self.stats = AirStats()
        self.device_id = device_id if device_id is not None else 0x1000 + seed
        # each reading as sent (physical values in the host's channel order), good or corrupted
        self.sent: deque[tuple[tuple[float, ...], bool]] = deque(maxlen=10_000)
        self.muted = False
        self._rng = random.Random(seed)
        self._phase = random.Random(seed * 31 + 7).random() * 1000.0
        self._injected: deque[tuple[float, ...]] = deque()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_dir = link_dir is None
        self._link_dir = link_dir
        self._link: Path | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._plugged = False
        self._rx = bytearray()
        self._boot()

    # -- public API ------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The stable path (symlink) of the device."""
        assert self._link is not None, "start() first"
        return str(self._link)

    @property
    def plugged(self) -> bool:
        return self._plugged

    def start(self) -> str:
        """Plug the sensor in and start its thread; the path the host should open."""
        if self._link_dir is None:
            self._link_dir = Path(tempfile.mkdtemp(prefix="edgetwin-air-"))
        self._link = self._link_dir / f"ttyAIR-{self.sensor}-{self.seed}"
        with self._lock:
            self._plug()
        self._thread = threading.Thread(
            target=self._run, name=f"air-emulator-{self.sensor}-{self.seed}", daemon=True
        )
        self._thread.start()
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

    def unplug(self) -> None:
        """Yank the cable: the port closes under the host and the stable path disappears."""
        with self._lock:
            self._unplug_locked()

    def replug(self) -> str:
        """Plug back in on a new pty (the sensor powers up afresh)."""
        with self._lock:
            self._unplug_locked()
            self._plug()
        return self.path

    def stop_answering(self) -> None:
        """The sensor hangs: it sends nothing and answers nothing (the port stays open)."""
        self.muted = True

    def resume(self) -> None:
        self.muted = False

    def inject(self, values: tuple[float, ...]) -> None:
        """Send these physical values (host channel order) in the next reading."""
        self._injected.append(tuple(values))

    def __enter__(self) -> ParticulateEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- values ----------------------------------------------------------------------------

    def _pm25(self, t: float) -> float:
        """Indoor PM2.5: a slow drift around 8 µg/m³ and a cooking peak every ~15 minutes."""
        x = t + self._phase
        base = 8.0 + 3.0 * math.sin(x / 600.0) + 1.5 * math.sin(x / 97.0)
        peak = 40.0 * math.exp(-(((x % 900.0) - 300.0) / 60.0) ** 2)
        return max(0.5, base + peak + self._rng.gauss(0.0, 0.6))

    def _reading(self) -> tuple[float, ...]:
        """The next reading in the host's channel order, quantised as the wire carries it."""
        if self._injected:
            return self._injected.popleft()
        pm25 = self._pm25(time.monotonic())
        pm1, pm10 = 0.68 * pm25, 1.35 * pm25 + self._rng.uniform(0.0, 2.0)
        if self.sensor == "pms5003":
            counts = [pm25 * k for k in (180.0, 52.0, 9.0, 1.1, 0.3, 0.1)]
            return tuple(float(round(v)) for v in (pm1, pm25, pm10, *counts))
        if self.sensor == "sds011":
            return (round(pm25 * 10) / 10.0, round(pm10 * 10) / 10.0)
        pm4 = 0.5 * (pm25 + pm10)
        nc = (pm25 * 6.1, pm25 * 7.2, pm25 * 7.3, pm25 * 7.31, pm25 * 7.32)
        size = 0.55 + self._rng.uniform(-0.05, 0.05)
        vals = (pm1, pm25, pm10, pm4, *nc, size)
        return tuple(struct.unpack(">10f", struct.pack(">10f", *vals)))  # float32 on the wire

    def _encode(self, v: tuple[float, ...]) -> bytes:
        if self.sensor == "pms5003":
            w = [int(x) & 0xFFFF for x in v]
            cf1 = w[:3]  # indoors the "CF=1" and atmospheric values agree below 30 µg/m³
            return pp.pms_encode([*cf1, w[0], w[1], w[2], *w[3:9], 0])
        if self.sensor == "sds011":
            return pp.sds_data(
                round(v[0] * 10) & 0xFFFF, round(v[1] * 10) & 0xFFFF, self.device_id
            )
        wire = (v[0], v[1], v[3], v[2], *v[4:10])  # mass 1.0 2.5 4.0 10, numbers, size
        return pp.sps_values(wire)

    # -- device behaviour ------------------------------------------------------------------

    def _boot(self) -> None:
        self._awake = True
        self._measuring = self.sensor != "sps30"
        self._period_min = 0  # SDS011 working period; 0 = continuous
        self._cycle_start = time.monotonic()
        self._reported_this_cycle = False
        self._next_t = time.monotonic() + self.interval_s
        self._sps_fresh: tuple[float, ...] | None = None
        self._rx.clear()

    def _tick(self) -> float:
        """Emit what is due; seconds until the next thing is due."""
        now = time.monotonic()
        if self.sensor == "sds011" and self._period_min:
            return self._tick_duty_cycle(now)
        if now < self._next_t:
            return self._next_t - now
        self._next_t = max(self._next_t + self.interval_s, now)
        if not self._measuring or not self._awake:
            return self.interval_s
        reading = self._reading()
        if self.sensor == "sps30":
            self._sps_fresh = reading  # polled by the host
        else:
            self._send_reading(reading)
        return self.interval_s

    def _tick_duty_cycle(self, now: float) -> float:
        """SDS011 working period: laser on for half a minute, one report, asleep till the end."""
        cycle = self._period_min * self.minute_s
        work = 0.5 * self.minute_s
        if now - self._cycle_start >= cycle:
            self._cycle_start = now
            self._reported_this_cycle = False
            self._set_awake(True)
        if not self._reported_this_cycle and now - self._cycle_start >= work:
            self._reported_this_cycle = True
            self._send_reading(self._reading())
            self._set_awake(False)
        return 0.02

    def _set_awake(self, awake: bool) -> None:
        if awake != self._awake:
            self._awake = awake
            self.stats.events.append("work" if awake else "sleep")

    def _send_reading(self, reading: tuple[float, ...]) -> None:
        if self.muted:
            return
        frame = self._encode(reading)
        if self.sensor == "sds011":
            self.stats.events.append("report")
        self._send_frame(frame, reading)

    def _send_frame(self, frame: bytes, reading: tuple[float, ...] | None) -> None:
        f = self.faults
        rng = self._rng
        data = bytearray(frame)
        good = True
        if f.bad_checksum and rng.random() < f.bad_checksum:
            # the checksum sits at the end (PMS5003, SHDLC) or before the tail (SDS011)
            pos = -2 if self.sensor == "sds011" else -1
            if self.sensor == "sps30":
                pos = -2  # the byte before the stop flag
                data[pos] = (data[pos] + 1) & 0xFF
                if data[pos] in (0x7E, 0x7D, 0x11, 0x13):
                    data[pos] = (data[pos] + 4) & 0xFF  # stay a plain (unstuffed) byte
            else:
                data[pos] = (data[pos] + 1) & 0xFF
            self.stats.bad_checksums += 1
            good = False
        if f.garbage and rng.random() < f.garbage:
            self.stats.garbage_bursts += 1
            junk = rng.randbytes(rng.randint(1, f.garbage_max))
            self._write(junk)
        if reading is not None:
            self.sent.append((reading, good))
        self.stats.frames += 1
        if f.truncated and rng.random() < f.truncated:
            self.stats.truncated += 1
            if reading is not None:
                self.sent[-1] = (reading, False)
            self._write(bytes(data[: rng.randint(1, len(data) - 1)]))
            return
        if f.partial and rng.random() < f.partial:
            self.stats.partials += 1
            cut = rng.randint(1, len(data) - 1)
            self._write(bytes(data[:cut]))
            time.sleep(0.03)
            self._write(bytes(data[cut:]))
            return
        self._write(bytes(data))

    def _on_bytes(self, data: bytes) -> None:
        self._rx += data
        if self.sensor == "sds011":
            self._sds_commands()
        elif self.sensor == "sps30":
            self._shdlc_requests()
        else:
            self._rx.clear()  # PMS5003 commands (passive mode) are not emulated; ignored
        if len(self._rx) > 1024:
            del self._rx[:-64]

    def _sds_commands(self) -> None:
        rx = self._rx
        while True:
            start = rx.find(bytes([pp.SDS_HEAD, pp.SDS_CMD]))
            if start < 0:
                del rx[: max(0, len(rx) - 1)]
                return
            if len(rx) - start < pp.SDS_CMD_LEN:
                del rx[:start]
                return
            parsed = pp.sds_parse_command(bytes(rx[start : start + pp.SDS_CMD_LEN]))
            if parsed is None:
                del rx[: start + 1]
                continue
            del rx[: start + pp.SDS_CMD_LEN]
            cmd, data, dev = parsed
            if dev not in (0xFFFF, self.device_id):
                continue
            self.stats.commands.append((cmd, data))
            if self.muted:
                continue
            self._sds_answer(cmd, data)

    def _sds_answer(self, cmd: int, data: bytes) -> None:
        ident = struct.pack("<H", self.device_id)
        if cmd == pp.SDS_QUERY:
            if self._awake:
                self._send_reading(self._reading())
            return
        if cmd == pp.SDS_FIRMWARE:
            self._send_frame(pp.sds_frame(pp.SDS_REPLY, bytes([7, 26, 3, 11]) + ident), None)
            return
        if cmd == pp.SDS_WORKING_PERIOD:
            if data[0] == 1:
                self._period_min = min(30, data[1])
                self.stats.working_period = self._period_min
                self._cycle_start = time.monotonic()
                self._reported_this_cycle = False
            reply = bytes([8, data[0], self._period_min, 0]) + ident
        elif cmd == pp.SDS_SLEEP_WORK:
            if data[0] == 1:
                self._set_awake(bool(data[1]))
            reply = bytes([6, data[0], int(self._awake), 0]) + ident
        elif cmd == pp.SDS_REPORT_MODE:
            reply = bytes([2, data[0], 0, 0]) + ident
        else:
            return
        self._send_frame(pp.sds_frame(pp.SDS_REPLY, reply), None)

    def _shdlc_requests(self) -> None:
        rx = self._rx
        while True:
            start = rx.find(b"\x7e")
            if start < 0:
                rx.clear()
                return
            end = rx.find(b"\x7e", start + 1)
            if end < 0:
                del rx[:start]
                return
            if end == start + 1:  # two flags in a row: the second one starts the frame
                del rx[: start + 1]
                continue
            content = pp.shdlc_unstuff(bytes(rx[start : end + 1]))
            del rx[: end + 1]
            if content is None or len(content) < 3 or content[2] != len(content) - 3:
                continue
            address, cmd, data = content[0], content[1], content[3:]
            self.stats.commands.append((cmd, data))
            if self.muted:
                continue
            self._shdlc_answer(address, cmd, data)

    def _shdlc_answer(self, address: int, cmd: int, data: bytes) -> None:
        out = b""
        state = 0
        if cmd == pp.SPS_INFO:
            texts = {0: pp.SPS_PRODUCT_TYPE, 3: f"EMU{self.device_id:013X}"}
            text = texts.get(data[0] if data else -1)
            if text is None:
                state = 0x03  # illegal command parameter
            else:
                out = text.encode() + b"\x00"
        elif cmd == pp.SPS_START:
            self._measuring = True
            self._next_t = time.monotonic() + self.interval_s
        elif cmd == pp.SPS_STOP:
            self._measuring = False
            self._sps_fresh = None
        elif cmd == pp.SPS_READ:
            fresh, self._sps_fresh = self._sps_fresh, None
            if fresh is not None:
                out = self._encode(fresh)
                frame = pp.shdlc_miso(address, cmd, state, out)
                self._send_frame(frame, fresh)
                return
        elif cmd == pp.SPS_VERSION:
            out = bytes([2, 2, 0, 7, 0, 2, 0])
        elif cmd in (pp.SPS_SLEEP, pp.SPS_WAKE, pp.SPS_RESET):
            self._awake = cmd != pp.SPS_SLEEP
        else:
            state = 0x02  # unknown command
        self._send_frame(pp.shdlc_miso(address, cmd, state, out), None)

    # -- link ------------------------------------------------------------------------------

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # raw until the host configures it
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        assert self._link is not None
        tmp = self._link.with_name(self._link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self._link)  # atomic re-point, as udev does
        self._plugged = True
        self._boot()

    def _unplug_locked(self) -> None:
        if not self._plugged:
            return
        self._plugged = False
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def _write(self, data: bytes) -> None:
        fd = self._master
        if fd is None:
            return
        with contextlib.suppress(OSError):  # a full buffer (host not reading) drops the rest
            os.write(fd, data)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                wait = self._tick() if self._plugged else 0.05
                fd = self._master
            if fd is None:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], min(max(wait, 0.0), 0.05))
            except (OSError, ValueError):  # closed by unplug() meanwhile
                continue
            if not ready:
                continue
            with self._lock:
                if self._master != fd:
                    continue
                try:
                    data = os.read(fd, 512)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    self._on_bytes(data)
                else:
                    time.sleep(0.01)


def main(argv: list[str] | None = None) -> None:
    """Run one emulated sensor until interrupted (prints its path)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sensor", choices=pp.SENSORS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--minute-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    emu = ParticulateEmulator(
        args.sensor, args.seed, interval_s=args.interval, minute_s=args.minute_s
    )
    print(emu.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
