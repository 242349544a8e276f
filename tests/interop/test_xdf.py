"""XDF in: files written here chunk by chunk following the XDF 1.0 specification (there is
no pyxdf writer), read by the real pyxdf through ``edgetwin ingest``.

The recording: an EEG stream (250 Hz, 4 channels) on a machine whose clock runs 2.5 s
ahead of the recorder's, an ECG stream (100 Hz) on one 11 s behind, and a marker stream
0.75 s ahead, each with its ClockOffset chunks; one event happens at the same true time
in all three (a spike in Fz and in the ECG, and the marker "event").
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest

from edgetwin.errors import MalformedInput
from edgetwin.interop.xdf import read_xdf, scan, twin_stream_name
from edgetwin.store import Secret, TwinStore

PASS = "correct horse battery staple"
EPOCH = 1_700_000_000.0  # the FileHeader's <datetime>: when the first sample was taken
R0 = 5000.0  # the recorder's LSL clock at that moment (seconds since its boot)
EVENT_S = 7.3  # the event, seconds after the first sample, on every stream's sample grid
DURATION_S = 20.0
EEG_AHEAD, ECG_AHEAD, MARK_AHEAD = 2.5, -11.0, 0.75  # stream clock minus recorder clock


@dataclass
class XdfWriter:
    """Writes the XDF chunk format: magic, then [NumLengthBytes][Length][Tag][Content]."""

    buf: bytearray = field(default_factory=lambda: bytearray(b"XDF:"))
    chunks: list[tuple[int, int, int | None]] = field(default_factory=list)  # (offset, tag, sid)

    def chunk(self, tag: int, content: bytes, sid: int | None = None) -> None:
        body = struct.pack("<H", tag) + (struct.pack("<I", sid) if sid is not None else b"")
        body += content
        n = len(body)
        prefix = (b"\x01" + struct.pack("<B", n) if n < 256 else
                  b"\x04" + struct.pack("<I", n) if n < 2**32 else b"\x08" + struct.pack("<Q", n))
        self.chunks.append((len(self.buf), tag, sid))
        self.buf += prefix + body

    def file_header(self, datetime: str | None) -> None:
        when = f"<datetime>{datetime}</datetime>" if datetime else ""
        self.chunk(1, f'<?xml version="1.0"?><info><version>1.0</version>{when}</info>'.encode())

    def stream_header(self, sid: int, name: str, stype: str, fmt: str, srate: float,
                      channels: list[tuple[str, str, str]]) -> None:
        chans = "".join(
            f"<channel><label>{escape(lb)}</label><unit>{u}</unit><type>{t}</type></channel>"
            for lb, u, t in channels)
        xml = (f'<?xml version="1.0"?><info><name>{escape(name)}</name><type>{stype}</type>'
               f"<channel_count>{len(channels)}</channel_count><nominal_srate>{srate}"
               f"</nominal_srate><channel_format>{fmt}</channel_format>"
               f"<source_id>src{sid}</source_id><hostname>lab</hostname>"
               f"<desc><channels>{chans}</channels></desc></info>")
        self.chunk(2, xml.encode(), sid)

    def samples(self, sid: int, fmt: str, stamps: np.ndarray, rows: list) -> None:  # type: ignore[type-arg]
        out = bytearray(b"\x04" + struct.pack("<I", len(stamps)))
        code = {"float32": "f", "double64": "d", "int32": "i", "int16": "h"}.get(fmt)
        for ts, row in zip(stamps, rows, strict=True):
            out += b"\x08" + struct.pack("<d", float(ts))
            if code is None:  # string
                for text in row:
                    raw = text.encode()
                    out += b"\x04" + struct.pack("<I", len(raw)) + raw
            else:
                out += struct.pack(f"<{len(row)}{code}", *row)
        self.chunk(3, bytes(out), sid)

    def clock_offset(self, sid: int, collected: float, offset: float) -> None:
        self.chunk(4, struct.pack("<dd", collected, offset), sid)

    def footer(self, sid: int, first: float, last: float, count: int) -> None:
        xml = (f'<?xml version="1.0"?><info><first_timestamp>{first}</first_timestamp>'
               f"<last_timestamp>{last}</last_timestamp><sample_count>{count}</sample_count>"
               "</info>")
        self.chunk(6, xml.encode(), sid)

    def write(self, path: Path) -> Path:
        path.write_bytes(bytes(self.buf))
        return path


def recording(*, datetime: str | None = "2023-11-14T22:13:20+00:00", footers: bool = True,
              markers: list[tuple[float, str]] | None = None) -> XdfWriter:
    """The three-stream recording of the module docstring (times in recorder seconds)."""
    rng = np.random.default_rng(7)
    w = XdfWriter()
    w.file_header(datetime)
    w.stream_header(1, "EEG (Muse S)", "EEG", "float32", 250.0,
                    [("Fz", "microvolts", "EEG"), ("Cz", "microvolts", "EEG"),
                     ("Pz", "microvolts", "EEG"), ("Oz", "microvolts", "EEG")])
    w.stream_header(2, "Polar ECG", "ECG", "double64", 100.0, [("ECG1", "millivolts", "ECG")])
    w.stream_header(3, "Markers", "Markers", "string", 0.0, [("marker", "", "Markers")])
    eeg_n, ecg_n = int(DURATION_S * 250), int((DURATION_S - 0.5) * 100)
    eeg_true = R0 + np.arange(eeg_n) / 250.0
    ecg_true = R0 + 0.5 + np.arange(ecg_n) / 100.0
    eeg = rng.normal(0, 5, size=(eeg_n, 4))
    eeg[round(EVENT_S * 250), 0] = 400.0  # the event in Fz
    ecg = rng.normal(0, 0.05, size=ecg_n)
    ecg[round((EVENT_S - 0.5) * 100)] = 3.0  # and in the ECG (mV)
    mark = markers if markers is not None else [
        (1.0, "start"), (EVENT_S, "event"), (12.0, "bell\x07 ring"), (DURATION_S - 1, "end")]
    # stream clocks, with a millisecond of jitter on the EEG and ECG stamps
    eeg_ts = eeg_true + EEG_AHEAD + rng.uniform(-1e-3, 1e-3, eeg_n)
    ecg_ts = ecg_true + ECG_AHEAD + rng.uniform(-1e-3, 1e-3, ecg_n)
    for second in range(int(DURATION_S)):
        now = R0 + second
        if second % 2 == 0:  # LabRecorder measures offsets every few seconds
            w.clock_offset(1, now + EEG_AHEAD, -EEG_AHEAD)
            w.clock_offset(2, now + ECG_AHEAD, -ECG_AHEAD)
            w.clock_offset(3, now + MARK_AHEAD, -MARK_AHEAD)
        a = (eeg_true >= now) & (eeg_true < now + 1)
        w.samples(1, "float32", eeg_ts[a], eeg[a].tolist())
        b = (ecg_true >= now) & (ecg_true < now + 1)
        if b.any():
            w.samples(2, "double64", ecg_ts[b], [[v] for v in ecg[b]])
        for t, text in mark:
            if now <= R0 + t < now + 1:
                w.samples(3, "string", np.array([R0 + t + MARK_AHEAD]), [[text]])
    if footers:
        w.footer(1, eeg_ts[0], eeg_ts[-1], eeg_n)
        w.footer(2, ecg_ts[0], ecg_ts[-1], ecg_n)
        w.footer(3, R0 + MARK_AHEAD, R0 + DURATION_S, len(mark))
    return w


@pytest.fixture
def twin(run_cli, home: Path):  # type: ignore[no-untyped-def]
    result = run_cli("init")
    assert result.exit_code == 0, result.output
    return home


def _open(home: Path) -> TwinStore:
    return TwinStore.open(home, Secret.passphrase(PASS))


def _samples(store: TwinStore, stream: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    parts = list(store.read_samples(stream))
    return (np.concatenate([p.t for p in parts]), np.concatenate([p.values for p in parts]),
            parts[0].channels)


def test_streams_are_aligned_across_clocks_and_markers_stored(
    run_cli, twin: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    path = recording().write(tmp_path / "session.xdf")
    result = run_cli("--json", "ingest", str(path))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["streams"] == ["eeg_muse_s", "polar_ecg"]
    assert out["markers"] == 4 and out["marker_sources"] == ["xdf:Markers"]
    assert out["clock"] == "datetime" and out["salvaged"] == []
    with _open(twin) as store:
        t_eeg, v_eeg, ch_eeg = _samples(store, "eeg_muse_s")
        t_ecg, v_ecg, ch_ecg = _samples(store, "polar_ecg")
        marks = store.read_markers()
        info = {s.name: s for s in store.streams()}
    assert ch_eeg == ("eeg_fz", "eeg_cz", "eeg_pz", "eeg_oz")
    assert info["eeg_muse_s"].units == ("uV",) * 4
    assert ch_ecg == ("ecg_ecg1",) and info["polar_ecg"].units == ("uV",)
    assert np.abs(v_ecg).max() == pytest.approx(3000.0)  # millivolts -> µV
    assert len(t_eeg) == 5000 and len(t_ecg) == 1950
    # the first sample of the recording is placed at the header's datetime
    assert t_eeg[0] == pytest.approx(EPOCH, abs=2e-3)
    event = EPOCH + EVENT_S
    t_spike_eeg = t_eeg[np.argmax(v_eeg[:, 0])]
    t_spike_ecg = t_ecg[np.argmax(v_ecg[:, 0])]
    by_text = {m.text: m for m in marks}
    # the same true moment in three streams on three clocks: within a few ms of each other
    assert t_spike_eeg == pytest.approx(event, abs=3e-3)
    assert t_spike_ecg == pytest.approx(event, abs=3e-3)
    assert by_text["event"].t == pytest.approx(event, abs=3e-3)
    assert by_text["start"].t == pytest.approx(EPOCH + 1.0, abs=3e-3)
    assert by_text["bell\\x07 ring"].source == "xdf:Markers"  # control character escaped
    # a second ingest of the same file adds no duplicate markers
    assert run_cli("ingest", str(path)).exit_code == 0
    with _open(twin) as store:
        assert len(store.read_markers()) == 4


def test_a_truncated_file_is_refused_naming_stream_and_offset_and_salvage_keeps_the_rest(
    run_cli, twin: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    w = recording()
    # cut the file in the middle of the EEG samples chunk of second 12
    eeg_chunks = [(off, sid) for off, tag, sid in w.chunks if tag == 3 and sid == 1]
    cut_at = eeg_chunks[12][0]
    data = bytes(w.buf)
    path = tmp_path / "crashed.xdf"
    path.write_bytes(data[: cut_at + 6 + 1 + 4 + 5 + 40 * (9 + 16) + 7])  # 40 whole samples
    result = run_cli("ingest", str(path))
    assert result.exit_code == 4
    assert (f"stream 'EEG (Muse S)' (id 1) at byte {cut_at:,}: Samples chunk is cut off"
            in result.output), result.output
    assert "40 complete sample(s) in it can be kept" in result.output
    assert "--salvage" in result.output
    with _open(twin) as store:
        assert store.streams() == [] and store.read_markers() == []  # nothing stored

    result = run_cli("--json", "ingest", "--salvage", str(path))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert any("cut off" in p for p in out["salvaged"])
    assert any("'Polar ECG' (id 2) at byte" in p and "no StreamFooter" in p
               for p in out["salvaged"])
    with _open(twin) as store:
        t_eeg, v_eeg, _ = _samples(store, "eeg_muse_s")
        texts = [m.text for m in store.read_markers()]
    assert len(t_eeg) == 12 * 250 + 40  # every whole chunk before the cut, and its 40 samples
    assert t_eeg[np.argmax(v_eeg[:, 0])] == pytest.approx(EPOCH + EVENT_S, abs=3e-3)
    assert texts == ["start", "event"]  # the marker written after the cut is gone


def test_missing_footers_are_refused_until_salvaged(
    run_cli, twin: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    path = recording(footers=False).write(tmp_path / "nofooter.xdf")
    size = path.stat().st_size
    result = run_cli("ingest", str(path))
    assert result.exit_code == 4
    assert (f"stream 'EEG (Muse S)' (id 1) at byte {size:,}: no StreamFooter before the end "
            "of the file (the recorder did not close the file) (and 2 more problem(s))"
            in result.output), result.output
    result = run_cli("ingest", "--salvage", str(path))
    assert result.exit_code == 0, result.output
    with _open(twin) as store:
        assert len(_samples(store, "eeg_muse_s")[0]) == 5000
        assert len(store.read_markers()) == 4


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d, w: b"XDF!" + d[4:], "not an XDF file"),
        (lambda d, w: d[: w.chunks[5][0]] + b"\x03" + d[w.chunks[5][0] + 1:],
         "length prefix is 3"),
        # a Samples chunk whose sample count says one more than it holds
        (lambda d, w: _bump_count(d, w),  # noqa: PLW0108 - defined below the table
         r"stream 'EEG \(Muse S\)' \(id 1\) at byte [0-9,]+: Samples "
         r"chunk ends after 250 of its 251 samples"),
        (lambda d, w: d.replace(b"<channel_format>double64", b"<channel_format>float128"),
         "channel_format 'float128'"),
        (lambda d, w: d.replace(b"<info><version>", b"<!DOCTYPE x [<!ENTITY a 'b'>]><info>"
                                b"<version>", 1), "DOCTYPE"),
    ],
)
def test_damaged_files_give_precise_errors(tmp_path: Path, damage, match: str) -> None:  # type: ignore[no-untyped-def]
    w = recording()
    path = tmp_path / "bad.xdf"
    path.write_bytes(damage(bytes(w.buf), w))
    with pytest.raises(MalformedInput, match=match):
        read_xdf(path)


def _bump_count(data: bytes, w: XdfWriter) -> bytes:
    off = next(o for o, tag, sid in w.chunks if tag == 3 and sid == 1)
    count_at = off + 1 + 4 + 2 + 4 + 1  # prefix(1+4), tag, stream id, count's own prefix
    (n,) = struct.unpack_from("<I", data, count_at)
    return data[:count_at] + struct.pack("<I", n + 1) + data[count_at + 4:]


def test_lsl_clock_without_a_datetime_needs_start(
    run_cli, twin: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    path = recording(datetime=None).write(tmp_path / "nodate.xdf")
    result = run_cli("ingest", str(path))
    assert result.exit_code == 4
    assert "LSL clock seconds" in result.output and "--start" in result.output
    result = run_cli("--json", "ingest", "--start", str(EPOCH + 100), str(path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["clock"] == "start"
    with _open(twin) as store:
        assert store.read_markers()[0].t == pytest.approx(EPOCH + 101.0, abs=3e-3)


def test_future_times_are_refused_unless_allowed(tmp_path: Path) -> None:
    path = recording(datetime="2400-01-01T00:00:00+00:00").write(tmp_path / "future.xdf")
    with pytest.raises(MalformedInput, match=r"stream 'EEG \(Muse S\)' \(id 1\) has a sample "
                       r"at 2400-01-01 00:00:00Z, more than a day ahead"):
        read_xdf(path, latest=EPOCH + 86400 * 365)
    assert read_xdf(path, latest=None).clock == "datetime"


def test_scan_of_a_good_file_finds_nothing(tmp_path: Path) -> None:
    w = recording()
    found = scan(bytes(w.buf))
    assert found.problems == []
    assert [h.name for h in found.streams.values()] == ["EEG (Muse S)", "Polar ECG", "Markers"]


def test_stream_names_are_sanitised_for_the_twin() -> None:
    assert twin_stream_name("EEG (Muse S)", 1) == "eeg_muse_s"
    assert twin_stream_name("  ", 7) == "xdf7"
    assert twin_stream_name("Ω/\x1b[31m", 3) == "31m"
    assert twin_stream_name("A" * 50, 1, prefix="lab") == "lab_" + "a" * 28


def test_numeric_event_streams_empty_markers_and_repeated_names(
    run_cli, twin: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    w = XdfWriter()
    w.file_header("2023-11-14T22:13:20+00:00")
    w.stream_header(1, "Resp", "RESP", "float32", 10.0, [("belt", "a.u.", "RESP")])
    w.stream_header(2, "Resp", "RESP", "float32", 10.0, [("belt", "a.u.", "RESP")])
    w.stream_header(3, "Trigger codes", "Events", "int32", 0.0, [("code", "", "Events")])
    w.stream_header(4, "Notes", "Markers", "string", 0.0, [("note", "", "Markers")])
    t = R0 + np.arange(50) / 10.0
    w.samples(1, "float32", t, [[1.0] for _ in t])
    w.samples(2, "float32", t, [[2.0] for _ in t])
    w.samples(3, "int32", np.array([R0 + 1.0, R0 + 2.0]), [[17], [0]])
    w.samples(4, "string", np.array([R0 + 1.5, R0 + 2.5]), [[""], ["  spaced  "]])
    for sid in (1, 2, 3, 4):
        w.footer(sid, R0, R0 + 5, 0)
    path = w.write(tmp_path / "mixed.xdf")
    result = run_cli("--json", "ingest", "--stream", "lab", str(path))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["streams"] == ["lab_resp", "lab_resp_2"]
    with _open(twin) as store:
        got = [(m.text, m.source) for m in store.read_markers()]
        assert _samples(store, "lab_resp_2")[1].max() == 2.0
        assert _samples(store, "lab_resp")[2] == ("resp",)
    # an int code stream is markers ("0" is a code too); an empty string is skipped
    assert got == [("17", "xdf:Trigger codes"), ("0", "xdf:Trigger codes"),
                   ("spaced", "xdf:Notes")]


def test_cut_or_corrupted_anywhere_is_a_precise_error_or_a_salvage_never_a_crash(
    tmp_path: Path,
) -> None:
    data = bytes(recording().buf)
    rng = np.random.default_rng(11)
    path = tmp_path / "hostile.xdf"
    variants = [data[:c] for c in rng.integers(5, len(data), 15)]
    for _ in range(15):
        d = bytearray(data)
        for _k in range(int(rng.integers(1, 6))):
            d[int(rng.integers(4, len(d)))] = int(rng.integers(0, 256))
        variants.append(bytes(d))
    salvaged = 0
    errors: list[str] = []
    for v in variants:
        path.write_bytes(v)
        for salvage in (False, True):
            try:
                rec = read_xdf(path, salvage=salvage, latest=None)
            except MalformedInput as exc:
                errors.append(str(exc))
            else:
                salvaged += salvage and bool(rec.problems)
    assert salvaged >= 12  # the cut files gave back what they held
    assert errors and all("at byte" in e or "stream" in e for e in errors), errors
