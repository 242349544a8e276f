"""The gpsd source against a real gpsd fed a recorded NMEA track by gpsfake."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from datetime import UTC
from typing import Any

import numpy as np
import pytest

from edgetwin.daemon.backoff import Backoff
from edgetwin.daemon.hub import Hub
from edgetwin.daemon.runner import SourceRunner
from edgetwin.errors import DeviceNotFound, TransientSourceError
from edgetwin.sources.gpsd import CHANNELS, GpsdSource
from edgetwin.sources.place import ELSEWHERE, HOME, REGULAR, Grid
from edgetwin.sources.registry import build_source
from edgetwin.types import SampleBatch
from tests.sources import gps_track
from tests.sources.gpsd_harness import GpsFake, free_port, needs_gpsd

pytestmark = needs_gpsd
TRACK = gps_track.track()
TRUTH = {f.t: f for f in TRACK}


async def _collect(src: GpsdSource, want: int, quiet_s: float = 2.0,
                   timeout: float = 60.0) -> list[SampleBatch]:
    """Batches until ``want`` arrived, the stream stays quiet for ``quiet_s`` or ends."""
    out: list[SampleBatch] = []
    it = src.stream().__aiter__()
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            try:
                out.append(await asyncio.wait_for(anext(it), quiet_s))
            except (TimeoutError, StopAsyncIteration, TransientSourceError):
                break
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return out


async def _run_track(**kwargs: Any) -> tuple[GpsdSource, list[SampleBatch]]:
    port = free_port()
    fake = GpsFake(gps_track.DATA, port)
    src = GpsdSource("gps", "127.0.0.1", port, tz=UTC, **kwargs)
    try:
        await src.connect()
        await asyncio.sleep(0.3)  # gpsd opens the fake receiver once a client watches
        fake.release()
        batches = await _collect(src, len(TRACK))
    finally:
        await src.close()
        fake.stop()
    return src, batches


def test_gpsd_track_file_is_what_the_generator_writes() -> None:
    """The committed NMEA file is the generator's output, so every checksum is right."""
    text = gps_track.DATA.read_bytes().decode("ascii")
    assert text == gps_track.nmea_text(TRACK)
    for line in text.splitlines():
        body, cs = line[1:].split("*")
        assert int(cs, 16) == gps_track.checksum(body)
    assert text.count(",V,") == gps_track.WARMUP


async def test_gpsd_fixes_arrive_coarsened_and_place_forms() -> None:
    src, batches = await _run_track()
    rows = [(float(b.t[0]), *map(float, b.values[0])) for b in batches]
    # gpsd merges a few sentences fed this fast; nearly all arrive, none invented
    assert len(rows) >= 0.8 * len(TRACK), len(rows)
    assert all(t in TRUTH for t, *_ in rows)
    assert batches[0].stream == "gps.location" and batches[0].channels == CHANNELS
    assert batches[0].meta == {"precision_m": 1000.0, "exact": False}
    grid = Grid(1000.0)
    for t, lat, lon, _place, _dist in rows:
        fix = TRUTH[t]
        assert (lat, lon) == grid.snap(fix.lat, fix.lon)  # the cell centre, never the fix
        assert (lat, lon) != (fix.lat, fix.lon)
        assert abs(lat - fix.lat) <= grid.dlat / 2 + 1e-12
    codes = Counter((TRUTH[t].where, None if math.isnan(p) else int(p))
                    for t, _, _, p, _ in rows)
    # home is learned during the first night; before it, no code (NaN) and no distance
    assert codes[("home", None)] > 0 and codes[("home", HOME)] > 100
    first = next(r for r in rows if not math.isnan(r[3]))
    assert time.gmtime(first[0]).tm_hour < 6  # learned at night
    assert all(math.isnan(r[4]) for r in rows if math.isnan(r[3]))
    # the workplace becomes regular on its third day; the trip and the cafe stay elsewhere
    assert codes[("work", REGULAR)] > 10
    assert codes[("work", ELSEWHERE)] > 10
    assert codes[("trip", ELSEWHERE)] > 20 and ("trip", REGULAR) not in codes
    assert ("cafe", HOME) not in codes and ("cafe", REGULAR) not in codes
    trip = [d for t, _, _, p, d in rows if TRUTH[t].where == "trip"]
    assert all(90 < d < 96 for d in trip)  # Lyon -> Grenoble, cell to cell
    work = [d for t, _, _, p, d in rows if TRUTH[t].where == "work" and not math.isnan(d)]
    assert all(2.5 < d < 4.6 for d in work)
    assert src.describe()["home_learned"] is True
    assert src.counters.bad_packets == 0


async def test_gpsd_exact_true_keeps_the_fix() -> None:
    _, batches = await _run_track(exact=True)
    assert len(batches) >= 0.8 * len(TRACK)
    for b in batches:
        fix = TRUTH[float(b.t[0])]
        assert float(b.values[0, 0]) == pytest.approx(fix.lat, abs=1e-9)
        assert float(b.values[0, 1]) == pytest.approx(fix.lon, abs=1e-9)
        assert b.meta["exact"] is True


async def test_gpsd_coarser_precision_merges_cells() -> None:
    _, fine = await _run_track(precision_m=100.0)
    cells = {tuple(b.values[0, :2]) for b in fine if TRUTH[float(b.t[0])].where == "home"}
    # the receiver's wander stays inside one 100 m cell or two: a street, not a house
    assert 1 <= len(cells) <= 2
    for b in fine:
        fix = TRUTH[float(b.t[0])]
        assert abs(float(b.values[0, 0]) - fix.lat) <= 100.0 / 111_320.0


async def test_gpsd_going_away_and_coming_back_reconnects_with_backoff(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """gpsd stops mid-track: the runner backs off, reconnects to the new gpsd, fixes resume."""
    first, second = TRACK[:60], TRACK[60:120]
    log1, log2 = tmp_path / "a.nmea", tmp_path / "b.nmea"
    log1.write_text(gps_track.nmea_text(first), encoding="ascii", newline="")
    log2.write_text(gps_track.nmea_text(second), encoding="ascii", newline="")
    port = free_port()
    hub = Hub(queue_batches=1024)
    queue = hub.subscribe("test")
    src = GpsdSource("gps", "127.0.0.1", port, tz=UTC)
    runner = SourceRunner(src, hub, watchdog_s=30.0, backoff=Backoff(initial_s=0.1, max_s=0.5))
    fake = GpsFake(log1, port)
    task = asyncio.create_task(runner.run())

    async def until(pred: Any, timeout: float = 30.0) -> None:
        async def poll() -> None:
            while not pred():
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    try:
        await until(lambda: runner.connects == 1)
        await asyncio.sleep(0.3)
        fake.release()
        await until(lambda: runner.samples >= 40)
        fake.stop()  # gpsd goes away
        await until(lambda: runner.failures >= 2)  # the lost link, then a refused reconnect
        assert "does not answer" in (runner.last_error or "")
        assert str(runner.state) in ("backoff", "connecting")
        fake = GpsFake(log2, port)  # and comes back on the same port
        await until(lambda: runner.connects >= 2)
        await asyncio.sleep(0.3)
        before = runner.samples
        fake.release()
        await until(lambda: runner.samples >= before + 40)
    finally:
        fake.stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert any("closed the connection" in r.getMessage() for r in caplog.records)
    times = [t for batch in queue.drain() for t in batch.t.tolist()]
    assert times == sorted(times)
    assert any(t < second[0].t for t in times) and any(t >= second[0].t for t in times)
    assert all(t in TRUTH for t in times)


async def test_gpsd_nothing_listening_is_device_not_found() -> None:
    src = GpsdSource("gps", "127.0.0.1", free_port(), connect_timeout_s=2.0)
    with pytest.raises(DeviceNotFound, match=r"does not answer.*start gpsd"):
        await src.connect()
    await src.close()


def test_gpsd_record_builds_through_the_registry() -> None:
    src = build_source("gps", {"kind": "gpsd", "host": "127.0.0.1", "port": 2947})
    assert isinstance(src, GpsdSource)
    assert src.stream_name == "gps.location"
    assert src.describe()["precision_m"] == 1000.0 and src.describe()["exact"] is False
    assert np.isclose(src.grid.precision_m, 1000.0)
