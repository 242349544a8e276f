#!/usr/bin/env python3
"""Turn ../test_vectors.json into a C header (build/vectors.h) for test/test_etbridge.c.

Standard library only: the Makefile runs it with the system python3 before compiling.
Usage: gen_vectors.py test_vectors.json build/vectors.h
"""

from __future__ import annotations

import json
import sys

KINDS = {"device": 0, "channel": 1, "samples": 2, "ack": 3, "command": 4}


def c_bytes(name: str, data: bytes) -> str:
    # C forbids empty arrays: an empty case gets one unused byte and length 0.
    body = ", ".join(f"0x{b:02x}" for b in data) or "0x00"
    return f"static const uint8_t {name}[] = {{{body}}};\n"


def c_str(text: str) -> str:
    # Octal escapes for non-ASCII: a hex escape would swallow a following hex digit.
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if 0x20 <= b < 0x7F and ch not in '"\\':
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def c_float(x: float) -> str:
    return f"{float(x).hex()}f"


def main(src: str, dst: str) -> None:
    with open(src, encoding="utf-8") as fh:
        vec = json.load(fh)
    out = ["/* Generated from test_vectors.json by gen_vectors.py; do not edit. */\n",
           "#include <stddef.h>\n#include <stdint.h>\n#include \"etbridge.h\"\n\n",
           f"#define VEC_PROTOCOL_VERSION {vec['protocol_version']}u\n",
           f"#define VEC_MAX_FRAME {vec['max_frame']}u\n",
           f"#define VEC_MAX_ENCODED {vec['max_encoded']}u\n\n"]

    rows = []
    for i, case in enumerate(vec["crc16"]):
        data = bytes.fromhex(case["hex"])
        out.append(c_bytes(f"crc_in_{i}", data))
        rows.append(f"    {{crc_in_{i}, {len(data)}u, 0x{case['crc']:04x}u}},\n")
    out.append("static const struct { const uint8_t *data; size_t len; uint16_t crc; } "
               "CRC_CASES[] = {\n" + "".join(rows) + "};\n\n")

    rows = []
    for i, case in enumerate(vec["cobs"]):
        raw, enc = bytes.fromhex(case["raw"]), bytes.fromhex(case["encoded"])
        out.append(c_bytes(f"cobs_raw_{i}", raw))
        out.append(c_bytes(f"cobs_enc_{i}", enc))
        rows.append(f"    {{cobs_raw_{i}, {len(raw)}u, cobs_enc_{i}, {len(enc)}u}},\n")
    out.append("static const struct { const uint8_t *raw; size_t raw_len; const uint8_t *enc; "
               "size_t enc_len; } COBS_CASES[] = {\n" + "".join(rows) + "};\n\n")

    streaming = {}
    for key, dev in vec["devices"].items():
        chans = []
        for c in dev["channels"]:
            chans.append(f"    {{{c_str(c['name'])}, {c_str(c['unit'])}, {c['format']}u, "
                         f"{c_float(c['scale'])}, {c_float(c['offset'])}, "
                         f"{c['wavelength_nm']}u, {c['distance_01mm']}u}},\n")
        out.append(f"static const etb_channel DEV_{key}_channels[] = {{\n{''.join(chans)}}};\n")
        fw = dev["firmware"]
        out.append(f"static const etb_device DEV_{key} = {{{c_str(dev['device_id'])}, "
                   f"{c_str(dev['model'])}, {fw[0]}u, {fw[1]}u, {fw[2]}u, {dev['rate_mhz']}u, "
                   f"{len(dev['channels'])}u, DEV_{key}_channels}};\n\n")
        streaming[key] = 1 if dev["streaming"] else 0

    rows = []
    for i, f in enumerate(vec["frames"]):
        wire = bytes.fromhex(f["wire"])
        out.append(c_bytes(f"frame_wire_{i}", wire))
        values = [v for row in f.get("rows", []) for v in row]
        if values:
            body = ", ".join(f"{v}" if v != -(2**31) else "(-2147483647 - 1)" for v in values)
            out.append(f"static const int32_t frame_rows_{i}[] = {{{body}}};\n")
        dev = f"&DEV_{f['device']}" if "device" in f else "NULL"
        rows.append(
            f"    {{{c_str(f['name'])}, {KINDS[f['kind']]}, {dev}, "
            f"{streaming.get(f.get('device', ''), 0)}, {f.get('index', 0)}u, "
            f"{f.get('seq', 0)}u, {f.get('t_us', 0)}ull, "
            f"{'frame_rows_' + str(i) if values else 'NULL'}, {len(f.get('rows', []))}u, "
            f"{f.get('token', 0)}u, {f.get('command', 0)}u, {f.get('status', 0)}u, "
            f"{f.get('type', 0)}u, {f.get('rate_mhz', 0)}u, frame_wire_{i}, {len(wire)}u}},\n")
    out.append(
        "enum { K_DEVICE, K_CHANNEL, K_SAMPLES, K_ACK, K_COMMAND };\n"
        "static const struct { const char *name; int kind; const etb_device *dev; int streaming; "
        "uint8_t index; uint32_t seq; uint64_t t_us; const int32_t *rows; uint8_t n_rows; "
        "uint8_t token, command, status, type; uint32_t rate_mhz; const uint8_t *wire; "
        "size_t wire_len; } FRAME_CASES[] = {\n" + "".join(rows) + "};\n\n")

    rows = []
    for i, b in enumerate(vec["bad"]):
        wire = bytes.fromhex(b["wire"])
        out.append(c_bytes(f"bad_wire_{i}", wire))
        rows.append(f"    {{{c_str(b['name'])}, {1 if b['layer'] == 'frame' else 0}, "
                    f"bad_wire_{i}, {len(wire)}u}},\n")
    out.append("static const struct { const char *name; int frame_layer; const uint8_t *wire; "
               "size_t len; } BAD_CASES[] = {\n" + "".join(rows) + "};\n\n")

    stream = vec["stream"]
    out.append(c_bytes("stream_wire", bytes.fromhex(stream["wire"])))
    out.append(f"#define STREAM_LEN {len(bytes.fromhex(stream['wire']))}u\n")
    out.append(f"#define STREAM_FRAMES {stream['frames']}u\n#define STREAM_BAD {stream['bad']}u\n")
    out.append("#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))\n")
    with open(dst, "w", encoding="utf-8") as fh:
        fh.write("".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
