"""The sample codec is exact: every stored value comes back bit for bit, whatever form
(v3 float64 in one Zstandard frame, or v2's ADC integers, binary or decimal integers,
float32, float64) the codec chose; version-1 chunks written by earlier releases stay
readable; quantised data takes far less room than float64. v2 is used for chunks whose
source declares its ADC scale, v3 for all others."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgetwin.store import Secret, TwinStore, codec
from edgetwin.store.chunks import adc_affine
from edgetwin.types import SampleBatch
from tests.store.helpers import PASS, T0

RATE = 250.0


def _times(rows: int, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return T0 + np.arange(rows) / RATE + rng.normal(0.0, jitter, rows)


def _roundtrip(t: np.ndarray, values: np.ndarray, affine=None) -> tuple[np.ndarray, np.ndarray]:
    blob = codec.encode_samples(2, t, values, affine)
    layout, t2, v2 = codec.decode_samples(blob, [0, 0, values.shape[1]])
    assert layout == 2
    return t2, v2


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit, except that a NaN's payload need not survive (NaN means missing)."""
    nan = np.isnan(a)
    if not np.array_equal(nan, np.isnan(b)):
        return False
    a0, b0 = np.where(nan, 0.0, a), np.where(nan, 0.0, b)
    return bool(np.array_equal(a0.view("<i8"), b0.view("<i8")))


@settings(max_examples=150, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    ),
    jitter=st.sampled_from([0.0, 1e-6, 0.3]),
    hinted=st.booleans(),
)
def test_any_float64_matrix_comes_back_bit_for_bit(
    values: np.ndarray, jitter: float, hinted: bool
) -> None:
    # an ADC hint that fits nothing sends every channel through v2's other forms
    n_ch = values.shape[1]
    hint = (np.full(n_ch, 0.37), np.full(n_ch, 0.11)) if hinted else None
    t = np.sort(_times(values.shape[0], jitter))
    t2, v2 = _roundtrip(t, values, hint)
    assert np.array_equal(t.view("<i8"), t2.view("<i8"))
    assert _same_bits(values, v2)


@settings(max_examples=60, deadline=None)
@given(
    ints=hnp.arrays(np.int64, st.tuples(st.integers(1, 60), st.integers(1, 6)),
                    elements=st.integers(-(2**23), 2**23 - 1)),
    scale=st.floats(1e-9, 1e3).map(lambda x: float(np.float32(x))),
    offset=st.floats(-1e4, 1e4),
)
def test_adc_integers_round_trip_exactly_with_the_sources_own_arithmetic(
    ints: np.ndarray, scale: float, offset: float
) -> None:
    n_ch = ints.shape[1]
    s, o = np.full(n_ch, scale), np.full(n_ch, offset)
    values = ints.astype(np.int32) * s + o  # as the serial source computes physical values
    _, v2 = _roundtrip(_times(ints.shape[0]), values, (s, o))
    assert np.array_equal(values.view("<i8"), v2.view("<i8"))


def test_negative_zero_and_special_values_keep_their_bits() -> None:
    values = np.array([[-0.0, 1.0, np.inf], [0.0, -0.0, -np.inf], [5.0, 2.5, 1e308]])
    _, v2 = _roundtrip(_times(3), values)
    assert np.array_equal(values.view("<i8"), v2.view("<i8"))


def test_a_wrong_adc_hint_costs_room_never_data() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (200, 4))
    wrong = (np.full(4, 0.1), np.zeros(4))
    _, v2 = _roundtrip(_times(200), values, wrong)
    assert np.array_equal(values.view("<i8"), v2.view("<i8"))


def test_quantised_streams_take_a_fraction_of_float64() -> None:
    rng = np.random.default_rng(4)
    rows = 1000
    t = _times(rows, 2e-5)
    raw = 8 * rows * 33  # float64 timestamps and 32 channels
    adc = np.cumsum(rng.integers(-300, 300, (rows, 32)), axis=0)
    scale, offset = np.full(32, float(np.float32(0.0625))), np.full(32, -12.0)
    blob = codec.encode_samples(0, t, adc * scale + offset, (scale, offset))
    assert len(blob) < 0.45 * raw
    hr = rng.integers(55, 90, (rows, 1)).astype(float)
    assert len(codec.encode_samples(0, t, hr)) < 0.45 * 8 * rows * 2
    temp = np.round(rng.normal(36.6, 0.2, (rows, 1)), 2)
    assert len(codec.encode_samples(0, t, temp)) < 0.45 * 8 * rows * 2
    noise = rng.normal(0, 20, (rows, 32))  # incompressible: stored about as is
    assert len(codec.encode_samples(0, t, noise)) < 1.02 * raw


def _v1_blob(layout: int, t: np.ndarray, values: np.ndarray) -> bytes:
    """A chunk as the first release wrote it: header, t section, values, shuffled+deflated."""
    def pack(arr: np.ndarray) -> bytes:
        return zlib.compress(arr.reshape(-1).view(np.uint8).reshape(-1, 8).T.tobytes(), 1)

    t_b, v_b = pack(t.astype("<f8")), pack(np.ascontiguousarray(values, "<f8"))
    return struct.pack("<BBHI", 1, 3, layout, t.shape[0]) + struct.pack("<I", len(t_b)) + t_b + v_b


def test_version_1_chunks_still_decode() -> None:
    values = np.arange(30.0).reshape(10, 3) / 7.0
    t = _times(10)
    layout, t2, v2 = codec.decode_samples(_v1_blob(0, t, values), [3])
    assert layout == 0
    assert np.array_equal(t, t2) and np.array_equal(values, v2)


def test_damaged_plaintext_is_undecodable_not_a_crash() -> None:
    hint = (np.full(2, 0.5), np.zeros(2))
    blob = codec.encode_samples(0, _times(300), np.arange(600.0).reshape(300, 2), hint)
    assert blob[0] == 2  # hinted and big enough: the analysed form
    for cut in (3, 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(codec.Undecodable):
            codec.decode_samples(blob[:cut], [2])
    bad_mode = bytearray(blob)
    bad_mode[8] = 9  # the first channel's storage form
    with pytest.raises(codec.Undecodable, match="unknown mode"):
        codec.decode_samples(bytes(bad_mode), [2])


def test_adc_hint_is_read_from_the_batch_meta_and_ignored_when_malformed() -> None:
    def b(meta: dict) -> SampleBatch:
        return SampleBatch("s", ("a", "b"), ("uV", "uV"), np.zeros(1), np.zeros((1, 2)), meta)

    got = adc_affine(b({"adc_scale": [0.5, 0.25], "adc_offset": [0.0, 1.0]}))
    assert got is not None and got[0].tolist() == [0.5, 0.25] and got[1].tolist() == [0.0, 1.0]
    for meta in ({}, {"adc_scale": [0.5], "adc_offset": [0.0]},
                 {"adc_scale": [0.5, 0.0], "adc_offset": [0.0, 0.0]},
                 {"adc_scale": ["x", 1], "adc_offset": [0, 0]},
                 {"adc_scale": [0.5, float("nan")], "adc_offset": [0, 0]}):
        assert adc_affine(b(meta)) is None


def test_serial_bridge_values_are_stored_as_integers_and_read_back_exactly(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    ints = np.cumsum(rng.integers(-2000, 2000, (500, 8)), axis=0).astype(np.int32)
    scale = np.array([float(np.float32(x)) for x in rng.uniform(0.001, 0.1, 8)])
    offset = np.zeros(8)
    values = ints * scale + offset
    meta = {"adc_scale": scale.tolist(), "adc_offset": offset.tolist()}
    chans = tuple(f"c{i}" for i in range(8))
    store = TwinStore.create(tmp_path / "home", Secret.passphrase(PASS))
    try:
        store.append_samples(SampleBatch("fnirs", chans, ("au",) * 8, _times(500), values, meta))
        store.commit()
        (got,) = list(store.read_samples("fnirs"))
        assert np.array_equal(got.values.view("<i8"), values.view("<i8"))
        sealed = store._conn.execute("SELECT length(sealed) FROM chunk").fetchone()[0]
        assert sealed < 0.5 * values.nbytes  # float64 would not fit
    finally:
        store.close()


def test_power_of_two_steps_are_stored_as_integers() -> None:
    rng = np.random.default_rng(8)
    rows = 1000
    n = np.cumsum(rng.integers(-40, 40, (rows, 4)), axis=0)
    values = n * (1000 / 2048)  # a Muse-like EEG step in uV
    wrong = (np.full(4, 0.3), np.zeros(4))  # a hinted chunk whose hint fits no channel
    blob = codec.encode_samples(0, _times(rows), values, wrong)
    assert blob[0] == 2 and blob[8:12] == bytes([4, 4, 4, 4])  # every channel: binary integers
    assert len(blob) < 0.3 * 8 * rows * 5
    _, v2 = _roundtrip(_times(rows), values, wrong)
    assert np.array_equal(values.view("<i8"), v2.view("<i8"))


def test_unhinted_chunks_are_version_3_and_smaller_than_version_1() -> None:
    rng = np.random.default_rng(11)
    t = T0 + np.arange(256) / 256.0  # a regular stream: its time deltas are one number
    eeg = np.round(rng.normal(0, 50, (256, 4)) / 0.48828125) * 0.48828125
    blob = codec.encode_samples(0, t, eeg)
    assert blob[0] == 3
    assert len(blob) < len(codec._encode_samples_v1(0, t, eeg)) < 8 * 256 * 5
    layout, t2, v2 = codec.decode_samples(blob, [4])
    assert layout == 0 and np.array_equal(t.view("<i8"), t2.view("<i8"))
    assert np.array_equal(eeg.view("<i8"), v2.view("<i8"))
    assert t2.flags.writeable and v2.flags.writeable and v2.flags.c_contiguous


def test_version_3_keeps_what_does_not_compress_raw() -> None:
    rng = np.random.default_rng(12)
    tiny = codec.encode_samples(0, np.array([T0]), np.array([[61.0]]))
    assert tiny[0] == 3 and tiny[1] == 0 and len(tiny) == 8 + 16  # header, t, one value
    t = np.sort(rng.uniform(-1e11, 1e11, 100))
    noise = rng.normal(0, 1, (100, 6))
    blob = codec.encode_samples(0, t, noise)
    assert blob[1] == 0 and len(blob) == 8 + 8 * 100 * 7
    _, t2, v2 = codec.decode_samples(blob, [6])
    assert np.array_equal(t, t2) and np.array_equal(noise, v2)


def test_damaged_version_3_chunks_are_undecodable() -> None:
    values = np.round(np.sin(np.arange(1000.0)), 2).reshape(500, 2)
    blob = codec.encode_samples(0, _times(500), values)
    assert blob[0] == 3 and blob[1] != 0
    for cut in (3, 8, 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(codec.Undecodable):
            codec.decode_samples(blob[:cut], [2])
    with pytest.raises(codec.Undecodable, match="bytes, not"):
        codec.decode_samples(blob, [3])  # read as three channels: the sizes disagree
    raw = codec.encode_samples(0, _times(2), np.zeros((2, 1)))
    with pytest.raises(codec.Undecodable, match="bytes, not"):
        codec.decode_samples(raw + b"x", [1])
