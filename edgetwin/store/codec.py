"""Plaintext encodings of stored chunks, and AES-256-GCM sealing with bound associated data.

A sample chunk is ``header | t | values``: float64 arrays, byte-shuffled (byte
``k`` of every number together) and compressed when that saves at least an
eighth — timestamps of a regular stream and quantised sensor values shrink a
lot, white noise does not and is stored raw. Version 3 (written today) holds both
sections in one Zstandard frame; version 1 (earlier releases) deflated each section
on its own and still reads. Values stay float64 on the way out: the store gives back
exactly what it was given, bit for bit (see :func:`encode_samples` for the compact
exact forms of version 2).

Every sealed blob is ``nonce(12) | ciphertext | tag(16)``; its associated data
names the twin, the table, and every clear column of its row, so a blob that
is swapped, replayed into another row, moved to another stream or truncated
fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.types import FeatureFrame, FloatArray, Prediction

NONCE_BYTES = 12
TAG_BYTES = 16
_SAMPLE_HEADER = struct.Struct("<BBHI")  # version, flags, layout index, rows
_FRAME_HEADER = struct.Struct("<BBHIH")  # version, flags, features, rows, schema version
_SECTION = struct.Struct("<I")
_FLAG_T_PACKED = 1
_FLAG_V_PACKED = 2
_FLAG_Q_PACKED = 4
_FLAG_NAN = 8
_FLAG_ZSTD = 16  # version 3: the body (shuffled t and values) is one Zstandard frame
_ZSTD_LEVEL = 1  # measured on the store bench: ~3x faster than deflate level 1, and smaller
# how a sample channel is stored (codec version 2)
_MODE_F8 = 0
_MODE_F4 = 1
_MODE_DECIMAL = 2
_MODE_AFFINE = 3
_MODE_BINARY = 4
_MAX_BINARY_PLACES = 40
_MIN_ROWS_V2 = 16
_MIN_CELLS_V2 = 512
_NEG_ZERO_BITS = np.int64(-(2**63))
_MANTISSA = np.int64(2**52 - 1)
_HIDDEN_BIT = np.int64(2**52)
_MAX_DECIMALS = 6
_POW10 = [10.0**k for k in range(_MAX_DECIMALS + 1)]
_MAX_EXACT_INT = 2.0**53
_PROBE_ROWS = 8
_POW10_COL = np.array([10.0**k for k in range(1, 7)])[:, None, None]  # decimal k = 1..6


class Undecodable(Exception):
    """A plaintext that authenticated but does not parse (a bug or a foreign writer)."""


class _Zstd(threading.local):
    """A Zstandard compressor and decompressor per thread (their contexts are not thread-safe;
    making one per call costs as much as compressing a second of EEG)."""

    def __init__(self) -> None:
        self.c = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self.d = zstandard.ZstdDecompressor()


_ZSTD = _Zstd()


def seal(aead: AESGCM, plaintext: bytes, ad: bytes) -> bytes:
    """Encrypt and authenticate under a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, plaintext, ad)


def open_sealed(aead: AESGCM, sealed: bytes, ad: bytes) -> bytes:
    """Decrypt; InvalidTag on any change to blob or associated data."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise InvalidTag
    return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)


def chunk_ad(twin_id: bytes, sid: bytes, seq: int, key_id: int, b0: int, b1: int) -> bytes:
    """Associated data of a time-series chunk row."""
    return b"edgetwin/chunk/v1\x00" + twin_id + sid + struct.pack("<qqqq", seq, key_id, b0, b1)


def series_ad(twin_id: bytes, sid: bytes, key_id: int) -> bytes:
    """Associated data of a series' info row."""
    return b"edgetwin/series/v1\x00" + twin_id + sid + struct.pack("<q", key_id)


def record_ad(twin_id: bytes, rid: bytes, kh: bytes, key_id: int) -> bytes:
    """Associated data of a record row."""
    return b"edgetwin/record/v1\x00" + twin_id + rid + kh + struct.pack("<q", key_id)


def audit_ad(twin_id: bytes, seq: int) -> bytes:
    """Associated data of an audit entry."""
    return b"edgetwin/audit/v1\x00" + twin_id + struct.pack("<q", seq)


# -- samples -------------------------------------------------------------------


def encode_samples(
    layout: int,
    t: FloatArray,
    values: FloatArray,
    affine: tuple[FloatArray, FloatArray] | None = None,
) -> bytes:
    """One chunk of a stream: timestamps and a rows x channels float64 matrix, losslessly.

    Without ``affine`` (and for small chunks) this is v3: float64 sections,
    shuffled and compressed together (v1 deflated them one by one). With it (a
    source that declares its ADC scale, as the serial bridge does), v2: each
    channel is stored as the smallest exact form that reproduces every value bit
    for bit: integers of an ADC (``n * scale + offset``, with ``affine`` from the
    source), integers at a decimal step (``n / 10**k``) or a power-of-two step
    (``n * 2**-k``), float32, or float64. Integers and the bit patterns of floats
    are delta-coded down the rows, zigzagged, byte-shuffled and deflated;
    timestamps as the second difference of their bit patterns, which is nearly
    all zeros for a regularly sampled stream.
    NaN (missing) is kept in a bitmap.
    """
    rows = int(t.shape[0])
    values = np.ascontiguousarray(values, dtype="<f8")
    n_ch = values.shape[1]
    if affine is None or rows < _MIN_ROWS_V2 or rows * n_ch < _MIN_CELLS_V2:
        # Measured (scripts/bench --only store): without an ADC hint the analysis and the
        # delta coding cost more append and read time than the few percent of disk they save
        # over v1's shuffled deflate; with one (the serial bridge) v2 is ~4x smaller and faster.
        return _encode_samples_v3(layout, t, values)
    modes = np.full(n_ch, _MODE_F8, dtype=np.uint8)
    params = np.zeros((n_ch, 2), dtype="<f8")
    ints = np.empty((rows, n_ch), dtype="<i8")
    with np.errstate(all="ignore"):
        nan = np.isnan(values)
        any_nan = bool(nan.any())
        clean = np.where(nan, 0.0, values) if any_nan else values
        todo = np.ones(n_ch, dtype=bool)
        # integers hold neither inf nor -0.0: such columns go to float32 or float64
        intable = np.isfinite(clean).all(axis=0)
        intable &= ~(clean.view("<i8") == _NEG_ZERO_BITS).any(axis=0)
        todo &= intable
        if affine is not None and todo.any():
            scale, offset = affine
            n = np.rint((clean - offset) / scale) + 0.0
            ok = _exact(n * scale + offset, clean, n) & todo
            _take(ok, _MODE_AFFINE, n, modes, ints, todo)
            params[ok, 0], params[ok, 1] = scale[ok], offset[ok]
        if todo.any():
            # integers at a power-of-two step (whole numbers, most ADC scales): the step is
            # read off the float bits, so it is exact by construction
            places = _binary_places(clean)
            ok = todo & (places <= _MAX_BINARY_PLACES)
            ok[ok] &= np.abs(clean[:, ok]).max(axis=0) * 2.0 ** places[ok] < _MAX_EXACT_INT
            if ok.any():
                n = clean * np.exp2(np.where(ok, places, 0))
                _take(ok, _MODE_BINARY, n, modes, ints, todo)
                params[ok, 0] = places[ok]
        if todo.any():
            # decimal steps (a sensor that reports 36.61): every k on a few rows, then the
            # smallest that fits there checked on all rows
            cols = np.flatnonzero(todo)
            head = clean[:_PROBE_ROWS, cols]
            n_head = np.rint(head[None] * _POW10_COL) + 0.0
            fits = _exact_k(n_head / _POW10_COL, head, n_head)  # (k, cols)
            for j, c in enumerate(cols):
                ks = np.flatnonzero(fits[:, j])
                if not ks.size:
                    continue
                k = int(ks[0]) + 1
                col = clean[:, c]
                n = np.rint(col * _POW10[k]) + 0.0
                if _exact((n / _POW10[k])[:, None], col[:, None], n[:, None])[0]:
                    modes[c], params[c, 0], ints[:, c], todo[c] = _MODE_DECIMAL, k, n, False
        todo |= ~intable & (modes == _MODE_F8)
        if todo.any():
            cols = np.flatnonzero(todo)
            f4 = clean[:, cols].astype("<f4")
            ok_sub = (f4.astype("<f8").view("<i8") == clean[:, cols].view("<i8")).all(axis=0)
            good = cols[ok_sub]
            modes[good] = _MODE_F4
            ints[:, good] = f4[:, ok_sub].view("<i4")
            todo[good] = False
        f8 = modes == _MODE_F8
        if f8.all():
            return _encode_samples_v3(layout, t, values)  # nothing to gain: white noise
        if f8.any():
            ints[:, f8] = values[:, f8].view("<i8")  # NaN payloads and all, bit for bit
        t_bits = np.ascontiguousarray(t, dtype="<f8").view("<i8")
        t_dd = np.diff(t_bits, n=2, prepend=np.zeros(2, dtype="<i8"))
        v_d = np.diff(ints, axis=0, prepend=np.zeros((1, n_ch), dtype="<i8"))
    flags = _FLAG_NAN if any_nan else 0
    t_blob, packed = _pack(_zigzag(t_dd))
    flags |= _FLAG_T_PACKED if packed else 0
    v_blob, packed = _pack(_zigzag(v_d))
    flags |= _FLAG_V_PACKED if packed else 0
    parts = [
        _SAMPLE_HEADER.pack(2, flags, layout, rows),
        modes.tobytes(),
        params.tobytes(),
        _SECTION.pack(len(t_blob)),
        t_blob,
        _SECTION.pack(len(v_blob)),
        v_blob,
    ]
    if any_nan:
        parts.append(np.packbits(nan).tobytes())
    return b"".join(parts)


def _encode_samples_v3(layout: int, t: FloatArray, values: FloatArray) -> bytes:
    """``header | body``: the timestamps' bit patterns delta-coded (a regular stream's are one
    number repeated) followed by the values' bits, byte-shuffled as one array (byte ``k`` of
    every number together) in one Zstandard frame when that saves an eighth, else the
    float64 timestamps and values raw."""
    rows = t.shape[0]
    t = np.ascontiguousarray(t, dtype="<f8")
    n = rows * (1 + values.shape[1])
    if n >= 8:
        bits = t.view("<i8")
        words = np.empty(n, dtype="<i8")
        words[0] = bits[0]
        np.subtract(bits[1:], bits[:-1], out=words[1:rows])  # wraps; cumsum undoes it
        words[rows:] = values.reshape(-1).view("<i8")
        packed = _ZSTD.c.compress(words.view(np.uint8).reshape(n, 8).T.tobytes())
        if len(packed) <= 7 * n:
            return _SAMPLE_HEADER.pack(3, _FLAG_ZSTD, layout, rows) + packed
    return b"".join((_SAMPLE_HEADER.pack(3, 0, layout, rows), t.tobytes(), values.tobytes()))


def _decode_samples_v3(
    data: bytes, flags: int, rows: int, n_ch: int
) -> tuple[FloatArray, FloatArray]:
    n = rows * (1 + n_ch)
    body = memoryview(data)[_SAMPLE_HEADER.size :]
    if flags & _FLAG_ZSTD:
        try:
            size = zstandard.frame_content_size(body)
            if size != 8 * n:
                raise Undecodable(f"sample chunk body holds {size} bytes, not {8 * n}")
            plain = np.frombuffer(_ZSTD.d.decompress(body), dtype=np.uint8)
        except zstandard.ZstdError as exc:
            raise Undecodable(f"sample chunk body: {exc}") from exc
        if plain.shape[0] != 8 * n:
            raise Undecodable(f"sample chunk body holds {plain.shape[0]} bytes, not {8 * n}")
        words = np.ascontiguousarray(plain.reshape(8, n).T).view("<i8").reshape(n)
        t = np.cumsum(words[:rows], dtype="<i8").view("<f8")
        return t, words[rows:].view("<f8").reshape(rows, n_ch)
    if len(body) != 8 * n:
        raise Undecodable(f"sample chunk holds {len(body)} bytes, not {8 * n}")
    flat = np.frombuffer(body, dtype="<f8").copy()
    return flat[:rows], flat[rows:].reshape(rows, n_ch)


def _encode_samples_v1(layout: int, t: FloatArray, values: FloatArray) -> bytes:
    """The first format (written by releases before version 3; kept to test that such
    chunks still read): float64 sections, shuffled and deflated when that pays."""
    flags = 0
    t_bytes, packed = _pack(np.ascontiguousarray(t, dtype="<f8"))
    flags |= _FLAG_T_PACKED if packed else 0
    v_bytes, packed = _pack(values)
    flags |= _FLAG_V_PACKED if packed else 0
    return b"".join((_SAMPLE_HEADER.pack(1, flags, layout, t.shape[0]),
                     _SECTION.pack(len(t_bytes)), t_bytes, v_bytes))


def _binary_places(x: FloatArray) -> npt.NDArray[np.int64]:
    """Per column, the fractional binary digits its values need (0 for whole numbers):
    a value is ``odd * 2**(e + tz)`` with ``tz`` the trailing zeros of its mantissa."""
    bits = x.view("<i8")
    biased = (bits >> 52) & 0x7FF
    mant = bits & _MANTISSA
    full = np.where(biased > 0, mant | _HIDDEN_BIT, mant)
    low = full & -full  # lowest set bit (0 for zero)
    tz = np.log2(np.maximum(low, 1).astype(np.float64)).astype(np.int64)
    need = -(np.maximum(biased, 1) - 1075 + tz)
    need = np.where(full == 0, 0, np.maximum(need, 0))
    out: npt.NDArray[np.int64] = need.max(axis=0)
    return out


def _exact_k(recon: FloatArray, want: FloatArray, n: FloatArray) -> npt.NDArray[np.bool_]:
    """:func:`_exact` for a stack of candidates ``(k, rows, cols)`` -> ``(k, cols)``."""
    small = (np.abs(n) < _MAX_EXACT_INT).all(axis=1)
    same = (np.ascontiguousarray(recon).view("<i8") == want.view("<i8")[None]).all(axis=1)
    out: npt.NDArray[np.bool_] = small & same
    return out


def decode_samples(data: bytes, n_channels_of: list[int]) -> tuple[int, FloatArray, FloatArray]:
    """(layout index, t, values) of a sample chunk."""
    try:
        version, flags, layout, rows = _SAMPLE_HEADER.unpack_from(data, 0)
        if version not in (1, 2, 3) or layout >= len(n_channels_of):
            raise Undecodable(f"sample chunk version {version}, layout {layout}")
        n_ch = n_channels_of[layout]
        if version == 3:
            return layout, *_decode_samples_v3(data, flags, rows, n_ch)
        if version == 1:
            return layout, *_decode_samples_v1(data, flags, rows, n_ch)
        pos = _SAMPLE_HEADER.size
        modes = np.frombuffer(data, dtype=np.uint8, count=n_ch, offset=pos)
        pos += n_ch
        params = np.frombuffer(data, dtype="<f8", count=2 * n_ch, offset=pos).reshape(n_ch, 2)
        pos += 16 * n_ch
        (t_len,) = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        t_dd = _unpack(data[pos : pos + t_len], flags & _FLAG_T_PACKED, rows, "<i8")
        pos += t_len
        (v_len,) = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        v_d = _unpack(data[pos : pos + v_len], flags & _FLAG_V_PACKED, rows * n_ch, "<i8")
        pos += v_len
        t_dd, v_d = _unzigzag(t_dd), _unzigzag(v_d)
        with np.errstate(over="ignore"):
            t = np.cumsum(np.cumsum(t_dd, dtype="<i8"), dtype="<i8").view("<f8")
            ints = np.cumsum(v_d.reshape(rows, n_ch), axis=0, dtype="<i8")
        values = np.empty((rows, n_ch), dtype=np.float64)
        if (modes > _MODE_BINARY).any():
            bad = int(modes[modes > _MODE_BINARY][0])
            raise Undecodable(f"sample chunk channel {int(np.argmax(modes > _MODE_BINARY))}: "
                              f"unknown mode {bad}")
        for mode in np.unique(modes):  # all columns of one form at once
            cols = modes == mode
            col = ints[:, cols]
            if mode == _MODE_AFFINE:
                values[:, cols] = col.astype(np.float64) * params[cols, 0] + params[cols, 1]
            elif mode == _MODE_DECIMAL:
                values[:, cols] = col.astype(np.float64) / np.power(10.0, params[cols, 0])
            elif mode == _MODE_BINARY:
                values[:, cols] = col.astype(np.float64) * np.exp2(-params[cols, 0])
            elif mode == _MODE_F4:
                values[:, cols] = col.astype("<i4").view("<f4")
            else:
                values[:, cols] = col.view("<f8")
        if flags & _FLAG_NAN:
            bits = np.frombuffer(data, dtype=np.uint8, offset=pos)
            nan = np.unpackbits(bits, count=rows * n_ch).astype(bool).reshape(rows, n_ch)
            nan &= modes != _MODE_F8  # float64 channels kept their NaNs bit for bit
            values[nan] = np.nan
    except (struct.error, ValueError, zlib.error) as exc:
        raise Undecodable(str(exc)) from exc
    return layout, t.copy(), values


def _decode_samples_v1(
    data: bytes, flags: int, rows: int, n_ch: int
) -> tuple[FloatArray, FloatArray]:
    pos = _SAMPLE_HEADER.size
    (t_len,) = _SECTION.unpack_from(data, pos)
    pos += _SECTION.size
    t = _unpack(data[pos : pos + t_len], flags & _FLAG_T_PACKED, rows)
    values = _unpack(data[pos + t_len :], flags & _FLAG_V_PACKED, rows * n_ch).reshape(rows, n_ch)
    return t, values


def _zigzag(d: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """Signed to unsigned with small magnitudes small (0, -1, 1, -2 -> 0, 1, 2, 3): the high
    bytes of a small negative difference become zeros too, so they deflate away."""
    out: npt.NDArray[np.uint64] = ((d << 1) ^ (d >> 63)).view("<u8")
    return out


def _unzigzag(z: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    u = z.view("<u8")
    out: npt.NDArray[np.int64] = (u >> np.uint64(1)).view("<i8") ^ -(u & np.uint64(1)).view("<i8")
    return out


def _exact(recon: FloatArray, want: FloatArray, n: FloatArray) -> npt.NDArray[np.bool_]:
    """Per column: every value reproduced bit for bit, from integers a float64 holds exactly."""
    with np.errstate(invalid="ignore", over="ignore"):
        small = (np.abs(n) < _MAX_EXACT_INT).all(axis=0)
    same = (np.ascontiguousarray(recon).view("<i8") == want.view("<i8")).all(axis=0)
    out: npt.NDArray[np.bool_] = small & same
    return out


def _take(
    ok: npt.NDArray[np.bool_],
    mode: int,
    n: FloatArray,
    modes: npt.NDArray[np.uint8],
    ints: npt.NDArray[np.int64],
    todo: npt.NDArray[np.bool_],
) -> None:
    if ok.any():
        modes[ok] = mode
        ints[:, ok] = n[:, ok].astype("<i8")
        todo[ok] = False


# -- feature frames ---------------------------------------------------------------


def encode_frames(frames: list[FeatureFrame]) -> bytes:
    """Frames of one schema version and width, as column blocks."""
    n = len(frames)
    width = int(frames[0].values.shape[0])
    t = np.fromiter((f.t for f in frames), dtype="<f8", count=n)
    values = np.stack([np.asarray(f.values, dtype="<f8") for f in frames])
    quality = np.stack([np.asarray(f.quality, dtype="<f8") for f in frames])
    imputed = np.packbits(np.stack([np.asarray(f.imputed, dtype=bool) for f in frames]))
    flags = 0
    parts = []
    for arr, flag in ((t, _FLAG_T_PACKED), (values, _FLAG_V_PACKED), (quality, _FLAG_Q_PACKED)):
        blob, packed = _pack(arr)
        flags |= flag if packed else 0
        parts.append(_SECTION.pack(len(blob)) + blob)
    parts.append(imputed.tobytes())
    header = _FRAME_HEADER.pack(1, flags, width, n, frames[0].schema_version)
    return header + b"".join(parts)


@dataclass(frozen=True)
class FrameColumns:
    """The frames of one chunk as arrays: ``values[i]`` is the frame at ``t[i]``."""

    t: FloatArray
    values: FloatArray
    quality: FloatArray
    imputed: npt.NDArray[np.bool_]
    schema_version: int

    def rows(self, keep: npt.NDArray[np.bool_]) -> FrameColumns:
        return FrameColumns(self.t[keep], self.values[keep], self.quality[keep],
                            self.imputed[keep], self.schema_version)


def decode_frame_columns(data: bytes) -> FrameColumns:
    """The frames of a chunk written by :func:`encode_frames`, as columns (no objects)."""
    try:
        version, flags, width, n, schema = _FRAME_HEADER.unpack_from(data, 0)
        if version != 1:
            raise Undecodable(f"frame chunk version {version}")
        pos = _FRAME_HEADER.size
        arrays = []
        sections = ((_FLAG_T_PACKED, n), (_FLAG_V_PACKED, n * width), (_FLAG_Q_PACKED, n * width))
        for flag, count in sections:
            (length,) = _SECTION.unpack_from(data, pos)
            pos += _SECTION.size
            arrays.append(_unpack(data[pos : pos + length], flags & flag, count))
            pos += length
        bits = np.frombuffer(data, dtype=np.uint8, offset=pos)
        imputed = np.unpackbits(bits, count=n * width).astype(bool).reshape(n, width)
    except (struct.error, ValueError, zlib.error) as exc:
        raise Undecodable(str(exc)) from exc
    t, values, quality = arrays
    return FrameColumns(t, values.reshape(n, width), quality.reshape(n, width), imputed,
                        int(schema))


def decode_frames(data: bytes) -> list[FeatureFrame]:
    """The frames of a chunk written by :func:`encode_frames`."""
    cols = decode_frame_columns(data)
    return [
        FeatureFrame(
            t=float(cols.t[i]),
            values=cols.values[i].copy(),
            quality=cols.quality[i].copy(),
            imputed=cols.imputed[i].copy(),
            schema_version=cols.schema_version,
        )
        for i in range(cols.t.shape[0])
    ]


# -- predictions and JSON documents -------------------------------------------------


def encode_predictions(preds: list[Prediction]) -> bytes:
    """A deflated JSON list of predictions, their numbers as base64 float64 strings.

    The numbers of a forecast (attention over 60 context frames, the horizon, its band,
    the alternatives) are ~100 floats; parsing them as JSON numbers cost the day's refit
    ~5 s of its 10. A JSON string is copied, not parsed, and the bytes are exact (NaN too).
    Chunks written before 2026-12-04 hold the DESIGN.md objects and still read.
    """
    return encode_json([_stored_prediction(p) for p in preds])


def _stored_prediction(p: Prediction) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "t": p.t,
        "target": p.target,
        "step_s": p.step_s,
        "h": _f8_text(p.horizon),
        "band": _f8_text([x for pair in p.band for x in pair]),
        "attn": _f8_text(p.attention),
        "imp": _f8_text([x for span in p.imputed for x in span]),
        "model": p.model,
    }
    if p.anomaly:
        obj["anomaly"] = True
    if p.sources:
        obj["sources"] = list(p.sources)
    if p.alternatives:
        obj["alt"] = {k: _f8_text(v) for k, v in p.alternatives}
    if p.influence:
        obj["infl"] = _f8_text(p.influence)
    return obj


def decode_predictions(data: bytes, *, explained: bool = True) -> list[Prediction]:
    """The predictions of a chunk written by :func:`encode_predictions` (or, before it held
    numbers as strings, the DESIGN.md objects). ``explained=False`` leaves attention,
    influence and imputed spans empty (scoring reads a day of forecasts and needs none)."""
    items = decode_json(data)
    if not isinstance(items, list):
        raise Undecodable("prediction chunk is not a list")
    try:
        return [
            _read_prediction(obj, explained) if "h" in obj else _read_legacy(obj, explained)
            for obj in items
        ]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise Undecodable(f"prediction chunk: {exc}") from exc


def _read_prediction(obj: dict[str, Any], explained: bool) -> Prediction:
    band = _f8_of(obj["band"])
    imputed = _f8_of(obj["imp"]) if explained else []
    if len(band) % 2 or len(imputed) % 2:
        raise ValueError("a band or an imputed span has an odd count of bounds")
    alt = obj.get("alt", {})
    if not isinstance(alt, dict):
        raise TypeError("alternatives are not a mapping")
    return Prediction(
        t=float(obj["t"]),
        target=str(obj["target"]),
        step_s=float(obj["step_s"]),
        horizon=tuple(_f8_of(obj["h"])),
        band=tuple(zip(band[0::2], band[1::2], strict=True)),
        attention=tuple(_f8_of(obj["attn"])) if explained else (),
        imputed=tuple(zip(imputed[0::2], imputed[1::2], strict=True)),
        model=str(obj["model"]),
        anomaly=bool(obj.get("anomaly", False)),
        sources=tuple(str(x) for x in obj.get("sources", ())),
        alternatives=tuple((str(k), tuple(_f8_of(v))) for k, v in alt.items()),
        influence=tuple(_f8_of(obj.get("infl", ""))) if explained else (),
    )


def _read_legacy(obj: dict[str, Any], explained: bool) -> Prediction:
    if not explained:
        obj.update(attention=[], imputed=[], influence=[])
    return Prediction.from_json(obj)


def _f8_text(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode("ascii")


def _f8_of(text: str) -> list[float]:
    raw = binascii.a2b_base64(text, strict_mode=True)  # TypeError for what is not text
    if len(raw) % 8:
        raise ValueError(f"base64 float64 text of {len(raw)} bytes, not a multiple of 8")
    out: list[float] = np.frombuffer(raw, dtype="<f8").tolist()
    return out


def encode_json(obj: Any) -> bytes:
    """Compact JSON (NaN allowed), deflated."""
    return zlib.compress(
        json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), 1
    )


def deflate_json_text(text: str) -> bytes:
    """:func:`encode_json` of a document already serialised (compact JSON)."""
    return zlib.compress(text.encode("utf-8"), 1)


def decode_json(data: bytes) -> Any:
    try:
        return json.loads(zlib.decompress(data).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Undecodable(str(exc)) from exc


# -- private helpers -------------------------------------------------------------------


def _pack(arr: npt.NDArray[Any]) -> tuple[bytes, bool]:
    raw = arr.tobytes()
    if len(raw) < 64:
        return raw, False
    shuffled = arr.reshape(-1).view(np.uint8).reshape(-1, arr.dtype.itemsize).T.tobytes()
    packed = zlib.compress(shuffled, 1)
    if len(packed) <= len(raw) - len(raw) // 8:
        return packed, True
    return raw, False


def _unpack(blob: bytes, packed: int, count: int, dtype: str = "<f8") -> Any:
    if packed:
        shuffled = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
        if shuffled.shape[0] != count * 8:
            raise ValueError("packed section has the wrong length")
        return np.ascontiguousarray(shuffled.reshape(8, count).T).view(dtype).reshape(count)
    if len(blob) != count * 8:
        raise ValueError("section has the wrong length")
    return np.frombuffer(blob, dtype=dtype).copy()
