"""The firmware-bridge wire protocol (``firmware_bridges/PROTOCOL.md``), pure Python.

Encodes and decodes version-1 frames: ``COBS(version | type | body | crc16le) 0x00``
with CRC-16/CCITT-FALSE. Standard library only (no pyserial, no numpy), so the
fuzzers, the aarch64 smoke test and the emulator can use it alone.

``StreamDecoder`` turns an arbitrary byte stream (split anywhere, with garbage,
lost or flipped bytes) into frames with a bounded buffer, counting every bad
frame by reason. ``DescriptorAssembler`` collects one ``DeviceFrame`` and its
``ChannelFrame``\\ s into a ``Descriptor``.
"""

from __future__ import annotations

import binascii
import enum
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgetwin.errors import MalformedInput

PROTOCOL_VERSION = 1
# Largest raw frame (version .. CRC): one SAMPLES frame of 64 int32 channels x 3 rows fits.
MAX_FRAME = 1024
# COBS adds one byte per started 254-byte run; the delimiter is not counted.
MAX_ENCODED = MAX_FRAME + (MAX_FRAME + 253) // 254
MAX_CHANNELS = 64
MAX_ID_LEN = 32
MAX_NAME_LEN = 32
MAX_UNIT_LEN = 16
HEADER_LEN = 2
CRC_LEN = 2
SAMPLES_FIXED_LEN = 4 + 8 + 1  # seq u32, t_us u64, n_rows u8

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_I16 = struct.Struct("<h")
_DEVICE_FIXED = struct.Struct("<BBBBIB")  # fw major, minor, patch, flags, rate_mhz, n_channels
_CHANNEL_FIXED = struct.Struct("<BBffHH")  # index, format, scale, offset, wavelength, distance
_SAMPLES_FIXED = struct.Struct("<IQB")
_ACK = struct.Struct("<BBB")
_FLAG_STREAMING = 0x01


class FrameType(enum.IntEnum):
    """The type byte; host-to-device commands have the top bit set."""

    DEVICE = 0x01
    CHANNEL = 0x02
    SAMPLES = 0x03
    ACK = 0x04
    CMD_START = 0x81
    CMD_STOP = 0x82
    CMD_SET_RATE = 0x83
    CMD_DESCRIBE = 0x84


class SampleFormat(enum.IntEnum):
    """Packed little-endian two's-complement integer; the value is its width in bytes."""

    I8 = 1
    I16 = 2
    I24 = 3
    I32 = 4


class AckStatus(enum.IntEnum):
    OK = 0
    UNKNOWN_COMMAND = 1
    BAD_ARGUMENT = 2
    NOT_READY = 3


class BadFrame(MalformedInput):
    """A frame that breaks the protocol; ``reason`` is one of ``REASONS``."""

    REASONS = ("cobs", "crc", "length", "version", "type", "field")

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"bad bridge frame ({reason}): {message}")
        self.reason = reason


# -- frames ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceFrame:
    """Who the device is and how it samples; followed by ``n_channels`` CHANNEL frames."""

    device_id: str
    model: str
    firmware: tuple[int, int, int]
    rate_mhz: int
    n_channels: int
    streaming: bool = False

    @property
    def rate_hz(self) -> float:
        return self.rate_mhz / 1000.0


@dataclass(frozen=True, slots=True)
class ChannelFrame:
    """One channel: ``physical = raw * scale + offset`` in ``unit``."""

    index: int
    name: str
    unit: str
    fmt: SampleFormat
    scale: float
    offset: float = 0.0
    wavelength_nm: int = 0  # 0: not optical
    distance_01mm: int = 0  # source-detector distance in 0.1 mm; 0: not applicable

    @property
    def distance_cm(self) -> float:
        return self.distance_01mm / 100.0


@dataclass(frozen=True, slots=True)
class SamplesFrame:
    """``n_rows`` rows starting at row number ``seq`` and device time ``t_us``."""

    seq: int
    t_us: int
    n_rows: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AckFrame:
    token: int
    command: int
    status: AckStatus


@dataclass(frozen=True, slots=True)
class CommandFrame:
    """A host-to-device command; ``rate_mhz`` only for ``CMD_SET_RATE``."""

    type: FrameType
    token: int
    rate_mhz: int = 0


Frame = DeviceFrame | ChannelFrame | SamplesFrame | AckFrame | CommandFrame


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A complete device description: the DEVICE frame and its channels in index order."""

    device: DeviceFrame
    channels: tuple[ChannelFrame, ...]

    @property
    def rate_hz(self) -> float:
        return self.device.rate_hz

    @property
    def row_bytes(self) -> int:
        return sum(int(c.fmt) for c in self.channels)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(c.unit for c in self.channels)

    def max_rows_per_frame(self) -> int:
        """How many rows fit one SAMPLES frame under ``MAX_FRAME``."""
        room = MAX_FRAME - HEADER_LEN - CRC_LEN - SAMPLES_FIXED_LEN
        return max(0, min(255, room // max(1, self.row_bytes)))


# -- CRC and COBS ------------------------------------------------------------


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    # binascii.crc_hqx is exactly this polynomial, unreflected, with a caller-chosen init.
    return binascii.crc_hqx(data, crc)


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 byte."""
    out = bytearray()
    raw = bytes(data)
    start = 0
    n = len(raw)
    while True:
        # A run is at most 254 data bytes; it ends at a zero (consumed) or at 254 bytes (not).
        end = raw.find(0, start, start + 254)
        if end < 0:
            end = min(start + 254, n)
            out.append(end - start + 1)
            out += raw[start:end]
            if end >= n:
                break
            start = end
            continue
        out.append(end - start + 1)
        out += raw[start:end]
        start = end + 1
    return bytes(out)


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Undo :func:`cobs_encode`; raise ``BadFrame('cobs')`` on a malformed block."""
    raw = bytes(data)
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        code = raw[i]
        if code == 0:
            raise BadFrame("cobs", f"zero byte inside a frame at offset {i}")
        end = i + code
        if end > n:
            raise BadFrame("cobs", f"block at offset {i} runs {end - n} bytes past the frame end")
        block = raw[i + 1 : end]
        if 0 in block:
            raise BadFrame("cobs", f"zero byte inside a frame at offset {i + 1 + block.index(0)}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# -- encoding ----------------------------------------------------------------


def encode_frame(frame_type: int, body: bytes | bytearray = b"") -> bytes:
    """The wire bytes of one frame, delimiter included."""
    raw = bytearray((PROTOCOL_VERSION, frame_type))
    raw += body
    if len(raw) + CRC_LEN > MAX_FRAME:
        raise ValueError(f"frame of {len(raw) + CRC_LEN} bytes exceeds MAX_FRAME={MAX_FRAME}")
    raw += struct.pack("<H", crc16(raw))
    return cobs_encode(raw) + b"\x00"


def encode_device(device: DeviceFrame) -> bytes:
    ident = device.device_id.encode("ascii")
    model = device.model.encode("ascii")
    body = _DEVICE_FIXED.pack(
        *device.firmware,
        _FLAG_STREAMING if device.streaming else 0,
        device.rate_mhz,
        device.n_channels,
    )
    body += bytes((len(ident),)) + ident + bytes((len(model),)) + model
    return encode_frame(FrameType.DEVICE, body)


def encode_channel(channel: ChannelFrame) -> bytes:
    name = channel.name.encode("ascii")
    unit = channel.unit.encode("utf-8")
    body = _CHANNEL_FIXED.pack(
        channel.index,
        int(channel.fmt),
        channel.scale,
        channel.offset,
        channel.wavelength_nm,
        channel.distance_01mm,
    )
    body += bytes((len(name),)) + name + bytes((len(unit),)) + unit
    return encode_frame(FrameType.CHANNEL, body)


def encode_descriptor(descriptor: Descriptor) -> bytes:
    """The DEVICE frame followed by every CHANNEL frame."""
    out = bytearray(encode_device(descriptor.device))
    for channel in descriptor.channels:
        out += encode_channel(channel)
    return bytes(out)


def pack_rows(descriptor: Descriptor, rows: Sequence[Sequence[int]]) -> bytes:
    """Pack integer rows into a SAMPLES payload; raise ``ValueError`` if one does not fit."""
    out = bytearray()
    fmts = [int(c.fmt) for c in descriptor.channels]
    for row in rows:
        if len(row) != len(fmts):
            raise ValueError(f"row has {len(row)} values for {len(fmts)} channels")
        for value, width in zip(row, fmts, strict=True):
            try:
                out += int(value).to_bytes(width, "little", signed=True)
            except OverflowError as exc:
                raise ValueError(f"{value} does not fit a {8 * width}-bit sample") from exc
    return bytes(out)


def encode_samples(
    descriptor: Descriptor, seq: int, t_us: int, rows: Sequence[Sequence[int]]
) -> bytes:
    """One SAMPLES frame; ``seq`` is the first row's number, ``t_us`` its device time."""
    if not 1 <= len(rows) <= 255:
        raise ValueError(f"a SAMPLES frame holds 1..255 rows, not {len(rows)}")
    body = _SAMPLES_FIXED.pack(seq & 0xFFFFFFFF, t_us, len(rows)) + pack_rows(descriptor, rows)
    return encode_frame(FrameType.SAMPLES, body)


def encode_ack(token: int, command: int, status: int = AckStatus.OK) -> bytes:
    return encode_frame(FrameType.ACK, _ACK.pack(token, command, status))


def encode_command(frame_type: FrameType, token: int, rate_mhz: int = 0) -> bytes:
    """A host-to-device command frame."""
    body = bytes((token & 0xFF,))
    if frame_type == FrameType.CMD_SET_RATE:
        body += struct.pack("<I", rate_mhz)
    return encode_frame(frame_type, body)


# -- decoding ----------------------------------------------------------------


def parse_frame(raw: bytes | bytearray | memoryview) -> Frame:
    """Check one de-COBSed frame (header, body, CRC) and return it typed."""
    data = bytes(raw)
    if len(data) < HEADER_LEN + CRC_LEN:
        raise BadFrame("length", f"{len(data)} bytes is shorter than a header and CRC")
    if len(data) > MAX_FRAME:
        raise BadFrame("length", f"{len(data)} bytes exceeds MAX_FRAME={MAX_FRAME}")
    (want,) = struct.unpack_from("<H", data, len(data) - CRC_LEN)
    got = crc16(memoryview(data)[: len(data) - CRC_LEN])
    if got != want:
        raise BadFrame("crc", f"CRC {got:04x} != {want:04x}")
    if data[0] != PROTOCOL_VERSION:
        raise BadFrame(
            "version", f"protocol version {data[0]}, this host speaks {PROTOCOL_VERSION}"
        )
    body = data[HEADER_LEN : len(data) - CRC_LEN]
    kind = data[1]
    if kind == FrameType.SAMPLES:
        return _parse_samples(body)
    if kind == FrameType.DEVICE:
        return _parse_device(body)
    if kind == FrameType.CHANNEL:
        return _parse_channel(body)
    if kind == FrameType.ACK:
        return _parse_ack(body)
    if kind in (FrameType.CMD_START, FrameType.CMD_STOP, FrameType.CMD_DESCRIBE):
        _expect_len(body, 1, "command")
        return CommandFrame(FrameType(kind), body[0])
    if kind == FrameType.CMD_SET_RATE:
        _expect_len(body, 5, "set-rate command")
        (rate,) = struct.unpack_from("<I", body, 1)
        return CommandFrame(FrameType.CMD_SET_RATE, body[0], rate)
    raise BadFrame("type", f"unknown frame type 0x{kind:02x}")


def decode_wire(wire: bytes) -> Frame:
    """Decode exactly one frame given its wire bytes (the trailing 0x00 optional)."""
    if wire.endswith(b"\x00"):
        wire = wire[:-1]
    return parse_frame(cobs_decode(wire))


def unpack_rows(descriptor: Descriptor, frame: SamplesFrame) -> list[tuple[int, ...]]:
    """The integer rows of a SAMPLES frame; ``BadFrame('length')`` if they do not fit."""
    check_samples_length(descriptor, frame)
    fmts = [int(c.fmt) for c in descriptor.channels]
    data = frame.data
    rows: list[tuple[int, ...]] = []
    pos = 0
    for _ in range(frame.n_rows):
        row = []
        for width in fmts:
            row.append(int.from_bytes(data[pos : pos + width], "little", signed=True))
            pos += width
        rows.append(tuple(row))
    return rows


def check_samples_length(descriptor: Descriptor, frame: SamplesFrame) -> None:
    """Raise ``BadFrame('length')`` unless the payload is exactly ``n_rows`` rows."""
    want = frame.n_rows * descriptor.row_bytes
    if len(frame.data) != want:
        raise BadFrame(
            "length",
            f"SAMPLES frame seq {frame.seq} carries {len(frame.data)} bytes; "
            f"{frame.n_rows} rows of {descriptor.row_bytes} bytes need {want}",
        )


@dataclass
class DecoderStats:
    """What a :class:`StreamDecoder` has seen; ``bad_frames`` = sum of ``bad_by_reason``."""

    bytes: int = 0
    frames: int = 0
    bad_frames: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)

    def bad(self, reason: str) -> None:
        self.bad_frames += 1
        self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + 1


class StreamDecoder:
    """Bytes in, frames out; resynchronises on every 0x00 and never buffers past ``MAX_ENCODED``.

    Garbage, a lost delimiter or a flipped bit costs the frames it touches and
    each such chunk counts once in ``stats.bad_frames``; empty chunks (runs of
    0x00, which senders use to flush a half-sent frame) are not counted.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._dropping = False
        self.stats = DecoderStats()

    def reset(self, *, mid_stream: bool = False) -> None:
        """Forget a half-received frame; ``mid_stream``: skip, uncounted, to the next 0x00.

        A host that opens a port while the device is already sending joins in the
        middle of a frame; that fragment is not the device's fault.
        """
        self._pending.clear()
        self._dropping = mid_stream

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume ``data``; return the good frames it completed, in order."""
        out: list[Frame] = []
        self.stats.bytes += len(data)
        chunks = bytes(data).split(b"\x00")
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            if self._dropping:
                if i == last:
                    return out  # still inside the oversize frame: drop until a delimiter
                self._dropping = False
                continue
            if i == last:
                self._append(chunk)
                return out
            if self._pending:
                self._pending += chunk
                encoded = bytes(self._pending)
                self._pending.clear()
            else:
                encoded = chunk
            if not encoded:
                continue
            if len(encoded) > MAX_ENCODED:
                self.stats.bad("length")
                continue
            try:
                frame = parse_frame(cobs_decode(encoded))
            except BadFrame as exc:
                self.stats.bad(exc.reason)
                continue
            self.stats.frames += 1
            out.append(frame)
        return out

    def _append(self, chunk: bytes) -> None:
        if len(self._pending) + len(chunk) > MAX_ENCODED:
            # Too long to be a frame: count it once, then skip to the next delimiter.
            self._pending.clear()
            self._dropping = True
            self.stats.bad("length")
            return
        self._pending += chunk


class DescriptorAssembler:
    """Collects a DEVICE frame and its CHANNEL frames into a ``Descriptor``."""

    def __init__(self) -> None:
        self._device: DeviceFrame | None = None
        self._channels: dict[int, ChannelFrame] = {}

    @property
    def pending(self) -> bool:
        return self._device is not None

    def feed(self, frame: DeviceFrame | ChannelFrame) -> Descriptor | None:
        """Take one frame; a ``Descriptor`` once every channel of the last DEVICE frame arrived."""
        if isinstance(frame, DeviceFrame):
            self._device = frame
            self._channels = {}
            return None
        device = self._device
        if device is None:
            return None  # channel of a description whose DEVICE frame we missed
        if frame.index >= device.n_channels:
            raise BadFrame(
                "field", f"channel index {frame.index} >= n_channels {device.n_channels}"
            )
        self._channels[frame.index] = frame
        if len(self._channels) < device.n_channels:
            return None
        channels = tuple(self._channels[i] for i in range(device.n_channels))
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            self._device = None
            raise BadFrame("field", f"duplicate channel names in {names}")
        self._device = None
        self._channels = {}
        return Descriptor(device, channels)


def build_descriptor(device: DeviceFrame, channels: Iterable[ChannelFrame]) -> Descriptor:
    """A ``Descriptor`` from parts, checked like the decoder checks frames off the wire."""
    assembler = DescriptorAssembler()
    assembler.feed(device)
    result: Descriptor | None = None
    for channel in channels:
        result = assembler.feed(decode_channel_checked(channel))
    if result is None:
        raise ValueError(f"descriptor of {device.device_id!r} is missing channels")
    return result


def decode_channel_checked(channel: ChannelFrame) -> ChannelFrame:
    """Round-trip a channel through its wire form, so local values obey the same checks."""
    frame = decode_wire(encode_channel(channel))
    assert isinstance(frame, ChannelFrame)
    return frame


# -- private -----------------------------------------------------------------


def _expect_len(body: bytes, n: int, what: str) -> None:
    if len(body) != n:
        raise BadFrame("length", f"{what} body is {len(body)} bytes, expected {n}")


def _take_str(body: bytes, pos: int, max_len: int, what: str, min_len: int = 0) -> tuple[str, int]:
    if pos >= len(body):
        raise BadFrame("length", f"{what} length byte missing")
    n = body[pos]
    if not min_len <= n <= max_len:
        raise BadFrame("field", f"{what} is {n} bytes; allowed {min_len}..{max_len}")
    end = pos + 1 + n
    if end > len(body):
        raise BadFrame("length", f"{what} runs past the frame end")
    try:
        text = body[pos + 1 : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFrame("field", f"{what} is not UTF-8") from exc
    if not text.isprintable():
        raise BadFrame("field", f"{what} {text!r} holds control characters")
    return text, end


def _parse_device(body: bytes) -> DeviceFrame:
    if len(body) < _DEVICE_FIXED.size:
        raise BadFrame("length", f"DEVICE body is {len(body)} bytes")
    major, minor, patch, flags, rate, n_channels = _DEVICE_FIXED.unpack_from(body)
    if not 1 <= n_channels <= MAX_CHANNELS:
        raise BadFrame("field", f"n_channels {n_channels} outside 1..{MAX_CHANNELS}")
    if rate == 0:
        raise BadFrame("field", "sample rate is 0 mHz")
    ident, pos = _take_str(body, _DEVICE_FIXED.size, MAX_ID_LEN, "device id", 1)
    model, pos = _take_str(body, pos, MAX_ID_LEN, "model")
    if pos != len(body):
        raise BadFrame("length", f"DEVICE frame has {len(body) - pos} trailing bytes")
    if not ident.isascii() or not model.isascii():
        raise BadFrame("field", "device id and model must be ASCII")
    return DeviceFrame(ident, model, (major, minor, patch), rate, n_channels,
                       bool(flags & _FLAG_STREAMING))


def _parse_channel(body: bytes) -> ChannelFrame:
    if len(body) < _CHANNEL_FIXED.size:
        raise BadFrame("length", f"CHANNEL body is {len(body)} bytes")
    index, fmt, scale, offset, wavelength, distance = _CHANNEL_FIXED.unpack_from(body)
    if index >= MAX_CHANNELS:
        raise BadFrame("field", f"channel index {index} >= {MAX_CHANNELS}")
    if fmt not in (1, 2, 3, 4):
        raise BadFrame("field", f"channel {index}: sample format {fmt} is not 1..4")
    if not (math.isfinite(scale) and math.isfinite(offset)) or scale == 0.0:
        raise BadFrame("field", f"channel {index}: scale {scale} / offset {offset} unusable")
    name, pos = _take_str(body, _CHANNEL_FIXED.size, MAX_NAME_LEN, "channel name", 1)
    unit, pos = _take_str(body, pos, MAX_UNIT_LEN, "channel unit")
    if pos != len(body):
        raise BadFrame("length", f"CHANNEL frame has {len(body) - pos} trailing bytes")
    if not _NAME_RE.match(name):
        raise BadFrame("field", f"channel name {name!r} is not [a-z][a-z0-9_]*")
    return ChannelFrame(index, name, unit, SampleFormat(fmt), scale, offset, wavelength, distance)


def _parse_samples(body: bytes) -> SamplesFrame:
    if len(body) < SAMPLES_FIXED_LEN:
        raise BadFrame("length", f"SAMPLES body is {len(body)} bytes")
    seq, t_us, n_rows = _SAMPLES_FIXED.unpack_from(body)
    if n_rows == 0:
        raise BadFrame("field", "SAMPLES frame with 0 rows")
    return SamplesFrame(seq, t_us, n_rows, body[SAMPLES_FIXED_LEN:])


def _parse_ack(body: bytes) -> AckFrame:
    _expect_len(body, _ACK.size, "ACK")
    token, command, status = _ACK.unpack(body)
    try:
        return AckFrame(token, command, AckStatus(status))
    except ValueError as exc:
        raise BadFrame("field", f"ACK status {status} unknown") from exc
