"""The host side of the bridge protocol against the shared byte-exact test vectors."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from edgetwin.errors import MalformedInput
from edgetwin.sources import bridge_protocol as bp

VECTORS_PATH = Path(__file__).resolve().parents[2] / "firmware_bridges" / "test_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def _descriptor(key: str) -> bp.Descriptor:
    spec = VECTORS["devices"][key]
    device = bp.DeviceFrame(
        spec["device_id"], spec["model"], tuple(spec["firmware"]), spec["rate_mhz"],
        len(spec["channels"]), spec["streaming"],
    )
    channels = [
        bp.ChannelFrame(i, c["name"], c["unit"], bp.SampleFormat(c["format"]), c["scale"],
                        c["offset"], c["wavelength_nm"], c["distance_01mm"])
        for i, c in enumerate(spec["channels"])
    ]
    return bp.build_descriptor(device, channels)


def _frames(kind: str) -> list[dict[str, Any]]:
    return [f for f in VECTORS["frames"] if f["kind"] == kind]


def test_constants_match_the_vectors() -> None:
    assert VECTORS["protocol_version"] == bp.PROTOCOL_VERSION
    assert VECTORS["max_frame"] == bp.MAX_FRAME
    assert VECTORS["max_encoded"] == bp.MAX_ENCODED


@pytest.mark.parametrize("case", VECTORS["crc16"], ids=lambda c: c["hex"][:12] or "empty")
def test_crc16_ccitt_false(case: dict[str, Any]) -> None:
    assert bp.crc16(bytes.fromhex(case["hex"])) == case["crc"]


def test_crc16_published_check_value() -> None:
    assert bp.crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("case", VECTORS["cobs"], ids=lambda c: f"{len(c['raw']) // 2}B")
def test_cobs_encode_and_decode(case: dict[str, Any]) -> None:
    raw, encoded = bytes.fromhex(case["raw"]), bytes.fromhex(case["encoded"])
    assert bp.cobs_encode(raw) == encoded
    assert bp.cobs_decode(encoded) == raw
    assert 0 not in encoded


@pytest.mark.parametrize("case", _frames("device") + _frames("channel"), ids=lambda c: c["name"])
def test_descriptor_frames_byte_exact(case: dict[str, Any]) -> None:
    desc = _descriptor(case["device"])
    wire = bytes.fromhex(case["wire"])
    if case["kind"] == "device":
        assert bp.encode_device(desc.device) == wire
        assert bp.decode_wire(wire) == desc.device
    else:
        channel = desc.channels[case["index"]]
        assert bp.encode_channel(channel) == wire
        assert bp.decode_wire(wire) == channel


@pytest.mark.parametrize("case", _frames("samples"), ids=lambda c: c["name"])
def test_samples_frames_byte_exact(case: dict[str, Any]) -> None:
    desc = _descriptor(case["device"])
    wire = bytes.fromhex(case["wire"])
    assert bp.encode_samples(desc, case["seq"], case["t_us"], case["rows"]) == wire
    frame = bp.decode_wire(wire)
    assert isinstance(frame, bp.SamplesFrame)
    assert (frame.seq, frame.t_us, frame.n_rows) == (case["seq"], case["t_us"], len(case["rows"]))
    assert bp.unpack_rows(desc, frame) == [tuple(r) for r in case["rows"]]


@pytest.mark.parametrize("case", _frames("ack") + _frames("command"), ids=lambda c: c["name"])
def test_ack_and_command_frames_byte_exact(case: dict[str, Any]) -> None:
    wire = bytes.fromhex(case["wire"])
    frame = bp.decode_wire(wire)
    if case["kind"] == "ack":
        assert bp.encode_ack(case["token"], case["command"], case["status"]) == wire
        assert frame == bp.AckFrame(case["token"], case["command"], bp.AckStatus(case["status"]))
    else:
        ftype = bp.FrameType(case["type"])
        assert bp.encode_command(ftype, case["token"], case["rate_mhz"]) == wire
        assert frame == bp.CommandFrame(ftype, case["token"], case["rate_mhz"])


@pytest.mark.parametrize("case", VECTORS["bad"], ids=lambda c: c["name"])
def test_bad_frames_are_rejected_with_their_reason(case: dict[str, Any]) -> None:
    decoder = bp.StreamDecoder()
    assert decoder.feed(bytes.fromhex(case["wire"])) == []
    assert decoder.stats.bad_by_reason == {case["reason"]: 1}
    if case["reason"] != "length" or len(case["wire"]) // 2 <= bp.MAX_ENCODED:
        with pytest.raises(bp.BadFrame) as info:
            bp.decode_wire(bytes.fromhex(case["wire"]))
        assert info.value.reason == case["reason"]
        assert isinstance(info.value, MalformedInput)


def test_stream_vector_whole_and_byte_at_a_time() -> None:
    wire = bytes.fromhex(VECTORS["stream"]["wire"])
    names = VECTORS["stream"]["frame_names"]
    expected = [bp.decode_wire(bytes.fromhex(next(f["wire"] for f in VECTORS["frames"]
                                                  if f["name"] == n))) for n in names]
    whole = bp.StreamDecoder()
    assert whole.feed(wire) == expected
    assert whole.stats.bad_frames == VECTORS["stream"]["bad"]
    one = bp.StreamDecoder()
    got: list[bp.Frame] = []
    for i in range(len(wire)):
        got += one.feed(wire[i : i + 1])
    assert got == expected
    assert one.stats == whole.stats


def test_decoder_buffer_is_bounded_and_resyncs_after_an_oversize_run() -> None:
    decoder = bp.StreamDecoder()
    good = bp.encode_command(bp.FrameType.CMD_START, 9)
    for _ in range(50):
        assert decoder.feed(b"\x5a" * 997) == []
        assert decoder.buffered <= bp.MAX_ENCODED
    assert decoder.feed(b"\x00" + good) == [bp.CommandFrame(bp.FrameType.CMD_START, 9)]
    assert decoder.stats.bad_by_reason == {"length": 1}


def test_samples_payload_must_match_the_descriptor() -> None:
    desc = _descriptor("fnirs2")
    body = struct.pack("<IQB", 1, 2, 2) + b"\x00" * (2 * desc.row_bytes - 1)
    frame = bp.decode_wire(bp.encode_frame(bp.FrameType.SAMPLES, body))
    assert isinstance(frame, bp.SamplesFrame)
    with pytest.raises(bp.BadFrame) as info:
        bp.unpack_rows(desc, frame)
    assert info.value.reason == "length"


def test_descriptor_assembler_waits_for_every_channel_and_rejects_duplicates() -> None:
    desc = _descriptor("mixed")
    asm = bp.DescriptorAssembler()
    assert asm.feed(desc.channels[0]) is None  # no DEVICE yet: ignored
    assert asm.feed(desc.device) is None
    for ch in reversed(desc.channels[1:]):
        assert asm.feed(ch) is None
    assert asm.feed(desc.channels[0]) == desc
    asm.feed(desc.device)
    clash = bp.ChannelFrame(1, desc.channels[0].name, "a.u.", bp.SampleFormat.I8, 1.0)
    for ch in (desc.channels[0], clash, *desc.channels[2:-1]):
        assert asm.feed(ch) is None
    with pytest.raises(bp.BadFrame):
        asm.feed(desc.channels[-1])
    with pytest.raises(bp.BadFrame):
        asm.feed(desc.device) or asm.feed(bp.ChannelFrame(9, "x", "", bp.SampleFormat.I8, 1.0))


def test_frames_over_max_frame_are_refused_by_the_encoder() -> None:
    with pytest.raises(ValueError, match="MAX_FRAME"):
        bp.encode_frame(bp.FrameType.SAMPLES, b"\x01" * bp.MAX_FRAME)
    assert _descriptor("fnirs2").max_rows_per_frame() == 167
