"""XDF recordings in (LabRecorder's format): signal streams become twin sample batches,
marker streams become markers.

Reading is two passes over the file:

1. :func:`scan` walks the chunk structure itself (no pyxdf) and checks every chunk:
   the magic, each chunk's length prefix and length against the file's end, the
   stream headers (XML, channel format and count), every sample of every Samples
   chunk (its timestamp flag, its values, that they end exactly where the chunk
   does), clock offsets, and that every stream has its StreamFooter. A problem is
   an :class:`XdfProblem` naming the stream and the byte offset.
2. ``pyxdf.load_xdf`` reads the streams with clock synchronisation (the
   ClockOffset chunks) and dejittering on.

A file with problems is refused (``MalformedInput``, exit 4) with the first one
and a count of the rest, and nothing is stored. With ``salvage`` the readable
chunks (and the complete samples of a chunk cut mid-way) are reassembled in
memory and read instead; the problems are returned so the caller can say what
was lost.

Times: XDF timestamps are LSL clock seconds (since some machine's boot) unless a
writer put Unix time in them. Epoch-like times (after 1973) are taken as they
are; otherwise the recording is placed by the FileHeader's ``<datetime>`` (the
earliest sample of any stream is taken to be that moment, so the placement is as
good as the header's one-second resolution, while the streams keep their exact
alignment to one another), or by ``start`` when the caller gives it.

Channels are mapped as an LSL inlet maps them (:func:`edgetwin.sources.lsl.map_channels`):
the stream's ``<desc><channels>`` labels, types and units onto the twin's names
and units (``eeg_fz`` in µV, ``accel_x`` in g, ...), unknown types kept as raw
channels. A stream's name is sanitised into a twin stream name (lower case,
digits, ``_``, at most 32 characters; a repeated name gets ``_2``).

Marker streams: every ``string`` stream, and numeric streams of type Markers /
Events / Stim at an irregular rate. Each sample is a marker with source
``xdf:<stream name>``; control characters are escaped, over-long text is cut
(:func:`edgetwin.types.escape_marker_text`), empty strings are skipped.
"""

from __future__ import annotations

import datetime as dt
import heapq
import io
import logging
import math
import mmap
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetwin.errors import DriverMissing, MalformedInput, UsageError
from edgetwin.types import (
    MARKER_SOURCE_MAX,
    FloatArray,
    Marker,
    SampleBatch,
    escape_marker_text,
)

_LOGGER = logging.getLogger(__name__)

MAX_XDF_BYTES = 1 << 30  # pyxdf holds the whole recording in memory
MAX_CHANNELS = 4096
MAX_XML_BYTES = 1 << 20  # a header or footer; LabRecorder's are a few kB
EPOCH_MIN = 1e8  # 1973: earlier "times" are LSL clock seconds since a boot
BATCH_S = 10.0  # seconds of samples per batch, streams interleaved by time as if live
BATCH_ROWS = 4096
MARKER_TYPES = frozenset({"markers", "marker", "events", "event", "stim", "triggers"})

_MAGIC = b"XDF:"
_TAGS = {1: "FileHeader", 2: "StreamHeader", 3: "Samples", 4: "ClockOffset", 5: "Boundary",
         6: "StreamFooter"}
_WITH_STREAM = (2, 3, 4, 6)
_VALUE_BYTES = {"float32": 4, "double64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
                "string": 0}


@dataclass(frozen=True)
class XdfProblem:
    """Damage found by :func:`scan`: what, where (byte offset) and in which stream."""

    offset: int
    what: str
    stream: str | None = None  # "'EEG' (id 2)"

    def __str__(self) -> str:
        where = f"stream {self.stream} at byte {self.offset:,}" if self.stream else (
            f"at byte {self.offset:,}")
        return f"{where}: {self.what}"


@dataclass
class _Header:
    sid: int
    name: str
    type: str
    fmt: str
    count: int
    srate: float
    offset: int

    @property
    def label(self) -> str:
        return f"{self.name!r} (id {self.sid})"


@dataclass
class ScanResult:
    """What :func:`scan` found: the problems and the readable bytes."""

    size: int
    problems: list[XdfProblem] = field(default_factory=list)
    # byte ranges of the complete, valid chunks, plus rebuilt chunks (a cut one's samples)
    pieces: list[tuple[int, int] | bytes] = field(default_factory=list)
    streams: dict[int, _Header] = field(default_factory=dict)

    def readable(self, data: bytes | mmap.mmap) -> bytes:
        """The file as it would be with only its readable chunks."""
        parts = [_MAGIC]
        for piece in self.pieces:
            parts.append(piece if isinstance(piece, bytes) else bytes(data[piece[0]:piece[1]]))
        return b"".join(parts)


@dataclass
class XdfStream:
    """One stream as read: metadata and samples (``values`` numeric, ``strings`` for text)."""

    stream_id: int
    name: str
    type: str
    channel_format: str
    channel_count: int
    nominal_srate: float
    channels: list[dict[str, str]]
    source_id: str
    hostname: str
    t: FloatArray
    values: FloatArray | None = None
    strings: list[list[str]] | None = None

    @property
    def is_marker(self) -> bool:
        return self.strings is not None or (
            self.type.strip().lower() in MARKER_TYPES and self.nominal_srate == 0
        )


@dataclass
class XdfRecording:
    """A read XDF file: its streams with times in epoch seconds, and what salvage dropped."""

    path: Path
    streams: list[XdfStream]
    problems: list[XdfProblem]
    clock: str  # "epoch" | "datetime" | "start": how the times were placed
    shift_s: float  # added to every synchronised timestamp

    def markers(self) -> list[Marker]:
        """Every marker stream's samples as markers, by time (empty texts skipped)."""
        out: list[Marker] = []
        for s in self.streams:
            if not s.is_marker:
                continue
            source = "xdf:" + (escape_marker_text(s.name, limit=MARKER_SOURCE_MAX - 4) or
                               str(s.stream_id))
            for i, t in enumerate(s.t):
                if s.strings is not None:
                    raw = " | ".join(x for x in s.strings[i] if x)
                else:
                    assert s.values is not None
                    raw = " | ".join(_number_text(v) for v in s.values[i] if math.isfinite(v))
                text = escape_marker_text(raw)
                if text:
                    out.append(Marker(float(t), text, source))
        out.sort(key=lambda m: (m.t, m.source, m.text))
        return out

    def signal_streams(self, prefix: str | None = None) -> list[tuple[str, XdfStream]]:
        """(twin stream name, stream) of every signal stream with samples."""
        out: list[tuple[str, XdfStream]] = []
        used: set[str] = set()
        for s in self.streams:
            if s.is_marker or s.values is None or not s.t.size:
                continue
            name = twin_stream_name(s.name, s.stream_id, prefix)
            base, k = name, 2
            while name in used:
                suffix = f"_{k}"
                name = base[: 32 - len(suffix)] + suffix
                k += 1
            used.add(name)
            out.append((name, s))
        return out

    def batches(self, prefix: str | None = None) -> Iterator[SampleBatch]:
        """Sample batches of every signal stream, interleaved by time as a live twin gets them."""
        from edgetwin.sources.lsl import map_channels

        iters = []
        for order, (name, s) in enumerate(self.signal_streams(prefix)):
            cmap = map_channels({"channel_count": s.channel_count, "channels": s.channels,
                                 "type": s.type})
            meta = {"origin": "xdf", "xdf_stream": s.name, "xdf_type": s.type,
                    "nominal_srate": s.nominal_srate}
            iters.append(_stream_batches(name, s, cmap.names, cmap.units,
                                         np.asarray(cmap.scale, dtype=np.float64), meta, order))
        for _t, _order, _seq, batch in heapq.merge(*iters):
            yield batch


def twin_stream_name(name: str, stream_id: int, prefix: str | None = None) -> str:
    """An XDF stream's name as a twin stream name: ``"EEG (Muse)"`` -> ``eeg_muse``."""
    from edgetwin.sources.lsl import sanitize

    base = sanitize(name)[:32] or f"xdf{stream_id}"
    if prefix:
        base = f"{prefix}_{base}"
    base = base[:32].rstrip("_-")
    if not base[:1].isalnum():
        base = f"x{base}"[:32]
    return base


def scan(data: bytes | mmap.mmap) -> ScanResult:
    """Check the chunk structure of an XDF file (see the module docstring)."""
    size = len(data)
    result = ScanResult(size=size)
    if size < 4 or data[:4] != _MAGIC:
        result.problems.append(XdfProblem(0, "not an XDF file: it does not start with 'XDF:'"))
        return result
    pos = 4
    footers: set[int] = set()
    while pos < size:
        start = pos
        nbytes = data[pos]
        if nbytes not in (1, 4, 8):
            result.problems.append(XdfProblem(
                start, f"a chunk's length prefix is {nbytes} (1, 4 or 8 expected): the "
                "file is damaged from here on"))
            break
        if pos + 1 + nbytes > size:
            result.problems.append(XdfProblem(start, "the file ends inside a chunk header"))
            break
        length = int.from_bytes(data[pos + 1:pos + 1 + nbytes], "little")
        body = pos + 1 + nbytes
        end = body + length
        if length < 2:
            result.problems.append(XdfProblem(
                start, f"a chunk declares {length} bytes (too short for its tag): the file "
                "is damaged from here on"))
            break
        if body + 2 > size:
            result.problems.append(XdfProblem(start, "the file ends inside a chunk header"))
            break
        tag = int.from_bytes(data[body:body + 2], "little")
        kind = _TAGS.get(tag, f"unknown (tag {tag})")
        sid: int | None = None
        header: _Header | None = None
        if tag in _WITH_STREAM:
            if body + 6 > size or length < 6:
                result.problems.append(XdfProblem(
                    start, f"{kind} chunk too short for its stream id"))
                break
            sid = int.from_bytes(data[body + 2:body + 6], "little")
            header = result.streams.get(sid)
        label = header.label if header else (f"id {sid}" if sid is not None else None)
        if end > size:
            what = (f"{kind} chunk is cut off: it declares {length:,} bytes but the file ends "
                    f"{size - body:,} bytes into it (the recorder stopped mid-write)")
            if tag == 3 and header is not None:
                n, rebuilt = _salvage_samples(data, body + 6, size, header, sid or 0)
                what += f"; {n} complete sample(s) in it can be kept"
                if rebuilt:
                    result.pieces.append(rebuilt)
            result.problems.append(XdfProblem(start, what, label))
            break
        problem = _check_chunk(data, tag, body, end, sid, result, footers)
        if problem is not None:
            header = result.streams.get(sid) if sid is not None else None
            label = header.label if header else label
            result.problems.append(XdfProblem(start, problem, label))
        else:
            result.pieces.append((start, end))
        pos = end
    for sid, header in result.streams.items():
        if sid not in footers:
            result.problems.append(XdfProblem(
                size, "no StreamFooter before the end of the file (the recorder did not "
                "close the file)", header.label))
    result.problems.sort(key=lambda p: p.offset)
    return result


def read_xdf(
    path: Path,
    *,
    salvage: bool = False,
    start: float | None = None,
    latest: float | None = None,
    earliest: float = EPOCH_MIN,
) -> XdfRecording:
    """Read and check an XDF file: MalformedInput with the first problem unless ``salvage``.

    ``start`` (epoch seconds) places a recording whose times are LSL clock seconds;
    every time must then lie within ``earliest`` .. ``latest`` (None: no limit).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recording {path} does not exist or is not a regular file",
                         hint="check the path")
    size = path.stat().st_size
    if size > MAX_XDF_BYTES:
        raise MalformedInput(
            f"{path.name} is {size / 2**20:,.0f} MiB; XDF files up to "
            f"{MAX_XDF_BYTES / 2**20:,.0f} MiB are read (they are held in memory)",
            hint="split the recording, or export its streams to CSV and ingest those")
    if size == 0:
        raise MalformedInput(f"{path.name} is empty", hint="check the file")
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        found = scan(data)
        if found.problems and (not salvage or data[:4] != _MAGIC):
            first = found.problems[0]
            more = len(found.problems) - 1
            raise MalformedInput(
                f"{path.name}: {first}" + (f" (and {more} more problem(s))" if more else ""),
                hint=("nothing was stored; --salvage stores what is readable"
                      if data[:4] == _MAGIC else "is this an XDF file?"),
            )
        source: io.BytesIO | Path = io.BytesIO(found.readable(data)) if found.problems else path
        when = _header_datetime(data)
    for p in found.problems:
        _LOGGER.warning("%s: %s; salvaged what was readable", path.name, p)
    raw = _load(source, path)
    streams = [_stream_of(s) for s in raw]
    clock, shift = _placement(path, streams, start, when)
    for s in streams:
        s.t = s.t + shift
        _check_window(path, s, earliest, latest)
    return XdfRecording(path, streams, found.problems, clock, shift)


# -- private helpers --------------------------------------------------------------------


def _check_chunk(
    data: bytes | mmap.mmap, tag: int, body: int, end: int, sid: int | None,
    result: ScanResult, footers: set[int],
) -> str | None:
    """What is wrong with one complete chunk; None if it is readable."""
    if tag == 1:
        return _xml_problem(data[body + 2:end], "FileHeader")[1]
    if tag == 2:
        assert sid is not None
        if sid in result.streams:
            return f"a second StreamHeader for stream id {sid}"
        root, problem = _xml_problem(data[body + 6:end], "StreamHeader")
        if root is None:
            return problem
        header, problem = _header_of(root, sid, body - 1)
        if header is None:
            return problem
        result.streams[sid] = header
        return None
    if tag == 3:
        assert sid is not None
        header = result.streams.get(sid)
        if header is None:
            return f"Samples chunk for stream id {sid}, which has no StreamHeader before it"
        return _samples_problem(data, body + 6, end, header)
    if tag == 4:
        if end - body != 2 + 4 + 16:
            return f"ClockOffset chunk of {end - body} bytes (22 expected)"
        times = struct.unpack_from("<dd", data, body + 6)
        if not all(math.isfinite(x) for x in times):
            return "ClockOffset chunk holds a non-finite time"
        if sid not in result.streams:
            return f"ClockOffset chunk for stream id {sid}, which has no StreamHeader before it"
        return None
    if tag == 6:
        assert sid is not None
        if sid not in result.streams:
            return f"StreamFooter for stream id {sid}, which has no StreamHeader before it"
        problem = _xml_problem(data[body + 6:end], "StreamFooter")[1]
        if problem is None:
            footers.add(sid)
        return problem
    return None  # Boundary and tags this reader does not know: skipped, as the spec says


def _xml_problem(raw: bytes, what: str) -> tuple[ET.Element | None, str | None]:
    if len(raw) > MAX_XML_BYTES:
        return None, f"{what} XML of {len(raw):,} bytes (at most {MAX_XML_BYTES:,})"
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        return None, f"{what} XML declares a DOCTYPE or entities (refused: entity expansion)"
    try:
        # DOCTYPE and entities are refused just above, so no expansion attack can reach it
        return ET.fromstring(raw.decode("utf-8")), None  # noqa: S314
    except (ET.ParseError, UnicodeDecodeError) as exc:
        return None, f"{what} XML does not parse ({exc})"


def _header_of(root: ET.Element, sid: int, offset: int) -> tuple[_Header | None, str | None]:
    name = (root.findtext("name") or "").strip()
    fmt = (root.findtext("channel_format") or "").strip()
    if fmt not in _VALUE_BYTES:
        return None, (f"stream {name!r} (id {sid}) has channel_format {fmt!r} "
                      f"(one of {', '.join(_VALUE_BYTES)} expected)")
    try:
        count = int((root.findtext("channel_count") or "").strip())
    except ValueError:
        return None, f"stream {name!r} (id {sid}) has no readable channel_count"
    if not 1 <= count <= MAX_CHANNELS:
        return None, f"stream {name!r} (id {sid}) has {count} channels (1..{MAX_CHANNELS})"
    try:
        srate = float((root.findtext("nominal_srate") or "0").strip())
    except ValueError:
        srate = -1.0
    if not math.isfinite(srate) or srate < 0:
        return None, f"stream {name!r} (id {sid}) has a nominal_srate that is not a rate"
    stype = (root.findtext("type") or "").strip()
    return _Header(sid, name, stype, fmt, count, srate, offset), None


def _samples_problem(data: bytes | mmap.mmap, pos: int, end: int, h: _Header) -> str | None:
    n, stop, problem = _walk_samples(data, pos, end, h)
    if problem is not None:
        return problem
    if stop != end:
        return f"Samples chunk holds {end - stop:,} bytes after its {n} sample(s)"
    return None


def _walk_samples(
    data: bytes | mmap.mmap, pos: int, end: int, h: _Header, *, offsets: list[int] | None = None
) -> tuple[int, int, str | None]:
    """(samples walked, position after the last complete one, problem or None)."""
    got = _varlen(data, pos, end)
    if got is None:
        return 0, pos, "Samples chunk has no readable sample count"
    declared, pos = got
    width = _VALUE_BYTES[h.fmt] * h.count
    for k in range(declared):
        if pos >= end:
            return k, pos, f"Samples chunk ends after {k} of its {declared} samples"
        flag = data[pos]
        if flag not in (0, 8):
            return k, pos, f"sample {k + 1} of a Samples chunk has timestamp flag {flag}"
        nxt = pos + 1 + flag
        if flag == 8 and nxt <= end and not math.isfinite(
            struct.unpack_from("<d", data, pos + 1)[0]
        ):
            return k, pos, f"sample {k + 1} of a Samples chunk has a non-finite timestamp"
        if width:
            nxt += width
        else:
            for _ in range(h.count):
                got = _varlen(data, nxt, end)
                if got is None:
                    return k, pos, f"sample {k + 1} of a Samples chunk ends inside a string"
                strlen, nxt = got
                nxt += strlen
        if nxt > end:
            return k, pos, f"Samples chunk ends inside sample {k + 1} of its {declared}"
        pos = nxt
        if offsets is not None:
            offsets.append(pos)
    return declared, pos, None


def _salvage_samples(
    data: bytes | mmap.mmap, pos: int, size: int, h: _Header, sid: int
) -> tuple[int, bytes | None]:
    """The complete samples of a Samples chunk cut by the end of the file, as a chunk."""
    got = _varlen(data, pos, size)
    if got is None:
        return 0, None
    _declared, first = got
    offsets: list[int] = []
    _walk_samples(data, pos, size, h, offsets=offsets)
    if not offsets:
        return 0, None
    n = len(offsets)
    content = struct.pack("<HI", 3, sid) + b"\x04" + struct.pack("<I", n) + bytes(
        data[first:offsets[-1]])
    return n, b"\x08" + struct.pack("<Q", len(content)) + content


def _varlen(data: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int] | None:
    if pos >= end:
        return None
    nbytes = data[pos]
    if nbytes not in (1, 4, 8) or pos + 1 + nbytes > end:
        return None
    return int.from_bytes(data[pos + 1:pos + 1 + nbytes], "little"), pos + 1 + nbytes


def _load(source: io.BytesIO | Path, path: Path) -> list[dict[str, Any]]:
    try:
        import pyxdf
    except ImportError as exc:
        raise DriverMissing("reading XDF needs the pyxdf package",
                            hint="pip install pyxdf") from exc
    # pyxdf logs what it repairs (clock resets, breaks) at WARNING: ours to report, not its
    pyxdf_logger = logging.getLogger("pyxdf.pyxdf")
    level = pyxdf_logger.level
    pyxdf_logger.setLevel(logging.ERROR)
    try:
        streams, _header = pyxdf.load_xdf(
            source, synchronize_clocks=True, dejitter_timestamps=True
        )
    except (ValueError, struct.error, OSError, RuntimeError, KeyError, IndexError,
            ET.ParseError, np.linalg.LinAlgError) as exc:
        raise MalformedInput(
            f"{path.name}: pyxdf could not read it after its structure checked out ({exc})",
            hint="report the file; nothing was stored") from exc
    finally:
        pyxdf_logger.setLevel(level)
    return list(streams)


def _text(info: dict[str, Any], key: str) -> str:
    value = info.get(key)
    if isinstance(value, list) and value:
        value = value[0]
    return value.strip() if isinstance(value, str) else ""


def _stream_of(raw: dict[str, Any]) -> XdfStream:
    info = raw["info"]
    fmt = _text(info, "channel_format")
    count = int(_text(info, "channel_count"))
    channels: list[dict[str, str]] = []
    desc = info.get("desc")
    desc0 = desc[0] if isinstance(desc, list) and desc and isinstance(desc[0], dict) else {}
    chans = desc0.get("channels")
    if isinstance(chans, list) and chans and isinstance(chans[0], dict):
        for ch in chans[0].get("channel") or []:
            if isinstance(ch, dict):
                channels.append({k: _text(ch, k) for k in ("label", "unit", "type")})
    t = np.asarray(raw["time_stamps"], dtype=np.float64).reshape(-1)
    series = raw["time_series"]
    stream = XdfStream(
        stream_id=int(info["stream_id"]),
        name=_text(info, "name"),
        type=_text(info, "type"),
        channel_format=fmt,
        channel_count=count,
        nominal_srate=float(_text(info, "nominal_srate") or 0.0),
        channels=channels[:count],
        source_id=_text(info, "source_id"),
        hostname=_text(info, "hostname"),
        t=t,
    )
    if fmt == "string":
        stream.strings = [[str(x) for x in row] for row in series]
    else:
        values = np.asarray(series, dtype=np.float64).reshape(t.shape[0], count)
        stream.values = values
    if t.size > 1 and np.any(np.diff(t) < 0):  # a clock reset pyxdf could not repair
        order = np.argsort(t, kind="stable")
        stream.t = t[order]
        if stream.values is not None:
            stream.values = stream.values[order]
        if stream.strings is not None:
            stream.strings = [stream.strings[i] for i in order]
        _LOGGER.warning("XDF stream %r: timestamps went backwards; sorted", stream.name)
    return stream


def _placement(
    path: Path, streams: list[XdfStream], start: float | None, when: float | None
) -> tuple[str, float]:
    """How the synchronised times become epoch seconds: (how, shift)."""
    firsts = [float(s.t[0]) for s in streams if s.t.size]
    if not firsts:
        return "epoch", 0.0
    first = min(firsts)
    if start is not None:
        return "start", start - first
    if first >= EPOCH_MIN:
        return "epoch", 0.0
    if when is None:
        raise MalformedInput(
            f"{path.name}: its times are LSL clock seconds ({first:,.3f} s on the recording "
            "machine's clock) and its FileHeader has no <datetime> to place them in time",
            hint="pass --start TIME: when the recording's first sample was taken",
        )
    return "datetime", when - first


def _header_datetime(data: bytes | mmap.mmap) -> float | None:
    """The FileHeader's ``<datetime>`` as epoch seconds (local time when it has no zone)."""
    size = len(data)
    got = _varlen(data, 4, size)
    if got is None:
        return None
    length, body = got
    if body + length > size or int.from_bytes(data[body:body + 2], "little") != 1:
        return None
    root, _problem = _xml_problem(bytes(data[body + 2:body + length]), "FileHeader")
    text = (root.findtext("datetime") or "").strip() if root is not None else ""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        _LOGGER.warning("XDF FileHeader datetime %r is not an ISO time; ignored", text)
        return None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def _check_window(path: Path, s: XdfStream, earliest: float, latest: float | None) -> None:
    if not s.t.size:
        return
    lo, hi = float(s.t.min()), float(s.t.max())
    if lo < earliest or (latest is not None and hi > latest):
        # the first sample out of the window
        bad = lo if lo < earliest or latest is None else float(s.t[np.argmax(s.t > latest)])
        when = dt.datetime.fromtimestamp(bad, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") \
            if -1e10 < bad < 1e11 else f"{bad:g} s"
        raise MalformedInput(
            f"{path.name}: stream {s.name!r} (id {s.stream_id}) has a sample at {when}, "
            + ("before 1973" if lo < earliest else "more than a day ahead of this machine's clock"),
            hint=("--start TIME places a recording whose clock is off; "
                  "--allow-future accepts future times"),
        )


def _stream_batches(
    name: str, s: XdfStream, channels: tuple[str, ...], units: tuple[str, ...],
    scale: FloatArray, meta: dict[str, Any], order: int,
) -> Iterator[tuple[float, int, int, SampleBatch]]:
    assert s.values is not None
    n = s.t.shape[0]
    i = seq = 0
    while i < n:
        j = min(n, i + BATCH_ROWS, int(np.searchsorted(s.t, s.t[i] + BATCH_S, side="left")))
        j = max(j, i + 1)
        values = s.values[i:j] * scale
        batch = SampleBatch(name, channels, units, s.t[i:j].copy(), values, dict(meta))
        yield float(s.t[i]), order, seq, batch
        i, seq = j, seq + 1


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
