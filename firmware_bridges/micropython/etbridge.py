# etbridge: edgetwin firmware-bridge protocol v1, device side, for MicroPython (RP2040) and CPython.
#
# Encodes DEVICE / CHANNEL / SAMPLES / ACK frames and decodes host commands, as specified in
# firmware_bridges/PROTOCOL.md. Written in the subset both interpreters share: no typing, no
# dataclasses, no f-string tricks, no int.to_bytes(signed=...). Buffers are bounded: the only
# state is the CRC table (512 bytes, built on first use) and each CommandReader's buffer.

import struct

VERSION = 1
MAX_FRAME = 1024

T_DEVICE = 0x01
T_CHANNEL = 0x02
T_SAMPLES = 0x03
T_ACK = 0x04
CMD_START = 0x81
CMD_STOP = 0x82
CMD_SET_RATE = 0x83
CMD_DESCRIBE = 0x84

ACK_OK = 0
ACK_UNKNOWN_COMMAND = 1
ACK_BAD_ARGUMENT = 2
ACK_NOT_READY = 3

I8 = 1
I16 = 2
I24 = 3
I32 = 4

_FLAG_STREAMING = 0x01
_table = None


def _crc_table():
    global _table  # noqa: PLW0603 - the one documented global: a lazily built lookup table
    if _table is None:
        t = []
        for i in range(256):
            crc = i << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            t.append(crc & 0xFFFF)
        _table = t
    return _table


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, unreflected, no final xor."""
    t = _crc_table()
    for b in data:
        crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ b) & 0xFF]
    return crc


def cobs_encode(data):
    """COBS-encode ``data``; the result holds no zero byte (delimiter not included).

    Canonical form: a block of 254 data bytes that ends the input is not followed by an
    empty block (the same bytes as the C library and the host encoder produce).
    """
    n = len(data)
    out = bytearray(n + n // 254 + 2)
    code_at = 0
    code = 1
    o = 1
    for i in range(n):
        b = data[i]
        if b:
            out[o] = b
            o += 1
            code += 1
        if not b or code == 0xFF:
            out[code_at] = code
            code = 1
            code_at = o
            if not b or i + 1 < n:
                o += 1
    out[code_at] = code
    return bytes(out[:o])


def cobs_decode(data):
    """Undo cobs_encode; return None if ``data`` is not valid COBS."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            return None
        j = i + 1
        end = i + code
        while j < end:
            if data[j] == 0:
                return None
            out.append(data[j])
            j += 1
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def frame(ftype, body=b""):
    """Wire bytes of one frame: COBS(version, type, body, crc16 little-endian) + 0x00."""
    raw = bytearray(2 + len(body) + 2)
    raw[0] = VERSION
    raw[1] = ftype
    raw[2 : 2 + len(body)] = body
    crc = crc16(memoryview(raw)[: 2 + len(body)])
    raw[-2] = crc & 0xFF
    raw[-1] = crc >> 8
    if len(raw) > MAX_FRAME:
        raise ValueError("frame exceeds MAX_FRAME")
    return cobs_encode(raw) + b"\x00"


def _pstr(text):
    b = text.encode()
    return bytes((len(b),)) + b


class Device:
    """A device description and the frames that carry it.

    ``channels`` is a list of tuples ``(name, unit, fmt, scale, offset, wavelength_nm,
    distance_01mm)``; ``fmt`` is I8/I16/I24/I32; ``physical = raw * scale + offset``.
    """

    def __init__(self, device_id, model, firmware, rate_mhz, channels):
        if not 1 <= len(channels) <= 64:
            raise ValueError("1..64 channels")
        self.device_id = device_id
        self.model = model
        self.firmware = firmware
        self.rate_mhz = rate_mhz
        self.channels = channels
        self.widths = [c[2] for c in channels]
        self.row_bytes = sum(self.widths)

    def device_frame(self, streaming):
        body = struct.pack(
            "<BBBBIB",
            self.firmware[0],
            self.firmware[1],
            self.firmware[2],
            _FLAG_STREAMING if streaming else 0,
            self.rate_mhz,
            len(self.channels),
        )
        return frame(T_DEVICE, body + _pstr(self.device_id) + _pstr(self.model))

    def channel_frame(self, index):
        name, unit, fmt, scale, offset, wavelength, distance = self.channels[index]
        body = struct.pack("<BBffHH", index, fmt, scale, offset, wavelength, distance)
        return frame(T_CHANNEL, body + _pstr(name) + _pstr(unit))

    def descriptor_frames(self, streaming):
        """The DEVICE frame then every CHANNEL frame, as one bytes object."""
        out = bytearray(self.device_frame(streaming))
        for i in range(len(self.channels)):
            out += self.channel_frame(i)
        return bytes(out)

    def samples_frame(self, seq, t_us, rows):
        """One SAMPLES frame of ``rows`` (lists of ints), the first being row ``seq``."""
        n = len(rows)
        if not 1 <= n <= 255:
            raise ValueError("1..255 rows per frame")
        body = bytearray(13 + n * self.row_bytes)
        struct.pack_into("<IQB", body, 0, seq & 0xFFFFFFFF, t_us, n)
        pos = 13
        widths = self.widths
        for row in rows:
            for k in range(len(widths)):
                w = widths[k]
                v = row[k]
                if w == 2:
                    struct.pack_into("<h", body, pos, v)
                elif w == 3:
                    if not -0x800000 <= v <= 0x7FFFFF:
                        raise ValueError("int24 out of range")
                    v &= 0xFFFFFF
                    body[pos] = v & 0xFF
                    body[pos + 1] = (v >> 8) & 0xFF
                    body[pos + 2] = v >> 16
                elif w == 4:
                    struct.pack_into("<i", body, pos, v)
                else:
                    struct.pack_into("<b", body, pos, v)
                pos += w
        return frame(T_SAMPLES, body)


def ack_frame(token, command, status=ACK_OK):
    return frame(T_ACK, bytes((token & 0xFF, command & 0xFF, status & 0xFF)))


def command_frame(ftype, token, rate_mhz=0):
    body = bytes((token & 0xFF,))
    if ftype == CMD_SET_RATE:
        body += struct.pack("<I", rate_mhz)
    return frame(ftype, body)


class CommandReader:
    """Host bytes in, commands out as ``(type, token, rate_mhz)``; bounded, counts bad frames.

    A command frame is at most 9 encoded bytes; anything longer than ``cap`` is dropped up to
    the next 0x00 and counted in ``bad``, like any frame failing COBS, CRC or its length.
    """

    def __init__(self, cap=32):
        self.buf = bytearray(cap)
        self.cap = cap
        self.n = 0
        self.dropping = False
        self.bad = 0

    def feed(self, data):
        out = []
        for b in data:
            if b != 0:
                if self.dropping:
                    continue
                if self.n >= self.cap:
                    self.dropping = True
                    self.bad += 1
                    self.n = 0
                    continue
                self.buf[self.n] = b
                self.n += 1
                continue
            if self.dropping:
                self.dropping = False
                continue
            if self.n:
                cmd = parse_command(bytes(self.buf[: self.n]))
                self.n = 0
                if cmd is None:
                    self.bad += 1
                else:
                    out.append(cmd)
        return out


def parse_command(encoded):
    """Decode one COBS-encoded host frame into ``(type, token, rate_mhz)``, or None if bad."""
    raw = cobs_decode(encoded)
    if raw is None or len(raw) < 5:
        return None
    if crc16(memoryview(raw)[:-2]) != raw[-2] | (raw[-1] << 8):
        return None
    if raw[0] != VERSION:
        return None
    ftype = raw[1]
    body = raw[2:-2]
    if ftype in (CMD_START, CMD_STOP, CMD_DESCRIBE) and len(body) == 1:
        return (ftype, body[0], 0)
    if ftype == CMD_SET_RATE and len(body) == 5:
        return (ftype, body[0], struct.unpack("<I", body[1:5])[0])
    if ftype & 0x80 and len(body) >= 1:
        # A well-formed frame of a command we do not know: answer it with UNKNOWN_COMMAND.
        return (ftype, body[0], 0)
    return None
