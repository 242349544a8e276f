"""Malformed gpsd JSON: precise errors that never quote the line, nothing invented, reconnect.

gpsd itself never sends broken JSON, so the peer here is a socket server speaking
gpsd's protocol (banner, then lines) that misbehaves on purpose: the outermost
boundary, as the emulated hardware of the other sources.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgetwin.errors import PairingRefused, TransientSourceError
from edgetwin.sources.gpsd import MAX_BAD_IN_A_ROW, GpsdSource, parse_tpv
from edgetwin.types import SampleBatch

BANNER = b'{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}\r\n'
EXACT_LAT, EXACT_LON = "45.760120000", "4.841930000"
GOOD = (b'{"class":"TPV","device":"/dev/pts/3","mode":2,"time":"2026-11-02T18:00:00.000Z",'
        b'"lat":' + EXACT_LAT.encode() + b',"lon":' + EXACT_LON.encode() + b'}\r\n')


def _tpv(t: str, extra: str = "") -> bytes:
    return (f'{{"class":"TPV","mode":2,"time":"{t}","lat":{EXACT_LAT},"lon":{EXACT_LON}'
            f'{extra}}}\r\n').encode()


class FakePeer:
    """A TCP server that greets with ``banner`` and then sends ``lines``."""

    def __init__(self, banner: bytes, lines: list[bytes], *, close: bool = False) -> None:
        self.banner = banner
        self.lines = lines
        self.close_after = close
        self.watch: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakePeer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.banner:
            writer.write(self.banner)
        self.watch.append(await reader.readline())
        for line in self.lines:
            writer.write(line)
            await writer.drain()
        if not self.close_after:
            await reader.read()  # until the client hangs up
        writer.close()


async def _take(src: GpsdSource, timeout: float = 3.0) -> AsyncIterator[SampleBatch]:
    it = src.stream().__aiter__()
    try:
        while True:
            try:
                yield await asyncio.wait_for(anext(it), timeout)
            except TimeoutError:
                return
    finally:
        await it.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("line", "problem"), [
    (b'{"class":"TPV","mode":2,"lat":45.7,"lon":\r\n', "not gpsd JSON: not valid JSON"),
    (b'{"class":"TPV","mode":2,"lat":NaN,"lon":4.8}\r\n', "NaN is not a number"),
    (b'["TPV"]\r\n', "a JSON list, not a gpsd report object"),
    (b'{"mode":2}\r\n', "report without a 'class' string"),
    (b'{"class":"TPV","mode":7,"lat":45.7,"lon":4.8}\r\n', "TPV 'mode' is not 0, 1, 2 or 3"),
    (b'{"class":"TPV","mode":2,"lat":"45.76012","lon":4.84193}\r\n', "TPV 'lat' is not a number"),
    (b'{"class":"TPV","mode":2,"lat":145.76012,"lon":4.84193}\r\n',
     "TPV 'lat' is outside -90..90 degrees"),
    (b'{"class":"TPV","mode":3,"lat":45.76012,"lon":4.84193,"time":"yesterday"}\r\n',
     "TPV 'time' is not an ISO 8601 time"),
    (b'{"class":"TPV","mode":3,"lat":45.76012,"lon":4.84193,"time":"2026-11-02T18:00:00"}\r\n',
     "TPV 'time' has no time zone"),
    (b'{"class":"TPV","mode":2,"lat":1' + b"0" * 80 + b',"lon":4.8}\r\n',
     "JSON number of 81 characters"),
    (b'{"a":' * 40 + b"1" + b"}" * 40 + b"\r\n", "nested deeper than 16 levels"),
    (b'\xff\xfe{"class":"TPV"}\r\n', "not UTF-8 text"),
])
def test_gpsd_malformed_report_is_named_precisely_without_its_values(
    line: bytes, problem: str
) -> None:
    with pytest.raises(ValueError) as err:
        parse_tpv(line)
    message = str(err.value)
    assert problem in message
    for value in ("45.7", "4.8", "145.76012", "yesterday"):
        assert value not in message


def test_gpsd_reports_without_a_fix_or_of_other_classes_are_skipped() -> None:
    assert parse_tpv(b'{"class":"SKY","satellites":[]}') is None
    assert parse_tpv(b'{"class":"TPV","mode":1,"time":"2026-11-02T18:00:00.000Z"}') is None
    assert parse_tpv(b'{"class":"TPV","mode":2}') is None  # position not yet filled in
    t, lat, lon = parse_tpv(GOOD)  # type: ignore[misc]
    assert (t, lat, lon) == (1793642400.0, 45.76012, 4.84193)
    with pytest.raises(ValueError, match="gpsd ERROR report"):
        parse_tpv(b'{"class":"ERROR","message":"Unrecognized request \'?FOO\'"}')


async def test_gpsd_bad_lines_are_counted_logged_once_and_the_good_ones_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = [_tpv("2026-11-02T18:00:00.000Z"), b'{"class":"TPV","mode":2,"lat":}\r\n',
             _tpv("2026-11-02T18:00:01.000Z"), b'{"class":"TPV","mode":2,"lat":"x","lon":1}\r\n',
             b"x" * 70_000 + b"\r\n", _tpv("2026-11-02T18:00:02.000Z"),
             _tpv("2026-11-02T18:00:01.500Z")]  # out of order: dropped
    caplog.set_level(logging.DEBUG, logger="edgetwin.sources.gpsd")
    async with FakePeer(BANNER, lines) as peer:
        src = GpsdSource("gps", "127.0.0.1", peer.port)
        await src.connect()
        got = [b async for b in _take(src, 1.5)]
        await src.close()
    assert peer.watch == [b'?WATCH={"enable":true,"json":true}\n']
    assert [float(b.t[0]) for b in got] == [1793642400.0, 1793642401.0, 1793642402.0]
    assert src.counters.bad_packets == 3 and src.counters.drops == 1
    problem = src.describe()["last_problem"]
    assert problem.startswith(f"gpsd at 127.0.0.1:{peer.port} sent a malformed report on line")
    assert "longer than 65536 bytes" in problem or "'lat' is not a number" in problem
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "line 3: not gpsd JSON" in warnings[0].getMessage()
    for record in caplog.records:  # nothing logged holds the position
        assert EXACT_LAT[:7] not in record.getMessage()
        assert EXACT_LON[:6] not in record.getMessage()


async def test_gpsd_a_stream_of_garbage_ends_the_session_for_a_reconnect() -> None:
    lines = [b"{not json}\r\n"] * (MAX_BAD_IN_A_ROW + 5)
    async with FakePeer(BANNER, lines) as peer:
        src = GpsdSource("gps", "127.0.0.1", peer.port)
        await src.connect()
        with pytest.raises(TransientSourceError, match=rf"{MAX_BAD_IN_A_ROW} malformed reports"):
            async for _ in src.stream():
                pass
        await src.close()
    assert src.counters.bad_packets == MAX_BAD_IN_A_ROW


@pytest.mark.parametrize(("banner", "problem"), [
    (b"HTTP/1.1 400 Bad Request\r\n", "is not gpsd's JSON VERSION banner"),
    (b'{"class":"DEVICES","devices":[]}\r\n', "first object has class 'DEVICES'"),
    (b'{"class":"VERSION","release":"2.39","proto_major":2}\r\n', "speaks gpsd protocol 2"),
])
async def test_gpsd_a_peer_that_is_not_gpsd_is_refused(banner: bytes, problem: str) -> None:
    async with FakePeer(banner, []) as peer:
        src = GpsdSource("gps", "127.0.0.1", peer.port, connect_timeout_s=2.0)
        with pytest.raises(PairingRefused, match=problem):
            await src.connect()
        assert src._writer is None  # nothing left open
        await src.close()


async def test_gpsd_silent_peer_is_refused_after_the_timeout() -> None:
    async with FakePeer(b"", []) as peer:
        src = GpsdSource("gps", "127.0.0.1", peer.port, connect_timeout_s=0.5)
        with pytest.raises(PairingRefused, match=r"sent no gpsd VERSION banner within 0\.5 s"):
            await src.connect()


async def test_gpsd_closing_mid_stream_is_transient(caplog: Any) -> None:
    async with FakePeer(BANNER, [_tpv("2026-11-02T18:00:00.000Z")], close=True) as peer:
        src = GpsdSource("gps", "127.0.0.1", peer.port)
        await src.connect()
        got: list[SampleBatch] = []

        async def drain() -> None:
            async for b in src.stream():
                got.append(b)

        with pytest.raises(TransientSourceError, match="closed the connection"):
            await drain()
        await src.close()
    assert len(got) == 1


class _Memory:
    """A PlaceMemory in a dict, whose stored history a test moves (as forget would)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.stored = False
        self.first_t: float | None = None
        self.saves = 0

    def load(self) -> tuple[dict[str, Any] | None, bool, float | None]:
        return self.state, self.stored, self.first_t

    def save(self, state: dict[str, Any]) -> None:
        self.state = state
        self.saves += 1


async def test_gpsd_place_memory_follows_a_forget_while_running() -> None:
    """The learned places are saved as they form, and cut when the stored history goes."""
    from datetime import UTC, datetime

    from tests.sources import gps_track

    def tpv(f: gps_track.Fix) -> bytes:
        when = datetime.fromtimestamp(f.t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return (f'{{"class":"TPV","mode":2,"time":"{when}","lat":{f.lat:.9f},'
                f'"lon":{f.lon:.9f}}}\r\n').encode()

    track = gps_track.track()
    memory = _Memory()
    async with FakePeer(BANNER, [tpv(f) for f in track[:60]]) as peer:
        src = GpsdSource("gps", "127.0.0.1", peer.port, tz=UTC, memory=memory)
        src.save_every_s = 0.0
        await src.connect()
        first = [b async for b in _take(src, 1.0)]
        assert len(first) == 60 and src.learner.home is not None
        assert memory.saves > 0 and memory.state is not None
        assert memory.state["learner"]["cells"]
        await src.close()
    # the stored stream lost everything before Wednesday meanwhile (forget --before through
    # the running daemon, retention): the next check cuts what was learned from it
    wednesday = track[180]
    assert datetime.fromtimestamp(wednesday.t, UTC).strftime("%a %H:%M") == "Wed 00:00"
    memory.stored, memory.first_t = True, wednesday.t
    async with FakePeer(BANNER, [tpv(f) for f in track[180:185]]) as peer:
        src.port = peer.port
        src.check_every_s = 0.0
        await src.connect()
        again = [b async for b in _take(src, 1.0)]
        await src.close()
    assert len(again) == 5
    days = {int(d) for cell in memory.state["learner"]["cells"].values() for d in cell["d"]}
    first_day = datetime.fromtimestamp(wednesday.t, UTC).toordinal()
    assert days and min(days) >= first_day
    assert src.learner.home is None  # the nights that made it home are gone
