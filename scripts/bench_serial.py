"""Serial bridge path: decoder throughput, and our CPU at 32 channels x 100 Hz over a real pty.

``run(quick)`` measures in this process:

- ``decode_only``: ``StreamDecoder`` on a pre-built byte stream of SAMPLES frames
  (32 int24 channels, 1 row per frame, fed in 4 KiB reads): frames/s, median and
  p99 over repetitions (p99 = the rate 99 % of repetitions reached).
- ``decode_and_map``: the same plus ``BridgeMapper`` (numpy int24 unpacking, scaling,
  clock fit, gap check): frames/s and samples/s (rows x channels); ratio to
  ``decode_only`` is the cost of mapping.
- ``split_baseline``: the floor any 0x00-delimited protocol pays in Python
  (``bytes.split`` and ``binascii.crc_hqx`` over the same stream), to see what
  COBS and parsing add on top.
- ``cpu_32ch_100hz``: the bridge emulator in a child process (so its CPU is not
  ours) streams 32 channels at 100 Hz through a pseudo-terminal; ``SerialSource``
  reads, decodes and batches it here. Share of one core per 1-s window
  (``time.process_time`` vs wall), median and p99, against an idle event loop
  measured the same way. Measured twice in the same run: as the daemon reads
  (frames gathered for up to 40 ms once the clock estimate has a line) and
  against the baseline of one wake per frame (``coalesce_s=0``, the old reader).
"""

from __future__ import annotations

import asyncio
import binascii
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.sources import bridge_protocol as bp
from edgetwin.sources.serial import BridgeMapper, ClockEstimator, SerialSource

CHANNELS = 32
RATE_HZ = 100.0


def run(quick: bool) -> dict[str, Any]:
    """Decoder throughput with and without mapping, a split/CRC floor, and CPU at 32 ch x 100 Hz."""
    frames = 2_000 if quick else 20_000
    reps = 5 if quick else 15
    desc = _descriptor()
    stream = _stream(desc, frames)
    results: dict[str, Any] = {}
    results["split_baseline"] = _rate(reps, frames, lambda: _split_crc(stream))
    results["decode_only"] = _rate(reps, frames, lambda: _decode(stream, None))
    results["decode_and_map"] = _rate(reps, frames, lambda: _decode(stream, desc))
    for key in ("decode_only", "decode_and_map"):
        res = results[key]
        res["samples_per_s"] = res["median"] * CHANNELS
        res["ratio_vs_split_baseline"] = res["median"] / results["split_baseline"]["median"]
        res["x_realtime_32ch_100hz"] = res["median"] / RATE_HZ
    results["decode_and_map"]["ratio_vs_decode_only"] = (
        results["decode_and_map"]["median"] / results["decode_only"]["median"]
    )
    windows = 5 if quick else 30
    baseline = _cpu_share(windows, 1.0, coalesce_s=0.0)
    results["cpu_32ch_100hz"] = _cpu_share(windows, 1.0, coalesce_s=None)
    results["cpu_32ch_100hz_one_wake_per_frame"] = baseline
    results["cpu_32ch_100hz"]["ratio_vs_one_wake_per_frame"] = (
        results["cpu_32ch_100hz"]["median"] / baseline["median"] if baseline["median"] else None
    )
    return results


def _descriptor() -> bp.Descriptor:
    device = bp.DeviceFrame("bench", "bench", (1, 0, 0), round(RATE_HZ * 1000), CHANNELS)
    channels = [
        bp.ChannelFrame(i, f"fnirs_s{i // 8 + 1}_d{i % 4 + 1}_{(760, 850)[i % 2]}_{i}", "a.u.",
                        bp.SampleFormat.I24, 1.0, 0.0, (760, 850)[i % 2], 300)
        for i in range(CHANNELS)
    ]
    return bp.build_descriptor(device, channels)


def _stream(desc: bp.Descriptor, frames: int) -> bytes:
    out = bytearray()
    for k in range(frames):
        row = [(900_000 + 37 * k + 1013 * c) % 8_000_000 for c in range(CHANNELS)]
        out += bp.encode_samples(desc, k, k * 10_000, [row])
    return bytes(out)


def _chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + 4096] for i in range(0, len(stream), 4096)]


def _split_crc(stream: bytes) -> int:
    n = 0
    for chunk in stream.split(b"\x00"):
        if chunk:
            binascii.crc_hqx(chunk, 0xFFFF)
            n += 1
    return n


def _decode(stream: bytes, desc: bp.Descriptor | None) -> int:
    decoder = bp.StreamDecoder()
    mapper = BridgeMapper("bench.fnirs", desc, ClockEstimator()) if desc else None
    n = 0
    host = 1_700_000_000.0
    for chunk in _chunks(stream):
        host += 0.04
        for frame in decoder.feed(chunk):
            if mapper is not None:
                assert isinstance(frame, bp.SamplesFrame)
                mapper.on_samples(frame, host)
            n += 1
    return n


def _rate(reps: int, frames: int, fn: Any) -> dict[str, Any]:
    rates = []
    fn()  # warm-up
    for _ in range(reps):
        started = time.perf_counter()
        got = fn()
        rates.append(got / (time.perf_counter() - started))
        assert got == frames, (got, frames)
    rates.sort()
    return {
        "median": statistics.median(rates),
        "p99": rates[max(0, int(0.01 * len(rates)))],
        "unit": "frames/s",
        "reps": reps,
    }


def _cpu_share(windows: int, window_s: float, coalesce_s: float | None) -> dict[str, Any]:
    """The emulator runs in a child process so its CPU is not counted as ours."""
    child = subprocess.Popen(
        [sys.executable, "-m", "edgetwin.emulators.bridge", "--kind", "fnirs",
         "--channels", str(CHANNELS), "--rate", str(RATE_HZ), "--seed", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        path = child.stdout.readline().strip()
        return asyncio.run(_measure(path, windows, window_s, coalesce_s))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)


async def _measure(
    path: str, windows: int, window_s: float, coalesce_s: float | None
) -> dict[str, Any]:
    idle = statistics.median(await _cpu_windows(windows, window_s))
    src = SerialSource("bench", path, coalesce_s=coalesce_s)
    await src.connect()
    latencies: list[float] = []

    async def consume() -> None:
        async for batch in src.stream():
            latencies.append(time.time() - batch.last_t)

    task = asyncio.get_running_loop().create_task(consume())
    try:
        for _ in range(150):  # flowing, and the clock estimate has its line (~6 s)
            if src.clock_estimator.settled:
                break
            await asyncio.sleep(0.1)
        s0 = src.counters.samples
        shares = await _cpu_windows(windows, window_s)
        rows = src.counters.samples - s0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
    shares.sort()
    latencies.sort()
    med = statistics.median(shares)
    return {
        "median": med,
        "p99": shares[int(0.99 * (len(shares) - 1))],
        "unit": "% of one core",
        "idle_loop_median": idle,
        "ratio_vs_idle": med / idle if idle > 0 else None,
        "rows_per_s": rows / (windows * window_s),
        "samples_per_s": rows * CHANNELS / (windows * window_s),
        "batch_latency_ms_median": 1000 * statistics.median(latencies) if latencies else None,
        "batch_latency_ms_p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))]
        if latencies else None,
        "bad_packets": src.counters.bad_packets,
        "gaps": src.counters.gaps,
    }


async def _cpu_windows(windows: int, window_s: float) -> list[float]:
    shares = []
    for _ in range(windows):
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        shares.append(100.0 * (time.process_time() - c0) / (time.perf_counter() - w0))
    return shares


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=1))
