#!/usr/bin/env python3
"""Write firmware_bridges/test_vectors.json: the byte-exact cases every implementation must pass.

Frozen once written: the C library, the MicroPython module and the host decoder are each
checked against the file, so a change to any encoder that alters a byte fails its tests.
Re-run only when the protocol version changes:
    .venv/bin/python firmware_bridges/tools/make_test_vectors.py
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from edgetwin.sources import bridge_protocol as bp

OUT = Path(__file__).resolve().parents[1] / "test_vectors.json"

DEVICES = {
    "fnirs2": {
        "device_id": "diy-fnirs-0001",
        "model": "diy-fnirs-2wl",
        "firmware": [1, 2, 3],
        "rate_mhz": 10000,
        "streaming": True,
        "channels": [
            {"name": "fnirs_s1_d1_760", "unit": "a.u.", "format": 3, "scale": 1.0,
             "offset": 0.0, "wavelength_nm": 760, "distance_01mm": 300},
            {"name": "fnirs_s1_d1_850", "unit": "a.u.", "format": 3, "scale": 1.0,
             "offset": 0.0, "wavelength_nm": 850, "distance_01mm": 300},
        ],
    },
    # Every sample width, scales and offsets that are exact in float32, a non-ASCII unit.
    "mixed": {
        "device_id": "rp2040-e66138935f3a2c2b",
        "model": "",
        "firmware": [0, 9, 255],
        "rate_mhz": 256000,
        "streaming": False,
        "channels": [
            {"name": "ppg", "unit": "a.u.", "format": 4, "scale": 1.0, "offset": 0.0,
             "wavelength_nm": 0, "distance_01mm": 0},
            {"name": "eda", "unit": "µS", "format": 2, "scale": 0.0009765625, "offset": 0.0,
             "wavelength_nm": 0, "distance_01mm": 0},
            {"name": "temp", "unit": "degC", "format": 2, "scale": 0.0078125, "offset": 25.0,
             "wavelength_nm": 0, "distance_01mm": 0},
            {"name": "accel_x", "unit": "g", "format": 1, "scale": 0.0625, "offset": 0.0,
             "wavelength_nm": 0, "distance_01mm": 0},
            {"name": "fnirs_s2_d7_850", "unit": "a.u.", "format": 3, "scale": -0.5,
             "offset": -1.5, "wavelength_nm": 850, "distance_01mm": 65535},
        ],
    },
}


def descriptor(spec: dict) -> bp.Descriptor:
    device = bp.DeviceFrame(spec["device_id"], spec["model"], tuple(spec["firmware"]),
                            spec["rate_mhz"], len(spec["channels"]), spec["streaming"])
    channels = [
        bp.ChannelFrame(i, c["name"], c["unit"], bp.SampleFormat(c["format"]), c["scale"],
                        c["offset"], c["wavelength_nm"], c["distance_01mm"])
        for i, c in enumerate(spec["channels"])
    ]
    for c in spec["channels"]:
        for key in ("scale", "offset"):
            assert struct.unpack("<f", struct.pack("<f", c[key]))[0] == c[key], "not exact in f32"
    return bp.build_descriptor(device, channels)


def main() -> None:
    rng = random.Random(20240605)
    crc = [{"hex": b"123456789".hex(), "crc": bp.crc16(b"123456789")},
           {"hex": "", "crc": bp.crc16(b"")},
           {"hex": "00", "crc": bp.crc16(b"\x00")},
           {"hex": "ff" * 7, "crc": bp.crc16(b"\xff" * 7)}]
    assert crc[0]["crc"] == 0x29B1  # the published CRC-16/CCITT-FALSE check value
    cobs_inputs = [b"", b"\x00", b"\x00\x00", b"\x11\x22\x00\x33", b"\x11\x00",
                   bytes(range(1, 255)), bytes(range(1, 256)), bytes(range(0, 256)),
                   bytes(range(1, 255)) + b"\x00", b"\x01" * 508, b"\x01" * 509,
                   bytes(rng.randrange(256) for _ in range(600))]
    cobs = [{"raw": raw.hex(), "encoded": bp.cobs_encode(raw).hex()} for raw in cobs_inputs]

    frames: list[dict] = []
    descs = {key: descriptor(spec) for key, spec in DEVICES.items()}
    for key, desc in descs.items():
        frames.append({"name": f"{key}_device", "kind": "device", "device": key,
                       "wire": bp.encode_device(desc.device).hex()})
        for ch in desc.channels:
            frames.append({"name": f"{key}_channel_{ch.index}", "kind": "channel", "device": key,
                           "index": ch.index, "wire": bp.encode_channel(ch).hex()})
    rows_f = [[812345, 1301234], [-8388608, 8388607], [0, 1]]
    frames.append({"name": "fnirs2_samples_3rows", "kind": "samples", "device": "fnirs2",
                   "seq": 4294967295, "t_us": 18446744073709551615 - 5, "rows": rows_f,
                   "wire": bp.encode_samples(descs["fnirs2"], 4294967295,
                                             18446744073709551615 - 5, rows_f).hex()})
    rows_m = [[2147483647, -32768, 1234, -128, 0], [-2147483648, 32767, -1, 127, -1],
              [0, 0, 0, 0, 0]]
    frames.append({"name": "mixed_samples_limits", "kind": "samples", "device": "mixed",
                   "seq": 0, "t_us": 0, "rows": rows_m,
                   "wire": bp.encode_samples(descs["mixed"], 0, 0, rows_m).hex()})
    rows_big = [[rng.randrange(-(2**23), 2**23), rng.randrange(-(2**23), 2**23)]
                for _ in range(150)]  # > 254 bytes: exercises COBS block boundaries
    frames.append({"name": "fnirs2_samples_150rows", "kind": "samples", "device": "fnirs2",
                   "seq": 123456, "t_us": 987654321, "rows": rows_big,
                   "wire": bp.encode_samples(descs["fnirs2"], 123456, 987654321, rows_big).hex()})
    for token, command, status in ((7, 0x81, 0), (255, 0x90, 1), (0, 0x83, 2)):
        frames.append({"name": f"ack_{token}_{command:02x}_{status}", "kind": "ack",
                       "token": token, "command": command, "status": status,
                       "wire": bp.encode_ack(token, command, status).hex()})
    for ftype, token, rate in ((0x81, 1, 0), (0x82, 2, 0), (0x83, 3, 250000), (0x84, 0, 0),
                               (0x83, 200, 1)):
        frames.append({"name": f"command_{ftype:02x}_{token}", "kind": "command", "type": ftype,
                       "token": token, "rate_mhz": rate,
                       "wire": bp.encode_command(bp.FrameType(ftype), token, rate).hex()})

    good = bytes.fromhex(next(f["wire"] for f in frames if f["name"] == "command_84_0"))
    raw = bp.cobs_decode(good[:-1])
    bad = [
        {"name": "crc_flipped", "layer": "frame", "reason": "crc",
         "wire": (bp.cobs_encode(raw[:-1] + bytes([raw[-1] ^ 0x01])) + b"\x00").hex()},
        {"name": "bit_flip_body", "layer": "frame", "reason": "crc",
         "wire": (bp.cobs_encode(raw[:2] + bytes([raw[2] ^ 0x80]) + raw[3:]) + b"\x00").hex()},
        {"name": "cobs_overrun", "layer": "frame", "reason": "cobs", "wire": "0511220300"},
        {"name": "too_short", "layer": "frame", "reason": "length",
         "wire": (bp.cobs_encode(b"\x01\x84\x00") + b"\x00").hex()},
        {"name": "version_2", "layer": "frame", "reason": "version",
         "wire": _frame_with(b"\x02\x84\x00").hex()},
        {"name": "unknown_type", "layer": "content", "reason": "type",
         "wire": _frame_with(b"\x01\x7f\x00").hex()},
        {"name": "channel_bad_name", "layer": "content", "reason": "field",
         "wire": _frame_with(b"\x01\x02" + struct.pack("<BBffHH", 0, 2, 1.0, 0.0, 0, 0)
                             + b"\x03Eda\x00").hex()},
        {"name": "device_zero_channels", "layer": "content", "reason": "field",
         "wire": _frame_with(b"\x01\x01" + struct.pack("<BBBBIB", 1, 0, 0, 0, 1000, 0)
                             + b"\x01x\x00").hex()},
        {"name": "set_rate_short", "layer": "content", "reason": "length",
         "wire": _frame_with(b"\x01\x83\x05\x10\x27").hex()},
        {"name": "oversize", "layer": "frame", "reason": "length",
         "wire": (b"\x01" * (bp.MAX_ENCODED + 1) + b"\x00").hex()},
    ]
    for case in bad:
        decoder = bp.StreamDecoder()
        assert decoder.feed(bytes.fromhex(case["wire"])) == [], case["name"]
        assert decoder.stats.bad_by_reason == {case["reason"]: 1}, (case, decoder.stats)

    # A stream with garbage between frames, a cut frame and runs of zeros.
    pieces = [b"\x00\x00", b"garbage\xff\xfe\x00", bytes.fromhex(frames[0]["wire"]),
              bytes(rng.randrange(1, 256) for _ in range(40)), b"\x00",
              bytes.fromhex(frames[1]["wire"])[:9],  # cut: merges with the next frame
              bytes.fromhex(frames[2]["wire"]), bytes.fromhex(frames[3]["wire"]),
              b"\x00\x00\x00", bytes.fromhex(bad[0]["wire"]), good]
    wire = b"".join(pieces)
    decoder = bp.StreamDecoder()
    got = decoder.feed(wire)
    stream = {"wire": wire.hex(), "frames": len(got), "bad": decoder.stats.bad_frames,
              "frame_names": [frames[0]["name"], frames[3]["name"], "command_84_0"]}
    assert stream["frames"] == 3, stream["frames"]
    assert stream["bad"] == 4, stream["bad"]

    doc = {
        "protocol_version": bp.PROTOCOL_VERSION,
        "about": "Byte-exact cases for firmware_bridges/PROTOCOL.md v1; hex strings; see "
                 "tools/make_test_vectors.py. 'wire' includes the trailing 0x00 delimiter.",
        "max_frame": bp.MAX_FRAME,
        "max_encoded": bp.MAX_ENCODED,
        "crc16": crc,
        "cobs": cobs,
        "devices": DEVICES,
        "frames": frames,
        "bad": bad,
        "stream": stream,
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


def _frame_with(raw_without_crc: bytes) -> bytes:
    return bp.cobs_encode(raw_without_crc + struct.pack("<H", bp.crc16(raw_without_crc))) + b"\x00"


if __name__ == "__main__":
    main()
