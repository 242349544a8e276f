"""Wire formats of serial particulate sensors: Plantower PMS5003, Nova SDS011, Sensirion SPS30.

Pure (no I/O), shared by the source and the emulator:

* PMS5003: 32-byte frames ``42 4D``, length (28, big-endian), 13 big-endian
  data words, a 16-bit checksum that is the sum of the 30 bytes before it.
* SDS011: 10-byte data frames ``AA C0 pm25 pm10 id CS AB`` (PM in 0.1 µg/m³,
  little-endian; CS = low byte of the sum of bytes 2..7), 10-byte replies
  ``AA C5 ...`` and 19-byte host commands ``AA B4 cmd d3..d14 id CS AB``.
* SPS30: SHDLC frames ``7E ... 7E`` with byte stuffing and the checksum
  ``~sum & 0xFF``; the host side goes through Sensirion's driver, these
  helpers build and parse the device side (the emulator) only.

``FrameScanner`` cuts frames out of a byte stream: it buffers partial frames,
resyncs on the next header after garbage and counts bad checksums.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SENSORS = ("pms5003", "sds011", "sps30")
BAUD = {"pms5003": 9600, "sds011": 9600, "sps30": 115200}

# What each sensor can physically report (datasheets: PMS5003 "maximum range >= 1000 µg/m³",
# SDS011 0.0-999.9 µg/m³, SPS30 0-1000 µg/m³). A value beyond it is a broken frame that
# passed its checksum or a broken sensor; it is masked (NaN), counted, never stored as truth.
PM_RANGE = {"pms5003": (0.0, 1000.0), "sds011": (0.0, 999.9), "sps30": (0.0, 1000.0)}

PM_CHANNELS = ("pm1_0", "pm2_5", "pm10")
PMS_COUNT_CHANNELS = ("count_0_3", "count_0_5", "count_1_0", "count_2_5", "count_5_0", "count_10")
SPS_EXTRA_CHANNELS = ("pm4_0", "nc0_5", "nc1_0", "nc2_5", "nc4_0", "nc10", "typical_size")

# -- PMS5003 -----------------------------------------------------------------------------------

PMS_HEADER = b"\x42\x4d"
PMS_FRAME_LEN = 32
PMS_BODY_LEN = 28  # 13 data words + checksum word


def pms_encode(words: list[int] | tuple[int, ...]) -> bytes:
    """A PMS5003 frame carrying 13 data words (the last is reserved, usually 0)."""
    if len(words) != 13:
        raise ValueError(f"a PMS5003 frame holds 13 data words, not {len(words)}")
    head = PMS_HEADER + struct.pack(">H13H", PMS_BODY_LEN, *words)
    return head + struct.pack(">H", sum(head) & 0xFFFF)


def pms_decode(frame: bytes) -> tuple[int, ...]:
    """The 13 data words of a checksum-verified 32-byte frame."""
    return struct.unpack_from(">13H", frame, 4)


def _pms_check(frame: bytes) -> bool:
    return (sum(frame[:30]) & 0xFFFF) == (frame[30] << 8 | frame[31])


# -- SDS011 ------------------------------------------------------------------------------------

SDS_HEAD = 0xAA
SDS_TAIL = 0xAB
SDS_DATA = 0xC0
SDS_REPLY = 0xC5
SDS_CMD = 0xB4
SDS_FRAME_LEN = 10
SDS_CMD_LEN = 19
# command ids (byte 2 of a 0xB4 command, byte 2 of a 0xC5 reply)
SDS_REPORT_MODE = 2
SDS_QUERY = 4
SDS_SLEEP_WORK = 6
SDS_FIRMWARE = 7
SDS_WORKING_PERIOD = 8


def sds_command(cmd: int, data: bytes = b"", device_id: int = 0xFFFF) -> bytes:
    """A 19-byte host command (``device_id`` 0xFFFF addresses every sensor)."""
    body = bytes([cmd]) + data.ljust(12, b"\x00")[:12] + struct.pack("<H", device_id)
    return bytes([SDS_HEAD, SDS_CMD]) + body + bytes([sum(body) & 0xFF, SDS_TAIL])


def sds_set_working_period(minutes: int, device_id: int = 0xFFFF) -> bytes:
    """Command: work 30 s then sleep until ``minutes`` have passed (0 = continuous)."""
    if not 0 <= minutes <= 30:
        raise ValueError(f"SDS011 working period is 0..30 minutes, not {minutes}")
    return sds_command(SDS_WORKING_PERIOD, bytes([1, minutes]), device_id)


def sds_frame(kind: int, payload: bytes) -> bytes:
    """A 10-byte device frame (data 0xC0 or reply 0xC5) around 6 payload bytes."""
    return bytes([SDS_HEAD, kind]) + payload + bytes([sum(payload) & 0xFF, SDS_TAIL])


def sds_data(pm25_x10: int, pm10_x10: int, device_id: int) -> bytes:
    """A data frame; PM values in tenths of µg/m³."""
    return sds_frame(SDS_DATA, struct.pack("<HHH", pm25_x10, pm10_x10, device_id))


def sds_parse_command(frame: bytes) -> tuple[int, bytes, int] | None:
    """``(cmd, data12, device_id)`` of a 19-byte host command, or None if it is malformed."""
    if len(frame) != SDS_CMD_LEN or frame[0] != SDS_HEAD or frame[1] != SDS_CMD:
        return None
    if frame[18] != SDS_TAIL or (sum(frame[2:17]) & 0xFF) != frame[17]:
        return None
    return frame[2], bytes(frame[3:15]), struct.unpack_from("<H", frame, 15)[0]


def _sds_check(frame: bytes) -> bool:
    return frame[9] == SDS_TAIL and (sum(frame[2:8]) & 0xFF) == frame[8]


# -- stream scanner ----------------------------------------------------------------------------


@dataclass
class ScanStats:
    """What a scanner saw: good frames, bad checksums, bytes skipped while resyncing."""

    frames: int = 0
    bad_checksum: int = 0
    skipped_bytes: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)

    def bad(self, reason: str) -> None:
        self.bad_checksum += reason == "checksum"
        self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + 1


class FrameScanner:
    """Cuts PMS5003 or SDS011 frames out of a byte stream (partial frames wait for more bytes)."""

    def __init__(self, sensor: str) -> None:
        if sensor not in ("pms5003", "sds011"):
            raise ValueError(f"no byte-stream scanner for {sensor!r}")
        self.sensor = sensor
        self.stats = ScanStats()
        self._buf = bytearray()
        self._header = PMS_HEADER if sensor == "pms5003" else bytes([SDS_HEAD])
        self._length = PMS_FRAME_LEN if sensor == "pms5003" else SDS_FRAME_LEN

    def feed(self, data: bytes) -> list[bytes]:
        """Complete, checksum-verified frames in ``data`` (plus what was buffered before)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(self._header, pos)
            if start < 0:
                # keep a possible first header byte at the very end
                keep = n - 1 if self.sensor == "pms5003" and n and buf[-1] == 0x42 else n
                self.stats.skipped_bytes += keep - pos
                pos = keep
                break
            self.stats.skipped_bytes += start - pos
            if n - start < self._length:
                pos = start
                break
            frame = bytes(buf[start : start + self._length])
            reason = self._check(frame)
            if reason is None:
                self.stats.frames += 1
                out.append(frame)
                pos = start + self._length
            else:
                if reason != "resync":
                    self.stats.bad(reason)
                pos = start + 1  # the header may have been data: look again one byte on
        del buf[:pos]
        if len(buf) > 4096:  # never grows without bound on a stream of noise
            self.stats.skipped_bytes += len(buf) - self._length
            del buf[: len(buf) - self._length]
        return out

    def _check(self, frame: bytes) -> str | None:
        if self.sensor == "pms5003":
            if (frame[2] << 8 | frame[3]) != PMS_BODY_LEN:
                return "resync"  # not a frame start (or a model with another length)
            return None if _pms_check(frame) else "checksum"
        if frame[1] not in (SDS_DATA, SDS_REPLY) or frame[9] != SDS_TAIL:
            return "resync"
        return None if _sds_check(frame) else "checksum"


# -- SHDLC (SPS30), device side ------------------------------------------------------------------

SHDLC_FLAG = 0x7E
_STUFF = {0x7E: b"\x7d\x5e", 0x7D: b"\x7d\x5d", 0x11: b"\x7d\x31", 0x13: b"\x7d\x33"}
SPS_START = 0x00
SPS_STOP = 0x01
SPS_READ = 0x03
SPS_SLEEP = 0x10
SPS_WAKE = 0x11
SPS_INFO = 0xD0
SPS_VERSION = 0xD1
SPS_RESET = 0xD3
SPS_PRODUCT_TYPE = "00080000"


def shdlc_checksum(content: bytes) -> int:
    """SHDLC checksum: the inverted low byte of the sum."""
    return ~sum(content) & 0xFF


def shdlc_stuff(content: bytes) -> bytes:
    """Frame ``content`` (checksum appended here): start flag, stuffed bytes, stop flag."""
    raw = content + bytes([shdlc_checksum(content)])
    return b"\x7e" + b"".join(_STUFF.get(b, bytes([b])) for b in raw) + b"\x7e"


def shdlc_unstuff(frame: bytes) -> bytes | None:
    """The content of one ``7E ... 7E`` frame without its checksum, or None if it is bad."""
    if len(frame) < 2 or frame[0] != SHDLC_FLAG or frame[-1] != SHDLC_FLAG:
        return None
    out = bytearray()
    escape = False
    for b in frame[1:-1]:
        if escape:
            out.append(b ^ 0x20)
            escape = False
        elif b == 0x7D:
            escape = True
        else:
            out.append(b)
    if escape or len(out) < 2 or shdlc_checksum(bytes(out[:-1])) != out[-1]:
        return None
    return bytes(out[:-1])


def shdlc_miso(address: int, cmd: int, state: int, data: bytes) -> bytes:
    """A device reply frame."""
    return shdlc_stuff(bytes([address, cmd, state, len(data)]) + data)


def sps_values(values: list[float] | tuple[float, ...]) -> bytes:
    """The 40-byte payload of Read Measured Values (10 big-endian IEEE754 floats)."""
    return struct.pack(">10f", *values)
