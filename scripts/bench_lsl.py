"""LSL outlets and inlet: latency, CPU cost and throughput, against bare pylsl in the same run.

``run(quick)`` (or ``python scripts/bench_lsl.py [--quick]``) measures, on loopback with
a private liblsl session (``LSLAPICFG``, so other streams on the machine do not count):

- ``outlet``: 16 channels x 250 Hz generated in this process in chunks at 15 Hz (as the
  BrainFlow poller delivers them). Three runs of the same generator:
  ``hub_only`` (the daemon's hub, no outlet: the floor), ``bare_pylsl`` (the chunk pushed
  straight into a ``StreamOutlet`` with per-sample timestamps), ``edgetwin`` (the
  daemon's ``LslPublisher`` as a hub consumer: worker thread, time mapping, stats).
  A pylsl inlet in a child process (its CPU is not ours) records, per sample,
  receipt time minus sample time (``local_clock``, clocksync on, no dejitter):
  median and p99 in ms; ``newest_*`` is the same for the newest sample of each chunk
  (the transport alone, without the chunking wait). CPU: this process's CPU time
  over the run as a share of one core; ``outlet_cpu_pct`` = run minus ``hub_only``.
  Ratios edgetwin / bare.
- ``daemon``: the real daemon (``edgetwin daemon run``) on BrainFlow's synthetic board
  (16 EEG channels at 250 Hz), once with ``--lsl`` and once without: the daemon's CPU
  share (``/proc/PID/stat``) over the same window, and with ``--lsl`` the latency from
  BrainFlow's sample time to receipt in the child inlet.
- ``inlet``: a child process offers 16 ch float32 at 50,000 samples/s (200x the
  reference rate); samples/s delivered by ``LslSource.stream`` (clocksync + dejitter,
  mapping, batches) vs a bare ``StreamInlet.pull_chunk`` loop with the same processing
  flags. A reader that keeps up reports the offered rate; one that cannot, less.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHANNELS = 16
RATE_HZ = 250.0
CHUNK_HZ = 15.0
OFFERED_HZ = 50_000.0  # inlet throughput: what the child outlet offers (200x 250 Hz)


def _lsl_cfg() -> str:
    path = Path(tempfile.gettempdir()) / f"edgetwin-bench-lsl-{os.getpid()}.cfg"
    path.write_text(
        "[ports]\nIPv6 = disable\n[multicast]\nResolveScope = machine\n"
        f"[lab]\nKnownPeers = {{127.0.0.1}}\nSessionID = edgetwin-bench-{os.getpid()}\n"
        "[log]\nlevel = -2\n"
    )
    return str(path)


if "LSLAPICFG" not in os.environ:
    os.environ["LSLAPICFG"] = _lsl_cfg()

import numpy as np  # noqa: E402 - after LSLAPICFG: liblsl reads it once
import pylsl  # noqa: E402


def run(quick: bool) -> dict[str, Any]:
    seconds = 6.0 if quick else 20.0
    out: dict[str, Any] = {"load": f"{CHANNELS} ch x {RATE_HZ:g} Hz in {CHUNK_HZ:g} Hz chunks",
                           "seconds_per_run": seconds}
    out["outlet"] = _outlet_runs(seconds)
    out["daemon"] = _daemon_runs(seconds + 6.0)
    out["inlet"] = _inlet_runs(100_000 if quick else 500_000)
    return out


# -- outlets in this process ----------------------------------------------------------------


def _outlet_runs(seconds: float) -> dict[str, Any]:
    from edgetwin.config import LslConfig
    from edgetwin.daemon.hub import Hub
    from edgetwin.interop.lsl_outlets import LslPublisher
    from edgetwin.types import SampleBatch

    rng = np.random.default_rng(1)

    async def generate(sink: Any) -> None:
        period = 1.0 / CHUNK_HZ
        start = time.time()
        sent = 0
        while time.time() - start < seconds:
            await asyncio.sleep(period)
            due = int((time.time() - start) * RATE_HZ) - sent
            if due <= 0:
                continue
            now = time.time()
            t = now - (np.arange(due)[::-1] / RATE_HZ)
            sink(SampleBatch.build("bench.eeg", [f"eeg_{i}" for i in range(CHANNELS)], t,
                                   rng.normal(size=(due, CHANNELS)),
                                   meta={"sampling_rate_hz": RATE_HZ}))
            sent += due

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def hub_only() -> dict[str, Any]:
        hub = Hub(256)
        queue = hub.subscribe("sink")

        async def drain() -> None:
            while await queue.get() is not None:
                list(queue.drain())

        task = asyncio.create_task(drain())
        c0, w0 = cpu(), time.perf_counter()
        await generate(hub.publish)
        hub.close()
        await task
        return {"cpu_pct": 100 * (cpu() - c0) / (time.perf_counter() - w0)}

    async def bare() -> dict[str, Any]:
        name = f"bare-{uuid.uuid4().hex[:6]}"
        info = pylsl.StreamInfo(name, "EEG", CHANNELS, RATE_HZ, "double64", name)
        outlet = pylsl.StreamOutlet(info, 0, 30)
        child = _inlet_child(name, seconds + 2)
        await asyncio.to_thread(outlet.wait_for_consumers, 10.0)

        def push(batch: SampleBatch) -> None:
            offset = pylsl.local_clock() - time.time()
            outlet.push_chunk(batch.values, (batch.t + offset).tolist())

        c0, w0 = cpu(), time.perf_counter()
        await generate(push)
        used = {"cpu_pct": 100 * (cpu() - c0) / (time.perf_counter() - w0)}
        return {**used, **_child_result(child)}

    async def edgetwin() -> dict[str, Any]:
        prefix = f"b{uuid.uuid4().hex[:6]}"
        publisher = LslPublisher(LslConfig(enabled=True, prefix=prefix, features=False,
                                           markers=False), step_s=5.0)
        hub = Hub(256)
        queue = hub.subscribe("lsl")
        task = asyncio.create_task(publisher.consume(queue))
        # the outlet exists after the first batch: publish one, then start the inlet
        first: list[Any] = []
        await generate_once(first)
        hub.publish(first[0])
        child = _inlet_child(f"{prefix}.bench.eeg", seconds + 2)
        await asyncio.sleep(1.0)
        c0, w0 = cpu(), time.perf_counter()
        await generate(hub.publish)
        hub.close()
        await task
        used = {"cpu_pct": 100 * (cpu() - c0) / (time.perf_counter() - w0),
                "publisher": publisher.stats()}
        result = {**used, **_child_result(child)}
        await asyncio.to_thread(publisher.close)
        return result

    async def generate_once(into: list[Any]) -> None:
        t = np.array([time.time()])
        into.append(SampleBatch.build("bench.eeg", [f"eeg_{i}" for i in range(CHANNELS)], t,
                                      np.zeros((1, CHANNELS)), meta={"sampling_rate_hz": RATE_HZ}))

    floor = asyncio.run(hub_only())
    base = asyncio.run(bare())
    ours = asyncio.run(edgetwin())
    for r in (base, ours):
        r["outlet_cpu_pct"] = r["cpu_pct"] - floor["cpu_pct"]
    return {
        "hub_only": floor,
        "bare_pylsl": base,
        "edgetwin": ours,
        "ratio_latency_median": _ratio(ours.get("latency_ms_median"),
                                       base.get("latency_ms_median")),
        "ratio_latency_p99": _ratio(ours.get("latency_ms_p99"), base.get("latency_ms_p99")),
        "ratio_outlet_cpu": _ratio(ours["outlet_cpu_pct"], base["outlet_cpu_pct"]),
    }


# -- the real daemon ------------------------------------------------------------------------


def _daemon_runs(seconds: float) -> dict[str, Any]:
    home_root = Path(tempfile.mkdtemp(prefix="edgetwin-bench-lsl-"))
    try:
        env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test"}
        pw = home_root / "pw"
        pw.write_text("bench lsl\n")
        pw.chmod(0o600)
        results: dict[str, Any] = {}
        for label, lsl in (("without_lsl", False), ("with_lsl", True)):
            home = home_root / label
            e = {**env, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw)}
            exe = [sys.executable, "-m", "edgetwin"]
            subprocess.run([*exe, "init"], env=e, check=True, capture_output=True)
            subprocess.run([*exe, "pair", "add", "brainflow", "--board", "SYNTHETIC_BOARD",
                            "--name", "bf"], env=e, check=True, capture_output=True)
            prefix = f"d{uuid.uuid4().hex[:6]}"
            (home / "config.toml").write_text(f'[lsl]\nprefix = "{prefix}"\n')
            args = [*exe, "daemon", "run", "--duration", str(seconds + 10)]
            proc = subprocess.Popen([*args, "--lsl"] if lsl else args, env=e,
                                    stderr=subprocess.DEVNULL)
            try:
                child = _inlet_child(f"{prefix}.bf.default", seconds) if lsl else None
                time.sleep(3.0)  # start-up (imports, models) is not the steady state
                c0, w0 = _proc_cpu(proc.pid), time.perf_counter()
                time.sleep(seconds - 4.0)
                c1, w1 = _proc_cpu(proc.pid), time.perf_counter()
                results[label] = {"cpu_pct": 100 * (c1 - c0) / (w1 - w0)}
                if child is not None:
                    results[label].update(_child_result(child))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        results["lsl_cpu_pct"] = results["with_lsl"]["cpu_pct"] - results["without_lsl"]["cpu_pct"]
        return results
    finally:
        shutil.rmtree(home_root, ignore_errors=True)


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- inlet throughput ----------------------------------------------------------------------


def _inlet_runs(total: int) -> dict[str, Any]:
    from edgetwin.sources.lsl import LslSource
    from edgetwin.sources.lsl_meta import full_metadata, resolve

    flags = pylsl.proc_clocksync | pylsl.proc_dejitter | pylsl.proc_monotonize

    def bare(name: str) -> float:
        info = pylsl.resolve_byprop("name", name, 1, 10.0)[0]
        inlet = pylsl.StreamInlet(info, max_buflen=360, recover=False, processing_flags=flags)
        inlet.open_stream(10.0)
        _, ts = inlet.pull_chunk(timeout=30.0, max_samples=1, as_numpy=True)  # the first
        n, start, cpu0 = 0, time.perf_counter(), time.process_time()
        while n < total:
            time.sleep(0.05)  # the same 20 Hz polling as LslSource
            _, ts = inlet.pull_chunk(timeout=0.0, max_samples=8192, as_numpy=True)
            n += len(ts)
        took = time.perf_counter() - start
        return n / took, 100 * (time.process_time() - cpu0) / took

    async def ours(name: str) -> float:
        info = resolve("name", name, 10.0, want_all=False)[0]
        meta = full_metadata(info, 10.0)
        source = LslSource("bench", {"prop": "name", "value": name}, meta)
        await source.connect()
        n, start, cpu0 = 0, 0.0, 0.0
        async for batch in source.stream():
            if not start:  # timing starts at the first batch, as for the bare inlet
                start, cpu0 = time.perf_counter(), time.process_time()
                continue
            n += len(batch)
            if n >= total:
                break
        took = time.perf_counter() - start
        await source.close()
        return n / took, 100 * (time.process_time() - cpu0) / took

    out: dict[str, Any] = {"samples": total, "channels": CHANNELS, "offered_per_s": OFFERED_HZ}
    for label in ("bare_pylsl", "edgetwin"):
        name = f"thr-{uuid.uuid4().hex[:6]}"
        child = subprocess.Popen([sys.executable, __file__, "--outlet-child", name, str(total)],
                                 env=os.environ)
        try:
            rate, cpu = bare(name) if label == "bare_pylsl" else asyncio.run(ours(name))
        finally:
            child.kill()
            child.wait()
        out[label] = {"samples_per_s": rate, "cpu_pct": cpu}
    out["ratio"] = _ratio(out["edgetwin"]["samples_per_s"], out["bare_pylsl"]["samples_per_s"])
    out["ratio_cpu"] = _ratio(out["edgetwin"]["cpu_pct"], out["bare_pylsl"]["cpu_pct"])
    return out


# -- child processes ----------------------------------------------------------------------


def _inlet_child(name: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--inlet-child", name, str(seconds)],
                            env=os.environ, stdout=subprocess.PIPE, text=True)


def _child_result(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = child.communicate(timeout=120)
    return json.loads(out) if out.strip() else {"error": "the inlet received nothing"}


def _inlet_main(name: str, seconds: float) -> None:
    found = pylsl.resolve_byprop("name", name, 1, 20.0)
    if not found:
        print(json.dumps({"error": f"stream {name} not found"}))
        return
    inlet = pylsl.StreamInlet(found[0], processing_flags=pylsl.proc_clocksync)
    inlet.open_stream(10.0)
    inlet.time_correction(10.0)  # the first clock-offset estimate is not the stream's latency
    warm = time.monotonic() + 1.0
    while time.monotonic() < warm:
        inlet.pull_chunk(timeout=0.2, max_samples=4096, as_numpy=True)
    lat: list[float] = []
    newest: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _, ts = inlet.pull_chunk(timeout=0.2, max_samples=4096, min_samples=1, as_numpy=True)
        now = pylsl.local_clock()
        if len(ts):
            lat.extend((now - np.asarray(ts)).tolist())
            newest.append(now - float(ts[-1]))
    lat_ms = np.asarray(lat) * 1e3
    new_ms = np.asarray(newest) * 1e3
    print(json.dumps({
        "samples_received": len(lat),
        "latency_ms_median": float(np.median(lat_ms)) if lat else None,
        "latency_ms_p99": float(np.percentile(lat_ms, 99)) if lat else None,
        "newest_ms_median": float(np.median(new_ms)) if newest else None,
        "newest_ms_p99": float(np.percentile(new_ms, 99)) if newest else None,
    }))


def _outlet_main(name: str, total: int) -> None:
    info = pylsl.StreamInfo(name, "EEG", CHANNELS, OFFERED_HZ, "float32", name)
    chans = info.desc().append_child("channels")
    for i in range(CHANNELS):
        ch = chans.append_child("channel")
        ch.append_child_value("label", f"E{i + 1}")
        ch.append_child_value("unit", "microvolts")
        ch.append_child_value("type", "EEG")
    outlet = pylsl.StreamOutlet(info, 0, 10)
    outlet.wait_for_consumers(30.0)
    time.sleep(2.0)  # LslSource reads the metadata on one inlet, then opens another
    chunk = np.random.default_rng(0).normal(size=(500, CHANNELS)).astype(np.float32)
    period = len(chunk) / OFFERED_HZ
    next_t = time.perf_counter()
    while True:  # paced: OFFERED_HZ samples/s until killed
        outlet.push_chunk(chunk)
        next_t += period
        time.sleep(max(0.0, next_t - time.perf_counter()))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inlet-child":
        _inlet_main(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--outlet-child":
        _outlet_main(sys.argv[2], int(sys.argv[3]))
    else:
        quick = "--quick" in sys.argv
        print(json.dumps({"command": "python scripts/bench_lsl.py" + (" --quick" if quick else ""),
                          "results": run(quick)}, indent=2, default=float))
