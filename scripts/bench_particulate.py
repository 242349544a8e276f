"""Particulate sensors on serial: parse time per frame, bytes on the wire, CPU per source at 1 Hz.

``run(quick)`` measures in this process:

- ``parse``: per sensor, the time to take one frame from bytes to a row of physical
  values (``FrameScanner.feed`` + ``decode_row``; SPS30: ``decode_row`` of the 40-byte
  payload plus SHDLC unstuffing of the reply), fed one frame per call as at 1 Hz;
  median and p99 in microseconds, against ``find_baseline``: a bare ``bytes.find`` of
  the header over the same bytes in the same run.
- ``wire_bytes_per_s``: bytes per second on the wire at the native 1 Hz (SPS30:
  request + reply of each poll; SDS011 also at a 5-minute working period).
- ``cpu_1hz``: each sensor's emulator in a child process (its CPU is not ours)
  streams at 1 Hz through a pseudo-terminal; ``ParticulateSource`` reads it here.
  Share of one core per window (``time.process_time`` vs wall), median and p99,
  against an idle event loop measured the same way.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.sources import particulate_protocol as pp
from edgetwin.sources.particulate import ParticulateSource, decode_row


def run(quick: bool) -> dict[str, Any]:
    """Parse time per frame vs a find baseline, wire bytes/s, and CPU per source at 1 Hz."""
    n = 2_000 if quick else 20_000
    windows, window_s = (3, 2.0) if quick else (10, 3.0)
    return {
        "parse": {s: _parse(s, n) for s in pp.SENSORS},
        "wire_bytes_per_s": _wire(),
        "cpu_1hz": {
            "idle_loop": _summary(asyncio.run(_cpu_windows(windows, window_s))),
            **{s: _cpu_share(s, windows, window_s) for s in pp.SENSORS},
        },
    }


def _frames(sensor: str, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        pm = 5 + i % 40
        if sensor == "pms5003":
            out.append(pp.pms_encode([pm, pm, pm, pm, pm + 1, pm + 2, 900, 300, 60, 8, 2, 1, 0]))
        elif sensor == "sds011":
            out.append(pp.sds_data(pm * 10, pm * 13, 0x1234))
        else:
            vals = (pm * 0.7, pm, pm * 1.2, pm * 1.3, 40.0, 50.0, 51.0, 51.1, 51.2, 0.55)
            out.append(pp.shdlc_miso(0, pp.SPS_READ, 0, pp.sps_values(vals)))
    return out


def _parse(sensor: str, n: int) -> dict[str, Any]:
    frames = _frames(sensor, n)
    times: list[float] = []
    base: list[float] = []
    clock = time.perf_counter_ns
    if sensor == "sps30":
        for f in frames:
            t0 = clock()
            content = pp.shdlc_unstuff(f)
            assert content is not None
            decode_row("sps30", content[4:])
            times.append((clock() - t0) / 1e3)
    else:
        scanner = pp.FrameScanner(sensor)
        for f in frames:
            t0 = clock()
            for frame in scanner.feed(f):
                decode_row(sensor, frame)
            times.append((clock() - t0) / 1e3)
    header = b"\x7e" if sensor == "sps30" else (pp.PMS_HEADER if sensor == "pms5003" else b"\xaa")
    for f in frames:
        t0 = clock()
        f.find(header, 1)
        base.append((clock() - t0) / 1e3)
    parse, baseline = _summary(times), _summary(base)
    return {
        "frame_bytes": len(frames[0]),
        "frames": n,
        "parse_us": parse,
        "find_baseline_us": baseline,
        "ratio_median": round(parse["median"] / max(baseline["median"], 1e-9), 1),
    }


def _wire() -> dict[str, float]:
    poll = len(pp.shdlc_stuff(bytes([0, pp.SPS_READ, 0])))
    reply = len(pp.shdlc_miso(0, pp.SPS_READ, 0, pp.sps_values([10.0] * 10)))
    return {
        "pms5003": float(pp.PMS_FRAME_LEN),
        "sds011_continuous": float(pp.SDS_FRAME_LEN),
        "sds011_period_5min": round(pp.SDS_FRAME_LEN / 300.0, 4),
        "sps30_request_plus_reply": float(poll + reply),
    }


def _cpu_share(sensor: str, windows: int, window_s: float) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, "-m", "edgetwin.emulators.particulate", sensor, "--interval", "1.0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        path = child.stdout.readline().strip()
        return asyncio.run(_measure(sensor, path, windows, window_s))
    finally:
        child.terminate()
        child.wait(10)


async def _measure(sensor: str, path: str, windows: int, window_s: float) -> dict[str, Any]:
    src = ParticulateSource("bench", path, sensor, working_period_min=0, poll_s=1.0)
    await src.connect()
    rows = 0

    async def consume() -> None:
        nonlocal rows
        async for batch in src.stream():
            rows += len(batch)

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(1.5)
        shares = await _cpu_windows(windows, window_s)
    finally:
        task.cancel()
        await src.close()
    return {**_summary(shares), "rows": rows, "bad_packets": src.counters.bad_packets}


async def _cpu_windows(windows: int, window_s: float) -> list[float]:
    shares = []
    for _ in range(windows):
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        shares.append(100.0 * (time.process_time() - c0) / (time.perf_counter() - w0))
    return shares


def _summary(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {"median": round(statistics.median(s), 3), "p99": round(p99, 3)}


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
