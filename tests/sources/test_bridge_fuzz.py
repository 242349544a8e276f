"""Hypothesis against the bridge decoder: no crash, bounded memory, every bad frame counted."""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetwin.emulators.bridge import load_encoder
from edgetwin.sources import bridge_protocol as bp
from edgetwin.sources.serial import BridgeMapper, ClockEstimator

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
etb = load_encoder()

FMT = st.sampled_from(list(bp.SampleFormat))
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


@st.composite
def descriptors(draw: st.DrawFn) -> bp.Descriptor:
    n = draw(st.integers(1, 8))
    names = draw(st.lists(NAME, min_size=n, max_size=n, unique=True))
    scale = st.floats(-1e3, 1e3, allow_nan=False, width=32).filter(lambda x: x != 0.0)
    channels = [
        bp.ChannelFrame(i, names[i], draw(st.sampled_from(["a.u.", "µS", "g", ""])), draw(FMT),
                        draw(scale), draw(st.floats(-1e3, 1e3, width=32)),
                        draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
        for i in range(n)
    ]
    device = bp.DeviceFrame(draw(st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True)), "m",
                            (1, 0, 0), draw(st.integers(1, 2**32 - 1)), n)
    return bp.build_descriptor(device, channels)


def _rows(desc: bp.Descriptor, draw: st.DrawFn) -> list[list[int]]:
    n_rows = draw(st.integers(1, min(20, desc.max_rows_per_frame())))
    return [[draw(st.integers(-(2 ** (8 * int(c.fmt) - 1)), 2 ** (8 * int(c.fmt) - 1) - 1))
             for c in desc.channels] for _ in range(n_rows)]


def _splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 1, 2, 3, 7, 64, 500, 2000))
        out.append(data[i : i + n])
        i += n
    return out


def _expected_outcomes(data: bytes) -> int:
    """Frames + bad frames the decoder must report: one per non-empty delimited chunk."""
    *complete, tail = data.split(b"\x00")
    return sum(1 for c in complete if c) + (1 if len(tail) > bp.MAX_ENCODED else 0)


@SETTINGS
@given(st.binary(max_size=5000), st.integers(0, 2**16))
def test_arbitrary_bytes_never_crash_and_every_chunk_is_accounted(data: bytes, seed: int) -> None:
    decoder = bp.StreamDecoder()
    frames: list[bp.Frame] = []
    for piece in _splits(data, seed):
        frames += decoder.feed(piece)
        assert decoder.buffered <= bp.MAX_ENCODED
    stats = decoder.stats
    assert stats.bad_frames == sum(stats.bad_by_reason.values())
    assert set(stats.bad_by_reason) <= set(bp.BadFrame.REASONS)
    assert len(frames) + stats.bad_frames == _expected_outcomes(data)
    assert stats.bytes == len(data)


@SETTINGS
@given(st.binary(min_size=1, max_size=bp.MAX_ENCODED * 3).map(lambda b: b.replace(b"\x00", b"")))
def test_long_runs_without_delimiter_stay_bounded(run: bytes) -> None:
    decoder = bp.StreamDecoder()
    for i in range(0, len(run), 97):
        assert decoder.feed(run[i : i + 97]) == []
        assert decoder.buffered <= bp.MAX_ENCODED
    good = bp.encode_command(bp.FrameType.CMD_STOP, 3)
    assert decoder.feed(b"\x00" + good) == [bp.CommandFrame(bp.FrameType.CMD_STOP, 3)]


@SETTINGS
@given(st.data())
def test_frames_survive_garbage_between_them_in_any_split(data: st.DataObject) -> None:
    desc = data.draw(descriptors())
    frames: list[bp.Frame] = [desc.device, *desc.channels]
    wire = bytearray(bp.encode_descriptor(desc))
    seq = data.draw(st.integers(0, 2**32 - 1))
    for _ in range(data.draw(st.integers(1, 5))):
        rows = _rows(desc, data.draw)
        t_us = data.draw(st.integers(0, 2**64 - 1))
        # Garbage always ends at a delimiter, so it costs no good frame.
        wire += data.draw(st.binary(max_size=40)) + b"\x00"
        wire += bp.encode_samples(desc, seq, t_us, rows)
        frames.append(bp.SamplesFrame(seq & 0xFFFFFFFF, t_us, len(rows),
                                      bp.pack_rows(desc, rows)))
        seq += len(rows)
    decoder = bp.StreamDecoder()
    got: list[bp.Frame] = []
    for piece in _splits(bytes(wire), data.draw(st.integers(0, 2**16))):
        got += decoder.feed(piece)
    # Garbage can itself decode as a frame only with a valid CRC; good frames must all be there.
    assert [f for f in got if f in frames] == frames


@SETTINGS
@given(st.data())
def test_corruption_never_yields_a_frame_that_was_not_sent(data: st.DataObject) -> None:
    desc = data.draw(descriptors())
    sent = []
    wire = bytearray()
    for k in range(4):
        rows = _rows(desc, data.draw)
        sent.append(bp.SamplesFrame(k * 100, k, len(rows), bp.pack_rows(desc, rows)))
        wire += bp.encode_samples(desc, k * 100, k, rows)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        if data.draw(st.booleans()):
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        else:
            del wire[i]
    decoder = bp.StreamDecoder()
    got = decoder.feed(bytes(wire) + b"\x00")  # the extra 0x00 ends a cut-off last frame
    assert all(f in sent for f in got)
    assert decoder.stats.bad_frames >= 1 or len(got) == len(sent)


@SETTINGS
@given(st.binary(max_size=bp.MAX_FRAME + 8))
def test_parse_frame_raises_only_bad_frame(raw: bytes) -> None:
    reason = None
    try:
        bp.parse_frame(raw)
    except bp.BadFrame as exc:  # the only exception allowed out of the parser
        reason = exc.reason
    assert reason is None or reason in bp.BadFrame.REASONS


@SETTINGS
@given(st.data())
def test_mapper_decodes_any_layout_and_keeps_time_monotonic(data: st.DataObject) -> None:
    desc = data.draw(descriptors())
    mapper = BridgeMapper("x.y", desc, ClockEstimator(), max_fill_s=0.5)
    seq, t_us, host = data.draw(st.integers(0, 2**32 - 1)), 0, 1e9
    last_t = -math.inf
    for _ in range(data.draw(st.integers(1, 6))):
        rows = _rows(desc, data.draw)
        seq = (seq + data.draw(st.integers(0, 3))) % 2**32
        t_us += data.draw(st.integers(0, 10**7))
        host += data.draw(st.floats(0, 5))
        frame = bp.SamplesFrame(seq, t_us, len(rows), bp.pack_rows(desc, rows))
        t, values, _gaps = mapper.on_samples(frame, host)
        assert values.shape == (len(t), len(desc.channels))
        assert t[0] >= last_t
        assert np.all(np.diff(t) >= 0)
        last_t = t[-1]
        real = values[-len(rows):]
        ints = np.array(rows, dtype=np.float64)
        scale = np.array([c.scale for c in desc.channels])
        offset = np.array([c.offset for c in desc.channels])
        np.testing.assert_allclose(real, ints * scale + offset, rtol=1e-12, atol=1e-9)
        seq += len(rows)


@SETTINGS
@given(st.binary(max_size=3000), st.integers(0, 2**16))
def test_device_command_reader_is_bounded_and_counts(data: bytes, seed: int) -> None:
    reader = etb.CommandReader()
    n = 0
    for piece in _splits(data, seed):
        n += len(reader.feed(piece))
        assert reader.n <= reader.cap
    assert n + reader.bad <= data.count(0) + 1
