"""The MicroPython encoder module (run on CPython) against the shared byte-exact test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgetwin.emulators.bridge import load_encoder
from edgetwin.sources import bridge_protocol as bp

ROOT = Path(__file__).resolve().parents[2]
VECTORS: dict[str, Any] = json.loads(
    (ROOT / "firmware_bridges" / "test_vectors.json").read_text(encoding="utf-8")
)
etb = load_encoder()


def _device(key: str) -> Any:
    spec = VECTORS["devices"][key]
    channels = [
        (c["name"], c["unit"], c["format"], c["scale"], c["offset"], c["wavelength_nm"],
         c["distance_01mm"])
        for c in spec["channels"]
    ]
    return etb.Device(spec["device_id"], spec["model"], tuple(spec["firmware"]),
                      spec["rate_mhz"], channels)


@pytest.mark.parametrize("case", VECTORS["crc16"], ids=lambda c: c["hex"][:12] or "empty")
def test_crc16(case: dict[str, Any]) -> None:
    assert etb.crc16(bytes.fromhex(case["hex"])) == case["crc"]


@pytest.mark.parametrize("case", VECTORS["cobs"], ids=lambda c: f"{len(c['raw']) // 2}B")
def test_cobs(case: dict[str, Any]) -> None:
    raw, encoded = bytes.fromhex(case["raw"]), bytes.fromhex(case["encoded"])
    assert etb.cobs_encode(raw) == encoded
    assert etb.cobs_decode(encoded) == raw


@pytest.mark.parametrize("case", VECTORS["frames"], ids=lambda c: c["name"])
def test_every_frame_byte_exact(case: dict[str, Any]) -> None:
    wire = bytes.fromhex(case["wire"])
    kind = case["kind"]
    if kind == "device":
        spec = VECTORS["devices"][case["device"]]
        assert _device(case["device"]).device_frame(spec["streaming"]) == wire
    elif kind == "channel":
        assert _device(case["device"]).channel_frame(case["index"]) == wire
    elif kind == "samples":
        got = _device(case["device"]).samples_frame(case["seq"], case["t_us"], case["rows"])
        assert got == wire
    elif kind == "ack":
        assert etb.ack_frame(case["token"], case["command"], case["status"]) == wire
    else:
        assert etb.command_frame(case["type"], case["token"], case["rate_mhz"]) == wire
        # The device's command reader decodes what the host sends.
        reader = etb.CommandReader()
        assert reader.feed(wire) == [(case["type"], case["token"], case["rate_mhz"])]


def test_descriptor_frames_decode_on_the_host() -> None:
    dev = _device("mixed")
    decoder = bp.StreamDecoder()
    asm = bp.DescriptorAssembler()
    result = None
    for frame in decoder.feed(dev.descriptor_frames(True)):
        assert isinstance(frame, (bp.DeviceFrame, bp.ChannelFrame))
        result = asm.feed(frame) or result
    assert result is not None
    assert result.names == tuple(c["name"] for c in VECTORS["devices"]["mixed"]["channels"])
    assert result.device.streaming


@pytest.mark.parametrize(
    "case", [c for c in VECTORS["bad"] if c["layer"] == "frame"], ids=lambda c: c["name"]
)
def test_command_reader_rejects_and_counts_bad_frames(case: dict[str, Any]) -> None:
    reader = etb.CommandReader()
    good = bytes.fromhex(next(f["wire"] for f in VECTORS["frames"] if f["name"] == "command_81_1"))
    assert reader.feed(bytes.fromhex(case["wire"]) + good) == [(0x81, 1, 0)]
    assert reader.bad == 1
    assert reader.n <= reader.cap


def test_samples_out_of_range_are_refused() -> None:
    dev = _device("fnirs2")
    with pytest.raises(ValueError, match="int24"):
        dev.samples_frame(0, 0, [[1 << 23, 0]])
    with pytest.raises(ValueError, match="rows"):
        dev.samples_frame(0, 0, [])
