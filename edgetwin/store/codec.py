"""Plaintext encodings of stored chunks, and AES-256-GCM sealing with bound associated data.

A sample chunk is ``header | t | values``: float64 arrays, each section
optionally byte-shuffled (byte ``k`` of every number together) and deflated
when that saves at least an eighth — timestamps of a regular stream and
quantised sensor values shrink a lot, white noise does not and is stored raw.
Values stay float64: the store gives back exactly what it was given.

Every sealed blob is ``nonce(12) | ciphertext | tag(16)``; its associated data
names the twin, the table, and every clear column of its row, so a blob that
is swapped, replayed into another row, moved to another stream or truncated
fails authentication.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
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


class Undecodable(Exception):
    """A plaintext that authenticated but does not parse (a bug or a foreign writer)."""


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


def encode_samples(layout: int, t: FloatArray, values: FloatArray) -> bytes:
    """One chunk of a stream: timestamps and a rows x channels float64 matrix."""
    flags = 0
    t_bytes, packed = _pack(np.ascontiguousarray(t, dtype="<f8"))
    flags |= _FLAG_T_PACKED if packed else 0
    v_bytes, packed = _pack(np.ascontiguousarray(values, dtype="<f8"))
    flags |= _FLAG_V_PACKED if packed else 0
    return b"".join(
        (
            _SAMPLE_HEADER.pack(1, flags, layout, t.shape[0]),
            _SECTION.pack(len(t_bytes)),
            t_bytes,
            v_bytes,
        )
    )


def decode_samples(data: bytes, n_channels_of: list[int]) -> tuple[int, FloatArray, FloatArray]:
    """(layout index, t, values) of a sample chunk."""
    try:
        version, flags, layout, rows = _SAMPLE_HEADER.unpack_from(data, 0)
        if version != 1 or layout >= len(n_channels_of):
            raise Undecodable(f"sample chunk version {version}, layout {layout}")
        pos = _SAMPLE_HEADER.size
        (t_len,) = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        t = _unpack(data[pos : pos + t_len], flags & _FLAG_T_PACKED, rows)
        values = _unpack(
            data[pos + t_len :], flags & _FLAG_V_PACKED, rows * n_channels_of[layout]
        ).reshape(rows, n_channels_of[layout])
    except (struct.error, ValueError, zlib.error) as exc:
        raise Undecodable(str(exc)) from exc
    return layout, t, values


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


def decode_frames(data: bytes) -> list[FeatureFrame]:
    """The frames of a chunk written by :func:`encode_frames`."""
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
    values = values.reshape(n, width)
    quality = quality.reshape(n, width)
    return [
        FeatureFrame(
            t=float(t[i]),
            values=values[i].copy(),
            quality=quality[i].copy(),
            imputed=imputed[i].copy(),
            schema_version=int(schema),
        )
        for i in range(n)
    ]


# -- predictions and JSON documents -------------------------------------------------


def encode_predictions(preds: list[Prediction]) -> bytes:
    """A deflated JSON list of the DESIGN.md prediction objects."""
    return encode_json([p.to_json() for p in preds])


def decode_predictions(data: bytes) -> list[Prediction]:
    """The predictions of a chunk written by :func:`encode_predictions`."""
    items = decode_json(data)
    if not isinstance(items, list):
        raise Undecodable("prediction chunk is not a list")
    try:
        return [Prediction.from_json(obj) for obj in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise Undecodable(str(exc)) from exc


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


def _unpack(blob: bytes, packed: int, count: int) -> FloatArray:
    if packed:
        shuffled = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
        if shuffled.shape[0] != count * 8:
            raise ValueError("packed section has the wrong length")
        out = np.ascontiguousarray(shuffled.reshape(8, count).T).view("<f8").reshape(count)
    else:
        if len(blob) != count * 8:
            raise ValueError("section has the wrong length")
        out = np.frombuffer(blob, dtype="<f8").copy()
    return out.astype(np.float64, copy=False)
